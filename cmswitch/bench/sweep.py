"""`cmswitch sweep`: hardware design-space sweeps (issue 16).

A sweep is every point of a grid (or a list) of hardware fields x models x strategies.
Each point is compiled and simulated (`run_point`); its row holds the point's
parameters, simulated cycles and seconds, the prediction, the lower bound, energy with
its breakdown (when the hardware gives energy figures), TOPS/W and compile seconds.

Execution goes through dask.distributed, one code path for both cases: by default a
`LocalCluster` on 127.0.0.1 with one single-threaded worker process per core (`jobs`),
or an existing cluster given by its scheduler address (``tcp://HOST:PORT``).  A worker
compiles with its MIPs in-process (`jobs=1`); a worker that dies has its points re-run
elsewhere by the scheduler.  Workers need the models: bundled names resolve inside each
worker's installation, files must be on a path every worker sees.

Cache: each finished point is written at once to ``CACHE/<key>.json`` (written to a
temporary file and renamed), so a sweep stopped or broken part-way loses no finished
point, and a re-run skips every cached point.  The key is a SHA-256 of the model (name,
or the file's bytes), batch, sequence, strategy, solver, every hardware field, and the
code version (`code_version`: the bytes of the package's sources and presets), so
changing any of them recomputes.  A failed point is not cached.

Rows come back in grid order whatever order the workers finish in.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import os
import re
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any, Callable, Iterable

from cmswitch.errors import CMSwitchError

DEFAULT_CACHE = ".cmswitch-cache/sweep"
"""Cache folder of a sweep unless `cache` / ``--cache`` says otherwise (relative to the
working directory)."""

ENERGY_COLUMNS = ("compute", "memory_arrays", "buffer", "dram", "programming",
                  "switching", "digital", "static")
"""The simulator's energy categories (`cmswitch.sim.simulator.ENERGY_CATEGORIES`), one
CSV column each (``energy_<category>_pj``)."""

RESULT_COLUMNS = ("arch", "cycles", "seconds", "predicted_cycles", "prediction_error",
                  "lower_bound_cycles", "energy_pj", "tops_per_watt",
                  *(f"energy_{c}_pj" for c in ENERGY_COLUMNS), "compile_seconds",
                  "cached", "error")
"""Columns after the point's own (model, strategy, batch, seq, swept fields)."""

UNITS = {"cycles": "clock cycles", "seconds": "s", "predicted_cycles": "clock cycles",
         "prediction_error": "predicted / simulated - 1",
         "lower_bound_cycles": "clock cycles", "energy_pj": "pJ",
         "tops_per_watt": "TOPS/W (mvm ops / pJ)", "energy_*_pj": "pJ",
         "compile_seconds": "s"}


@dataclass(frozen=True)
class Point:
    """One point of a sweep: a model at a batch / sequence, a strategy, and the hardware
    (`hardware`: every field of the description, `params`: the swept ones).  Picklable,
    so it travels to Dask workers; it names no file of the client's but the model."""

    model: str                 #: a bundled model or configuration name, or an .onnx path
    strategy: str
    params: tuple              #: ((field, value), ...) of the swept hardware fields
    hardware: tuple            #: ((field, value), ...) of the whole description
    batch: int | None = None
    seq: int | None = None
    solver: str = "glpk"
    key: str = field(default="", compare=False)

    def label(self) -> str:
        """``resnet18 cmswitch arrays=48 switch_cycles=100`` (progress, errors)."""
        return " ".join([self.model, self.strategy]
                        + [f"{k}={v}" for k, v in self.params])


@cache
def code_version() -> str:
    """SHA-256 (first 16 hex digits) of every ``.py`` / ``.yaml`` file of the installed
    package (`cmswitch` and its dialects), by relative path and bytes."""
    import cmswitch
    import cmswitch.dialects

    digest = hashlib.sha256()
    for root in sorted({Path(cmswitch.__file__).parent, Path(cmswitch.dialects.__file__).parent}):
        for path in sorted(root.rglob("*")):
            if path.suffix in (".py", ".yaml") and "__pycache__" not in path.parts:
                digest.update(f"{path.relative_to(root)}\0".encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _model_identity(model: str) -> str:
    """What a model contributes to the cache key: its name, or a file's bytes."""
    path = Path(model)
    if model.endswith(".onnx") and path.is_file():
        return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    return "name:" + model


def point_key(point: Point) -> str:
    """The cache key of a point (see the module docstring)."""
    doc = {"model": _model_identity(point.model), "batch": point.batch, "seq": point.seq,
           "strategy": point.strategy, "solver": point.solver,
           "hardware": dict(point.hardware), "code": code_version()}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:32]


def parse_value(text: str) -> int | float | str:
    """A ``--set`` value: an integer, else a float, else the text (a name)."""
    if re.fullmatch(r"[+-]?\d+", text):
        return int(text)
    try:
        return float(text)
    except ValueError:
        return text


def parse_set(items: Iterable[str]) -> dict[str, list]:
    """``--set KEY=V1,V2`` options into {KEY: [V1, V2]}.  Raises CMSwitchError for a
    malformed item, an empty value or a key given twice."""
    grid: dict[str, list] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip().replace("-", "_")
        parts = [v.strip() for v in values.split(",")]
        if not sep or not key or not all(parts):
            raise CMSwitchError(f"--set expects FIELD=VALUE[,VALUE...], got '{item}'")
        if key in grid:
            raise CMSwitchError(f"--set {key} given twice; list its values once: "
                                f"--set {key}=A,B")
        values = [parse_value(v) for v in parts]
        twice = next((v for i, v in enumerate(values) if v in values[:i]), None)
        if twice is not None:
            raise CMSwitchError(f"--set {key}: value {twice} is given twice")
        grid[key] = values
    return grid


def _model_args(model: str, batch: int | None, seq: int | None) -> tuple:
    """(compile input, batch for an ONNX file or None, (batch, seq) of the row)."""
    from cmswitch.bench.evaluate import (
        MODELS,
        MODELS_DIR,
        TRANSFORMER_BATCH,
        TRANSFORMER_SEQ,
    )
    from cmswitch.frontend.configs import CONFIGS

    known = MODELS.get(model)
    if model in CONFIGS or (known and known.transformer):
        b, s = batch or TRANSFORMER_BATCH, seq or TRANSFORMER_SEQ
        from cmswitch.frontend.configs import build_transformer

        return build_transformer(known.source if known else model, b, s), None, (b, s)
    path = MODELS_DIR / known.source if known else Path(model)
    return str(path), batch, (batch or 1, None)


def points_of(models: list[str], strategies: list[str], arch=None,
              grid: dict[str, list] | None = None, points: list[dict] | None = None,
              batch: int | None = None, seq: int | None = None,
              solver: str = "glpk") -> list[Point]:
    """Every point: models x strategies x (the grid's product, or the `points` list of
    field mappings), on hardware `arch` (preset, file, `Arch` or None) with those fields
    replaced.  Each point's hardware is validated here, before any work.  Raises
    CMSwitchError for an unknown model, strategy or field, a bad value, or both `grid`
    and `points`."""
    from cmswitch.api import STRATEGIES, hardware

    if grid and points:
        raise CMSwitchError("give a grid (--set) or a list of points, not both")
    if not models:
        raise CMSwitchError("a sweep needs at least one model")
    for strategy in strategies:
        if strategy not in STRATEGIES:
            raise CMSwitchError(f"unknown strategy '{strategy}' "
                                f"(available: {', '.join(STRATEGIES)})")
    for model in models:
        _check_model(model)
    # a file is named by its absolute path, so workers started elsewhere find it
    models = [str(Path(m).resolve()) if _is_file_model(m) else m for m in models]
    if points is None:
        keys = list(grid or {})
        points = [dict(zip(keys, combo)) for combo in
                  itertools.product(*(grid[k] for k in keys))] if keys else [{}]
    out = []
    for params in points:
        if not isinstance(params, dict):
            raise CMSwitchError(f"a sweep point is a mapping of hardware fields, not {params!r}")
        hw = hardware(arch, **params)
        for model in models:
            for strategy in strategies:
                point = Point(model, strategy, tuple(params.items()),
                              tuple(hw.header_fields().items()), batch, seq, solver)
                out.append(replace(point, key=point_key(point)))
    return out


def _is_file_model(model: str) -> bool:
    from cmswitch.bench.evaluate import MODELS
    from cmswitch.frontend.configs import CONFIGS

    return model not in MODELS and model not in CONFIGS and Path(model).is_file()


def _check_model(model: str) -> None:
    from cmswitch.bench.evaluate import MODELS
    from cmswitch.frontend.configs import CONFIGS

    if model in MODELS or model in CONFIGS or _is_file_model(model):
        return
    raise CMSwitchError(f"unknown model '{model}': not a bundled model "
                        f"({', '.join(MODELS)}) nor a file")


def run_point(point: Point) -> dict[str, Any]:
    """Compile and simulate one point (in a Dask worker, or anywhere); returns its row.
    A CMSwitchError (the model does not fit, a flow rejected) becomes the row's
    ``error``; other exceptions propagate (a bug, reported by the caller)."""
    from cmswitch.api import compile as compile_model
    from cmswitch.arch import arch_from_dict
    from cmswitch.progress import quiet

    row = _row_head(point)
    try:
        arch = arch_from_dict(dict(point.hardware), "sweep point")
        source, onnx_batch, (row["batch"], row["seq"]) = _model_args(
            point.model, point.batch, point.seq)
        with quiet(True):
            plan = compile_model(source, arch=arch, strategy=point.strategy,
                                 solver=point.solver, batch=onnx_batch, jobs=1)
            sim = plan.simulate()
    except CMSwitchError as error:
        row["error"] = str(error)
        return row
    energy = sim["energy"] or {}
    breakdown = {k: round(v, 3) for k, v in energy.get("breakdown_pj", {}).items()}
    row.update({
        "arch": arch.name, "cycles": sim["cycles"], "seconds": sim["seconds"],
        "predicted_cycles": plan.predicted_cycles,
        "prediction_error": round(plan.predicted_cycles / sim["cycles"] - 1, 6)
        if sim["cycles"] else None,
        "lower_bound_cycles": plan.lower_bound_cycles,
        "energy_pj": _rounded(energy.get("total_pj"), 3),
        "tops_per_watt": _rounded(energy.get("tops_per_watt"), 6),
        **{f"energy_{c}_pj": breakdown.get(c) for c in ENERGY_COLUMNS},
        "compile_seconds": round(plan.compile_seconds, 3),
    })
    return row


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _row_head(point: Point) -> dict[str, Any]:
    row: dict[str, Any] = {"model": point.model, "strategy": point.strategy,
                           "batch": point.batch, "seq": point.seq}
    row.update(dict(point.params))
    row.update(dict.fromkeys(RESULT_COLUMNS))
    row["cached"] = False
    return row


class Cache:
    """Finished points, one JSON file per key under `folder` (see module docstring)."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)

    def get(self, point: Point) -> dict | None:
        path = self.folder / f"{point.key}.json"
        try:
            row = json.loads(path.read_text())
        except (OSError, ValueError):
            return None  # absent, or a torn write from a killed run: recompute
        return row if isinstance(row, dict) and row.get("error") is None else None

    def put(self, point: Point, row: dict) -> None:
        """Store a finished row (not a failed one) atomically.  Raises CMSwitchError
        when the folder cannot be written."""
        if row.get("error") is not None:
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = self.folder / f".{point.key}.{os.getpid()}.tmp"
            tmp.write_text(json.dumps(row, sort_keys=True))
            os.replace(tmp, self.folder / f"{point.key}.json")
        except OSError as error:
            raise CMSwitchError(f"{self.folder}: cannot write the sweep cache "
                                f"({error.strerror})") from None


CONNECT_TIMEOUT = 10
"""Seconds `cmswitch sweep --scheduler` waits for the scheduler to answer."""


def _client(scheduler: str | None, jobs: int | None):
    """A dask.distributed Client: of the cluster at `scheduler`, or of a new
    `LocalCluster` on 127.0.0.1 (one single-threaded worker process per core, or
    `jobs`).  Returns (client, cluster or None).  Raises CMSwitchError when the
    scheduler cannot be reached within ``$CMSWITCH_DASK_TIMEOUT`` seconds (default
    `CONNECT_TIMEOUT`)."""
    from distributed import Client, LocalCluster

    if scheduler:
        seconds = os.environ.get("CMSWITCH_DASK_TIMEOUT", str(CONNECT_TIMEOUT))
        try:
            return Client(scheduler, timeout=f"{seconds}s"), None
        except (OSError, TimeoutError, ValueError) as error:
            raise CMSwitchError(f"cannot reach the Dask scheduler at {scheduler}: "
                                f"{str(error).splitlines()[0] if str(error) else type(error).__name__}") from None
    workers = jobs or os.cpu_count() or 1
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                           host="127.0.0.1", dashboard_address="127.0.0.1:0",
                           silence_logs=50)  # any free port: 8787 may be taken
    return Client(cluster), cluster


def execute(points: list[Point], cache: Cache, scheduler: str | None = None,
            jobs: int | None = None,
            on_row: Callable[[Point, dict], None] | None = None) -> list[dict]:
    """Rows of `points` in their order: cached ones read, the others run on Dask
    (`_client`) and cached as each arrives.  `on_row(point, row)` is called once per
    point as its row is known (progress).  Raises CMSwitchError for an unreachable
    scheduler or an unwritable cache; a point that raised is a row with ``error``."""
    rows: dict[int, dict] = {}
    todo = []
    for i, point in enumerate(points):
        row = cache.get(point)
        if row is None:
            todo.append(i)
            continue
        # the cache holds results; the labels (swept fields) are the asking point's,
        # since another sweep may have computed the same hardware under other fields
        rows[i] = {**_row_head(point), **{k: row.get(k) for k in RESULT_COLUMNS},
                   "batch": row.get("batch"), "seq": row.get("seq"), "cached": True}
        if on_row:
            on_row(point, rows[i])
    if todo:
        from distributed import as_completed

        client, cluster = _client(scheduler, jobs)
        try:
            futures = {client.submit(run_point, points[i], key=f"cmswitch-point-{points[i].key}",
                                     pure=False): i for i in todo}
            for future in as_completed(futures):
                i = futures[future]
                try:
                    row = future.result()
                except Exception as error:  # a bug in a worker, or a lost worker
                    row = {**_row_head(points[i]),
                           "error": f"{type(error).__name__}: {error}".splitlines()[0]}
                cache.put(points[i], row)
                rows[i] = row
                if on_row:
                    on_row(points[i], row)
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
    return [rows[i] for i in range(len(points))]


def columns(rows: list[dict]) -> list[str]:
    """The table's columns: the point's (model, strategy, batch, seq, swept fields in
    first-seen order), then `RESULT_COLUMNS`."""
    head = ["model", "strategy", "batch", "seq"]
    for row in rows:
        head.extend(k for k in row if k not in head and k not in RESULT_COLUMNS)
    return head + list(RESULT_COLUMNS)


def to_csv(rows: list[dict]) -> str:
    """The rows as CSV text (empty cells for None)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns(rows), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in writer.fieldnames})
    return out.getvalue()


def to_json(rows: list[dict], params: list[str]) -> str:
    """The rows as a JSON document {"params", "columns", "units", "rows"}."""
    return json.dumps({"params": params, "columns": columns(rows), "units": UNITS,
                       "code_version": code_version(), "rows": rows}, indent=1) + "\n"


def markdown(rows: list[dict], params: list[str]) -> str:
    """A readable table of the sweep (cycles, energy in uJ, TOPS/W, compile s)."""
    head = ["model", "strategy", *params, "cycles", "energy uJ", "TOPS/W",
            "pred err", "compile s", ""]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        if row.get("error"):
            cells = [row["model"], row["strategy"], *(str(row.get(p)) for p in params),
                     "failed", "", "", "", "", row["error"][:60]]
        else:
            energy = row.get("energy_pj")
            tops = row.get("tops_per_watt")
            cells = [row["model"], row["strategy"], *(str(row.get(p)) for p in params),
                     str(row["cycles"]), "-" if energy is None else f"{energy * 1e-6:.1f}",
                     "-" if tops is None else f"{tops:.2f}",
                     f"{row['prediction_error']:+.1%}", f"{row['compile_seconds']:.1f}",
                     "cached" if row.get("cached") else ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def sweep(models: list[str], grid: dict[str, list] | None = None,
          points: list[dict] | None = None, strategies: Iterable[str] = ("cmswitch",),
          arch=None, batch: int | None = None, seq: int | None = None,
          solver: str = "glpk", scheduler: str | None = None, jobs: int | None = None,
          cache: str | os.PathLike = DEFAULT_CACHE,
          on_row: Callable[[Point, dict], None] | None = None) -> list[dict]:
    """Run a sweep (see the module docstring) and return its rows (a list of dicts,
    one per point, in grid order; columns: `columns`).  `grid` maps hardware fields
    to value lists (every combination), `points` lists field mappings instead; `arch`
    is the base hardware (preset, file, `Arch`); `scheduler` an existing Dask
    scheduler's address (default: a local cluster of `jobs` workers, all cores).
    Raises CMSwitchError for bad points before any work."""
    chosen = points_of(list(models), list(strategies), arch, grid, points, batch, seq, solver)
    return execute(chosen, Cache(cache), scheduler, jobs, on_row)


# ----------------------------------------------------------------------------------
# command line: `cmswitch sweep`

_CONFIG_KEYS = ("models", "strategies", "arch", "batch", "seq", "solver", "grid", "points")


def read_config(path: str) -> dict[str, Any]:
    """A sweep file (YAML or JSON): a mapping with any of `_CONFIG_KEYS`, e.g.
    ``{models: [resnet18], grid: {arrays: [48, 96]}}``.  Raises CMSwitchError for an
    unreadable file, a non-mapping or an unknown key (with the nearest one)."""
    import difflib

    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise CMSwitchError(f"{path}: cannot read the sweep file: "
                            f"{str(error).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise CMSwitchError(f"{path}: a sweep file is a mapping of {', '.join(_CONFIG_KEYS)}")
    for key in data:
        if key not in _CONFIG_KEYS:
            near = difflib.get_close_matches(str(key), _CONFIG_KEYS, n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else ""
            raise CMSwitchError(f"{path}: unknown key '{key}'{hint}")
    grid = data.get("grid")
    if grid is not None and (not isinstance(grid, dict) or not all(
            isinstance(v, list) and v for v in grid.values())):
        raise CMSwitchError(f"{path}: 'grid' maps each hardware field to a list of values")
    points = data.get("points")
    if points is not None and not (isinstance(points, list) and points):
        raise CMSwitchError(f"{path}: 'points' is a list of mappings of hardware fields")
    for key in ("batch", "seq"):
        value = data.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value <= 0):
            raise CMSwitchError(f"{path}: '{key}' must be a positive integer, got {value!r}")
    for key in ("models", "strategies"):
        value = data.get(key)
        if isinstance(value, str):
            data[key] = [value]
        elif value is not None and not isinstance(value, list):
            raise CMSwitchError(f"{path}: '{key}' is a list of names")
    return data


def _usage(message: str) -> int:
    """A command-line mistake (a bad --set field or value, no model): exit 2."""
    import sys

    print(f"cmswitch sweep: error: {message}", file=sys.stderr)
    return 2


def run_cli(args) -> int:
    """`cmswitch sweep`: build the points, run them with a progress bar, print the
    table, write --csv / --json / --plot.  Returns 1 when a point failed."""
    import sys

    from tqdm import tqdm

    config = read_config(args.config) if args.config else {}
    grid = dict(config.get("grid") or {})
    try:
        for key, values in parse_set(args.set or []).items():
            grid[key] = values
    except CMSwitchError as error:
        return _usage(str(error))
    models = args.models or config.get("models") or []
    strategies = args.strategies or config.get("strategies") or ["cmswitch"]
    for out in (args.csv, args.json):
        if out and out != "-" and not Path(out).resolve().parent.is_dir():
            raise CMSwitchError(f"{out}: folder {Path(out).resolve().parent} does not exist")
        if out and out != "-" and Path(out).is_dir():
            raise CMSwitchError(f"{out}: is a folder; give a file name")
    try:
        chosen = points_of(models, strategies, args.arch or config.get("arch"),
                           grid or None, config.get("points"),
                           args.batch or config.get("batch"), args.seq or config.get("seq"),
                           args.solver or config.get("solver") or "glpk")
    except CMSwitchError as error:
        if args.config:  # the points came (at least partly) from the file: an input error
            raise
        return _usage(str(error))
    params = list(grid) if grid else list(dict.fromkeys(
        k for p in config.get("points") or [] for k in p))
    with tqdm(total=len(chosen), file=sys.stderr, unit="point", dynamic_ncols=True,
              disable=args.quiet or None) as bar:
        def advance(point: Point, row: dict) -> None:
            bar.set_description(point.label()[:50])
            bar.update(1)

        rows = execute(chosen, Cache(args.cache), args.scheduler, args.jobs, advance)
    text_out = sys.stderr if "-" in (args.csv, args.json) else sys.stdout
    text_out.write(markdown(rows, params))
    cached = sum(1 for r in rows if r.get("cached"))
    failed = [r for r in rows if r.get("error")]
    text_out.write(f"{len(rows)} points: {len(rows) - cached - len(failed)} run, "
                   f"{cached} from the cache ({args.cache}), {len(failed)} failed\n")
    for path, text in ((args.csv, to_csv(rows) if args.csv else ""),
                       (args.json, to_json(rows, params) if args.json else "")):
        if path == "-":
            sys.stdout.write(text)
        elif path:
            Path(path).write_text(text)
    if args.plot:
        from cmswitch.plot import sweep_plots

        for path in sweep_plots(rows, params, args.plot):
            print(f"wrote {path}", file=sys.stderr)
    for row in failed:
        print(f"error: {row['model']} {row['strategy']}: {row['error']}", file=sys.stderr)
    return 1 if failed else 0


def add_sweep_parser(sub):
    """Register the `sweep` subcommand on an argparse subparsers object."""
    import argparse

    from cmswitch.tools import arch_spec

    def positive(text: str) -> int:
        if not text.isdigit() or int(text) <= 0:
            raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
        return int(text)

    s = sub.add_parser(
        "sweep", help="hardware design-space sweep: fields x models x strategies",
        description="Compile and simulate every point of a grid of hardware fields x "
                    "models x strategies, on every local core or an existing Dask cluster; "
                    "finished points are cached and skipped when the sweep is run again.")
    s.add_argument("models", nargs="*", metavar="MODEL",
                   help="bundled models or configurations (resnet18, bert-base, ...) or .onnx files")
    s.add_argument("--set", action="append", metavar="FIELD=V1,V2,...",
                   help="sweep a hardware field over these values (repeat for a grid), "
                        "e.g. --set arrays=48,96,192 --set switch_cycles=1,100")
    s.add_argument("--config", metavar="FILE",
                   help="a YAML/JSON sweep file: models, strategies, arch, batch, seq, "
                        "solver, grid {field: [values]} or points [{field: value}, ...]")
    s.add_argument("--arch", default=None, metavar="PRESET|FILE", type=arch_spec,
                   help="the base hardware the fields are changed on (default dynaplasia)")
    from cmswitch.api import STRATEGIES

    s.add_argument("--strategies", nargs="+", metavar="STRATEGY", default=None,
                   choices=list(STRATEGIES), help="strategies per point (default cmswitch): "
                   + ", ".join(STRATEGIES))
    s.add_argument("--batch", type=positive, default=None,
                   help="batch (transformers default 4; ONNX files with a dynamic batch)")
    s.add_argument("--seq", type=positive, default=None,
                   help="transformer sequence length (default 512)")
    s.add_argument("--solver", choices=["glpk", "highs"], default=None, help="MIP solver")
    s.add_argument("--scheduler", metavar="tcp://HOST:PORT", default=None,
                   help="run the points on this existing Dask cluster (default: a local "
                        "cluster, one worker per core)")
    s.add_argument("--jobs", type=positive, default=None, metavar="N",
                   help="local worker processes (default: every core)")
    s.add_argument("--cache", default=DEFAULT_CACHE, metavar="DIR",
                   help=f"finished points (default {DEFAULT_CACHE}); cached points are not re-run")
    s.add_argument("--csv", metavar="FILE", help="write the table as CSV (- for stdout)")
    s.add_argument("--json", metavar="FILE", help="write the table as JSON (- for stdout)")
    s.add_argument("--plot", metavar="DIR",
                   help="write latency / energy against each field and the Pareto front "
                        "(PNG and SVG) into this folder")
    s.add_argument("--quiet", action="store_true", help="no progress bar on stderr")
    s.set_defaults(func=run_cli)
    return s
