"""`cim-segment`: split the network into segments by dynamic programming (DESIGN.md §4).

Operators are taken in program order (a topological order of the DAG).  A segment may
start at the first operator or at any weight/dynamic matrix op (vector ops ride with
the matrix op before them).  With ``cost(i, j)`` the segment MIP's predicted cycles
for operators ``i..j-1`` — run with memory-mode arrays and charged two `CM.switch`
statements (switching its memory arrays in when it starts and back when they compute
again), or run compute-only at no switch cost, whichever is cheaper::

    best[0] = 0,  best[j] = min over i < j of best[i] + cost(i, j)

over start positions ``i`` whose segment fits one weight copy of each operator in the
chip and holds at most ``window`` matrix operators (these bound the window).  The state
also carries what is held on chip at each boundary (DESIGN.md §9.3, bounded as it
suggests: the tensors a segment passes only to the next one, all held or none), so
``cost`` depends on the held-in and held-out bytes; a segment that holds carries the
`hold` unit attribute.  It also carries how many leading weight ops of the next
segment load while the current one runs (DESIGN.md §9.1: none, or as many as fit
beside the current segment's weights — `preload_choices`): the current segment then
runs on fewer arrays and streams those weights through its DRAM and weight-write
bandwidth, and the next one skips their load; such a segment carries `preloaded`.
The DP is exact for its cost model.  Candidate segments are priced with
`cmswitch.solver.mip.SolveCache.price` — stage 1 of the model `cim-allocate` solves,
exact and in-process (`cmswitch.solver.placement`).
"""

from __future__ import annotations

from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp
from xdsl.dialects.func import FuncOp
from xdsl.passes import ModulePass

from cmswitch.arch import Arch
from cmswitch.cost.graph import (
    Graph,
    SegmentProblem,
    build_graph,
    held_tensors,
    preload_of,
    preloadable,
    relative_tensors,
    segment_ops,
    segment_problem,
    span_signature,
)
from cmswitch.dialects.cim import SegmentOp
from cmswitch.errors import CMSwitchError
from cmswitch.progress import progress
from cmswitch.solver.mip import (
    cycles_lower_bound,
    evaluate_allocation,
    holdable,
    operator_bound,
    solve_cache,
)
from cmswitch.transforms.common import check_options, main_func, resolve_arch
from cmswitch.transforms.segments import (
    MAX_SEGMENT_OPS,
    SegmentChoice,
    segment_starts,
    write_segments,
)


DEFAULT_WINDOW = 6
"""Matrix operators per candidate segment (the DP window).  The array budget already
bounds it; this bound keeps the MIPs small for models of many small layers
(MobileNet fits ~30 of its layers in the chip at once).  0 lifts it."""


def _next_ends(graph: Graph, starts: list[int], arrays: int, window: int) -> list[list[int]]:
    """For each start position ``b``, the end positions ``c > b`` such that operators
    ``starts[b]..starts[c]-1`` fit one weight copy each in the chip, hold at most
    `MAX_SEGMENT_OPS` operators (or are one run) and at most `window` runs
    (0: no bound) — plus, beyond the window, CIM-MLC's
    segments (`cmswitch.strategies.cimmlc.greedy_segments`: from the first operator,
    the longest segment that fits, then the same from where it ends), so the DP's
    space contains the all-compute baseline's segmentation.  (A greedy packing from
    every start would also do, at many more long candidates to price: on
    MobileNet-V2 83 of 2,210 solves and 30% of their time, none of them chosen.)"""
    need = [sum(o.cost.arrays for o in graph.ops[a:z]) for a, z in zip(starts, starts[1:])]
    ends: list[list[int]] = []
    greedy = 0  # the start of CIM-MLC's next segment
    for b in range(len(need)):
        used, row = 0, []
        for c in range(b + 1, len(starts)):
            used += need[c - 1]
            if used > arrays or (c > b + 1 and starts[c] - starts[b] > MAX_SEGMENT_OPS):
                break
            fills = (c == len(need) or used + need[c] > arrays
                     or starts[c + 1] - starts[b] > MAX_SEGMENT_OPS)
            if not window or c - b <= window or (b == greedy and fills):
                row.append(c)
            if b == greedy and fills:
                greedy = c
        ends.append(row)
    return ends


def preload_choices(graph: Graph, first: int, last: int, next_first: int, next_last: int,
                    arrays: int, most: int) -> tuple[int, ...]:
    """How many leading weight ops of the next segment ``next_first..next_last`` may
    load while segment ``first..last`` runs (§9.1): none, or the longest `preloadable`
    prefix of at most `most` ops whose single copies fit beside one copy of this
    segment's weights.  (Two choices per boundary keep the DP's state space small;
    with ``most = 1`` the reserve depends only on where the next segment starts, not
    on where it ends, which keeps the distinct MIPs about twice the plain DP's.)"""
    room = arrays - sum(o.cost.arrays for o in graph.ops[first:last + 1])
    count, used = 0, 0
    for i in preloadable(graph, next_first, next_last):
        used += graph.ops[i].cost.arrays
        if used > room:
            break
        count += 1
    count = min(count, most)
    return (0, count) if count else (0,)


def _preloaded_price(problem: SegmentProblem, plain: SegmentProblem, arch: Arch,
                     label: str, budget: float) -> tuple[bool, float | None]:
    """The price of a segment whose first ``problem.preloaded`` weight ops were loaded
    before it, without a solve of its own, when the same segment loading them itself
    (`plain`: ``preloaded=0``, their copies free) runs them with one copy each at its
    optimum: then (that plan is feasible for both, and any preloaded plan is a plain
    plan minus those loads) the price is the plain price minus their load cycles
    ``saved``.  Returns ``(True, price)`` then, ``(True, None)`` when no plain plan
    costs less than ``budget + saved`` (so the preloaded one reaches `budget`:
    dominated), ``(False, None)`` otherwise (the caller solves).  The DP passes its
    own candidate as `plain`, usually priced already."""
    if not holdable(plain, arch):
        return False, None
    lead = [i for i, op in enumerate(problem.ops) if op.arrays][:problem.preloaded]
    saved = sum(max(problem.ops[i].weight_bytes / arch.external_bw_bytes,
                    problem.ops[i].weight_bytes / arch.weight_write_bw_bytes) for i in lead)
    thr = solve_cache().throughput_of(plain, arch, label, budget + saved)
    if thr is None:
        return True, None
    if any(thr.copies[i] != 1 for i in lead):
        return False, None
    return True, thr.cycles - saved


SAME_COST = 1e-6
"""Relative difference under which two prices of a segment count as equal: under a
cycle below a million, above the float noise between two searches of one plan."""


@dataclass(frozen=True)
class _DPRun:
    """A finished DP's tables, kept in the compile's `SolveCache.dp_runs` so the next
    run on a graph with the same leading operators (the other chunk size's graph,
    `cmswitch.api.chunk_candidates`) starts from them (`_resume`)."""

    signature: tuple[int, ...]
    starts: list[int]
    value: dict
    back: dict
    buckets: list[list]
    chosen: dict


def _resume(earlier: _DPRun | None, signature: tuple[int, ...], starts: list[int],
            value: dict, back: dict, buckets: list[list], chosen: dict) -> int:
    """Copy into this run's tables the states of `earlier` whose value cannot differ
    here, and return the last such end position (0: none).  A state ``(b, c, H, k)``
    is worth the cheapest way to run the operators before ``starts[b]``, found from
    segments, held tensors and preloads that only look at operators before
    ``starts[c]`` and the unit at ``c`` (`_next_ends`' greedy end): when the two graphs'
    operator signatures (`span_signature`: costs and tensor structure, consumers
    included) agree up to ``starts[c + 1]``, its value, back pointer and the charges
    of the transitions into it are the earlier run's.  Exact: a state past that point
    is priced anew, from all its incoming transitions."""
    if earlier is None:
        return 0
    same = 0
    for mine, theirs in zip(signature, earlier.signature):
        if mine != theirs:
            break
        same += 1
    final = 0
    while final + 2 < len(starts) and final + 2 < len(earlier.starts) \
            and starts[final + 2] <= same and starts[final + 2] == earlier.starts[final + 2]:
        final += 1
    if not final:
        return 0
    for b in range(final):
        buckets[b] = [s for s in earlier.buckets[b] if s[1] <= final]
        for state in buckets[b]:
            value[state], back[state] = earlier.value[state], earlier.back[state]
    for key, charge in earlier.chosen.items():
        if key[1] <= final and key[5] <= final:
            chosen[key] = charge
    return final


class SegmentDP:
    """The DP: the cheapest sequence of segments covering all operators, each with at
    most `window` matrix operators (0: no limit besides the array budget), and at
    each boundary the choice to keep the tensors passed to the next segment on chip.

    State ``(b, c, H, k)``: the next segment runs positions ``b..c-1``, receives the
    tensors ``H`` held on chip and had its first ``k`` weight ops loaded while the
    segment before it ran; its value is the cost of everything before it.  From it,
    for every next end ``d``, ``h in {0, 1}`` and ``k' in preload_choices``, the
    segment is priced with ``held_out = held_tensors(b, c, d) if h else ()`` and, for
    ``k' > 0``, the next segment's ``k'`` weight copies reserved in its arrays and
    streamed through its DRAM and weight-write bandwidth (`preload_of`) — so the DP
    trades arrays taken from this segment for weight-load cycles hidden behind it
    (§9.1).  ``h = 0`` only when `hold` is False, ``k' <= preload`` (0: no
    preloading); `memory_mode` False forbids memory-mode arrays — the all-compute
    ablation.  The recurrence is `solve`; the other methods price one candidate
    segment (`price`, `variant`, `candidate`) or memoize what many states ask for.
    Raises CMSwitchError if one operator's single weight copy exceeds the chip (run
    `cim-partition` first)."""

    def __init__(self, graph: Graph, arch: Arch, window: int = 0, hold: bool = True,
                 memory_mode: bool = True, preload: int = 1) -> None:
        for o in graph.ops:
            if o.cost.arrays > arch.arrays:
                raise CMSwitchError(
                    f"operator '{o.name}' needs {o.cost.arrays} arrays for one weight "
                    f"copy, the chip has {arch.arrays}: run cim-partition first"
                )
        self.graph, self.arch, self.window, self.hold = graph, arch, window, hold
        self.memory_mode, self.preload = memory_mode, preload
        self.starts = segment_starts(graph)
        self.last = len(self.starts) - 1
        self.ends = _next_ends(graph, self.starts, arch.arrays, window)
        self.switch_pair = 2 * arch.switch_cycles
        self.variants = (False, True) if memory_mode else (False,)
        self.chosen: dict[tuple, tuple[bool, float]] = {}  # (memory mode, switches charged)
        self.cache = solve_cache()
        self.priced: dict[tuple, float | None] = {}
        self.built: dict[tuple, tuple] = {}
        self.candidates = self.cache.candidates.setdefault(arch, {})
        self.bounds: dict[tuple[int, int, int, int], float] = {}
        self.weights_of: dict[tuple[int, int, int], tuple[int, int]] = {}
        self.held_of: dict[tuple[int, int, int], tuple[int, ...]] = {}
        self.choices: dict[tuple[int, int, int], tuple[int, ...]] = {}

    def candidate(self, b: int, c: int, held_in: tuple, held_out: tuple, k_in: int = 0,
                  d: int = 0, k_out: int = 0, memory: bool = True
                  ) -> tuple[SegmentProblem, bool, float, SegmentProblem | None]:
        """``(problem, whether its held bytes fit, cycles_lower_bound, the same segment
        loading its leading weights itself — `_preloaded_price`'s plain problem, the
        DP's own candidate, so usually priced already)``, built once per distinct
        problem (a state asks again for every budget and next end)."""
        reserve, nbytes = self.preloaded_weights(c, d, k_out) if k_out else (0, 0)
        key = (b, c, held_in, held_out, k_in, reserve, nbytes, memory)
        if key in self.built:
            return self.built[key]
        first = self.starts[b]
        shared = (span_signature(self.graph, first, self.starts[c] - 1, self.cache.signatures),
                  relative_tensors(self.graph, first, held_in),
                  relative_tensors(self.graph, first, held_out), k_in, reserve, nbytes, memory)
        if shared not in self.candidates:
            problem = segment_problem(self.graph, first, self.starts[c] - 1, held_in, held_out,
                                      memory, k_in, reserve, nbytes)
            fits = holdable(problem, self.arch)
            plain = self.candidate(b, c, held_in, held_out, 0, d, k_out, memory)[0] if k_in \
                else None
            self.candidates[shared] = (problem, fits,
                                  cycles_lower_bound(problem, self.arch) if fits else 0.0, plain)
        self.built[key] = self.candidates[shared]
        return self.built[key]

    def op_bound(self, b: int, c: int, k_in: int, prefetch: int) -> float:
        """`operator_bound` of the candidate's operators without building its tensors
        (no late phase either: lower still), never above its `cycles_lower_bound`, so
        a budget it reaches prunes exactly."""
        key = (b, c, k_in, prefetch)
        if key not in self.bounds:
            ops = segment_ops(self.graph, self.starts[b], self.starts[c] - 1, k_in)
            self.bounds[key] = operator_bound(
                SegmentProblem(ops, preloaded=k_in, prefetch=prefetch), self.arch)
        return self.bounds[key]

    def preloaded_weights(self, c: int, d: int, k: int) -> tuple[int, int]:
        """`preload_of` the next segment ``c..d-1``, once per triple."""
        if (c, d, k) not in self.weights_of:
            self.weights_of[c, d, k] = preload_of(self.graph, self.starts[c], self.starts[d] - 1, k)
        return self.weights_of[c, d, k]

    def price(self, b: int, c: int, held_in: tuple, held_out: tuple, k_in: int = 0, d: int = 0,
              k_out: int = 0, budget: float = float("inf")) -> float | None:
        """The segment's predicted cycles, switches included: the cheaper of running it
        compute-only and running it with memory-mode arrays plus `switch_pair` (one
        switch for the last segment: its arrays turn memory, nothing turns them back; ties:
        compute-only); `chosen` records which.  None if neither fits, or if no
        allocation costs less than `budget` (a dominated candidate: not cached)."""
        key = (b, c, held_in, held_out, k_in, d if k_out else 0, k_out)
        if key in self.priced:
            return self.priced[key]
        best, fits = None, False
        charge = self.switch_pair if c != self.last else self.arch.switch_cycles
        if k_out and self.memory_mode:
            # compute-only beside a dual-mode DP only when it reserves no arrays for the
            # next segment's preload: cim-allocate's layout cannot keep a compute-only
            # segment's reserve free for a dual-mode successor (measured on ResNet-18:
            # every such preload was dropped, 469180 planned -> 494555 cycles allocated)
            # — but when running compute-only is as fast, the memory variant's plan
            # needs no memory-mode arrays (cim-allocate's tie-break leaves the pool
            # empty) and pays no switch
            cost, fits = self.variant(b, c, held_in, held_out, k_in, d, k_out, True, budget)
            if cost is not None:
                same, _ = self.variant(b, c, held_in, held_out, k_in, d, k_out, False,
                                  cost * (1 + SAME_COST))
                paid = 0 if same is not None else charge
                if cost + paid < budget:
                    best, self.chosen[key] = cost + paid, (True, paid)
        else:
            for memory in self.variants:
                paid = charge if memory else 0
                cost, ok = self.variant(b, c, held_in, held_out, k_in, d, k_out, memory,
                                   budget - paid)
                fits |= ok
                if cost is None:
                    continue
                best, self.chosen[key] = cost + paid, (memory, paid)
                budget = best
        if best is not None:
            self.priced[key] = best
        elif not fits:
            self.priced[key] = None
        return best

    def variant(self, b: int, c: int, held_in: tuple, held_out: tuple, k_in: int, d: int,
                k_out: int, memory: bool, budget: float) -> tuple[float | None, bool]:
        """``(cycles or None, whether the held bytes fit)`` of one mode variant."""
        prefetch = self.preloaded_weights(c, d, k_out)[1] if k_out else 0
        if self.op_bound(b, c, k_in, prefetch) >= budget:
            return None, True  # dominated before its tensors are priced
        problem, fits, lower, plain = self.candidate(b, c, held_in, held_out, k_in, d, k_out,
                                                memory)
        if not fits:
            return None, False
        if lower >= budget:
            return None, True
        label = self.graph.span(self.starts[b], self.starts[c] - 1)
        if k_in:
            done, cost = _preloaded_price(problem, plain, self.arch, label, budget)
            if done:
                return cost, True
        return self.cache.price(problem, self.arch, label, budget), True

    def holds(self, b: int, c: int, d: int) -> tuple[int, ...]:
        """`held_tensors` of segment ``b..c-1`` before ``c..d-1``, once per triple
        (every state of that segment asks)."""
        if (b, c, d) not in self.held_of:
            starts = self.starts
            self.held_of[b, c, d] = held_tensors(self.graph, starts[b], starts[c] - 1,
                                                 starts[d] - 1)
        return self.held_of[b, c, d]

    def preloads(self, b: int, c: int, d: int) -> tuple[int, ...]:
        if not self.preload:
            return (0,)
        if (b, c, d) not in self.choices:
            starts = self.starts
            self.choices[b, c, d] = preload_choices(self.graph, starts[b], starts[c] - 1,
                                                    starts[c], starts[d] - 1,
                                                    self.arch.arrays, self.preload)
        return self.choices[b, c, d]

    def saving(self, c: int, d: int, k: int) -> float:
        """Load cycles of one copy of the first `k` preloadable ops of ``c..d-1``: the
        most preloading them can save the next segment (it could run the same plan
        and load them itself), so a reserve costing more is dominated."""
        _, nbytes = self.preloaded_weights(c, d, k)
        return nbytes / min(self.arch.external_bw_bytes, self.arch.weight_write_bw_bytes)

    def solve(self) -> list[SegmentChoice]:
        """Run the recurrence: states in order of their start position ``b``; each
        state ``(b, c, H, k)`` tries every next end ``d``, hold choice and preload count,
        keeping for every next state the cheapest value and its predecessor; the last
        segment's states close the plan.  Then walk back from the best end.  Raises
        CMSwitchError if no segmentation fits."""
        State = tuple[int, int, tuple, int]
        value: dict[State, float] = {(0, c, (), 0): 0.0 for c in self.ends[0]}
        back: dict[State, State | None] = dict.fromkeys(value)
        buckets: list[list[State]] = [[] for _ in self.starts]
        buckets[0] = list(value)
        # tensor ids (held sets in the states) match between graphs of as many inputs
        inputs = sum(1 for t in self.graph.tensors if t.producer is None)
        run_key = (self.arch, self.window, self.hold, self.memory_mode, self.preload, inputs)
        signature = span_signature(self.graph, 0, len(self.graph.ops) - 1, self.cache.signatures)
        final = _resume(self.cache.dp_runs.get(run_key), signature, self.starts, value, back,
                        buckets,
                        self.chosen)
        best_total, best_end = float("inf"), None
        bar = progress(range(self.last), "cim-segment", "start")
        for b in bar:
            bar.set_postfix_str(f"{self.cache.priced} segments priced", refresh=False)
            for state in buckets[b]:
                _, c, held_in, k_in = state
                if c == self.last:
                    cost = self.price(b, c, held_in, (), k_in, budget=best_total - value[state])
                    if cost is not None and value[state] + cost < best_total:
                        best_total, best_end = value[state] + cost, state
                    continue
                for d in self.ends[c]:
                    if d <= final:
                        continue  # the next state is the earlier run's, already final
                    held = self.holds(b, c, d) if self.hold else ()
                    for held_out in ((), held) if held else ((),):
                        plain = None
                        for k_out in self.preloads(b, c, d):
                            nxt = (c, d, held_out, k_out)
                            budget = value.get(nxt, float("inf")) - value[state]
                            if k_out and plain is not None:
                                # dominated unless cheaper than not preloading plus the
                                # preloaded ops' own load (the most the next segment saves)
                                budget = min(budget, plain + self.saving(c, d, k_out))
                            cost = self.price(b, c, held_in, held_out, k_in, d, k_out, budget)
                            if not k_out:
                                plain = cost
                            if cost is None or (k_out and plain is not None
                                                and cost >= plain + self.saving(c, d, k_out)):
                                continue
                            total = value[state] + cost
                            if total < value.get(nxt, float("inf")):
                                if nxt not in value:
                                    buckets[c].append(nxt)
                                value[nxt], back[nxt] = total, state
        self.cache.dp_runs[run_key] = _DPRun(signature, self.starts, value, back, buckets,
                                             self.chosen)
        if best_end is None:
            raise CMSwitchError("no segmentation fits the chip")
        result: list[SegmentChoice] = []
        state, held_out, d, k_out = best_end, (), 0, 0
        while state is not None:
            b, c, held_in, k_in = state
            key = (b, c, held_in, held_out, k_in, d if k_out else 0, k_out)
            memory, switches = self.chosen[key]
            problem = self.candidate(b, c, held_in, held_out, k_in, d, k_out, memory)[0]
            label = self.graph.span(self.starts[b], self.starts[c] - 1)
            thr = self.cache.throughput_of(problem, self.arch, label)
            alloc = evaluate_allocation(problem, thr.copies, thr.pool, thr.places, self.arch)
            result.append(SegmentChoice(self.starts[b], self.starts[c] - 1, alloc, held_in,
                                        held_out, k_in, memory, switches))
            state, held_out, d, k_out = back[state], held_in, c, k_in
        return result[::-1]


def dp_segments(graph: Graph, arch: Arch, window: int = 0,
                hold: bool = True, memory_mode: bool = True,
                preload: int = 1) -> list[SegmentChoice]:
    """The DP of `SegmentDP` (see there) with these options: the cheapest segments
    covering all operators.  Raises CMSwitchError if one operator's single weight copy
    exceeds the chip (run `cim-partition` first) or no segmentation fits."""
    return SegmentDP(graph, arch, window, hold, memory_mode, preload).solve()



@dataclass(frozen=True)
class CimSegmentPass(ModulePass):
    """Split the model into segments by dynamic programming over the segment MIP."""

    name = "cim-segment"

    arch: str | None = None
    window: int = DEFAULT_WINDOW
    hold: bool = True
    """Let tensors passed to the next segment stay on chip (DESIGN.md §9.3)."""
    memory_mode: bool = True
    """False: every array computes (the ablation "DP segmentation without memory
    mode"); segments get the `compute_only` unit attribute for `cim-allocate`."""
    preload: int = 1
    """The most leading weight ops of the next segment the DP may load during a
    segment's pipeline, in arrays it reserves (DESIGN.md §9.1); 0 disables it.  More
    widens the search at a higher compile time (MobileNet-V2: 2109 distinct MIP solves
    with 1; 841 before preloading existed and 6206 unbounded, both measured on
    earlier code)."""

    def __post_init__(self) -> None:
        if isinstance(self.preload, bool):  # xDSL parses true/false as bools, an int subclass
            raise ValueError(f"{self.name}: preload must be a number of weight ops, "
                             f"got {str(self.preload).lower()}")
        check_options(self.name, window=self.window, preload=self.preload)

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        arch = resolve_arch(op, self.arch)
        func = main_func(op)
        graph, plan = self.plan(func, arch)
        write_segments(func, graph, plan)

    def plan(self, func: FuncOp, arch: Arch) -> tuple[Graph, list[SegmentChoice]]:
        """The DP's segments for `func` with this pass's options, without changing
        the IR (`write_segments` does): the graph they index and the choices.  Raises
        CMSwitchError if `func` is already segmented."""
        if any(isinstance(o, SegmentOp) for o in func.body.block.ops):
            raise CMSwitchError("cim-segment: the model is already segmented")
        graph = build_graph(func, arch)
        return graph, dp_segments(graph, arch, self.window, self.hold, self.memory_mode,
                                  self.preload)


