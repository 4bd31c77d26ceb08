"""Functional mode: the flow, executed on real numbers, computes what onnxruntime
computes for the same ONNX model (cmswitch/functional.py, docs/functional.md).

The reference values come from onnxruntime, an independent implementation; the
expected partition pieces and tile counts are derived by hand from the rules in
cmswitch/transforms/cim_partition.py and docs/cmsasm.md.
"""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

import cmswitch.api as cms
from cmswitch.arch import arch_from_dict
from cmswitch.dialects.cim import Conv2dOp, MatmulOp, VectorOp
from cmswitch.errors import CMSwitchError
from cmswitch.functional import check_against_onnxruntime, compare, weight_tiles
from cmswitch.tools.cli import main as cli_main

from conftest import MODELS

BIN = Path(sys.executable).parent

#: 8 arrays of 16 x 64 one-bit cells: 8 eight-bit weights per row, 128 bytes per array
TINY = {
    "name": "tiny", "arrays": 8, "rows": 16, "cols": 64, "cell_bits": 1, "weight_bits": 8,
    "act_bits": 8, "mvm_cycles": 8, "internal_bw_bits": 32, "external_bw_bytes": 16,
    "global_buffer_bytes": 2048, "global_buffer_bw_bytes": 32, "switch_cycles": 1,
    "weight_write_bw_bytes": 16, "vector_ops_per_cycle": 16, "clock_mhz": 100,
}


def _save(path: Path, nodes, inputs, outputs, weights: dict, seed: int) -> Path:
    """An opset-17 model whose initializers are seeded normal values scaled by
    1/sqrt(fan-in) (so activations stay near 1 and float32 error stays small)."""
    rng = np.random.default_rng(seed)
    inits = []
    for name, shape in weights.items():
        fan = int(np.prod(shape[1:])) if len(shape) == 4 else shape[0]
        value = rng.standard_normal(shape) / np.sqrt(fan)
        inits.append(numpy_helper.from_array(value.astype(np.float32), name))
    graph = helper.make_graph(
        nodes, path.stem,
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def _cnn(path: Path) -> Path:
    """conv -> relu -> grouped conv (group=2) -> relu -> conv, + residual, pool, Gemm."""
    node = helper.make_node
    nodes = [
        node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        node("Relu", ["c1"], ["r1"]),
        node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], group=2),
        node("Relu", ["c2"], ["r2"]),
        node("Conv", ["r2", "w3"], ["c3"], pads=[1, 1, 1, 1]),
        node("Add", ["c3", "r1"], ["s"]),
        node("GlobalAveragePool", ["s"], ["p"]),
        node("Flatten", ["p"], ["f"]),
        node("Gemm", ["f", "wf", "bf"], ["y"], transB=1),
    ]
    weights = {"w1": [8, 3, 3, 3], "b1": [8], "w2": [8, 4, 3, 3], "b2": [8],
               "w3": [8, 8, 3, 3], "wf": [10, 8], "bf": [10]}
    return _save(path, nodes, [("x", [1, 3, 8, 8])], [("y", [1, 10])], weights, seed=1)


def _mlp(path: Path) -> Path:
    """Gemm(transB) 100->20 + bias, relu, MatMul 20->36, relu, Gemm 36->10 + bias."""
    node = helper.make_node
    nodes = [
        node("Gemm", ["x", "w1", "b1"], ["h1"], transB=1),
        node("Relu", ["h1"], ["r1"]),
        node("MatMul", ["r1", "w2"], ["h2"]),
        node("Relu", ["h2"], ["r2"]),
        node("Gemm", ["r2", "w3", "b3"], ["y"]),
    ]
    weights = {"w1": [20, 100], "b1": [20], "w2": [20, 36], "w3": [36, 10], "b3": [10]}
    return _save(path, nodes, [("x", [4, 100])], [("y", [4, 10])], weights, seed=2)


def _big_conv(path: Path) -> Path:
    """A 16->20 channel 3x3 conv too large for the tiny chip, then max and average pools."""
    node = helper.make_node
    nodes = [
        node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        node("MaxPool", ["c"], ["m"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        node("AveragePool", ["m"], ["y"], kernel_shape=[2, 2], pads=[0, 0, 1, 1]),
    ]
    weights = {"w": [20, 16, 3, 3], "b": [20]}
    return _save(path, nodes, [("x", [1, 16, 6, 6])], [("y", [1, 20, 3, 3])], weights, seed=3)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("functional")


@pytest.fixture(scope="module")
def tiny_arch(work) -> str:
    arch_from_dict(TINY)  # a valid description
    path = work / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return str(path)


@pytest.fixture(scope="module")
def cnn(work):
    path = _cnn(work / "cnn.onnx")
    # on the fused chip: the flow hands each conv's output to its ReLU / add as a stream
    return path, cms.compile(path, arch="dynaplasia-fused", keep_module=True)


@pytest.fixture(scope="module")
def mlp(work, tiny_arch):
    path = _mlp(work / "mlp.onnx")
    # pieces of half the chip, as the hand-computed slices below assume
    return path, cms.compile(path, arch=tiny_arch, keep_module=True, chunk_arrays=4)


def _ops(plan, kind):
    return [op for op in plan.module.walk() if isinstance(op, kind)]


def _slices(plan, kind, weight):
    return sorted(tuple(op.weight_slice.get_values()) for op in _ops(plan, kind)
                  if op.weight.data == weight and op.weight_slice is not None)


def _mutate(flow: str, pattern: str, replacement: str) -> str:
    """`flow` with the one line matching `pattern` rewritten; fails if none matches."""
    new, count = re.subn(pattern, replacement, flow, count=1, flags=re.M)
    assert count == 1, pattern
    return new


# ---------------------------------------------------------------------------------
# the flow computes the model


def test_cnn_with_residual_and_grouped_conv_matches_onnxruntime(cnn):
    path, plan = cnn
    groups = sorted(op.group_count for op in _ops(plan, Conv2dOp))
    assert groups == [1, 1, 2]
    assert [op.kind.data for op in _ops(plan, VectorOp)] == [
        "relu", "relu", "add", "global_avgpool", "flatten"]
    # each conv hands its output to the ReLU / add reading it (DESIGN.md §9.13)
    assert plan.flow.count("@stream") == 6
    report = compare(plan, path)
    assert report["ok"], report
    assert report["max_rel_error"] < 1e-5
    assert report["outputs"][0]["shape"] == [1, 10]


def test_mlp_split_along_k_and_n_matches_onnxruntime(mlp):
    path, plan = mlp
    # w1 (K=100, N=20): ceil(100/16)=7 row tiles x ceil(20/8)=3 column tiles > 8 arrays;
    # pieces of at most 4 arrays: 4 row tiles (64 rows) x 1 column tile (8 columns).
    assert _slices(plan, MatmulOp, "w1") == [
        (0, 64, 0, 8), (0, 64, 8, 16), (0, 64, 16, 20),
        (64, 100, 0, 8), (64, 100, 8, 16), (64, 100, 16, 20)]
    # w2 (K=20, N=36): 2 x 5 tiles > 8; pieces of 2 row tiles x 2 column tiles.
    assert _slices(plan, MatmulOp, "w2") == [(0, 20, 0, 16), (0, 20, 16, 32), (0, 20, 32, 36)]
    assert _slices(plan, MatmulOp, "w3") == []          # 3 x 2 tiles fit
    kinds = [op.kind.data for op in _ops(plan, VectorOp)]
    assert kinds.count("psum_add") == 3 and kinds.count("concat") == 2
    assert "CIM.load_weight w3 tiles=3x2 copies=1" in plan.flow
    report = compare(plan, path)
    assert report["ok"], report
    assert report["max_rel_error"] < 1e-5


def test_partitioned_conv_and_pools_match_onnxruntime(work, tiny_arch):
    path = _big_conv(work / "big_conv.onnx")
    plan = cms.compile(path, arch=tiny_arch, keep_module=True, chunk_arrays=4)
    # K = 16 channels x 9 = 144 rows (9 row tiles): 4 row tiles hold 64 rows = 7 whole
    # channels (63 rows); N = 20 in columns of 8.
    k_cuts = sorted({s[:2] for s in _slices(plan, Conv2dOp, "w")})
    n_cuts = sorted({s[2:] for s in _slices(plan, Conv2dOp, "w")})
    assert k_cuts == [(0, 63), (63, 126), (126, 144)]
    assert n_cuts == [(0, 8), (8, 16), (16, 20)]
    report = compare(plan, path)
    assert report["ok"], report


def test_strided_dilated_grouped_conv_matches_onnxruntime(work):
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], group=2, strides=[2, 1],
                            dilations=[2, 1], pads=[1, 0, 2, 1])
    path = _save(work / "odd_conv.onnx", [node], [("x", [2, 4, 9, 7])], [("y", [2, 6, 4, 7])],
                 {"w": [6, 2, 3, 2], "b": [6]}, seed=4)
    report = check_against_onnxruntime(path, seed=7)
    assert report["ok"], report
    assert report["seed"] == 7


def test_constant_left_operands_match_onnxruntime(work):
    node = helper.make_node
    nodes = [node("MatMul", ["w", "x"], ["y1"]), node("Gemm", ["a", "x"], ["y2"], transA=1),
             node("Add", ["y1", "y2"], ["y"])]
    path = _save(work / "left.onnx", nodes, [("x", [4, 3])], [("y", [5, 3])],
                 {"w": [5, 4], "a": [4, 5]}, seed=8)
    report = check_against_onnxruntime(path)
    assert report["ok"], report


def test_attention_with_dynamic_matmuls_matches_onnxruntime(work):
    node = helper.make_node
    nodes = [
        node("MatMul", ["x", "wq"], ["q"]), node("MatMul", ["x", "wk"], ["k"]),
        node("MatMul", ["x", "wv"], ["v"]), node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
        node("MatMul", ["q", "kt"], ["s"]), node("Softmax", ["s"], ["p"], axis=-1),
        node("MatMul", ["p", "v"], ["o"]), node("Add", ["o", "x"], ["y"]),
    ]
    path = _save(work / "attention.onnx", nodes, [("x", [2, 6, 8])], [("y", [2, 6, 8])],
                 {"wq": [8, 8], "wk": [8, 8], "wv": [8, 8]}, seed=6)
    plan = cms.compile(path, keep_module=True)
    assert plan.flow.count("CIM.write_operand") == 2
    report = compare(plan, path)
    assert report["ok"], report


# ---------------------------------------------------------------------------------
# a corrupted flow is caught


def _mvm_input(flow: str, op: str) -> tuple[str, str]:
    match = re.search(rf"^\s*CIM\.mvm {re.escape(op)} .* in=(\S+)@(\S+) ", flow, re.M)
    assert match, op
    return match.group(1), match.group(2)


def test_mvm_reading_another_tensor_gives_a_mismatch(cnn):
    path, plan = cnn
    tensor, loc = _mvm_input(plan.flow, "w3")            # conv3 reads r2
    where_r1 = re.search(r"out=r1@(\S+)", plan.flow).group(1)
    flow = _mutate(plan.flow, rf"in={tensor}@{re.escape(loc)} ", f"in=r1@{where_r1} ")
    report = compare(plan, path, flow=flow)
    assert not report["ok"]
    assert report["max_rel_error"] > 1e-2


def test_mvm_reading_where_its_input_is_not_is_an_error(cnn):
    path, plan = cnn
    tensor, loc = _mvm_input(plan.flow, "w3")
    written = set(re.findall(rf"(?:out=|{tensor}@\S+ -> )(?:{tensor}@)?(\S+)", plan.flow))
    other = next(c for c in ("gb", "dram", "a[95:96]") if c not in written and c != loc)
    flow = _mutate(plan.flow, rf"in={tensor}@{re.escape(loc)} ", f"in={tensor}@{other} ")
    with pytest.raises(CMSwitchError, match=rf"reads {tensor}@{re.escape(other)}, but "
                                            f"{tensor} is not there"):
        compare(plan, path, flow=flow)


def test_dropped_mem_load_is_an_error(cnn):
    path, plan = cnn
    flow = _mutate(plan.flow, r"^\s*MEM\.load x@dram -> (\S+) .*\n", "")
    with pytest.raises(CMSwitchError, match=r"line \d+: CIM\.mvm w1 reads x@gb, "
                                            r"but x is not there \(it is at dram\)"):
        compare(plan, path, flow=flow)


def test_psum_add_of_one_partial_twice_gives_a_mismatch(mlp):
    path, plan = mlp
    flow = _mutate(plan.flow, r"(VEC\.psum_add \S+ ops=\d+ in=)([^,]+),\S+",
                   r"\1\2,\2")
    report = compare(plan, path, flow=flow)
    assert not report["ok"]


def test_mvm_on_another_pieces_arrays_is_an_error(mlp):
    path, plan = mlp
    first = re.search(r"CIM\.load_weight (w1\.k0\.n0) .* -> (a\[\d+:\d+\])", plan.flow)
    flow = _mutate(plan.flow, r"(CIM\.mvm w1\.k64\.n0 )a\[\d+:\d+\]", rf"\1{first.group(2)}")
    with pytest.raises(CMSwitchError, match=r"holds a tile of w1\.k0\.n0, not w1\.k64\.n0"):
        compare(plan, path, flow=flow)


def test_wrong_tile_grid_is_an_error(mlp):
    path, plan = mlp
    flow = _mutate(plan.flow, r"(CIM\.load_weight w3 tiles=)3x2 copies=1 (.*) -> a\[(\d+):(\d+)\]",
                   r"\g<1>6x1 copies=1 \2 -> a[\3:\4]")
    with pytest.raises(CMSwitchError, match=r"needs 3x2 tiles of 16x8"):
        compare(plan, path, flow=flow)


def test_switching_weight_arrays_to_memory_erases_them(cnn):
    path, plan = cnn
    lo = re.search(r"CIM\.load_weight w1 .* -> a\[(\d+):", plan.flow).group(1)
    flow = _mutate(plan.flow, r"^(\s*)parallel \{", rf"\1CM.switch TOM a[{lo}:{int(lo) + 1}]\n\g<0>")
    with pytest.raises(CMSwitchError, match=rf"array {lo} is not in compute mode"):
        compare(plan, path, flow=flow)


# ---------------------------------------------------------------------------------
# pieces


def test_weight_tiles_follow_the_placement_rule():
    rows, wpr = 16, 8
    rng = np.random.default_rng(0)
    # (groups, K, N) -> (TK, TN) by hand: one group 40x20 -> 3x3 tiles; six 4x2 groups
    # pack min(16//4, 8//2, 6) = 4 per array -> 2 packs x 1; three 20x4 groups do not
    # fit one array (K > 16) -> 3 groups x 2 row tiles.
    for shape, grid in [((1, 40, 20), (3, 3)), ((6, 4, 2), (2, 1)), ((3, 20, 4), (6, 1))]:
        values = rng.standard_normal(shape).astype(np.float32)
        tk, tn, tiles = weight_tiles(values, rows, wpr)
        assert (tk, tn) == grid
        assert sorted(tiles) == [(i, j) for i in range(tk) for j in range(tn)]
        rebuilt = np.zeros_like(values)
        hits = np.zeros(shape, dtype=int)
        for blocks in tiles.values():
            for g, k0, k1, n0, n1, block in blocks:
                assert k1 - k0 <= rows and n1 - n0 <= wpr
                rebuilt[g, k0:k1, n0:n1] = block
                hits[g, k0:k1, n0:n1] += 1
        assert np.array_equal(rebuilt, values) and (hits == 1).all()


def test_constant_operands_are_carried_as_data(work):
    """Issue 14: an Add of a constant bias, and an attention-style score scaled by a
    constant 1/sqrt(d) computed by constant folding (Sqrt of a Constant), run with
    their constants (read from the model, the derived one evaluated) and match
    onnxruntime."""
    node = helper.make_node
    nodes = [node("MatMul", ["x", "w"], ["h"]), node("Add", ["h", "bias"], ["y"])]
    path = _save(work / "const_add.onnx", nodes, [("x", [2, 4])], [("y", [2, 3])],
                 {"w": [4, 3], "bias": [3]}, seed=5)
    assert check_against_onnxruntime(path)["ok"]
    d = helper.make_tensor("d", TensorProto.FLOAT, [], [16.0])
    nodes = [node("Constant", [], ["dk"], value=d), node("Sqrt", ["dk"], ["root"]),
             node("MatMul", ["q", "kt"], ["s"]), node("Div", ["s", "root"], ["y"])]
    path = _save(work / "scaled.onnx", nodes, [("q", [2, 4, 16]), ("kt", [2, 16, 4])],
                 [("y", [2, 4, 4])], {}, seed=6)
    plan = cms.compile(path, keep_module=True)
    (div,) = [op for op in plan.module.walk() if isinstance(op, VectorOp)
              and op.kind.data == "div"]
    assert [a.data for a in div.attributes["constant_names"].data] == ["root"]
    assert check_against_onnxruntime(path)["ok"]


# ---------------------------------------------------------------------------------
# command line


def test_cli_functional_prints_the_errors_and_exits_0(cnn, capsys):
    path, _ = cnn
    assert cli_main(["compile", str(path), "--functional"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"max abs error \S+, max rel error \S+ \(rtol 0\.0001, atol 1e-05, "
                     r"seed 0\): matches onnxruntime", out), out


def test_cli_functional_mismatch_exits_1(mlp, tiny_arch, monkeypatch, capsys):
    path, _ = mlp
    compile_model = cms.compile

    def corrupted(*args, **kwargs):
        plan = compile_model(*args, **kwargs)
        plan.flow = _mutate(plan.flow, r"(VEC\.psum_add \S+ ops=\d+ in=)([^,]+),\S+", r"\1\2,\2")
        return plan

    monkeypatch.setattr(cms, "compile", corrupted)
    assert cli_main(["compile", str(path), "--arch", tiny_arch, "--chunk-arrays", "4",
                     "--functional"]) == 1
    captured = capsys.readouterr()
    assert "DIFFERS from onnxruntime" in captured.out
    assert captured.err.startswith("error: the flow's outputs differ")


@pytest.mark.parametrize("model,message", [
    (str(MODELS / "resnet18.onnx"), "is stored outside the model ('__stripped__')"),
    ("bert-base", "functional mode needs an .onnx model file"),
])
def test_cli_functional_without_weights_is_one_clean_line(model, message):
    r = subprocess.run([str(BIN / "cmswitch"), "compile", model, "--functional"],
                       capture_output=True, text=True)
    assert r.returncode == 1
    assert r.stderr.startswith("error: ") and message in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
