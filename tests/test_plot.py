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
    array_modes,
    mode_counts,
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


def test_segment_map_pixels_count_the_arrays_of_each_mode():
    fig = segment_map_figure(array_modes(MAP_FLOW), "test")
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    pixels = np.asarray(canvas.buffer_rgba())
    height = pixels.shape[0]
    ax = next(a for a in fig.axes if a.get_label() == "map")
    for column, expected in ((0, {"compute": 2, "memory": 2, "idle-memory": 2, "idle": 4}),
                             (1, {"compute": 1, "memory": 0, "idle-memory": 4, "idle": 5})):
        seen = dict.fromkeys(MODE_COLORS, 0)
        for array in range(10):  # the centre of each cell, array 0 at the bottom
            x, y = ax.transData.transform((column, array))
            r, g, b, _ = pixels[int(height - y), int(x)]
            seen[_classify((r / 255, g / 255, b / 255))] += 1
        assert seen == expected


def test_pictures_are_written(tmp_path):
    segments = segment_map(MAP_FLOW, tmp_path / "map.png", title="hand flow")
    segment, spans = timeline(TWO_LOADS, tmp_path / "time.png")
    rows = [{"model": "m", "arch": "a", "batch": 1, "seq": None, "speedup": {"b": 2.0}}]
    speedup_bars(rows, ["b"], tmp_path / "bars.png")
    assert len(segments) == 2
    assert segment == 0 and [s["start"] for s in spans][:2] == [0, 1]
    for name in ("map.png", "time.png", "bars.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_timeline_of_an_unknown_segment_is_an_error(tmp_path):
    with pytest.raises(CMSwitchError, match="no segment '7'"):
        timeline(TWO_LOADS, tmp_path / "t.png", segment="7")


def test_compile_plot_writes_pngs_whose_compute_counts_match_the_plan(tmp_path):
    r = subprocess.run([str(BIN / "cmswitch"), "compile", str(MODELS / "resnet18.onnx"),
                        "-o", str(tmp_path / "r.cmsasm"), "--json", str(tmp_path / "r.json"),
                        "--plot", str(tmp_path / "pics")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    pics = sorted(p.name for p in (tmp_path / "pics").iterdir())
    assert pics == ["resnet18_dynaplasia_cmswitch_segments.png",
                    "resnet18_dynaplasia_cmswitch_timeline.png"]
    # the map's compute arrays (from the flow's addresses) are the allocation's
    modes = array_modes(tmp_path / "r.cmsasm")
    report = json.loads((tmp_path / "r.json").read_text())
    assert [mode_counts(s["modes"])["compute"] for s in modes] == \
        [s["compute_arrays"] for s in report["segments"]]
