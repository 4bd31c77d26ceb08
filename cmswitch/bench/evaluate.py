"""`cmswitch bench` (`make bench`): the evaluation table of DESIGN.md §7 and its charts.

Compiles and simulates the paper's model set under every strategy of
`cmswitch.api.STRATEGIES` (read at run time) on the default hardware, plus ResNet-18,
BERT-base and LLaMA2-7B on its fused variant (`dynaplasia-fused`) and BERT, LLaMA2-7B
and OPT-13B on `prime`; prints one Markdown row per model and hardware:
simulated cycles per strategy, speedup of cmswitch over each baseline (baseline cycles /
cmswitch cycles), cmswitch's latency over the lower bound, its switch share, and the
compile seconds per strategy; then the geometric mean of the speedups.  `--json FILE`
writes the same, plus every strategy's predicted cycles and prediction error
(predicted / simulated - 1), as ``{"rows": [...], "geomean_speedup_vs_cimmlc": x, ...}``
(DESIGN.md §8), `--plot DIR` the charts (cmswitch/plot.py), `--sweep` adds the
transformer sweep (batch x sequence), `--decode` the LLM decode step (batch x KV-cache
length).

Each compile starts with an empty segment-MIP cache, so compile seconds are those of a
fresh `cmswitch compile` (less interpreter start-up), whatever ran before.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from statistics import geometric_mean
from typing import Any

from cmswitch.errors import CMSwitchError
from cmswitch.tools import arch_spec

ROOT = Path(__file__).resolve().parents[2]
MODELS_DIR = ROOT / "models"

# Paper settings (Zhao et al., ASPLOS 2025, evaluation section; DESIGN.md §9.1: "the
# paper's model set is evaluated at its own settings (transformers at batch 4-16,
# sequence 32-2048; CNNs at batch 1 and 16)").
CNN_BATCH = 1
"""CNN batch.  The bundled ONNX exports fix batch 1 (no dynamic batch axis), so the
paper's batch-16 CNN runs are not part of the table."""
TRANSFORMER_BATCH = 4
"""Transformer prefill batch of the main table: the low end of the paper's 4-16."""
TRANSFORMER_SEQ = 512
"""Transformer prefill sequence length of the main table (the paper's range 32-2048)."""
SWEEP_BATCHES = (4, 8, 16)
SWEEP_SEQS = (32, 128, 512, 2048)
"""The transformer sweep (`--sweep`): every batch x every sequence length."""

DECODE_MODELS = ("llama2-7b",)
DECODE_BATCHES = (1, 16)
DECODE_CONTEXTS = (128, 4096)
"""The decode table (`--decode`): one decode step of each DECODE_MODELS model at every
batch x KV-cache length (issue 17)."""

DEFAULT_ARCH = "dynaplasia"
PRIME_ARCH = "prime"
PRIME_MODELS = ("bert-base", "llama2-7b", "opt-13b")
"""Models also evaluated on the PRIME preset (the paper's second platform)."""
FUSED_ARCH = "dynaplasia-fused"
FUSED_MODELS = ("resnet18", "bert-base", "llama2-7b")
"""Models also evaluated on the default chip with element-wise fusion (issue 17,
DESIGN.md §9.13): every strategy's flow then hands element-wise inputs over as streams."""
OURS = "cmswitch"
MAIN_BASELINE = "cimmlc"


@dataclass(frozen=True)
class Model:
    """A model of the set: an ONNX file under models/ (CNN) or a published transformer
    configuration built by cmswitch.frontend.configs (`source` is its name)."""

    name: str
    source: str
    transformer: bool


MODELS: dict[str, Model] = {m.name: m for m in (
    Model("mobilenet_v2", "mobilenet_v2.onnx", False),
    Model("resnet18", "resnet18.onnx", False),
    Model("vgg16", "vgg16.onnx", False),
    Model("bert-base", "bert-base", True),
    Model("bert-large", "bert-large", True),
    Model("llama2-7b", "llama2-7b", True),
    Model("opt-6.7b", "opt-6.7b", True),
    Model("opt-13b", "opt-13b", True),
)}
QUICK_MODELS = ("resnet18", "bert-base")


@dataclass(frozen=True)
class Workload:
    """One table row: a model at a batch (and sequence length) on a hardware."""

    model: Model
    arch: str
    batch: int
    seq: int | None
    kv_len: int | None = None
    """Set for a decode step (one token per sequence against a cache of kv_len)."""

    @property
    def label(self) -> str:
        shape = f"b{self.batch}" + (f" s{self.seq}" if self.seq else "")
        if self.kv_len:
            shape = f"b{self.batch} decode L{self.kv_len}"
        return f"{self.model.name} {shape} @ {self.arch}"


def main_workloads(models: list[str | Model], archs: list[str] | None, batch: int,
                   seq: int) -> list[Workload]:
    """The main table's rows: each model (a name of `MODELS` or a `Model`) on the
    default hardware, for FUSED_MODELS on its fused variant and for PRIME_MODELS on
    prime; or, when `archs` is given, each
    model on each of those.  Transformers run prefill at `batch` x `seq`, CNNs (and a
    user's ONNX file) at CNN_BATCH."""
    rows = []
    for model in models:
        model = MODELS[model] if isinstance(model, str) else model
        shape = (batch, seq) if model.transformer else (CNN_BATCH, None)
        known = model.name in MODELS
        prime = [PRIME_ARCH] if model.name in PRIME_MODELS and known else []
        fused = [FUSED_ARCH] if model.name in FUSED_MODELS and known else []
        targets = archs or [DEFAULT_ARCH] + fused + prime
        rows.extend(Workload(model, arch, *shape) for arch in targets)
    return rows


def sweep_workloads(models: list[str | Model], archs: list[str] | None) -> list[Workload]:
    """The sweep's rows: each transformer of `models` at SWEEP_BATCHES x SWEEP_SEQS on
    the default hardware (or each of `archs`)."""
    chosen = [MODELS[m] if isinstance(m, str) else m for m in models]
    return [Workload(model, arch, b, s)
            for model in chosen if model.transformer
            for arch in archs or [DEFAULT_ARCH]
            for b in SWEEP_BATCHES for s in SWEEP_SEQS]


def decode_workloads(models: list[str | Model], archs: list[str] | None) -> list[Workload]:
    """The decode table's rows: each DECODE_MODELS model among `models` at
    DECODE_BATCHES x DECODE_CONTEXTS on the default hardware (or each of `archs`)."""
    chosen = [MODELS[m] if isinstance(m, str) else m for m in models]
    return [Workload(model, arch, b, None, kv)
            for model in chosen if model.name in DECODE_MODELS
            for arch in archs or [DEFAULT_ARCH]
            for b in DECODE_BATCHES for kv in DECODE_CONTEXTS]


def _model_input(w: Workload):
    """What `cmswitch.api.compile` takes: an ONNX path or a freshly built module (compile
    rewrites the module, so each strategy gets its own)."""
    if not w.model.transformer:
        return str(MODELS_DIR / w.model.source)
    from cmswitch.frontend.configs import build_transformer

    if w.kv_len:
        return build_transformer(w.model.source, w.batch, phase="decode", kv_len=w.kv_len)
    return build_transformer(w.model.source, w.batch, w.seq)


def _dynamic_batch(w: Workload) -> int | None:
    """`w.batch` for an ONNX file whose inputs leave axis 0 symbolic (a user's export
    with a dynamic batch), else None (the bundled CNNs fix batch 1)."""
    if w.model.transformer:
        return None
    import onnx

    model = onnx.load(str(MODELS_DIR / w.model.source), load_external_data=False)
    inits = {t.name for t in model.graph.initializer}
    for vi in model.graph.input:
        dims = vi.type.tensor_type.shape.dim if vi.name not in inits else ()
        if dims and not dims[0].HasField("dim_value"):
            return w.batch
    return None


def run_strategy(w: Workload, strategy: str, plot_dir: Path | None = None) -> dict[str, Any]:
    """Compile and simulate one workload with one strategy.  Returns {"cycles"
    (simulated), "predicted_cycles", "lower_bound_cycles", "switch_share" (fraction of
    cycles), "energy_pj" (simulated; None without energy figures), "compile_seconds",
    "segments"}.  With `plot_dir`, also draws the plan's
    segment map and timeline there.  Raises CMSwitchError from the compiler or the
    simulator (a flow the simulator rejects)."""
    from cmswitch.api import compile as compile_model

    plan = compile_model(_model_input(w), arch=w.arch, strategy=strategy,
                         batch=_dynamic_batch(w))
    report = plan.simulate()
    if plot_dir is not None:
        from cmswitch.plot import plot_plan

        plot_plan(plan, plot_dir)
    extra = {}
    if w.kv_len:
        from cmswitch.api import kv_cache

        extra["kv_cache_bytes_by_place"] = kv_cache(plan.operators)["bytes_by_place"]
    return {**extra, "cycles": report["cycles"], "predicted_cycles": plan.predicted_cycles,
            "lower_bound_cycles": plan.lower_bound_cycles,
            "switch_share": report["switch_share"],
            "energy_pj": (report["energy"] or {}).get("total_pj"),
            "compile_seconds": plan.compile_seconds, "segments": len(plan.segments)}


def make_row(w: Workload, results: dict[str, dict | str]) -> dict[str, Any]:
    """One JSON row from per-strategy results (a dict from `run_strategy`, or the error
    message of a failed run).  Speedups are baseline cycles / cmswitch cycles, energy
    savings baseline energy / cmswitch energy; None when either run failed (or, for
    energy, the hardware gives no energy figures)."""
    ok = {s: r for s, r in results.items() if isinstance(r, dict)}
    ours = ok.get(OURS)
    speedup = {s: (round(r["cycles"] / ours["cycles"], 4) if ours and ours["cycles"] else None)
               for s, r in results.items() if s != OURS and isinstance(r, dict)}
    speedup.update({s: None for s in results if s != OURS and s not in ok})
    bound = next((r["lower_bound_cycles"] for r in ok.values()), None)
    row = {
        "model": w.model.name, "arch": w.arch, "batch": w.batch, "seq": w.seq,
        **({"phase": "decode", "kv_len": w.kv_len,
            "kv_cache_bytes_by_place": ours.get("kv_cache_bytes_by_place") if ours else None}
           if w.kv_len else {}),
        "cycles": {s: (ok[s]["cycles"] if s in ok else None) for s in results},
        "predicted_cycles": {s: (ok[s]["predicted_cycles"] if s in ok else None) for s in results},
        "prediction_error": {s: (round(ok[s]["predicted_cycles"] / ok[s]["cycles"] - 1, 4)
                                 if s in ok and ok[s]["cycles"] else None) for s in results},
        "speedup": speedup,
        "speedup_vs_cimmlc": speedup.get(MAIN_BASELINE),
        "lower_bound_cycles": bound,
        "latency_over_bound": (round(ours["cycles"] / bound, 4) if ours and bound else None),
        "switch_share": ours["switch_share"] if ours else None,
        "energy_pj": {s: (_round(ok[s].get("energy_pj")) if s in ok else None) for s in results},
        "energy_saving": {s: (round(r["energy_pj"] / ours["energy_pj"], 4)
                              if ours and ours.get("energy_pj") and r.get("energy_pj")
                              else None)
                          for s, r in ok.items() if s != OURS},
        "compile_seconds": {s: (round(ok[s]["compile_seconds"], 3) if s in ok else None)
                            for s in results},
        "segments": {s: (ok[s]["segments"] if s in ok else None) for s in results},
    }
    errors = {s: r for s, r in results.items() if isinstance(r, str)}
    if errors:
        row["errors"] = errors
    return row


def geomean(values) -> float | None:
    """Geometric mean of the values that are not None (None when there are none)."""
    good = [v for v in values if v is not None]
    return geometric_mean(good) if good else None


def summarize(rows: list[dict[str, Any]], baselines: list[str]) -> dict[str, Any]:
    """The JSON document of a table: rows, geometric means of the speedups."""
    means = {b: _round(geomean(r["speedup"].get(b) for r in rows)) for b in baselines}
    energy = {b: _round(geomean(r.get("energy_saving", {}).get(b) for r in rows))
              for b in baselines}
    return {"rows": rows, "geomean_speedup_vs_cimmlc": means.get(MAIN_BASELINE),
            "geomean_speedup": means, "geomean_energy_saving": energy}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def markdown(doc: dict[str, Any], strategies: list[str], title: str) -> str:
    """The Markdown table of `summarize(...)`'s document (decode rows: the KV-cache
    length in the sequence column, headed ``kv-len``)."""
    baselines = [s for s in strategies if s != OURS]
    decode = any(r.get("kv_len") for r in doc["rows"])
    head = (["model", "hw", "batch", "kv-len" if decode else "seq"] + [f"cycles {s}" for s in strategies]
            + [f"speedup vs {b}" for b in baselines]
            + ["cmswitch predicted / simulated - 1", "latency / bound", "switch share",
               "cmswitch energy uJ"] + [f"energy saving vs {b}" for b in baselines]
            + ["compile s (" + " / ".join(strategies) + ")"])
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in doc["rows"]:
        cells = [r["model"], r["arch"], str(r["batch"]), str(r.get("kv_len") or r["seq"] or "-")]
        cells += [_int(r["cycles"][s]) for s in strategies]
        cells += [_times(r["speedup"].get(b)) for b in baselines]
        error = r.get("prediction_error", {}).get(OURS)
        cells += ["n/a" if error is None else f"{100 * error:+.1f}%",
                  _fixed(r["latency_over_bound"], 2),
                  "n/a" if r["switch_share"] is None else f"{100 * r['switch_share']:.2f}%"]
        energy = r.get("energy_pj", {}).get(OURS)
        cells += ["n/a" if energy is None else f"{energy * 1e-6:.1f}"]
        cells += [_times(r.get("energy_saving", {}).get(b)) for b in baselines]
        cells += [" / ".join(_fixed(r["compile_seconds"][s], 1) for s in strategies)]
        lines.append("| " + " | ".join(cells) + " |")
    mean = ["**geomean**", "", "", ""] + [""] * len(strategies)
    mean += [f"**{_times(doc['geomean_speedup'].get(b))}**" for b in baselines] + [""] * 4
    mean += [f"**{_times(doc.get('geomean_energy_saving', {}).get(b))}**"
             for b in baselines] + [""]
    lines.append("| " + " | ".join(mean) + " |")
    return "\n".join(lines) + "\n"


def _int(value) -> str:
    return "error" if value is None else str(value)


def _fixed(value, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _times(value) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def run_table(workloads: list[Workload], strategies: list[str], progress,
              plot_dir: Path | None = None) -> tuple[list[dict], list[str]]:
    """Run every workload under every strategy; returns (rows, failure messages)."""
    rows, failures = [], []
    for w in workloads:
        results: dict[str, dict | str] = {}
        for strategy in strategies:
            progress.set_description(f"{w.label} {strategy}")
            try:
                results[strategy] = run_strategy(
                    w, strategy, plot_dir if strategy == OURS else None)
            except CMSwitchError as e:
                results[strategy] = str(e)
                failures.append(f"{w.label} {strategy}: {e}")
            progress.update(1)
        rows.append(make_row(w, results))
    return rows, failures


def _models_arg(args: argparse.Namespace) -> list[Model]:
    """The models of the run: the named ones in the set's order, then the user's
    `.onnx` files in the order given.  Raises CMSwitchError for an entry that is
    neither a model of the set nor an existing `.onnx` file."""
    chosen = args.models or (list(QUICK_MODELS) if args.quick else list(MODELS))
    files: dict[str, Model] = {}
    for entry in chosen:
        if entry in MODELS:
            continue
        path = Path(entry)
        if path.suffix != ".onnx" or not path.is_file():
            raise CMSwitchError(f"--models {entry}: not a model of the set "
                                f"({', '.join(MODELS)}) nor an existing .onnx file")
        files.setdefault(str(path.resolve()), Model(path.stem, str(path.resolve()), False))
    named = [MODELS[name] for name in MODELS if name in chosen]
    return named + list(files.values())


def run(args: argparse.Namespace) -> int:
    """`cmswitch bench`: print the table (Markdown, or JSON with `--json -`), write
    `--json FILE` and `--plot DIR`.  Returns 0, or 1 when a run failed (the table is
    still printed, the failure shown as "error"/"n/a", and each failure on stderr)."""
    from tqdm import tqdm

    from cmswitch.api import STRATEGIES
    from cmswitch.arch import load_arch
    from cmswitch.progress import quiet

    strategies = list(STRATEGIES)
    baselines = [s for s in strategies if s != OURS]
    archs = args.arch or None
    for arch in archs or []:
        load_arch(arch)  # fail on an unknown hardware before an hour of work
    plot_dir = None
    if args.plot:
        from cmswitch.plot import ensure_folder

        plot_dir = ensure_folder(args.plot)  # fail now, not after the runs
    if args.json and args.json != "-" and not Path(args.json).resolve().parent.is_dir():
        raise CMSwitchError(f"{args.json}: folder {Path(args.json).resolve().parent} does not exist")
    models = _models_arg(args)
    main = main_workloads(models, archs, args.batch, args.seq)
    sweep = sweep_workloads(models, archs) if args.sweep else []
    decode = decode_workloads(models, archs) if args.decode else []
    total = (len(main) + len(sweep) + len(decode)) * len(strategies)
    with tqdm(total=total, file=sys.stderr, unit="run", disable=args.no_progress or None,
              dynamic_ncols=True) as progress:
        with quiet():  # one bar, the bench's own: none per compile inside it
            rows, failures = run_table(main, strategies, progress, plot_dir)
            sweep_rows, sweep_failures = run_table(sweep, strategies, progress)
            decode_rows, decode_failures = run_table(decode, strategies, progress)
    failures += decode_failures
    doc = summarize(rows, baselines)
    doc.update({"strategies": strategies, "settings": {
        "cnn_batch": CNN_BATCH, "transformer_batch": args.batch, "transformer_seq": args.seq,
        "sweep_batches": list(SWEEP_BATCHES), "sweep_seqs": list(SWEEP_SEQS)},
        "units": {"cycles": "clock cycles (simulated)", "compile_seconds": "s",
                  "switch_share": "fraction of cmswitch's simulated cycles",
                  "speedup": "baseline cycles / cmswitch cycles"}})
    if sweep:
        doc["sweep"] = summarize(sweep_rows, baselines)
    if decode:
        doc["decode"] = summarize(decode_rows, baselines)
    if plot_dir is not None:
        from cmswitch.plot import speedup_bars

        speedup_bars(rows, baselines, plot_dir / "speedups.png")
        if sweep:
            speedup_bars(sweep_rows, baselines, plot_dir / "speedups_sweep.png")
    text = json.dumps(doc, indent=1) + "\n"
    if args.json == "-":
        sys.stdout.write(text)
    else:
        sys.stdout.write(markdown(doc, strategies, "Simulated cycles, paper settings"))
        if sweep:
            sys.stdout.write("\n" + markdown(doc["sweep"], strategies, "Transformer sweep"))
        if decode:
            sys.stdout.write("\n" + markdown(doc["decode"], strategies,
                                              "LLM decode step (one token per sequence)"))
        if args.json:
            Path(args.json).write_text(text)
    for message in failures + sweep_failures:
        print(f"error: {message}", file=sys.stderr)
    return 1 if failures or sweep_failures else 0


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return int(text)


def add_bench_parser(sub) -> argparse.ArgumentParser:
    """Register the `bench` subcommand on an argparse subparsers object."""
    b = sub.add_parser("bench", help="the evaluation table: every model under every strategy",
                       description=__doc__.split("\n\n")[1].replace("\n", " "))
    b.add_argument("--models", nargs="+", metavar="MODEL",
                   help="only these models (default: all): " + ", ".join(MODELS)
                        + "; or paths of your own .onnx files (run like the CNNs, batch "
                        f"{CNN_BATCH})")
    b.add_argument("--quick", action="store_true",
                   help="a small subset: " + ", ".join(QUICK_MODELS))
    b.add_argument("--arch", nargs="+", default=None, metavar="PRESET|FILE", type=arch_spec,
                   help=f"run every model on these hardware descriptions (default: {DEFAULT_ARCH}, "
                        f"{FUSED_ARCH} for {', '.join(FUSED_MODELS)}, "
                        f"and {PRIME_ARCH} for {', '.join(PRIME_MODELS)})")
    b.add_argument("--batch", type=_positive, default=TRANSFORMER_BATCH,
                   help=f"transformer prefill batch (default {TRANSFORMER_BATCH})")
    b.add_argument("--seq", type=_positive, default=TRANSFORMER_SEQ,
                   help=f"transformer prefill sequence length (default {TRANSFORMER_SEQ})")
    b.add_argument("--sweep", action="store_true",
                   help="add the transformer sweep: batch "
                        + ",".join(map(str, SWEEP_BATCHES)) + " x sequence "
                        + ",".join(map(str, SWEEP_SEQS)) + " (long)")
    b.add_argument("--decode", action="store_true",
                   help="add the decode table: one decode step of "
                        + ", ".join(DECODE_MODELS) + " at batch "
                        + ",".join(map(str, DECODE_BATCHES)) + " x KV cache "
                        + ",".join(map(str, DECODE_CONTEXTS)) + " tokens")
    b.add_argument("--json", metavar="FILE", help="write the JSON document here (- for stdout)")
    b.add_argument("--plot", metavar="DIR", help="write the charts (PNG) into this folder")
    b.add_argument("--no-progress", "--quiet", dest="no_progress", action="store_true",
                   help="no progress bar on stderr")
    b.set_defaults(func=run)
    return b


def main(argv: list[str] | None = None) -> int:
    """`python -m cmswitch.bench.evaluate ...`, the same as `cmswitch bench ...`."""
    from cmswitch.tools.cli import main as cli_main

    return cli_main(["bench", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
