"""Published transformer configurations: graph shapes against the ONNX export, and the
large models compile."""

import pytest

from cmswitch.api import compile as compile_model
from cmswitch.api import load_module
from cmswitch.dialects.cim import DynMatmulOp, MatmulOp
from cmswitch.errors import CMSwitchError
from cmswitch.frontend.configs import CONFIGS, build_transformer

from conftest import MODELS
from report_schema import validate


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


# ----------------------------------------------------------------------------------
# decode step and --layers (issue 17)


def test_decode_step_shapes_follow_the_kv_cache_by_hand():
    # LLaMA2-7B, 1 layer, batch 2, 16 cached tokens: 32 heads of d = 4096 / 32 = 128.
    module = build_transformer("llama2-7b", batch=2, layers=1, phase="decode", kv_len=16)
    main = module.body.block.first_op
    args = [tuple(a.type.get_shape()) for a in main.body.block.args]
    assert args == [(2, 1), (2, 32, 128, 16), (2, 32, 16, 128)]  # ids, past K^T, past V
    outs = [tuple(t.get_shape()) for t in main.function_type.outputs.data]
    assert outs == [(2, 1, 32000), (2, 32, 128, 1), (2, 32, 1, 128)]  # logits, new K^T, V
    dyn = [(tuple(o.lhs.type.get_shape()), tuple(o.rhs.type.get_shape()))
           for o in main.walk() if isinstance(o, DynMatmulOp)]
    assert dyn == [((2, 32, 1, 128), (2, 32, 128, 16)),   # scores against the cache
                   ((2, 32, 1, 128), (2, 32, 128, 1)),    # ... and against the new key
                   ((2, 32, 1, 16), (2, 32, 16, 128))]    # context from the cached values
    # every projection and the LM head see one token per sequence: M = 2
    assert {tuple(o.input.type.get_shape())[:2] for o in main.walk()
            if isinstance(o, MatmulOp)} == {(2, 1)}


def test_decode_step_reports_its_kv_cache_and_an_honest_bound():
    plan = compile_model("llama2-7b", batch=2, layers=1, phase="decode", kv_len=16, jobs=1)
    report = plan.report()
    validate(report, "compile")
    assert (report["phase"], report["kv_len"], report["layer_count"]) == ("decode", 16, 1)
    # each cached tensor: 2 x 32 x 128 x 16 = 131072 8-bit values
    cache = report["kv_cache"]
    assert [(t["tensor"], t["bytes"]) for t in cache["tensors"]] == [
        ("layers.0.past_kT.0", 131072), ("layers.0.past_v.0", 131072)]
    assert sum(cache["bytes_by_place"].values()) == 2 * 131072
    # weight writes: q, k, v, o 4 x 4096^2 = 67,108,864; gate, up, down 3 x 4096 x 11008
    # = 135,266,304; LM head 4096 x 32000 = 131,072,000; run-time operands: the two
    # cached tensors and the new K^T (2 x 32 x 128 = 8192): 270,336.  In all 333,717,504
    # bytes at 32 B/cycle = 10,428,672 cycles.
    assert plan.lower_bound_terms["weight_write"] == 10_428_672
    assert plan.simulate()["cycles"] >= plan.lower_bound_cycles


@pytest.mark.parametrize("kwargs, message", [
    ({"name": "bert-base", "phase": "decode", "kv_len": 8}, "encoder: it has no decode phase"),
    ({"name": "llama2-7b", "phase": "decode"}, "needs --kv-len"),
    ({"name": "llama2-7b", "kv_len": 8}, "--kv-len applies to --phase decode"),
    ({"name": "llama2-7b", "phase": "verify"}, "unknown phase 'verify'"),
])
def test_decode_options_are_checked(kwargs, message):
    with pytest.raises(CMSwitchError, match=message):
        build_transformer(**kwargs)


def test_layers_keeps_the_first_layers():
    full = _matrix_ops(load_module("bert-base"))
    two = _matrix_ops(build_transformer("bert-base", layers=2))
    # per BERT layer: q, k, v, o, fc1, fc2 and two dynamic matmuls
    assert len(two) == 2 * 8 and len(full) == 12 * 8
    plan = compile_model("bert-base", layers=2, jobs=1)
    assert plan.report()["layer_count"] == 2


def test_a_long_kv_cache_is_read_in_blocks():
    # 2500 cached tokens: blocks of 1024, 1024 and 452; one score matmul and one context
    # matmul per block, plus the new key's score
    from cmswitch.frontend.configs import kv_blocks

    assert kv_blocks(2500) == [1024, 1024, 452] and kv_blocks(1024) == [1024]
    module = build_transformer("opt-6.7b", batch=1, layers=1, phase="decode", kv_len=2500)
    main = module.body.block.first_op
    names = [a.name_hint for a in main.body.block.args]
    assert names == ["input_ids"] + [f"layers.0.past_{kind}.{j}" for j in range(3)
                                     for kind in ("kT", "v")]
    dyn = [tuple(o.output.type.get_shape()) for o in main.walk() if isinstance(o, DynMatmulOp)]
    assert dyn == [(1, 32, 1, 1024), (1, 32, 1, 1024), (1, 32, 1, 452), (1, 32, 1, 1),
                   (1, 32, 1, 128), (1, 32, 1, 128), (1, 32, 1, 128)]
