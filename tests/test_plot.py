"""The pictures (cmswitch/plot.py) and the simulator's statement trace they draw from.

Expected values are worked out by hand from small hand-written flows."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb

from cmswitch.errors import CMSwitchError
from cmswitch.plot import (
    MODE_COLORS,
    _label,
    _labelled,
    array_modes,
    short_name,
    speedup_figure,
    mode_counts,
    operator_figure,
    segment_map,
    segment_map_figure,
    speedup_bars,
    timeline,
)
from cmswitch.sim.simulator import simulate
from conftest import MODELS

BIN = Path(sys.executable).parent

ARCH = (".arch t arrays={arrays} rows=320 cols=320 cell_bits=1 weight_bits=8 act_bits=8 "
        "mvm_cycles=8 internal_bw_bits=32 external_bw_bytes=32 global_buffer_bytes=81920 "
        "global_buffer_bw_bytes=32 switch_cycles=1 weight_write_bw_bytes=32 "
        "vector_ops_per_cycle=64 clock_mhz=200\n")

# Two loads share the DRAM port (32 B/cycle).  y's destination a[2:4] is a 2-array port
# of 2*32/8 = 8 B/cycle, so y runs at 8 B/cycle (3200 B: 400 cycles); x gets the other
# 24 B/cycle of DRAM: 3200/24 = 133.333 cycles.  The switch before takes 1 cycle, the
# store after 3200/min(8, 32) = 400 cycles.
TWO_LOADS = ARCH.format(arrays=4) + """\
.tensor x bytes=3200 input
.tensor y bytes=3200 input
.segment 0
  CM.switch TOM a[2:4]
  parallel {
    MEM.load x@dram -> gb bytes=3200
    MEM.load y@dram -> a[2:4] bytes=3200
  }
  MEM.store y@a[2:4] -> dram bytes=3200
.end
"""

# 10 arrays.  Segment 0: weights in a[0:2] (compute), data in a[4:6] (memory), a[6:8]
# switched to memory mode but unused (idle, memory mode), a[2:4] and a[8:10] idle.
# Segment 1: a[0:2] reused for compute; a[4:8] stay in memory mode but are unused.
MAP_FLOW = ARCH.format(arrays=10) + """\
.tensor x bytes=40 input
.tensor y bytes=40 output
.tensor z bytes=40 output
.segment 0
  CM.switch TOM a[4:8]
  CIM.load_weight w tiles=1x1 copies=2 bytes=100 -> a[0:2]
  MEM.load x@dram -> a[4:6] bytes=40
  CIM.mvm w a[0:2] vectors=4 k=10 n=10 in=x@a[4:6] out=y@dram
.end
.segment 1
  CIM.load_weight v tiles=1x1 copies=1 bytes=100 -> a[0:1]
  CIM.mvm v a[0:1] vectors=4 k=10 n=10 in=x@dram out=z@dram
.end
"""


def test_trace_gives_each_statement_its_start_and_end():
    report = simulate(TWO_LOADS, trace=True)
    spans = [(s["opcode"], s["start"], s["end"], s["parallel"]) for s in report["trace"]]
    assert spans == [
        ("CM.switch", 0, 1, None),
        ("MEM.load", pytest.approx(1), pytest.approx(1 + 3200 / 24, abs=1e-3), 6),
        ("MEM.load", pytest.approx(1), pytest.approx(401), 6),
        ("MEM.store", 401, 801, None),
    ]
    assert report["cycles"] == 801


def test_trace_off_changes_nothing_and_adds_no_key():
    plain = simulate(TWO_LOADS)
    traced = simulate(TWO_LOADS, trace=True)
    assert "trace" not in plain
    assert traced.pop("trace")
    assert plain == traced


def test_array_modes_follow_the_flow_addresses():
    segments = array_modes(MAP_FLOW)
    assert [s["id"] for s in segments] == [0, 1]
    assert segments[0]["modes"] == (["compute"] * 2 + ["idle"] * 2 + ["memory"] * 2
                                    + ["idle-memory"] * 2 + ["idle"] * 2)
    assert segments[1]["modes"] == (["compute"] + ["idle"] * 3 + ["idle-memory"] * 4
                                    + ["idle"] * 2)
    assert mode_counts(segments[0]["modes"]) == {"compute": 2, "memory": 2,
                                                 "idle-memory": 2, "idle": 4}


def _classify(rgb) -> str:
    """The mode whose colour is nearest to a pixel."""
    return min(MODE_COLORS, key=lambda m: sum((a - b) ** 2 for a, b in zip(to_rgb(MODE_COLORS[m]), rgb)))


def _timed_map_flow() -> list[dict]:
    """MAP_FLOW's segments with simulated cycles set by hand: 300 and 100."""
    segments = array_modes(MAP_FLOW)
    for seg, cycles in zip(segments, (300, 100)):
        seg["cycles"] = cycles
    return segments


def _drawn(fig):
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())


def test_segment_map_pixels_count_the_arrays_of_each_mode():
    fig = segment_map_figure(_timed_map_flow(), "test")
    pixels = _drawn(fig)
    height = pixels.shape[0]
    ax = next(a for a in fig.axes if a.get_label() == "map")

    def role(cycle, array):  # the centre of an array's cell, array 0 at the bottom
        x, y = ax.transData.transform((cycle, array))
        r, g, b, _ = pixels[int(height - y), int(x)]
        return _classify((r / 255, g / 255, b / 255))

    # the x axis is time: segment 0 covers cycles 0-300, segment 1 cycles 300-400
    for centre, expected in ((150, {"compute": 2, "memory": 2, "idle-memory": 2, "idle": 4}),
                             (350, {"compute": 1, "memory": 0, "idle-memory": 4, "idle": 5})):
        seen = dict.fromkeys(MODE_COLORS, 0)
        for array in range(10):
            seen[role(centre, array)] += 1
        assert seen == expected
    # array 4 holds data in segment 0 and sits unused in memory mode in segment 1
    assert (role(285, 4), role(315, 4)) == ("memory", "idle-memory")


def test_time_axes_use_engineering_ticks_not_an_offset():
    segments = _timed_map_flow()
    for seg in segments:
        seg["cycles"] *= 10_000  # 4 M cycles: a plain axis would print "1e6"
    fig = segment_map_figure(segments, "test", clock_mhz=200)
    _drawn(fig)
    ax = next(a for a in fig.axes if a.get_label() == "map")
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert ax.xaxis.get_offset_text().get_text() == ""
    assert "2 M" in labels and "4 M" in labels
    seconds = [child for a in fig.axes for child in a.get_children()
               if child.__class__.__name__ == "SecondaryAxis"]
    assert seconds  # the time axis in seconds on top


def test_segment_map_labels_never_overlap():
    # 100 segments of 1 cycle on an axes 460 pt wide: a label "12\n39/16" is 5
    # characters, w = (5 * 0.62 * 6.5 + 3) / 460 * 100 = 5.0326 cycles wide.  Segment 0's
    # label would cross the axis start: it moves inward to w/2 = 2.5163.  The next label
    # needs its centre i + 0.5 at least w past that: i = 8 (8.5); then every 6th
    # (5 apart would be 5.0 < 5.03), up to 14 labels.
    starts, widths = list(range(100)), [1.0] * 100
    texts = ["12\n39/16"] * 100
    chosen = _labelled(starts, widths, texts, 460)
    assert [i for i, _ in chosen] == [0] + [8 + 6 * k for k in range(13)]
    assert chosen[0][1] == pytest.approx((5 * 0.62 * 6.5 + 3) / 460 * 100 / 2)
    assert chosen[1][1] == 8.5
    # a longer segment wins the place of its shorter neighbours
    widths[40] = 6.0
    starts = [sum(widths[:i]) for i in range(100)]
    chosen = [i for i, _ in _labelled(starts, widths, texts, 460)]
    assert 40 in chosen and 39 not in chosen and 41 not in chosen
    # the longest segment gets its label even when it ends the axis
    widths = [1.0] * 20 + [50.0]
    starts = [sum(widths[:i]) for i in range(21)]
    assert 20 in [i for i, _ in _labelled(starts, widths, ["7\n1/2"] * 21, 460)]


def test_pictures_are_written_as_png_and_svg(tmp_path):
    segments = segment_map(MAP_FLOW, tmp_path / "map.png", title="hand flow")
    segment, spans = timeline(TWO_LOADS, tmp_path / "time.png")
    rows = [{"model": "models/m.onnx", "arch": "a", "batch": 1, "seq": None,
             "speedup": {"b": 2.0}}]
    speedup_bars(rows, ["b"], tmp_path / "bars.png")
    assert [s["cycles"] for s in segments] == [s["cycles"] for s in simulate(MAP_FLOW)["segments"]]
    assert segment == 0 and [s["start"] for s in spans][:2] == [0, 1]
    for name in ("map", "time", "bars"):
        assert (tmp_path / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert b"<svg" in (tmp_path / f"{name}.svg").read_bytes()[:400]


def test_speedup_ticks_name_the_model_not_its_file():
    rows = [{"model": "models/m.onnx", "arch": "dynaplasia", "batch": 1, "seq": None,
             "speedup": {"b": 2.0}}]
    fig = speedup_figure(rows, ["b"])
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels == ["m\ndynaplasia", "geomean"]


def test_statement_labels_keep_both_ends_of_a_long_name():
    # 20 characters: the first 9, an ellipsis, the last 10
    assert short_name("layers.0.self_attn.o_proj.k0.n512", 20) == "layers.0.…oj.k0.n512"
    assert short_name("conv1", 20) == "conv1"
    long = "model.encoder.layers.11.self_attn.o_proj"  # 40 characters, cut to 30
    assert _label(f"CIM.mvm {long} a[7:13] vectors=4 k=1 n=1 in=x@gb out=y@gb") == \
        "CIM.mvm model.encoder.…elf_attn.o_proj"  # 14 + … + 15
    assert _label("MEM.load x@dram -> a[40:48] bytes=3200") == "MEM.load x dram→a[40:48]"


def test_timeline_of_an_unknown_segment_is_an_error(tmp_path):
    with pytest.raises(CMSwitchError, match="no segment '7'"):
        timeline(TWO_LOADS, tmp_path / "t.png", segment="7")


def test_compile_plot_writes_every_picture_in_png_and_svg(tmp_path):
    r = subprocess.run([str(BIN / "cmswitch"), "compile", str(MODELS / "resnet18.onnx"),
                        "-o", str(tmp_path / "r.cmsasm"), "--json", str(tmp_path / "r.json"),
                        "--plot", str(tmp_path / "pics"), "--plot-segment", "3", "--quiet"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    pics = sorted(p.name for p in (tmp_path / "pics").iterdir())
    assert pics == [f"resnet18_dynaplasia_cmswitch_{kind}.{ext}"
                    for kind in ("operators", "segments", "timeline") for ext in ("png", "svg")]
    # the map's compute arrays (from the flow's addresses) are the allocation's
    modes = array_modes(tmp_path / "r.cmsasm")
    report = json.loads((tmp_path / "r.json").read_text())
    assert [mode_counts(s["modes"])["compute"] for s in modes] == \
        [s["compute_arrays"] for s in report["segments"]]


def test_any_segment_gets_its_timeline(tmp_path):
    flow = (tmp_path / "r.cmsasm")
    subprocess.run([str(BIN / "cmswitch"), "compile", str(MODELS / "resnet18.onnx"), "-o",
                    str(flow), "--quiet"], check=True, capture_output=True)
    text = flow.read_text().splitlines()
    begin = next(i for i, line in enumerate(text, 1) if line.startswith(".segment 3 "))
    end = next(i for i, line in enumerate(text, 1) if i > begin and line == ".end")
    segment, spans = timeline(flow, tmp_path / "t.png", segment=3)
    assert segment == 3 and spans
    assert all(begin < s["line"] < end for s in spans)  # segment 3's statements only


@pytest.mark.parametrize("argv, message", [
    (["--plot-segment", "2"], "--plot-segment needs --plot DIR"),
    (["--plot", "{tmp}/p", "--plot-segment", "999"], "--plot-segment 999: no such segment"),
    (["--plot", "{tmp}/p", "--plot-segment", "-1"], "must be 0 or more"),
])
def test_plot_segment_mistakes_are_refused_before_any_output(tmp_path, argv, message):
    argv = [a.format(tmp=tmp_path) for a in argv]
    model = tmp_path / "relu.mlir"  # one segment: compiles in a moment
    model.write_text("builtin.module {\n  func.func @main(%x : tensor<1x64xf32>) -> "
                     "tensor<1x64xf32> {\n    %y = cim.vector \"relu\" %x : "
                     "(tensor<1x64xf32>) -> tensor<1x64xf32>\n    func.return %y : "
                     "tensor<1x64xf32>\n  }\n}\n")
    r = subprocess.run([str(BIN / "cmswitch"), "compile", str(model),
                        "-o", str(tmp_path / "r.cmsasm"), "--quiet", *argv],
                       capture_output=True, text=True)
    assert r.returncode in (1, 2) and message in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "r.cmsasm").exists()


def test_operator_chart_ranks_operators_and_needs_simulated_cycles():
    rows = [{"name": f"op{i}", "predicted_load_cycles": i, "predicted_run_cycles": 10,
             "simulated_load_cycles": i, "simulated_run_cycles": 10 + i} for i in range(30)]
    fig = operator_figure(rows, "t")
    names = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert names == [f"op{i}" for i in range(29, 5, -1)]  # 24 most simulated cycles
    # the 6 others (op0..op5) in words: predicted 6 * 10 + 15, simulated 6 * 10 + 2 * 15
    assert fig.axes[0].get_title() == "not shown: 6 more operators, 75 cycles predicted, " \
        "90 simulated"
    with pytest.raises(CMSwitchError, match="compile with --simulate"):
        operator_figure([{"name": "a", "predicted_load_cycles": 0,
                          "predicted_run_cycles": 1}], "t")


def test_pareto_labels_skip_points_too_close_to_the_last_labelled():
    from cmswitch.plot import _spread

    # ranges 10 (x) and 10 (y); gaps to the last kept point, normalised: (1,1)->(1.1,1.0)
    # 0.01 (skipped), (1,1)->(2,0.5) 0.112 (kept), (2,0.5)->(2.5,0.4) 0.051 (skipped),
    # (2,0.5)->(11,-9) 1.31 (kept)
    xy = [(1, 1), (1.1, 1.0), (2, 0.5), (2.5, 0.4), (11, -9)]
    assert _spread(xy, [0, 1, 2, 3, 4]) == [0, 2, 4]
    assert _spread(xy, []) == []
