"""Exact placement of a segment's tensors for a fixed pool, by branch and bound: the
stage-1 placement MILP of the segment MIP (`cmswitch.solver.mip._port_model`) solved
in-process, without a model build or a solver call (issue 13: the DP prices
thousands of candidates, and a MILP solve costs milliseconds even in-process).

The problem (DESIGN.md §4; per choice tensor ``t`` of `SegmentProblem.choices`: port
bytes on chip ``o_t``, DRAM bytes on chip ``r_t`` or in DRAM ``R_t > r_t``, window
``w_t``; a pool of ``P`` arrays of ``ib`` bytes/cycle each and ``Wp`` window bytes in
all, the global buffer of ``gb_bw`` bytes/cycle and ``Wg`` bytes)::

  minimise L = max(base, sum_pool o_t / (ib P), sum_gb o_t / gb_bw,
                   (F + sum_dram R_t + sum_onchip r_t) / ext_bw,
                   W + the same three rows over the late bytes)
  subject to sum_pool w_t <= Wp,  sum_gb w_t <= Wg

(the late rows only for a segment with dynamic matmuls: ``W`` = `mip.write_phase`,
the late bytes `TensorUse.late_onchip` / `late_dram_onchip` / `late_dram_direct`.)

``base``: the rows no placement changes (one cycle, the digital unit, run-time operand
writes, the hold arrays, the late operators' fixed rows: `mip.base_latency`).  Depth-first over the tensors, largest DRAM saving
``R_t - r_t`` first; a node is cut when a valid lower bound of every completion
reaches the best plan found: the larger of two fractional relaxations of the
remaining tensors (each a greedy fractional knapsack, exact for its relaxation) —
the on-chip bandwidth of pool and buffer together against the DRAM port, and the
free window bytes of both against the DRAM port — and the late rows with every
remaining late DRAM saving taken — rounded up to the next latency a plan can have
(each port's bytes are sums of whole tensors' bytes, so its latency lies on a lattice
of the gcd's steps, `_lattices`; MobileNet-V2's activations are 12,544-byte multiples,
392 cycles at 32 bytes/cycle, and the fractional bound falls between two points).
Exact to `REL_GAP`: a node is cut
only when no completion is better by more than that; a search that reaches
`NODE_LIMIT` nodes stops and says how far from its bound it is (`Placement.gap`).  `tests/test_placement.py` proves it equal to the
Pyomo MILP (GLPK and HiGHS) on random instances.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cmswitch.arch import Arch
from cmswitch.cost.graph import SegmentProblem
from cmswitch.solver.mip import base_latency, write_phase

REL_GAP = 1e-6
"""Optimality tolerance: a node is cut when its bound is within this fraction of the
best plan found, so the answer is within ``1e-6`` of the optimum (under half a cycle
below 500k cycles: below what `predicted_cycles` rounds away) — the role of a MIP
solver's relative gap; ties keep the first plan found."""
NODE_LIMIT = 2_000
"""Search nodes before the search stops with the best plan found and reports its gap
to the root bound (`Placement.gap`): the large segments of many near-equal tensors
are number-partitioning problems whose proof can take hours.  Measured on
MobileNet-V2: of 3,163 searches 41 stopped here before the lattice rounding, 8 after
it (nodes 110,916 -> 37,616, the same plan); with the window-dominance rule and the
DP's own pruning, 1 of 2,633 searches (11,955 nodes) stops here, not in a chosen
segment."""


@dataclass(frozen=True)
class _Group:
    """Interchangeable choice tensors (equal bytes, window and places open): the
    search decides how many of them go to the pool and the buffer, not which —
    symmetric branches are never explored."""
    tensors: tuple[int, ...]  # indices in SegmentProblem.tensors, ascending
    o: float        # port bytes on chip, each
    s: float        # DRAM bytes saved on chip (R_t - r_t > 0), each
    w: int          # window bytes, each
    pool_ok: bool
    gb_ok: bool
    lo: float = 0.0  # the late statements' part of o, each
    ls: float = 0.0  # the late statements' part of s, each


@dataclass(frozen=True)
class Placement:
    """The answer of `place_tensors`: port `latency` (cycles), `places` per
    `SegmentProblem.tensors`, and `gap`: 0 when proven optimal (within `REL_GAP`),
    else ``latency / bound - 1`` for the root bound when `NODE_LIMIT` stopped it."""

    latency: float
    places: tuple[str, ...]
    gap: float = 0.0


def place_tensors(problem: SegmentProblem, arch: Arch, pool: int, window_bytes: int,
                  cutoff: float = float("inf")) -> Placement | None:
    """The placement with the least port latency for a pool of `pool` memory-mode
    arrays holding `window_bytes` of windows in all, places per
    `SegmentProblem.tensors` ("pool", "gb", "dram" for the choices, the fixed place
    otherwise); None if none has a latency below `cutoff` cycles (the caller only
    wants a better plan than one it has: the search starts from that bound).  With
    no cutoff it never returns None: all-DRAM is always feasible."""
    ib = arch.internal_bw_bits / 8
    wp = window_bytes if pool else 0
    tens = problem.tensors
    dram = problem.fixed_dram() + problem.prefetch
    late = problem.late_fixed_dram()
    kinds: dict[tuple, list[int]] = {}
    for t in problem.choices:
        u = tens[t]
        dram += u.dram_direct
        late += u.late_dram_direct
        pool_ok, gb_ok = bool(pool) and u.window <= wp, u.window <= arch.global_buffer_bytes
        if pool_ok or gb_ok:
            key = (u.onchip, u.dram_direct - u.dram_onchip, u.window, pool_ok, gb_ok,
                   u.late_onchip, u.late_dram_direct - u.late_dram_onchip)
            kinds.setdefault(key, []).append(t)
    groups = [_Group(tuple(ts), *key) for key, ts in kinds.items()]
    groups.sort(key=lambda g: (-g.s, g.tensors[0]))
    shift = write_phase(problem, arch) if problem.late else None
    cg, ce = float(arch.global_buffer_bw_bytes), float(arch.external_bw_bytes)
    search = _Search(groups, base_latency(problem, arch), ib * pool, cg, ce,
                     wp, arch.global_buffer_bytes, cutoff, shift,
                     _lattices(groups, dram, late, ib * pool, cg, ce, shift))
    search.run(dram, late)
    if search.best_counts is None:
        return None
    places = {t: "dram" for t in problem.choices}
    for g, (n_pool, n_gb) in zip(groups, search.best_counts):
        for j, t in enumerate(g.tensors):
            places[t] = "pool" if j < n_pool else "gb" if j < n_pool + n_gb else "dram"
    gap = 0.0 if search.complete else search.best / search.lower - 1
    return Placement(search.best, tuple(u.fixed or places[t] for t, u in enumerate(tens)), gap)


def _step(values) -> int:
    """The greatest common divisor of byte counts (0 if one is not a whole number:
    no lattice, no rounding)."""
    g = 0
    for v in values:
        if v != int(v):
            return 0
        g = math.gcd(g, int(v))
    return g


def _lattices(groups: list[_Group], dram: float, late: float, cp: float, cg: float,
              ce: float, shift: float | None) -> list[tuple[float, float]]:
    """``(offset, step)`` cycles per port row: every value the row can take is
    ``offset + n step`` for an integer ``n`` (its bytes are sums of whole tensors'
    bytes, multiples of their gcd, `_step`), so a plan's latency — the largest row
    or `base` — lies on one of these lattices.  A row with ``step = 0`` can take any
    value.  The pool's and the buffer's bytes start at 0, DRAM's at the all-DRAM
    bytes `dram` and fall by the savings; the late rows (``W = shift``) likewise."""
    rows = []
    on_pool = _step(g.o for g in groups if g.pool_ok)
    on_gb = _step(g.o for g in groups if g.gb_ok)
    saved = _step(g.s for g in groups)
    if cp:
        rows.append((0.0, on_pool / cp))
    rows += [(0.0, on_gb / cg), (dram / ce, saved / ce)]
    if shift is not None:
        late_pool = _step(g.lo for g in groups if g.pool_ok)
        late_gb = _step(g.lo for g in groups if g.gb_ok)
        if cp:
            rows.append((shift, late_pool / cp))
        rows += [(shift, late_gb / cg),
                 (shift + late / ce, _step(g.ls for g in groups) / ce)]
    if any(not step for _, step in rows):
        return []  # a row of any value: nothing to round to
    return sorted(set(rows))


LATTICE_EPS = 1e-7
"""Steps of float noise `_round_up` forgives before it rounds up to the next lattice
point (a bound that sits on a point must not be pushed past it)."""


def _round_up(lo: float, base: float, rows: list[tuple[float, float]]) -> float:
    """The least latency at or above the lower bound `lo` that a plan can have: `base`
    itself, or for some port row its first lattice point ``offset + n step >= lo``
    (`_lattices`; none: `lo`).  Exact strengthening of a bound: the plans' latencies
    are ``max(base, rows)``, so one at least `lo` is `base` (if ``lo == base``) or a
    row's value."""
    if lo <= base or not rows:
        return lo
    best = math.inf
    for offset, step in rows:
        if not step:
            return lo
        best = min(best, offset + math.ceil((lo - offset) / step - LATTICE_EPS) * step)
    return max(lo, best)


class _Search:
    """Depth-first branch and bound over `groups` (see the module docstring): at
    depth ``k`` the first ``k`` groups are placed; a node's state is its port bytes
    and window bytes, and a state met before at the same depth is not searched again
    (its completions are the same)."""

    def __init__(self, groups: list[_Group], base: float, cp: float, cg: float, ce: float,
                 wp: float, wg: float, cutoff: float, shift: float | None = None,
                 lattices: list[tuple[float, float]] | None = None):
        self.groups, self.base, self.shift = groups, base, shift
        self.lattices = lattices or []  # `_lattices`: what `bound` rounds up to
        # the most late DRAM bytes the groups from depth k on can still save
        self.late_save = [0.0] * (len(groups) + 1)
        for k in range(len(groups) - 1, -1, -1):
            g = groups[k]
            self.late_save[k] = self.late_save[k + 1] + max(0.0, g.ls) * len(g.tensors)
        self.cp, self.cg, self.ce, self.wp, self.wg = cp, cg, ce, wp, wg
        n = len(groups)
        # (depth, o, s, w, count, pool_ok, gb_ok) in the order each relaxation
        # takes the remaining groups: by savings per port byte, per window byte
        rows = [(k, g.o, g.s, g.w, len(g.tensors), g.pool_ok, g.gb_ok)
                for k, g in enumerate(groups)]
        by_bw = sorted(rows, key=lambda r: (-r[2] / r[1], r[0]))
        by_cap = sorted(rows, key=lambda r: (-(r[2] / r[3]) if r[3] else float("-inf"),
                                             r[0]))
        # per depth k, the groups from k on, in each relaxation's order
        self.by_bw = [[r for r in by_bw if r[0] >= k] for k in range(n + 1)]
        self.by_cap = [[r for r in by_cap if r[0] >= k] for k in range(n + 1)]
        self.cap_bw = (cp if any(g.pool_ok for g in groups) else 0.0) + cg
        self.best = cutoff
        self.best_counts: list[tuple[int, int]] | None = None
        self.path: list[tuple[int, int]] = []
        self.seen: dict[tuple, list[tuple[int, int]]] = {}
        self.nodes = 0
        self.lower = 0.0
        self.complete = True

    def late(self, lap: float, lag: float, ld: float) -> float:
        """The second phase's port rows (late bytes on pool, buffer and DRAM) after
        the first phase ``W``; 0 for a segment without late operators."""
        if self.shift is None:
            return 0.0
        return self.shift + max(lap / self.cp if lap else 0.0, lag / self.cg if lag else 0.0,
                                ld / self.ce)

    def bound(self, k: int, ap: float, wp: float, ag: float, wg: float, d: float,
              lap: float = 0.0, lag: float = 0.0, ld: float = 0.0) -> float:
        """A lower bound of the latency of every completion of the first `k` groups:
        the larger of (a) the on-chip bandwidth relaxation — the least ``L`` with
        ``d - save(cap L - ap - ag) <= ce L``, ``save(b)`` the fractional knapsack of
        the remaining groups' DRAM savings for `b` more port bytes on pool and buffer
        together (``cap`` bytes/cycle) — and (b) the capacity relaxation, the free
        window bytes filled fractionally by savings per byte — and (c) the second
        phase's rows with every remaining late DRAM saving taken."""
        lo = self.base if self.shift is None else \
            max(self.base, self.late(lap, lag, max(0.0, ld - self.late_save[k])))
        if ap:
            lo = max(lo, ap / self.cp)
        if ag:
            lo = max(lo, ag / self.cg)
        ce, cap = self.ce, self.cap_bw
        free_p, free_g = self.wp - wp, self.wg - wg
        aon = ap + ag
        start = aon / cap
        if d > ce * start:
            used_o, saved = 0.0, 0.0
            lat = 0.0
            for _, o, s, w, cnt, pool_ok, gb_ok in self.by_bw[k]:
                if not (pool_ok and w <= free_p or gb_ok and w <= free_g):
                    continue
                rho = s / o
                lat = (d - saved + rho * (aon + used_o)) / (ce + rho * cap)
                used_o += o * cnt
                if cap * lat - aon <= used_o:
                    break
                saved += s * cnt
            else:
                lat = (d - saved) / ce
            lo = max(lo, lat)
        else:
            lo = max(lo, start)
        free = max(0.0, free_p) + max(0.0, free_g)
        save = 0.0
        for _, o, s, w, cnt, pool_ok, gb_ok in self.by_cap[k]:
            if not (pool_ok and w <= free_p or gb_ok and w <= free_g):
                continue
            size = w * cnt
            if size <= free:
                save += s * cnt
                free -= size
            else:
                save += s * free / w
                break
        return _round_up(max(lo, (d - save) / ce), self.base, self.lattices)

    def run(self, d: float, ld: float = 0.0) -> None:
        """Search from the all-DRAM state: `d` DRAM bytes, `ld` of them late."""
        self.lower = self.bound(0, 0.0, 0, 0.0, 0, d, 0.0, 0.0, ld)
        self._visit(0, 0.0, 0, 0.0, 0, d, 0.0, 0.0, ld)

    def _visit(self, k: int, ap: float, wp: int, ag: float, wg: int, d: float,
               lap: float, lag: float, ld: float) -> None:
        if k == len(self.groups):
            lat = max(self.base, ap / self.cp if ap else 0.0, ag / self.cg if ag else 0.0,
                      d / self.ce, self.late(lap, lag, ld))
            if lat < self.best * (1 - REL_GAP):
                self.best, self.best_counts = lat, list(self.path)
            return
        # a state of the same depth and loads with no more window bytes used on either
        # side was met before: its completions include every completion of this one
        key = (k, ap, ag, d, lap, lag, ld)
        met = self.seen.setdefault(key, [])
        if any(p <= wp and g <= wg for p, g in met):
            return
        met.append((wp, wg))
        self.nodes += 1
        if self.nodes > NODE_LIMIT:
            self.complete = False
            return
        g = self.groups[k]
        n = len(g.tensors)
        most_p = min(n, int((self.wp - wp) // g.w) if g.w else n) if g.pool_ok else 0
        most_g = min(n, int((self.wg - wg) // g.w) if g.w else n) if g.gb_ok else 0
        children = []
        for n_pool in range(most_p + 1):
            for n_gb in range(min(most_g, n - n_pool) + 1):
                on = n_pool + n_gb
                state = (ap + n_pool * g.o, wp + n_pool * g.w, ag + n_gb * g.o,
                         wg + n_gb * g.w, d - on * g.s, lap + n_pool * g.lo,
                         lag + n_gb * g.lo, ld - on * g.ls)
                children.append((self.bound(k + 1, *state), -on, n_pool, n_gb, state))
        children.sort()
        for lo, _, n_pool, n_gb, state in children:
            if lo >= self.best * (1 - REL_GAP) or not self.complete:
                break
            self.path.append((n_pool, n_gb))
            self._visit(k + 1, *state)
            self.path.pop()
