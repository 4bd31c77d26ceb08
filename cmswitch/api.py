"""Python API: `compile` a model into a `Plan` (DESIGN.md §8).  The CLIs are thin
layers over it."""

from __future__ import annotations

import io
import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp, StringAttr
from xdsl.parser import Parser

from cmswitch.arch import Arch, load_arch
from cmswitch.cost.graph import Graph, build_graph
from cmswitch.cost.model import alone_cycles
from cmswitch.dialects.cim import HOLD_RANGE_ATTR, PLACES_ATTR, POOL_ATTR, SegmentOp
from cmswitch.errors import CMSwitchError
from cmswitch.dialects.cim import NODE_ATTR
from cmswitch.dialects.cim import ARCH_ATTR, hardware_attr
from cmswitch.transforms.common import main_func

STRATEGIES = ("cmswitch", "cimmlc", "puma", "occ", "dp-compute-only", "greedy-mip")
"""`cmswitch` (DP + MIP, dual-mode); the all-compute baselines `cimmlc`
(strategies/cimmlc.py), `puma` and `occ` (strategies/layerwise.py); and two ablations
of CMSwitch: `dp-compute-only` (its DP segmentation, no memory-mode arrays) and
`greedy-mip` (CIM-MLC's greedy segmentation, the dual-mode MIP per segment)."""

MIP_STRATEGIES = ("cmswitch", "dp-compute-only", "greedy-mip")
"""The strategies whose segments get the Pyomo MIP (`cim-allocate`)."""


@dataclass
class Plan:
    """A compiled model: its segments with their allocation, the optimizer's predicted
    cycles, the lower bound, and the `.cmsasm` flow."""

    model: str
    arch: Arch
    strategy: str
    segments: list[dict[str, Any]]
    operators: list[dict[str, Any]]
    predicted_cycles: int
    lower_bound_cycles: int
    compile_seconds: float
    flow: str
    mip: dict[str, int] = field(default_factory=dict)
    chunk_arrays: int = 0
    """Arrays per piece of the operators split by `cim-partition` (see
    `chunk_candidates`)."""
    piece_shape: str = "full-k"
    """How those pieces are shaped (`cmswitch.transforms.cim_partition.PIECE_SHAPES`)."""
    #: the allocated `cim` module the flow was lowered from (a copy, kept only when
    #: `compile(..., keep_module=True)`; functional mode reads operator semantics there)
    module: ModuleOp | None = None
    solver: str = "glpk"
    """The MIP solver of the chosen segments (`cim-allocate`)."""
    batch: int | None = None
    """The batch the compile bound (``--batch``; None: the model's own)."""
    seq: int | None = None
    """The sequence length the compile bound (``--seq``; None: the model's own)."""
    dims: dict[str, int] = field(default_factory=dict)
    """The named dynamic dims the compile bound (``--dim NAME=VALUE``)."""
    options: ConfigOptions = field(default_factory=lambda: ConfigOptions())
    """The layers, phase and KV-cache length a published configuration was built with."""
    lower_bound_terms: dict[str, int] = field(default_factory=dict)
    """`lower_bound_terms`: the bound per resource (cycles); `lower_bound_cycles` is
    their maximum."""

    def report(self) -> dict[str, Any]:
        """The JSON report of `cmswitch compile` (cycles are integers)."""
        return {
            "model": self.model, "arch": self.arch.name, "strategy": self.strategy,
            "solver": self.solver, "batch": self.batch, "seq": self.seq,
            "layer_count": self.options.layers, "phase": self.options.phase,
            "kv_len": self.options.kv_len,
            "hardware": self.arch.header_fields(),
            "predicted_cycles": self.predicted_cycles,
            "lower_bound_cycles": self.lower_bound_cycles,
            "lower_bound": {"cycles": self.lower_bound_cycles, "terms": self.lower_bound_terms,
                            "binding": max(self.lower_bound_terms, default=None,
                                           key=lambda k: self.lower_bound_terms[k])},
            "compile_seconds": round(self.compile_seconds, 3),
            "units": {"cycles": "clock cycles", "bytes": "bytes", "arrays": "arrays"},
            "mip": self.mip, "chunk_arrays": self.chunk_arrays, "piece_shape": self.piece_shape,
            "segments": self.segments,
            "operators": self.operators, "layers": split_layers(self.operators),
            **({"kv_cache": kv_cache(self.operators)} if self.options.phase == "decode" else {}),
        }

    def flow_operators(self):
        """The kept module by flow names (`operators_of`), for functional mode.  Raises
        CMSwitchError without one (compile with ``keep_module=True``)."""
        if self.module is None:
            raise CMSwitchError("functional mode needs the compiled module: "
                                "compile with keep_module=True")
        return operators_of(self.module)

    def simulate(self, statements: bool = False) -> dict[str, Any]:
        """Run the flow in the independent simulator; returns its report (with
        ``statement_rows`` when `statements`)."""
        from cmswitch.sim.simulator import simulate

        return simulate(self.flow, statements=statements)


def kv_cache(operators: list[dict[str, Any]]) -> dict[str, Any]:
    """Where a decode step's KV cache lives, from the operator rows: per cached tensor
    (``layers.i.past_kT`` / ``past_v``, `cmswitch.frontend.configs`) its bytes, the
    operator reading it, its segment and place ("pool": memory-mode arrays, "gb",
    "dram"); and the total bytes per place."""
    rows, totals = [], {}
    for op in operators:
        for tensor, place in op.get("tensor_places", {}).items():
            if ".past_" not in tensor:
                continue
            nbytes = op["weight_bytes"] if op.get("kind") == "dynamic" else None
            rows.append({"tensor": tensor, "bytes": nbytes, "operator": op["name"],
                         "segment": op["segment"], "place": place})
            totals[place] = totals.get(place, 0) + (nbytes or 0)
    return {"tensors": rows, "bytes_by_place": dict(sorted(totals.items()))}


_LOADS = ("CIM.load_weight", "CIM.write_operand")


def add_simulation(report: dict[str, Any], sim: dict[str, Any]) -> dict[str, Any]:
    """The compile report with the simulator's measurements beside the prediction:
    ``simulated_cycles``, ``prediction_error`` (predicted / simulated - 1),
    ``simulated_energy``, ``simulated_segments`` ({id, cycles}) and, per operator row,
    ``simulated_load_cycles`` / ``simulated_run_cycles``: the simulator's alone cycles
    of the operator's weight or operand writes and of its MVMs or VEC statements (the
    counterparts of ``predicted_load_cycles`` / ``predicted_run_cycles``), and
    ``simulated_move_cycles``: the MEM statements that move its output (which the
    cost model prices in the segment's port rows, not per operator).  The three add up
    to ``alone_cycles`` of the operator's row in ``cmswitch-sim --json``.  `sim` must hold ``statement_rows``
    (`Plan.simulate(statements=True)`); raises KeyError otherwise."""
    alone: dict[str, dict[str, int]] = {}
    for row in sim["statement_rows"]:
        if row["opcode"].startswith("MEM."):
            part = "move"  # named by the tensor it moves: its producer's name
        elif row["opcode"].startswith(("CIM.", "VEC.")):
            part = "load" if row["opcode"] in _LOADS else "run"
        else:
            continue
        totals = alone.setdefault(row["name"], {"load": 0, "run": 0, "move": 0})
        totals[part] += row["alone_cycles"]
    out = dict(report)
    out["operators"] = [
        dict(row, **{f"simulated_{part}_cycles": alone.get(row["name"], {}).get(part, 0)
                     for part in ("load", "run", "move")})
        for row in report["operators"]]
    out["simulated_cycles"] = sim["cycles"]
    out["prediction_error"] = round(report["predicted_cycles"] / sim["cycles"] - 1, 4)
    out["simulated_energy"] = sim["energy"]
    out["simulated_segments"] = [{"id": s["id"], "cycles": s["cycles"]} for s in sim["segments"]]
    return out


def operators_of(module: ModuleOp):
    """An allocated `cim` module seen through the flow's names
    (`cmswitch.sim.functional.Operators`): operators by `GraphOp.name`, tensor shapes
    and numpy dtypes by `Tensor.name`, input and output names in argument / return
    order.  The optimizer's graph names the flow, so this lives here, not in `sim/`."""
    from cmswitch.dialects.cim import tensor_shape
    from cmswitch.sim.functional import Operators
    from cmswitch.sim.onnx_weights import np_dtype
    from cmswitch.transforms.common import resolve_arch

    func = main_func(module)
    graph = build_graph(func, resolve_arch(module, None))
    shapes, dtypes = {}, {}
    for value, index in graph.value_ids.items():
        name = graph.tensors[index].name
        shapes[name] = tensor_shape(value)
        dtypes[name] = np_dtype(value.type)
    ret = func.body.block.last_op
    return Operators(
        ops={g.name: g.op for g in graph.ops}, shapes=shapes, dtypes=dtypes,
        inputs=[graph.tensors[graph.value_ids[a]].name for a in func.body.block.args],
        outputs=[graph.tensors[graph.value_ids[v]].name for v in ret.operands],
        names={v: graph.tensors[i].name for v, i in graph.value_ids.items()},
        views=dict(graph.views))


_SUMMED = ("arrays_per_copy", "weight_bytes", "feed_bytes", "compute_cycles_one_copy",
           "vector_ops")


def split_layers(operators: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Roll-up rows of the ONNX nodes `cim-partition` split into several weight pieces:
    per node (report rows' ``node``), its operator rows' names, segments, weight
    pieces, and the sums of `_SUMMED` (arrays for one copy of every piece, weight and
    feed bytes, one-copy compute cycles, digital-unit ops of its slices / partial sums
    / concat).  In node order of first appearance."""
    rows: dict[str, list[dict[str, Any]]] = {}
    for row in operators:
        if "node" in row:
            rows.setdefault(row["node"], []).append(row)
    layers = []
    for node, members in rows.items():
        pieces = sum(1 for r in members if "m" in r)
        if pieces < 2:
            continue
        layer: dict[str, Any] = {
            "node": node, "operators": [r["name"] for r in members],
            "segments": sorted({r["segment"] for r in members}), "pieces": pieces}
        layer.update({key: sum(r.get(key, 0) for r in members) for key in _SUMMED})
        layers.append(layer)
    return layers


def _all_dialects(ctx: Context) -> None:
    from xdsl.dialects.builtin import Builtin
    from xdsl.dialects.func import Func

    from cmswitch.dialects.cim import CIM
    from cmswitch.dialects.metaop import METAOP

    for d in (Builtin, Func, CIM, METAOP):
        ctx.load_dialect(d)


@dataclass(frozen=True)
class ConfigOptions:
    """What to build of a published configuration (`cmswitch.frontend.configs`):
    the first `layers` layers (None: all), the `phase` ("prefill" or "decode") and,
    for a decode step, the cached tokens `kv_len`.  ONNX and MLIR models take none."""

    layers: int | None = None
    phase: str = "prefill"
    kv_len: int | None = None

    def given(self) -> bool:
        return self != ConfigOptions()


def _is_config(model: str) -> bool:
    """Whether `model` names a published configuration (and no file of that name)."""
    from cmswitch.frontend.configs import CONFIGS

    return model in CONFIGS and not Path(model).exists()


def load_module(model: str | Path, dims: dict[str, int] | None = None,
                batch: int | None = None, seq: int | None = None,
                options: ConfigOptions = ConfigOptions()) -> ModuleOp:
    """Import an `.onnx` file, parse an `.mlir` file, or build a published transformer
    configuration by name (``llama2-7b``, ``opt-13b``, ``bert-base``, ...; `batch`
    default 1, `seq` default 128; `options` its layers, phase and KV-cache length) into
    a `cim` module.  For ONNX, `dims`, `batch`, `seq` bind dynamic input dimensions.
    Raises CMSwitchError for a missing/unreadable/invalid file or an unused binding."""
    from cmswitch.frontend.configs import CONFIGS

    path = Path(model)
    if not path.exists() and (not path.suffix or str(model) in CONFIGS):
        from cmswitch.frontend.configs import build_transformer

        if dims:
            raise CMSwitchError(f"{model}: --dim applies to ONNX models; use --batch and --seq")
        return build_transformer(str(model), batch or 1, seq, options.layers,
                                 options.phase, options.kv_len)
    if options.given():
        raise CMSwitchError(f"{model}: --layers, --phase and --kv-len apply to the published "
                            f"configurations ({', '.join(CONFIGS)})")
    if path.is_dir():
        raise CMSwitchError(f"{model}: is a directory, not a model file")
    if not path.is_file():
        raise CMSwitchError(f"{model}: no such model file")
    if path.suffix == ".onnx":
        from cmswitch.frontend.onnx_importer import import_onnx

        return import_onnx(path, dims=dims, name=path.stem, batch=batch, seq=seq)
    if path.suffix != ".mlir":
        raise CMSwitchError(f"{model}: expected an .onnx or .mlir model")
    if dims or batch or seq:
        raise CMSwitchError(f"{model}: --batch/--seq/--dim apply to ONNX models only")
    from xdsl.utils.exceptions import ParseError, VerifyException

    ctx = Context()
    _all_dialects(ctx)
    try:
        module = Parser(ctx, path.read_text(), str(path)).parse_module()
    except ParseError as e:
        raise CMSwitchError(" ".join(str(e).split())) from None
    try:
        module.verify()
    except VerifyException as e:
        raise CMSwitchError(f"{path}: {_failing_op(module)}{' '.join(str(e).split())}") from None
    if "cim.model" not in module.attributes:
        module.attributes["cim.model"] = StringAttr(path.stem)
    return module


def _failing_op(module: ModuleOp) -> str:
    """``op 'NAME' (%result, the Nth op of the file): `` for the first operation whose
    own verifier fails (xDSL's verifier messages do not name the op), else ''."""
    from xdsl.utils.exceptions import VerifyException

    for index, op in enumerate(module.walk()):
        try:
            op.verify_()
        except VerifyException:
            result = f"%{op.results[0].name_hint}, " if op.results and op.results[0].name_hint else ""
            return f"op '{op.name}' ({result}operation {index} of the module): "
    return ""


LOWER_BOUND_TERMS = ("compute", "dram", "weight_write", "digital")
"""The terms of `lower_bound_terms`, in the order reports list them."""


def lower_bound_terms(graph: Graph, arch: Arch) -> dict[str, int]:
    """Cycles no schedule can beat, one term per resource every schedule must use
    (issue 17; each is a bound, so their maximum is one):

    - compute: array-cycles of all MVM work, ``sum_i a_i * M_i * mvm_cycles`` (dynamic
      matmuls: every instance), over all arrays;
    - dram: the bytes that must cross the chip boundary — weights, model inputs and
      outputs — at ``external_bw_bytes``;
    - weight_write: every weight and every run-time operand of a dynamic matmul (K^T
      and V of attention) is written into arrays once, at ``weight_write_bw_bytes``;
    - digital: every digital-unit operation (softmax, GELU, norms, copying moves...)
      at ``vector_ops_per_cycle``.

    `graph` is the model's before `cim-partition` (`compile` builds it so): the slices
    and partial sums a split adds depend on how it is cut, which is a choice of the
    schedule, so they are not in the bound.  Rounded up to whole cycles."""
    import math

    work = sum(o.cost.arrays * o.cost.compute for o in graph.ops if o.cost.arrays)
    weights = sum(o.cost.weight_bytes for o in graph.ops if o.cost.kind == "weight")
    operands = sum(o.cost.weight_bytes for o in graph.ops if o.cost.kind == "dynamic")
    boundary = weights + sum(t.bytes for t in graph.tensors if t.producer is None or t.is_output)
    ops = sum(o.cost.vector_ops for o in graph.ops)
    terms = {"compute": work / arch.arrays, "dram": boundary / arch.external_bw_bytes,
             "weight_write": (weights + operands) / arch.weight_write_bw_bytes,
             "digital": ops / arch.vector_ops_per_cycle}
    return {k: math.ceil(terms[k] - 1e-9) for k in LOWER_BOUND_TERMS}


def _op_type(op) -> str:
    """An operator row's type: the `cim` op (``conv2d``, ``matmul``, ``dyn_matmul``) or
    a vector op's kind (``vector.relu``)."""
    kind = op.attributes.get("kind") or op.properties.get("kind")
    name = op.name.removeprefix("cim.")
    return f"{name}.{kind.data}" if name == "vector" and isinstance(kind, StringAttr) else name


def _segment_rows(graph: Graph, func, arch: Arch) -> tuple[list[dict], list[dict]]:
    index = {o.op: o for o in graph.ops}
    segments, operators = [], []
    hold_in: tuple[int, int] | None = None  # the previous segment's hold range
    for seg in (o for o in func.body.block.ops if isinstance(o, SegmentOp)):
        members = [index[o] for o in seg.body.block.ops if o in index]
        attrs = seg.attributes
        seg_id = seg.id.value.data
        segments.append({
            "id": seg_id,
            "operators": [g.name for g in members],
            "compute_arrays": attrs["compute_arrays"].value.data,
            "memory_arrays": attrs["memory_arrays"].value.data,
            "weight_copies": {g.name: g.op.attributes["copies"].value.data
                              for g in members if "copies" in g.op.attributes},
            "predicted_cycles": attrs["predicted_cycles"].value.data,
            "load_cycles": attrs["load_cycles"].value.data,
            "latency_cycles": attrs["latency_cycles"].value.data,
            "solver_status": attrs["solver_status"].data,
        })
        bandwidth = _place_bandwidths(seg, hold_in, arch)
        places = {k: v.data for k, v in attrs[PLACES_ATTR].data.items()} \
            if PLACES_ATTR in attrs else {}
        operators += [_operator_row(graph, g, seg_id, places, bandwidth, arch)
                      for g in members]
        hold_in = seg.array_range(HOLD_RANGE_ATTR)
    return segments, operators


def _place_bandwidths(seg: SegmentOp, hold_in: tuple[int, int] | None,
                      arch: Arch) -> dict[str, float]:
    """Bytes/cycle of each place a segment's tensors live in: its pool and hold ranges
    (arrays x internal_bw_bits/8), the global buffer and DRAM."""
    per_array = arch.internal_bw_bits / 8
    width = {"pool": seg.array_range(POOL_ATTR), "hold_out": seg.array_range(HOLD_RANGE_ATTR),
             "hold_in": hold_in}
    bandwidth = {place: (r[1] - r[0]) * per_array for place, r in width.items() if r}
    bandwidth.update(gb=arch.global_buffer_bw_bytes, dram=arch.external_bw_bytes)
    return bandwidth


def _operator_row(graph: Graph, g, seg_id: int, places: dict[str, str],
                  bandwidth: dict[str, float], arch: Arch) -> dict[str, Any]:
    """One operator row: names, type, shape and mapping, where its tensors live and the
    bytes it puts on each place, and the cost model's alone cycles (`alone_cycles`)."""
    row = {"name": g.name, "segment": seg_id, "kind": g.cost.kind, "op": _op_type(g.op)}
    node = g.op.attributes.get(NODE_ATTR)
    if isinstance(node, StringAttr):
        row["node"] = node.data
    tensors = [graph.tensors[t] for t in (*g.inputs, *g.outputs)]
    row["tensor_places"] = {t.name: places.get(t.name, "dram") for t in tensors}
    copies = 1
    if g.cost.arrays:
        hw_cells = arch.rows * arch.weights_per_row
        copies = g.op.attributes["copies"].value.data
        row.update({
            "m": g.cost.m, "k": g.cost.k, "n": g.cost.n, "groups": g.cost.groups,
            "arrays_per_copy": g.cost.arrays, "copies": copies,
            "compute_cycles_one_copy": g.cost.compute,
            "feed_bytes": g.cost.feed, "weight_bytes": g.cost.weight_bytes,
            # weights per copy / cells of its arrays: depthwise convs are ~2%
            "cell_utilization": round(
                g.cost.groups * g.cost.k * g.cost.n
                / (g.cost.arrays * hw_cells), 4) if g.cost.kind == "weight" else None,
        })
        # the streamed input carries K of every K + N fed bytes, the output N
        share = g.cost.k / (g.cost.k + g.cost.n)
        moved = [(graph.tensors[g.inputs[0]], g.cost.feed * share),
                 (graph.tensors[g.outputs[0]], g.cost.feed * (1 - share))]
    else:
        row["vector_ops"] = g.cost.vector_ops
        moved = [(tensor, tensor.bytes) for tensor in tensors]
    port_bytes: dict[str, float] = {}
    for tensor, nbytes in moved:
        place = row["tensor_places"][tensor.name]
        if place == "stream":  # handed from producer to the digital unit: no port
            continue
        port_bytes[place] = port_bytes.get(place, 0.0) + nbytes
    row["port_bytes"] = {place: round(v) for place, v in sorted(port_bytes.items())}
    load, run = alone_cycles(g.cost, copies, port_bytes, bandwidth, arch)
    row["predicted_load_cycles"] = round(load)
    row["predicted_run_cycles"] = round(run)
    return row


def _apply_plan(module: ModuleOp, arch: Arch, strategy: str, solver: str,
                time_limit: float | None, jobs: int = 0) -> None:
    """Segment and allocate with a strategy other than the DP passes: wrap its
    segments and write its allocations, as `cim-segment` + `cim-allocate` would."""
    from cmswitch.strategies.cimmlc import cimmlc_plan, greedy_segments
    from cmswitch.strategies.layerwise import layerwise_plan
    from cmswitch.cost.graph import segment_problem
    from cmswitch.solver.mip import solve_cache
    from cmswitch.transforms.layout import annotate_plan
    from cmswitch.transforms.segments import SegmentChoice

    func = main_func(module)
    graph = build_graph(func, arch)
    if strategy == "cimmlc":
        plan = cimmlc_plan(graph, arch)
    elif strategy == "greedy-mip":
        spans = greedy_segments(graph, arch)
        allocs = solve_cache().allocate_all(
            [(segment_problem(graph, first, last), graph.span(first, last))
             for first, last in spans], arch, solver, time_limit, jobs)
        plan = [SegmentChoice(first, last, alloc)
                for (first, last), alloc in zip(spans, allocs)]
    else:
        plan = layerwise_plan(graph, arch, strategy)
    annotate_plan(func, graph, plan, arch, strategy)


def chunk_candidates(arch: Arch) -> tuple[int, ...]:
    """Chunk sizes (arrays per piece, `cim-partition`'s ``max-arrays``) the `cmswitch`
    strategy tries for operators larger than the chip, keeping the plan with the
    fewest cycles the DP predicts (`cim-segment`; only that plan goes on to
    `cim-allocate`, DESIGN.md §9.4): half the chip (room for memory-mode
    arrays beside each piece) and the whole chip (fewest pieces, fewest partial sums).
    Measured on the 2-layer LLaMA2-7B: 45.9 M simulated cycles at half, 32.9 M whole."""
    return tuple(sorted({max(1, arch.arrays // 2), arch.arrays}))


def _count_ops(module: ModuleOp) -> int:
    """Operators of the main function, counting inside segments."""
    return sum(1 for _ in main_func(module).walk()) - 1


def hardware(arch: str | Path | Arch | None = None, **overrides: Any) -> Arch:
    """The hardware of a compile: a preset name, a YAML/JSON file, an `Arch` object or
    None (the default preset), with `overrides` (hardware fields, e.g. ``arrays=48``)
    replaced; `Arch.with_overrides` names the result.  Raises CMSwitchError for an
    unknown field (with the nearest field name), a bad value or an unknown preset."""
    base = arch.revalidated() if isinstance(arch, Arch) else load_arch(str(arch) if arch else None)
    unknown = [key for key in overrides if key not in Arch.model_fields]
    if unknown:
        import difflib

        near = difflib.get_close_matches(unknown[0], list(Arch.model_fields), n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        raise CMSwitchError(f"unknown hardware field '{unknown[0]}'{hint}")
    return base.with_overrides(**overrides)


def compile(model: str | Path | ModuleOp, arch: str | Path | Arch | None = None,
            strategy: str = "cmswitch", solver: str = "glpk",
            dims: dict[str, int] | None = None, time_limit: float | None = None,
            batch: int | None = None, seq: int | None = None,
            keep_module: bool = False, chunk_arrays: int | None = None,
            jobs: int = 0, layers: int | None = None, phase: str = "prefill",
            kv_len: int | None = None, piece_shape: str | None = None,
            **overrides: Any) -> Plan:
    """Compile a model (path to `.onnx`/`.mlir`, or a `cim` module) for a hardware
    preset, file or `Arch` object, with `overrides` of its fields (``arrays=48``;
    see `hardware`): cim-partition, cim-segment, cim-allocate, cim-to-metaop, assembly.
    `keep_module=True` keeps a copy of the allocated `cim` module in `Plan.module`.
    `chunk_arrays` pins the arrays per piece of split operators (default: the
    `cmswitch` and `dp-compute-only` strategies try `chunk_candidates`, the others use
    half the chip); `piece_shape` pins how their pieces are shaped
    (`cmswitch.transforms.cim_partition.PIECE_SHAPES`; default: those two strategies
    try both, the others use ``full-k``).  Raises CMSwitchError for bad input,
    unknown strategy or hardware, a `chunk_arrays` outside 1..arrays or an unknown
    `piece_shape`.  `jobs`: worker processes for the chosen
    segments' MIPs (`cmswitch.solver.workers`; 0 = ``$CMSWITCH_JOBS`` or every core,
    1 = in-process); the plan does not depend on it.  `layers`, `phase`, `kv_len`: what
    to build of a published configuration (`ConfigOptions`; ``phase="decode"``: one
    decode step against a KV cache of `kv_len` tokens).  Every compile starts on an
    empty solve cache (`fresh_cache`): nothing priced by an earlier compile is reused."""
    from cmswitch.solver.mip import fresh_cache

    with fresh_cache() as cache:
        return _compile(model, arch, strategy, solver, dims, time_limit, batch, seq,
                        keep_module, chunk_arrays, cache, jobs, overrides,
                        ConfigOptions(layers, phase, kv_len), piece_shape)


def _compile(model, arch, strategy, solver, dims, time_limit, batch, seq, keep_module,
             chunk_arrays, cache, jobs, overrides, options: ConfigOptions,
             piece_shape: str | None = None) -> Plan:
    from cmswitch.asm.printer import print_flow
    from cmswitch.transforms.cim_allocate import CimAllocatePass
    from cmswitch.transforms.cim_partition import PIECE_SHAPES, CimPartitionPass
    from cmswitch.transforms.cim_segment import CimSegmentPass
    from cmswitch.transforms.segments import predicted_cycles, write_segments
    from cmswitch.solver.workers import prestart
    from cmswitch.transforms.cim_to_metaop import CimToMetaopPass

    if strategy not in STRATEGIES:
        raise CMSwitchError(f"unknown strategy '{strategy}' (available: {', '.join(STRATEGIES)})")
    start = time.perf_counter()
    if strategy in MIP_STRATEGIES:
        prestart(jobs)  # Pyomo loads in the workers while the model imports and the DP runs
    hw = hardware(arch, **overrides)  # a bad field fails before the model is read
    module = model if isinstance(model, ModuleOp) else load_module(model, dims, batch, seq, options)
    if isinstance(model, str) and _is_config(model):  # the report names what was built
        from cmswitch.frontend.configs import DEFAULT_SEQ

        batch = batch or 1
        seq = (seq or DEFAULT_SEQ) if options.phase == "prefill" else None
    if isinstance(arch, Arch) or overrides:
        module.attributes[ARCH_ATTR] = hardware_attr(hw.header_fields())  # recorded inline
    elif arch:
        module.attributes[ARCH_ATTR] = StringAttr(str(arch))
    ctx = Context()
    _all_dialects(ctx)
    if chunk_arrays is not None and not 0 < chunk_arrays <= hw.arrays:
        raise CMSwitchError(f"chunk_arrays={chunk_arrays}: must be 1..{hw.arrays}")
    if piece_shape is not None and piece_shape not in PIECE_SHAPES:
        raise CMSwitchError(f"piece shape '{piece_shape}': must be one of "
                            f"{', '.join(PIECE_SHAPES)}")
    chunk = chunk_arrays or hw.arrays // 2
    shape = piece_shape or PIECE_SHAPES[0]
    # the bound is the model's, before cim-partition: the same for every strategy,
    # chunk size and piece shape (the partial sums a split adds are a choice)
    terms = lower_bound_terms(build_graph(main_func(module), hw), hw)
    if strategy in ("cmswitch", "dp-compute-only"):
        best = None
        segmenter = CimSegmentPass(memory_mode=strategy == "cmswitch")
        limits = (chunk_arrays,) if chunk_arrays else chunk_candidates(hw)
        shapes = (piece_shape,) if piece_shape else PIECE_SHAPES
        for limit, trial_shape in itertools.product(limits, shapes):
            trial = module.clone()
            before = _count_ops(trial)
            CimPartitionPass(max_arrays=limit, shape=trial_shape).apply(ctx, trial)
            split = _count_ops(trial) != before
            # the DP's own prediction picks the chunk size and the piece shape; only
            # the winner's segments are written into its IR and get the full MIP
            # (cim-allocate)
            graph, plan = segmenter.plan(main_func(trial), hw)
            cycles = predicted_cycles(plan)
            if best is None or cycles < best[0]:
                best = (cycles, trial, limit, trial_shape, graph, plan)
            if not split:
                break  # nothing was split: the chunk size and shape do not matter
        _, module, chunk, shape, graph, plan = best
        write_segments(main_func(module), graph, plan)
        CimAllocatePass(solver=solver, time_limit=time_limit or 0.0, jobs=jobs).apply(ctx, module)
    else:
        CimPartitionPass(max_arrays=chunk, shape=shape).apply(ctx, module)
        _apply_plan(module, hw, strategy, solver, time_limit, jobs)
    func = main_func(module)
    graph = build_graph(func, hw)
    segments, operators = _segment_rows(graph, func, hw)
    bound = max(terms.values())
    predicted = sum(s["predicted_cycles"] for s in segments)
    kept = module.clone() if keep_module else None
    CimToMetaopPass().apply(ctx, module)
    text = io.StringIO()
    print_flow(module, text)
    name = module.attributes.get("cim.model")
    return Plan(
        model=name.data if isinstance(name, StringAttr) else "model", arch=hw,
        strategy=strategy, segments=segments, operators=operators,
        predicted_cycles=predicted, lower_bound_cycles=bound, lower_bound_terms=terms,
        compile_seconds=time.perf_counter() - start, flow=text.getvalue(),
        mip={"solves": cache.priced, "cache_hits": cache.hits, "segment_mips": cache.mips},
        chunk_arrays=chunk, piece_shape=shape,
        module=kept, solver=solver, batch=batch, seq=seq, options=options,
        dims=dict(dims or {}),
    )
