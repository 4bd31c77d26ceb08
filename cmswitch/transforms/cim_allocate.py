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
from dataclasses import dataclass, replace

from xdsl.context import Context
from xdsl.dialects.builtin import DictionaryAttr, IntegerAttr, ModuleOp, StringAttr, i64
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
    segment_tensor_ids,
)
from cmswitch.dialects.cim import SegmentOp, YieldOp, array_prop
from cmswitch.errors import CMSwitchError
from cmswitch.solver.mip import Allocation, solve_cache
from cmswitch.transforms.cim_segment import COMPUTE_ONLY_ATTR, HOLD_ATTR, PRELOADED_ATTR
from cmswitch.transforms.common import (
    HOLD_RANGE_ATTR,
    PLACES_ATTR,
    POOL_ATTR,
    SWITCH_ATTR,
    check_options,
    mode_changes,
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


def _runs(flags: list[bool], limit: int) -> list[tuple[int, int]]:
    """Maximal runs ``[lo, hi)`` below `limit` of arrays whose flag is set."""
    runs, lo = [], None
    for a in range(limit + 1):
        if a < limit and flags[a]:
            lo = a if lo is None else lo
        elif lo is not None:
            runs.append((lo, a))
            lo = None
    return runs


def _lead_options(sizes: list[int], free: list[bool], limit: int) -> list[list[int]]:
    """Candidate starts of the preloaded ops (`sizes`) in the `free` arrays below
    `limit`: side by side at either end of each free run that holds them all (an end
    keeps the rest of the run in one piece), else first fit one by one, as many as fit."""
    if not sizes:
        return [[]]
    group = sum(sizes)
    options = []
    for lo, hi in _runs(free, limit):
        for base in dict.fromkeys((lo, hi - group)):
            if hi - lo >= group:
                options.append(list(itertools.accumulate([base] + sizes[:-1])))
    if options:
        return options
    placed, free = [], list(free)
    for size in sizes:
        s = _fit(size, free, limit)
        if s is None:
            break
        placed.append(s)
        free[s:s + size] = [False] * size
    return [placed]


def place_compute(sizes: list[int], lead: int, limit: int, avoid: set[int], arrays: int,
                  ahead: tuple[list[int], int] | None = None) -> list[int]:
    """First array of each matrix op's compute range (`sizes`: ``d_i * a_i`` arrays, in
    op order) below `limit` (the segment's memory-mode arrays sit at the top).

    - The first `lead` ops (preloaded, §9.1) go into arrays missing `avoid` (the
      previous segment's compute and memory arrays), where their weights can be
      loaded while it runs (`_lead_options`).
    - The others form one contiguous block.
    - Among those placements the first, in order of preference, that (1) leaves the
      next segment's preloaded ops (`ahead` = their sizes and its limit) a first-fit
      place outside this segment's arrays, (2) keeps the block clear of `avoid` too
      (its weights can then load early as well), (3) by lead option, then lowest start.
    - If no block fits, the others first fit one by one (largest first) around a
      lead option; if
      even that fails, every op contiguous from array 0 (always fits: the MIP kept
      ``sum(sizes) <= limit``)."""
    free = [a not in avoid for a in range(arrays)]
    lead = min(lead, len(sizes))
    candidates = []  # (block misses avoid, option index, block start, lead starts)
    options = _lead_options(sizes[:lead], free, limit)
    for o, option in enumerate(options):
        taken = [False] * arrays
        for s, size in zip(option, sizes):
            taken[s:s + size] = [True] * size
        block = sum(sizes[len(option):])
        for s in range(limit - block + 1):
            if not any(taken[s:s + block]):
                candidates.append((not all(free[s:s + block]), o, s, option, taken))
    candidates.sort(key=lambda c: c[:3])

    def leaves_room(start: int, option: list[int], taken: list[bool]) -> bool:
        block = sum(sizes[len(option):])
        room = [not (t or start <= a < start + block or a >= limit) for a, t in enumerate(taken)]
        return _fits_all(ahead[0], room, ahead[1])

    if candidates:
        chosen = candidates[0]
        if ahead is not None:
            chosen = next((c for c in candidates if leaves_room(c[2], c[3], c[4])), chosen)
        _, _, s, option, _ = chosen
        starts = list(option)
        for size in sizes[len(option):]:
            starts.append(s)
            s += size
        return starts
    for option in options + [[]]:
        open_ = [a < limit for a in range(arrays)]
        for s, size in zip(option, sizes):
            open_[s:s + size] = [False] * size
        starts: dict[int, int] = dict(enumerate(option))
        for i in sorted(range(len(option), len(sizes)), key=lambda i: (-sizes[i], i)):
            s = _fit(sizes[i], open_, limit)  # first fit, largest first
            if s is None:
                break
            starts[i] = s
            open_[s:s + sizes[i]] = [False] * sizes[i]
        if len(starts) == len(sizes):
            return [starts[i] for i in range(len(sizes))]
    return list(itertools.accumulate([0] + sizes[:-1]))


def _compute_sizes(graph: Graph, first: int, last: int, alloc: Allocation) -> list[int]:
    """Compute arrays (``d_i * a_i``) of each matrix op of ``first..last``, in op order."""
    return [d * g.cost.arrays for g, d in zip(graph.ops[first:last + 1], alloc.copies)
            if g.cost.arrays]


@dataclass(frozen=True)
class Layout:
    """Where one segment's memory-mode arrays sit (half-open array ranges; empty
    ``(0, 0)`` when absent) and the span ``[floor, ceiling)`` its compute ranges use.

    The arrays holding the tensors kept across boundary ``k`` (after segment ``k``)
    sit at the top of the chip for even ``k`` and at the bottom for odd ``k``, so a
    segment's held-in and held-out ranges never collide; the pool sits right below
    the top range, compute below the pool (DESIGN.md §9.3)."""

    hold_in: tuple[int, int]
    hold_out: tuple[int, int]
    pool: tuple[int, int]
    floor: int
    ceiling: int

    def memory_ranges(self) -> list[tuple[int, int]]:
        return [r for r in (self.hold_in, self.pool, self.hold_out) if r[1] > r[0]]


def layout_of(k: int, problem: SegmentProblem, alloc: Allocation, arch: Arch,
              hold_in: tuple[int, int]) -> Layout:
    """The `Layout` of segment `k` given where the previous segment put its held-out
    tensors (`hold_in`)."""
    a, top, bottom = arch.arrays, 0, 0
    if hold_in[1] > hold_in[0]:
        if hold_in[1] == a:
            top = hold_in[1] - hold_in[0]
        else:
            bottom = hold_in[1]
    hold_out = (0, 0)
    if problem.hold_out:
        if k % 2 == 0:
            hold_out, top = (a - problem.hold_out, a), problem.hold_out
        else:
            hold_out, bottom = (0, problem.hold_out), problem.hold_out
    ceiling = a - top
    pool = (ceiling - alloc.pool, ceiling) if alloc.pool else (0, 0)
    return Layout(hold_in, hold_out, pool, bottom, ceiling - alloc.pool)


def _place(sizes: list[int], lead: int, lay: Layout, avoid: set[int], arch: Arch,
           ahead: tuple[list[int], int] | None) -> list[int]:
    """`place_compute` inside ``[lay.floor, lay.ceiling)``."""
    base = lay.floor
    shifted = place_compute(sizes, lead, lay.ceiling - base, {x - base for x in avoid if x >= base},
                            arch.arrays - base,
                            (ahead[0], ahead[1] - base) if ahead is not None else None)
    return [x + base for x in shifted]


def write_allocation(graph: Graph, seg: SegmentOp, first: int, last: int,
                     alloc: Allocation, problem: SegmentProblem, lay: Layout, arch: Arch,
                     avoid: set[int] | None = None, lead: int = 0,
                     ahead: tuple[list[int], int] | None = None) -> set[int]:
    """Annotate a segment and its matrix ops with `alloc`, its `Layout` and concrete
    compute ranges by `place_compute` (given the previous segment's busy arrays
    `avoid`, the number `lead` of this segment's preloaded ops and the next segment's
    preloaded sizes and limit `ahead`).  Returns this segment's busy arrays (compute
    and memory), the next segment's `avoid`."""
    gops = graph.ops[first:last + 1]
    mat = [g for g in gops if g.cost.arrays]
    sizes = _compute_sizes(graph, first, last, alloc)
    starts = _place(sizes, lead, lay, avoid or set(), arch, ahead)
    busy = {x for lo, hi in lay.memory_ranges() for x in range(lo, hi)}
    for gop in gops:
        for name in ("copies", "arrays"):  # a re-layout starts afresh
            gop.op.attributes.pop(name, None)
    for local, gop in enumerate(gops):
        if gop.cost.arrays:
            gop.op.attributes["copies"] = IntegerAttr(alloc.copies[local], i64)
    for gop, lo, size in zip(mat, starts, sizes):
        gop.op.attributes["arrays"] = array_prop([lo, lo + size])
        if busy.intersection(range(lo, lo + size)):
            raise CMSwitchError(f"internal: segment {seg.id.value.data}: compute ranges overlap")
        busy.update(range(lo, lo + size))
    ids = segment_tensor_ids(graph, first, last)
    attrs = seg.attributes
    for name in (POOL_ATTR, HOLD_RANGE_ATTR):
        attrs.pop(name, None)
    if lay.pool[1] > lay.pool[0]:
        attrs[POOL_ATTR] = array_prop(list(lay.pool))
    if lay.hold_out[1] > lay.hold_out[0]:
        attrs[HOLD_RANGE_ATTR] = array_prop(list(lay.hold_out))
    attrs[PLACES_ATTR] = DictionaryAttr({graph.tensors[t].name: StringAttr(place)
                                         for t, place in zip(ids, alloc.places)})
    attrs["compute_arrays"] = IntegerAttr(sum(sizes), i64)
    attrs["memory_arrays"] = IntegerAttr(alloc.memory_arrays(problem), i64)
    attrs["predicted_cycles"] = IntegerAttr(round(alloc.cycles), i64)
    attrs["load_cycles"] = IntegerAttr(round(alloc.load), i64)
    attrs["latency_cycles"] = IntegerAttr(round(alloc.latency), i64)
    attrs["solver_status"] = StringAttr(alloc.status)
    return busy


def _lead_placed(graph: Graph, ctx: SegmentContext, alloc: Allocation, lay: Layout,
                 busy: set[int], arch: Arch) -> bool:
    """Whether `place_compute` puts the preloaded ops of `ctx` in arrays the previous
    segment leaves unused (`busy` are its arrays)."""
    sizes = _compute_sizes(graph, ctx.first, ctx.last, alloc)
    starts = _place(sizes, ctx.preloaded, lay, busy, arch, None)
    return all(not busy.intersection(range(s, s + size))
               for s, size in zip(starts[:ctx.preloaded], sizes))


def _lead_sizes(graph: Graph, ctx: SegmentContext) -> list[int]:
    return [graph.ops[i].cost.arrays for i in preloadable(graph, ctx.first, ctx.last)
            [:ctx.preloaded]]


def _range_of(op, name: str) -> tuple[int, int] | None:
    attr = op.attributes.get(name)
    return tuple(attr.get_values()) if attr is not None else None


def add_switch_cycles(graph: Graph, plan: list[SegmentContext], arch: Arch) -> None:
    """Add to each segment's ``predicted_cycles`` its `CM.switch` statements times
    `switch_cycles` (DESIGN.md §9.8): the mode changes `cim-to-metaop` emits for this
    layout (`mode_changes`: its compute ranges and the next segment's preloaded ones
    to compute mode, its memory ranges to memory mode), recorded as ``switch_cycles``."""
    modes = ["C"] * arch.arrays
    hold_in: tuple[int, int] = (0, 0)
    for k, ctx in enumerate(plan):
        attrs = ctx.seg.attributes
        compute = [r for g in graph.ops[ctx.first:ctx.last + 1]
                   if (r := _range_of(g.op, "arrays")) is not None]
        if k + 1 < len(plan) and plan[k + 1].preloaded:
            nxt = plan[k + 1]
            compute += [_range_of(graph.ops[i].op, "arrays")
                        for i in preloadable(graph, nxt.first, nxt.last)[:nxt.preloaded]]
        memory = [r for r in (hold_in, _range_of(ctx.seg, POOL_ATTR),
                              _range_of(ctx.seg, HOLD_RANGE_ATTR)) if r and r[1] > r[0]]
        hold_in = _range_of(ctx.seg, HOLD_RANGE_ATTR) or (0, 0)
        switches = len(mode_changes(modes, compute, memory)) * arch.switch_cycles
        attrs[SWITCH_ATTR] = IntegerAttr(switches, i64)
        total = attrs["predicted_cycles"].value.data + switches
        attrs["predicted_cycles"] = IntegerAttr(total, i64)


def layout_segments(graph: Graph, plan: list[SegmentContext], allocs: list[Allocation],
            arch: Arch, busy: list[set[int]], layouts: list[Layout], start: int
            ) -> int | None:
    """Write the array ranges of segments `start`.. in order, appending their busy
    arrays to `busy` and layouts to `layouts`; returns the first segment whose
    preloaded ops found no arrays free of the previous segment's, or None."""
    for k in range(start, len(plan)):
        ctx, before = plan[k], busy[k - 1] if k else set()
        problem = ctx.problem(graph)
        lay = layout_of(k, problem, allocs[k], arch, layouts[k - 1].hold_out if k else (0, 0))
        if ctx.preloaded and not _lead_placed(graph, ctx, allocs[k], lay, before, arch):
            return k
        nxt = plan[k + 1] if k + 1 < len(plan) else None
        ahead = None
        if nxt is not None and nxt.preloaded:
            # the next segment's preloaded ops are its compute: below its pool as well
            # as outside this segment's arrays (a pool of the next segment above
            # them must stay one range)
            after = layout_of(k + 1, nxt.problem(graph), allocs[k + 1], arch, lay.hold_out)
            ahead = (_lead_sizes(graph, nxt), min(lay.ceiling, after.ceiling))
        busy.append(write_allocation(graph, ctx.seg, ctx.first, ctx.last, allocs[k],
                                     problem, lay, arch, before, ctx.preloaded, ahead))
        layouts.append(lay)
    return None


@dataclass(frozen=True)
class CimAllocatePass(ModulePass):
    """Solve the array-allocation MIP of every segment and assign array addresses.

    Options: ``arch``, ``solver`` (glpk | highs), ``time-limit`` (seconds per solve,
    0 = none), ``jobs`` (worker processes for the segments' MIPs,
    `cmswitch.solver.workers`; 0 = ``$CMSWITCH_JOBS`` or every core, 1 = in-process).
    The plan does not depend on ``jobs``."""

    name = "cim-allocate"

    arch: str | None = None
    solver: str = "glpk"
    time_limit: float | int = 0.0
    jobs: int = 0

    def __post_init__(self) -> None:
        check_options(self.name, time_limit=self.time_limit, jobs=self.jobs)
        check_solver(self.name, self.solver)

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        arch = resolve_arch(op, self.arch)
        func = main_func(op)
        segments = segment_ops(func, self.name, "cim-segment")
        graph = build_graph(func, arch)
        plan = held_plan(graph, segments)

        def solve(ks) -> list[Allocation]:
            """The allocations of segments `ks`, their MIPs on the worker processes."""
            return solve_cache().allocate_all(
                [(plan[k].problem(graph), graph.span(plan[k].first, plan[k].last))
                 for k in ks], arch, self.solver, self.time_limit or None, self.jobs)

        def drop_preload(k: int) -> None:
            """Segment k loads its leading weights itself after all, and segment k-1
            keeps no arrays for them: both re-priced (§9.1)."""
            plan[k] = replace(plan[k], preloaded=0)
            plan[k].seg.attributes.pop(PRELOADED_ATTR, None)
            plan[k - 1] = replace(plan[k - 1], reserve=0, prefetch=0)
            allocs[k - 1], allocs[k] = solve((k - 1, k))

        allocs = solve(range(len(plan)))
        busy: list[set[int]] = []  # busy[k]: the arrays segment k was laid out on
        layouts: list[Layout] = []
        start = 0
        while (failed := layout_segments(graph, plan, allocs, arch, busy, layouts, start)) \
                is not None:
            drop_preload(failed)
            # segment failed-2 chose its layout for failed-1's old allocation: redo from it
            start = max(0, failed - 2)
            del busy[start:]
            del layouts[start:]
        add_switch_cycles(graph, plan, arch)
