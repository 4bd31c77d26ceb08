"""`cmswitch bench` (cmswitch/bench/evaluate.py): rows, JSON contract, geometric means,
error handling.  Most tests replace the compile-and-simulate step with made-up cycle
counts whose speedups and geometric means are worked out by hand; one runs ResNet-18
for real."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

import cmswitch.bench.evaluate as ev
from cmswitch.api import STRATEGIES
from cmswitch.errors import CMSwitchError
from cmswitch.tools.cli import main
from report_schema import validate

BIN = Path(sys.executable).parent
ROW_KEYS = {"model", "arch", "batch", "seq", "cycles", "speedup_vs_cimmlc",
            "lower_bound_cycles", "switch_share", "compile_seconds"}

# made-up simulated cycles: cmswitch 1000 on resnet18, 500 on bert-base (both hardware);
# every other strategy 2000 on resnet18 and 4000 on bert-base.
FAKE = {"resnet18": 1000, "bert-base": 500}


def _fake_run(w, strategy, plot_dir=None):
    ours = FAKE[w.model.name]
    cycles = ours if strategy == "cmswitch" else {"resnet18": 2000, "bert-base": 4000}[w.model.name]
    return {"cycles": cycles, "predicted_cycles": cycles, "lower_bound_cycles": 250,
            "switch_share": 0.01, "compile_seconds": 0.5, "segments": 3}


@pytest.fixture()
def fake(monkeypatch):
    monkeypatch.setattr(ev, "run_strategy", _fake_run)


def test_rows_follow_the_default_pairing_and_the_json_contract(fake, tmp_path, capsys):
    out = tmp_path / "b.json"
    assert main(["bench", "--quick", "--json", str(out), "--no-progress"]) == 0
    doc = json.loads(out.read_text())
    rows = doc["rows"]
    # resnet18 on the default hardware and its fused variant; bert-base on both and on
    # prime (DESIGN.md §7)
    assert [(r["model"], r["arch"], r["batch"], r["seq"]) for r in rows] == [
        ("resnet18", "dynaplasia", 1, None), ("resnet18", "dynaplasia-fused", 1, None),
        ("bert-base", "dynaplasia", 4, 512), ("bert-base", "dynaplasia-fused", 4, 512),
        ("bert-base", "prime", 4, 512)]
    for r in rows:
        assert ROW_KEYS <= set(r)
        assert set(r["cycles"]) == set(STRATEGIES) == set(r["compile_seconds"])
    # speedups by hand: 2000/1000 = 2 and 4000/500 = 8; geomean of (2, 2, 8, 8, 8) =
    # 2048^(1/5)
    assert [r["speedup_vs_cimmlc"] for r in rows] == [2.0, 2.0, 8.0, 8.0, 8.0]
    assert doc["geomean_speedup_vs_cimmlc"] == pytest.approx(2048 ** (1 / 5), abs=1e-4)
    assert rows[0]["latency_over_bound"] == 4.0  # 1000 / 250
    table = capsys.readouterr().out
    assert "| resnet18 | dynaplasia | 1 | - | 1000 | 2000 |" in table
    assert "**4.59x**" in table  # 2048^(1/5) = 4.5948


def test_geomean_is_recomputed_from_the_rows_cycles(fake, tmp_path):
    out = tmp_path / "b.json"
    main(["bench", "--models", "resnet18", "bert-base", "--arch", "dynaplasia",
          "--json", str(out), "--no-progress"])
    doc = json.loads(out.read_text())
    speedups = [r["cycles"]["cimmlc"] / r["cycles"]["cmswitch"] for r in doc["rows"]]
    mean = math.exp(sum(map(math.log, speedups)) / len(speedups))
    assert mean == pytest.approx(4.0)  # sqrt(2 * 8)
    assert doc["geomean_speedup_vs_cimmlc"] == pytest.approx(mean, rel=1e-4)


def test_sweep_covers_batch_by_sequence_for_transformers_only(fake, tmp_path):
    out = tmp_path / "b.json"
    main(["bench", "--quick", "--arch", "dynaplasia", "--sweep", "--json", str(out),
          "--no-progress"])
    sweep = json.loads(out.read_text())["sweep"]["rows"]
    assert {(r["model"], r["batch"], r["seq"]) for r in sweep} == {
        ("bert-base", b, s) for b in (4, 8, 16) for s in (32, 128, 512, 2048)}
    assert len(sweep) == 12


def test_a_failed_run_is_shown_and_exits_1(monkeypatch, tmp_path, capsys):
    def failing(w, strategy, plot_dir=None):
        if strategy == "cimmlc":
            raise CMSwitchError("flow rejected")
        return _fake_run(w, strategy)

    monkeypatch.setattr(ev, "run_strategy", failing)
    out = tmp_path / "b.json"
    assert main(["bench", "--models", "resnet18", "--json", str(out), "--no-progress"]) == 1
    row = json.loads(out.read_text())["rows"][0]
    assert row["cycles"]["cimmlc"] is None and row["speedup_vs_cimmlc"] is None
    assert row["errors"] == {"cimmlc": "flow rejected"}
    captured = capsys.readouterr()
    assert "n/a" in captured.out
    assert "error: resnet18 b1 @ dynaplasia cimmlc: flow rejected" in captured.err


def test_plot_writes_the_speedup_chart(fake, tmp_path):
    main(["bench", "--models", "resnet18", "--plot", str(tmp_path / "pics"), "--no-progress"])
    assert (tmp_path / "pics" / "speedups.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("args,code,message", [
    (["--models", "alexnet"], 1, "not a model of the set"),
    (["--arch", "tpu"], 2, "unknown hardware 'tpu'"),  # a usage error, like --strategy
    (["--json", "/no/such/folder/b.json"], 1, "does not exist"),
    (["--seq", "0"], 2, "must be a positive integer"),
])
def test_bad_arguments(args, code, message):
    r = subprocess.run([str(BIN / "cmswitch"), "bench", *args], capture_output=True, text=True)
    assert r.returncode == code
    assert message in r.stderr
    assert "Traceback" not in r.stderr


def test_resnet18_for_real(tmp_path):
    out = tmp_path / "b.json"
    r = subprocess.run([str(BIN / "cmswitch"), "bench", "--models", "resnet18", "--arch", "dynaplasia", "--json",
                        str(out), "--plot", str(tmp_path / "pics")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    validate(doc, "bench")
    (row,) = doc["rows"]
    assert ROW_KEYS <= set(row)
    assert set(row["cycles"]) == set(STRATEGIES)
    # the lower bound is a bound: no strategy's simulated cycles beat it
    assert all(c >= row["lower_bound_cycles"] for c in row["cycles"].values())
    assert doc["geomean_speedup_vs_cimmlc"] == pytest.approx(
        row["cycles"]["cimmlc"] / row["cycles"]["cmswitch"], rel=1e-4)
    assert sorted(p.name for p in (tmp_path / "pics").iterdir()) == sorted(
        [f"resnet18_dynaplasia_cmswitch_{kind}.{ext}" for kind in
         ("operators", "segments", "timeline") for ext in ("png", "svg")]
        + ["speedups.png", "speedups.svg"])
    assert "| **geomean** |" in r.stdout


def test_compile_bench_keeps_the_fastest_run_and_refuses_runs_that_differ():
    from cmswitch.bench.compile_time import best_of

    def report(seconds, wall, rss, solves=7):
        return {"compile_seconds": seconds, "wall_seconds": wall, "peak_rss_mb": rss,
                "predicted_cycles": 100, "mip": {"solves": solves, "segment_mips": 2}}

    best = best_of("m", "cmswitch", "glpk",
                   [report(2.0, 2.9, 90), report(1.5, 3.1, 80), report(1.8, 2.5, 95)])
    assert (best["compile_seconds"], best["wall_seconds"], best["peak_rss_mb"]) == (1.5, 2.5, 95)
    with pytest.raises(RuntimeError, match="runs differ"):
        best_of("m", "cmswitch", "glpk", [report(1.0, 1.0, 1), report(1.0, 1.0, 1, solves=8)])


def test_decode_table_rows_by_hand(monkeypatch, tmp_path, capsys):
    """--decode adds one decode step of LLaMA2-7B per batch x KV-cache length; made-up
    cycles: cmswitch 1000, every baseline 1500 (speedup 1.5)."""
    def run(w, strategy, plot_dir=None):
        cycles = 1000 if strategy == "cmswitch" else 1500
        extra = {"kv_cache_bytes_by_place": {"dram": 7}} if w.kv_len else {}
        return {**extra, "cycles": cycles, "predicted_cycles": cycles,
                "lower_bound_cycles": 900, "switch_share": 0.0, "compile_seconds": 1.0,
                "segments": 2}

    monkeypatch.setattr(ev, "run_strategy", run)
    monkeypatch.setattr(ev, "main_workloads", lambda *a, **k: [])
    out = tmp_path / "b.json"
    assert main(["bench", "--models", "llama2-7b", "--decode", "--json", str(out),
                 "--no-progress"]) == 0
    doc = json.loads(out.read_text())
    rows = doc["decode"]["rows"]
    assert [(r["batch"], r["kv_len"], r["phase"]) for r in rows] == [
        (1, 128, "decode"), (1, 4096, "decode"), (16, 128, "decode"), (16, 4096, "decode")]
    assert all(r["kv_cache_bytes_by_place"] == {"dram": 7} for r in rows)
    assert doc["decode"]["geomean_speedup_vs_cimmlc"] == 1.5
    table = capsys.readouterr().out
    assert "| model | hw | batch | kv-len |" in table
    assert "| llama2-7b | dynaplasia | 16 | 4096 | 1000 | 1500 |" in table
