"""Layer-by-layer all-compute baselines, `puma` and `occ` (DESIGN.md §7).

Both run one weight operator per segment (with the vector operators that follow it),
every array in compute mode, activations through the global buffer (while they fit)
and DRAM — the execution model of compilers that map one layer at a time onto a chip
too small for the whole network:

- `puma` — after PUMA (Ankit et al., ASPLOS 2019), which replicates a layer's weights
  across the crossbars it has to raise throughput: the layer gets as many weight copies
  as fit the chip (``arrays // a_i``, at most one per input vector, ``M``), whatever
  they cost to program.
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
from cmswitch.transforms.cim_segment import SegmentChoice, segment_starts

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
        plan.append(SegmentChoice(first, last, all_compute(problem, tuple(copies), arch, style)))
    return plan
