"""Hardware sweeps (issue 16): points, the cache, and execution on a real Dask cluster
(a scheduler and two workers started as separate processes on 127.0.0.1, as a user
starts them by hand) and on the default local cluster."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cmswitch.api import compile as compile_model
from cmswitch.api import hardware
from cmswitch.arch import load_arch
from cmswitch.bench import sweep as sw
from cmswitch.errors import CMSwitchError
from cmswitch.tools.cli import main as cli_main

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
RESULTS = ("cycles", "predicted_cycles", "energy_pj", "tops_per_watt", "arch")


# ----------------------------------------------------------------------------------
# points


def test_a_grid_is_every_combination_in_order():
    points = sw.points_of(["resnet18"], ["cmswitch", "cimmlc"], None,
                          {"arrays": [48, 96], "switch_cycles": [1, 100]})
    got = [(dict(p.params)["arrays"], dict(p.params)["switch_cycles"], p.strategy)
           for p in points]
    assert got == [(48, 1, "cmswitch"), (48, 1, "cimmlc"), (48, 100, "cmswitch"),
                   (48, 100, "cimmlc"), (96, 1, "cmswitch"), (96, 1, "cimmlc"),
                   (96, 100, "cmswitch"), (96, 100, "cimmlc")]
    assert len({p.key for p in points}) == 8
    # the point's hardware is the base with the field replaced
    assert dict(points[0].hardware)["arrays"] == 48
    assert dict(points[0].hardware)["rows"] == load_arch().rows


def test_set_options_parse_to_numbers():
    assert sw.parse_set(["arrays=48,96", "clock-mhz=200.5"]) == {
        "arrays": [48, 96], "clock_mhz": [200.5]}
    with pytest.raises(CMSwitchError, match="FIELD=VALUE"):
        sw.parse_set(["arrays"])
    with pytest.raises(CMSwitchError, match="given twice"):
        sw.parse_set(["arrays=1", "arrays=2"])


@pytest.mark.parametrize("grid, message", [
    ({"arrayz": [48]}, "unknown hardware field 'arrayz' (did you mean 'arrays'?)"),
    ({"arrays": [0]}, "field 'arrays'"),
    ({"arrays": [48.5]}, "field 'arrays'"),
    ({"mvm_pj": [-1.0]}, "field 'mvm_pj'"),
])
def test_a_bad_point_fails_before_any_work(grid, message):
    with pytest.raises(CMSwitchError) as info:
        sw.points_of(["resnet18"], ["cmswitch"], None, grid)
    assert message in str(info.value)


def test_unknown_model_and_strategy_are_refused():
    with pytest.raises(CMSwitchError, match="unknown model 'nosuch'"):
        sw.points_of(["nosuch"], ["cmswitch"])
    with pytest.raises(CMSwitchError, match="unknown strategy 'fast'"):
        sw.points_of(["resnet18"], ["fast"])


def test_the_key_follows_model_hardware_strategy_and_code():
    a = sw.points_of(["resnet18"], ["cmswitch"], None, {"arrays": [48]})[0]
    same = sw.points_of(["resnet18"], ["cmswitch"], None, {"arrays": [48]})[0]
    other_hw = sw.points_of(["resnet18"], ["cmswitch"], None, {"arrays": [49]})[0]
    other_strategy = sw.points_of(["resnet18"], ["cimmlc"], None, {"arrays": [48]})[0]
    assert a.key == same.key
    assert len({a.key, other_hw.key, other_strategy.key}) == 3
    assert len(sw.code_version()) == 16


def test_a_sweep_file_with_a_typo_is_refused(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("models: [resnet18]\ngird: {arrays: [48]}\n")
    with pytest.raises(CMSwitchError, match="unknown key 'gird' \\(did you mean 'grid'\\?\\)"):
        sw.read_config(str(path))


# ----------------------------------------------------------------------------------
# the API takes hardware objects


def test_compile_with_overrides_equals_compile_with_a_file(tmp_path):
    fields = load_arch().model_dump(exclude_none=True)
    fields.update(name="dynaplasia.arrays-48", arrays=48)
    path = tmp_path / "hw.json"
    path.write_text(json.dumps(fields))
    model = str(ROOT / "models" / "resnet18.onnx")
    by_file = compile_model(model, arch=str(path), jobs=1)
    by_override = compile_model(model, arrays=48, jobs=1)
    by_object = compile_model(model, arch=load_arch().model_copy(update={"arrays": 48}), jobs=1)
    assert by_override.flow == by_file.flow == by_object.flow
    assert by_override.arch.name == by_object.arch.name == "dynaplasia.arrays-48"


def test_hardware_keeps_a_preset_that_is_not_changed():
    assert hardware(None, arrays=96) == load_arch()
    assert hardware(load_arch()).name == "dynaplasia"


# ----------------------------------------------------------------------------------
# execution


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A Dask scheduler and a worker process with two single-threaded workers, started
    with the `dask` command on 127.0.0.1; yields the scheduler's address."""
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    logs = tmp_path_factory.mktemp("dask")
    env = {**os.environ, "DASK_DISTRIBUTED__WORKER__DAEMON": "True"}
    scheduler = subprocess.Popen(
        [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
         "--no-dashboard"], stdout=subprocess.DEVNULL,
        stderr=open(logs / "scheduler.log", "w"), env=env)
    workers = subprocess.Popen(
        [str(BIN / "dask"), "worker", address, "--nworkers", "2", "--nthreads", "1",
         "--host", "127.0.0.1", "--no-dashboard"], stdout=subprocess.DEVNULL,
        stderr=open(logs / "workers.log", "w"), env=env)
    try:
        from distributed import Client

        deadline = time.monotonic() + 60
        with Client(address, timeout="30s") as client:
            while len(client.scheduler_info()["workers"]) < 2:
                if time.monotonic() > deadline:
                    pytest.fail("the Dask workers did not start: "
                                + (logs / "workers.log").read_text()[-500:])
                time.sleep(0.2)
        yield address
    finally:
        for proc in (workers, scheduler):
            proc.terminate()
        for proc in (workers, scheduler):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


GRID = {"arrays": [48, 96, 192], "switch_cycles": [1, 100]}


@pytest.fixture(scope="module")
def on_cluster(cluster, tmp_path_factory):
    """The 3 x 2 ResNet-18 sweep of the issue, run on the cluster: (rows, cache)."""
    cache = tmp_path_factory.mktemp("cache")
    seen = []
    rows = sw.sweep(["resnet18"], GRID, scheduler=cluster, cache=cache,
                    on_row=lambda point, row: seen.append(point.key))
    assert len(seen) == 6
    return rows, cache


def test_a_sweep_runs_on_a_dask_cluster(on_cluster):
    rows, _ = on_cluster
    assert [(r["arrays"], r["switch_cycles"]) for r in rows] == [
        (48, 1), (48, 100), (96, 1), (96, 100), (192, 1), (192, 100)]
    for row in rows:
        assert row["error"] is None, row["error"]
        assert row["cycles"] > 0 and row["energy_pj"] > 0 and not row["cached"]
        parts = sum(row[f"energy_{c}_pj"] for c in sw.ENERGY_COLUMNS)
        assert parts == pytest.approx(row["energy_pj"], rel=1e-9)
    # more arrays, fewer cycles (ResNet-18 does not fit 48 arrays' weights at once)
    by_arrays = {r["arrays"]: r["cycles"] for r in rows if r["switch_cycles"] == 1}
    assert by_arrays[48] > by_arrays[96] > by_arrays[192]


def test_a_rerun_compiles_nothing(on_cluster):
    rows, cache = on_cluster
    # all six come from the cache: the (unreachable) scheduler is never contacted
    again = sw.sweep(["resnet18"], GRID, scheduler="tcp://127.0.0.1:1", cache=cache)
    assert all(r["cached"] for r in again)
    assert [{k: r[k] for k in RESULTS} for r in again] == \
        [{k: r[k] for k in RESULTS} for r in rows]


def test_the_local_cluster_gives_the_clusters_results(on_cluster, tmp_path):
    rows, _ = on_cluster
    wanted = [r for r in rows if r["arrays"] == 48]
    local = sw.sweep(["resnet18"], {"arrays": [48], "switch_cycles": [1, 100]}, jobs=2,
                     cache=tmp_path)
    assert [{k: r[k] for k in RESULTS} for r in local] == \
        [{k: r[k] for k in RESULTS} for r in wanted]


def test_the_cli_writes_csv_with_latency_and_energy(cluster, on_cluster, tmp_path, capsys):
    _, cache = on_cluster
    out = tmp_path / "sweep.csv"
    code = cli_main(["sweep", "resnet18", "--set", "arrays=48,96,192",
                     "--set", "switch_cycles=1,100", "--scheduler", cluster,
                     "--cache", str(cache), "--csv", str(out), "--quiet"])
    assert code == 0
    table = list(csv.DictReader(io.StringIO(out.read_text())))
    assert len(table) == 6
    assert {"cycles", "seconds", "energy_pj", "tops_per_watt", "arrays",
            "switch_cycles"} <= set(table[0])
    assert all(float(r["energy_pj"]) > 0 and int(r["cycles"]) > 0 for r in table)
    assert "6 points: 0 run, 6 from the cache" in capsys.readouterr().out


def test_a_failed_point_loses_no_finished_point(cluster, tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx file")
    cache = tmp_path / "cache"
    rows = sw.sweep(["resnet18", str(broken)], {"arrays": [96]}, scheduler=cluster,
                    cache=cache)
    assert rows[0]["error"] is None and rows[1]["error"]
    assert len(list(cache.glob("*.json"))) == 1  # the finished point, not the failed one
    again = sw.sweep(["resnet18"], {"arrays": [96]}, scheduler="tcp://127.0.0.1:1",
                     cache=cache)
    assert again[0]["cached"]


def test_an_unreachable_scheduler_is_one_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CMSWITCH_DASK_TIMEOUT", "1")  # nothing listens on port 1
    code = cli_main(["sweep", "resnet18", "--set", "arrays=48", "--quiet",
                     "--scheduler", "tcp://127.0.0.1:1", "--cache", str(tmp_path)])
    assert code == 1
    err = capsys.readouterr().err
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:1" in err
    assert "Traceback" not in err


def test_pareto_front_by_hand():
    from cmswitch.plot import pareto_front

    points = [(1.0, 5.0), (2.0, 3.0), (3.0, 4.0), (4.0, 1.0), (2.0, 3.0)]
    # (3, 4) is beaten by (2, 3); the second (2, 3) equals the first
    assert pareto_front(points) == [0, 1, 3]


def test_the_sweep_json_is_a_valid_report(on_cluster):
    from report_schema import validate

    rows, _ = on_cluster
    doc = json.loads(sw.to_json(rows, ["arrays", "switch_cycles"]))
    validate(doc, "sweep")
    assert doc["params"] == ["arrays", "switch_cycles"]


def test_plots_are_written(on_cluster, tmp_path):
    from cmswitch.plot import sweep_plots

    rows, _ = on_cluster
    paths = sweep_plots(rows, ["arrays", "switch_cycles"], tmp_path)
    assert sorted(p.name for p in paths) == sorted(
        f"{stem}.{ext}" for stem in ("sweep_arrays", "sweep_switch_cycles", "pareto")
        for ext in ("png", "svg"))
    assert all(p.stat().st_size > 1000 for p in paths)


def test_a_cached_point_carries_the_asking_sweeps_fields(on_cluster, tmp_path):
    """The same hardware reached through another field (global_buffer_bytes at its
    default is the 96-array, 1-cycle point) comes from the cache labelled by this
    sweep's field, not by the sweep that computed it (a new user's report)."""
    from cmswitch.plot import sweep_plots

    rows, cache = on_cluster
    again = sw.sweep(["resnet18"], {"global_buffer_bytes": [81920]},
                     scheduler="tcp://127.0.0.1:1", cache=cache)
    (row,) = again
    assert row["cached"] and row["global_buffer_bytes"] == 81920
    assert "arrays" not in row and "switch_cycles" not in row
    assert row["cycles"] == next(r["cycles"] for r in rows
                                 if (r["arrays"], r["switch_cycles"]) == (96, 1))
    assert sweep_plots(again, ["global_buffer_bytes"], tmp_path)  # no KeyError


def test_a_relative_model_path_is_made_absolute_for_the_workers(tmp_path, monkeypatch):
    model = Path(__file__).resolve().parent.parent / "models" / "resnet18.onnx"
    (tmp_path / "m.onnx").write_bytes(model.read_bytes())
    monkeypatch.chdir(tmp_path)
    (point,) = sw.points_of(["m.onnx"], ["cmswitch"], None, {"arrays": [96]})
    assert point.model == str(tmp_path / "m.onnx")


def test_sweep_usage_errors_exit_2(capsys):
    assert cli_main(["sweep", "resnet18", "--set", "arrayz=4", "--quiet"]) == 2
    assert "did you mean 'arrays'?" in capsys.readouterr().err
    assert cli_main(["sweep", "--set", "arrays=48", "--quiet"]) == 2
    with pytest.raises(SystemExit) as info:  # argparse: an unknown strategy
        cli_main(["sweep", "resnet18", "--strategies", "cmswitc"])
    assert info.value.code == 2


def test_a_value_given_twice_is_refused():
    with pytest.raises(CMSwitchError, match="value 48 is given twice"):
        sw.parse_set(["arrays=48,48"])
