"""The optimizer's cost model against hand-computed values (default hardware: arrays of
320 rows x 40 8-bit weights, mvm 8 cycles/vector, 8-bit activations)."""

import pytest

from cmswitch.arch import load_arch
from cmswitch.cost.model import _weight_op_cost, groups_per_array, tiles_for, useful_copies

ARCH = load_arch("dynaplasia")


def test_derived_array_facts():
    assert ARCH.weights_per_row == 320 * 1 // 8 == 40
    assert ARCH.array_bytes == 320 * 320 // 8 == 12800


def test_resnet_first_conv():
    # K = 3*7*7 = 147 -> 1 row tile; N = 64 -> ceil(64/40) = 2 column tiles.
    c = _weight_op_cost("conv1", 112 * 112, 147, 64, 1, ARCH)
    assert c.tiles == (1, 2) and c.arrays == 2
    assert c.compute == 12544 * 8
    assert c.weight_bytes == 147 * 64
    assert c.feed == 12544 * (147 + 64)


def test_ragged_tiles():
    # 257 rows fit one 320-row tile; 256 columns -> 7 tiles (6 full of 40, one of 16).
    assert tiles_for(257, 256, ARCH) == (1, 7)
    # 321 rows need a second row tile holding a single row.
    assert tiles_for(321, 256, ARCH) == (2, 7)


def test_depthwise_block_diagonal():
    # Depthwise 3x3 over 32 channels: each group is a 9x1 block; an array packs
    # min(320//9, 40//1) = 35 >= 32 groups, so one array holds them all.
    assert groups_per_array(9, 1, 32, ARCH) == 32
    c = _weight_op_cost("dw", 56 * 56, 9, 1, 32, ARCH)
    assert c.arrays == 1
    assert c.feed == 32 * 56 * 56 * (9 + 1)


def test_useful_copies_stops_when_loading_costs_more():
    # compute 2048 cycles/copy, loading a copy 288 cycles: the 2nd copy saves 1024,
    # the 3rd 341, the 4th only 170 < 288.
    assert useful_copies(2048, 9216, 1, ARCH) == 3
    # Loading dominates (BERT-like: 1024 compute vs 18432 load): never duplicate.
    assert useful_copies(1024, 589824, 60, ARCH) == 1


# --- operators built in IR, priced by op_cost (hand-computed expectations) -----------

from xdsl.context import Context  # noqa: E402
from xdsl.dialects import func  # noqa: E402
from xdsl.dialects.builtin import ModuleOp, TensorType, f32  # noqa: E402
from xdsl.ir import Block, Region  # noqa: E402

from cmswitch.cost.model import op_cost  # noqa: E402
from cmswitch.dialects.cim import Conv2dOp, MatmulOp  # noqa: E402
from cmswitch.transforms.cim_partition import CimPartitionPass  # noqa: E402


def _conv(cin, hw, cout, k, stride=1, pads=(0, 0, 0, 0), dil=1, groups=1, out_hw=None):
    block = Block(arg_types=[TensorType(f32, [1, cin, hw, hw])])
    out = TensorType(f32, [1, cout, *out_hw])
    op = Conv2dOp(block.args[0], out, "w", [k, k], [stride, stride], list(pads), [dil, dil], groups)
    block.add_op(op)
    block.add_op(func.ReturnOp(op.output))
    module = ModuleOp([func.FuncOp("main", ([block.args[0].type], [out]), Region(block))])
    module.verify()  # the output size must follow from the ONNX formula
    return module, op


def test_conv_1152x1024_needs_104_arrays_and_splits():
    # 128 channels x 3x3 -> K = 1152 -> ceil(1152/320) = 4 row tiles; N = 1024 ->
    # ceil(1024/40) = 26 column tiles: 104 arrays > 96.
    module, op = _conv(128, 14, 1024, 3, pads=(1, 1, 1, 1), out_hw=(14, 14))
    c = op_cost(op, "w", ARCH)
    assert (c.m, c.k, c.n, c.tiles, c.arrays) == (196, 1152, 1024, (4, 26), 104)
    assert c.weight_bytes == 1152 * 1024 and c.feed == 196 * (1152 + 1024)
    CimPartitionPass().apply(Context(), module)
    pieces = [o for o in module.walk() if isinstance(o, Conv2dOp)]
    # max-arrays 48: 4 row tiles x 12 column tiles = 480 output channels per piece.
    assert [p.im2col_dims()[2] for p in pieces] == [480, 480, 64]
    assert [op_cost(p, "p", ARCH).arrays for p in pieces] == [48, 48, 8]


def test_gemm_257x256_ragged():
    block = Block(arg_types=[TensorType(f32, [4, 257])])
    op = MatmulOp(block.args[0], TensorType(f32, [4, 256]), "w")
    c = op_cost(op, "w", ARCH)
    assert (c.m, c.k, c.n, c.tiles, c.arrays) == (4, 257, 256, (1, 7), 7)
    assert c.weight_bytes == 257 * 256 and c.feed == 4 * (257 + 256)


def test_grouped_conv_g4():
    # 64 -> 128 channels, 3x3, g = 4: per group K = 16*9 = 144, N = 32; a 144x32 block
    # packs min(320//144, 40//32) = 1 group per array -> 4 arrays.
    _, op = _conv(64, 8, 128, 3, pads=(1, 1, 1, 1), groups=4, out_hw=(8, 8))
    c = op_cost(op, "w", ARCH)
    assert (c.m, c.k, c.n, c.groups, c.arrays) == (64, 144, 32, 4, 4)
    assert c.weight_bytes == 4 * 144 * 32 and c.feed == 4 * 64 * (144 + 32)


def test_dilated_stride2_conv():
    # 32x32, k3, dilation 2, stride 2, pad 2: floor((32 + 4 - 2*2 - 1)/2) + 1 = 16.
    _, op = _conv(16, 32, 16, 3, stride=2, pads=(2, 2, 2, 2), dil=2, out_hw=(16, 16))
    assert op_cost(op, "w", ARCH).m == 256 and op.im2col_dims()[1] == 144


def test_asymmetric_pads():
    # pads [top 0, left 1, bottom 2, right 0] on 10x10, k3: H 10+0+2-3+1 = 10, W 10+1+0-3+1 = 9.
    _, op = _conv(8, 10, 8, 3, pads=(0, 1, 2, 0), out_hw=(10, 9))
    assert op_cost(op, "w", ARCH).m == 90


def test_pointwise_conv():
    _, op = _conv(256, 7, 64, 1, out_hw=(7, 7))
    c = op_cost(op, "w", ARCH)
    assert (c.m, c.k, c.n, c.tiles) == (49, 256, 64, (1, 2))


def test_compute_and_data_cycles():
    from cmswitch.cost.model import compute_cycles, data_cycles

    c = _weight_op_cost("conv", 256, 288, 32, 1, ARCH)  # the cim-allocate.mlir example
    assert compute_cycles(c, 3) == 2048 / 3
    # 22 memory arrays x 4 B/cycle + the whole 32 B/cycle global buffer = 120 B/cycle.
    assert data_cycles(c, 22, ARCH, gb_share=32) == 81920 / 120


def test_working_sets_stream_rows_or_hold_whole_tensors():
    """A matmul reads each input vector once: 64 rows of 320 bytes (8-bit activations)
    of the 256 x 320 input stay on chip, 20480 of its 81920 bytes.  A ReLU of the same
    shape streams the same way; a transpose needs the whole tensor."""
    from cmswitch.cost.graph import build_graph
    from cmswitch.dialects.cim import VectorOp

    block = Block(arg_types=[TensorType(f32, [256, 320])])
    x = block.args[0]
    relu = VectorOp("relu", [x], [x.type])
    mm = MatmulOp(relu.outputs[0], TensorType(f32, [256, 64]), "w")
    tr = VectorOp("transpose", [relu.outputs[0]], [TensorType(f32, [320, 256])])
    block.add_ops([relu, mm, tr])
    block.add_op(func.ReturnOp(mm.output, tr.outputs[0]))
    f = func.FuncOp("main", ([x.type], [mm.output.type, tr.outputs[0].type]), Region(block))
    graph = build_graph(f, ARCH)
    t_in, t_relu = 0, graph.ops[0].outputs[0]
    assert graph.tensors[t_relu].bytes == 81920
    assert graph.working_set(t_in, 0) == 64 * 320       # relu streams its input
    assert graph.working_set(t_relu, 1) == 64 * 320     # the matmul streams rows
    assert graph.working_set(t_relu, 2) == 81920        # the transpose needs it all


def test_a_conv_output_streams_pixel_vectors():
    """A convolution writes one vector of all 64 output channels per pixel (im2col), so
    its ReLU consumer streams 64 pixel rows of 64 bytes, 4096 of the 1x64x14x14 map's
    12544 bytes — not 64 rows of its 14-element last axis (896 bytes, less than the
    conv's own 64-byte vectors).  The ReLU keeps the layout, so the Add after it streams
    the same 4096."""
    from cmswitch.cost.graph import build_graph
    from cmswitch.dialects.cim import Conv2dOp, VectorOp

    fmap = TensorType(f32, [1, 64, 14, 14])
    block = Block(arg_types=[TensorType(f32, [1, 32, 14, 14])])
    conv = Conv2dOp(block.args[0], fmap, "w", [3, 3], [1, 1], [1, 1, 1, 1], [1, 1], 1)
    relu = VectorOp("relu", [conv.output], [fmap])
    add = VectorOp("add", [relu.outputs[0], relu.outputs[0]], [fmap])
    block.add_ops([conv, relu, add])
    block.add_op(func.ReturnOp(add.outputs[0]))
    f = func.FuncOp("main", ([block.args[0].type], [fmap]), Region(block))
    graph = build_graph(f, ARCH)
    t_conv, t_relu = graph.ops[0].outputs[0], graph.ops[1].outputs[0]
    assert graph.tensors[t_conv].bytes == 64 * 14 * 14
    assert graph.working_set(t_conv, 1) == 64 * 64
    assert graph.working_set(t_relu, 2) == 64 * 64


def test_alone_cycles_of_conv1_by_hand():
    from cmswitch.cost.model import OpCost, alone_cycles

    c = _weight_op_cost("conv1", 112 * 112, 147, 64, 1, ARCH)
    # load: max(9408 B / 32 B/cycle from DRAM, 3 copies * 9408 B / 32 B/cycle written)
    #     = max(294, 882) = 882.
    # run: compute 12544 * 8 / 3 copies = 33450.67; its 1,843,968 B of input im2col
    # vectors on a 24-array pool (24 * 4 B/cycle = 96): 19208; output 802,816 B on the
    # global buffer (32 B/cycle): 25088.  The compute is the slowest.
    load, run = alone_cycles(c, 3, {"pool": 12544 * 147, "gb": 12544 * 64},
                             {"pool": 96.0, "gb": 32.0}, ARCH)
    assert load == 882
    assert run == 12544 * 8 / 3
    # with the output in DRAM at 32 B/cycle and one copy: compute 100352 > 25088
    assert alone_cycles(c, 1, {"dram": 12544 * 64}, {"dram": 32.0}, ARCH) == (294, 100352)
    # a relu of 802,816 elements: 802816 / 64 ops/cycle = 12544 on the digital unit, but
    # its 1,605,632 B through a 4-array pool (16 B/cycle) take 100352
    relu = OpCost(name="relu", kind="vector", vector_ops=802816)
    assert alone_cycles(relu, 1, {}, {}, ARCH) == (0, 12544)
    assert alone_cycles(relu, 1, {"pool": 1605632}, {"pool": 16.0}, ARCH) == (0, 100352)
    with pytest.raises(ValueError, match="no bandwidth"):
        alone_cycles(relu, 1, {"gb": 10}, {}, ARCH)
