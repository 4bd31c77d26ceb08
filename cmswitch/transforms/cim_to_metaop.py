"""`cim-to-metaop`: lower allocated segments to the meta-operator flow (DESIGN.md §5).

Per segment, in order:
1. `CM.switch` only where an array's mode changes (reset: all arrays compute mode):
   its compute ranges and those of the next segment's preloaded weight ops to compute
   mode, its pool and hold ranges to memory mode (`mode_changes`);
2. `CIM.load_weight` of every copy of every weight operator into its compute arrays
   (except the ops the previous segment preloaded);
3. one `parallel` block — the segment's pipeline — holding `MEM.load` of the live-in
   tensors the MIP placed on chip, `CIM.write_operand` + `CIM.mvm` of dynamic matmuls,
   `CIM.mvm` of weight ops, `VEC.*` of vector ops, `MEM.store` of the on-chip tensors
   that outlive the segment, and `CIM.load_weight` of the next segment's preloaded
   weight ops (§9.1).

Every tensor lives where `cim-allocate` wrote it (the segment's ``places``: the MIP's
choice, DESIGN.md §10.1): striped over the segment's pool (``pool``), in the global
buffer, in DRAM, or — held across a boundary — in that boundary's hold range, read
there in place by the next segment.  Streamed tensors occupy the window the MIP
priced (`op_window`, `TensorUse.window`).  Nothing is placed by a heuristic here, so
the flow moves exactly the bytes the MIP priced.  K-split partial sums are reduced
explicitly by the `psum_add` vector ops `cim-partition` created.
"""

from __future__ import annotations

from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects.builtin import ArrayAttr, DictionaryAttr, IntegerAttr, ModuleOp, StringAttr, i64
from xdsl.ir import Operation
from xdsl.passes import ModulePass

from cmswitch.arch import Arch
from cmswitch.cost.graph import (
    Graph,
    GraphOp,
    build_graph,
    mvm_shape,
    op_window,
    preloadable,
    segment_tensor_ids,
)
from cmswitch.dialects import metaop
from cmswitch.dialects.cim import (
    HOLD_RANGE_ATTR,
    POOL_ATTR,
    DynMatmulOp,
    SegmentOp,
    VectorOp,
)
from cmswitch.dialects.metaop import INPUTS_ATTR, OUTPUTS_ATTR, TENSORS_ATTR
from cmswitch.errors import CMSwitchError
from cmswitch.transforms.segments import SegmentContext, held_plan
from cmswitch.transforms.common import (
    main_func,
    mode_changes,
    resolve_arch,
    segment_ops,
)



def _range(op: Operation, name: str) -> tuple[int, int] | None:
    attr = op.attributes.get(name)
    return tuple(attr.get_values()) if attr is not None else None


def switch_ops(modes: list[str], compute: list[tuple[int, int]],
               memory: list[tuple[int, int]]) -> list[Operation]:
    """`CM.switch` statements for maximal runs of arrays whose mode must change;
    updates `modes` ("C"/"M" per array) in place."""
    return [metaop.SwitchOp("TOC" if mode == "C" else "TOM", lo, hi)
            for mode, lo, hi in mode_changes(modes, compute, memory)]


def _loc(run: tuple[int, int]) -> metaop.LocationAttr:
    return metaop.LocationAttr.arrays(*run)


class _Places:
    """Where each tensor of one segment lives, as `cim-allocate` wrote it: tensor id ->
    location (`metaop.LocationAttr`: an array range, gb or dram)."""

    def __init__(self, graph: Graph, seg: SegmentOp, first: int, last: int,
                 hold_in: tuple[int, int]):
        places = seg.places
        if places is None:
            raise CMSwitchError(f"segment {seg.id.value.data} is not allocated: run "
                                f"cim-allocate first")
        pool = seg.array_range(POOL_ATTR)
        hold_out = seg.array_range(HOLD_RANGE_ATTR)
        where = {"gb": metaop.LocationAttr.of("gb"), "dram": metaop.LocationAttr.of("dram"),
                 "stream": metaop.LocationAttr.of("stream"),
                 "pool": _loc(pool) if pool else None,
                 "hold_in": _loc(hold_in) if hold_in[1] > hold_in[0] else None,
                 "hold_out": _loc(hold_out) if hold_out else None}
        self.loc: dict[int, metaop.LocationAttr] = {}
        self.held: set[int] = set()
        """Tensors kept whole in the hold range for the next segment."""
        for t in segment_tensor_ids(graph, first, last):
            name = graph.tensors[t].name
            place = places.get(name)
            loc = where.get(place) if place else None
            if loc is None:
                raise CMSwitchError(f"segment {seg.id.value.data}: tensor {name} has no "
                                    f"valid place (run cim-allocate again)")
            self.loc[t] = loc
            if place == "hold_out":
                self.held.add(t)

    def ref(self, graph: Graph, t: int) -> metaop.TensorRefAttr:
        return metaop.TensorRefAttr(StringAttr(graph.tensors[t].name), self.loc[t])


# -- one function per meta-operator kind ------------------------------------------


def _load_weight(gop: GraphOp) -> metaop.LoadWeightOp:
    """`CIM.load_weight` of every copy of a weight op into its allocated arrays."""
    lo, hi = _range(gop.op, "arrays")
    return metaop.LoadWeightOp(gop.name, lo, hi, _tiles(gop), (hi - lo) // gop.cost.arrays,
                               gop.cost.weight_bytes)


def _mem_loads(graph: Graph, first: int, uses: dict, places: _Places) -> list[Operation]:
    """`MEM.load` of every live-in tensor the MIP placed on chip (not held there, so
    not already resident), in the window it priced."""
    loads: list[Operation] = []
    for t, use in uses.items():
        tensor = graph.tensors[t]
        live_in = tensor.producer is None or tensor.producer < first
        if live_in and not use.fixed and places.loc[t].kind.data != "dram":
            loads.append(metaop.MemLoadOp(tensor.name, "dram", places.loc[t],
                                          tensor.bytes, use.window))
    return loads


def _write_operand(gop: GraphOp, graph: Graph, places: _Places,
                   arch: Arch) -> metaop.WriteOperandOp:
    """`CIM.write_operand` of a dynamic matmul's run-time operand (its second input),
    in ``instances`` parts (batch x heads) taken by the copies in turn."""
    lo, hi = _range(gop.op, "arrays")
    cost = gop.cost
    return metaop.WriteOperandOp(gop.name, lo, hi, places.ref(graph, gop.inputs[1]),
                                 cost.tiles, (hi - lo) // cost.arrays, cost.weight_bytes,
                                 cost.compute // (arch.mvm_cycles * cost.m))


def _mvm(gop: GraphOp, graph: Graph, places: _Places, window: int | None,
         arch: Arch) -> metaop.MvmOp:
    """`CIM.mvm` of a matrix operator over all its copies (`mvm_shape`)."""
    lo, hi = _range(gop.op, "arrays")
    vectors, k, n = mvm_shape(gop.cost, arch)
    return metaop.MvmOp(gop.name, lo, hi, vectors, k, n, places.ref(graph, gop.inputs[0]),
                        places.ref(graph, gop.outputs[0]), window)


def _vec(gop: GraphOp, graph: Graph, places: _Places, window: int | None) -> metaop.VecOp:
    """`VEC.<kind>` of a vector operator on the digital unit."""
    ins = [places.ref(graph, t) for t in gop.inputs] or None
    outs = [places.ref(graph, t) for t in gop.outputs]
    return metaop.VecOp(gop.op.kind.data, gop.name, gop.cost.vector_ops, ins, outs, window)


def _mem_stores(gop: GraphOp, graph: Graph, last: int, places: _Places) -> list[Operation]:
    """`MEM.store` of the operator's on-chip outputs that outlive the segment (a model
    output, or read by a later segment) and are not held on chip for the next one."""
    stores: list[Operation] = []
    for t in gop.outputs:
        tensor = graph.tensors[t]
        outlives = tensor.is_output or any(c > last for c in tensor.consumers)
        if outlives and places.loc[t].kind.data != "dram" and t not in places.held:
            stores.append(metaop.MemStoreOp(tensor.name, places.loc[t], "dram", tensor.bytes))
    return stores


def _lower_op(gop: GraphOp, graph: Graph, places: _Places, window: int | None,
              arch: Arch) -> list[Operation]:
    """The statements of one operator: VEC, or (write_operand and) mvm."""
    if isinstance(gop.op, VectorOp):
        return [_vec(gop, graph, places, window)]
    mvm = _mvm(gop, graph, places, window, arch)
    if isinstance(gop.op, DynMatmulOp):
        return [_write_operand(gop, graph, places, arch), mvm]
    return [mvm]


def _tiles(gop: GraphOp) -> tuple[int, int]:
    """``[TK, TN]`` tiles per copy: row tiles stacked over block-diagonal group packs."""
    tn = gop.cost.tiles[1]
    return gop.cost.arrays // tn, tn


def compute_arrays(graph: Graph, first: int, last: int) -> set[int]:
    """The compute arrays of operators ``first..last``."""
    return {a for g in graph.ops[first:last + 1]
            if (arr := _range(g.op, "arrays")) is not None for a in range(*arr)}


def lower_segment(graph: Graph, ctx: SegmentContext, arch: Arch, modes: list[str],
                  hold_in: tuple[int, int], early: list[GraphOp],
                  preloaded: set[str]) -> metaop.SegmentOp:
    """The `metaop.segment` of one allocated `cim.segment` (`ctx`).  `modes`: every
    array's mode before it (updated); `hold_in`: the range holding the tensors the
    previous segment kept on chip for this one; `early`: the next segment's weight ops
    `cim-segment` chose to preload, loaded inside this pipeline (their names are added
    to `preloaded`); this segment skips the loads of ops already in `preloaded`.
    Raises CMSwitchError if the segment is not allocated."""
    seg, first, last = ctx.seg, ctx.first, ctx.last
    gops = graph.ops[first:last + 1]
    compute = [_range(g.op, "arrays") for g in gops if g.cost.arrays]
    if any(r is None for r in compute):
        raise CMSwitchError(f"segment {seg.id.value.data} is not allocated: run cim-allocate first")
    places = _Places(graph, seg, first, last, hold_in)
    memory = [r for r in (hold_in, seg.array_range(POOL_ATTR), seg.array_range(HOLD_RANGE_ATTR))
              if r and r[1] > r[0]]
    body = switch_ops(modes, compute + [_range(g.op, "arrays") for g in early], memory)
    body += [_load_weight(g) for g in gops
             if g.cost.kind == "weight" and g.name not in preloaded]
    uses = dict(zip(segment_tensor_ids(graph, first, last), ctx.problem(graph).tensors))
    pipeline = _mem_loads(graph, first, uses, places)
    for g in gops:
        handed = all(places.loc[t].kind.data == "stream" for t in g.outputs)
        window = None if handed or places.held.intersection(g.outputs) else (
            op_window(graph, g, first, last) or None)
        pipeline += _lower_op(g, graph, places, window, arch)
        pipeline += _mem_stores(g, graph, last, places)
    pipeline += [_load_weight(g) for g in early]
    preloaded.update(g.name for g in early)
    body.append(metaop.ParallelOp(pipeline))
    predicted = seg.attributes.get("predicted_cycles")
    return metaop.SegmentOp(seg.id.value.data, ",".join(g.name for g in gops),
                            predicted.value.data if predicted else 0, body)


@dataclass(frozen=True)
class CimToMetaopPass(ModulePass):
    """Lower allocated `cim.segment`s to a `metaop` flow (switches, loads, pipeline)."""

    name = "cim-to-metaop"

    arch: str | None = None

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        arch = resolve_arch(op, self.arch)
        func = main_func(op)
        segments = segment_ops(func, self.name, "cim-segment and cim-allocate")
        graph = build_graph(func, arch)
        modes = ["C"] * arch.arrays
        plan = held_plan(graph, segments)
        flow = []
        preloaded: set[str] = set()
        hold_in: tuple[int, int] = (0, 0)
        for k, ctx in enumerate(plan):
            nxt = plan[k + 1] if k + 1 < len(plan) else None
            early = [graph.ops[i] for i in preloadable(graph, nxt.first, nxt.last)
                     [:nxt.preloaded]] if nxt is not None else []
            flow.append(lower_segment(graph, ctx, arch, modes, hold_in, early, preloaded))
            hold_in = ctx.seg.array_range(HOLD_RANGE_ATTR) or (0, 0)
        op.attributes[TENSORS_ATTR] = DictionaryAttr(
            {t.name: IntegerAttr(t.bytes, i64) for t in graph.tensors})
        op.attributes[INPUTS_ATTR] = ArrayAttr(
            [StringAttr(t.name) for t in graph.tensors if t.producer is None])
        op.attributes[OUTPUTS_ATTR] = ArrayAttr(
            [StringAttr(t.name) for t in graph.tensors if t.is_output])
        func.detach()
        func.erase()
        for seg in flow:
            op.body.block.add_op(seg)
