"""Segments as the IR records them: the annotations `cim-segment` writes on each
`cim.segment` and the later passes and the baselines read (DESIGN.md §4).

`SegmentChoice` is one segment of a plan (the DP's, or a baseline's); `write_segments`
wraps a plan's operators in `cim.segment` ops with their annotations (`HOLD_ATTR`,
`PRELOADED_ATTR`, `COMPUTE_ONLY_ATTR` and ``predicted_cycles``, declared in
`cmswitch.dialects.cim`); `held_plan` reads them back as one `SegmentContext` per
segment (what crosses its boundaries).  No pass imports another: they share this.
"""

from __future__ import annotations

from dataclasses import dataclass

from xdsl.dialects.builtin import IntegerAttr, UnitAttr, i64
from xdsl.dialects.func import FuncOp
from xdsl.ir import Block, Operation, Region

from cmswitch.cost.graph import (
    Graph,
    SegmentProblem,
    held_tensors,
    preload_of,
    segment_problem,
)
from cmswitch.dialects.cim import (
    COMPUTE_ONLY_ATTR,
    HOLD_ATTR,
    PRELOADED_ATTR,
    SegmentOp,
    YieldOp,
)
from cmswitch.errors import CMSwitchError
from cmswitch.solver.mip import Allocation


@dataclass(frozen=True)
class SegmentChoice:
    """Operators ``first..last`` (inclusive) form one segment, priced `alloc`;
    `held_in` / `held_out` are the tensor ids kept on chip across its boundaries."""

    first: int
    last: int
    alloc: Allocation
    held_in: tuple[int, ...] = ()
    held_out: tuple[int, ...] = ()
    preloaded: int = 0
    """Leading weight ops of this segment loaded while the previous one ran (§9.1)."""
    memory_mode: bool = True
    """False: the segment runs compute-only (no memory-mode arrays, no switches)."""
    switch_cycles: float = 0.0
    """The mode switches the DP charged the segment (cycles, beside `alloc`)."""


MAX_VECTOR_RUN = 64
"""A run of more than this many operators without a matrix op (a matrix op and the
vector ops after it, or vector ops alone) gets a segment start every MAX_VECTOR_RUN
operators, so a long chain of vector ops is not one candidate (issue 15: a chain of
20,000 Relus was one segment with a 20,000-tensor placement).  The bundled models'
runs are at most 22 long, so their plans do not change."""

MAX_SEGMENT_OPS = 256
"""A candidate segment (DP, CIM-MLC's greedy packing) holds at most this many operators
unless it is a single run of `segment_starts`.  Bounds each segment MIP's size; the
bundled models' segments hold at most 50."""


def segment_starts(graph: Graph) -> list[int]:
    """Operator indices where a segment may begin, then ``len(graph.ops)``: 0, every
    matrix op, and every `MAX_VECTOR_RUN`-th operator of a longer run without one."""
    starts = [0]
    for op in graph.ops[1:]:
        if op.cost.arrays or op.index - starts[-1] >= MAX_VECTOR_RUN:
            starts.append(op.index)
    return starts + [len(graph.ops)]


def wrap_segments(func: FuncOp, graph: Graph, plan: list[SegmentChoice]) -> list[SegmentOp]:
    """Move each segment's operators into a `cim.segment` region op, yielding the values
    used after it; returns the new segment ops in order.  The view ops the graph leaves
    out (`cmswitch.cost.views`) go with the segment of the next operator after them
    in program order (their sources were made before, their readers come after)."""
    order = graph.order
    position = {op: k for k, op in enumerate(order)}
    segments: list[SegmentOp] = []
    begin = 0
    for seg_id, choice in enumerate(plan):
        end = position[graph.ops[choice.last].op] + 1
        if seg_id == len(plan) - 1:
            end = len(order)
        segments.append(_wrap(order[begin:end], seg_id))
        begin = end
    return segments


def _wrap(ops: list[Operation], seg_id: int) -> SegmentOp:
    inside = set(ops)
    escaping = [r for op in ops for r in op.results
                if any(use.operation not in inside for use in r.uses)]
    block = ops[0].parent
    seg = SegmentOp(seg_id, [v.type for v in escaping], Region(Block()))
    block.insert_op_before(seg, ops[0])
    for op in ops:
        op.detach()
        seg.body.block.add_op(op)
    seg.body.block.add_op(YieldOp(escaping))
    for value, result in zip(escaping, seg.outs, strict=True):
        for use in list(value.uses):
            if use.operation not in inside and use.operation.parent is not seg.body.block:
                use.operation.operands[use.index] = result
    return seg


def predicted_cycles(plan: list[SegmentChoice]) -> int:
    """The plan's predicted cycles as `write_segments` records them (each segment's
    ``predicted_cycles``, rounded)."""
    return sum(round(choice.alloc.cycles) for choice in plan)


def write_segments(func: FuncOp, graph: Graph, plan: list[SegmentChoice]) -> None:
    """Wrap each segment of `plan` in a `cim.segment` with its annotations
    (``predicted_cycles``, `HOLD_ATTR`, `PRELOADED_ATTR`, `COMPUTE_ONLY_ATTR`): what
    `cim-segment` leaves for `cim-allocate`."""
    for seg, choice in zip(wrap_segments(func, graph, plan), plan):
        seg.attributes["predicted_cycles"] = IntegerAttr(round(choice.alloc.cycles), i64)
        if choice.held_out:
            seg.attributes[HOLD_ATTR] = UnitAttr()
        if choice.preloaded:
            seg.attributes[PRELOADED_ATTR] = IntegerAttr(choice.preloaded, i64)
        if not choice.memory_mode:
            seg.attributes[COMPUTE_ONLY_ATTR] = UnitAttr()


def segment_ranges(graph: Graph, segments: list[SegmentOp]) -> list[tuple[int, int]]:
    """``(first, last)`` operator indices of each segment in the flattened graph."""
    index = {o.op: o.index for o in graph.ops}
    ranges = []
    for seg in segments:
        members = [index[o] for o in seg.body.block.ops if o in index]
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
                               not self.seg.compute_only, self.preloaded,
                               self.reserve, self.prefetch)


def held_plan(graph: Graph, segments: list[SegmentOp]) -> list[SegmentContext]:
    """The `SegmentContext` of each segment, in order.  Raises CMSwitchError if a
    `preloaded` count exceeds the segment's leading weight ops or the first segment
    claims one."""
    ranges = segment_ranges(graph, segments)
    held = [held_tensors(graph, first, last, ranges[k + 1][1])
            if seg.holds and k + 1 < len(ranges) else ()
            for k, (seg, (first, last)) in enumerate(zip(segments, ranges))]
    pre = [seg.preloaded for seg in segments]
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
