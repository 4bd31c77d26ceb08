"""Every report the tools write validates against docs/report.schema.json, and the
compile tables (`--csv DIR`) rebuild the report's totals without summing by hand in
the report (issue 19).  The bench and sweep documents are validated where those tools
run (tests/test_bench.py, tests/test_sweep.py)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from conftest import MODELS
from report_schema import validate

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def compiled_reports(tmp_path_factory):
    """ResNet-18 and BERT-base compiled with --simulate, --json and --csv."""
    out = {}
    for model in ("resnet18", "bert_base"):
        folder = tmp_path_factory.mktemp(model)
        r = subprocess.run([str(BIN / "cmswitch"), "compile", str(MODELS / f"{model}.onnx"),
                            "--simulate", "--quiet", "-o", str(folder / "flow.cmsasm"),
                            "--json", str(folder / "report.json"), "--csv", str(folder)],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        out[model] = folder
    return out


@pytest.mark.parametrize("model", ["resnet18", "bert_base"])
def test_compile_and_sim_reports_validate(compiled_reports, model):
    folder = compiled_reports[model]
    report = json.loads((folder / "report.json").read_text())
    validate(report, "compile")
    assert report["hardware"]["name"] == report["arch"] == "dynaplasia"
    assert report["solver"] == "glpk"
    r = subprocess.run([str(BIN / "cmswitch-sim"), str(folder / "flow.cmsasm"), "--json"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    sim = json.loads(r.stdout)
    validate(sim, "simulate")
    assert sim["cycles"] == report["simulated_cycles"]


@pytest.mark.parametrize("model", ["resnet18", "bert_base"])
def test_one_definition_of_a_segments_arrays(compiled_reports, model):
    """Compute and memory arrays of each segment, counted three independent ways, agree:
    the compiler's allocation (report), the simulator's measurement of the flow (arrays
    an mvm runs on / arrays data is read from or placed in), and the segment map's roles
    (plot.array_modes).  The simulator's memory_mode_peak may exceed memory_arrays (arrays
    left in memory mode by an earlier segment) but never undercounts it."""
    from cmswitch.plot import array_modes, mode_counts

    folder = compiled_reports[model]
    report = json.loads((folder / "report.json").read_text())
    flow = folder / "flow.cmsasm"
    r = subprocess.run([str(BIN / "cmswitch-sim"), str(flow), "--json"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    sim = json.loads(r.stdout)["segments"]
    drawn = [mode_counts(seg["modes"]) for seg in array_modes(flow)]
    assert len(report["segments"]) == len(sim) == len(drawn)
    for planned, measured, roles in zip(report["segments"], sim, drawn):
        assert planned["id"] == measured["id"]
        assert planned["compute_arrays"] == measured["compute_arrays"] == roles["compute"]
        assert planned["memory_arrays"] == measured["memory_arrays"] == roles["memory"]
        assert measured["memory_mode_peak"] >= measured["memory_arrays"]
    assert any(m["memory_mode_peak"] > m["memory_arrays"] for m in sim)  # the case that confused


def test_a_report_missing_a_field_is_invalid(compiled_reports):
    report = json.loads((compiled_reports["resnet18"] / "report.json").read_text())
    del report["hardware"]
    with pytest.raises(jsonschema.ValidationError):
        validate(report, "compile")


@pytest.mark.parametrize("model", ["resnet18", "bert_base"])
def test_csv_tables_rebuild_the_report(compiled_reports, model):
    folder = compiled_reports[model]
    report = json.loads((folder / "report.json").read_text())
    segments = list(csv.DictReader((folder / "segments.csv").open()))
    operators = list(csv.DictReader((folder / "operators.csv").open()))
    # the README's totals from the tables alone
    assert sum(int(s["predicted_cycles"]) for s in segments) == report["predicted_cycles"]
    assert sum(int(s["simulated_cycles"]) for s in segments) == report["simulated_cycles"]
    assert [o["name"] for o in operators] == [o["name"] for o in report["operators"]]
    assert {o["op"] for o in operators} >= {"matmul"}
    assert json.loads(segments[0]["operators"]) == report["segments"][0]["operators"]


def test_add_simulation_sums_each_operators_statements_by_hand():
    from cmswitch.api import add_simulation

    report = {"predicted_cycles": 900, "segments": [],
              "operators": [{"name": "fc"}, {"name": "relu"}, {"name": "idle"}]}
    rows = [  # load 100 + 20, run 300; relu 50 and a move of 70; a switch is nobody's
        {"opcode": "CIM.load_weight", "name": "fc", "alone_cycles": 100},
        {"opcode": "CIM.load_weight", "name": "fc", "alone_cycles": 20},
        {"opcode": "CIM.mvm", "name": "fc", "alone_cycles": 300},
        {"opcode": "VEC.relu", "name": "relu", "alone_cycles": 50},
        {"opcode": "MEM.store", "name": "relu", "alone_cycles": 70},  # moves relu's output
        {"opcode": "CM.switch", "name": "CM.switch", "alone_cycles": 1}]
    sim = {"cycles": 1000, "energy": None, "statement_rows": rows,
           "segments": [{"id": 0, "cycles": 1000}]}
    out = add_simulation(report, sim)
    assert [(o["simulated_load_cycles"], o["simulated_run_cycles"], o["simulated_move_cycles"])
            for o in out["operators"]] == [(120, 300, 0), (0, 50, 70), (0, 0, 0)]
    assert out["prediction_error"] == -0.1 and out["simulated_segments"] == [{"id": 0, "cycles": 1000}]
    assert "simulated_run_cycles" not in report["operators"][0]  # the input is not changed


@pytest.mark.parametrize("model", ["resnet18", "bert_base"])
def test_operators_alone_cycles_predicted_as_simulated(compiled_reports, model):
    """The cost model's alone cycles of each operator (api, cost/model.alone_cycles)
    against the simulator's timing of the operator's own statements (shares no code):
    on the bundled models they agree within 1% (plus a cycle of rounding) on every
    operator, so a segment's prediction error comes from how its statements overlap."""
    report = json.loads((compiled_reports[model] / "report.json").read_text())
    assert report["operators"]
    for row in report["operators"]:
        for part in ("load", "run"):
            predicted = row[f"predicted_{part}_cycles"]
            simulated = row[f"simulated_{part}_cycles"]
            assert abs(predicted - simulated) <= 0.01 * simulated + 1, (row["name"], part)
    # the three simulated parts are the simulator's own per-operator alone cycles
    r = subprocess.run([str(BIN / "cmswitch-sim"), str(compiled_reports[model] / "flow.cmsasm"),
                        "--json"], capture_output=True, text=True)
    sim_rows = {o["name"]: o["alone_cycles"] for o in json.loads(r.stdout)["operators"]}
    for row in report["operators"]:
        parts = sum(row[f"simulated_{p}_cycles"] for p in ("load", "run", "move"))
        assert parts == sim_rows.get(row["name"], 0), row["name"]
