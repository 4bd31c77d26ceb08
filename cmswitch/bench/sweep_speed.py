"""Sweep wall time (issue 16): a 12-point ResNet-18 sweep (arrays 48/96/192 x
switch_cycles 1/10/100/1000) run on one worker (the points one after another) and on a
local cluster with one worker per core, each from an empty cache, in fresh processes
(``cmswitch sweep``), best of ``--repeat`` runs.

``python -m cmswitch.bench.sweep_speed`` (``make bench-sweep``) prints a Markdown table:
workers, wall seconds (cluster start-up included), points per minute, and the speedup
over one worker.  The rows of both runs must agree (cycles and energy): a sweep's
results do not depend on where its points ran.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GRID = ("arrays=48,96,192", "switch_cycles=1,10,100,1000")


def run(workers: int) -> tuple[float, list[dict]]:
    """Wall seconds of the sweep on `workers` local workers from an empty cache, and
    its CSV rows.  Raises RuntimeError with the tool's last error line if it fails."""
    cli = Path(sys.executable).parent / "cmswitch"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "sweep.csv"
        argv = [str(cli), "sweep", "resnet18", *(f"--set={g}" for g in GRID),
                "--jobs", str(workers), "--cache", str(Path(tmp) / "cache"),
                "--csv", str(out), "--quiet"]
        start = time.perf_counter()
        proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wall = time.perf_counter() - start
        if proc.returncode:
            raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.strip().splitlines()[-1:]}")
        return wall, list(csv.DictReader(io.StringIO(out.read_text())))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cmswitch.bench.sweep_speed",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=2, help="runs per row (default 2)")
    args = parser.parse_args(argv)
    cores = os.cpu_count() or 1
    counts = [1] if cores == 1 else [1, cores]
    best: dict[int, float] = {}
    results: dict[int, list] = {}
    for _ in range(args.repeat):  # interleaved, so a burst of load hits both alike
        for workers in counts:
            wall, rows = run(workers)
            best[workers] = min(best.get(workers, wall), wall)
            results[workers] = rows
    keys = ("arrays", "switch_cycles", "cycles", "energy_pj")
    first = [{k: r[k] for k in keys} for r in results[counts[0]]]
    for workers in counts[1:]:
        if [{k: r[k] for k in keys} for r in results[workers]] != first:
            raise SystemExit(f"error: the {workers}-worker sweep's rows differ from one worker's")
    points = len(first)
    print(f"{points}-point ResNet-18 sweep, fresh process and empty cache per run, "
          f"best of {args.repeat}, {cores} cores\n")
    print("| workers | wall s | points / min | speedup |")
    print("|---|---|---|---|")
    for workers in counts:
        print(f"| {workers} | {best[workers]:.1f} | {60 * points / best[workers]:.1f} | "
              f"{best[counts[0]] / best[workers]:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
