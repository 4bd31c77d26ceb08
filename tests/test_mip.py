"""The segment MIP against an independent brute-force evaluator on small problems.

The evaluator enumerates every placement of the segment's tensors (pool, global
buffer or DRAM, DESIGN.md §10.1) and, for each, finds the smallest latency ``L`` at
which the segment's port loads fit, by bisection, without Pyomo: at latency ``L`` an
operator needs ``ceil(c_i / L)`` copies, every array left over joins the pool (more
pool arrays never hurt), and every port's bytes must fit its bandwidth times ``L``,
every place's windows its capacity.  The predicted cycles add the weight loads of
those copies and the fill, at ``L`` or any slower latency where some operator needs
fewer copies.  The MIP's cycles must equal the best found."""

import itertools
import math
import random
from dataclasses import replace

import pytest

from cmswitch.arch import arch_from_dict, load_arch
from cmswitch.cost.graph import SegmentProblem, TensorUse
from cmswitch.cost.model import OpCost, _weight_op_cost
from cmswitch.solver.mip import evaluate_allocation, solve_segment

SMALL = dict(load_arch("dynaplasia").model_dump(), name="small", arrays=8,
             global_buffer_bytes=8192)


def _write_phase(p: SegmentProblem, arch) -> float:
    """Cycles before the late statements start: every byte through the weight-write
    port (run-time operands and prefetched weights) — 0 without late operators."""
    if not p.late:
        return 0.0
    writes = sum(op.weight_bytes for op in p.ops if op.kind == "dynamic") + p.prefetch
    return writes / arch.weight_write_bw_bytes


def _copies_at(p: SegmentProblem, arch, places, lat: float):
    """The fewest copies sustaining latency `lat` with `places`, or None.  A late
    operator and the late bytes of every port get only ``lat - W`` (the second
    phase, after the writes)."""
    w = _write_phase(p, arch)
    mat = [(i, op) for i, op in enumerate(p.ops) if op.arrays]
    if any(i in p.late and lat <= w for i, _ in mat):
        return None
    copies = [max(1, math.ceil(op.compute / (lat - w if i in p.late else lat) - 1e-9))
              for i, op in mat]
    mat = [op for _, op in mat]
    if any(c > op.max_copies for c, op in zip(copies, mat)):
        return None
    pool = arch.arrays - p.reserve - p.hold_in - p.hold_out - sum(
        op.arrays * c for op, c in zip(mat, copies))
    if pool < 0:
        return None
    pool = pool if p.memory_mode else 0
    ib = arch.internal_bw_bits / 8
    load = {"pool": 0.0, "gb": 0.0, "dram": p.prefetch, "hold_in": 0.0, "hold_out": 0.0}
    window = {"pool": 0, "gb": 0}
    choices = sum(1 for u in p.tensors if not u.fixed)
    for use, place in zip(p.tensors, places):
        if place == "dram":
            load["dram"] += use.dram_direct
            continue
        load[place] += use.onchip
        load["dram"] += use.dram_onchip
        if place in window:
            window[place] += use.window
    if window["pool"] > (arch.array_bytes - choices) * pool:
        return None
    if window["gb"] > arch.global_buffer_bytes:
        return None
    bandwidth = {"pool": ib * pool, "gb": arch.global_buffer_bw_bytes,
                 "dram": arch.external_bw_bytes, "hold_in": ib * p.hold_in,
                 "hold_out": ib * p.hold_out}
    writes = sum(op.weight_bytes for op in p.ops if op.kind == "dynamic") + p.prefetch
    for port, nbytes in load.items():
        if nbytes > bandwidth[port] * lat * (1 + 1e-9):
            return None
    if p.late:  # the second phase: the late statements' bytes within lat - W
        late = dict.fromkeys(load, 0.0)
        late["dram"] = sum(u.late_dram_direct for u in p.tensors if u.fixed == "dram")
        for use, place in zip(p.tensors, places):
            if place == "dram":
                late["dram"] += 0 if use.fixed else use.late_dram_direct
                continue
            late[place] += use.late_onchip
            late["dram"] += use.late_dram_onchip
        late_vops = sum(p.ops[i].vector_ops for i in p.late)
        if late_vops > arch.vector_ops_per_cycle * (lat - w) * (1 + 1e-9):
            return None
        for port, nbytes in late.items():
            if nbytes > bandwidth[port] * (lat - w) * (1 + 1e-9):
                return None
    if writes > arch.weight_write_bw_bytes * lat * (1 + 1e-9):
        return None
    if sum(op.vector_ops for op in p.ops) > arch.vector_ops_per_cycle * lat * (1 + 1e-9):
        return None
    it = iter(copies)
    return tuple(next(it) if op.arrays else 0 for op in p.ops)


def _load(p, copies, arch) -> float:
    weights = [(op, d) for op, d in zip(p.ops, copies) if op.kind == "weight"]
    return sum(max(op.weight_bytes / arch.external_bw_bytes,
                   d * op.weight_bytes / arch.weight_write_bw_bytes)
               for op, d in weights[p.preloaded:])


def brute_force_cycles(p: SegmentProblem, arch) -> float:
    """The fewest predicted cycles (weight loads + latency + fill) of any allocation."""
    fill = arch.mvm_cycles * max(0, len([op for op in p.ops if op.arrays]) - 1)
    options = [("dram",) if u.fixed == "dram" else (u.fixed,) if u.fixed
               else ("pool", "gb", "dram") for u in p.tensors]
    best = math.inf
    for places in itertools.product(*options):
        hi = 1e13
        if _copies_at(p, arch, places, hi) is None:
            continue
        lo = 1e-3
        for _ in range(200):
            mid = (lo * hi) ** 0.5
            lo, hi = (lo, mid) if _copies_at(p, arch, places, mid) is not None else (mid, hi)
        w = _write_phase(p, arch)
        lats = [hi] + [op.compute / k + (w if i in p.late else 0.0)
                       for i, op in enumerate(p.ops) if op.arrays and op.compute
                       for k in range(1, op.max_copies + 1)
                       if op.compute / k + (w if i in p.late else 0.0) > hi]
        for lat in lats:
            best = min(best, lat + _load(p, _copies_at(p, arch, places, lat), arch) + fill)
    return best


def _random_problem(rng: random.Random, arch, dynamic: float = 0.4) -> SegmentProblem:
    """Weight ops (and vector ops), with probability `dynamic` a dynamic matmul (late
    with what follows it, `SegmentProblem.late`), and 1-4 tensors priced as
    `segment_problem` prices them, their late shares among 0, half and all."""
    ops = []
    for _ in range(rng.randint(1, 2)):
        k, n = rng.choice([64, 200, 320, 500]), rng.choice([16, 40, 64])
        ops.append(_weight_op_cost("", rng.choice([16, 64, 256, 1024]), k, n, 1, arch))
        if rng.random() < 0.5:
            ops.append(OpCost("", "vector", vector_ops=rng.choice([100, 5000, 50000])))
    late: tuple[int, ...] = ()
    if rng.random() < dynamic:  # a dynamic matmul (perhaps with a vector op after it)
        late = (len(ops),)
        ops.append(_weight_op_cost("", rng.choice([16, 64, 256]), 64, rng.choice([16, 64]),
                                   1, arch, instances=rng.choice([1, 4, 12, 48]),
                                   kind="dynamic"))
        if rng.random() < 0.5:
            late += (len(ops),)
            ops.append(OpCost("", "vector", vector_ops=rng.choice([100, 50000])))
    tensors = []
    for _ in range(rng.randint(1, 4)):
        nbytes = rng.choice([2000, 20000, 90000])
        window = rng.choice([nbytes, nbytes // 8 + 1])
        onchip = nbytes * rng.choice([2, 3, 10])
        f = rng.choice([0, 0.5, 1]) if late else 0  # the late statements' share
        if rng.random() < 0.5:  # live-in: loaded (bytes) or read from DRAM
            tensors.append(TensorUse(nbytes, window, onchip + nbytes, nbytes, onchip, "",
                                     f * onchip, 0, f * onchip))
        else:  # internal, perhaps outliving the segment
            store = rng.choice([0, nbytes])
            tensors.append(TensorUse(nbytes, window, onchip + store, store, onchip, "",
                                     f * (onchip + store), f * store, f * onchip))
    if rng.random() < 0.3:
        tensors.append(TensorUse(5000, 0, 0, 0, 5000, "dram", 0, 0, 5000 if late else 0))
    assert all(o.arrays <= arch.arrays for o in ops)
    return SegmentProblem(tuple(ops), tuple(tensors), late=late)


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("solver", ["glpk", "highs"])
def test_mip_matches_brute_force(seed: int, solver: str):
    arch = arch_from_dict(SMALL)
    p = _random_problem(random.Random(seed), arch)
    want = brute_force_cycles(p, arch)
    got = solve_segment(p, arch, solver)
    assert got.cycles == pytest.approx(want, rel=1e-4)
    assert sum(op.arrays * d for op, d in zip(p.ops, got.copies)) + got.pool <= arch.arrays


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("solver", ["glpk", "highs"])
def test_mip_matches_brute_force_with_dynamic_matmuls(seed: int, solver: str):
    """Every problem has a dynamic matmul: its late operators and bytes run after the
    weight-write port's phase (issue 12), in the MIP as in the brute force."""
    arch = arch_from_dict(SMALL)
    p = _random_problem(random.Random(100 + seed), arch, dynamic=1.0)
    assert p.late
    got = solve_segment(p, arch, solver)
    assert got.cycles == pytest.approx(brute_force_cycles(p, arch), rel=1e-4)
    again = evaluate_allocation(p, got.copies, got.pool, got.places, arch)
    assert again.cycles == pytest.approx(got.cycles, rel=1e-9)


def test_the_write_phase_binds_on_some_dynamic_problems():
    """The problems above are not all priced the same with the late rows dropped: the
    two-phase rows decide some of them (4 of these 12 when written)."""
    arch = arch_from_dict(SMALL)
    problems = [_random_problem(random.Random(100 + s), arch, dynamic=1.0) for s in range(12)]
    slower = [p for p in problems if solve_segment(p, arch, "highs").cycles
              > solve_segment(replace(p, late=()), arch, "highs").cycles * (1 + 1e-6)]
    assert len(slower) >= 3


def test_write_phase_by_hand():
    """A dynamic matmul of 12 instances (operand 64x64 each: 12*4096 = 49152 bytes,
    written at 32 B/cycle: W = 1536 cycles), 64 vectors per instance (12*64*8 = 6144
    cycles for one copy), behind a weight op of 64 vectors (512 cycles).  One copy
    of each: the dynamic op's MVM starts after the writes, so the latency is
    1536 + 6144 = 7680 (not max(1536, 6144) = 6144); two copies: 1536 + 3072."""
    arch = arch_from_dict(SMALL)
    weight = _weight_op_cost("", 64, 64, 16, 1, arch)
    dyn = _weight_op_cost("", 64, 64, 64, 1, arch, instances=12, kind="dynamic")
    assert (dyn.weight_bytes, dyn.compute) == (49152, 6144)
    p = SegmentProblem((weight, dyn), (), late=(1,))
    assert evaluate_allocation(p, (1, 1), 0, (), arch).latency == 1536 + 6144
    assert evaluate_allocation(p, (1, 2), 0, (), arch).latency == 1536 + 3072
    assert evaluate_allocation(replace(p, late=()), (1, 1), 0, (), arch).latency == 6144


@pytest.mark.parametrize("seed", range(12))
def test_fixed_allocation_evaluator_agrees_with_mip(seed: int):
    arch = arch_from_dict(SMALL)
    p = _random_problem(random.Random(seed), arch)
    got = solve_segment(p, arch, "highs")
    again = evaluate_allocation(p, got.copies, got.pool, got.places, arch)
    assert again.latency == pytest.approx(got.latency, rel=2e-4)


def test_port_loads_by_hand():
    """One 1-array weight op, M=64 vectors (8 cycles each: 512 cycles), and a tensor of
    1000 bytes with 4000 bytes of on-chip traffic (or 3000 in DRAM).  In the global
    buffer (32 B/cycle) it takes 4000/32 = 125 cycles; in DRAM 3000/32 = 93.75; the
    op's 512 cycles bind either way.  With M=4 (32 cycles) the buffer binds at 125."""
    arch = arch_from_dict(SMALL)
    op = _weight_op_cost("", 64, 64, 16, 1, arch)
    use = TensorUse(1000, 1000, 4000, 0, 3000)
    p = SegmentProblem((op,), (use,), memory_mode=False)
    assert evaluate_allocation(p, (1,), 0, ("gb",), arch).latency == 512
    small = SegmentProblem((_weight_op_cost("", 4, 64, 16, 1, arch),), (use,),
                           memory_mode=False)
    assert evaluate_allocation(small, (1,), 0, ("gb",), arch).latency == 125
    assert evaluate_allocation(small, (1,), 0, ("dram",), arch).latency == 93.75
    # the MIP picks DRAM (93.75 < 125); 4 cycles/vector... fill = 8 cycles
    got = solve_segment(small, arch, "highs")
    assert got.places == ("dram",)
    assert got.latency == pytest.approx(93.75, rel=1e-3)


@pytest.mark.parametrize("seed", range(12))
def test_glpk_and_highs_agree_on_the_whole_allocation(seed: int):
    """§9.9: the same copies, pool and placement from either solver."""
    arch = arch_from_dict(SMALL)
    p = _random_problem(random.Random(seed), arch)
    g, h = solve_segment(p, arch, "glpk"), solve_segment(p, arch, "highs")
    assert (g.copies, g.pool, g.places) == (h.copies, h.pool, h.places)
