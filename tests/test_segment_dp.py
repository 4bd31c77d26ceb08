"""The DP of `cim-segment` against exhaustive search over every segmentation x every
hold decision x every preload decision at every boundary, on random small graphs
(chains and DAGs with residual adds, up to 7 matrix operators) on a 16-array chip.

Preload choices (DESIGN.md §9.1), re-derived here: at a boundary, none, or the longest
prefix of the next segment's leading weight ops whose single copies fit beside one
copy of the current segment's weights.  The current segment then has that many fewer
arrays and must stream those weight bytes through its DRAM and weight-write
bandwidth; the next segment runs them with one copy and does not load them.

Each segment is priced by the full segment MIP (`solve_segment`, stage 2 included,
not the DP's cached stage-1 pricing), which tests/test_mip.py holds equal to a brute
force over every placement of the segment's tensors; the boundary's two switches are
added.  The DP must reach the exhaustive optimum over segmentations, holds and
preloads.

`make test` tries `SEEDS` random graphs of each shape (chain, DAG) and half as many
attention graphs; `make fuzz` sets ``CMSWITCH_DP_SEEDS=16`` (each seed is a few
seconds of full segment MIPs)."""

import itertools
import math
import os
import random

import pytest
from xdsl.dialects import func
from xdsl.dialects.builtin import ModuleOp, TensorType, f32
from xdsl.ir import Block, Region

from cmswitch.arch import arch_from_dict, load_arch
from cmswitch.cost.graph import build_graph, held_tensors, segment_problem
from cmswitch.dialects.cim import DynMatmulOp, MatmulOp, VectorOp
from cmswitch.solver.mip import solve_segment
from cmswitch.transforms.cim_segment import dp_segments
from cmswitch.transforms.segments import segment_starts

SEEDS = int(os.environ.get("CMSWITCH_DP_SEEDS", "4"))
"""Random graphs per shape the exhaustive comparisons try."""

ARCH16 = arch_from_dict(dict(load_arch("dynaplasia").model_dump(), name="tiny16", arrays=16,
                             global_buffer_bytes=8192))


def _random_graph(rng: random.Random, dag: bool, matrix_ops: int):
    m = rng.choice([16, 64, 256])
    width = rng.choice([64, 200, 320])
    block = Block(arg_types=[TensorType(f32, [m, width])])
    x, ops = block.args[0], []
    for i in range(matrix_ops):
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


def _attention_graph(rng: random.Random):
    """One attention block: q, k, v projections, ``softmax(q kᵀ) v`` (two dynamic
    matmuls: their MVMs wait for the run-time operand writes, issue 12) and an output
    projection."""
    m, width, d = rng.choice([16, 64]), rng.choice([64, 200]), rng.choice([40, 64])
    block = Block(arg_types=[TensorType(f32, [m, width])])
    x = block.args[0]
    q, k, v = (MatmulOp(x, TensorType(f32, [m, d]), f"w{name}") for name in "qkv")
    kt = VectorOp("transpose", [k.output], [TensorType(f32, [d, m])])
    scores = DynMatmulOp(q.output, kt.outputs[0], TensorType(f32, [m, m]))
    probs = VectorOp("softmax", [scores.output], [scores.output.type])
    ctx = DynMatmulOp(probs.outputs[0], v.output, TensorType(f32, [m, d]))
    out = MatmulOp(ctx.output, TensorType(f32, [m, width]), "wo")
    block.add_ops([q, k, kt, scores, probs, v, ctx, out])
    block.add_op(func.ReturnOp(out.output))
    f = func.FuncOp("main", ([x.type], [out.output.type]), Region(block))
    return ModuleOp([f]), f


SLOW_SWITCH = arch_from_dict(dict(ARCH16.model_dump(), name="tiny16-slow-switch",
                                  switch_cycles=2000))
"""Switches dear enough that running a segment compute-only often wins."""


def test_slow_switches_make_some_segments_compute_only():
    """With 2000-cycle switches some random graph runs a segment compute-only (the
    property above then covers both mode variants of the DP)."""
    assert any(not c.memory_mode for g in _fitting_graphs()
               for c in dp_segments(g, SLOW_SWITCH, window=0))


def reference_cost(p, arch, final: bool = False) -> float:
    """Cycles of the best allocation of segment problem `p` (inf if none fits): the
    full two-stage solve of the segment MIP (`solve_segment`, which tests/test_mip.py
    holds equal to a brute force over every placement), run with memory-mode arrays plus
    two switches (to memory mode before, back after; one if `final`: nothing follows),
    or compute-only with none, whichever is cheaper."""
    from dataclasses import replace

    from cmswitch.solver.mip import holdable

    costs = [math.inf]
    compute = replace(p, memory_mode=False)
    only = solve_segment(compute, arch, "highs").cycles if holdable(compute, arch) \
        else math.inf
    if holdable(p, arch):
        mixed = solve_segment(p, arch, "highs").cycles
        # a plan no faster than compute-only leaves the pool empty: no switches
        costs.append(mixed + (0 if only <= mixed * (1 + 1e-6) else
                              (1 if final else 2) * arch.switch_cycles))
    if not p.reserve:  # the DP's rule: no compute-only segment keeps a reserve
        costs.append(only)
    return min(costs)


def _preload_max(graph, a, b, c, arrays, most) -> int:
    """Leading weight ops of segment b..c-1 (at most `most`) whose single copies fit
    beside a..b-1."""
    room = arrays - sum(o.cost.arrays for o in graph.ops[a:b])
    count = 0
    for o in graph.ops[b:c]:
        if not o.cost.arrays:
            continue
        if o.cost.kind != "weight" or o.cost.arrays > room:
            break
        room -= o.cost.arrays
        count += 1
    return min(count, most)


def exhaustive(graph, arch, preload: int = 1) -> float:
    starts = segment_starts(graph)
    n = len(graph.ops)
    priced: dict = {}

    def cost(first, last, held_in, held_out, k_in, reserve, nbytes):
        key = (first, last, held_in, held_out, k_in, reserve, nbytes)
        if key not in priced:
            p = segment_problem(graph, first, last, held_in, held_out, True, k_in,
                                reserve, nbytes)
            fits = sum(op.arrays for op in p.ops) <= arch.arrays - reserve
            priced[key] = reference_cost(p, arch, last == n - 1) if fits else math.inf
        return priced[key]

    def lead(b, c, k):
        ops = [o.cost for o in graph.ops[b:c] if o.cost.arrays][:k]
        return sum(o.arrays for o in ops), sum(o.weight_bytes for o in ops)

    best = math.inf
    inner = starts[1:-1]
    for r in range(len(inner) + 1):
        for cut in itertools.combinations(inner, r):
            bounds = [0, *cut, n]
            segs = list(zip(bounds, bounds[1:]))
            tops = [_preload_max(graph, a, b, segs[k + 1][1], arch.arrays, preload)
                    for k, (a, b) in enumerate(segs[:-1])]
            for holds in itertools.product([False, True], repeat=len(segs) - 1):
                held = [held_tensors(graph, a, b - 1, segs[k + 1][1] - 1) if h else ()
                        for k, ((a, b), h) in enumerate(zip(segs, holds))] + [()]
                for pre in itertools.product(*[sorted({0, t}) for t in tops]):
                    pre = (0, *pre, 0)  # pre[k]: ops of segment k preloaded before it
                    total = 0.0
                    for k, (a, b) in enumerate(segs):
                        nxt = lead(*segs[k + 1], pre[k + 1]) if k + 1 < len(segs) else (0, 0)
                        total += cost(a, b - 1, held[k - 1] if k else (), held[k], pre[k], *nxt)
                    best = min(best, total)
    return best


@pytest.mark.parametrize("seed", range(SEEDS))
@pytest.mark.parametrize("dag", [False, True])
def test_dp_equals_exhaustive_segmentation(seed, dag):
    rng = random.Random(seed * 2 + dag)
    _, f = _random_graph(rng, dag, rng.randint(2, 7))
    graph = build_graph(f, ARCH16)
    if any(o.cost.arrays > ARCH16.arrays for o in graph.ops):
        pytest.skip("an operator larger than the tiny chip")
    for arch, preload in ((ARCH16, 1), (ARCH16, 99), (ARCH16, 0), (SLOW_SWITCH, 1)):
        want = exhaustive(graph, arch, preload)
        plan = dp_segments(graph, arch, window=0, preload=preload)
        total = sum(c.alloc.cycles + c.switch_cycles for c in plan)
        assert total == pytest.approx(want, rel=1e-3), f"{arch.name} preload={preload}"


def _fitting_graphs(count: int = 16):
    """The random graphs of seeds ``0..count-1`` whose every operator fits the chip."""
    for seed in range(count):
        rng = random.Random(seed)
        _, f = _random_graph(rng, seed % 2 == 1, rng.randint(2, 7))
        graph = build_graph(f, ARCH16)
        if all(o.cost.arrays <= ARCH16.arrays for o in graph.ops):
            yield graph


def test_preloading_is_exercised():
    """At least one random graph is best with weights preloaded during the previous
    segment, and then strictly cheaper than without (the property above then covers
    the preload state of the DP)."""
    gains = []
    for graph in _fitting_graphs():
        plan = dp_segments(graph, ARCH16, window=0)
        if any(c.preloaded for c in plan):
            without = dp_segments(graph, ARCH16, window=0, preload=0)
            gains.append(sum(c.alloc.cycles for c in without) - sum(c.alloc.cycles for c in plan))
    assert gains and all(g >= 0 for g in gains) and max(gains) > 0


def test_holding_is_exercised():
    """At least one of the random graphs is best with a tensor held across a boundary
    (the property above then covers the held-state DP, not only plain cuts)."""
    held_somewhere = False
    for graph in _fitting_graphs():
        plan = dp_segments(graph, ARCH16, window=0)
        held_somewhere |= any(c.held_out for c in plan)
    assert held_somewhere


@pytest.mark.parametrize("seed", range(max(1, SEEDS // 2)))
def test_dp_equals_exhaustive_segmentation_of_attention(seed):
    """The DP prices the two-phase attention segments (`SegmentProblem.late`) exactly
    as the exhaustive search's full MIP does."""
    _, f = _attention_graph(random.Random(seed))
    graph = build_graph(f, ARCH16)
    assert any(o.cost.kind == "dynamic" for o in graph.ops)
    for arch, preload in ((ARCH16, 1), (SLOW_SWITCH, 1)):
        want = exhaustive(graph, arch, preload)
        plan = dp_segments(graph, arch, window=0, preload=preload)
        total = sum(c.alloc.cycles + c.switch_cycles for c in plan)
        assert total == pytest.approx(want, rel=1e-3), f"{arch.name} preload={preload}"


def _partitioned_graph(model, arch_name: str = "dynaplasia", chunk: int = 0, **kw):
    from xdsl.context import Context

    from cmswitch.api import _all_dialects, load_module
    from cmswitch.frontend.configs import build_transformer
    from cmswitch.transforms.cim_partition import CimPartitionPass
    from cmswitch.transforms.common import main_func

    arch = load_arch(arch_name)
    module = build_transformer(model, **kw) if kw else load_module(model)
    ctx = Context()
    _all_dialects(ctx)
    CimPartitionPass(max_arrays=chunk or arch.arrays // 2).apply(ctx, module)
    return build_graph(main_func(module), arch), arch


@pytest.mark.parametrize("model, kw, shared", [
    ("llama2-7b", {"batch": 1, "seq": 16, "layers": 2}, 10),
    # ResNet-18 repeats little: its split layer4 convolutions are read through
    # concat views whose part counts differ between blocks (cmswitch.cost.views)
    ("models/resnet18.onnx", {}, 1),
])
def test_equal_span_signatures_give_equal_problems(model, kw, shared):
    """`span_signature` (the DP's key for sharing built candidates between repeated
    blocks and between the chunk sizes' graphs) is sound: over every candidate span
    of the DP window, with its held tensors in and out, spans of equal keys have equal
    `segment_problem`s — and repeated blocks do share keys (the test is not vacuous)."""
    from cmswitch.cost.graph import relative_tensors, span_signature
    from cmswitch.transforms.cim_segment import DEFAULT_WINDOW, _next_ends

    graph, arch = _partitioned_graph(model, **kw)
    starts = segment_starts(graph)
    ends = _next_ends(graph, starts, arch.arrays, DEFAULT_WINDOW)
    interned: dict = {}
    seen: dict = {}
    merged = 0
    for b in range(len(starts) - 1):
        for c in ends[b]:
            first, last = starts[b], starts[c] - 1
            outs = {()} | {held_tensors(graph, first, last, starts[d] - 1)
                           for d in (ends[c] if c < len(starts) - 1 else [])}
            ins = {()} | {held_tensors(graph, starts[a], first - 1, last)
                          for a in range(b) if c in ends[b] and b in ends[a]}
            for held_in in ins:
                for held_out in outs:
                    key = (span_signature(graph, first, last, interned),
                           relative_tensors(graph, first, held_in),
                           relative_tensors(graph, first, held_out))
                    problem = segment_problem(graph, first, last, held_in, held_out)
                    if key in seen:
                        merged += 1
                        assert seen[key] == problem, graph.span(first, last)
                    seen[key] = problem
    assert merged > shared


def test_the_dp_window_contains_cim_mlcs_segments():
    """Beyond the window the DP's candidates are exactly CIM-MLC's greedy segments
    (`greedy_segments`), so its space contains the all-compute baseline's plan —
    MobileNet-V2's first one packs 24 matrix operators, far past the window of 6."""
    from cmswitch.strategies.cimmlc import greedy_segments
    from cmswitch.transforms.cim_segment import DEFAULT_WINDOW, _next_ends

    graph, arch = _partitioned_graph("models/mobilenet_v2.onnx")
    starts = segment_starts(graph)
    ends = _next_ends(graph, starts, arch.arrays, DEFAULT_WINDOW)
    position = {s: i for i, s in enumerate(starts)}
    segments = greedy_segments(graph, arch)
    for first, last in segments:
        assert position[last + 1] in ends[position[first]], graph.span(first, last)
    longest = max(position[last + 1] - position[first] for first, last in segments)
    assert longest > DEFAULT_WINDOW
    beyond = sum(1 for b, row in enumerate(ends) for c in row if c - b > DEFAULT_WINDOW)
    assert beyond == sum(1 for first, last in segments
                         if position[last + 1] - position[first] > DEFAULT_WINDOW)


@pytest.mark.parametrize("model, kw", [
    ("models/resnet18.onnx", {}),
    ("llama2-7b", {"batch": 1, "seq": 16, "layers": 2}),
])
def test_a_dp_resumed_from_the_other_chunk_size_equals_a_fresh_one(model, kw):
    """The second chunk size's DP starts from the first one's tables for the leading
    operators both graphs share (`_resume`); its plan must be the one a DP on an
    empty cache finds."""
    from cmswitch.solver.mip import fresh_cache

    def plan_of(graph, arch):
        return [(c.first, c.last, c.held_in, c.held_out, c.preloaded, c.memory_mode,
                 round(c.alloc.cycles), c.switch_cycles)
                for c in dp_segments(graph, arch, window=6)]

    half, arch = _partitioned_graph(model, **kw)
    whole, _ = _partitioned_graph(model, chunk=arch.arrays, **kw)
    with fresh_cache():
        alone = plan_of(whole, arch)
    with fresh_cache() as cache:
        plan_of(half, arch)
        resumed = plan_of(whole, arch)
        assert cache.dp_runs
    assert resumed == alone
