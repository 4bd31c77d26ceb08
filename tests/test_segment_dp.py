"""The DP of `cim-segment` against exhaustive search over every segmentation of small
random graphs (chains and DAGs with residual adds) on a tiny 8-array chip.

Each segment's cost is priced independently here: its latency by the brute-force
allocation search of test_mip.py (no solver), plus the weight loads of that allocation,
the pipeline fill and the boundary.  The DP must reach the exhaustive optimum."""

import itertools
import random

import pytest
from xdsl.dialects import func
from xdsl.dialects.builtin import ModuleOp, TensorType, f32
from xdsl.ir import Block, Region

from cmswitch.arch import arch_from_dict
from cmswitch.cost.graph import build_graph, segment_problem
from cmswitch.dialects.cim import MatmulOp, VectorOp
from cmswitch.transforms.cim_segment import dp_segments, segment_starts

from test_mip import SMALL, brute_force_latency


def _random_graph(rng: random.Random, dag: bool):
    m = rng.choice([16, 64, 256])
    width = rng.choice([64, 200, 320])
    block = Block(arg_types=[TensorType(f32, [m, width])])
    x, ops = block.args[0], []
    for i in range(rng.randint(2, 4)):
        n = rng.choice([40, 64, 200, 320])
        mm = MatmulOp(x, TensorType(f32, [m, n]), f"w{i}")
        ops.append(mm)
        y = mm.output
        if dag and i and rng.random() < 0.5 and n == x.type.get_shape()[-1]:
            add = VectorOp("add", [x, y], [y.type])  # residual branch
            ops.append(add)
            y = add.outputs[0]
        elif rng.random() < 0.5:
            relu = VectorOp("relu", [y], [y.type])
            ops.append(relu)
            y = relu.outputs[0]
        x = y
    block.add_ops(ops)
    block.add_op(func.ReturnOp(x))
    f = func.FuncOp("main", ([block.args[0].type], [x.type]), Region(block))
    return ModuleOp([f]), f


def _segment_cost(graph, first, last, arch):
    from cmswitch.solver.mip import load_cycles

    problem = segment_problem(graph, first, last)
    if sum(op.arrays for op in problem.ops) > arch.arrays:
        return None
    latency = brute_force_latency(problem, arch)
    # the fewest copies reaching that latency minimise the load (stage 2 of the MIP)
    copies = tuple(max(1, -(-op.compute // latency)) if op.arrays else 0 for op in problem.ops)
    copies = tuple(int(min(c, op.max_copies)) if op.arrays else 0
                   for c, op in zip(copies, problem.ops))
    fill = sum(arch.mvm_cycles for op in problem.ops if op.arrays)
    return latency + load_cycles(problem, copies, arch) + fill + 2 * arch.switch_cycles


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("dag", [False, True])
def test_dp_equals_exhaustive_segmentation(seed, dag):
    arch = arch_from_dict(SMALL)
    _, f = _random_graph(random.Random(seed * 2 + dag), dag)
    graph = build_graph(f, arch)
    if any(o.cost.arrays > arch.arrays for o in graph.ops):
        pytest.skip("an operator larger than the tiny chip")
    starts = segment_starts(graph)  # [0, matrix ops..., n]
    inner = starts[1:-1]
    best = float("inf")
    for r in range(len(inner) + 1):
        for cut in itertools.combinations(inner, r):
            bounds = [0, *cut, len(graph.ops)]
            costs = [_segment_cost(graph, a, b - 1, arch) for a, b in zip(bounds, bounds[1:])]
            if None not in costs:
                best = min(best, sum(costs))
    plan = dp_segments(graph, arch, "highs", window=0)
    total = sum(c.alloc.cycles + 2 * arch.switch_cycles for c in plan)
    assert total == pytest.approx(best, rel=1e-3)
