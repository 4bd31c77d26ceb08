"""Simulator speed benchmark: how fast `cmswitch-sim` and the `.cmsasm` parser run.

``python -m cmswitch.bench.sim_speed [--model NAME] [--batch B] [--seq S] [--reps N]``
(``make bench-sim``) compiles the model once (default the LLaMA2-7B configuration,
batch 4, sequence 512: 32 layers, ~29k flow statements), then times, `--reps` times
each (default 3), `cmswitch.sim.simulator.simulate` on the flow text and
`cmswitch.asm.parser.parse_flow` on the same text, and prints a Markdown table: the
best and median wall seconds, statements per second (by the best time), simulated
cycles, and for the parser the metaop ops built per second.

A *statement* here is a non-blank, non-comment line inside a segment (between
`.segment` and `.end`, exclusive), so the `parallel {` and `}` lines count too; header
lines (`.arch`, `.model`, `.tensor`) and the `.segment`/`.end` lines do not.  The
parser's *ops* are every `metaop` op it builds: statements, `parallel` blocks and
segments.  Times are wall-clock seconds (`time.perf_counter`) and include
neither the compile nor interpreter start-up.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from cmswitch.errors import CMSwitchError

DEFAULT_MODEL = "llama2-7b"


def count_statements(flow: str) -> tuple[int, int, int]:
    """(statements, segments, block lines) of a flow text: statements as in the module
    docstring; block lines are its `parallel {` and `}` lines (the rest are
    meta-operators)."""
    statements = segments = blocks = 0
    inside = False
    for raw in flow.split("\n"):
        tokens = raw.split(";", 1)[0].split()
        if not tokens:
            continue
        if tokens[0] == ".segment":
            inside, segments = True, segments + 1
        elif tokens[0] == ".end":
            inside = False
        elif inside:
            statements += 1
            blocks += tokens[0] in ("parallel", "}")
    return statements, segments, blocks


def time_runs(run: Callable[[], Any], reps: int) -> tuple[list[float], Any]:
    """Wall seconds of `reps` calls of `run` (in call order), and the last result."""
    seconds: list[float] = []
    result = None
    for _ in range(reps):
        start = time.perf_counter()
        result = run()
        seconds.append(time.perf_counter() - start)
    return seconds, result


def _row(what: str, statements: int, segments: int, seconds: list[float], rate_of: int,
         cycles: str) -> str:
    best, median = min(seconds), statistics.median(seconds)
    return (f"| {what} | {statements} | {segments} | {best:.3f} | {median:.3f} "
            f"| {rate_of / best:,.0f} | {cycles} |")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (1 with ``error: ...`` on a compile/flow error)."""
    parser = argparse.ArgumentParser(prog="python -m cmswitch.bench.sim_speed",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None,
                        help="model file or configuration name (default: llama2-7b with "
                             "batch 4, seq 512)")
    parser.add_argument("--batch", type=int, default=None, help="batch of a dynamic model")
    parser.add_argument("--seq", type=int, default=None, help="sequence length likewise")
    parser.add_argument("--reps", type=int, default=3, help="timed runs of each (default 3)")
    parser.add_argument("--arch", default=None, help="hardware preset or file")
    args = parser.parse_args(argv)
    if args.reps < 1:
        parser.error("--reps must be >= 1")
    if args.model is None:
        args.model, args.batch, args.seq = DEFAULT_MODEL, args.batch or 4, args.seq or 512
    try:
        return _bench(args)
    except CMSwitchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def _bench(args: argparse.Namespace) -> int:
    from cmswitch import api
    from cmswitch.asm.parser import parse_flow
    from cmswitch.sim.simulator import simulate

    start = time.perf_counter()
    plan = api.compile(args.model, arch=args.arch, batch=args.batch, seq=args.seq)
    compile_s = time.perf_counter() - start
    flow = plan.flow
    statements, segments, blocks = count_statements(flow)

    sim_s, report = time_runs(lambda: simulate(flow), args.reps)
    parse_s, module = time_runs(lambda: parse_flow(flow), args.reps)
    ops = sum(1 for _ in module.walk()) - 1          # all but the builtin.module

    shape = "".join(f" {k}={v}" for k, v in (("batch", args.batch), ("seq", args.seq)) if v)
    print(f"{plan.model}{shape} on {plan.arch.name}: "
          f"compiled in {compile_s:.1f} s; {args.reps} runs each "
          f"(best and median wall seconds)")
    print()
    print("| phase | statements | segments | best s | median s | per second (best) "
          "| simulated cycles |")
    print("|---|---|---|---|---|---|---|")
    print(_row("simulate", statements, segments, sim_s, statements, str(report["cycles"])))
    print(_row(f"parse_flow ({ops} ops)", statements, segments, parse_s, ops, "-"))
    print()
    print(f"statements: non-blank, non-comment lines inside segments "
          f"({statements - blocks} meta-operators + {blocks} `parallel {{`/`}}` lines).")
    print("per second: statements for simulate, metaop ops built for parse_flow.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
