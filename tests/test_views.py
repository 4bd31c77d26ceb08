"""Views (`cmswitch.cost.views`, DESIGN.md §9.12): which moves the graph leaves out,
what their readers then read, and that the flow computes the same numbers."""

import re

from xdsl.dialects import func
from xdsl.dialects.builtin import IntegerAttr, TensorType, f32, i64
from xdsl.ir import Block, Region

from cmswitch import api as cms
from cmswitch.arch import load_arch
from cmswitch.cost.graph import build_graph
from cmswitch.dialects.cim import DynMatmulOp, MatmulOp, VectorOp, array_prop

ARCH = load_arch("dynaplasia")  # 8-bit activations: a row of n elements is n bytes


def _t(*shape):
    return TensorType(f32, list(shape))


def _vec(kind, ins, shape, **attrs):
    extra = {k: array_prop(v) if isinstance(v, list) else IntegerAttr(v, i64)
             for k, v in attrs.items()}
    return VectorOp(kind, ins, [_t(*shape)], extra)


def _graph(arg_shapes, build, arch=ARCH):
    """The graph of a function whose body `build(block) -> (ops, returned)` makes, on
    `arch` (default: the `dynaplasia` preset)."""
    block = Block(arg_types=[_t(*s) for s in arg_shapes])
    ops, returned = build(block)
    block.add_ops(ops)
    block.add_op(func.ReturnOp(*returned))
    f = func.FuncOp("main", ([a.type for a in block.args], [v.type for v in returned]),
                    Region(block))
    return build_graph(f, arch)


def _kinds(graph):
    return [g.op.kind.data if isinstance(g.op, VectorOp) else g.op.name for g in graph.ops]


def test_attention_moves_are_read_in_place():
    """BERT's head split: Q (4 x 64 x 256) reshaped to 4 heads of 64 and permuted to
    (B, heads, S, d) feeds the score matmul's stream; K's copy goes through the same
    views and a last-two-axes swap into the operand write.  Every move is a view: the
    graph holds the two projections, the score matmul and the softmax; the score
    matmul reads both projections' tensors (ids 1 and 2: the argument is 0), and
    waits for the whole of Q (its rows come in head order, not as q_proj writes)."""
    def build(block):
        x = block.args[0]
        q = MatmulOp(x, _t(1, 64, 256), "wq")
        k = MatmulOp(x, _t(1, 64, 256), "wk")
        qh = _vec("reshape", [q.output], (1, 64, 4, 64))
        qt = _vec("transpose", [qh.outputs[0]], (1, 4, 64, 64), perm=[0, 2, 1, 3])
        kh = _vec("reshape", [k.output], (1, 64, 4, 64))
        kt = _vec("transpose", [kh.outputs[0]], (1, 4, 64, 64), perm=[0, 2, 1, 3])
        kT = _vec("transpose", [kt.outputs[0]], (1, 4, 64, 64), perm=[0, 1, 3, 2])
        s = DynMatmulOp(qt.outputs[0], kT.outputs[0], _t(1, 4, 64, 64))
        p = _vec("softmax", [s.output], (1, 4, 64, 64), axis=-1)
        return [q, k, qh, qt, kh, kt, kT, s, p], [p.outputs[0]]

    graph = _graph([(1, 64, 256)], build)
    assert _kinds(graph) == ["cim.matmul", "cim.matmul", "cim.dyn_matmul", "softmax"]
    scores = graph.ops[2]
    assert scores.inputs == [1, 2]
    assert graph.working_set(1, 2) == 64 * 256          # all of Q: 16384 bytes
    assert len(graph.views) == 5


def test_a_column_slice_feeds_an_mvm_but_not_the_digital_unit():
    """A K-slice (columns 0..40 of a 16 x 100 input, 40 bytes a row) is read by the
    matmul's stream in place; the same slice into a ReLU stays a copy (the digital
    unit reads whole tensors); a 16-byte slice (under a 32-byte burst) stays a copy."""
    def build(block):
        x = block.args[0]
        a = _vec("slice", [x], (16, 40), axis=1, start=0)
        m = MatmulOp(a.outputs[0], _t(16, 8), "w")
        b = _vec("slice", [x], (16, 40), axis=1, start=40)
        r = _vec("relu", [b.outputs[0]], (16, 40))
        c = _vec("slice", [x], (16, 16), axis=1, start=80)
        m2 = MatmulOp(c.outputs[0], _t(16, 8), "w2")
        return [a, m, b, r, c, m2], [m.output, r.outputs[0], m2.output]

    graph = _graph([(16, 100)], build)
    assert _kinds(graph) == ["cim.matmul", "slice", "relu", "slice", "cim.matmul"]
    assert graph.ops[0].inputs == [0]                   # the matmul reads x itself
    assert graph.working_set(0, 0) == 16 * 100          # 64 rows of x: all 16 here


def test_a_concat_is_read_part_by_part_by_the_digital_unit_only():
    """Two N-pieces (16 x 32 each) concatenated along the last axis: a GELU reads both
    parts (two inputs, one operand slot), streaming; the concat feeding a matmul stays
    a copy (an MVM stream reads one tensor)."""
    def build(block):
        x = block.args[0]
        p0 = MatmulOp(x, _t(16, 32), "w0")
        p1 = MatmulOp(x, _t(16, 32), "w1")
        cat = _vec("concat", [p0.output, p1.output], (16, 64), axis=-1)
        g = _vec("gelu", [cat.outputs[0]], (16, 64))
        cat2 = _vec("concat", [p0.output, p1.output], (16, 64), axis=1)
        m = MatmulOp(cat2.outputs[0], _t(16, 8), "w2")
        return [p0, p1, cat, g, cat2, m], [g.outputs[0], m.output]

    graph = _graph([(16, 64)], build)
    assert _kinds(graph) == ["cim.matmul", "cim.matmul", "gelu", "concat", "cim.matmul"]
    gelu = graph.ops[2]
    assert gelu.inputs == [1, 2] and gelu.slots == (0, 0)
    assert not gelu.whole


def test_moves_a_reader_cannot_take_stay_copies():
    """A view of a model output, a last-axis swap into the digital unit, a reshape of
    nothing read: copies.  A reshape read by a slice that is itself a copy (its reader
    is a ReLU) is still a view: the slice, a digital-unit op, reads x in place."""
    def build(block):
        x = block.args[0]
        out = _vec("reshape", [x], (32, 32))                       # returned
        sw = _vec("transpose", [x], (64, 16), perm=[1, 0])
        r = _vec("relu", [sw.outputs[0]], (64, 16))
        rs = _vec("reshape", [x], (16, 64))
        sl = _vec("slice", [rs.outputs[0]], (16, 40), axis=1, start=0)
        r2 = _vec("relu", [sl.outputs[0]], (16, 40))
        return [out, sw, r, rs, sl, r2], [out.outputs[0], r.outputs[0], r2.outputs[0]]

    graph = _graph([(16, 64)], build)
    assert _kinds(graph) == ["reshape", "transpose", "relu", "slice", "relu"]
    assert graph.ops[3].inputs == [0]
    assert len(graph.views) == 1


def test_bert_flow_has_no_moves_and_computes_the_model(tmp_path):
    """A BERT-base layer compiles to a flow without reshape, transpose or concat
    statements, which the simulator accepts; functional mode (views evaluated on the
    source tensors) is checked on ONNX models elsewhere (tests/test_zoo_ops.py's
    attention cases)."""
    from cmswitch.sim.simulator import simulate

    plan = cms.compile("bert-base", batch=1, seq=64, layers=1, jobs=1)
    statements = re.findall(r"^\s+VEC\.(\w+)", plan.flow, re.M)
    assert statements and not {"reshape", "transpose", "concat"} & set(statements)
    assert simulate(plan.flow)["cycles"] > 0
