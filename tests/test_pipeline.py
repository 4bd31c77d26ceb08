"""End to end: every bundled model through partition, segmentation, allocation,
lowering and the simulator; partition conserves work; output is deterministic."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from xdsl.context import Context

from cmswitch.api import compile as compile_model
from cmswitch.api import load_module
from cmswitch.arch import load_arch
from cmswitch.dialects.cim import Conv2dOp, MatmulOp, SegmentOp
from cmswitch.transforms.cim_partition import CimPartitionPass
from cmswitch.transforms.common import main_func

from conftest import MODEL_NAMES, MODELS

ARCH = load_arch("dynaplasia")
BIN = Path(sys.executable).parent


def _weight_ops(module):
    return [o for o in module.walk() if isinstance(o, (Conv2dOp, MatmulOp))]


@pytest.mark.parametrize("name", ["resnet18", "llama2_7b_2layers"])
def test_partition_conserves_work(name):
    module = load_module(MODELS / f"{name}.onnx")
    before = {}
    for op in _weight_ops(module):
        m, k, n = op.im2col_dims()
        before[op.weight.data] = before.get(op.weight.data, 0) + m * k * n * (
            op.group_count if isinstance(op, Conv2dOp) else 1)
    CimPartitionPass().apply(Context(), module)
    module.verify()
    after: dict[str, int] = {}
    for op in _weight_ops(module):
        m, k, n = op.im2col_dims()
        after[op.weight.data] = after.get(op.weight.data, 0) + m * k * n * (
            op.group_count if isinstance(op, Conv2dOp) else 1)
        tk, tn = -(-k // ARCH.rows), -(-n // ARCH.weights_per_row)
        assert tk * tn <= ARCH.arrays, op.weight.data
    assert after == before


def test_llama_down_projection_splits():
    module = load_module(MODELS / "llama2_7b_2layers.onnx")
    CimPartitionPass().apply(Context(), module)
    # The exporter names weights val_*; the down projection is the K = 11008 one.
    pieces = [o for o in _weight_ops(module) if o.im2col_dims()[1] == 11008]
    # K = 11008 -> 35 row tiles; pieces of <= 48 arrays hold one 40-column tile each:
    # ceil(4096 / 40) = 103 pieces per layer, 2 layers.
    assert len(pieces) == 2 * 103
    assert {p.im2col_dims()[1] for p in pieces} == {11008}


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_compile_and_simulate(name):
    plan = compile_model(MODELS / f"{name}.onnx")
    assert plan.segments
    for seg in plan.segments:
        assert seg["compute_arrays"] + seg["memory_arrays"] <= ARCH.arrays
        assert seg["predicted_cycles"] > 0
    # Every operator is in exactly one segment.
    names = [op for seg in plan.segments for op in seg["operators"]]
    assert len(names) == len(set(names)) == len(plan.operators)
    assert plan.lower_bound_cycles <= plan.predicted_cycles
    report = plan.simulate()
    assert report["cycles"] >= plan.lower_bound_cycles
    assert len(report["segments"]) == len(plan.segments)


def test_allocated_ir_holds_segments():
    from cmswitch.cost.model import op_cost
    from cmswitch.transforms.cim_allocate import CimAllocatePass
    from cmswitch.transforms.cim_segment import CimSegmentPass

    module = load_module(MODELS / "vgg16.onnx")
    for p in (CimPartitionPass(), CimSegmentPass(), CimAllocatePass()):
        p.apply(Context(), module)
    module.verify()
    segs = [o for o in main_func(module).body.block.ops if isinstance(o, SegmentOp)]
    assert segs and all("compute_arrays" in s.attributes for s in segs)
    for op in _weight_ops(module):
        # each op's compute range holds exactly its copies of its tiles
        lo, hi = op.attributes["arrays"].get_values()
        copies = op.attributes["copies"].value.data
        assert hi - lo == copies * op_cost(op, "x", ARCH).arrays
    for seg in segs:
        # compute ranges disjoint and below the pool (memory from the top down)
        inner = [o for o in seg.body.block.ops if "arrays" in o.attributes]
        compute = [a for o in inner for a in range(*o.attributes["arrays"].get_values())]
        assert len(compute) == len(set(compute)) == seg.attributes["compute_arrays"].value.data
        if "pool" in seg.attributes:
            assert seg.attributes["pool"].get_values()[0] > max(compute)


def test_resnet18_flow_switches_and_is_refused_without_its_switches(tmp_path):
    """The issue's acceptance run: compile ResNet-18 to a flow with `CM.switch` lines and
    `parallel` blocks that `cmswitch-sim --json` accepts; with every switch-to-compute
    line removed, the simulator refuses it (a TOM switch left the arrays in memory mode,
    so an MVM or weight load hits memory-mode arrays)."""
    import subprocess
    import sys
    from pathlib import Path

    bin_dir = Path(sys.executable).parent
    flow = tmp_path / "f.cmsasm"
    subprocess.run([bin_dir / "cmswitch", "compile", MODELS / "resnet18.onnx", "-o", flow],
                   check=True, capture_output=True)
    text = flow.read_text()
    assert "CM.switch TOM" in text and "CM.switch TOC" in text and "parallel {" in text
    ok = subprocess.run([bin_dir / "cmswitch-sim", flow, "--json"], capture_output=True, text=True)
    assert ok.returncode == 0 and json.loads(ok.stdout)["cycles"] > 0
    broken = tmp_path / "broken.cmsasm"
    broken.write_text("".join(line for line in text.splitlines(keepends=True)
                              if "CM.switch TOC" not in line))
    bad = subprocess.run([bin_dir / "cmswitch-sim", broken], capture_output=True, text=True)
    assert bad.returncode == 1
    assert bad.stderr.startswith("error: ") and "memory mode" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_next_weights_load_during_the_previous_segment_when_their_arrays_are_free():
    """§9.1: a weight op of segment k+1 whose compute arrays segment k leaves unused is
    loaded inside segment k's parallel block, once, and the simulator accepts it."""
    from cmswitch.sim.simulator import simulate

    plan = compile_model(MODELS / "resnet18.onnx")
    segments = plan.flow.split(".segment ")[1:]
    early = []
    for k, text in enumerate(segments):
        block = text[text.index("parallel {"):]
        early += [(k, line.split()[1]) for line in block.splitlines()
                  if line.strip().startswith("CIM.load_weight")]
    assert early, "no weight load overlaps a pipeline"
    for k, op in early:
        assert f",{op}," in f",{segments[k + 1].split()[1][4:]},"  # an op of the next segment
        assert plan.flow.count(f"CIM.load_weight {op} ") == 1
    assert simulate(plan.flow)["cycles"] > 0


def test_every_preload_the_plan_keeps_is_loaded_early():
    """§9.1 end to end: each segment that keeps `preloaded = k` after `cim-allocate`
    (which drops a preload no layout can honour and re-prices both segments) has its
    first k weight ops loaded inside the previous segment's parallel block — so the
    load cycles the prediction leaves out are really overlapped in the flow."""
    plan = compile_model(MODELS / "resnet18.onnx", keep_module=True)
    segs = [o for o in main_func(plan.module).body.block.ops if isinstance(o, SegmentOp)]
    texts = plan.flow.split(".segment ")[1:]
    assert len(texts) == len(segs)
    checked = 0
    for k, seg in enumerate(segs):
        count = seg.attributes["preloaded"].value.data if "preloaded" in seg.attributes else 0
        if not count:
            continue
        assert k > 0
        names = texts[k].split()[1][4:].split(",")
        own = [line.split()[1] for line in texts[k].splitlines()
               if line.strip().startswith("CIM.load_weight")]
        before = texts[k - 1][texts[k - 1].index("parallel {"):]
        early = [line.split()[1] for line in before.splitlines()
                 if line.strip().startswith("CIM.load_weight")]
        weights = [n for n in names if n in own or n in early]  # its weight ops, in order
        assert all(n in early and n not in own for n in weights[:count]), (k, weights, early)
        checked += 1
    assert checked >= 3, "ResNet-18 should keep several preloads"


def test_place_compute_puts_the_preloaded_op_where_the_rest_still_fits():
    """20 arrays, the segment's memory above array 16, the previous segment busy on
    0..5.  The preloaded op (4 arrays) must sit in the free run 6..15; at its start
    (6..9) the 8-array block of the other op cannot fit below 16 without crossing it
    (it would need a start <= 8 and > 9), so the op goes to the run's end (12..15) and
    the block to the lowest start, 0."""
    from cmswitch.transforms.layout import place_compute

    assert place_compute([4, 8], 1, 16, set(range(6)), 20) == [12, 0]
    # nothing to preload, nothing busy: contiguous from array 0 in op order
    assert place_compute([2, 3], 0, 10, set(), 10) == [0, 2]
    # the next segment wants 5 free arrays below 12: a 4-array block at 0 leaves 4..11
    assert place_compute([4], 0, 12, set(), 12, ([5], 12)) == [0]


def test_a_preload_below_the_next_segments_pool_is_kept(tmp_path):
    """Two matmuls of one input x (11x51) and two adds x+x: w1 (19 arrays), then w3
    (12 arrays, preloaded during w1's segment) with the adds, on 62 arrays; the
    second segment stripes x over a pool.  The preloaded w3 must sit below that pool
    (arrays 0..11, w1 at 12..30), not right after w1 (19..30, which splits the free
    arrays into 0..18 and 31..61 and made cim-allocate drop the preload, predicting
    941 cycles: slower than on the same chip with half the memory-array bandwidth,
    880; found by tests/test_monotone.py)."""
    import numpy as np
    import onnx
    import yaml
    from onnx import TensorProto, helper, numpy_helper

    from cmswitch.sim.simulator import simulate

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [11, 51])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
            for n in ("y1", "y3", "s", "t")]
    inits = [numpy_helper.from_array(np.zeros((51, n), np.float32), f"w{i}")
             for i, n in ((1, 299), (3, 186))]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["y1"]),
             helper.make_node("MatMul", ["x", "w3"], ["y3"]),
             helper.make_node("Add", ["x", "x"], ["s"]),
             helper.make_node("Add", ["x", "x"], ["t"])]
    model = tmp_path / "two.onnx"
    onnx.save(helper.make_model(helper.make_graph(nodes, "two", [x], outs, inits)), model)
    fields = dict(
        name="hw62", arrays=62, rows=320, cols=64, cell_bits=2, weight_bits=8, act_bits=16,
        mvm_cycles=7, internal_bw_bits=16, external_bw_bytes=128, global_buffer_bytes=81920,
        global_buffer_bw_bytes=8, switch_cycles=0, weight_write_bw_bytes=32,
        vector_ops_per_cycle=64, clock_mhz=200)
    cycles = {}
    for bits in (8, 16):
        hw = tmp_path / f"hw{bits}.yaml"
        hw.write_text(yaml.safe_dump(dict(fields, internal_bw_bits=bits)))
        plan = compile_model(model, arch=str(hw), keep_module=True)
        cycles[bits] = plan.predicted_cycles
    segs = [o for o in main_func(plan.module).body.block.ops if isinstance(o, SegmentOp)]
    assert len(segs) == 2 and segs[1].attributes["preloaded"].value.data == 1
    first, second = plan.flow.split(".segment ")[1:]
    assert "CIM.load_weight w3 tiles=1x12 copies=1 bytes=9486 -> a[0:12]" in first
    assert "CIM.mvm w3 a[0:12]" in second and "CIM.load_weight" not in second
    lo, hi = segs[1].attributes["pool"].get_values()
    assert lo >= 12  # one range above the preloaded w3
    assert cycles[16] <= cycles[8]
    assert simulate(plan.flow)["cycles"] > 0


def test_preloading_is_faster_in_the_simulator_on_the_hand_made_chain(tmp_path):
    """The chain of filecheck/transforms/cim-segment-preload.mlir (hand-computed there:
    16512 predicted cycles with preloading, 21720 without): the simulator, which
    shares no timing code with the optimizer, must agree that preloading wins."""
    from cmswitch.sim.simulator import simulate

    source = Path(__file__).parent.parent / "filecheck/transforms/cim-segment-preload.mlir"
    cycles = {}
    for preload in (1, 0):
        flow = tmp_path / f"p{preload}.cmsasm"
        r = subprocess.run([str(Path(sys.executable).parent / "cmswitch-opt"), str(source),
                            f"--cim-segment=preload={preload}", "--cim-allocate",
                            "--cim-to-metaop", "-t", "cmsasm", "-o", str(flow)],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        cycles[preload] = simulate(flow.read_text())["cycles"]
    assert cycles[1] < 0.8 * cycles[0], cycles


def test_lower_bound_terms_by_hand():
    """x (4x320) @ w (320x40) then Softmax, on dynaplasia (96 arrays of 320 rows x 40
    8-bit weights, 8 cycles per MVM, 32 B/cycle DRAM and weight writes, 64 digital ops
    per cycle):
    compute      1 array x 4 vectors x 8 cycles = 32 array-cycles / 96 arrays -> 1;
    dram         weights 12800 + input 1280 + output 160 = 14240 B / 32 -> 445;
    weight_write 12800 B / 32 = 400;
    digital      softmax 5 ops x 160 elements = 800 / 64 = 12.5 -> 13."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from cmswitch.frontend.onnx_importer import import_onnx

    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="fc"),
             helper.make_node("Softmax", ["h"], ["y"], name="sm", axis=-1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 320])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 40])],
                              [numpy_helper.from_array(np.zeros((320, 40), np.float32), "w")])
    data = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    plan = compile_model(import_onnx(data, name="tiny"), jobs=1)
    assert plan.lower_bound_terms == {"compute": 1, "dram": 445, "weight_write": 400, "digital": 13}
    assert plan.lower_bound_cycles == 445
    report = plan.report()["lower_bound"]
    assert report == {"cycles": 445, "binding": "dram", "terms": plan.lower_bound_terms}
    assert plan.simulate()["cycles"] >= 445


def test_the_compile_keeps_the_piece_shape_the_dp_predicts_fastest(tmp_path):
    """x (1024 x 8192) @ W (8192 x 4096): full-k pieces (one 40-column tile each, 103
    of them per chunk) re-read the 8 MB input from DRAM 103 times; balanced pieces
    (filecheck/transforms/cim-partition.mlir: 1280 x 480) 9 times.  The default compile
    tries both and keeps the faster prediction, and the simulator agrees it is faster."""
    import onnx
    from onnx import TensorProto, helper

    from cmswitch.frontend.rewrites import tensor
    from cmswitch.sim.simulator import simulate

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")], "wide",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1024, 8192])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1024, 4096])],
        [tensor("w", None, [8192, 4096], TensorProto.FLOAT)])  # shapes only
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "wide.onnx"
    onnx.save(model, path)
    plans = {shape: compile_model(path, piece_shape=shape) for shape in ("full-k", "balanced")}
    chosen = compile_model(path)
    best = min(plans, key=lambda s: plans[s].predicted_cycles)
    assert chosen.piece_shape == best == "balanced"
    assert chosen.report()["piece_shape"] == "balanced"
    assert chosen.flow == plans["balanced"].flow
    simulated = {s: simulate(p.flow)["cycles"] for s, p in plans.items()}
    assert simulated["balanced"] < simulated["full-k"] / 1.5
