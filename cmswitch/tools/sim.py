"""`cmswitch-sim FLOW.cmsasm [--arch PRESET|FILE] [--json]` — check and time a flow.

Prints a short text report (or the JSON report with --json) and exits 0; a flow that
breaks a rule, or a file that cannot be read, prints `error: <message>` on stderr and
exits 1; usage errors exit 2 (argparse).
"""

from __future__ import annotations

import argparse
import json
import sys

from cmswitch.tools import arch_spec, console
from cmswitch.errors import CMSwitchError
from cmswitch.sim.simulator import simulate

MAX_SEGMENT_ROWS = 40
"""Segments listed in the text report; --json has all of them."""


@console
def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.statements and not args.json:
        parser.error("--statements adds rows to the JSON report: give --json too")
    try:
        override = _load_arch(args.arch) if args.arch else None
        report = simulate(args.flow, arch_override=override, statements=args.statements)
    except (CMSwitchError, OSError) as error:
        print(f"error: {_one_line(error)}", file=sys.stderr)
        return 1
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    sys.stdout.write(format_report(report))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cmswitch-sim",
        description="Execute a .cmsasm meta-operator flow: check its rules and time it.")
    parser.add_argument("flow", metavar="FLOW.cmsasm", help="the flow to simulate")
    parser.add_argument("--arch", metavar="PRESET|FILE", type=arch_spec,
                        help="hardware to run on instead of the flow's .arch header")
    parser.add_argument("--json", action="store_true", help="print the report as JSON "
                        "(per segment, and per operator: statements, alone cycles, bytes by "
                        "place, mvm ops, energy)")
    parser.add_argument("--statements", action="store_true",
                        help="with --json, also one row per statement (statement_rows)")
    return parser


def _load_arch(spec: str) -> dict:
    """The hardware fields of a preset name or file, via cmswitch.arch.load_arch."""
    try:
        from cmswitch.arch import load_arch
    except ImportError as error:
        raise CMSwitchError(f"--arch {spec}: cmswitch.arch.load_arch is not available "
                            f"({error})") from None
    try:
        arch = load_arch(spec)
    except ValueError as error:  # e.g. a pydantic ValidationError
        raise CMSwitchError(f"--arch {spec}: {error}") from None
    return arch.model_dump(exclude_none=True) if hasattr(arch, "model_dump") else dict(arch)


def _one_line(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return " ".join(text.split())


def format_report(report: dict) -> str:
    """The human-readable report: totals, breakdown, one row per segment."""
    cycles = report["cycles"]
    lines = [
        f"flow: model {report['model'] or '-'} on {report['arch']}, "
        f"{report['statements']} statements, {len(report['segments'])} segments",
        f"total: {cycles} cycles = {report['seconds'] * 1e3:.6g} ms",
    ]
    if report.get("predicted_cycles") is not None:
        lines.append(f"predicted: {report['predicted_cycles']} cycles")
    lines.append(f"array utilization: {report['utilization']['overall']:.1%}")
    lines.append("breakdown:")
    for kind, value in report["breakdown"].items():
        share = value / cycles if cycles else 0.0
        lines.append(f"  {kind:<12}{value:>14}  {share:6.1%}")
    lines.extend(energy_lines(report.get("energy")))
    lines.extend(_operator_lines(report.get("operators") or []))
    lines.append("")
    lines.extend(_segment_table(report["segments"]))
    return "\n".join(lines) + "\n"


TOP_OPERATORS = 5
"""Operators listed in the text report (by alone cycles); --json has all of them."""


def _operator_lines(operators: list) -> list:
    """The operators with the most alone cycles: where the flow's work is."""
    if not operators:
        return []
    top = sorted(operators, key=lambda r: (-r["alone_cycles"], r["name"]))[:TOP_OPERATORS]
    lines = [f"busiest operators (alone cycles; --json has all {len(operators)}):"]
    for row in top:
        moved = sum(row["bytes"].values())
        energy = "" if row["energy_pj"] is None else f"  {row['energy_pj'] * 1e-6:.4g} uJ"
        lines.append(f"  {row['name'][:40]:<40}{row['alone_cycles']:>12}  "
                     f"{moved / 1e6:.3g} MB{energy}")
    return lines


def energy_lines(energy: dict | None) -> list:
    """The energy part of the readable report: total (uJ), TOPS/W, average power and
    one line per category (uJ, share); one line saying why when it is unknown."""
    if energy is None:
        return ["energy: unknown (the hardware description gives no energy fields)"]
    total = energy["total_pj"]
    tops = energy["tops_per_watt"]
    power = energy["average_power_mw"]
    lines = [f"energy: {total * 1e-6:.6g} uJ"
             + (f" = {tops:.3g} TOPS/W" if tops else "")
             + (f", {power:.4g} mW average" if power else "")]
    for kind, value in energy["breakdown_pj"].items():
        share = value / total if total else 0.0
        lines.append(f"  {kind:<14}{value * 1e-6:>14.6g} uJ  {share:6.1%}")
    return lines


def _segment_table(segments: list) -> list:
    header = (f"{'segment':<10}{'cycles':>12}{'predicted':>12}{'compute':>9}{'memory':>8}"
              f"{'mm-peak':>8}{'util':>8}  ops")
    rows = [header]
    for seg in segments[:MAX_SEGMENT_ROWS]:
        predicted = "-" if seg["predicted_cycles"] is None else str(seg["predicted_cycles"])
        ops = ",".join(seg["ops"])
        if len(ops) > 40:
            ops = ops[:37] + "..."
        rows.append(f"{seg['id']:<10}{seg['cycles']:>12}{predicted:>12}{seg['compute_arrays']:>9}"
                    f"{seg['memory_arrays']:>8}{seg['memory_mode_peak']:>8}"
                    f"{seg['utilization']:>8.1%}  {ops}")
    if len(segments) > MAX_SEGMENT_ROWS:
        rows.append(f"... {len(segments) - MAX_SEGMENT_ROWS} more segments (use --json for all)")
    return rows


if __name__ == "__main__":
    sys.exit(main())
