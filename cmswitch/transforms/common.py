"""Helpers shared by CMSwitch's passes: finding the function and the hardware."""

from __future__ import annotations

from xdsl.dialects.builtin import (
    DictionaryAttr,
    FloatAttr,
    IntegerAttr,
    ModuleOp,
    StringAttr,
    f64,
    i64,
)
from xdsl.dialects.func import FuncOp

from cmswitch.arch import Arch, arch_from_dict, load_arch
from cmswitch.errors import CMSwitchError

ARCH_ATTR = "cim.arch"
"""Module attribute naming the hardware: a preset name or a description file path
(a string), or the description itself (a dictionary of its fields, e.g.
``{name = "dynaplasia.arrays-48", arrays = 48 : i64, ...}``) for hardware built in
Python (`cmswitch.api.compile(arch=Arch)`, sweeps)."""


def arch_attr(arch: Arch | str) -> StringAttr | DictionaryAttr:
    """The `ARCH_ATTR` value for a preset name / file path or an `Arch` object."""
    if isinstance(arch, str):
        return StringAttr(arch)
    fields = {}
    for key, value in arch.header_fields().items():
        if isinstance(value, str):
            fields[key] = StringAttr(value)
        elif isinstance(value, int):
            fields[key] = IntegerAttr(value, i64)
        else:
            fields[key] = FloatAttr(value, f64)
    return DictionaryAttr(fields)


def recorded_arch(module: ModuleOp) -> tuple[Arch | None, str | None]:
    """The hardware `ARCH_ATTR` records on `module`: (its description, its spec string
    or None when it is inline); (None, None) when the module has none.  Raises
    CMSwitchError for an unknown preset, an unreadable file or bad inline fields."""
    value = module.attributes.get(ARCH_ATTR)
    if isinstance(value, StringAttr) and value.data:
        return load_arch(value.data), value.data
    if isinstance(value, DictionaryAttr):
        fields = {k: v.data if isinstance(v, StringAttr) else v.value.data
                  for k, v in value.data.items()
                  if isinstance(v, (StringAttr, IntegerAttr, FloatAttr))}
        if len(fields) != len(value.data):
            raise CMSwitchError(f"{ARCH_ATTR}: every field of an inline hardware "
                                "description is a string, integer or float")
        return arch_from_dict(fields, ARCH_ATTR), None
    if value is not None and not isinstance(value, StringAttr):
        raise CMSwitchError(f"{ARCH_ATTR} must be a preset name, a file path or a "
                            f"dictionary of hardware fields, not {value}")
    return None, None


POOL_ATTR = "pool"
"""Segment attribute ``array<i64: lo, hi>``: the memory-mode arrays its streamed
tensors are striped over (`cim-allocate`)."""
HOLD_RANGE_ATTR = "hold_arrays"
"""Segment attribute ``array<i64: lo, hi>``: the memory-mode arrays holding the tensors
it keeps on chip for the next segment (§9.3)."""
PLACES_ATTR = "places"
"""Segment attribute: tensor name -> "pool" | "gb" | "dram" | "hold_in" | "hold_out",
where the segment's flow keeps each tensor it touches (the MIP's choice)."""
SWITCH_ATTR = "switch_cycles"
"""Segment attribute: cycles of its `CM.switch` statements, part of its prediction."""


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
    inline, recorded = recorded_arch(module)
    if inline is not None and recorded is None:  # a description built in Python
        if option and load_arch(option) != inline:
            raise CMSwitchError(f"arch={option} conflicts with the hardware the module "
                                f"was compiled for ({inline.name}); give the same arch "
                                "to every pass")
        return inline
    arch = load_arch(option or recorded)
    if option and recorded and inline != arch:
        raise CMSwitchError(
            f"arch={option} conflicts with the hardware the module was compiled for "
            f"({recorded}); give the same arch to every pass"
        )
    module.attributes[ARCH_ATTR] = StringAttr(option or recorded or arch.name)
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
