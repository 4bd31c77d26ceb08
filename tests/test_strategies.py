"""The all-compute CIM-MLC baseline and CMSwitch on the same models."""

import pytest
from xdsl.context import Context

from cmswitch.api import compile as compile_model
from cmswitch.api import load_module
from cmswitch.arch import load_arch
from cmswitch.cost.graph import build_graph
from cmswitch.strategies.cimmlc import duplicate, greedy_segments
from cmswitch.transforms.cim_partition import CimPartitionPass
from cmswitch.transforms.common import main_func

from conftest import MODELS

ARCH = load_arch("dynaplasia")


def _graph(name):
    module = load_module(MODELS / f"{name}.onnx")
    CimPartitionPass().apply(Context(), module)
    return build_graph(main_func(module), ARCH)


def test_greedy_segments_pack_until_the_arrays_run_out():
    graph = _graph("resnet18")
    ranges = greedy_segments(graph, ARCH)
    assert ranges[0][0] == 0 and ranges[-1][1] == len(graph.ops) - 1
    for (f1, l1), (f2, _) in zip(ranges, ranges[1:]):
        assert f2 == l1 + 1
        used = sum(o.cost.arrays for o in graph.ops[f1:l1 + 1])
        nxt = sum(o.cost.arrays for o in graph.ops[f2:f2 + 1])
        assert used <= ARCH.arrays < used + nxt or nxt == 0  # the next matrix op did not fit


def test_duplication_copies_divide_the_output_width():
    graph = _graph("resnet18")
    first, last = greedy_segments(graph, ARCH)[0]
    copies = duplicate(graph, first, last, ARCH)
    for i, c in copies.items():
        width = graph.ops[i].op.output.type.get_shape()[-1]
        assert width % c == 0
    assert sum(graph.ops[i].cost.arrays * c for i, c in copies.items()) <= ARCH.arrays


@pytest.mark.parametrize("name", ["resnet18", "bert_base"])
def test_cmswitch_never_predicted_slower_than_cimmlc(name):
    ours = compile_model(MODELS / f"{name}.onnx")
    base = compile_model(MODELS / f"{name}.onnx", strategy="cimmlc")
    assert ours.predicted_cycles <= base.predicted_cycles
    assert all(s["memory_arrays"] == 0 for s in base.segments)
    assert base.simulate()["cycles"] > 0
