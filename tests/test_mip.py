"""The segment MIP against an independent brute-force evaluator on small problems.

The evaluator enumerates every allocation (copies, memory arrays, edges kept) of a tiny
chip and computes its best throughput from the constraints directly (bisection on T),
without Pyomo.  The MIP's latency must equal the best one found."""

import itertools
import random

import pytest

from cmswitch.arch import arch_from_dict, load_arch
from cmswitch.cost.graph import Edge, SegmentProblem
from cmswitch.cost.model import OpCost, _weight_op_cost
from cmswitch.solver.mip import latency_scale, solve_segment

SMALL = dict(load_arch("dynaplasia").model_dump(), name="small", arrays=8)


def _feasible(p: SegmentProblem, arch, d, m, y, lat: float) -> bool:
    """Can allocation (d, m, y) sustain latency `lat` cycles?"""
    ib = arch.internal_bw_bits / 8
    gb_need = 0.0
    for op, di, mi in zip(p.ops, d, m):
        if not op.arrays:
            continue
        if op.compute / di > lat * (1 + 1e-9):
            return False
        gb_need += max(0.0, op.feed / lat - ib * mi)
    if gb_need > arch.global_buffer_bw_bytes * (1 + 1e-9):
        return False
    dram = p.live_in + p.live_out + sum(2 * e.bytes for e, k in zip(p.edges, y) if not k)
    if dram / lat > arch.external_bw_bytes * (1 + 1e-9):
        return False
    vops = sum(op.vector_ops for op in p.ops)
    return vops / lat <= arch.vector_ops_per_cycle * (1 + 1e-9)


def brute_force_latency(p: SegmentProblem, arch) -> float:
    """The smallest latency of any allocation."""
    return _brute_force(p, arch, lambda lat, d: lat)


def brute_force_cycles(p: SegmentProblem, arch) -> float:
    """The fewest predicted cycles (weight loads + latency + fill) of any allocation."""
    from cmswitch.solver.mip import load_cycles

    fill = sum(arch.mvm_cycles for op in p.ops if op.arrays)
    return _brute_force(p, arch, lambda lat, d: lat + load_cycles(p, d, arch) + fill)


def _brute_force(p: SegmentProblem, arch, score) -> float:
    mat = [i for i, op in enumerate(p.ops) if op.arrays]
    best = float("inf")
    for d in itertools.product(*[range(1, p.ops[i].max_copies + 1) for i in mat]):
        used = sum(p.ops[i].arrays * di for i, di in zip(mat, d))
        if used > arch.arrays:
            continue
        for m in itertools.product(range(arch.arrays - used + 1), repeat=len(mat)):
            if used + sum(m) > arch.arrays:
                continue
            for y in itertools.product([False, True], repeat=len(p.edges)):
                cap = arch.global_buffer_bytes + arch.array_bytes * sum(m)
                if sum(e.window for e, k in zip(p.edges, y) if k) > cap:
                    continue
                dd, mm = [0] * len(p.ops), [0] * len(p.ops)
                for i, di, mi in zip(mat, d, m):
                    dd[i], mm[i] = di, mi
                lo, hi = latency_scale(p, arch) * 0.999, 1e12
                if not _feasible(p, arch, dd, mm, y, hi):
                    continue
                for _ in range(100):
                    mid = (lo * hi) ** 0.5
                    lo, hi = (lo, mid) if _feasible(p, arch, dd, mm, y, mid) else (mid, hi)
                best = min(best, score(hi, tuple(dd)))
    return best


def _random_problem(rng: random.Random, arch) -> SegmentProblem:
    ops = []
    for _ in range(rng.randint(1, 2)):
        k, n = rng.choice([64, 200, 320, 500]), rng.choice([16, 40, 64])
        ops.append(_weight_op_cost("", rng.choice([16, 64, 256, 1024]), k, n, 1, arch))
        if rng.random() < 0.5:
            ops.append(OpCost("", "vector", vector_ops=rng.choice([100, 5000, 50000])))
    edges = tuple(Edge(b, rng.choice([b, b // 4 + 1]))
                  for b in (rng.choice([2000, 20000, 90000]) for _ in range(rng.randint(0, 2))))
    return SegmentProblem(tuple(o for o in ops if o.arrays <= arch.arrays),
                          rng.choice([1000, 10000, 50000]), rng.choice([500, 5000]), edges)


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("solver", ["glpk", "highs"])
def test_mip_matches_brute_force(seed: int, solver: str):
    arch = arch_from_dict(SMALL)
    p = _random_problem(random.Random(seed), arch)
    want = brute_force_cycles(p, arch)
    got = solve_segment(p, arch, solver)
    assert got.cycles == pytest.approx(want, rel=1e-4)
    assert sum(op.arrays * d + m for op, d, m in zip(p.ops, got.copies, got.memory)) <= arch.arrays


@pytest.mark.parametrize("seed", range(12))
def test_fixed_allocation_evaluator_agrees_with_mip(seed: int):
    from cmswitch.solver.mip import evaluate_allocation

    arch = arch_from_dict(SMALL)
    p = _random_problem(random.Random(seed), arch)
    got = solve_segment(p, arch, "highs")
    again = evaluate_allocation(p, got.copies, got.memory, got.kept, arch)
    assert again.latency == pytest.approx(got.latency, rel=2e-4)


def test_canonical_memory_by_hand():
    """internal_bw 32 bits = 4 B/cycle per array.  Feeds 10, 7, 2 B/cycle (t = 1):
    whole arrays 2, 1, 0; remainders 2, 3, 2 -> with 5 arrays the two extra go to
    op 1 (remainder 3), then op 0 (remainder 2, first of the tie): [3, 2, 0], 2 B/cycle
    left for the global buffer.  With 8 arrays all three remainders are covered and
    the 2 left over go to the first matrix op: [5, 2, 1]."""
    from cmswitch.solver.mip import canonical_memory

    arch = arch_from_dict(SMALL)
    ops = (OpCost("", "weight", arrays=1, feed=10), OpCost("", "vector", vector_ops=5),
           OpCost("", "weight", arrays=1, feed=7), OpCost("", "weight", arrays=1, feed=2))
    p = SegmentProblem(ops, 0, 0, ())
    assert canonical_memory(p, arch, 1.0, 5) == (3, 0, 2, 0)
    assert canonical_memory(p, arch, 1.0, 8) == (5, 0, 2, 1)
    # 40 B/cycle unmet with no arrays exceeds the 32 B/cycle global buffer
    assert canonical_memory(p, arch, 2.0, 0) is None


@pytest.mark.parametrize("seed", range(12))
def test_glpk_and_highs_agree_on_the_whole_allocation(seed: int):
    """§9.9: the same copies, memory arrays and kept edges from either solver."""
    arch = arch_from_dict(SMALL)
    p = _random_problem(random.Random(seed), arch)
    g, h = solve_segment(p, arch, "glpk"), solve_segment(p, arch, "highs")
    assert (g.copies, g.memory, g.kept) == (h.copies, h.memory, h.kept)
