"""Compile-time benchmark: wall time and segment-MIP solve counts per model and solver.

``python -m cmswitch.bench.compile_time [MODEL ...]`` (``make bench-compile``) compiles
each model in a fresh process (so the MIP cache starts empty) with GLPK and with HiGHS
and prints a Markdown table: compile seconds (as reported by the compiler, excluding
interpreter start-up), unique MIP solves, cache hits, segments, predicted cycles.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODELS = [
    str(ROOT / "models" / "resnet18.onnx"),
    str(ROOT / "models" / "bert_base.onnx"),
    str(ROOT / "models" / "llama2_7b_2layers.onnx"),
    "llama2-7b",
]
SOLVERS = ("glpk", "highs")


def run(model: str, solver: str) -> dict:
    """Compile `model` with `solver` in a fresh process; returns its JSON report."""
    cli = Path(sys.executable).parent / "cmswitch"
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "r.json"
        subprocess.run([str(cli), "compile", model, "--solver", solver, "--json", str(report)],
                       check=True, capture_output=True, text=True)
        return json.loads(report.read_text())


def main(argv: list[str] | None = None) -> int:
    models = (argv if argv is not None else sys.argv[1:]) or DEFAULT_MODELS
    print("| model | solver | compile s | MIP solves | cache hits | segments | predicted cycles |")
    print("|---|---|---|---|---|---|---|")
    for model in models:
        for solver in SOLVERS:
            r = run(model, solver)
            print(f"| {Path(model).stem if model.endswith('.onnx') else model} | {solver} "
                  f"| {r['compile_seconds']:.1f} | {r['mip']['solves']} | {r['mip']['cache_hits']} "
                  f"| {len(r['segments'])} | {r['predicted_cycles']} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
