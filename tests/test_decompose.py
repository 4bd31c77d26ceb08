"""Operators imported through a rewrite into mapped ones (cmswitch/frontend/decompose.py):
the fused Attention of opset 23, 1-D and grouped ConvTranspose, MatMul against a
constant batch of matrices; and the digital-unit cost of Resize by mode.

Each model is checked against onnxruntime running the *fused* operator from the file
(an independent implementation); the shapes the rewrite must produce are worked out
by hand in the docstrings."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import cmswitch.api as cms
from cmswitch.dialects.cim import NODE_ATTR, DynMatmulOp, MatmulOp, VectorOp
from cmswitch.functional import check_against_onnxruntime

BIN = Path(sys.executable).parent


def _save(path: Path, nodes, inputs, outputs, inits: dict[str, np.ndarray],
          opset: int = 23) -> Path:
    graph = helper.make_graph(
        nodes, path.stem,
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def _weights(rng, *shape) -> np.ndarray:
    return (rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32)


def _gqa_block(path: Path, seq: int | str = 8) -> Path:
    """x (1 x S x 32) -> Q = x Wq (32 -> 4 heads x 8), K, V = x Wk, x Wv (32 -> 2 heads
    x 8) -> Attention(q_num_heads 4, kv_num_heads 2, causal) -> Y Wo (32 -> 32)."""
    rng = np.random.default_rng(3)
    nodes = [
        helper.make_node("MatMul", ["x", "wq"], ["q"], name="q_proj"),
        helper.make_node("MatMul", ["x", "wk"], ["k"], name="k_proj"),
        helper.make_node("MatMul", ["x", "wv"], ["v"], name="v_proj"),
        helper.make_node("Attention", ["q", "k", "v"], ["ctx"], name="attn",
                         q_num_heads=4, kv_num_heads=2, is_causal=1),
        helper.make_node("MatMul", ["ctx", "wo"], ["y"], name="o_proj"),
    ]
    inits = {"wq": _weights(rng, 32, 32), "wk": _weights(rng, 32, 16),
             "wv": _weights(rng, 32, 16), "wo": _weights(rng, 32, 32)}
    return _save(path, nodes, [("x", [1, seq, 32])], [("y", [1, seq, 32])], inits)


def test_fused_gqa_attention_computes_what_onnxruntime_does(tmp_path):
    """S = 8, Hq = 4, Hkv = 2, D = 8: the two heads sharing a key head read it in
    place — Q viewed as 1 x 2 x (2*8) x 8 against Kᵀ 1 x 2 x 8 x 8 (scores 1 x 2 x 16
    x 8), probabilities 1 x 2 x 16 x 8 against V 1 x 2 x 8 x 8."""
    path = _gqa_block(tmp_path / "gqa.onnx")
    plan = cms.compile(path, keep_module=True)
    ops = list(plan.module.walk())
    dyn = [op for op in ops if isinstance(op, DynMatmulOp)]
    shapes = [(list(op.lhs.type.get_shape()), list(op.rhs.type.get_shape())) for op in dyn]
    assert shapes == [([1, 2, 16, 8], [1, 2, 8, 8]), ([1, 2, 16, 8], [1, 2, 8, 8])]
    kinds = Counter(op.kind.data for op in ops if isinstance(op, VectorOp))
    assert kinds["softmax"] == 1 and kinds["expand"] == 0  # no copies of K or V
    # every operator the rewrite made keeps the fused node's name as its prefix
    assert {op.attributes[NODE_ATTR].data.split("/")[0] for op in dyn} == {"attn"}
    report = check_against_onnxruntime(path)
    assert report["ok"], report


def test_attention_with_a_dynamic_sequence_is_bound_before_the_rewrite(tmp_path):
    path = _gqa_block(tmp_path / "gqa_dyn.onnx", seq="seq")
    report = check_against_onnxruntime(path, seq=16)
    assert report["ok"], report
    assert report["outputs"][0]["shape"] == [1, 16, 32]


def test_attention_with_a_kv_cache_and_a_bool_mask(tmp_path):
    """4-D decode-like step: 1 new query over a 5-token past plus itself (6 keys), a
    run-time boolean mask over the 6 keys; present_key / present_value are the past
    with the new key / value appended (1 x 2 x 6 x 4)."""
    nodes = [helper.make_node("Attention", ["q", "k", "v", "mask", "pk", "pv"],
                              ["y", "present_k", "present_v"], name="attn")]
    graph = helper.make_graph(
        nodes, "decode",
        [helper.make_tensor_value_info("q", TensorProto.FLOAT, [1, 2, 1, 4]),
         helper.make_tensor_value_info("k", TensorProto.FLOAT, [1, 2, 1, 4]),
         helper.make_tensor_value_info("v", TensorProto.FLOAT, [1, 2, 1, 4]),
         helper.make_tensor_value_info("mask", TensorProto.BOOL, [1, 6]),
         helper.make_tensor_value_info("pk", TensorProto.FLOAT, [1, 2, 5, 4]),
         helper.make_tensor_value_info("pv", TensorProto.FLOAT, [1, 2, 5, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 1, 4]),
         helper.make_tensor_value_info("present_k", TensorProto.FLOAT, [1, 2, 6, 4]),
         helper.make_tensor_value_info("present_v", TensorProto.FLOAT, [1, 2, 6, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
    model.ir_version = 10
    path = tmp_path / "decode.onnx"
    onnx.save(model, path)
    plan = cms.compile(path, keep_module=True)
    kinds = Counter(op.kind.data for op in plan.module.walk() if isinstance(op, VectorOp))
    assert kinds["concat"] == 2 and kinds["where"] == 2  # mask -> bias; masked rows -> 0
    report = check_against_onnxruntime(path)
    assert report["ok"], report


def test_a_run_time_nonpad_kv_seqlen_is_refused_in_one_line(tmp_path):
    nodes = [helper.make_node("Attention", ["q", "k", "v", "", "", "", "lens"], ["y"],
                              name="attn")]
    graph = helper.make_graph(
        nodes, "nonpad",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 2, 3, 4]) for n in "qkv"]
        + [helper.make_tensor_value_info("lens", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 3, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 24)])
    model.ir_version = 10
    path = tmp_path / "nonpad.onnx"
    onnx.save(model, path)
    r = subprocess.run([str(BIN / "cmswitch"), "compile", str(path)], capture_output=True,
                       text=True)
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "Attention node 'attn'" in r.stderr
    assert "nonpad_kv_seqlen" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("group", [2, 4])
def test_grouped_conv_transpose_is_one_matmul_per_group(tmp_path, group):
    """ConvTranspose 8 -> 8 channels in `group` groups, 3x3, stride 2: each group's
    matmul has K = 8/g input channels and N = (8/g)*3*3 patch entries over the 4x4 = 16
    input pixels (output 9x9 = 2*(4-1) + 3)."""
    rng = np.random.default_rng(5)
    nodes = [helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], name="up",
                              strides=[2, 2], group=group)]
    path = _save(tmp_path / f"up{group}.onnx", nodes, [("x", [1, 8, 4, 4])],
                 [("y", [1, 8, 9, 9])],
                 {"w": _weights(rng, 8, 8 // group, 3, 3),
                  "b": rng.standard_normal(8).astype(np.float32)}, opset=17)
    plan = cms.compile(path, keep_module=True)
    mms = [op for op in plan.module.walk() if isinstance(op, MatmulOp)]
    assert [op.im2col_dims() for op in mms] == [(16, 8 // group, 8 // group * 9)] * group
    assert check_against_onnxruntime(path)["ok"]


def test_conv_transpose_1d_is_one_of_height_one(tmp_path):
    """1-D ConvTranspose 3 -> 2 channels, kernel 3, stride 2, pads 1/1, output_padding
    1: length 5 -> 2*(5-1) + 1 + 3 - 2 = 10; one matmul M = 5, K = 3, N = 2*3."""
    rng = np.random.default_rng(6)
    nodes = [helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="up1d", strides=[2],
                              pads=[1, 1], output_padding=[1])]
    path = _save(tmp_path / "up1d.onnx", nodes, [("x", [1, 3, 5])], [("y", [1, 2, 10])],
                 {"w": _weights(rng, 3, 2, 3)}, opset=17)
    plan = cms.compile(path, keep_module=True)
    (mm,) = [op for op in plan.module.walk() if isinstance(op, MatmulOp)]
    assert mm.im2col_dims() == (5, 3, 6)
    assert check_against_onnxruntime(path)["ok"]


def test_matmul_against_a_constant_batch_is_one_weight_per_matrix(tmp_path):
    """x (3 x 1 x 4 x 6) @ W (2 x 6 x 5): leading dims broadcast to 3 x 2, so six
    products of a 4 x 6 slice with one of the two 6 x 5 matrices — two weights, six
    matmul operators of M = 4, K = 6, N = 5."""
    rng = np.random.default_rng(8)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="bmm")]
    path = _save(tmp_path / "bmm.onnx", nodes, [("x", [3, 1, 4, 6])], [("y", [3, 2, 4, 5])],
                 {"w": _weights(rng, 2, 6, 5)}, opset=17)
    plan = cms.compile(path, keep_module=True)
    mms = [op for op in plan.module.walk() if isinstance(op, MatmulOp)]
    assert [op.im2col_dims() for op in mms] == [(4, 6, 5)] * 6
    assert len({op.weight.data for op in mms}) == 2
    assert check_against_onnxruntime(path)["ok"]


@pytest.mark.parametrize("mode, scales, per_element", [
    ("nearest", [1, 1, 2, 2], 1),   # a copy of one neighbour
    ("linear", [1, 1, 2, 2], 4),    # bilinear: 2 x 2 neighbours
    ("linear", [1, 1, 1, 2], 2),    # linear along W only
    ("cubic", [1, 1, 2, 2], 16),    # bicubic: 4 x 4 neighbours
])
def test_resize_costs_its_neighbours_per_output_element(tmp_path, mode, scales, per_element):
    from cmswitch.cost.model import vector_ops

    nodes = [helper.make_node("Resize", ["x", "", "s"], ["y"], name="up", mode=mode)]
    out = [1, 2, int(4 * scales[2]), int(4 * scales[3])]
    path = _save(tmp_path / f"r_{mode}.onnx", nodes, [("x", [1, 2, 4, 4])], [("y", out)],
                 {"s": np.asarray(scales, dtype=np.float32)}, opset=17)
    plan = cms.compile(path, keep_module=True)
    (op,) = [op for op in plan.module.walk() if isinstance(op, VectorOp)]
    assert vector_ops(op) == int(np.prod(out)) * per_element


@pytest.mark.parametrize("consts, attrs", [
    ((), {"alpha": 0.5, "beta": 2.0}),                            # A, B, C activations
    (("b",), {"alpha": 0.5, "beta": 3.0, "transA": 1, "transB": 1}),  # weight B, C activation
    (("c",), {"alpha": 2.0, "beta": 0.25}),                       # activations A, B; bias C
])
def test_gemm_scales_the_arrays_cannot_take_become_multiplies(tmp_path, consts, attrs):
    """Y = alpha op(A) op(B) + beta C with A 3x4 (4x3 under transA), B 4x5 (5x4 under
    transB), C of 3x5 or 5: alpha on two activations and beta on an activation C become
    Mul nodes (no Gemm is refused); a constant operand keeps taking its scale."""
    rng = np.random.default_rng(9)
    shapes = {"a": [4, 3] if attrs.get("transA") else [3, 4],
              "b": [5, 4] if attrs.get("transB") else [4, 5], "c": [5] if consts else [3, 5]}
    inits = {n: rng.standard_normal(shapes[n]).astype(np.float32) for n in consts}
    nodes = [helper.make_node("Gemm", ["a", "b", "c"], ["y"], name="g", **attrs)]
    path = _save(tmp_path / "gemm.onnx", nodes,
                 [(n, shapes[n]) for n in "abc" if n not in consts], [("y", [3, 5])],
                 inits, opset=17)
    plan = cms.compile(path, keep_module=True)
    kinds = Counter(op.kind.data for op in plan.module.walk() if isinstance(op, VectorOp))
    assert kinds["mul"] == (0 if "b" in consts else 1) + (1 if "c" not in consts else 0)
    assert check_against_onnxruntime(path)["ok"]


def _attention_model(path: Path, q, k, v, extra_inputs=(), inits=None, opset=23,
                     elem=TensorProto.FLOAT, **attrs) -> Path:
    names = ["q", "k", "v", *[n for n, _, _ in extra_inputs]]
    node = helper.make_node("Attention", names, ["y"], name="attn", **attrs)
    inputs = [helper.make_tensor_value_info(n, elem, s) for n, s in zip("qkv", (q, k, v))]
    inputs += [helper.make_tensor_value_info(n, t, s) for n, t, s in extra_inputs
               if n and n not in (inits or {})]
    graph = helper.make_graph(
        [node], path.stem, inputs, [helper.make_tensor_value_info("y", elem, None)],
        [numpy_helper.from_array(a, n) for n, a in (inits or {}).items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    onnx.save(model, path)
    return path


@pytest.mark.parametrize("case, message", [
    ("mask", "attn_mask of shape [2, 4] does not broadcast"),
    ("window", "left_window_size / right_window_size must be -1 or nonnegative"),
    ("nonpad", "nonpad_kv_seqlen [9] must give one length in 0..4"),
    ("heads", "do not match Q"),
    ("const_kv", "attention to a fixed memory"),
])
def test_attention_mistakes_are_one_line_naming_the_node(tmp_path, case, message):
    from cmswitch.errors import CMSwitchError

    q, kv = [1, 2, 3, 8], [1, 2, 4, 8]
    extra, inits, attrs, opset = (), {}, {}, 23
    if case == "mask":
        extra, inits = [("m", TensorProto.FLOAT, [2, 4])], {"m": np.zeros((2, 4), np.float32)}
    elif case == "window":
        attrs, opset = {"left_window_size": -3}, 25
    elif case == "nonpad":
        extra = [("", 0, []), ("", 0, []), ("", 0, []), ("n", TensorProto.INT64, [1])]
        inits, opset = {"n": np.array([9], np.int64)}, 24
    elif case == "heads":
        kv = [1, 1, 4, 8]
    path = _attention_model(tmp_path / f"{case}.onnx", q, [1, 2, 4, 8], kv, extra, inits,
                            opset, **attrs)
    if case == "const_kv":
        model = onnx.load(path)
        model.graph.initializer.append(numpy_helper.from_array(
            np.zeros((1, 2, 4, 8), np.float32), "k"))
        del model.graph.input[1]
        onnx.save(model, path)
    with pytest.raises(CMSwitchError) as err:
        cms.compile(path)
    text = str(err.value)
    assert message in text and "Attention node 'attn'" in text and "\n" not in text


def test_weights_folded_at_compile_time_reach_the_rewrites(tmp_path):
    """An Identity between an initializer and a grouped ConvTranspose, and a Transpose
    making a MatMul's constant batch of matrices: both are folded on import, and the
    rewrites slice them with nodes the importer folds too."""
    rng = np.random.default_rng(12)
    nodes = [helper.make_node("Identity", ["w0"], ["w"], name="id"),
             helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="up", group=2)]
    path = _save(tmp_path / "ct.onnx", nodes, [("x", [1, 4, 5, 5])], [("y", [1, 6, 7, 7])],
                 {"w0": _weights(rng, 4, 3, 3, 3)}, opset=17)
    assert check_against_onnxruntime(path)["ok"]
    nodes = [helper.make_node("Transpose", ["b0"], ["b"], name="t", perm=[0, 2, 1]),
             helper.make_node("MatMul", ["a", "b"], ["y"], name="bmm")]
    path = _save(tmp_path / "bmm_t.onnx", nodes, [("a", [4, 8])], [("y", [3, 4, 5])],
                 {"b0": _weights(rng, 3, 5, 8)}, opset=17)
    plan = cms.compile(path, keep_module=True)
    assert len([op for op in plan.module.walk() if isinstance(op, MatmulOp)]) == 3
    assert check_against_onnxruntime(path)["ok"]


def test_a_run_time_conv_transpose_weight_is_refused_naming_the_node(tmp_path):
    from cmswitch.errors import CMSwitchError

    nodes = [helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="up", group=2)]
    path = _save(tmp_path / "rt.onnx", nodes, [("x", [1, 4, 5, 5]), ("w", [4, 3, 3, 3])],
                 [("y", [1, 6, 7, 7])], {}, opset=17)
    with pytest.raises(CMSwitchError, match="ConvTranspose node 'up' has a run-time weight"):
        cms.compile(path)


def test_float16_attention_is_compared_at_float16_tolerances(tmp_path):
    """The flow computes in float32, onnxruntime in float16: errors of a few 1e-4
    relative are float16's rounding; the report says which tolerance applied."""
    from cmswitch.functional import format_report

    path = _attention_model(tmp_path / "fp16.onnx", [1, 2, 3, 8], [1, 2, 4, 8],
                            [1, 2, 4, 8], elem=TensorProto.FLOAT16)
    report = check_against_onnxruntime(path)
    assert report["ok"], report
    assert report["outputs"][0]["rtol"] == 1e-2
    assert "float16/bfloat16 outputs at rtol 0.01" in format_report(report)
