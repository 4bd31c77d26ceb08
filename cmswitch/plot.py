"""Pictures of compiled models (matplotlib; every picture as PNG and SVG).

- `segment_map`: per segment (x: simulated time, each segment as wide as it runs) and
  array (y), what the array does in that segment:
  compute (holds weights the segment runs), memory (holds the segment's data), or
  nothing: idle in memory mode (switched to memory mode, but the segment stores nothing
  there) or idle in compute mode.
  The real array addresses come from the flow (`CIM.load_weight ... -> a[LO:HI]`,
  `CIM.mvm OP a[LO:HI]`, data locations `T@a[LO:HI]`), read with the simulator's parser.
- `timeline`: one segment's statements as bars from their start to their end cycle, as
  timed by the simulator (`simulate(..., trace=True)`); any segment (`--plot-segment`).
- `operator_chart`: per operator, its alone cycles as the cost model predicts them and
  as the simulator measures its statements.
- `speedup_bars`: speedup of cmswitch over each baseline, per model (bench rows).
- `sweep_plots`: latency and energy against each swept hardware field, and the
  latency-energy Pareto front, of a `cmswitch sweep` (PNG and SVG).

Figures are built with `matplotlib.figure.Figure` and saved through the Agg canvas, so
no GUI backend or global pyplot state is involved.
"""

from __future__ import annotations

import math
import os
from statistics import geometric_mean
from pathlib import Path
from typing import Any

from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import EngFormatter

from cmswitch.errors import CMSwitchError
from cmswitch.sim.flow import ArchDecl, FlowSource, SegmentBegin, SegmentEnd, Statement, iter_records

MODES = ("idle", "idle-memory", "compute", "memory")
"""Array roles in a segment; the index is the value drawn in the segment map.
idle: compute mode, unused; idle-memory: memory mode, unused by the segment."""

MODE_COLORS = {"idle": "#e6e6e6", "idle-memory": "#bcd7ea", "compute": "#d95f02",
               "memory": "#1b6fa8"}
"""RGB of each role in the segment map (hex)."""

MAX_TIMELINE_ROWS = 60
"""The timeline shows at most this many statements of its segment."""

_KIND_COLORS = {"CM.switch": "#7f7f7f", "CIM.load_weight": "#7570b3",
                "CIM.write_operand": "#7570b3", "CIM.mvm": MODE_COLORS["compute"],
                "VEC": "#66a61e", "MEM": MODE_COLORS["memory"]}


# ----------------------------------------------------------------------------------
# data: what each array does in each segment


def array_modes(flow: str | os.PathLike) -> list[dict[str, Any]]:
    """Per segment of a flow (text or path), in order: ``{"id", "ops", "modes"}`` where
    modes[i] is "compute" (array i is programmed by, or runs an MVM of, the segment),
    "memory" (the segment reads or places data in array i), "idle-memory" (neither, and
    array i is in memory mode at the segment's end: `CM.switch TOM` without use) or
    "idle" (neither, compute mode).  len(modes) = the arch's arrays.  Raises
    CMSwitchError for a flow that does not parse, or has no `.arch`."""
    source = FlowSource(flow)
    memory_mode: list[bool] | None = None  # reset: every array in compute mode
    segments: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    for record in iter_records(source.lines(), source.name):
        if isinstance(record, ArchDecl):
            memory_mode = [False] * int(record.fields["arrays"])
        elif isinstance(record, SegmentBegin):
            if memory_mode is None:
                raise CMSwitchError(f"{source.name}: `.segment` before the `.arch` header")
            current = {"id": record.id, "ops": list(record.ops),
                       "modes": ["idle"] * len(memory_mode)}
            segments.append(current)
        elif isinstance(record, SegmentEnd) and current is not None:
            current["modes"] = [("idle-memory" if mem else "idle") if mode == "idle" else mode
                                for mode, mem in zip(current["modes"], memory_mode)]
            current = None
        elif isinstance(record, Statement) and current is not None:
            _mark(current["modes"], memory_mode, record, current["ops"])
    if memory_mode is None:
        raise CMSwitchError(f"{source.name}: the flow has no `.arch` header")
    return segments


def _mark(modes: list[str], memory_mode: list[bool], st: Statement, ops: list[str]) -> None:
    """Record the arrays one statement uses (a compute role wins over a data role) and
    the mode a `CM.switch` leaves its arrays in.  A `load_weight` of an op outside the
    segment's `ops` (the next segment's weights, loaded ahead) leaves its arrays idle
    here."""
    if st.kind == "CM.switch":
        for i in range(st.arrays.lo, min(st.arrays.hi, len(modes))):
            memory_mode[i] = st.mode == "TOM"
        return
    if st.kind.startswith("CIM.") and (not ops or st.op in ops):
        for i in range(st.arrays.lo, min(st.arrays.hi, len(modes))):
            modes[i] = "compute"
    for ref in (*st.reads, *st.writes):
        if ref.loc.kind != "a":
            continue
        for i in range(ref.loc.lo, min(ref.loc.hi, len(modes))):
            if modes[i] == "idle":
                modes[i] = "memory"


def mode_counts(modes: list[str]) -> dict[str, int]:
    """Arrays per role: {"compute": n, "memory": n, "idle-memory": n, "idle": n}."""
    return {mode: modes.count(mode) for mode in ("compute", "memory", "idle-memory", "idle")}


# ----------------------------------------------------------------------------------
# figures

PAPER_WIDTH = 7.2
"""Figure width in inches: a two-column-wide figure of a paper, fonts of 7-9 pt."""

DPI = 200
"""PNG resolution (dots per inch); SVG is vector."""

MAX_MAP_LABELS = 14
"""The segment map labels at most this many segments: the longest ones whose labels do
not overlap a longer segment's label (so labels never collide; the others' arrays are
still drawn)."""

MAX_SEPARATED = 150
"""The segment map draws white lines between segments up to this many segments."""

_LABEL_PT = 6.5
"""Font size (pt) of the segment-map labels."""


def _cycle_axis(ax, clock_mhz: float | None, label: str) -> None:
    """Cycles on the bottom x axis in engineering notation (``200 k``, never an offset
    like ``1e6``); seconds on a top axis when the clock is known."""
    ax.xaxis.set_major_formatter(EngFormatter(sep=" "))
    ax.set_xlabel(label, fontsize=8)
    ax.tick_params(labelsize=7)
    if not clock_mhz:
        return
    hz = clock_mhz * 1e6
    top = ax.secondary_xaxis("top", functions=(lambda c: c / hz, lambda t: t * hz))
    top.xaxis.set_major_formatter(EngFormatter(unit="s", sep=" "))
    top.tick_params(labelsize=7)
    top.set_xlabel(f"time at {clock_mhz:g} MHz", fontsize=8)


def _labelled(starts: list[float], widths: list[float], texts: list[str],
              axes_points: float) -> list[tuple[int, float]]:
    """The segments to label and where each label's centre goes, left to right:
    longest segments first, at most `MAX_MAP_LABELS`.  A label (~0.62 em per character
    at `_LABEL_PT`) sits centred on its segment, moved inward where it would cross an
    end of the axes (`axes_points` wide), and is kept when it overlaps no kept label."""
    total = max(sum(widths), 1.0)
    width = [(max(map(len, t.split("\n"))) * 0.62 * _LABEL_PT + 3) / axes_points * total
             for t in texts]
    kept: dict[int, float] = {}
    for i in sorted(range(len(starts)), key=lambda i: (-widths[i], i)):
        if len(kept) == MAX_MAP_LABELS or widths[i] <= 0:
            break
        half = width[i] / 2
        centre = min(max(starts[i] + widths[i] / 2, half), total - half)
        if all(abs(centre - at) >= (width[i] + width[j]) / 2 for j, at in kept.items()):
            kept[i] = centre
    return sorted(kept.items())


def segment_map_figure(segments: list[dict[str, Any]], title: str,
                       clock_mhz: float | None = None) -> Figure:
    """The segment map of `array_modes(...)` output whose rows also carry ``cycles``
    (the segment's simulated cycles): x is time, each segment as wide as it runs.
    Top, how many arrays compute / store data / sit in memory mode unused; bottom, the
    map (y: array address, array 0 at the bottom; one cell per array and segment,
    coloured by `MODE_COLORS`; its axes carry the label "map").
    The longest segments (`_labelled`) get their id and compute/memory arrays.  Raises
    CMSwitchError for no segments or a row without cycles."""
    if not segments:
        raise CMSwitchError("segment map: the flow has no segments")
    if any("cycles" not in seg for seg in segments):
        raise CMSwitchError("segment map: every segment needs its simulated cycles")
    arrays = len(segments[0]["modes"])
    widths = [float(seg["cycles"]) for seg in segments]
    starts = [sum(widths[:i]) for i in range(len(widths))]
    total = max(sum(widths), 1.0)
    edges = [*starts, total]
    grid = [[MODES.index(seg["modes"][i]) for seg in segments] for i in range(arrays)]
    fig = Figure(figsize=(PAPER_WIDTH, 4.6), layout="constrained")
    counts_ax, map_ax = fig.subplots(2, 1, sharex=True, height_ratios=(1, 2.2))
    counts = [mode_counts(seg["modes"]) for seg in segments]
    bottom = [0] * len(segments)
    for mode in ("compute", "memory", "idle-memory"):
        heights = [c[mode] for c in counts]
        counts_ax.bar(starts, heights, width=widths, bottom=bottom, align="edge",
                      color=MODE_COLORS[mode], linewidth=0)
        bottom = [b + h for b, h in zip(bottom, heights)]
    texts = [f"{seg['id']}\n{c['compute']}/{c['memory']}" for seg, c in zip(segments, counts)]
    for i, at in _labelled(starts, widths, texts, (PAPER_WIDTH - 0.8) * 72):
        centre = starts[i] + widths[i] / 2  # the leader line starts at the segment
        counts_ax.plot([centre, centre, at], [bottom[i], arrays * 1.03, arrays * 1.06],
                       color="black", linewidth=0.4)  # labels above every bar
        counts_ax.text(at, arrays * 1.07, texts[i], ha="center", va="bottom",
                       fontsize=_LABEL_PT, linespacing=0.95)
    counts_ax.set_ylim(0, arrays * 1.5)
    counts_ax.set_ylabel("arrays", fontsize=8)
    counts_ax.tick_params(labelsize=7)
    counts_ax.set_title("labels: segment id, compute/memory arrays (the longest segments)",
                        fontsize=7.5)
    for ax in (counts_ax, map_ax) if len(segments) <= MAX_SEPARATED else ():
        ax.vlines(starts[1:], 0, 1, transform=ax.get_xaxis_transform(), color="white",
                  linewidth=0.25)  # segment boundaries; hundreds would grey the map
    map_ax.set_label("map")
    map_ax.pcolormesh(edges, [y - 0.5 for y in range(arrays + 1)], grid, shading="flat",
                      cmap=ListedColormap([MODE_COLORS[m] for m in MODES]), vmin=-0.5,
                      vmax=len(MODES) - 0.5, rasterized=True)
    map_ax.set_xlim(0, total)
    map_ax.set_ylabel("array address", fontsize=8)
    map_ax.tick_params(labelsize=7)
    _cycle_axis(map_ax, None, "simulated cycles")
    _cycle_axis(counts_ax, clock_mhz, "")
    counts_ax.tick_params(labelbottom=False)
    names = {"compute": "compute", "memory": "memory (holds the segment's data)",
             "idle-memory": "memory mode, unused", "idle": "compute mode, unused"}
    fig.legend(handles=[Patch(color=MODE_COLORS[m], label=names[m]) for m in
                        ("compute", "memory", "idle-memory", "idle")],
               loc="outside lower center", ncols=4, fontsize=7, frameon=False)
    fig.suptitle(f"{title} ({len(segments)} segments)", fontsize=9)
    return fig


def segment_map(flow: str | os.PathLike, path: str | os.PathLike, title: str = "",
                report: dict | None = None) -> list[dict[str, Any]]:
    """Draw the segment map of a flow into `path` (PNG, and SVG beside it); returns the
    `array_modes` rows it was drawn from, each with its simulated ``cycles``.  `report`:
    the flow's simulator report if already run.  Raises CMSwitchError for a bad flow."""
    from cmswitch.sim.simulator import simulate

    segments = array_modes(flow)
    report = report or simulate(flow)
    for seg, timed in zip(segments, report["segments"]):
        seg["cycles"] = timed["cycles"]
    clock = report.get("arch_fields", {}).get("clock_mhz")
    _save(segment_map_figure(segments, title or "segment map", clock), path)
    return segments


def segment_trace(flow: str | os.PathLike, segment: int | str | None = None,
                  report: dict | None = None) -> tuple[int, list[dict]]:
    """Simulate a flow with the trace on and return ``(segment id, spans)``: the
    segment's statements with "start"/"end" in cycles from the segment's start, and
    "text" (the statement as written).  `segment` None picks the segment with the most
    simulated cycles; `report` is a simulator report with ``trace`` if already run.
    Raises CMSwitchError for a bad flow or an unknown segment."""
    from cmswitch.sim.simulator import simulate

    if report is None or "trace" not in report:
        report = simulate(flow, trace=True)
    segment = chosen_segment(report, segment)
    spans = [dict(span) for span in report["trace"] if span["segment"] == segment]
    if not spans:
        return segment, []
    origin = min(span["start"] for span in spans)
    texts = _line_texts(flow, {span["line"] for span in spans})
    for span in spans:
        span["start"] -= origin
        span["end"] -= origin
        span["text"] = texts.get(span["line"], span["opcode"])
    return segment, spans


def chosen_segment(report: dict, segment: int | str | None) -> int:
    """The id of `segment` in a simulator report (None: the segment with the most
    simulated cycles).  Raises CMSwitchError for a segment the flow does not have."""
    ids = [seg["id"] for seg in report["segments"]]
    if segment is None:
        return max(report["segments"], key=lambda seg: seg["cycles"])["id"]
    if not str(segment).isdigit() or int(segment) not in ids:
        raise CMSwitchError(f"timeline: no segment '{segment}' (the flow has {len(ids)}: "
                            f"{ids[0]}..{ids[-1]})")
    return int(segment)


def _line_texts(flow: str | os.PathLike, lines: set[int]) -> dict[int, str]:
    texts = {}
    for number, text in enumerate(FlowSource(flow).lines(), start=1):
        if number in lines:
            texts[number] = text.split(";")[0].strip()
    return texts


def short_name(name: str, width: int = 30) -> str:
    """`name` cut in the middle to at most `width` characters (``layers.0…o_proj``):
    the start says where in the model, the end which operator or piece."""
    if len(name) <= width:
        return name
    head = (width - 1) // 2
    return name[:head] + "…" + name[len(name) - (width - 1 - head):]


def _label(text: str) -> str:
    """A statement as its opcode and operator (CIM, VEC) or tensor and route (MEM):
    ``CIM.mvm conv1``, ``MEM.load x dram→a[40:48]``; names shortened by `short_name`."""
    words = [w for w in text.split() if w not in ("{", "}")]
    if not words:
        return text
    opcode = words[0]
    if opcode.startswith("MEM.") and len(words) >= 4 and "@" in words[1]:
        tensor, src = words[1].split("@", 1)
        return f"{opcode} {short_name(tensor, 22)} {src}→{words[3]}"
    name = next((w for w in words[1:] if "=" not in w), "")
    return f"{opcode} {short_name(name)}".strip()


def timeline_figure(spans: list[dict], title: str, clock_mhz: float | None = None) -> Figure:
    """A Gantt chart of one segment: one bar per statement (top = first), from its start
    to its end (cycles from the segment start; seconds on top with `clock_mhz`),
    coloured by kind; the statements of a `parallel` block overlap (the pipeline).
    Shows at most MAX_TIMELINE_ROWS.  Raises CMSwitchError for no statements."""
    if not spans:
        raise CMSwitchError("timeline: the segment has no statements")
    shown = spans[:MAX_TIMELINE_ROWS]
    fig = Figure(figsize=(PAPER_WIDTH, 1.5 + 0.16 * len(shown)), layout="constrained")
    ax = fig.subplots()
    horizon = max(s["end"] for s in shown) or 1
    families = set()
    for row, span in enumerate(shown):
        family = span["opcode"].split(".")[0] if span["opcode"].startswith(("VEC", "MEM")) \
            else span["opcode"]
        families.add("CIM.load_weight" if family == "CIM.write_operand" else family)
        length = max(span["end"] - span["start"], 0.0)
        colour = _KIND_COLORS.get(family, "#999999")
        ax.barh(row, length, left=span["start"], height=0.7, color=colour)
        if length < horizon / 400:  # too short to see (a 1-cycle switch): a diamond
            ax.plot([span["start"]], [row], marker="D", markersize=4, color=colour,
                    clip_on=False, zorder=3)
    blocks: dict = {}
    for span in shown:
        if span["parallel"] is not None:
            lo, hi = blocks.get(span["parallel"], (math.inf, -math.inf))
            blocks[span["parallel"]] = (min(lo, span["start"]), max(hi, span["end"]))
    for lo, hi in blocks.values():
        ax.axvspan(lo, hi, color="#f2f2f2", zorder=0)
    ax.set_yticks(range(len(shown)), [_label(s["text"]) for s in shown], fontsize=6.5,
                  family="monospace")
    ax.set_ylim(len(shown) - 0.5, -0.5)
    ax.set_xlim(0, horizon)
    _cycle_axis(ax, clock_mhz, "simulated cycles from the segment start")
    kinds = [(key, k) for key, k in (("CM.switch", "CM.switch"),
                                     ("CIM.load_weight", "load_weight / write_operand"),
                                     ("CIM.mvm", "CIM.mvm"), ("VEC", "VEC.*"), ("MEM", "MEM.*"))
             if key in families]
    handles = [Patch(color=_KIND_COLORS[key], label=k) for key, k in kinds]
    if blocks:
        handles.append(Patch(color="#f2f2f2", label="parallel block"))
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=6.5,
               frameon=False)
    more = f" (first {len(shown)} of {len(spans)} statements)" if len(spans) > len(shown) else ""
    fig.suptitle(title + more, fontsize=9)
    return fig


def timeline(flow: str | os.PathLike, path: str | os.PathLike, segment: int | str | None = None,
             title: str = "", report: dict | None = None) -> tuple[int, list[dict]]:
    """Draw one segment's pipeline timeline into `path` (PNG, and SVG beside it): the
    segment with the most simulated cycles when `segment` is None; returns
    `segment_trace`'s data.  Raises CMSwitchError for an unknown segment."""
    from cmswitch.sim.simulator import simulate

    if report is None or "trace" not in report:
        report = simulate(flow, trace=True)
    segment, spans = segment_trace(flow, segment, report)
    clock = report["arch_fields"].get("clock_mhz")
    name = f"{title}, " if title else ""
    _save(timeline_figure(spans, f"{name}segment {segment}: statements as simulated", clock),
          path)
    return segment, spans


MAX_OPERATOR_BARS = 24
"""The operator chart shows this many operators (the most simulated cycles first); the
rest are summed in its subtitle."""


def operator_figure(rows: list[dict[str, Any]], title: str,
                    clock_mhz: float | None = None) -> Figure:
    """Per operator (compile report rows after `api.add_simulation`): its alone cycles
    as the cost model predicts them (``predicted_load_cycles`` + ``_run_``) and as the
    simulator measures its statements (``simulated_load_cycles`` + ``_run_``), two
    stacked horizontal bars (load light, run dark), the `MAX_OPERATOR_BARS` operators
    with the most simulated cycles; the rest are summed in the subtitle.  Raises CMSwitchError
    for rows without simulated cycles."""
    if not rows or any("simulated_run_cycles" not in r for r in rows):
        raise CMSwitchError("operator chart: the report has no simulated operator cycles "
                            "(compile with --simulate)")

    def total(row, side):
        return row[f"{side}_load_cycles"] + row[f"{side}_run_cycles"]

    # a stable sort: ties stay in flow order (gelu:2 before gelu:10)
    ranked = sorted(rows, key=lambda r: -total(r, "simulated"))
    shown, rest = ranked[:MAX_OPERATOR_BARS], ranked[MAX_OPERATOR_BARS:]
    bars = [(short_name(r["name"], 34), r) for r in shown]
    fig = Figure(figsize=(PAPER_WIDTH, 1.6 + 0.24 * len(bars)), layout="constrained")
    ax = fig.subplots()
    colours = {"predicted": ("#b3cde3", "#1b6fa8"), "simulated": ("#fdcdac", "#d95f02")}
    for offset, side in ((-0.19, "predicted"), (0.19, "simulated")):
        ys = [i + offset for i in range(len(bars))]
        load = [r[f"{side}_load_cycles"] for _, r in bars]
        run = [r[f"{side}_run_cycles"] for _, r in bars]
        ax.barh(ys, load, height=0.36, color=colours[side][0],
                label=f"{side}: weight / operand load")
        ax.barh(ys, run, left=load, height=0.36, color=colours[side][1],
                label=f"{side}: MVMs / digital unit")
    ax.set_yticks(range(len(bars)), [name for name, _ in bars], fontsize=6.5,
                  family="monospace")
    ax.set_ylim(len(bars) - 0.5, -0.6)
    ax.grid(True, axis="x", alpha=0.3)
    _cycle_axis(ax, clock_mhz, "cycles of the operator's statements, each timed alone")
    fig.legend(loc="outside lower center", ncols=2, fontsize=7, frameon=False)
    if rest:  # a summed bar would dwarf the others: the sums go in words
        ax.set_title(f"not shown: {len(rest)} more operators, "
                     f"{_eng(sum(total(r, 'predicted') for r in rest))} cycles predicted, "
                     f"{_eng(sum(total(r, 'simulated') for r in rest))} simulated",
                     fontsize=7)
    fig.suptitle(title, fontsize=9)
    return fig


def _eng(value: float) -> str:
    """A cycle count in words: ``75``, ``200.5 k``, ``1.3 M``."""
    return EngFormatter(places=0 if abs(value) < 1000 else 1, sep=" ")(value)


def operator_chart(report: dict[str, Any], path: str | os.PathLike, title: str = "") -> None:
    """Draw `operator_figure` of a compile report with simulated operator cycles into
    `path` (PNG, and SVG beside it)."""
    clock = report.get("hardware", {}).get("clock_mhz")
    _save(operator_figure(report["operators"], title or "operators", clock), path)


def _model_label(name: str) -> str:
    """A model name without its folder and .onnx suffix (bench rows may carry a path)."""
    base = Path(str(name)).name
    return base[:-5] if base.endswith(".onnx") else base


def speedup_figure(rows: list[dict[str, Any]], baselines: list[str]) -> Figure:
    """Grouped bars: per bench row (model @ hardware), the speedup of cmswitch over
    each baseline (simulated cycles of the baseline / cmswitch's); a dashed line at 1
    and, last, the geometric mean over the rows."""
    labels = [f"{_model_label(r['model'])}\n{_model_label(r['arch'])}"
              + (f"\nb{r['batch']} s{r['seq']}" if r.get("seq") else "")
              for r in rows] + ["geomean"]
    fig = Figure(figsize=(max(PAPER_WIDTH, 0.9 * len(labels) + 2), 3.8), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / max(1, len(baselines))
    for b, base in enumerate(baselines):
        values = [r["speedup"].get(base) for r in rows]
        good = [v for v in values if v]
        values.append(geometric_mean(good) if good else None)
        xs = [x + (b - (len(baselines) - 1) / 2) * width for x in range(len(labels))]
        bars = ax.bar(xs, [v or 0.0 for v in values], width=width, label=f"vs {base}")
        ax.bar_label(bars, labels=[f"{v:.2f}" if v else "n/a" for v in values], fontsize=7,
                     padding=1, rotation=90 if len(baselines) > 2 else 0)
    ax.axhline(1.0, color="black", linestyle="--", linewidth=0.8)
    ax.set_xticks(range(len(labels)), labels, fontsize=7)
    ax.set_ylabel("speedup of cmswitch (x)", fontsize=8)
    ax.margins(y=0.15)
    ax.set_title("simulated speedup of cmswitch over each baseline", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def speedup_bars(rows: list[dict[str, Any]], baselines: list[str],
                 path: str | os.PathLike) -> None:
    """Draw `speedup_figure` into `path` (PNG, and SVG beside it)."""
    _save(speedup_figure(rows, baselines), path)


def _save(fig: Figure, path: str | os.PathLike) -> list[Path]:
    """Write the figure to `path` and as SVG beside it (same stem), byte-identical
    from run to run (fixed SVG ids, no date); returns both paths."""
    import matplotlib

    png = Path(path)
    svg = png.with_suffix(".svg")
    with matplotlib.rc_context({"svg.hashsalt": "cmswitch"}):
        fig.savefig(png, dpi=DPI)
        fig.savefig(svg, metadata={"Date": None})
    return [png, svg]


def plot_plan(plan, folder: str | os.PathLike, segment: int | str | None = None) -> list[Path]:
    """Write a compiled plan's pictures into `folder` (created if missing), each as
    PNG and SVG: ``MODEL_ARCH_STRATEGY_segments`` (the segment map on a time axis),
    ``..._timeline`` (segment `segment`'s statements; default the longest segment)
    and ``..._operators`` (predicted vs simulated alone cycles per operator); returns
    their paths.  The flow is simulated once.  Raises CMSwitchError when the folder
    cannot be made or the segment does not exist."""
    from cmswitch.api import add_simulation
    from cmswitch.sim.simulator import simulate

    out = ensure_folder(folder)
    stem = _stem(f"{plan.model}_{plan.arch.name}_{plan.strategy}")
    title = f"{plan.model} on {plan.arch.name}, strategy {plan.strategy}"
    report = simulate(plan.flow, trace=True, statements=True)
    chosen_segment(report, segment)  # an unknown segment fails before any file
    paths = []
    seg_path, time_path, op_path = (out / f"{stem}_{kind}.png"
                                    for kind in ("segments", "timeline", "operators"))
    segment_map(plan.flow, seg_path, title=title, report=report)
    timeline(plan.flow, time_path, segment=segment, title=title, report=report)
    operator_chart(add_simulation(plan.report(), report), op_path,
                   title=f"{title}: alone cycles per operator, cost model vs simulator")
    for path in (seg_path, time_path, op_path):
        paths += [path, path.with_suffix(".svg")]
    return paths


def ensure_folder(folder: str | os.PathLike) -> Path:
    """Create the folder (and its parents) if missing; return it.  Raises CMSwitchError
    when it cannot be made (a file in the way, no permission)."""
    out = Path(folder)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CMSwitchError(f"{folder}: cannot create the folder ({e.strerror})") from None
    return out


def _stem(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "_" for c in text)


# ----------------------------------------------------------------------------------
# hardware sweeps (`cmswitch sweep --plot DIR`)


def _finished(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if not r.get("error") and r.get("seconds") is not None]


def _series_label(row: dict[str, Any], others: list[str]) -> str:
    fixed = " ".join(f"{p}={row.get(p)}" for p in others)
    return f"{row['model']} {row['strategy']}" + (f" ({fixed})" if fixed else "")


def sweep_figure(rows: list[dict[str, Any]], param: str, params: list[str]) -> Figure:
    """Latency (ms) and energy (uJ, when known) of the finished sweep `rows` against
    swept field `param`: one line per model x strategy x value of the other swept
    fields.  A field spanning 8x or more gets a log2 axis."""
    others = [p for p in params if p != param]
    series: dict[str, list] = {}
    for row in _finished(rows):
        series.setdefault(_series_label(row, others), []).append(row)
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    ax_t, ax_e = fig.subplots(1, 2)
    for label, members in sorted(series.items()):
        members.sort(key=lambda r: r[param])
        xs = [r[param] for r in members]
        ax_t.plot(xs, [r["seconds"] * 1e3 for r in members], marker="o", label=label)
        known = [r for r in members if r.get("energy_pj") is not None]
        ax_e.plot([r[param] for r in known], [r["energy_pj"] * 1e-6 for r in known],
                  marker="o", label=label)
    values = [r[param] for r in _finished(rows) if isinstance(r[param], (int, float))]
    for ax, name in ((ax_t, "latency (ms)"), (ax_e, "energy (uJ)")):
        ax.set_xlabel(param)
        ax.set_ylabel(name)
        ax.grid(True, alpha=0.3)
        if values and min(values) > 0 and max(values) >= 8 * min(values):
            ax.set_xscale("log", base=2)
        if ax.get_yscale() == "linear":
            ax.ticklabel_format(axis="y", style="plain", useOffset=False)
    ax_t.set_title(f"latency vs {param}")
    ax_e.set_title(f"energy vs {param}")
    handles, labels = ax_t.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(3, len(labels)),
                   fontsize="small")
    return fig


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats or equals in both coordinates
    (smaller is better in each), sorted by the first coordinate."""
    order = sorted(range(len(points)), key=lambda i: points[i])
    front, best = [], math.inf
    for i in order:
        if points[i][1] < best:
            front.append(i)
            best = points[i][1]
    return front


PARETO_LABEL_GAP = 0.08
"""Pareto labels: a front point is labelled when it is at least this far (as a fraction
of the points' latency and energy ranges) from the last labelled one."""


def _spread(xy: list[tuple[float, float]], front: list[int]) -> list[int]:
    """The front points to label, in front order: the first, then each one at least
    `PARETO_LABEL_GAP` (normalised distance) from the last one kept."""
    if not front:
        return []
    span = [max(max(p[k] for p in xy) - min(p[k] for p in xy), 1e-12) for k in (0, 1)]
    kept = [front[0]]
    for i in front[1:]:
        last = xy[kept[-1]]
        if math.hypot((xy[i][0] - last[0]) / span[0],
                      (xy[i][1] - last[1]) / span[1]) >= PARETO_LABEL_GAP:
            kept.append(i)
    return kept


def pareto_figure(rows: list[dict[str, Any]], params: list[str]) -> Figure:
    """Energy (uJ) against latency (ms) of every finished point with energy, one panel
    per model, the latency-energy Pareto front drawn as a line and its points labelled
    with their swept fields (`_spread`: close points share one label)."""
    done = [r for r in _finished(rows) if r.get("energy_pj") is not None]
    models = sorted({r["model"] for r in done})
    fig = Figure(figsize=(5.2 * max(1, min(3, len(models))), 4.4), layout="constrained")
    axes = fig.subplots(1, max(1, min(3, len(models))), squeeze=False)[0]
    for ax, model in zip(axes, models):
        members = [r for r in done if r["model"] == model]
        xy = [(r["seconds"] * 1e3, r["energy_pj"] * 1e-6) for r in members]
        for strategy in sorted({r["strategy"] for r in members}):
            pts = [p for p, r in zip(xy, members) if r["strategy"] == strategy]
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], label=strategy, zorder=3)
        front = pareto_front(xy)
        ax.plot([xy[i][0] for i in front], [xy[i][1] for i in front], color="black",
                linewidth=1, zorder=2, label="Pareto front")
        for n, i in enumerate(_spread(xy, front)):
            text = " ".join(f"{p}={members[i].get(p)}" for p in params)
            if text:  # alternate above / below so neighbours' labels do not collide
                ax.annotate(text, xy[i], textcoords="offset points",
                            xytext=(4, 5 if n % 2 == 0 else -11), fontsize="x-small")
        ax.set_title(model)
        ax.set_xlabel("latency (ms)")
        ax.set_ylabel("energy (uJ)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    if not models:
        axes[0].text(0.5, 0.5, "no point with energy figures", ha="center",
                     transform=axes[0].transAxes)
    return fig


def sweep_plots(rows: list[dict[str, Any]], params: list[str],
                folder: str | os.PathLike) -> list[Path]:
    """Write ``sweep_<field>.png/.svg`` per swept field and ``pareto.png/.svg`` into
    `folder` (created if missing); returns the paths."""
    out = ensure_folder(folder)
    figures = [(f"sweep_{_stem(p)}", sweep_figure(rows, p, params)) for p in params]
    figures.append(("pareto", pareto_figure(rows, params)))
    paths = []
    for stem, fig in figures:
        paths += _save(fig, out / f"{stem}.png")
    return paths
