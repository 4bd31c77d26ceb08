"""Pictures of compiled models (matplotlib, PNG files).

- `segment_map`: per segment (x) and array (y), what the array does in that segment:
  compute (holds weights the segment runs), memory (holds the segment's data), or
  nothing: idle in memory mode (switched to memory mode, but the segment stores nothing
  there) or idle in compute mode.
  The real array addresses come from the flow (`CIM.load_weight ... -> a[LO:HI]`,
  `CIM.mvm OP a[LO:HI]`, data locations `T@a[LO:HI]`), read with the simulator's parser.
- `timeline`: one segment's statements as bars from their start to their end cycle, as
  timed by the simulator (`simulate(..., trace=True)`).
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

from cmswitch.errors import CMSwitchError
from cmswitch.sim.flow import ArchDecl, FlowSource, SegmentBegin, SegmentEnd, Statement, iter_records

MODES = ("idle", "idle-memory", "compute", "memory")
"""Array roles in a segment; the index is the value drawn in the segment map.
idle: compute mode, unused; idle-memory: memory mode, unused by the segment."""

MODE_COLORS = {"idle": "#e6e6e6", "idle-memory": "#bcd7ea", "compute": "#d95f02",
               "memory": "#1b6fa8"}
"""RGB of each role in the segment map (hex)."""

MAX_MAP_SEGMENTS = 64
"""The segment map shows at most this many segments (the first ones) by default."""

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


def segment_map_figure(segments: list[dict[str, Any]], title: str,
                       max_segments: int = MAX_MAP_SEGMENTS) -> Figure:
    """The segment map of `array_modes(...)` output: top, stacked bars of how many
    arrays compute / store / sit unused in memory mode per segment; bottom, the map (x: segment, y: array address,
    array 0 at the bottom; one cell per array, coloured by `MODE_COLORS`).  The map's
    axes carry the label "map".  Shows the first `max_segments` segments."""
    if not segments:
        raise CMSwitchError("segment map: the flow has no segments")
    shown = segments[:max_segments]
    arrays = len(shown[0]["modes"])
    grid = [[MODES.index(seg["modes"][i]) for seg in shown] for i in range(arrays)]
    width = min(16.0, max(6.0, 0.22 * len(shown) + 2.0))
    fig = Figure(figsize=(width, 7.5), layout="constrained")
    counts_ax, map_ax = fig.subplots(2, 1, sharex=True, height_ratios=(1, 3))
    xs = range(len(shown))
    counts = [mode_counts(seg["modes"]) for seg in shown]
    compute = [c["compute"] for c in counts]
    memory = [c["memory"] for c in counts]
    counts_ax.bar(xs, compute, width=0.8, color=MODE_COLORS["compute"], label="compute")
    counts_ax.bar(xs, memory, width=0.8, bottom=compute, color=MODE_COLORS["memory"],
                  label="memory")
    counts_ax.bar(xs, [c["idle-memory"] for c in counts], width=0.8,
                  bottom=[c + m for c, m in zip(compute, memory)],
                  color=MODE_COLORS["idle-memory"], label="memory mode, unused")
    if len(shown) <= 40:
        for x, c, m, top in zip(xs, compute, memory, counts):
            counts_ax.text(x, c + m + top["idle-memory"], f"{c}\n{m}", ha="center", va="bottom", fontsize=6,
                           linespacing=0.9)
    counts_ax.set_ylim(0, arrays * 1.35)
    counts_ax.set_ylabel("arrays")
    counts_ax.set_title("arrays per segment (labels: compute over memory)", fontsize=9)
    map_ax.set_label("map")
    map_ax.imshow(grid, origin="lower", aspect="auto", interpolation="nearest",
                  cmap=ListedColormap([MODE_COLORS[m] for m in MODES]), vmin=-0.5,
                  vmax=len(MODES) - 0.5, extent=(-0.5, len(shown) - 0.5, -0.5, arrays - 0.5))
    map_ax.set_xlabel("segment")
    map_ax.set_ylabel("array address")
    step = max(1, math.ceil(len(shown) / 32))
    map_ax.set_xticks(list(xs)[::step], [str(seg["id"]) for seg in shown][::step], fontsize=7)
    names = {"compute": "compute", "memory": "memory (stores data)",
             "idle-memory": "idle, memory mode", "idle": "idle, compute mode"}
    map_ax.legend(handles=[Patch(color=MODE_COLORS[m], label=names[m])
                           for m in ("compute", "memory", "idle-memory", "idle")],
                  loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    more = f" (first {len(shown)} of {len(segments)} segments)" if len(segments) > len(shown) else ""
    fig.suptitle(title + more, fontsize=10)
    return fig


def segment_map(flow: str | os.PathLike, path: str | os.PathLike, title: str = "",
                max_segments: int = MAX_MAP_SEGMENTS) -> list[dict[str, Any]]:
    """Draw the segment map of a flow into the PNG `path`; returns the `array_modes`
    data it was drawn from.  Raises CMSwitchError for a bad flow."""
    segments = array_modes(flow)
    _save(segment_map_figure(segments, title or "segment map", max_segments), path)
    return segments


def segment_trace(flow: str | os.PathLike, segment: int | str | None = None
                  ) -> tuple[int, list[dict]]:
    """Simulate a flow with the trace on and return ``(segment id, spans)``: the
    segment's statements with "start"/"end" in cycles from the segment's start, and
    "text" (the statement as written).  `segment` None picks the segment with the most
    simulated cycles.  Raises CMSwitchError for a bad flow or an unknown segment."""
    from cmswitch.sim.simulator import simulate

    report = simulate(flow, trace=True)
    ids = [seg["id"] for seg in report["segments"]]
    if segment is None:
        segment = max(report["segments"], key=lambda seg: seg["cycles"])["id"]
    if not str(segment).isdigit() or int(segment) not in ids:
        raise CMSwitchError(f"timeline: no segment '{segment}' (the flow has {len(ids)}: "
                            f"{ids[0]}..{ids[-1]})")
    segment = int(segment)
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


def _line_texts(flow: str | os.PathLike, lines: set[int]) -> dict[int, str]:
    texts = {}
    for number, text in enumerate(FlowSource(flow).lines(), start=1):
        if number in lines:
            texts[number] = text.split(";")[0].strip()
    return texts


def _label(text: str, width: int = 46) -> str:
    """A statement shortened to its opcode, operator and (for MEM) tensor."""
    words = text.split()
    keep = [w for w in words if "=" not in w and w not in ("->", "{", "}")]
    label = " ".join(keep[:3])
    return label if len(label) <= width else label[:width - 1] + "…"


def timeline_figure(spans: list[dict], title: str) -> Figure:
    """A Gantt chart of one segment: one bar per statement (top = first), from its start
    to its end (cycles from the segment start), coloured by kind; the statements of a
    `parallel` block overlap (the pipeline).  Shows at most MAX_TIMELINE_ROWS."""
    if not spans:
        raise CMSwitchError("timeline: the segment has no statements")
    shown = spans[:MAX_TIMELINE_ROWS]
    fig = Figure(figsize=(11, 1.2 + 0.32 * len(shown)), layout="constrained")
    ax = fig.subplots()
    for row, span in enumerate(shown):
        family = span["opcode"].split(".")[0] if span["opcode"].startswith(("VEC", "MEM")) \
            else span["opcode"]
        length = max(span["end"] - span["start"], 0.0)
        ax.barh(row, length, left=span["start"], height=0.6,
                color=_KIND_COLORS.get(family, "#999999"))
    blocks: dict = {}
    for span in shown:
        if span["parallel"] is not None:
            lo, hi = blocks.get(span["parallel"], (math.inf, -math.inf))
            blocks[span["parallel"]] = (min(lo, span["start"]), max(hi, span["end"]))
    for lo, hi in blocks.values():
        ax.axvspan(lo, hi, color="#f2f2f2", zorder=0)
    ax.set_yticks(range(len(shown)), [_label(s["text"]) for s in shown], fontsize=7,
                  family="monospace")
    ax.invert_yaxis()
    ax.set_xlabel("cycles from the segment start")
    ax.legend(handles=[Patch(color=c, label=k) for k, c in
                       (("CM.switch", _KIND_COLORS["CM.switch"]),
                        ("load_weight / write_operand", _KIND_COLORS["CIM.load_weight"]),
                        ("CIM.mvm", _KIND_COLORS["CIM.mvm"]), ("VEC.*", _KIND_COLORS["VEC"]),
                        ("MEM.*", _KIND_COLORS["MEM"]), ("parallel block", "#f2f2f2"))],
              loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7)
    more = f" (first {len(shown)} of {len(spans)} statements)" if len(spans) > len(shown) else ""
    ax.set_title(title + more, fontsize=10)
    return fig


def timeline(flow: str | os.PathLike, path: str | os.PathLike, segment: str | None = None,
             title: str = "") -> tuple[str, list[dict]]:
    """Draw one segment's pipeline timeline into the PNG `path` (the segment with the
    most simulated cycles when `segment` is None); returns `segment_trace`'s data."""
    segment, spans = segment_trace(flow, segment)
    name = f"{title}, " if title else ""
    _save(timeline_figure(spans, f"{name}segment {segment}: statement start/end (simulated)"),
          path)
    return segment, spans


def speedup_figure(rows: list[dict[str, Any]], baselines: list[str]) -> Figure:
    """Grouped bars: per bench row (model @ hardware), the speedup of cmswitch over
    each baseline (simulated cycles of the baseline / cmswitch's); a dashed line at 1
    and, last, the geometric mean over the rows."""
    labels = [f"{r['model']}\n{r['arch']}" + (f"\nb{r['batch']} s{r['seq']}" if r.get("seq") else "")
              for r in rows] + ["geomean"]
    fig = Figure(figsize=(max(6.0, 1.1 * len(labels) + 2), 4.5), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / max(1, len(baselines))
    for b, base in enumerate(baselines):
        values = [r["speedup"].get(base) for r in rows]
        good = [v for v in values if v]
        values.append(geometric_mean(good) if good else None)
        xs = [x + (b - (len(baselines) - 1) / 2) * width for x in range(len(labels))]
        bars = ax.bar(xs, [v or 0.0 for v in values], width=width, label=f"vs {base}")
        ax.bar_label(bars, labels=[f"{v:.2f}" if v else "n/a" for v in values], fontsize=6,
                     padding=1)
    ax.axhline(1.0, color="black", linestyle="--", linewidth=0.8)
    ax.set_xticks(range(len(labels)), labels, fontsize=7)
    ax.set_ylabel("speedup of cmswitch (x)")
    ax.set_title("simulated speedup of cmswitch over each baseline", fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def speedup_bars(rows: list[dict[str, Any]], baselines: list[str],
                 path: str | os.PathLike) -> None:
    """Draw `speedup_figure` into the PNG `path`."""
    _save(speedup_figure(rows, baselines), path)


def _save(fig: Figure, path: str | os.PathLike) -> None:
    fig.savefig(Path(path), dpi=110)


def plot_plan(plan, folder: str | os.PathLike) -> list[Path]:
    """Write a compiled plan's pictures into `folder` (created if missing):
    ``MODEL_ARCH_STRATEGY_segments.png`` and ``..._timeline.png``; returns their
    paths.  Raises CMSwitchError when the folder cannot be made."""
    out = ensure_folder(folder)
    stem = _stem(f"{plan.model}_{plan.arch.name}_{plan.strategy}")
    title = f"{plan.model} on {plan.arch.name}, strategy {plan.strategy}"
    seg_path, time_path = out / f"{stem}_segments.png", out / f"{stem}_timeline.png"
    segment_map(plan.flow, seg_path, title=title)
    timeline(plan.flow, time_path, title=title)
    return [seg_path, time_path]


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


def pareto_figure(rows: list[dict[str, Any]], params: list[str]) -> Figure:
    """Energy (uJ) against latency (ms) of every finished point with energy, one panel
    per model, the latency-energy Pareto front drawn as a line and its points labelled
    with their swept fields."""
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
        for i in front:
            text = " ".join(f"{p}={members[i].get(p)}" for p in params)
            if text:
                ax.annotate(text, xy[i], textcoords="offset points", xytext=(4, 4),
                            fontsize="x-small")
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
    import matplotlib

    out = ensure_folder(folder)
    figures = [(f"sweep_{_stem(p)}", sweep_figure(rows, p, params)) for p in params]
    figures.append(("pareto", pareto_figure(rows, params)))
    paths = []
    with matplotlib.rc_context({"svg.hashsalt": "cmswitch"}):  # byte-identical SVG ids
        for stem, fig in figures:
            for suffix in (".png", ".svg"):
                path = out / f"{stem}{suffix}"
                fig.savefig(path, dpi=110,
                            metadata={"Date": None} if suffix == ".svg" else None)
                paths.append(path)
    return paths
