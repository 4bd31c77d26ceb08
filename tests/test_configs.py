"""Published transformer configurations: graph shapes against the ONNX export, and the
large models compile."""

import pytest

from cmswitch.api import compile as compile_model
from cmswitch.api import load_module
from cmswitch.dialects.cim import DynMatmulOp, MatmulOp
from cmswitch.errors import CMSwitchError
from cmswitch.frontend.configs import CONFIGS, build_transformer

from conftest import MODELS


def _matrix_ops(module):
    """(kind, M, K, N) of the matmuls, and operand shapes of the dynamic matmuls."""
    rows = []
    for op in module.walk():
        if isinstance(op, MatmulOp):
            rows.append(("matmul", *op.im2col_dims()))
        elif isinstance(op, DynMatmulOp):
            rows.append(("dyn", tuple(op.lhs.type.get_shape()), tuple(op.rhs.type.get_shape())))
    return rows


def test_llama_config_matches_onnx_export():
    exported = _matrix_ops(load_module(MODELS / "llama2_7b_2layers.onnx"))
    built = _matrix_ops(build_transformer("llama2-7b", batch=1, seq=128, layers=2))
    assert built == exported


def test_llama_layer_shapes_by_hand():
    rows = _matrix_ops(build_transformer("llama2-7b", batch=4, seq=512, layers=1))
    m = 4 * 512
    # q, k, v: 4096 -> 4096; scores (4,32,512,128)x(4,32,128,512); P.V; o; gate, up; down
    assert rows == [
        ("matmul", m, 4096, 4096), ("matmul", m, 4096, 4096), ("matmul", m, 4096, 4096),
        ("dyn", (4, 32, 512, 128), (4, 32, 128, 512)),
        ("dyn", (4, 32, 512, 512), (4, 32, 512, 128)),
        ("matmul", m, 4096, 4096), ("matmul", m, 4096, 11008), ("matmul", m, 4096, 11008),
        ("matmul", m, 11008, 4096), ("matmul", m, 4096, 32000),
    ]


@pytest.mark.parametrize("name,layers,hidden,ffn", [
    ("bert-base", 12, 768, 3072), ("bert-large", 24, 1024, 4096),
    ("opt-6.7b", 32, 4096, 16384), ("opt-13b", 40, 5120, 20480)])
def test_published_sizes(name, layers, hidden, ffn):
    cfg = CONFIGS[name]
    assert (cfg.layers, cfg.hidden, cfg.ffn) == (layers, hidden, ffn)
    rows = _matrix_ops(build_transformer(name, layers=1))
    assert ("matmul", 128, hidden, ffn) in rows and ("matmul", 128, ffn, hidden) in rows


def test_unknown_configuration_is_refused():
    with pytest.raises(CMSwitchError, match="unknown model 'gpt-5'"):
        load_module("gpt-5")


def test_bert_base_compiles_under_both_presets():
    default = compile_model("bert-base")
    prime = compile_model("bert-base", arch="prime")
    assert default.predicted_cycles != prime.predicted_cycles
    assert prime.lower_bound_cycles <= prime.predicted_cycles


def _stripped_initializer(name: str, dims: list[int]):
    """A weight with its shape but no data (data lives in a file that does not exist),
    like the bundled weight-stripped models."""
    from onnx import TensorProto

    t = TensorProto(name=name, dims=dims, data_type=TensorProto.FLOAT)
    t.data_location = TensorProto.EXTERNAL
    entry = t.external_data.add()
    entry.key, entry.value = "location", "weights.bin"
    return t


def test_mlp_far_larger_than_the_chip_compiles(tmp_path):
    """16 Gemms of 4096x4096 (268M weights, 225x the chip's 1.2 MB) compile and
    simulate; every layer is split to fit."""
    import onnx
    from onnx import TensorProto, helper

    nodes, inits, x = [], [], "x"
    for i in range(16):
        inits.append(_stripped_initializer(f"fc{i}.weight", [4096, 4096]))
        nodes.append(helper.make_node("Gemm", [x, f"fc{i}.weight"], [f"h{i}"], name=f"fc{i}", transB=1))
        nodes.append(helper.make_node("Relu", [f"h{i}"], [f"r{i}"], name=f"relu{i}"))
        x = f"r{i}"
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4096])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [4, 4096])], inits)
    path = tmp_path / "mlp.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    plan = compile_model(path)
    pieces = [op for op in plan.operators if op["kind"] == "weight"]
    assert sum(op["k"] * op["n"] for op in pieces) == 16 * 4096 * 4096
    assert all(op["arrays_per_copy"] <= 96 for op in pieces)
    assert plan.simulate()["cycles"] >= plan.lower_bound_cycles
