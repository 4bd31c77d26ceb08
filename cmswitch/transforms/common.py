"""Helpers shared by CMSwitch's passes: finding the function and the hardware."""

from __future__ import annotations

from xdsl.dialects.builtin import ModuleOp, StringAttr
from xdsl.dialects.func import FuncOp

from cmswitch.arch import Arch, load_arch
from cmswitch.errors import CMSwitchError

ARCH_ATTR = "cim.arch"
"""Module attribute naming the hardware: a preset name or a description file path."""


def resolve_arch(module: ModuleOp, option: str | None) -> Arch:
    """The hardware of a pass: its ``arch`` option, else the module's ``cim.arch``
    attribute, else the default preset.  Records the choice on the module so later
    passes and the flow use the same hardware.  Raises CMSwitchError for a bad one."""
    spec = option
    if spec is None and isinstance(module.attributes.get(ARCH_ATTR), StringAttr):
        spec = module.attributes[ARCH_ATTR].data
    arch = load_arch(spec)
    module.attributes[ARCH_ATTR] = StringAttr(spec or arch.name)
    return arch


def main_func(module: ModuleOp) -> FuncOp:
    """The module's single `func.func` holding the model.  Raises CMSwitchError if
    there is none or more than one."""
    funcs = [op for op in module.ops if isinstance(op, FuncOp)]
    if len(funcs) != 1:
        raise CMSwitchError(f"expected one func.func holding the model, found {len(funcs)}")
    return funcs[0]
