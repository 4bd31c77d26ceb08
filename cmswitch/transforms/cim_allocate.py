"""`cim-allocate`: solve one MIP per segment and write the allocation (DESIGN.md §4).

For every `cim.segment` (from `cim-segment`) the segment MIP
(`cmswitch.solver.mip`) gives weight copies ``d_i`` and memory-mode arrays ``m_i`` per
matrix operator and which internal tensors stay on chip.  Concrete addresses follow:
memory-mode arrays from the top down, in operator order, so consecutive segments keep
most arrays in memory mode; compute ranges by `place_compute`: the weight ops
`cim-segment` chose to preload in arrays the previous segment leaves unused, the
others in one block placed to leave the next segment's preloaded ops room and,
where possible, to miss the previous segment's arrays too, so their weights can be
loaded while it still runs (§9.1).

Attributes written — on each matrix op: ``copies``, ``arrays = array<i64: lo, hi>``
(compute), ``memory = array<i64: lo, hi>`` (when ``m_i > 0``), ``spill`` (indices of
outputs sent to DRAM); on each segment: ``compute_arrays``, ``memory_arrays``,
``predicted_cycles``, ``load_cycles``, ``latency_cycles`` and ``solver_status``.
Read from `cim-segment`: a segment's ``hold`` (its tensors passed only to the next
segment stay on chip: the held bytes enter both MIPs), ``preloaded`` (its first N
weight ops load during the previous segment, which reserves their arrays and streams
their bytes) and ``compute_only`` (no memory-mode arrays: the all-compute ablation).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects.builtin import IntegerAttr, ModuleOp, StringAttr, i64
from xdsl.passes import ModulePass

from cmswitch.arch import Arch
from cmswitch.cost.graph import (
    Graph,
    SegmentProblem,
    build_graph,
    held_tensors,
    preload_of,
    preloadable,
    segment_problem,
)
from cmswitch.dialects.cim import SegmentOp, YieldOp, array_prop
from cmswitch.errors import CMSwitchError
from cmswitch.solver.mip import Allocation, solve_cached
from cmswitch.transforms.cim_segment import COMPUTE_ONLY_ATTR, HOLD_ATTR, PRELOADED_ATTR
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


@dataclass(frozen=True)
class SegmentContext:
    """One `cim.segment` with what crosses its boundaries, from the attributes
    `cim-segment` wrote: the tensor ids held on chip before / after it (`hold`), how
    many of its leading weight ops were loaded during the previous segment
    (`preloaded`, §9.1) and the arrays / bytes of the next segment's preload it
    reserves and streams (`preload_of`)."""

    seg: SegmentOp
    first: int
    last: int
    held_in: tuple[int, ...] = ()
    held_out: tuple[int, ...] = ()
    preloaded: int = 0
    reserve: int = 0
    prefetch: int = 0

    def problem(self, graph: Graph) -> SegmentProblem:
        """The segment MIP's input (`segment_problem`)."""
        return segment_problem(graph, self.first, self.last, self.held_in, self.held_out,
                               COMPUTE_ONLY_ATTR not in self.seg.attributes, self.preloaded,
                               self.reserve, self.prefetch)


def _preloaded(seg: SegmentOp) -> int:
    attr = seg.attributes.get(PRELOADED_ATTR)
    if attr is None:
        return 0
    if not isinstance(attr, IntegerAttr) or attr.value.data < 0:
        raise CMSwitchError(f"cim.segment {seg.id.value.data}: 'preloaded' must be a "
                            f"non-negative integer")
    return attr.value.data


def held_plan(graph: Graph, segments: list[SegmentOp]) -> list[SegmentContext]:
    """The `SegmentContext` of each segment, in order.  Raises CMSwitchError if a
    `preloaded` count exceeds the segment's leading weight ops or the first segment
    claims one."""
    ranges = segment_ranges(graph, segments)
    held = [held_tensors(graph, first, last, ranges[k + 1][1])
            if HOLD_ATTR in seg.attributes and k + 1 < len(ranges) else ()
            for k, (seg, (first, last)) in enumerate(zip(segments, ranges))]
    pre = [_preloaded(seg) for seg in segments]
    if pre and pre[0]:
        raise CMSwitchError("the first cim.segment has no previous segment to preload it")
    plan = []
    for k, (seg, (first, last)) in enumerate(zip(segments, ranges)):
        reserve, nbytes = (0, 0)
        if k + 1 < len(segments) and pre[k + 1]:
            reserve, nbytes = preload_of(graph, *ranges[k + 1], pre[k + 1])
        plan.append(SegmentContext(seg, first, last, held[k - 1] if k else (), held[k],
                                   pre[k], reserve, nbytes))
    return plan


def _fit(size: int, free: list[bool], limit: int) -> int | None:
    """Lowest start of `size` consecutive arrays below `limit` all marked `free`."""
    run = 0
    for a in range(limit):
        run = run + 1 if free[a] else 0
        if run == size:
            return a - size + 1
    return None if size else 0


def _fits_all(sizes: list[int], free: list[bool], limit: int) -> bool:
    """Whether ranges of `sizes` fit, first fit in order, in the `free` arrays."""
    free = list(free)
    for size in sizes:
        s = _fit(size, free, limit)
        if s is None:
            return False
        free[s:s + size] = [False] * size
    return True


def place_compute(sizes: list[int], lead: int, limit: int, avoid: set[int], arrays: int,
                  ahead: tuple[list[int], int] | None = None) -> list[int]:
    """First array of each matrix op's compute range (`sizes`: ``d_i * a_i`` arrays, in
    op order) below `limit` (the segment's memory-mode arrays sit at the top).

    - The first `lead` ops (preloaded, §9.1) go first fit into arrays missing `avoid`
      (the previous segment's compute and memory arrays), where their weights can be
      loaded while it runs.
    - The others form one contiguous block, at the lowest start that (1) leaves the
      next segment's preloaded ops (`ahead` = their sizes and its limit) a first-fit
      place outside this segment's arrays, then (2) misses `avoid` (so they can be
      loaded early too, opportunistically).
    - If that block finds no room, each op first fit; if even that fails, every op
      contiguous from array 0 (always fits: the MIP kept ``sum(sizes) <= limit``)."""
    free = [a not in avoid for a in range(arrays)]
    taken = [False] * arrays
    starts: list[int | None] = [None] * len(sizes)
    for i in range(min(lead, len(sizes))):
        s = _fit(sizes[i], [f and not t for f, t in zip(free, taken)], limit)
        if s is None:
            break
        starts[i] = s
        taken[s:s + sizes[i]] = [True] * sizes[i]
    rest = [i for i, s in enumerate(starts) if s is None]
    block = sum(sizes[i] for i in rest)
    open_ = [not t for t in taken]

    def score(s: int) -> tuple[bool, bool, int]:
        ok = True
        if ahead is not None:
            busy = [t or s <= a < s + block or a >= limit for a, t in enumerate(taken)]
            ok = _fits_all(ahead[0], [not b for b in busy], ahead[1])
        return (not ok, not all(free[s:s + block]), s)

    candidates = [s for s in range(limit - block + 1) if all(open_[s:s + block])]
    if candidates:
        s = min(candidates, key=score)
        for i in rest:
            starts[i], s = s, s + sizes[i]
        return [int(x) for x in starts]
    for i in rest:
        s = _fit(sizes[i], open_, limit)
        if s is None:
            return list(itertools.accumulate([0] + sizes[:-1]))
        starts[i] = s
        open_[s:s + sizes[i]] = [False] * sizes[i]
    return [int(x) for x in starts]


def write_allocation(graph: Graph, seg: SegmentOp, first: int, last: int,
                     alloc: Allocation, arch: Arch, avoid: set[int] | None = None,
                     lead: int = 0, ahead: tuple[list[int], int] | None = None) -> set[int]:
    """Annotate a segment and its matrix ops with `alloc` and concrete array ranges:
    memory-mode arrays from the top down, compute ranges by `place_compute` (given the
    previous segment's busy arrays `avoid`, the number `lead` of this segment's
    preloaded ops and the next segment's preloaded sizes and limit `ahead`).  Returns
    this segment's busy arrays (compute and memory), the next segment's `avoid`."""
    gops = graph.ops[first:last + 1]
    mat = [(local, g) for local, g in enumerate(gops) if g.cost.arrays]
    sizes = [alloc.copies[local] * g.cost.arrays for local, g in mat]
    limit = arch.arrays - sum(alloc.memory)
    starts = place_compute(sizes, lead, limit, avoid or set(), arch.arrays, ahead)
    busy = set(range(limit, arch.arrays))
    high = arch.arrays
    kept = iter(alloc.kept)
    for local, gop in enumerate(gops):
        spill = []
        for pos, t in enumerate(gop.outputs):
            if any(c <= last for c in graph.tensors[t].consumers) and not next(kept):
                spill.append(pos)
        if spill:
            gop.op.attributes["spill"] = array_prop(spill)
    for ((local, gop), lo, size) in zip(mat, starts, sizes):
        d, m = alloc.copies[local], alloc.memory[local]
        gop.op.attributes["copies"] = IntegerAttr(d, i64)
        gop.op.attributes["arrays"] = array_prop([lo, lo + size])
        busy.update(range(lo, lo + size))
        if m:
            gop.op.attributes["memory"] = array_prop([high - m, high])
            high -= m
    assert len(busy) == sum(sizes) + arch.arrays - limit, "compute ranges overlap"
    attrs = seg.attributes
    attrs["compute_arrays"] = IntegerAttr(sum(sizes), i64)
    attrs["memory_arrays"] = IntegerAttr(arch.arrays - limit, i64)
    attrs["predicted_cycles"] = IntegerAttr(round(alloc.cycles), i64)
    attrs["load_cycles"] = IntegerAttr(round(alloc.load), i64)
    attrs["latency_cycles"] = IntegerAttr(round(alloc.latency), i64)
    attrs["solver_status"] = StringAttr(alloc.status)
    return busy


def _lead_sizes(graph: Graph, ctx: SegmentContext) -> list[int]:
    return [graph.ops[i].cost.arrays for i in preloadable(graph, ctx.first, ctx.last)
            [:ctx.preloaded]]


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
        plan = held_plan(graph, segments)
        allocs = [solve_cached(ctx.problem(graph), arch, self.solver, self.time_limit or None,
                               graph.span(ctx.first, ctx.last)) for ctx in plan]
        busy: set[int] = set()
        for k, (ctx, alloc) in enumerate(zip(plan, allocs)):
            ahead = None
            if k + 1 < len(plan) and plan[k + 1].preloaded:
                ahead = (_lead_sizes(graph, plan[k + 1]),
                         arch.arrays - sum(allocs[k + 1].memory))
            busy = write_allocation(graph, ctx.seg, ctx.first, ctx.last, alloc, arch, busy,
                                    ctx.preloaded, ahead)
