"""Element-wise fusion (DESIGN.md §9.13, docs/cmsasm.md "Streams"): which tensors the
optimizer hands to their reader as a stream, how the simulator times and checks a
stream, and that compiled flows with streams run and compute the model."""

from __future__ import annotations

import pytest

from cmswitch.sim.simulator import simulate
from test_sim import line_of, rejected
from test_sim import one_segment as _unfused_segment


def one_segment(body: str, tensors: str = "") -> str:
    """`test_sim.one_segment` on hardware with element-wise fusion (stream_fusion=1)."""
    return _unfused_segment(body, tensors).replace("clock_mhz=200", "clock_mhz=200 stream_fusion=1")

TENSORS = (".tensor x bytes=3200 input\n.tensor h bytes=1600\n"
           ".tensor y bytes=1600 output")
LOAD = "  CIM.load_weight f1 tiles=1x1 copies=1 bytes=512 -> a[0:1]\n"
FUSED = LOAD + """\
  parallel {
    CIM.mvm f1 a[0:1] vectors=100 k=32 n=16 in=x@dram out=h@stream
    VEC.relu r ops=1600 in=h@stream out=y@dram
  }"""


def test_a_stream_crosses_no_port():
    # load_weight: max(512/32 dram, 512/32 write) = 16 cycles.  Block: the mvm is
    # 100*8 = 800 cycles of compute (dram 3200 B at 4 B/cycle, far from busy), 64
    # chunks of 12.5; the relu's last chunk waits for the mvm's last (800) and then
    # takes 1/64 of max(1600 ops / 64 = 25, 1600 B of y / 32 = 50) = 0.78125 -> 801.
    report = simulate(one_segment(FUSED, TENSORS))
    assert report["cycles"] == 16 + 801
    # h on one memory array (4 B/cycle): the mvm's 1600 B of h and the relu's 1600 B
    # share that port, 3200 B / 4 = 800 cycles of port time on top of the
    # writes' share of the compute, so the block cannot end at 801
    slow = FUSED.replace("h@stream", "h@a[40:41]")
    slow = "  CM.switch TOM a[40:41]\n" + slow
    assert simulate(one_segment(slow, TENSORS))["cycles"] > 1 + 16 + 801


@pytest.mark.parametrize("old, new, at, words", [
    # written outside a parallel block
    ("  parallel {\n", "", "out=h@stream", ("outside a parallel block",)),
    # an mvm reads it
    ("VEC.relu r ops=1600 in=h@stream out=y@dram",
     "CIM.mvm f1 a[0:1] vectors=100 k=16 n=16 in=h@stream out=y@dram",
     "in=h@stream", ("only a VEC statement reads a stream",)),
    # read twice
    ("out=y@dram\n", "out=y@dram\n    VEC.relu r2 ops=1600 in=h@stream out=h2@dram\n",
     "r2 ops", ("already read",)),
    # never read
    ("in=h@stream out=y@dram", "in=x@dram out=y@dram", "out=h@stream",
     ("read by no later VEC statement",)),
    # the writer wrote half of it
    ("vectors=100 k=32", "vectors=50 k=32", "in=h@stream", ("only 800 bytes",)),
    # written twice
    ("out=y@dram\n", "out=y@dram\n    VEC.relu r2 ops=1600 in=x@dram out=h@stream\n",
     "r2 ops", ("already wrote",)),
    # a MEM statement takes it
    ("out=y@dram\n", "out=y@dram\n    MEM.store h@stream -> dram bytes=1600\n",
     "MEM.store", ("only a VEC statement reads a stream",)),
])
def test_stream_rules(old, new, at, words):
    tensors = TENSORS + "\n.tensor h2 bytes=1600"
    text = one_segment(FUSED.replace(old, new, 1), tensors)
    if old == "  parallel {\n":
        text = text.replace("  }\n", "")
    rejected(text, line_of(text, at), *words)


def test_a_stream_read_before_it_is_written():
    body = LOAD + """\
  parallel {
    VEC.relu r ops=1600 in=h@stream out=y@dram
    CIM.mvm f1 a[0:1] vectors=100 k=32 n=16 in=x@dram out=h@stream
  }"""
    text = one_segment(body, TENSORS)
    rejected(text, line_of(text, "in=h@stream"), "no earlier statement")


# ----------------------------------------------------------------------------------
# which tensors the optimizer hands over (Graph.fusable, segment_problem)

from cmswitch.cost.graph import segment_problem, segment_tensor_ids  # noqa: E402
from cmswitch.dialects.cim import DynMatmulOp, MatmulOp  # noqa: E402
from cmswitch.arch import load_arch  # noqa: E402
from test_views import _graph, _t, _vec  # noqa: E402

FUSED_ARCH = load_arch("dynaplasia-fused")


def _fixed(graph, first, last):
    """tensor id -> `TensorUse.fixed` of segment first..last."""
    problem = segment_problem(graph, first, last)
    return dict(zip(segment_tensor_ids(graph, first, last),
                    (u.fixed for u in problem.tensors)))


def test_fusable_tensors():
    """Fusable: an MVM output read only by a ReLU (a), that ReLU's output read only by
    a softmax (r), a GELU output read only by an add (g).  Not: an MVM output read by
    two ops (b), one read by a reduction (c), one read through a transpose that
    reorders its rows (d), a model output (e)."""
    def build(block):
        x = block.args[0]
        a = MatmulOp(x, _t(16, 32), "wa")
        r = _vec("relu", [a.output], (16, 32))
        s = _vec("softmax", [r.outputs[0]], (16, 32), axis=-1)
        b = MatmulOp(x, _t(16, 32), "wb")
        g = _vec("gelu", [b.output], (16, 32))
        h = _vec("add", [b.output, g.outputs[0]], (16, 32))
        c = MatmulOp(x, _t(16, 32), "wc")
        m = _vec("reduce_mean", [c.output], (16, 1), axes=[1])
        d = MatmulOp(x, _t(2, 8, 32), "wd")
        t = _vec("transpose", [d.output], (8, 2, 32), perm=[1, 0, 2])
        u = _vec("relu", [t.outputs[0]], (8, 2, 32))
        e = MatmulOp(x, _t(16, 32), "we")
        v = _vec("relu", [e.output], (16, 32))
        ops = [a, r, s, b, g, h, c, m, d, t, u, e, v]
        return ops, [s.outputs[0], h.outputs[0], m.outputs[0], u.outputs[0],
                     v.outputs[0], e.output]

    graph = _graph([(16, 8)], build, FUSED_ARCH)
    fusable = [i for i in range(len(graph.tensors)) if graph.fusable(i)]
    producers = [graph.ops[graph.tensors[i].producer] for i in fusable]
    assert [g.cost.name for g in producers] == [graph.ops[i].cost.name for i in (0, 1, 4)]
    assert [g.op.name for g in producers] == ["cim.matmul", "cim.vector", "cim.vector"]
    assert [graph.ops[graph.tensors[i].consumers[0]].op.kind.data for i in fusable] == [
        "relu", "softmax", "add"]


def test_a_stream_needs_both_ends_in_one_segment_and_phase():
    """x -> q, k; scores = q . k^T (late: after the operand write) -> softmax (late):
    handed over.  v (early) -> add with the late softmax output: fusable, but the add
    runs in the late phase, so v is not handed over.  Cut between the score matmul
    and its softmax, the scores are no stream either."""
    def build(block):
        x = block.args[0]
        q = MatmulOp(x, _t(16, 8), "wq")
        k = MatmulOp(x, _t(16, 8), "wk")
        kT = _vec("transpose", [k.output], (8, 16), perm=[1, 0])
        s = DynMatmulOp(q.output, kT.outputs[0], _t(16, 16))
        p = _vec("softmax", [s.output], (16, 16), axis=-1)
        v = MatmulOp(x, _t(16, 16), "wv")
        y = _vec("add", [v.output, p.outputs[0]], (16, 16))
        return [q, k, kT, s, p, v, y], [y.outputs[0]]

    graph = _graph([(16, 8)], build, FUSED_ARCH)
    ops = [g.name for g in graph.ops]
    assert len(ops) == 6  # the transpose is a view
    scores, v = graph.ops[2].outputs[0], graph.ops[4].outputs[0]
    assert graph.fusable(scores) and graph.fusable(v)
    whole = _fixed(graph, 0, 5)
    assert whole[scores] == "stream" and whole[v] != "stream"
    assert _fixed(graph, 0, 2)[scores] != "stream"
    assert _fixed(graph, 3, 5)[v] == "stream"  # no late op in 3..5
    # the same graph on the chip without fusion hands nothing over
    plain = _graph([(16, 8)], build)
    assert "stream" not in _fixed(plain, 0, 5).values()


# flows a helper found where the simulator and the independent checker of the flow
# fuzzer (tests/flow_oracle.py) disagreed; both now give the expected verdict


@pytest.mark.parametrize("body, tensors, accepted", [
    # an mvm writing a stream still needs an input window of one whole vector
    ("  CIM.load_weight f1 tiles=1x1 copies=1 bytes=512 -> a[0:1]\n  parallel {\n"
     "    MEM.load x@dram -> gb bytes=3200 window=8\n"
     "    CIM.mvm f1 a[0:1] vectors=100 k=32 n=16 in=x@gb out=h@stream\n"
     "    VEC.relu r ops=1600 in=h@stream out=y@dram\n  }",
     ".tensor x bytes=3200 input\n.tensor h bytes=1600\n.tensor y bytes=1600 output", False),
    # 4-bit activations: 1.5 bytes written fill a 2-byte tensor (whole bytes)
    ("  CIM.load_weight f1 tiles=1x1 copies=1 bytes=512 -> a[0:1]\n  parallel {\n"
     "    CIM.mvm f1 a[0:1] vectors=1 k=32 n=3 in=x@dram out=h@stream\n"
     "    VEC.relu r ops=3 in=h@stream out=y@dram\n  }",
     ".tensor x bytes=16 input\n.tensor h bytes=2\n.tensor y bytes=2 output", True),
    # a 0-byte output must still be stored
    ("  VEC.a b ops=1 in=x@dram out=x@gb", ".tensor x bytes=16 input\n.tensor e bytes=0 output",
     False),
])
def test_the_simulator_and_the_checker_agree(body, tensors, accepted):
    import flow_oracle
    from cmswitch.errors import CMSwitchError

    text = one_segment(body, tensors)
    if "n=3" in body:
        text = text.replace("act_bits=8", "act_bits=4")
    verdicts = []
    for judge, error in ((simulate, CMSwitchError), (flow_oracle.check, flow_oracle.Violation)):
        try:
            judge(text)
            verdicts.append(True)
        except error:
            verdicts.append(False)
    assert verdicts == [accepted, accepted]


def test_hardware_without_stream_fusion(tmp_path):
    """`stream_fusion=0` (the default, and the frozen presets): the compiler hands no
    tensor over (the flow names no stream; `dynaplasia-fused`, the same chip with
    fusion, does), and the simulator and the checker refuse a stream on it."""
    import flow_oracle
    from cmswitch import api as cms

    from test_functional import _cnn

    # the fused preset is the default chip but for its name and the field
    assert load_arch("dynaplasia").model_dump() == load_arch("dynaplasia-fused").model_dump() | {
        "name": "dynaplasia", "stream_fusion": 0}
    path = _cnn(tmp_path / "cnn.onnx")
    fused = cms.compile(path, arch="dynaplasia-fused")
    plain = cms.compile(path)
    assert "@stream" in fused.flow and "@stream" not in plain.flow
    assert "stream_fusion=0" in plain.flow.splitlines()[1]
    plain.simulate()
    fused.simulate()
    text = _unfused_segment(FUSED, TENSORS)  # the header gives no stream_fusion: 0
    rejected(text, line_of(text, "out=h@stream"), "stream_fusion=0")
    with pytest.raises(flow_oracle.Violation):
        flow_oracle.check(text)
