"""The optimizer's cost model against hand-computed values (default hardware: arrays of
320 rows x 40 8-bit weights, mvm 8 cycles/vector, 8-bit activations)."""

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
