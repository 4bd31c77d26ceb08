"""Tests of the ONNX importer (`cmswitch.frontend.onnx_importer`).

Real models: the six weight-stripped graphs in ``models/``; expected operator counts are
derived independently from the ONNX graph.  Synthetic models are built with
`onnx.helper`; their expected shapes are computed by hand from the ONNX spec formulas.
"""

from __future__ import annotations

import io
from functools import lru_cache
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from xdsl.dialects import func
from xdsl.dialects.builtin import ModuleOp, StringAttr
from xdsl.printer import Printer

from cmswitch.dialects.cim import (
    VECTOR_KINDS,
    Conv2dOp,
    DynMatmulOp,
    MatmulOp,
    VectorOp,
    tensor_shape,
)
from cmswitch.errors import CMSwitchError
from cmswitch.frontend.onnx_importer import import_onnx, load_model, sanitize_name

MODELS = Path(__file__).resolve().parent.parent / "models"
MODEL_NAMES = ["resnet18", "mobilenet_v2", "vgg16", "bert_base", "gpt2", "llama2_7b_2layers"]


# --------------------------------------------------------------------------- helpers


@lru_cache(maxsize=None)
def imported(name: str) -> ModuleOp:
    return import_onnx(MODELS / f"{name}.onnx")


@lru_cache(maxsize=None)
def onnx_graph(name: str) -> onnx.GraphProto:
    return onnx.load(str(MODELS / f"{name}.onnx"), load_external_data=False).graph


def main_func(module: ModuleOp) -> func.FuncOp:
    fn = module.body.block.first_op
    assert isinstance(fn, func.FuncOp) and fn.sym_name.data == "main"
    return fn


def body_ops(module: ModuleOp) -> list:
    return [op for op in main_func(module).body.block.ops if not isinstance(op, func.ReturnOp)]


def ops_of(module: ModuleOp, cls) -> list:
    return [op for op in body_ops(module) if isinstance(op, cls)]


def printed(module: ModuleOp) -> str:
    out = io.StringIO()
    Printer(stream=out).print_op(module)
    return out.getvalue()


def constant_names(graph: onnx.GraphProto) -> set[str]:
    """Independent constness: initializers, and outputs of nodes whose inputs are all
    constant (Constant nodes vacuously)."""
    consts = {t.name for t in graph.initializer}
    for node in graph.node:
        if all(i in consts for i in node.input if i):
            consts.update(o for o in node.output if o)
    return consts


def expected_counts(graph: onnx.GraphProto) -> dict[str, int]:
    """Conv / weight-matmul / dynamic-matmul counts from the ONNX graph."""
    consts = constant_names(graph)
    counts = {"conv": 0, "matmul": 0, "dyn": 0, "live": 0}
    for node in graph.node:
        ins = [i for i in node.input if i]
        if all(i in consts for i in ins):
            continue
        counts["live"] += 1
        if node.op_type == "Conv":
            counts["conv"] += 1
        elif node.op_type in ("Gemm", "MatMul"):
            n_const = sum(i in consts for i in ins[:2])
            counts["matmul" if n_const else "dyn"] += 1
    return counts


def vi(name: str, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def weight(name: str, shape) -> TensorProto:
    return numpy_helper.from_array(np.zeros(shape, dtype=np.float32), name)


def make_model(nodes, inputs, outputs, inits=(), opset=20) -> bytes:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return model.SerializeToString()


def conv_model(x_shape, w_shape, **attrs) -> bytes:
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv", **attrs)
    return make_model([node], [vi("x", x_shape)], [vi("y", None)], [weight("w", w_shape)])


def single_conv(data: bytes) -> Conv2dOp:
    module = import_onnx(data, name="t")
    (conv,) = ops_of(module, Conv2dOp)
    return conv


# --------------------------------------------------------------------------- real models


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_model_imports_and_verifies(name):
    module = imported(name)
    module.verify()
    assert module.attributes["cim.model"] == StringAttr(name)
    graph = onnx_graph(name)
    fn = main_func(module)
    inits = {t.name for t in graph.initializer}
    assert len(fn.body.block.args) == len([i for i in graph.input if i.name not in inits])
    assert len(fn.function_type.outputs) == len(graph.output)
    for op in ops_of(module, VectorOp):
        assert op.kind.data in VECTOR_KINDS
    for op in body_ops(module):
        for res in op.results:
            assert res.name_hint, f"unnamed result of {op.name}"


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_op_coverage(name):
    """Every non-constant node becomes exactly one cim op (no helper ops are needed for
    these models); weight / dynamic matmul counts match the ONNX graph."""
    module, expect = imported(name), expected_counts(onnx_graph(name))
    assert len(body_ops(module)) == expect["live"]
    assert len(ops_of(module, Conv2dOp)) == expect["conv"]
    assert len(ops_of(module, MatmulOp)) == expect["matmul"]
    assert len(ops_of(module, DynMatmulOp)) == expect["dyn"]


@pytest.mark.parametrize("name,weight_ops,dyn", [
    ("resnet18", 21, 0), ("mobilenet_v2", 53, 0), ("vgg16", 16, 0),
    ("bert_base", 73, 24), ("gpt2", 49, 24), ("llama2_7b_2layers", 15, 4),
])
def test_weight_op_totals(name, weight_ops, dyn):
    module = imported(name)
    assert len(ops_of(module, Conv2dOp)) + len(ops_of(module, MatmulOp)) == weight_ops
    assert len(ops_of(module, DynMatmulOp)) == dyn


def test_weight_names_are_initializers():
    for name in MODEL_NAMES:
        inits = {t.name for t in onnx_graph(name).initializer}
        for op in ops_of(imported(name), Conv2dOp) + ops_of(imported(name), MatmulOp):
            assert op.weight.data in inits


def test_resnet18_shapes():
    module = imported("resnet18")
    convs, (fc,) = ops_of(module, Conv2dOp), ops_of(module, MatmulOp)
    assert len(convs) == 20
    first = convs[0]
    assert first.weight.data == "conv1.weight"
    assert first.im2col_dims() == (112 * 112, 3 * 7 * 7, 64)
    assert fc.im2col_dims() == (1, 512, 1000)
    assert "bias" in fc.attributes and fc.weight.data == "fc.weight"


def test_bert_matmul_shapes():
    module = imported("bert_base")
    qkv = ops_of(module, MatmulOp)[:3]
    for op in qkv:
        assert op.im2col_dims() == (128, 768, 768)
    scores = ops_of(module, DynMatmulOp)[0]
    assert tensor_shape(scores.lhs) == (1, 12, 128, 64)
    assert tensor_shape(scores.rhs) == (1, 12, 64, 128)
    assert tensor_shape(scores.output) == (1, 12, 128, 128)
    gathers = [op for op in ops_of(module, VectorOp) if op.kind.data == "gather"]
    assert any(op.attributes.get("table") == StringAttr("embeddings.word_embeddings.weight")
               for op in gathers)


def test_mobilenet_depthwise():
    depthwise = [op for op in ops_of(imported("mobilenet_v2"), Conv2dOp)
                 if op.group_count > 1]
    assert len(depthwise) == 17
    for op in depthwise:
        assert op.group_count == tensor_shape(op.input)[1]
        _, k, n = op.im2col_dims()
        assert (k, n) == (9, 1)


def test_gpt2_transposed_lm_head_is_folded():
    """lm_head's weight reaches MatMul through a Transpose of the initializer: folded."""
    last = ops_of(imported("gpt2"), MatmulOp)[-1]
    assert last.weight.data == "lm_head.weight"
    assert last.im2col_dims() == (128, 768, 50257)


def test_deterministic_print():
    text = printed(imported("bert_base"))
    assert printed(import_onnx((MODELS / "bert_base.onnx").read_bytes(), name="bert_base")) == text
    assert 'cim.model = "bert_base"' in text


@pytest.mark.parametrize("name", ["resnet18", "llama2_7b_2layers"])
def test_print_parse_roundtrip(name):
    from xdsl.context import Context
    from xdsl.dialects.builtin import Builtin
    from xdsl.dialects.func import Func
    from xdsl.parser import Parser

    from cmswitch.dialects.cim import CIM

    ctx = Context()
    for dialect in (Builtin, Func, CIM):
        ctx.load_dialect(dialect)
    text = printed(imported(name))
    reparsed = Parser(ctx, text).parse_module()
    reparsed.verify()
    assert printed(reparsed) == text


def test_load_model():
    assert len(ops_of(load_model(MODELS / "vgg16.onnx"), Conv2dOp)) == 13


# --------------------------------------------------------------------------- conv


def test_grouped_conv():
    conv = single_conv(conv_model([1, 8, 10, 10], [16, 2, 3, 3], group=4, pads=[1, 1, 1, 1]))
    assert conv.group_count == 4
    assert tensor_shape(conv.output) == (1, 16, 10, 10)
    assert conv.im2col_dims() == (100, 2 * 3 * 3, 4)


def test_conv_asymmetric_pads_dilation_stride():
    conv = single_conv(conv_model([1, 3, 17, 19], [5, 3, 3, 3], pads=[1, 0, 2, 3],
                                  dilations=[2, 2], strides=[2, 2]))
    # ONNX: floor((in + pb + pe - d*(k-1) - 1) / s) + 1
    ho = (17 + 1 + 2 - 2 * 2 - 1) // 2 + 1  # 8
    wo = (19 + 0 + 3 - 2 * 2 - 1) // 2 + 1  # 9
    assert (ho, wo) == (8, 9)
    assert tensor_shape(conv.output) == (1, 5, 8, 9)
    assert conv.pads.get_values() == (1, 0, 2, 3)
    assert conv.dilations.get_values() == (2, 2)
    assert conv.strides.get_values() == (2, 2)


@pytest.mark.parametrize("mode,pads", [
    # in 7, k 4, s 2: out = ceil(7/2) = 4, total = (4-1)*2 + 4 - 7 = 3
    ("SAME_UPPER", (1, 1, 2, 2)), ("SAME_LOWER", (2, 2, 1, 1)), ("VALID", (0, 0, 0, 0)),
])
def test_conv_auto_pad(mode, pads):
    conv = single_conv(conv_model([1, 3, 7, 7], [6, 3, 4, 4], auto_pad=mode, strides=[2, 2]))
    assert conv.pads.get_values() == pads
    out = 4 if mode != "VALID" else (7 - 4) // 2 + 1
    assert tensor_shape(conv.output) == (1, 6, out, out)


def test_conv_defaults_and_bias_folded():
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv")
    data = make_model([node], [vi("x", [1, 3, 5, 5])], [vi("y", None)],
                      [weight("w", [4, 3, 3, 3]), weight("b", [4])])
    conv = single_conv(data)
    assert conv.kernel.get_values() == (3, 3)
    assert conv.strides.get_values() == (1, 1)
    assert conv.pads.get_values() == (0, 0, 0, 0)
    assert tensor_shape(conv.output) == (1, 4, 3, 3)
    assert len(conv.operands) == 1


# --------------------------------------------------------------------------- gemm / matmul


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_trans_b(trans_b):
    w_shape = [16, 8] if trans_b else [8, 16]
    node = helper.make_node("Gemm", ["a", "w", "c"], ["y"], name="fc", transB=trans_b)
    data = make_model([node], [vi("a", [4, 8])], [vi("y", None)],
                      [weight("w", w_shape), weight("c", [16])])
    (mm,) = ops_of(import_onnx(data), MatmulOp)
    assert mm.im2col_dims() == (4, 8, 16)
    assert mm.weight.data == "w"
    assert "bias" in mm.attributes


def test_gemm_trans_a_inserts_transpose():
    node = helper.make_node("Gemm", ["a", "w"], ["y"], name="fc", transA=1)
    data = make_model([node], [vi("a", [8, 4])], [vi("y", None)], [weight("w", [8, 16])])
    module = import_onnx(data)
    (tr,) = ops_of(module, VectorOp)
    (mm,) = ops_of(module, MatmulOp)
    assert tr.kind.data == "transpose" and mm.input is tr.outputs[0]
    assert mm.im2col_dims() == (4, 8, 16)
    assert "bias" not in mm.attributes


def test_matmul_rank3_activation_and_folded_transpose_weight():
    nodes = [helper.make_node("Transpose", ["w"], ["wt"], name="t", perm=[1, 0]),
             helper.make_node("MatMul", ["x", "wt"], ["y"], name="mm")]
    data = make_model(nodes, [vi("x", [2, 5, 8])], [vi("y", None)], [weight("w", [16, 8])])
    module = import_onnx(data)
    assert len(body_ops(module)) == 1
    (mm,) = ops_of(module, MatmulOp)
    assert mm.weight.data == "w"
    assert mm.im2col_dims() == (10, 8, 16)


def test_matmul_constant_node_weight():
    const = helper.make_node("Constant", [], ["c"], name="k",
                             value=numpy_helper.from_array(np.ones((8, 3), np.float32)))
    nodes = [const, helper.make_node("MatMul", ["x", "c"], ["y"], name="mm")]
    data = make_model(nodes, [vi("x", [4, 8])], [vi("y", None)])
    (mm,) = ops_of(import_onnx(data), MatmulOp)
    assert mm.weight.data == "c" and mm.im2col_dims() == (4, 8, 3)


def test_matmul_constant_left_operand():
    node = helper.make_node("MatMul", ["w", "x"], ["y"], name="mm")
    data = make_model([node], [vi("x", [8, 5])], [vi("y", None)], [weight("w", [3, 8])])
    module = import_onnx(data)
    module.verify()
    (mm,) = ops_of(module, MatmulOp)
    assert mm.im2col_dims() == (5, 8, 3)
    ret = main_func(module).body.block.last_op
    assert tensor_shape(ret.operands[0]) == (3, 5)


def test_gemm_constant_a_and_activation_c():
    """Gemm(W, x, c) with transA=1: Y^T = x^T W; the activation C becomes an add."""
    node = helper.make_node("Gemm", ["w", "x", "c"], ["y"], name="g", transA=1)
    data = make_model([node], [vi("x", [8, 5]), vi("c", [5])], [vi("y", None)],
                      [weight("w", [8, 3])])
    module = import_onnx(data)
    (mm,) = ops_of(module, MatmulOp)
    assert mm.im2col_dims() == (5, 8, 3) and "bias" not in mm.attributes
    kinds = [op.kind.data for op in ops_of(module, VectorOp)]
    assert kinds == ["transpose", "transpose", "add"]
    ret = main_func(module).body.block.last_op
    assert tensor_shape(ret.operands[0]) == (3, 5)


def test_matmul_constant_matrix_times_vector():
    node = helper.make_node("MatMul", ["w", "v"], ["y"], name="mv")
    data = make_model([node], [vi("v", [8])], [vi("y", None)], [weight("w", [3, 8])])
    module = import_onnx(data)
    (mm,) = ops_of(module, MatmulOp)
    assert mm.im2col_dims() == (1, 8, 3)
    ret = main_func(module).body.block.last_op
    assert tensor_shape(ret.operands[0]) == (3,)


def test_dyn_matmul_broadcast_and_1d():
    nodes = [helper.make_node("MatMul", ["a", "b"], ["y"], name="mm"),
             helper.make_node("MatMul", ["v", "b"], ["z"], name="mv")]
    data = make_model(nodes, [vi("a", [2, 1, 4, 8]), vi("b", [3, 8, 5]), vi("v", [8])],
                      [vi("y", None), vi("z", None)])
    module = import_onnx(data)
    module.verify()
    dyn = ops_of(module, DynMatmulOp)
    assert tensor_shape(dyn[0].output) == (2, 3, 4, 5)
    assert tensor_shape(dyn[1].lhs) == (1, 8)
    ret = main_func(module).body.block.last_op
    assert [tensor_shape(v) for v in ret.operands] == [(2, 3, 4, 5), (3, 5)]


# --------------------------------------------------------------------------- vector ops


def test_vector_ops_fold_constant_operands():
    nodes = [helper.make_node("Add", ["x", "b"], ["s"], name="add"),
             helper.make_node("ReduceMean", ["s", "axes"], ["m"], name="mean", keepdims=1),
             helper.make_node("Split", ["m"], ["p", "q"], name="split", axis=1,
                              num_outputs=2),
             helper.make_node("MaxPool", ["x"], ["mp"], name="pool", kernel_shape=[3, 3],
                              auto_pad="SAME_UPPER", strides=[2, 2])]
    inits = [weight("b", [4, 1, 1]),
             numpy_helper.from_array(np.array([2, 3], np.int64), "axes")]
    data = make_model(nodes, [vi("x", [1, 4, 6, 6])],
                      [vi("p", None), vi("q", None), vi("mp", None)], inits)
    module = import_onnx(data)
    add, mean, split, pool = ops_of(module, VectorOp)
    assert add.kind.data == "add" and len(add.inputs) == 1
    assert mean.kind.data == "reduce_mean"
    assert mean.attributes["axes"].get_values() == (2, 3)
    assert [tensor_shape(r) for r in split.outputs] == [(1, 2, 1, 1)] * 2
    assert pool.kind.data == "maxpool"
    assert pool.attributes["kernel"].get_values() == (3, 3)
    assert pool.attributes["pads"].get_values() == (0, 0, 1, 1)
    assert tensor_shape(pool.outputs[0]) == (1, 4, 3, 3)


def test_shape_chain_is_constant_folded():
    """Shape -> Gather -> Concat -> Reshape: the shape computation is static."""
    nodes = [helper.make_node("Shape", ["x"], ["s"], name="shape"),
             helper.make_node("Gather", ["s", "i0"], ["n"], name="g", axis=0),
             helper.make_node("Concat", ["n", "m1"], ["t"], name="cat", axis=0),
             helper.make_node("Reshape", ["x", "t"], ["y"], name="rs")]
    inits = [numpy_helper.from_array(np.array([0], np.int64), "i0"),
             numpy_helper.from_array(np.array([-1], np.int64), "m1")]
    data = make_model(nodes, [vi("x", [2, 3, 4])], [vi("y", None)], inits)
    (op,) = body_ops(import_onnx(data))
    assert op.kind.data == "reshape" and tensor_shape(op.outputs[0]) == (2, 12)


def test_element_types_and_scalars():
    nodes = [helper.make_node("Cast", ["x"], ["c"], name="cast", to=TensorProto.BOOL),
             helper.make_node("ReduceSum", ["h"], ["r"], name="sum", keepdims=0)]
    data = make_model(nodes, [vi("x", [3], TensorProto.INT64),
                              vi("h", [3], TensorProto.FLOAT16)],
                      [vi("c", None, TensorProto.BOOL), vi("r", None, TensorProto.FLOAT16)])
    text = printed(import_onnx(data))
    assert "tensor<3xi1>" in text and "tensor<3xi64>" in text and "tensor<f16>" in text


def test_name_sanitization():
    assert sanitize_name("a/b:c") == "a_b_c"
    assert sanitize_name("0abc") == "v0abc"
    assert sanitize_name("") == "v"
    node = helper.make_node("Relu", ["in:0"], ["/layer.1/relu:0"], name="relu")
    data = make_model([node], [vi("in:0", [2])], [vi("/layer.1/relu:0", None)])
    text = printed(import_onnx(data))
    assert "@main(%in: tensor<2xf32>)" in text
    assert "%_layer.1_relu" in text


# --------------------------------------------------------------------------- errors


def test_unsupported_op_names_op_and_node():
    node = helper.make_node("Einsum", ["x", "x"], ["y"], name="my_einsum",
                            equation="ij,jk->ik")
    data = make_model([node], [vi("x", [4, 4])], [vi("y", None)])
    with pytest.raises(CMSwitchError, match=r"unsupported ONNX operator 'Einsum' at node 'my_einsum'"):
        import_onnx(data)


def test_unsupported_custom_domain_op():
    node = helper.make_node("FancyOp", ["x"], ["y"], name="fancy", domain="com.example")
    graph = helper.make_graph([node], "g", [vi("x", [4])], [vi("y", [4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20),
                                                    helper.make_opsetid("com.example", 1)])
    with pytest.raises(CMSwitchError, match=r"FancyOp.*at node 'fancy'"):
        import_onnx(model.SerializeToString())


def test_garbage_bytes_and_file(tmp_path):
    garbage = bytes(range(256)) * 4
    with pytest.raises(CMSwitchError, match="not an ONNX model"):
        import_onnx(garbage)
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"this is not a model\n" * 10)
    with pytest.raises(CMSwitchError) as info:
        import_onnx(path)
    assert "junk.onnx" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(CMSwitchError, match="cannot read"):
        import_onnx(tmp_path / "missing.onnx")


def test_truncated_model(tmp_path):
    data = (MODELS / "resnet18.onnx").read_bytes()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CMSwitchError, match="cut.onnx"):
        import_onnx(path)


def test_symbolic_batch():
    data = conv_model(["N", 3, 8, 8], [4, 3, 3, 3], pads=[1, 1, 1, 1])
    with pytest.raises(CMSwitchError, match=r"input 'x'.*'N'"):
        import_onnx(data)
    module = import_onnx(data, dims={"N": 2})
    (conv,) = ops_of(module, Conv2dOp)
    assert tensor_shape(conv.input) == (2, 3, 8, 8)
    assert tensor_shape(conv.output) == (2, 4, 8, 8)
    assert conv.im2col_dims() == (2 * 64, 27, 4)


def test_unknown_shape_names_tensor_and_node():
    node = helper.make_node("Reshape", ["x", "shape"], ["y"], name="dyn_reshape")
    data = make_model([node], [vi("x", [2, 6]), vi("shape", [2], TensorProto.INT64)],
                      [vi("y", None)])
    with pytest.raises(CMSwitchError, match=r"'y'.*dyn_reshape"):
        import_onnx(data)


def test_zero_size_tensor():
    node = helper.make_node("Relu", ["x"], ["y"], name="relu")
    data = make_model([node], [vi("x", [0, 4])], [vi("y", None)])
    with pytest.raises(CMSwitchError, match="zero size"):
        import_onnx(data)


def test_shape_inference_failure():
    node = helper.make_node("Add", ["x", "z"], ["y"], name="bad_add")
    data = make_model([node], [vi("x", [3]), vi("z", [4])], [vi("y", None)])
    with pytest.raises(CMSwitchError, match="shape inference failed"):
        import_onnx(data, filename="bad.onnx")
