"""`cim-allocate`: solve one MIP per segment and write the allocation (DESIGN.md §4).

For every `cim.segment` (from `cim-segment`) the segment MIP
(`cmswitch.solver.mip`) gives weight copies ``d_i`` and memory-mode arrays ``m_i`` per
matrix operator and which internal tensors stay on chip.  Concrete addresses follow:
memory-mode arrays from the top down, in operator order, so consecutive segments keep
most arrays in memory mode; compute arrays contiguous from the lowest array that
misses the previous segment's compute and memory arrays (else from array 0), so the
next weights can be loaded while the previous segment still runs (§9.1).

Attributes written — on each matrix op: ``copies``, ``arrays = array<i64: lo, hi>``
(compute), ``memory = array<i64: lo, hi>`` (when ``m_i > 0``), ``spill`` (indices of
outputs sent to DRAM); on each segment: ``compute_arrays``, ``memory_arrays``,
``predicted_cycles``, ``load_cycles``, ``latency_cycles`` and ``solver_status``.
Read from `cim-segment`: a segment's ``hold`` (its tensors passed only to the next
segment stay on chip: the held bytes enter both MIPs) and ``compute_only`` (no
memory-mode arrays: the all-compute ablation).
"""

from __future__ import annotations

from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects.builtin import IntegerAttr, ModuleOp, StringAttr, i64
from xdsl.passes import ModulePass

from cmswitch.arch import Arch
from cmswitch.cost.graph import Graph, build_graph, held_tensors, segment_problem
from cmswitch.dialects.cim import SegmentOp, YieldOp, array_prop
from cmswitch.errors import CMSwitchError
from cmswitch.solver.mip import Allocation, solve_cached
from cmswitch.transforms.cim_segment import COMPUTE_ONLY_ATTR, HOLD_ATTR
from cmswitch.transforms.common import (
    check_options,
    check_solver,
    main_func,
    resolve_arch,
    segment_ops,
)


def segment_ranges(graph: Graph, segments: list[SegmentOp]) -> list[tuple[int, int]]:
    """``(first, last)`` operator indices of each segment in the flattened graph."""
    index = {o.op: o.index for o in graph.ops}
    ranges = []
    for seg in segments:
        members = [index[o] for o in seg.body.block.ops if not isinstance(o, YieldOp)]
        if not members:
            raise CMSwitchError(f"cim.segment {seg.id.value.data} is empty")
        ranges.append((min(members), max(members)))
    return ranges


def held_plan(graph: Graph, segments: list[SegmentOp]):
    """``(segment, (first, last), held_in, held_out)`` per segment: the tensor ids kept
    on chip across each boundary, from the `hold` attributes `cim-segment` wrote."""
    ranges = segment_ranges(graph, segments)
    held = [held_tensors(graph, first, last, ranges[k + 1][1])
            if HOLD_ATTR in seg.attributes and k + 1 < len(ranges) else ()
            for k, (seg, (first, last)) in enumerate(zip(segments, ranges))]
    return [(seg, rng, held[k - 1] if k else (), held[k])
            for k, (seg, rng) in enumerate(zip(segments, ranges))]


def compute_base(need: int, memory: int, avoid: set[int], arch: Arch) -> int:
    """First array of a segment's `need` compute arrays: the lowest start whose range
    misses the arrays `avoid` (the previous segment's compute and memory arrays) and
    the segment's own `memory` arrays at the top, so its weights can be loaded while
    the previous segment runs (§9.1, `cim-to-metaop` prefetches them); 0 if none."""
    limit = arch.arrays - memory
    for start in [0] + sorted({a + 1 for a in avoid}):
        if start + need <= limit and not any(a in avoid for a in range(start, start + need)):
            return start
    return 0


def write_allocation(graph: Graph, seg: SegmentOp, first: int, last: int,
                     alloc: Allocation, arch: Arch, avoid: set[int] | None = None) -> set[int]:
    """Annotate a segment and its matrix ops with `alloc` and concrete array ranges:
    compute arrays contiguous from `compute_base` (given the previous segment's busy
    arrays `avoid`), memory-mode arrays from the top down.  Returns this segment's
    busy arrays (compute and memory), the next segment's `avoid`."""
    need = sum(gop.cost.arrays * d for gop, d in zip(graph.ops[first:last + 1], alloc.copies))
    base = compute_base(need, sum(alloc.memory), avoid or set(), arch)
    low, high = base, arch.arrays
    kept = iter(alloc.kept)
    for local, gop in enumerate(graph.ops[first:last + 1]):
        spill = []
        for pos, t in enumerate(gop.outputs):
            if any(c <= last for c in graph.tensors[t].consumers) and not next(kept):
                spill.append(pos)
        if spill:
            gop.op.attributes["spill"] = array_prop(spill)
        if not gop.cost.arrays:
            continue
        d, m = alloc.copies[local], alloc.memory[local]
        gop.op.attributes["copies"] = IntegerAttr(d, i64)
        gop.op.attributes["arrays"] = array_prop([low, low + d * gop.cost.arrays])
        low += d * gop.cost.arrays
        if m:
            gop.op.attributes["memory"] = array_prop([high - m, high])
            high -= m
    assert low <= high, "MIP exceeded the array budget"
    attrs = seg.attributes
    attrs["compute_arrays"] = IntegerAttr(low - base, i64)
    attrs["memory_arrays"] = IntegerAttr(arch.arrays - high, i64)
    attrs["predicted_cycles"] = IntegerAttr(round(alloc.cycles), i64)
    attrs["load_cycles"] = IntegerAttr(round(alloc.load), i64)
    attrs["latency_cycles"] = IntegerAttr(round(alloc.latency), i64)
    attrs["solver_status"] = StringAttr(alloc.status)
    return set(range(base, low)) | set(range(high, arch.arrays))


@dataclass(frozen=True)
class CimAllocatePass(ModulePass):
    """Solve the array-allocation MIP of every segment and assign array addresses."""

    name = "cim-allocate"

    arch: str | None = None
    solver: str = "glpk"
    time_limit: float | int = 0.0

    def __post_init__(self) -> None:
        check_options(self.name, time_limit=self.time_limit)
        check_solver(self.name, self.solver)

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        arch = resolve_arch(op, self.arch)
        func = main_func(op)
        segments = segment_ops(func, self.name, "cim-segment")
        graph = build_graph(func, arch)
        busy: set[int] = set()
        for seg, (first, last), held_in, held_out in held_plan(graph, segments):
            problem = segment_problem(graph, first, last, held_in, held_out,
                                      COMPUTE_ONLY_ATTR not in seg.attributes)
            alloc = solve_cached(problem, arch, self.solver, self.time_limit or None,
                                 graph.span(first, last))
            busy = write_allocation(graph, seg, first, last, alloc, arch, busy)
