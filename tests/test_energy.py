"""Energy (issue 16): the hardware description's per-event energies, the simulator's
event counts, and the reports.  Expected values are worked out by hand from the
per-event rules of `cmswitch.sim.simulator` (module docstring, "Energy")."""

from __future__ import annotations

import json
import math

import pytest

from cmswitch.arch import ENERGY_FIELDS, arch_from_dict, load_arch
from cmswitch.errors import CMSwitchError
from cmswitch.sim.simulator import ENERGY_CATEGORIES, simulate
from cmswitch.tools.sim import format_report

TIMING = ("arrays=96 rows=320 cols=320 cell_bits=1 weight_bits=8 act_bits=8 mvm_cycles=8 "
          "internal_bw_bits=32 external_bw_bytes=32 global_buffer_bytes=81920 "
          "global_buffer_bw_bytes=32 switch_cycles=1 weight_write_bw_bytes=32 "
          "vector_ops_per_cycle=64 clock_mhz=200")
# Round figures so every product below is exact.
ENERGY = ("mvm_pj=100 array_access_pj_per_bit=1 buffer_pj_per_bit=2 dram_pj_per_bit=10 "
          "weight_write_pj_per_bit=3 switch_pj=5 vector_op_pj=0.5 array_static_mw=0.5")

BODY = """\
.model tiny
.tensor x bytes=4096 input
.tensor y bytes=1024 output
.segment 0 predicted=1 ops=mm,act
  CM.switch TOM a[8:16]
  CIM.load_weight mm tiles=1x1 copies=2 bytes=512 -> a[0:2]
  MEM.load x@dram -> a[8:16] bytes=4096
  CIM.mvm mm a[0:2] out=y@gb n=16 k=32 vectors=128 in=x@a[8:16]
  VEC.relu act in=y@gb out=y@gb ops=1024
  MEM.store y@gb -> dram bytes=1024
.end
"""


def flow(energy: str = ENERGY) -> str:
    return f".arch hand {TIMING} {energy}\n{BODY}"


def by_hand(cycles: int) -> dict:
    """The energy of `BODY`, event by event (pJ)."""
    return {
        # 128 vectors through one 1x1 copy each (2 copies share them): 128 activations
        "compute": 128 * 100,
        # MEM.load writes 4096 B into a[8:16]; the mvm reads 128 x 32 B = 4096 B there
        "memory_arrays": (4096 + 4096) * 8 * 1,
        # mvm writes 128 x 16 B = 2048 B to gb; relu reads and writes y (1024 B each);
        # the store reads 1024 B
        "buffer": (2048 + 1024 + 1024 + 1024) * 8 * 2,
        # load_weight reads 512 B, MEM.load 4096 B, the store writes 1024 B
        "dram": (512 + 4096 + 1024) * 8 * 10,
        # two copies of 512 B programmed
        "programming": 2 * 512 * 8 * 3,
        "switching": 8 * 5,
        "digital": 1024 * 0.5,
        # 96 arrays x 0.5 mW = 48 mW for cycles / 200 MHz seconds = cycles * 240 pJ
        "static": cycles * 240,
    }


def test_every_event_is_charged_as_counted_by_hand():
    report = simulate(flow())
    want = by_hand(report["cycles"])
    energy = report["energy"]
    assert energy["breakdown_pj"] == pytest.approx(want)
    assert list(energy["breakdown_pj"]) == list(ENERGY_CATEGORIES)
    assert energy["total_pj"] == pytest.approx(sum(want.values()))
    assert energy["mvm_ops"] == 2 * 128 * 32 * 16
    assert energy["tops_per_watt"] == pytest.approx(2 * 128 * 32 * 16 / sum(want.values()))
    seconds = report["cycles"] / 200e6
    assert energy["average_power_mw"] == pytest.approx(sum(want.values()) * 1e-9 / seconds)
    assert report["segments"][0]["energy_pj"] == pytest.approx(sum(want.values()))


def test_a_flow_without_energy_fields_has_unknown_energy():
    report = simulate(flow(energy=""))
    assert report["energy"] is None
    assert "energy: unknown" in format_report(report)
    assert "energy_pj" not in report["segments"][0]


def test_energy_fields_are_all_or_none():
    fields = load_arch().model_dump(exclude_none=True)
    del fields["array_static_mw"]
    with pytest.raises(CMSwitchError, match="field 'array_static_mw': the energy fields are given all or none"):
        arch_from_dict(fields)
    with pytest.raises(CMSwitchError, match="array_static_mw"):
        simulate(flow(energy="mvm_pj=100"))


def test_a_negative_energy_is_refused():
    fields = load_arch().model_dump(exclude_none=True)
    fields["dram_pj_per_bit"] = -1.0
    with pytest.raises(CMSwitchError, match="dram_pj_per_bit"):
        arch_from_dict(fields)


def test_presets_give_every_energy_field():
    for name in ("dynaplasia", "prime"):
        arch = load_arch(name)
        assert all(getattr(arch, key) is not None for key in ENERGY_FIELDS), name


def test_default_preset_peaks_at_dynaplasias_published_efficiency():
    # DynaPlasia (JSSC 2024): 56.0 TOPS/W at 8-bit.  One array MVM: 320 rows x 40 weights
    # x 2 ops = 25,600 ops for mvm_pj.
    arch = load_arch()
    assert arch.peak_tops_per_watt == pytest.approx(56.0, rel=1e-3)
    assert arch.peak_tops_per_watt == pytest.approx(25600 / arch.mvm_pj)


@pytest.mark.parametrize("arch", ["dynaplasia", "prime"])
def test_breakdowns_sum_to_totals_in_real_reports(arch, compiled):
    plan = compiled("resnet18", arch)
    report = plan.simulate()
    energy = report["energy"]
    assert energy["total_pj"] == pytest.approx(sum(energy["breakdown_pj"].values()), rel=1e-12)
    for seg in report["segments"]:
        assert seg["energy_pj"] == pytest.approx(sum(seg["energy_breakdown_pj"].values()),
                                                 rel=1e-12)
    assert energy["total_pj"] == pytest.approx(sum(s["energy_pj"] for s in report["segments"]),
                                               rel=1e-12)
    # ResNet-18 at batch 1: 1.82 G multiply-accumulates (torchvision's figure), 2 ops each
    assert energy["mvm_ops"] == pytest.approx(2 * 1.82e9, rel=0.01)
    # a whole network never beats the MVM-only peak
    assert 0 < energy["tops_per_watt"] < plan.arch.peak_tops_per_watt
    json.dumps(report)  # JSON-ready


def test_sim_override_without_energy_makes_energy_unknown(tmp_path):
    fields = load_arch().model_dump(exclude_none=True)
    for key in ENERGY_FIELDS:
        del fields[key]
    fields["name"] = "noenergy"
    path = tmp_path / "hw.json"
    path.write_text(json.dumps(fields))
    from cmswitch.tools.sim import _load_arch

    report = simulate(flow(), arch_override=_load_arch(str(path)))
    assert report["energy"] is None
    report = simulate(flow(), arch_override=_load_arch("dynaplasia"))
    assert report["energy"]["breakdown_pj"]["compute"] == pytest.approx(128 * 457.1)
    assert not math.isnan(report["energy"]["total_pj"])


def test_work_is_attributed_to_operators_as_counted_by_hand():
    """Issue 19: the simulator's per-operator rows for `BODY` (all statements
    sequential, so each one's alone time is its exact time)."""
    report = simulate(flow(), statements=True)
    rows = {r["name"]: r for r in report["operators"]}
    assert list(rows) == ["CM.switch", "mm", "x", "act", "y"]
    # load_weight max(512/32 dram, 2*512/32 write) = 32; mvm ceil(128/2) x 8 = 512 (its
    # ports: 4096 B / 32 B/cycle = 128, 2048 B / 32 = 64)
    assert rows["mm"]["alone_cycles"] == 32 + 512 and rows["mm"]["statements"] == 2
    assert rows["mm"]["bytes"] == {"dram": 512, "buffer": 2048, "arrays": 4096,
                                   "weight_write": 1024}
    assert rows["x"]["alone_cycles"] == 4096 // 32 and rows["x"]["bytes"]["arrays"] == 4096
    # relu: 1024 ops / 64 = 16 < (1024 read + 1024 written) / 32 B/cycle = 64
    assert rows["act"]["alone_cycles"] == 64 and rows["act"]["bytes"]["buffer"] == 2048
    assert rows["y"]["alone_cycles"] == 32 and rows["CM.switch"]["alone_cycles"] == 1
    assert report["cycles"] == 1 + 32 + 128 + 512 + 64 + 32
    assert rows["mm"]["mvm_ops"] == 2 * 128 * 32 * 16
    # operators carry every event's energy; static power belongs to no statement
    energy = report["energy"]
    assert sum(r["energy_pj"] for r in rows.values()) == pytest.approx(
        energy["total_pj"] - energy["breakdown_pj"]["static"])
    assert rows["mm"]["energy_pj"] == pytest.approx(128 * 100 + (4096 + 2048 * 2 + 512 * 10
                                                                 + 1024 * 3) * 8)
    assert [s["name"] for s in report["statement_rows"]] == ["CM.switch", "mm", "x", "mm",
                                                             "act", "y"]
    assert "statement_rows" not in simulate(flow())
