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

from dataclasses import dataclass, replace

from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp
from xdsl.passes import ModulePass

from cmswitch.cost.graph import (
    build_graph,
)
from cmswitch.dialects.cim import PRELOADED_ATTR
from cmswitch.solver.mip import Allocation, solve_cache
from cmswitch.transforms.common import (
    check_options,
    check_solver,
    main_func,
    resolve_arch,
    segment_ops,
)
from cmswitch.transforms.layout import Layout, add_switch_cycles, layout_segments
from cmswitch.transforms.segments import held_plan


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
