"""`cim-segment`: split the network into segments by dynamic programming (DESIGN.md §4).

Operators are taken in program order (a topological order of the DAG).  A segment may
start at the first operator or at any weight/dynamic matrix op (vector ops ride with
the matrix op before them).  With ``cost(i, j)`` the segment MIP's predicted cycles
for operators ``i..j-1`` plus the boundary (two `CM.switch` statements)::

    best[0] = 0,  best[j] = min over i < j of best[i] + cost(i, j)

over start positions ``i`` whose segment fits one weight copy of each operator in the
chip and holds at most ``window`` matrix operators (these bound the window).  The DP is exact for its cost model.  Candidate
segments are priced with `cmswitch.solver.mip.solve_cached` — the model `cim-allocate`
uses.  Not yet modelled (see the issues): data held on chip across boundaries, weight
loads overlapping the previous segment's compute.
"""

from __future__ import annotations

from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects.builtin import IntegerAttr, ModuleOp, i64
from xdsl.dialects.func import FuncOp
from xdsl.ir import Block, Operation, Region
from xdsl.passes import ModulePass

from cmswitch.arch import Arch
from cmswitch.cost.graph import Graph, build_graph, segment_problem
from cmswitch.dialects.cim import SegmentOp, YieldOp
from cmswitch.errors import CMSwitchError
from cmswitch.solver.mip import Allocation, solve_cached
from cmswitch.transforms.common import check_options, check_solver, main_func, resolve_arch


DEFAULT_WINDOW = 6
"""Matrix operators per candidate segment (the DP window).  The array budget already
bounds it; this bound keeps the MIPs small for models of many small layers
(MobileNet fits ~30 of its layers in the chip at once).  0 lifts it."""


@dataclass(frozen=True)
class SegmentChoice:
    """Operators ``first..last`` (inclusive) form one segment, priced `alloc`."""

    first: int
    last: int
    alloc: Allocation


def segment_starts(graph: Graph) -> list[int]:
    """Operator indices where a segment may begin: 0 and every matrix op."""
    starts = [0] + [o.index for o in graph.ops if o.cost.arrays and o.index > 0]
    return starts + [len(graph.ops)]


def dp_segments(graph: Graph, arch: Arch, solver: str = "glpk",
                time_limit: float | None = None, window: int = 0) -> list[SegmentChoice]:
    """The DP: the cheapest sequence of segments covering all operators, each with at
    most `window` matrix operators (0: no limit besides the array budget).

    Raises CMSwitchError if one operator's single weight copy exceeds the chip (run
    `cim-partition` first)."""
    for o in graph.ops:
        if o.cost.arrays > arch.arrays:
            raise CMSwitchError(
                f"operator '{o.name}' needs {o.cost.arrays} arrays for one weight copy, "
                f"the chip has {arch.arrays}: run cim-partition first"
            )
    starts = segment_starts(graph)
    best = [0.0] + [float("inf")] * (len(starts) - 1)
    choice: list[tuple[int, Allocation] | None] = [None] * len(starts)
    boundary = 2 * arch.switch_cycles
    for v in range(1, len(starts)):
        arrays = 0
        for u in range(v - 1, -1, -1):
            arrays += sum(o.cost.arrays for o in graph.ops[starts[u]:starts[u + 1]])
            if arrays > arch.arrays or (window and v - u > window):
                break
            first, last = starts[u], starts[v] - 1
            alloc = solve_cached(segment_problem(graph, first, last), arch, solver, time_limit,
                                 graph.span(first, last))
            total = best[u] + alloc.cycles + boundary
            if total < best[v]:
                best[v], choice[v] = total, (u, alloc)
    result: list[SegmentChoice] = []
    v = len(starts) - 1
    while v > 0:
        u, alloc = choice[v]
        result.append(SegmentChoice(starts[u], starts[v] - 1, alloc))
        v = u
    return result[::-1]


def wrap_segments(func: FuncOp, graph: Graph, plan: list[SegmentChoice]) -> list[SegmentOp]:
    """Move each segment's operators into a `cim.segment` region op, yielding the values
    used after it; returns the new segment ops in order."""
    segments: list[SegmentOp] = []
    for seg_id, choice in enumerate(plan):
        ops = [graph.ops[i].op for i in range(choice.first, choice.last + 1)]
        segments.append(_wrap(ops, seg_id))
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


@dataclass(frozen=True)
class CimSegmentPass(ModulePass):
    """Split the model into segments by dynamic programming over the segment MIP."""

    name = "cim-segment"

    arch: str | None = None
    solver: str = "glpk"
    time_limit: float | int = 0.0
    window: int = DEFAULT_WINDOW

    def __post_init__(self) -> None:
        check_options(self.name, time_limit=self.time_limit, window=self.window)
        check_solver(self.name, self.solver)

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        arch = resolve_arch(op, self.arch)
        func = main_func(op)
        if any(isinstance(o, SegmentOp) for o in func.body.block.ops):
            raise CMSwitchError("cim-segment: the model is already segmented")
        graph = build_graph(func, arch)
        plan = dp_segments(graph, arch, self.solver, self.time_limit or None, self.window)
        for seg, choice in zip(wrap_segments(func, graph, plan), plan):
            seg.attributes["predicted_cycles"] = IntegerAttr(round(choice.alloc.cycles), i64)
