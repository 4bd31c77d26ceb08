"""Array layout: the addresses of each segment's compute copies, pool and hold ranges,
written as the `cim-allocate` annotations (`POOL_ATTR`, `HOLD_RANGE_ATTR`,
`PLACES_ATTR`, `SWITCH_ATTR` of `cmswitch.dialects.cim`, and each weight op's arrays).

Memory-mode ranges are taken from the top of the chip, compute copies from the bottom,
placed so that weight ops preloaded for the next segment sit in arrays this segment
leaves free (§9.1).  `annotate_plan` gives a baseline's plan (all its allocations
already solved) the same annotations `cim-segment` + `cim-allocate` write.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from xdsl.dialects.builtin import DictionaryAttr, IntegerAttr, StringAttr, i64
from xdsl.dialects.func import FuncOp

from cmswitch.arch import Arch
from cmswitch.cost.graph import (
    Graph,
    SegmentProblem,
    preloadable,
    segment_tensor_ids,
)
from cmswitch.dialects.cim import (
    HOLD_RANGE_ATTR,
    PLACES_ATTR,
    POOL_ATTR,
    SWITCH_ATTR,
    SegmentOp,
    array_prop,
)
from cmswitch.errors import CMSwitchError
from cmswitch.solver.mip import Allocation
from cmswitch.transforms.common import mode_changes
from cmswitch.transforms.segments import SegmentChoice, SegmentContext, held_plan, wrap_segments


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


def annotate_plan(func: FuncOp, graph: Graph, plan: list[SegmentChoice], arch: Arch,
                  origin: str = "plan") -> None:
    """Write a plan whose allocations are already solved (a baseline's: `cimmlc`,
    `puma`, `occ`, `greedy-mip`) into `func` as `cim-segment` + `cim-allocate` would:
    the `cim.segment` ops with their annotations, array addresses and switch cycles.
    Raises CMSwitchError (naming `origin`) when a layout finds no room, which a plan of
    whole-chip allocations without preloads never needs."""
    contexts = held_plan(graph, wrap_segments(func, graph, plan))
    if layout_segments(graph, contexts, [c.alloc for c in plan], arch, [], [], 0) is not None:
        raise CMSwitchError(f"{origin}: internal: a layout found no room")
    add_switch_cycles(graph, contexts, arch)
