"""CMSwitch: a dual-mode-aware DNN compiler for computing-in-memory accelerators.

Each array of the chip either computes (holds weights, performs MVMs) or serves as
memory; CMSwitch decides which, per network segment (Zhao et al., "Be CIM or Be
Memory", ASPLOS 2025, arXiv 2502.17006).
"""

__version__ = "0.1.0"
