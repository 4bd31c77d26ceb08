"""Everyday CNN exports (issue 14): BatchNormalization and zero Pad folded into the
convolutions (cmswitch/frontend/rewrites.py), LRN and the other activations as vector
kinds, 1-D convolutions, Gemm alpha/beta — and onnx's own node test cases through the
compiler and functional mode (cmswitch/node_cases.py).

Reference values come from onnxruntime (functional mode's comparison) or from the
node test cases' expected outputs; folded attributes are worked out by hand."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import cmswitch.api as cms
from cmswitch.dialects.cim import Conv2dOp, VectorOp
from cmswitch.frontend.rewrites import fold_for_inference
from cmswitch.functional import check_against_onnxruntime

BIN = Path(sys.executable).parent


def _model(path: Path, nodes, inputs, outputs, inits: dict, opset: int = 17) -> Path:
    rng = np.random.default_rng(7)
    tensors = []
    for name, (shape, kind) in inits.items():
        if kind == "w":  # weights ~ N(0, 1/fan-in)
            value = rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]) or 1)
        elif kind == "var":  # a positive variance
            value = rng.uniform(0.5, 2.0, shape)
        elif isinstance(kind, list):
            value = np.array(kind)
        else:
            value = rng.standard_normal(shape) * 0.5
        dtype = np.int64 if isinstance(kind, list) else np.float32
        tensors.append(numpy_helper.from_array(np.asarray(value).astype(dtype), name))
    graph = helper.make_graph(
        nodes, path.stem,
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs], tensors)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def _zoo_cnn(path: Path) -> Path:
    """An opset-9 export in the style of the ONNX model zoo's AlexNet / ResNet-v1:
    conv -> BatchNormalization -> relu -> LRN -> maxpool -> Pad (attribute form, opset
    9) -> conv -> BatchNormalization -> LeakyRelu -> global average pool -> flatten ->
    Gemm."""
    bn = ("scale", "bias", "mean", "var")
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", kernel_shape=[3, 3],
                         pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", *(f"bn1_{p}" for p in bn)], ["n1"],
                         name="bn1", epsilon=1e-5),
        helper.make_node("Relu", ["n1"], ["r1"], name="relu1"),
        helper.make_node("LRN", ["r1"], ["l1"], name="lrn1", size=3, alpha=1e-3, beta=0.75,
                         bias=1.0),
        helper.make_node("MaxPool", ["l1"], ["p1"], name="pool1", kernel_shape=[2, 2],
                         strides=[2, 2]),
        helper.make_node("Pad", ["p1"], ["q1"], name="pad2", pads=[0, 0, 1, 1, 0, 0, 1, 1]),
        helper.make_node("Conv", ["q1", "w2"], ["c2"], name="conv2", kernel_shape=[3, 3]),
        helper.make_node("BatchNormalization", ["c2", *(f"bn2_{p}" for p in bn)], ["n2"],
                         name="bn2"),
        helper.make_node("LeakyRelu", ["n2"], ["r2"], name="act2", alpha=0.1),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], name="fc", transB=1),
    ]
    inits = {"w1": ([16, 3, 3, 3], "w"), "b1": ([16], "n"), "w2": ([24, 16, 3, 3], "w"),
             "wf": ([10, 24], "w"), "bf": ([10], "n")}
    for k, c in ((1, 16), (2, 24)):
        inits.update({f"bn{k}_scale": ([c], "n"), f"bn{k}_bias": ([c], "n"),
                      f"bn{k}_mean": ([c], "n"), f"bn{k}_var": ([c], "var")})
    return _model(path, nodes, [("x", [1, 3, 16, 16])], [("y", [1, 10])], inits, opset=9)


@pytest.fixture()
def zoo(tmp_path) -> Path:
    return _zoo_cnn(tmp_path / "zoo_cnn.onnx")


def test_a_zoo_style_cnn_compiles_simulates_and_computes_what_onnxruntime_does(zoo, tmp_path):
    plan = cms.compile(zoo, keep_module=True)
    ops = list(plan.module.walk())
    kinds = Counter(op.kind.data for op in ops if isinstance(op, VectorOp))
    # both BatchNormalizations folded into their convs, the Pad into conv2's pads
    assert "batchnorm" not in kinds and "pad" not in kinds
    assert kinds["lrn"] == 1 and kinds["leaky_relu"] == 1
    convs = [op for op in ops if isinstance(op, Conv2dOp)]
    assert [list(c.pads.get_values()) for c in convs] == [[1, 1, 1, 1], [1, 1, 1, 1]]
    report = check_against_onnxruntime(zoo)
    assert report["ok"], report
    flow = tmp_path / "zoo.cmsasm"
    flow.write_text(plan.flow)
    r = subprocess.run([str(BIN / "cmswitch-sim"), str(flow), "--json"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["cycles"] > 0


def test_bench_accepts_a_users_onnx_file(zoo, tmp_path):
    out = tmp_path / "b.json"
    r = subprocess.run([str(BIN / "cmswitch"), "bench", "--models", str(zoo), "--json",
                        str(out), "--no-progress"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    (row,) = json.loads(out.read_text())["rows"]
    assert row["model"] == "zoo_cnn" and row["arch"] == "dynaplasia"
    assert all(c > 0 for c in row["cycles"].values())


def test_batchnorm_fold_by_hand():
    """Conv 1x1 of one channel, weight 2, bias 1, then BatchNormalization with scale 3,
    B 0.5, mean 1, var 3 (epsilon 1): s = 3/sqrt(3+1) = 1.5, so the folded weight is
    2*1.5 = 3 and the folded bias (1 - 1)*1.5 + 0.5 = 0.5."""
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[1, 1]),
             helper.make_node("BatchNormalization", ["c", "s", "t", "m", "v"], ["y"],
                              epsilon=1.0)]
    data = {"w": [[[[2.0]]]], "b": [1.0], "s": [3.0], "t": [0.5], "m": [1.0], "v": [3.0]}
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 2, 2])],
        [numpy_helper.from_array(np.array(v, dtype=np.float32), k) for k, v in data.items()])
    folded = fold_for_inference(helper.make_model(graph))
    assert [n.op_type for n in folded.graph.node] == ["Conv"]
    values = {t.name: numpy_helper.to_array(t) for t in folded.graph.initializer}
    assert sorted(values) == ["b", "w"]
    assert values["w"].reshape(-1).tolist() == [3.0] and values["b"].tolist() == [0.5]
    assert list(folded.graph.node[0].output) == ["y"]


def test_a_batchnorm_whose_input_is_read_twice_stays_an_operator(tmp_path):
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[1, 1]),
             helper.make_node("BatchNormalization", ["c", "s", "t", "m", "v"], ["n"]),
             helper.make_node("Add", ["n", "c"], ["y"])]
    inits = {"w": ([4, 4, 1, 1], "w"), "s": ([4], "n"), "t": ([4], "n"), "m": ([4], "n"),
             "v": ([4], "var")}
    path = _model(tmp_path / "bn_kept.onnx", nodes, [("x", [1, 4, 4, 4])],
                  [("y", [1, 4, 4, 4])], inits)
    plan = cms.compile(path, keep_module=True)
    kinds = [op.kind.data for op in plan.module.walk() if isinstance(op, VectorOp)]
    assert "batchnorm" in kinds
    # its constant statistics are carried by name: functional mode reads them
    assert check_against_onnxruntime(path)["ok"]


def test_a_pad_feeding_a_pool_stays_a_copying_move(tmp_path):
    nodes = [helper.make_node("Pad", ["x", "p"], ["q"], mode="reflect"),
             helper.make_node("AveragePool", ["q"], ["y"], kernel_shape=[2, 2],
                              strides=[2, 2])]
    path = _model(tmp_path / "pad.onnx", nodes, [("x", [1, 2, 6, 6])], [("y", [1, 2, 4, 4])],
                  {"p": ([8], [0, 0, 1, 1, 0, 0, 1, 1])})
    plan = cms.compile(path, keep_module=True)
    (pad,) = [op for op in plan.module.walk() if isinstance(op, VectorOp)
              and op.kind.data == "pad"]
    assert list(pad.attributes["pads"].get_values()) == [0, 0, 1, 1, 0, 0, 1, 1]
    assert check_against_onnxruntime(path)["ok"]


def test_conv1d_runs_as_a_conv_of_height_one(tmp_path):
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=[3],
                              strides=[2], pads=[1, 1], dilations=[1])]
    path = _model(tmp_path / "conv1d.onnx", nodes, [("x", [1, 8, 20])], [("y", [1, 12, 10])],
                  {"w": ([12, 8, 3], "w"), "b": ([12], "n")})
    plan = cms.compile(path, keep_module=True)
    (conv,) = [op for op in plan.module.walk() if isinstance(op, Conv2dOp)]
    assert list(conv.kernel.get_values()) == [1, 3]
    assert conv.im2col_dims() == (10, 24, 12)  # M = 10 positions, K = 8*3, N = 12
    assert check_against_onnxruntime(path)["ok"]


def test_conv_transpose_is_a_matmul_and_an_overlap_add(tmp_path):
    """ConvTranspose 4 -> 6 channels, 3x3, stride 2, pads 1, output_padding 1, with a
    bias: 5x5 -> 10x10 (2*(5-1) + 1 + 3 - 2).  In the arrays it is one matmul with
    M = 25 input pixels, K = 4 channels, N = 6*3*3 patch entries."""
    from cmswitch.dialects.cim import MatmulOp

    nodes = [helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], strides=[2, 2],
                              pads=[1, 1, 1, 1], output_padding=[1, 1], name="up")]
    path = _model(tmp_path / "up.onnx", nodes, [("x", [1, 4, 5, 5])], [("y", [1, 6, 10, 10])],
                  {"w": ([4, 6, 3, 3], "w"), "b": ([6], "n")})
    plan = cms.compile(path, keep_module=True)
    (mm,) = [op for op in plan.module.walk() if isinstance(op, MatmulOp)]
    assert mm.im2col_dims() == (25, 4, 54)
    assert check_against_onnxruntime(path)["ok"]


def test_gemm_alpha_beta_scale_the_weights_and_bias(tmp_path):
    nodes = [helper.make_node("Gemm", ["x", "w", "c"], ["y"], alpha=0.5, beta=2.0)]
    path = _model(tmp_path / "gemm.onnx", nodes, [("x", [3, 8])], [("y", [3, 5])],
                  {"w": ([8, 5], "w"), "c": ([5], "n")})
    assert check_against_onnxruntime(path)["ok"]
    zero = [helper.make_node("Gemm", ["x", "w", "c"], ["y"], beta=0.0)]
    path = _model(tmp_path / "gemm0.onnx", zero, [("x", [3, 8])], [("y", [3, 5])],
                  {"w": ([8, 5], "w"), "c": ([5], "n")})
    plan = cms.compile(path, keep_module=True)
    assert all("bias" not in op.attributes for op in plan.module.walk())
    assert check_against_onnxruntime(path)["ok"]


# ------------------------------------------------------------------ onnx's node cases

ISSUE_14_OPS = sorted({
    "BatchNormalization", "LRN", "Pad", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu",
    "Softplus", "Softsign", "Abs", "HardSigmoid", "HardSwish", "LogSoftmax", "Log", "Sum",
    "Mean", "Tile", "InstanceNormalization", "Clip", "GlobalMaxPool", "Gemm", "Conv",
    "ConvTranspose", "Resize", "GroupNormalization", "RMSNormalization",
    "LayerNormalization", "MaxPool", "Attention", "MatMul",
})
"""Operators issue 14 names (and Clip, GlobalMaxPool, Gemm, Conv, MatMul, whose forms
it fixed): every one of their node cases must match, except `REFUSED`."""

REFUSED = {
    "test_batchnorm_epsilon_training_mode": "training mode: running statistics as outputs",
    "test_batchnorm_example_training_mode": "training mode: running statistics as outputs",
    "test_convtranspose_3d": "only 1-D and 2-D transposed convolutions",
    "test_matmul_1d_1d": "a rank-0 result",
}


@pytest.fixture(scope="module")
def outcomes():
    from cmswitch.node_cases import run_all

    return run_all()


def test_no_node_case_differs_or_crashes(outcomes):
    bad = [o for o in outcomes if o.status in ("differs", "crash")]
    assert not bad, bad
    assert len(outcomes) > 500, "the case list was not found"


def test_every_refusal_is_one_line_naming_the_cause(outcomes):
    refused = [o for o in outcomes if o.status == "refused"]
    assert refused, "the training-mode and unsupported-dtype cases must be refused"
    assert all(o.detail and "\n" not in o.detail and "Traceback" not in o.detail
               for o in refused)


@pytest.mark.parametrize("op", ISSUE_14_OPS)
def test_the_node_cases_of_issue_14s_operators_match(outcomes, op):
    mine = [o for o in outcomes if o.op == op]
    assert mine, f"no node case of {op}"
    for o in mine:
        assert o.status == ("refused" if o.case in REFUSED else "match"), o


def test_clip_with_run_time_bounds_uses_them(outcomes):
    """Issue 14: Clip's run-time min/max were ignored (the flow returned x)."""
    status = {o.case: o.status for o in outcomes}
    for case in ("test_clip", "test_clip_default_max", "test_clip_default_min",
                 "test_clip_splitbounds"):
        assert status[case] == "match", case


# ------------------------------------------------------------------ node names


def test_report_rows_carry_the_onnx_node_names(zoo, tmp_path):
    report = cms.compile(zoo).report()
    nodes = {row["name"]: row["node"] for row in report["operators"]}
    # the convs keep their node names (their BatchNormalizations folded into them);
    # operators are still named after their weights in the flow
    assert nodes["w1"] == "conv1" and nodes["w2"] == "conv2" and nodes["wf"] == "fc"
    assert {"lrn1", "act2", "gap"} <= set(nodes.values())
    anonymous = [helper.make_node("Relu", ["x"], ["y"])]
    path = _model(tmp_path / "anon.onnx", anonymous, [("x", [2, 4])], [("y", [2, 4])], {})
    (row,) = cms.compile(path).report()["operators"]
    assert row["node"] == "Relu_0"


def test_a_split_layer_gets_a_roll_up_row():
    """ResNet-18's layer4.0.conv1 (3x3, 256 -> 512 channels, stride 2, 14x14 -> 7x7)
    needs more arrays than half the chip and is split along N.  Its roll-up sums the
    pieces: the whole weight K x N = (256*9) x 512 bytes at 8-bit weights, and one
    M * mvm_cycles = 49 * 8 per piece."""
    from conftest import MODELS

    plan = cms.compile(MODELS / "resnet18.onnx")
    layers = {row["node"]: row for row in plan.report()["layers"]}
    pieces = [r for r in plan.operators if r["name"].startswith("layer4.0.conv1.")]
    (layer,) = [layers[n] for n in {r["node"] for r in pieces}]
    assert layer["pieces"] == len(pieces) > 1
    assert plan.arch.weight_bits == 8 and plan.arch.mvm_cycles == 8
    assert layer["weight_bytes"] == 256 * 9 * 512
    assert layer["compute_cycles_one_copy"] == len(pieces) * 49 * 8
    assert set(layer["operators"]) >= {r["name"] for r in pieces}


def test_functional_mode_feeds_every_input_in_its_own_type(tmp_path):
    """Issue 14: a uint8 image input was fed to onnxruntime as int64."""
    nodes = [helper.make_node("Cast", ["img"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("Conv", ["f", "w"], ["y"], kernel_shape=[1, 1])]
    graph = helper.make_graph(
        nodes, "u8", [helper.make_tensor_value_info("img", TensorProto.UINT8, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])],
        [numpy_helper.from_array(np.full((2, 3, 1, 1), 0.5, np.float32), "w")])
    path = tmp_path / "u8.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    assert check_against_onnxruntime(path)["ok"]


def test_an_opset_6_model_is_checked_on_its_upgraded_graph(tmp_path):
    """onnxruntime runs opset 7 and newer: the check runs the graph the importer
    upgraded (onnx's version converter), on the same inputs."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["y"])]
    path = _model(tmp_path / "old.onnx", nodes, [("x", [1, 2, 6, 6])], [("y", [1, 4, 6, 6])],
                  {"w": ([4, 2, 3, 3], "w")}, opset=6)
    assert check_against_onnxruntime(path)["ok"]


# ------------------------------------------------------------------ found by a tester


def _save_raw(path: Path, nodes, inputs, outputs, inits, opset: int = 13) -> Path:
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, inits),
                              opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return path


def _f(values, name):
    return numpy_helper.from_array(np.array(values, np.float32), name)


def _vi(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


@pytest.mark.parametrize("shape, exponent", [([2, 3, 4], [[1.0], [2.0], [3.0]]),
                                             ([2, 4, 4], [[1.0], [2.0], [3.0], [0.5]])])
def test_a_recorded_constant_keeps_its_shape(tmp_path, shape, exponent):
    """A 2-D constant exponent broadcasts along axis 1, not the last axis."""
    nodes = [helper.make_node("Abs", ["x"], ["a"]), helper.make_node("Pow", ["a", "e"], ["y"])]
    path = _save_raw(tmp_path / "pow.onnx", nodes, [_vi("x", shape)], [_vi("y", shape)],
                     [_f(exponent, "e")])
    assert check_against_onnxruntime(path)["ok"]


def test_softplus_of_large_values_does_not_overflow(tmp_path):
    rng = np.random.default_rng(1)
    w = numpy_helper.from_array((rng.standard_normal((8, 64, 3, 3)) * 5).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Softplus", ["c"], ["y"])]
    path = _save_raw(tmp_path / "sp.onnx", nodes, [_vi("x", [1, 64, 4, 4])],
                     [_vi("y", [1, 8, 2, 2])], [w])
    assert check_against_onnxruntime(path)["ok"]


@pytest.mark.parametrize("m, n, c_shape, folds", [(3, 1, [], False), (4, 4, [4, 1], False),
                                                   (4, 4, [4], True)])
def test_batchnorm_after_a_gemm_whose_c_is_also_a_graph_input(tmp_path, m, n, c_shape, folds):
    """Old exporters list initializers as graph inputs: the fold must keep them
    consistent; a C that is not per output channel (scalar, M x 1) is not folded."""
    rng = np.random.default_rng(2)
    nodes = [helper.make_node("Gemm", ["x", "B", "C"], ["g"]),
             helper.make_node("BatchNormalization", ["g", "s", "b", "mu", "v"], ["y"])]
    inits = [_f(rng.standard_normal((8, n)), "B"), _f(rng.standard_normal(c_shape), "C"),
             _f(rng.standard_normal(n), "s"), _f(rng.standard_normal(n), "b"),
             _f(rng.standard_normal(n), "mu"), _f(rng.uniform(0.5, 2, n), "v")]
    path = _save_raw(tmp_path / "gbn.onnx", nodes, [_vi("x", [m, 8]), _vi("C", c_shape)],
                     [_vi("y", [m, n])], inits)
    folded = fold_for_inference(onnx.load(str(path)))
    assert ("BatchNormalization" not in [x.op_type for x in folded.graph.node]) == folds
    assert check_against_onnxruntime(path)["ok"]


def test_an_int32_input_is_fed_as_int32(tmp_path):
    nodes = [helper.make_node("Abs", ["x"], ["a"]),
             helper.make_node("Cast", ["a"], ["y"], to=TensorProto.FLOAT)]
    path = _save_raw(tmp_path / "i32.onnx", nodes, [_vi("x", [2, 5], TensorProto.INT32)],
                     [_vi("y", [2, 5])], [])
    assert check_against_onnxruntime(path)["ok"]


def test_bench_runs_a_users_model_with_a_dynamic_batch_at_batch_1(tmp_path):
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3])]
    rng = np.random.default_rng(3)
    path = _save_raw(tmp_path / "dyn.onnx", nodes, [_vi("x", ["N", 3, 8, 8])],
                     [_vi("y", ["N", 4, 6, 6])], [_f(rng.standard_normal((4, 3, 3, 3)), "w")])
    out = tmp_path / "b.json"
    r = subprocess.run([str(BIN / "cmswitch"), "bench", "--models", str(path), "--json",
                        str(out), "--no-progress"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    (row,) = json.loads(out.read_text())["rows"]
    assert row["batch"] == 1


def test_weights_computed_at_compile_time_are_rebuilt_for_functional_mode(tmp_path):
    """The model zoo's `light` graphs (onnx/backend/test/data/light) compute every
    weight with ConstantOfShape, and old exports feed a Gemm a Reshape of its weight:
    the conv's weight here is ConstantOfShape (0.02 everywhere), its bias twice a
    stored tensor, the Gemm's weight a Reshape of a flat initializer."""
    nodes = [
        helper.make_node("ConstantOfShape", ["w1_shape"], ["w1"], name="w1_fill",
                         value=numpy_helper.from_array(np.array([0.02], np.float32))),
        helper.make_node("Mul", ["b1_half", "two"], ["b1"], name="b1_double"),
        helper.make_node("Conv", ["x", "w1", "b1"], ["c"], name="conv", kernel_shape=[3, 3]),
        helper.make_node("Flatten", ["c"], ["f"], name="flatten"),
        helper.make_node("Reshape", ["wf_flat", "wf_shape"], ["wf"], name="wf_view"),
        helper.make_node("Gemm", ["f", "wf"], ["y"], name="fc"),
    ]
    inits = {"w1_shape": ([4], [4, 3, 3, 3]), "b1_half": ([4], "n"), "two": ([], "n"),
             "wf_flat": ([4 * 4 * 4 * 5], "n"), "wf_shape": ([2], [64, 5])}
    path = _model(tmp_path / "light_style.onnx", nodes, [("x", [1, 3, 6, 6])], [("y", [1, 5])],
                  inits)
    report = check_against_onnxruntime(path)
    assert report["ok"], report
    assert report["max_abs_error"] < 1e-3


def test_nan_on_both_sides_matches_without_nan_error_figures(tmp_path):
    """Log of a negative input is NaN in onnxruntime and in the flow alike: the outputs
    match, and the error figures stay numbers (the finite elements' errors)."""
    nodes = [helper.make_node("Log", ["x"], ["y"], name="log")]
    path = _model(tmp_path / "log.onnx", nodes, [("x", [4, 8])], [("y", [4, 8])], {})
    report = check_against_onnxruntime(path)
    assert report["ok"], report
    assert np.isfinite(report["max_abs_error"]) and np.isfinite(report["max_rel_error"])
