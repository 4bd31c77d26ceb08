"""`cmswitch`: the whole pipeline in one step (DESIGN.md §8).

``cmswitch compile MODEL [--arch PRESET|FILE] [--strategy cmswitch] [--batch N]
[--seq L] [--dim NAME=VALUE] [-o FLOW.cmsasm] [--json REPORT.json] [--summary]
[--functional] [--plot DIR]``

``cmswitch bench [--models ...] [--arch ...] [--json FILE] [--plot DIR] [--sweep]``
(the evaluation table: cmswitch/bench/evaluate.py)

``cmswitch sweep MODEL ... --set FIELD=V1,V2 [--scheduler tcp://HOST:PORT] [--csv FILE]``
(hardware design-space sweeps: cmswitch/bench/sweep.py)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from cmswitch.tools import arch_spec, console
from cmswitch.api import STRATEGIES, split_layers
from cmswitch.transforms.cim_partition import PIECE_SHAPES
from cmswitch.errors import CMSwitchError


def _dims(args: argparse.Namespace) -> dict[str, int]:
    dims: dict[str, int] = {}
    for item in args.dim or []:
        name, sep, value = item.partition("=")
        if not sep or not value.isdigit() or int(value) <= 0:
            raise CMSwitchError(f"--dim expects NAME=POSITIVE_INT, got '{item}'")
        if dims.get(name, int(value)) != int(value):
            raise CMSwitchError(f"--dim {name} bound twice, to {dims[name]} and {value}")
        dims[name] = int(value)
    return dims


OFF_BY = 1.5
"""`--summary --simulate` marks a segment whose simulated and predicted cycles differ by
more than this factor either way (issue 12: where the cost model is not the flow)."""


def print_summary(plan, out=sys.stdout, rows: int = 12, sim: dict | None = None) -> None:
    """A readable table: per segment (the first `rows`, plus every segment off by more
    than `OFF_BY` when `sim` is given), operators, arrays in compute / memory mode,
    weight copies, predicted cycles and, with `sim` (a `cmswitch-sim` report), the
    simulated cycles, marked ``!`` beyond `OFF_BY`; then the totals."""
    arch = plan.arch
    out.write(f"{plan.model} on {arch.name} ({arch.arrays} arrays of {arch.rows}x{arch.cols}), "
              f"strategy {plan.strategy}\n")
    simulated = {int(s["id"]): s["cycles"] for s in sim["segments"]} if sim else {}
    out.write(f"{'seg':>4} {'ops':>4}  {'first..last operator':<44} {'compute':>7} "
              f"{'memory':>6} {'copies':>6} {'predicted':>10}"
              + (f" {'simulated':>10}" if sim else "") + "\n")

    def off(s) -> bool:
        cyc, pred = simulated.get(s["id"]), max(1, s["predicted_cycles"])
        return cyc is not None and not 1 / OFF_BY <= cyc / pred <= OFF_BY

    shown = [s for k, s in enumerate(plan.segments) if k < rows or off(s)]
    for s in shown:
        ops = s["operators"]
        span = ops[0] if len(ops) == 1 else f"{ops[0]}..{ops[-1]}"
        copies = sum(s["weight_copies"].values())
        span = span if len(span) <= 44 else span[:43] + "…"
        line = (f"{s['id']:>4} {len(ops):>4}  {span:<44} {s['compute_arrays']:>7} "
                f"{s['memory_arrays']:>6} {copies:>6} {s['predicted_cycles']:>10}")
        if sim:
            line += f" {simulated.get(s['id'], 'n/a'):>10}" + (" !" if off(s) else "")
        out.write(line + "\n")
    if len(plan.segments) > len(shown):
        out.write(f"   ... {len(plan.segments) - len(shown)} more segments (all of them in --json)\n")
    if sim:
        marked = sum(1 for s in plan.segments if off(s))
        out.write(f"segments off by more than {OFF_BY}x (!): {marked}\n")
    out.write(f"segments: {len(plan.segments)}   predicted cycles: {plan.predicted_cycles}   "
              f"lower bound: {plan.lower_bound_cycles}   "
              f"ratio: {plan.predicted_cycles / max(plan.lower_bound_cycles, 1):.2f}x\n")
    options = getattr(plan, "options", None)
    if options is not None and options.phase == "decode":
        from cmswitch.api import kv_cache

        places = kv_cache(plan.operators)["bytes_by_place"]
        where = ", ".join(f"{n} B in {p}" for p, n in places.items())
        tokens = f"{options.kv_len} token" + ("s" if options.kv_len != 1 else "")
        out.write(f"decode step, KV cache of {tokens}: {where}\n")
    split = len(split_layers(plan.operators)) if getattr(plan, "operators", None) else 0
    if split:
        out.write(f"split operators: {split}, in pieces of at most {plan.chunk_arrays} arrays, "
                  f"shaped {getattr(plan, 'piece_shape', 'full-k')}\n")
    if plan.lower_bound_terms:
        terms = ", ".join(f"{k.replace('_', '-')} {v}" for k, v in plan.lower_bound_terms.items())
        out.write(f"lower bound terms (cycles): {terms}\n")
    out.write(f"segments priced: {plan.mip['solves']} (cache hits {plan.mip['cache_hits']}), "
              f"segment MIPs solved: {plan.mip['segment_mips']}   "
              f"compile time: {plan.compile_seconds:.1f} s\n")


def _check_writable(path: str | None) -> None:
    """Fail before compiling, not after, when an output's folder does not exist."""
    if path and path != "-":
        from pathlib import Path

        folder = Path(path).resolve().parent
        if not folder.is_dir():
            raise CMSwitchError(f"{path}: folder {folder} does not exist")


def _check_no_clash(model: str, *outputs: str | None) -> None:
    """Refuse outputs that name the input model or each other (one would overwrite the
    other's data).  Raises CMSwitchError."""
    from pathlib import Path

    files = [o for o in outputs if o and o != "-"]
    given = Path(model)
    source = given.resolve() if given.exists() else None
    seen: dict = {}
    for out in files:
        target = Path(out).resolve()
        if source is not None and target == source:
            raise CMSwitchError(f"{out}: is the input model; writing it would destroy it")
        if target in seen:
            raise CMSwitchError(f"{out}: named by both -o and --json; give two files")
        seen[target] = out


def csv_tables(report: dict) -> dict[str, str]:
    """The compile report's tables as CSV texts: ``segments.csv`` (one row per
    segment) and ``operators.csv`` (one row per operator), every key a column in
    first-seen order; a list or mapping cell (a segment's operators, its weight copies)
    is written as JSON.  With the report's ``simulated`` segments (``--simulate``),
    segments gain ``simulated_cycles``."""
    import csv
    import io

    simulated = {int(s["id"]): s["cycles"]
                 for s in (report.get("simulated_segments") or [])}
    tables = {"segments.csv": [dict(s, **({"simulated_cycles": simulated.get(s["id"])}
                                           if simulated else {}))
                               for s in report["segments"]],
              "operators.csv": report["operators"]}
    out = {}
    for name, rows in tables.items():
        columns = list(dict.fromkeys(k for row in rows for k in row))
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else
                             ("" if v is None else v) for k, v in row.items()})
        out[name] = text.getvalue()
    return out


def _emit(path: str | None, text: str) -> None:
    """Write `text` to `path` ("-": stdout; None: nowhere) atomically: into a temporary
    file beside it, renamed over it once complete, so a failed write leaves the old
    file or none (a device or pipe is written directly).  Raises CMSwitchError naming
    the file when it cannot be written (a full disk shows at close)."""
    import os
    import stat
    import tempfile

    if not path:
        return
    if path == "-":
        sys.stdout.write(text)
        return
    try:
        if os.path.exists(path) and not stat.S_ISREG(os.stat(path).st_mode):
            with open(path, "w") as f:
                f.write(text)
            return
        fd, tmp = tempfile.mkstemp(prefix=".cmswitch-", dir=os.path.dirname(os.path.abspath(path)))
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
            mask = os.umask(0)
            os.umask(mask)
            os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode) if os.path.exists(path)
                     else 0o666 & ~mask)  # as open() would have made it
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as e:
        raise CMSwitchError(f"{path}: cannot write: {e.strerror or e}") from None


def _warn_unproven(plan) -> None:
    """One stderr line when segments the optimizer solved are not proven optimal (a
    MIP time-out, a placement search limit); the baselines' segments are not solved."""
    from cmswitch.api import MIP_STRATEGIES

    if plan.strategy not in MIP_STRATEGIES:
        return
    odd = [s for s in plan.segments if s["solver_status"] != "optimal"]
    if not odd:
        return
    ops = odd[0]["operators"]
    more = f" (and {len(odd) - 1} more segments; see --json)" if len(odd) > 1 else ""
    print(f"cmswitch: warning: segment {odd[0]['id']} ({ops[0]}..{ops[-1]}) not proven "
          f"optimal: {odd[0]['solver_status']}{more}", file=sys.stderr)


def _compile(args: argparse.Namespace) -> int:
    from cmswitch.api import compile as compile_model

    try:
        dims = _dims(args)
    except CMSwitchError as error:  # a malformed --dim: a usage error, like --batch 0
        print(f"cmswitch compile: error: {error}", file=sys.stderr)
        return 2
    usage = _usage_error(args)
    if usage:
        print(f"cmswitch compile: error: {usage}", file=sys.stderr)
        return 2
    _check_writable(args.output)
    _check_writable(args.json)
    _check_no_clash(args.model, args.output, args.json)
    text_out = sys.stderr if "-" in (args.output, args.json) else sys.stdout
    if args.plot:
        from cmswitch.plot import ensure_folder

        ensure_folder(args.plot)
    if args.functional:
        from cmswitch.functional import require_onnx

        require_onnx(args.model)
    from cmswitch.progress import quiet

    with quiet(args.quiet):
        plan = compile_model(args.model, arch=args.arch, strategy=args.strategy,
                             solver=args.solver, dims=dims,
                             time_limit=args.time_limit, batch=args.batch, seq=args.seq,
                             keep_module=args.functional, chunk_arrays=args.chunk_arrays,
                             piece_shape=args.piece_shape,
                             jobs=args.jobs or 0, layers=args.layers, phase=args.phase,
                             kv_len=args.kv_len)
    _warn_unproven(plan)
    ids = [s["id"] for s in plan.segments]
    if args.plot_segment is not None and args.plot_segment not in ids:
        raise CMSwitchError(f"--plot-segment {args.plot_segment}: no such segment (the plan "
                            f"has {len(ids)}: {ids[0]}..{ids[-1]})")
    report = plan.report()
    sim = None
    if args.simulate:  # before anything is written: a failed run leaves no half output
        from cmswitch.api import add_simulation

        sim = plan.simulate(statements=True)
        report = add_simulation(report, sim)
    _emit(args.output, plan.flow)
    _emit(args.json, json.dumps(report, indent=1) + "\n")
    if args.csv:
        from pathlib import Path

        from cmswitch.plot import ensure_folder

        folder = ensure_folder(args.csv)
        for name, text in csv_tables(report).items():
            _emit(str(Path(folder) / name), text)
    if args.plot:
        from cmswitch.plot import plot_plan

        for path in plot_plan(plan, args.plot, segment=args.plot_segment):
            print(f"wrote {path}", file=sys.stderr)
    if args.summary or not (args.output or args.json or args.csv or args.functional):
        print_summary(plan, text_out, sim=sim)
    if args.simulate:
        print(f"simulated cycles: {report['simulated_cycles']}   predicted / simulated - 1: "
              f"{report['prediction_error']:+.1%} (the cost model's error; cmswitch-sim "
              f"shares no timing code with it)", file=text_out)
        from cmswitch.tools.sim import energy_lines

        print(energy_lines(sim["energy"])[0].replace("energy:", "simulated energy:"),
              file=text_out)
    if args.functional:
        return _functional(plan, args)
    return 0


def _functional(plan, args: argparse.Namespace) -> int:
    """--functional: run the flow on seeded random inputs and in onnxruntime; print the
    errors (to stderr when the flow goes to stdout); 1 if beyond the tolerance."""
    from cmswitch.functional import compare, format_report

    report = compare(plan, args.model)
    out = sys.stderr if "-" in (args.output, args.json) else sys.stdout
    out.write(format_report(report))
    if not report["ok"]:
        print("error: the flow's outputs differ from onnxruntime beyond the tolerance",
              file=sys.stderr)
        return 1
    return 0


def _positive(kind):
    def convert(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    convert.__name__ = kind.__name__
    return convert


def _usage_error(args: argparse.Namespace) -> str | None:
    """A combination of `cmswitch compile` options that cannot work, or None."""
    import os

    if args.plot_segment is not None and not args.plot:
        return "--plot-segment needs --plot DIR"
    from cmswitch.frontend.configs import option_problem

    problem = option_problem(args.model, args.layers, args.phase, args.kv_len, args.seq)
    if problem:
        return problem
    given = [flag for flag, on in (("--layers", args.layers is not None),
                                   ("--phase", args.phase != "prefill")) if on]
    if given and os.path.exists(args.model):
        return (f"{' and '.join(given)} apply to the published configurations, not to a "
                f"model file" if len(given) > 1 else
                f"{given[0]} applies to the published configurations, not to a model file")
    if args.output == "-" and args.json == "-":
        return "-o - and --json - both want stdout; send one to a file"
    return None


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


_non_negative_int.__name__ = "int"  # argparse says "invalid int value: 'abc'"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cmswitch", description=(
        "CMSwitch: dual-mode-aware DNN compiler for computing-in-memory accelerators"))
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compile", help="compile a model to a meta-operator flow")
    c.add_argument("model", help="an .onnx or .mlir model, or a published configuration: "
                   "bert-base, bert-large, llama2-7b, opt-6.7b, opt-13b")
    c.add_argument("--arch", default=None, type=arch_spec, metavar="PRESET|FILE", help="hardware preset (dynaplasia, prime) or YAML/JSON file")
    c.add_argument("--strategy", default="cmswitch", choices=list(STRATEGIES),
                   help="cmswitch (DP + MIP, dual-mode); all-compute baselines cimmlc, puma, "
                   "occ; ablations dp-compute-only, greedy-mip")
    c.add_argument("--solver", default="glpk", choices=["glpk", "highs"], help="MIP solver")
    c.add_argument("--time-limit", type=_positive(float), default=None,
                   help="seconds per MIP solve (default 60)")
    c.add_argument("--batch", type=_positive(int), default=None,
                   help="bind the dynamic batch (axis 0) dimension of the inputs")
    c.add_argument("--seq", type=_positive(int), default=None,
                   help="bind a dynamic sequence dimension (a dim named *seq*)")
    c.add_argument("--dim", action="append", metavar="NAME=VALUE", help="bind a symbolic dimension")
    c.add_argument("--layers", type=_positive(int), default=None, metavar="N",
                   help="published configurations: build only the first N layers")
    c.add_argument("--phase", choices=("prefill", "decode"), default="prefill",
                   help="published decoder configurations: the prefill pass (default) or "
                   "one decode step (one token per sequence) against a KV cache")
    c.add_argument("--kv-len", type=_positive(int), default=None, metavar="L",
                   help="with --phase decode: tokens already in the KV cache")
    c.add_argument("-o", "--output", help="write the .cmsasm flow here (- for stdout)")
    c.add_argument("--json", help="write the JSON report here (- for stdout)")
    c.add_argument("--csv", metavar="DIR", help="write segments.csv and operators.csv "
                   "(the report's tables, one row per segment / operator) into this folder")
    c.add_argument("--chunk-arrays", type=_positive(int), default=None, metavar="N",
                   help="arrays per piece of operators split by cim-partition (default: "
                   "cmswitch tries half and whole chip, keeps the faster prediction)")
    c.add_argument("--piece-shape", choices=PIECE_SHAPES, default=None,
                   help="how cim-partition shapes those pieces: full-k (cut along N "
                   "only) or balanced (cut along K too, fewest activation bytes moved); "
                   "default: cmswitch tries both, keeps the faster prediction")
    c.add_argument("--jobs", type=_positive(int), default=None, metavar="N",
                   help="worker processes for the segment MIPs (default: $CMSWITCH_JOBS, "
                   "else every core; 1 = in-process); the plan does not depend on it")
    c.add_argument("--summary", action="store_true", help="print the segment table")
    c.add_argument("--quiet", action="store_true",
                   help="no progress bar on stderr (shown only on a terminal, after 2 s)")
    c.add_argument("--simulate", action="store_true",
                   help="also run the flow in cmswitch-sim: simulated cycles beside the "
                   "prediction (printed, and simulated_cycles / prediction_error in --json)")
    c.add_argument("--plot", metavar="DIR", help="draw the segment map (on a time axis), "
                   "one segment's pipeline timeline and the per-operator chart of predicted "
                   "vs simulated cycles (PNG and SVG) into this folder")
    c.add_argument("--plot-segment", type=_non_negative_int, default=None, metavar="N",
                   help="with --plot: draw the timeline of segment N (default: the segment "
                   "with the most simulated cycles)")
    c.add_argument("--functional", action="store_true",
                   help="run the flow on seeded random inputs (numpy) and compare with "
                   "onnxruntime (.onnx models with weights; docs/functional.md)")
    c.set_defaults(func=_compile)
    from cmswitch.bench.evaluate import add_bench_parser

    add_bench_parser(sub)
    from cmswitch.bench.sweep import add_sweep_parser

    add_sweep_parser(sub)
    return parser


@console
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `cmswitch`; returns the exit code (1: input error, 2: usage)."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CMSwitchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 1
    except UnicodeDecodeError as e:  # a binary file given as .mlir
        print(f"error: {args.model}: not UTF-8 text ({e.reason} at byte {e.start})",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
