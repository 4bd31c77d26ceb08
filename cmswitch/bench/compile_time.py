"""Compile-time benchmark (issue 13): cmswitch against the `cimmlc` baseline, each
compile in a fresh process, in the same run.

``python -m cmswitch.bench.compile_time [MODEL ...]`` (``make bench-compile``) prints a
Markdown table per model: the compiler's own ``compile_seconds`` (interpreter start-up
excluded) and the whole process's wall seconds for cmswitch (its segment MIPs solved
by GLPK, the default, and by HiGHS) and for cimmlc, the ratio cmswitch(GLPK)/cimmlc of
each, segments priced by the DP, segment MIPs solved, and the peak resident memory of
each process (``ru_maxrss`` of that child, from ``os.wait4``).  Models: names of
`models/` files or published configurations (``llama2-7b`` at batch 4, sequence 512).

Each configuration is compiled ``--repeat`` times (default 3, the rounds interleaved so
a burst of load on the machine hits all three strategies alike) and the table gives the
fastest run's seconds, the usual estimate of a command's own cost under noise, and the
largest peak RSS.  Solve counts and plans are the same in every run (compiles are
deterministic); a run whose counts differ is an error.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODELS = ["resnet18", "mobilenet_v2", "vgg16", "llama2-7b"]
RUNS = (("cmswitch", "glpk"), ("cmswitch", "highs"), ("cimmlc", "glpk"))
TRANSFORMER_SHAPE = ("--batch", "4", "--seq", "512")


def _model_args(model: str) -> list[str]:
    onnx = ROOT / "models" / f"{model}.onnx"
    return [str(onnx)] if onnx.is_file() else [model, *TRANSFORMER_SHAPE]


def run(model: str, strategy: str, solver: str) -> dict:
    """Compile `model` with `strategy` / `solver` in a fresh process; returns its JSON
    report plus "wall_seconds" and "peak_rss_mb" of that process.  Raises
    RuntimeError with the compiler's stderr if it fails."""
    cli = Path(sys.executable).parent / "cmswitch"
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "r.json"
        argv = [str(cli), "compile", *_model_args(model), "--strategy", strategy,
                "--solver", solver, "--quiet", "--json", str(report)]
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        err = proc.stderr.read().decode() if proc.stderr else ""
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            raise RuntimeError(f"{model} {strategy}: {err.strip().splitlines()[-1:]}")
        data = json.loads(report.read_text())
    data["wall_seconds"] = wall
    data["peak_rss_mb"] = usage.ru_maxrss / 1024  # KiB on Linux
    return data


def best_of(model: str, strategy: str, solver: str, reports: list[dict]) -> dict:
    """The fastest of `reports` (same configuration) with the largest peak RSS.
    Raises RuntimeError if their predicted cycles or solve counts differ: a compile
    must be deterministic."""
    keys = {(r["predicted_cycles"], r["mip"].get("solves"), r["mip"].get("segment_mips"))
            for r in reports}
    if len(keys) != 1:
        raise RuntimeError(f"{model} {strategy} {solver}: runs differ: {sorted(keys)}")
    best = dict(min(reports, key=lambda r: r["compile_seconds"]))
    best["wall_seconds"] = min(r["wall_seconds"] for r in reports)
    best["peak_rss_mb"] = max(r["peak_rss_mb"] for r in reports)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cmswitch.bench.compile_time",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", default=DEFAULT_MODELS)
    parser.add_argument("--repeat", type=int, default=3,
                        help="fresh-process compiles per configuration (default 3)")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    models = args.models
    print(f"fastest of {args.repeat} fresh-process compiles per row\n")
    print("| model | strategy | solver | compile s | wall s | x cimmlc (compile / wall) "
          "| segments priced | segment MIPs | peak RSS MB | predicted cycles |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for model in models:
        reports: dict[tuple[str, str], list[dict]] = {key: [] for key in RUNS}
        for _ in range(args.repeat):
            for s, v in RUNS:
                reports[s, v].append(run(model, s, v))
        rows = {key: best_of(model, *key, runs) for key, runs in reports.items()}
        base = rows["cimmlc", "glpk"]
        for (strategy, solver), r in rows.items():
            ratio = (f"{r['compile_seconds'] / base['compile_seconds']:.1f} / "
                     f"{r['wall_seconds'] / base['wall_seconds']:.1f}")
            print(f"| {model} | {strategy} | {solver if strategy == 'cmswitch' else '-'} "
                  f"| {r['compile_seconds']:.1f} | {r['wall_seconds']:.1f} | {ratio} "
                  f"| {r['mip'].get('solves', 0)} | {r['mip'].get('segment_mips', 0)} "
                  f"| {r['peak_rss_mb']:.0f} | {r['predicted_cycles']} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
