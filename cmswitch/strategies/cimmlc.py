"""The `cimmlc` baseline: every array stays in compute mode (DESIGN.md §7).

Reproduces the core-level passes of the public CIM-MLC beta (`optimization/Core*.py`)
on our operator graph, so both strategies share the importer, `cim-partition`, the
lowering and the simulator:

1. *Virtual mapping* — arrays per weight copy as in our cost model.  (CIM-MLC maps a
   grouped conv with its full input channels; we keep the correct grouped mapping for
   both strategies so the comparison isolates the dual-mode decision.)
2. *Segmentation* — walk the operators in order and pack them into the current segment
   until the next one's weights would exceed the arrays; then start a new segment.
3. *Duplication* — per segment, a knapsack over the leftover arrays chooses each conv's
   copies ``k+1`` to minimise the **sum** of its operators' latencies
   ``M*mvm_cycles/(k+1)``, allowing only ``k+1`` that divides the output width;
   Gemm/MatMul are not duplicated.
4. No memory-mode arrays: activations go through the global buffer (kept while they fit)
   and DRAM.

Left out: CIM-MLC's pipeline balancing (capping later convs' copies by the first conv's
copies over the strides so far) — our knapsack may therefore duplicate a later conv
more than CIM-MLC would.  Each segment is priced by `evaluate_allocation`, the same
constraints the CMSwitch MIP optimises.
"""

from __future__ import annotations

from cmswitch.arch import Arch
from cmswitch.cost.graph import Graph, SegmentProblem, segment_problem
from cmswitch.dialects.cim import Conv2dOp, tensor_shape
from cmswitch.errors import CMSwitchError
from cmswitch.solver.mip import Allocation, evaluate_allocation
from cmswitch.transforms.segments import MAX_SEGMENT_OPS, SegmentChoice, segment_starts


def greedy_segments(graph: Graph, arch: Arch) -> list[tuple[int, int]]:
    """(first, last) operator ranges: pack consecutive units while one weight copy of
    each fits the arrays (and the segment holds at most `MAX_SEGMENT_OPS` operators).  Raises CMSwitchError if one operator alone does not fit."""
    starts = segment_starts(graph)
    ranges: list[tuple[int, int]] = []
    begin, used = starts[0], 0
    for u in range(len(starts) - 1):
        need = sum(o.cost.arrays for o in graph.ops[starts[u]:starts[u + 1]])
        if need > arch.arrays:
            raise CMSwitchError(f"operator at index {starts[u]} needs {need} arrays for one "
                                f"weight copy, the chip has {arch.arrays}: run cim-partition first")
        too_long = starts[u + 1] - begin > MAX_SEGMENT_OPS
        if (used + need > arch.arrays or too_long) and starts[u] > begin:
            ranges.append((begin, starts[u] - 1))
            begin, used = starts[u], 0
        used += need
    ranges.append((begin, len(graph.ops) - 1))
    return ranges


def _copy_options(graph: Graph, index: int, leftover: int) -> list[int]:
    """Copy counts CIM-MLC allows for a conv: divisors of its output width that fit."""
    op = graph.ops[index]
    width = tensor_shape(op.op.output)[3]
    return [c for c in range(1, width + 1)
            if width % c == 0 and (c - 1) * op.cost.arrays <= leftover]


def duplicate(graph: Graph, first: int, last: int, arch: Arch) -> dict[int, int]:
    """Knapsack over the leftover arrays: copies per conv minimising the sum of the
    segment's conv latencies ``compute/copies``.  Returns {op index: copies}."""
    ops = range(first, last + 1)
    copies = {i: 1 for i in ops if graph.ops[i].cost.arrays}
    leftover = arch.arrays - sum(graph.ops[i].cost.arrays for i in copies)
    convs = [i for i in copies if isinstance(graph.ops[i].op, Conv2dOp)]
    # best[b] = (sum of latencies, choices) using at most b extra arrays
    best: list[tuple[float, dict[int, int]]] = [(0.0, {})] * (leftover + 1)
    for i in convs:
        cost = graph.ops[i].cost
        nxt: list[tuple[float, dict[int, int]]] = []
        for budget in range(leftover + 1):
            options = []
            for c in _copy_options(graph, i, budget):
                extra = (c - 1) * cost.arrays
                base_lat, base_choice = best[budget - extra]
                options.append((base_lat + cost.compute / c, -c, {**base_choice, i: c}))
            lat, _, choice = min(options, key=lambda o: (o[0], o[1]))
            nxt.append((lat, choice))
        best = nxt
    copies.update(best[leftover][1])
    return copies


def cimmlc_plan(graph: Graph, arch: Arch) -> list[SegmentChoice]:
    """The baseline's segments with their fixed allocations and predicted cycles."""
    plan = []
    for first, last in greedy_segments(graph, arch):
        problem = segment_problem(graph, first, last)
        chosen = duplicate(graph, first, last, arch)
        d = tuple(chosen.get(i, 0) for i in range(first, last + 1))
        plan.append(SegmentChoice(first, last, all_compute(problem, d, arch, "cimmlc")))
    return plan


def all_compute(problem: SegmentProblem, copies: tuple[int, ...], arch: Arch,
                status: str) -> Allocation:
    """Price an all-compute allocation (no memory-mode arrays) with `copies`: the
    tensors the segment streams stay in the global buffer while their windows fit, in
    order, the rest go through DRAM (`evaluate_allocation`).  Shared by the
    all-compute baselines."""
    places, room = [], arch.global_buffer_bytes
    for use in problem.tensors:
        if use.fixed:
            places.append(use.fixed)
            continue
        places.append("gb" if use.window <= room else "dram")
        room -= use.window if places[-1] == "gb" else 0
    return evaluate_allocation(problem, copies, 0, tuple(places), arch, status=status)
