"""Layer-by-layer all-compute baselines, `puma` and `occ` (DESIGN.md §7).

Both run one weight operator per segment (with the vector operators that follow it),
every array in compute mode, activations through the global buffer (while they fit)
and DRAM — the execution model of compilers that map one layer at a time onto a chip
too small for the whole network:

- `puma` — after PUMA (Ankit et al., ASPLOS 2019), which replicates a layer's weights
  across the crossbars it has to raise throughput: the layer gets up to as many weight
  copies as fit the chip (``arrays // a_i``, at most one per input vector, ``M``) —
  the count of those with the fewest predicted cycles, so that a copy whose
  programming costs more than it saves is not made.  (Replicating blindly made `puma`
  slower on a bigger chip: ResNet-18 2.18 M cycles on 192 arrays vs 1.79 M on 96,
  issue 12.)
- `occ` — after OCC (Siemieniuk et al., IEEE TCAD 2021), which maps each layer's
  weights once and tiles the computation over them: one copy per layer.

Left out: PUMA's spatial pipelining of layers across tiles and its instruction-level
scheduling; OCC's loop tiling and its MLIR affine lowering.  What stays is the part
that decides CIM cycles on a dual-mode chip: all-compute arrays and layer-wise
segments.  Each segment is priced by `evaluate_allocation`, the constraints the
CMSwitch MIP optimises, so the comparison isolates the mapping decisions.
"""

from __future__ import annotations

from cmswitch.arch import Arch
from cmswitch.cost.graph import Graph, segment_problem
from cmswitch.errors import CMSwitchError
from cmswitch.strategies.cimmlc import all_compute
from cmswitch.transforms.segments import SegmentChoice, segment_starts

LAYERWISE = ("puma", "occ")


def layer_segments(graph: Graph) -> list[tuple[int, int]]:
    """(first, last) operator ranges: each matrix operator with the vector operators
    after it (the first range also takes any vector operators before it)."""
    starts = segment_starts(graph)
    return [(a, b - 1) for a, b in zip(starts, starts[1:])]


def layerwise_plan(graph: Graph, arch: Arch, style: str) -> list[SegmentChoice]:
    """The `puma` or `occ` plan with its predicted cycles.  Raises CMSwitchError for an
    unknown style or an operator larger than the chip (run cim-partition first)."""
    if style not in LAYERWISE:
        raise CMSwitchError(f"unknown layer-wise style '{style}' (choose from puma, occ)")
    plan = []
    for first, last in layer_segments(graph):
        problem = segment_problem(graph, first, last, memory_mode=False)
        copies = []
        for op in problem.ops:
            if not op.arrays:
                copies.append(0)
                continue
            if op.arrays > arch.arrays:
                raise CMSwitchError(f"operator at index {first} needs {op.arrays} arrays, the "
                                    f"chip has {arch.arrays}: run cim-partition first")
            copies.append(min(max(op.m, 1), arch.arrays // op.arrays) if style == "puma" else 1)
        if style == "puma":
            copies = _fewest_cycles(problem, copies, arch)
        plan.append(SegmentChoice(first, last, all_compute(problem, tuple(copies), arch, style)))
    return plan


def _fewest_cycles(problem, most: list[int], arch: Arch) -> list[int]:
    """The copies ``d <= most`` of the layer's one matrix op with the fewest predicted
    cycles (the smallest such ``d``).  With every array computing the placement does
    not depend on ``d``, so the cycles ``max(w/ext, d w/write) + max(c/d, ports) +
    fill`` are convex in ``d``: a binary search on the sign of ``f(d+1) - f(d)``."""
    at = [i for i, d in enumerate(most) if d]
    if len(at) != 1:
        return most

    def cycles(d: int) -> float:
        trial = list(most)
        trial[at[0]] = d
        return all_compute(problem, tuple(trial), arch, "puma").cycles

    lo, hi = 1, most[at[0]]
    while lo < hi:
        mid = (lo + hi) // 2
        if cycles(mid + 1) < cycles(mid):
            lo = mid + 1
        else:
            hi = mid
    best = list(most)
    best[at[0]] = lo
    return best
