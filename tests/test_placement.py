"""The exact placement search (`cmswitch.solver.placement`) against the Pyomo placement
MILP it replaces in the DP (`mip._port_model`, solved by GLPK and by HiGHS) and
against plain enumeration of every placement; and stage 1 priced exactly against
stage 1 priced by the MILP (issue 13: pricing may use any exact method proven equal
to the MIP by a test)."""

import itertools
import math
import random

import pyomo.environ as pyo
import pytest

from cmswitch.arch import arch_from_dict, load_arch
from cmswitch.cost.graph import SegmentProblem, TensorUse
from cmswitch.cost.model import OpCost, _weight_op_cost
from cmswitch.solver import mip
from cmswitch.solver.placement import place_tensors

BASE = load_arch("dynaplasia").model_dump()


def _arch(rng: random.Random):
    return arch_from_dict(dict(
        BASE, name="rand", arrays=rng.choice([8, 16, 32]),
        global_buffer_bytes=rng.choice([4096, 16384, 81920]),
        global_buffer_bw_bytes=rng.choice([8, 32]),
        external_bw_bytes=rng.choice([8, 32]),
        internal_bw_bits=rng.choice([16, 32, 64])))


def _tensors(rng: random.Random, n: int, late: bool = False) -> tuple[TensorUse, ...]:
    """`n` tensors as `segment_problem` makes them: live-ins (loaded, or read from
    DRAM), internal tensors (perhaps stored), repeats of one shape (a block's
    equal-sized activations), and a tensor written straight to DRAM; with `late`,
    none, half or all of each tensor's bytes moved by late statements."""
    out = []
    while len(out) < n:
        nbytes = rng.choice([1000, 4000, 20000, 90000])
        window = rng.choice([nbytes, nbytes // 8 + 1, nbytes // 50 + 1])
        onchip = nbytes * rng.choice([2, 3, 9])
        f = rng.choice([0, 0.5, 1]) if late else 0
        if rng.random() < 0.3:
            use = TensorUse(nbytes, window, onchip + nbytes, nbytes, onchip, "",
                            f * onchip, 0, f * onchip)
        else:
            store = rng.choice([0, 0, nbytes])
            use = TensorUse(nbytes, window, onchip + store, store, onchip, "",
                            f * (onchip + store), f * store, f * onchip)
        out += [use] * min(n - len(out), rng.choice([1, 1, 2, 4]))
    if rng.random() < 0.3:
        out.append(TensorUse(5000, 0, 0, 0, 5000, "dram", 0, 0, 5000 if late else 0))
    return tuple(out)


def _problem(rng: random.Random, arch, n: int) -> SegmentProblem:
    """A weight op, perhaps a vector op, and half the time a dynamic matmul whose
    write phase delays the late bytes (`SegmentProblem.late`)."""
    ops = [_weight_op_cost("", 256, 320, 64, 1, arch)]
    if rng.random() < 0.5:
        ops.append(OpCost("", "vector", vector_ops=rng.choice([100, 50000, 500000])))
    late: tuple[int, ...] = ()
    if rng.random() < 0.5:
        late = (len(ops),)
        ops.append(_weight_op_cost("", 64, 64, 64, 1, arch, instances=rng.choice([4, 48]),
                                   kind="dynamic"))
    return SegmentProblem(tuple(ops), _tensors(rng, n, bool(late)), late=late)


def _latency(problem, arch, pool: int, places) -> float | None:
    """Port latency of a placement, evaluated directly; None if a window overflows."""
    ib = arch.internal_bw_bits / 8
    cap = mip.pool_bytes(problem, arch) * pool
    loads = {"pool": 0.0, "gb": 0.0, "dram": problem.fixed_dram()}
    windows = {"pool": 0, "gb": 0}
    for use, where in zip(problem.tensors, places):
        if use.fixed:
            continue
        if where == "dram":
            loads["dram"] += use.dram_direct
            continue
        loads[where] += use.onchip
        loads["dram"] += use.dram_onchip
        windows[where] += use.window
    if windows["pool"] > cap or windows["gb"] > arch.global_buffer_bytes:
        return None
    if loads["pool"] and not pool:
        return None
    writes = sum(op.weight_bytes for op in problem.ops if op.kind == "dynamic")
    rows = [1.0, sum(op.vector_ops for op in problem.ops) / arch.vector_ops_per_cycle,
            writes / arch.weight_write_bw_bytes,
            loads["gb"] / arch.global_buffer_bw_bytes, loads["dram"] / arch.external_bw_bytes]
    if pool:
        rows.append(loads["pool"] / (ib * pool))
    if problem.late:  # late bytes move after the write phase (no copies here)
        late = {"pool": 0.0, "gb": 0.0, "dram": sum(
            u.late_dram_direct for u in problem.tensors if u.fixed == "dram")}
        for use, where in zip(problem.tensors, places):
            if use.fixed:
                continue
            if where == "dram":
                late["dram"] += use.late_dram_direct
            else:
                late[where] += use.late_onchip
                late["dram"] += use.late_dram_onchip
        w = writes / arch.weight_write_bw_bytes
        vops = sum(problem.ops[i].vector_ops for i in problem.late)
        rows += [w + 1.0, w + vops / arch.vector_ops_per_cycle,
                 w + late["gb"] / arch.global_buffer_bw_bytes,
                 w + late["dram"] / arch.external_bw_bytes]
        if pool:
            rows.append(w + late["pool"] / (ib * pool))
    return max(rows)


def _milp(problem, arch, pool: int, solver: str) -> float:
    scale = mip.latency_scale(problem, arch)
    model = mip._port_model(problem, arch, pool, scale)
    mip._run(model, solver, None)
    return pyo.value(model.U) * scale


@pytest.mark.parametrize("seed", range(40))
def test_placement_equals_enumeration(seed: int):
    rng = random.Random(seed)
    arch = _arch(rng)
    problem = _problem(rng, arch, rng.randint(1, 7))
    pool = rng.choice([0, 1, 3, 6])
    found = place_tensors(problem, arch, pool, mip.pool_bytes(problem, arch) * pool)
    lat, places = found.latency, found.places
    assert found.gap == 0
    options = [(u.fixed,) if u.fixed else ("pool", "gb", "dram") for u in problem.tensors]
    best = min(x for x in (_latency(problem, arch, pool, p)
                           for p in itertools.product(*options)) if x is not None)
    assert lat == pytest.approx(best, rel=1e-9)
    assert _latency(problem, arch, pool, places) == pytest.approx(lat, rel=1e-9)


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("solver", ["glpk", "highs"])
def test_placement_equals_the_milp(seed: int, solver: str):
    """Larger instances (up to 16 tensors, many of one shape) than enumeration can take."""
    rng = random.Random(1000 + seed)
    arch = _arch(rng)
    problem = _problem(rng, arch, rng.randint(6, 16))
    for pool in (0, 2, 7):
        found = place_tensors(problem, arch, pool, mip.pool_bytes(problem, arch) * pool)
        lat, places = found.latency, found.places
        assert found.gap == 0
        assert lat == pytest.approx(_milp(problem, arch, pool, solver), rel=1e-6)
        assert _latency(problem, arch, pool, places) == pytest.approx(lat, rel=1e-9)


def _segment(rng: random.Random, arch) -> SegmentProblem:
    ops = []
    for _ in range(rng.randint(1, 3)):
        k, n = rng.choice([64, 200, 320, 500]), rng.choice([16, 40, 64])
        ops.append(_weight_op_cost("", rng.choice([16, 64, 256, 1024]), k, n, 1, arch))
        if rng.random() < 0.4:
            ops.append(OpCost("", "vector", vector_ops=rng.choice([100, 5000, 50000])))
    kept, used = [], 0
    for o in ops:  # one copy of each weight fits in half the chip
        if used + o.arrays <= arch.arrays // 2:
            kept.append(o)
            used += o.arrays
    late: tuple[int, ...] = ()
    if rng.random() < 0.5 and used < arch.arrays // 2:
        late = (len(kept),)
        kept.append(_weight_op_cost("", 64, 64, 64, 1, arch, instances=rng.choice([4, 48]),
                                    kind="dynamic"))
    return SegmentProblem(tuple(kept), _tensors(rng, rng.randint(1, 8), bool(late)),
                          late=late)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("solver", ["glpk", "highs"])
def test_stage1_exact_equals_stage1_by_milp(seed: int, solver: str):
    rng = random.Random(2000 + seed)
    arch = _arch(rng)
    problem = _segment(rng, arch)
    if not problem.ops:
        problem = SegmentProblem((_weight_op_cost("", 64, 64, 16, 1, arch),), problem.tensors)
    exact = mip.solve_throughput(problem, arch, "exact")
    ref = mip.solve_throughput(problem, arch, solver)
    assert exact.cycles == pytest.approx(ref.cycles, rel=1e-6)
    again = mip.evaluate_allocation(problem, exact.copies, exact.pool, exact.places, arch)
    assert again.cycles == pytest.approx(exact.cycles, rel=1e-9)
    assert math.isfinite(exact.cycles)


def test_round_up_to_the_lattice_by_hand():
    """Rows of 392-cycle steps (12,544-byte multiples at 32 bytes/cycle, MobileNet-V2's
    activations), one offset by 1,176 cycles (a fixed DRAM tensor): a bound of
    57,018.2 cycles rounds to 146 x 392 = 57,232 on the first rows and to
    1,176 + 143 x 392 = 57,232 on the third; a bound at the base stays; a row of any
    value (step 0) stops the rounding."""
    from cmswitch.solver.placement import _round_up

    rows = [(0.0, 392.0), (0.0, 392.0), (1176.0, 392.0)]
    assert _round_up(57018.2, 10584.0, rows) == 57232.0
    assert _round_up(57232.0, 10584.0, rows) == 57232.0  # on a point: stays
    assert _round_up(57232.0 + 1e-9, 10584.0, rows) < 57233.0  # float noise: not a step up
    assert _round_up(10584.0, 10584.0, rows) == 10584.0
    assert _round_up(57018.2, 10584.0, rows + [(0.0, 0.0)]) == 57018.2
    assert _round_up(57018.2, 10584.0, [(0.0, 392.0), (100.0, 1000.0)]) == 57100.0


def test_a_number_partitioning_placement_is_proven_within_the_node_limit():
    """A MobileNet-V2 segment's placement (a pool of 6 arrays): 24 activations of
    12,544-byte multiples over three 32-byte/cycle ports.  Without the lattice rounding
    the search stopped at `NODE_LIMIT` 0.375% above its fractional bound; rounded, the
    bound meets the optimum and the search proves it.  The value is the Pyomo MILP's
    (HiGHS), an independent method."""
    arch = load_arch("dynaplasia")
    block = [(150528, 896), (752640, 16128), (150528, 896), (150528, 5376), (25088, 896)]
    sizes = [(50176, 1792), (50176, 896), (301056, 1792), (489216, 21504), (75264, 896),
             (75264, 2688), (37632, 896)] + block + [(37632, 896)] + block \
        + [(37632, 896)] + block
    tensors = [TensorUse(o, w, o, 0, o) for o, w in sizes]
    tensors.append(TensorUse(175616, 0, 0, 0, 175616, "dram"))
    vector = OpCost("", "vector", vector_ops=10976 * arch.vector_ops_per_cycle)
    problem = SegmentProblem((vector,), tuple(tensors))
    pool = 6
    found = place_tensors(problem, arch, pool, mip.pool_bytes(problem, arch) * pool)
    assert found.gap == 0
    assert found.latency == pytest.approx(_milp(problem, arch, pool, "highs"), rel=1e-6)
    assert _latency(problem, arch, pool, found.places) == pytest.approx(found.latency)
