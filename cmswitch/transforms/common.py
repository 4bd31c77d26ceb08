"""Helpers shared by CMSwitch's passes: finding the function and the hardware."""

from __future__ import annotations

from xdsl.dialects.builtin import ModuleOp
from xdsl.dialects.func import FuncOp
from xdsl.utils.exceptions import VerifyException

from cmswitch.arch import Arch, load_arch, resolve_hardware
from cmswitch.dialects.cim import ARCH_ATTR, hardware_attr, module_hardware
from cmswitch.errors import CMSwitchError


def mode_changes(modes: list[str], compute: list[tuple[int, int]],
                 memory: list[tuple[int, int]]) -> list[tuple[str, int, int]]:
    """The `CM.switch` statements a segment needs: maximal runs ``(mode, lo, hi)`` of
    arrays whose mode ("C" / "M") must change so the `compute` ranges compute and the
    `memory` ranges store; updates `modes` in place."""
    want = list(modes)
    for lo, hi in compute:
        want[lo:hi] = ["C"] * (hi - lo)
    for lo, hi in memory:
        want[lo:hi] = ["M"] * (hi - lo)
    runs: list[tuple[str, int, int]] = []
    i = 0
    while i < len(modes):
        if want[i] == modes[i]:
            i += 1
            continue
        j = i
        while j < len(modes) and want[j] == want[i] and want[j] != modes[j]:
            j += 1
        runs.append((want[i], i, j))
        i = j
    modes[:] = want
    return runs


def resolve_arch(module: ModuleOp, option: str | None) -> Arch:
    """The hardware of a pass: its ``arch`` option, else the module's ``cim.arch``
    attribute, else the default preset.  Records the choice on the module so later
    passes and the flow use the same hardware.  Raises CMSwitchError for a bad one."""
    try:
        recorded = module_hardware(module)
    except VerifyException as e:
        raise CMSwitchError(str(e)) from None
    if isinstance(recorded, dict):  # a description built in Python, recorded inline
        inline = resolve_hardware(recorded)
        if option and load_arch(option) != inline:
            raise CMSwitchError(f"arch={option} conflicts with the hardware the module "
                                f"was compiled for ({inline.name}); give the same arch "
                                "to every pass")
        return inline
    arch = load_arch(option or recorded)
    if option and recorded and load_arch(recorded) != arch:
        raise CMSwitchError(
            f"arch={option} conflicts with the hardware the module was compiled for "
            f"({recorded}); give the same arch to every pass"
        )
    module.attributes[ARCH_ATTR] = hardware_attr(option or recorded or arch.name)
    return arch


def check_options(pass_name: str, **values: float) -> None:
    """Pass options that must not be negative.  Raises ValueError (a usage error)."""
    for key, value in values.items():
        if value < 0:
            raise ValueError(f"{pass_name}: {key.replace('_', '-')} must be >= 0, got {value}")


def check_solver(pass_name: str, solver: str) -> None:
    """Raises ValueError (a usage error) for an unknown MIP solver name."""
    from cmswitch.solver.mip import SOLVERS

    if solver not in SOLVERS:
        raise ValueError(f"{pass_name}: solver must be one of {', '.join(SOLVERS)}, got '{solver}'")


def main_func(module: ModuleOp) -> FuncOp:
    """The module's single `func.func` holding the model.  Raises CMSwitchError if
    there is none or more than one."""
    funcs = [op for op in module.ops if isinstance(op, FuncOp)]
    if not funcs and any(op.name == "metaop.segment" for op in module.ops):
        raise CMSwitchError("the module is already a meta-operator flow (cim-to-metaop ran); "
                            "graph passes need the cim graph")
    if len(funcs) != 1:
        raise CMSwitchError(f"expected one func.func holding the model, found {len(funcs)}")
    return funcs[0]


def segment_ops(func: FuncOp, pass_name: str, run_first: str) -> list:
    """The function's `cim.segment` ops in order.  Raises CMSwitchError naming the
    passes to `run_first` when there are none."""
    from cmswitch.dialects.cim import SegmentOp

    segments = [o for o in func.body.block.ops if isinstance(o, SegmentOp)]
    if not segments:
        raise CMSwitchError(f"{pass_name}: no cim.segment ops; run {run_first} first")
    return segments
