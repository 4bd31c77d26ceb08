"""CMSwitch's IR vocabulary: the `cim` (graph level) and `metaop` (flow level) dialects.

Installed as `cmswitch.dialects`; importable without the rest of the compiler.
"""
