"""`cim-to-metaop`: lower allocated segments to the meta-operator flow (DESIGN.md §5).

Per segment, in order:
1. `CM.switch` only where an array's mode changes (reset: all arrays compute mode);
2. `CIM.load_weight` of every copy of every weight operator into its compute arrays;
3. one `parallel` block — the segment's pipeline — holding `MEM.load` of the tensors
   it reads from DRAM, `CIM.write_operand` + `CIM.mvm` of dynamic matmuls, `CIM.mvm`
   of weight ops, `VEC.*` of vector ops, and `MEM.store` of the tensors that outlive
   the segment.

Where a tensor lives inside a segment: striped over the pool of memory-mode arrays
(the longest run of arrays in memory mode, as the MIP sums every operator's memory
arrays into one feed budget) or in the global buffer — whichever keeps its traffic per
byte/cycle of bandwidth lower and has room for the tensor's streaming window
(`Graph.working_set`) — else DRAM.  Tensors the MIP spilled, and tensors no operator
of the segment reads, go to DRAM.  Tensors held for the next segment (`hold`) are
placed whole in memory-mode arrays the next segment also uses as memory (or in the
global buffer), and read there in place.  The next segment's weight ops whose arrays
this segment leaves free — those `cim-segment` chose to preload, and any others that
happen to be free — are loaded inside this segment's `parallel` block (§9.1).  K-split partial sums are reduced explicitly by the `psum_add` vector ops
`cim-partition` created.
"""

from __future__ import annotations

from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects.builtin import ArrayAttr, DictionaryAttr, IntegerAttr, ModuleOp, StringAttr, i64
from xdsl.ir import Operation
from xdsl.passes import ModulePass

from cmswitch.arch import Arch
from cmswitch.cost.graph import Graph, GraphOp, build_graph, preloadable
from cmswitch.dialects import metaop
from cmswitch.dialects.cim import DynMatmulOp, SegmentOp, VectorOp
from cmswitch.errors import CMSwitchError
from cmswitch.transforms.cim_allocate import held_plan
from cmswitch.transforms.common import main_func, resolve_arch, segment_ops

TENSORS_ATTR = "metaop.tensors"
INPUTS_ATTR = "metaop.inputs"
OUTPUTS_ATTR = "metaop.outputs"


def _range(op: Operation, name: str) -> tuple[int, int] | None:
    attr = op.attributes.get(name)
    return tuple(attr.get_values()) if attr is not None else None


def switch_ops(modes: list[str], compute: list[tuple[int, int]],
               memory: list[tuple[int, int]]) -> list[Operation]:
    """`CM.switch` statements for maximal runs of arrays whose mode must change;
    updates `modes` ("C"/"M" per array) in place."""
    want = list(modes)
    for lo, hi in compute:
        want[lo:hi] = ["C"] * (hi - lo)
    for lo, hi in memory:
        want[lo:hi] = ["M"] * (hi - lo)
    ops: list[Operation] = []
    i = 0
    while i < len(modes):
        if want[i] == modes[i]:
            i += 1
            continue
        j = i
        while j < len(modes) and want[j] == want[i] and want[j] != modes[j]:
            j += 1
        ops.append(metaop.SwitchOp("TOC" if want[i] == "C" else "TOM", i, j))
        i = j
    modes[:] = want
    return ops


def _arrays_of(loc: str) -> range:
    """The arrays of a location: ``a[LO:HI]`` -> ``range(LO, HI)``; none for gb/dram."""
    if not loc.startswith("a["):
        return range(0)
    lo, hi = (int(x) for x in loc[2:-1].split(":"))
    return range(lo, hi)


def _runs(arrays: list[int]) -> list[tuple[int, int]]:
    """Maximal runs ``(lo, hi)`` of consecutive array indices in sorted `arrays`."""
    runs: list[tuple[int, int]] = []
    for a in arrays:
        if runs and runs[-1][1] == a:
            runs[-1] = (runs[-1][0], a + 1)
        else:
            runs.append((a, a + 1))
    return runs


def _longest(arrays: list[int]) -> tuple[int, int] | None:
    """The longest run of consecutive arrays (the highest on a tie), or None."""
    runs = _runs(arrays)
    return max(runs, key=lambda r: (r[1] - r[0], r[0])) if runs else None


class _Placer:
    """Chooses a location per tensor of one segment, within capacities (bytes).

    Memory-mode arrays serve the segment as one pool, as the MIP sums them: a tensor
    placed in the pool is striped over its longest run of memory-mode arrays
    (``a[LO:HI]``, read and written at ``(HI-LO) * internal_bw`` bytes/cycle), so every
    stream shares all their ports.  Between the pool and the global buffer each tensor
    goes to the one whose traffic per unit of bandwidth stays lowest, if it has room
    for the tensor's window; else to the other; else to DRAM.  Capacity is tracked per
    memory-mode array, as the simulator counts it: a window of ``W`` bytes at
    ``a[LO:HI]`` takes ``ceil(W/(HI-LO))`` bytes of every array in the range.
    `memory` are the arrays in memory mode during the segment; `carried` the tensors
    held on chip from the previous segment (``id -> (location, bytes)``), which
    occupy their place from the start."""

    def __init__(self, graph: Graph, first: int, last: int, arch: Arch,
                 memory: list[int], carried: dict[int, tuple[str, int]]):
        self.graph, self.first, self.last, self.arch = graph, first, last, arch
        self.gb_free = arch.global_buffer_bytes
        self.array_free = dict.fromkeys(memory, arch.array_bytes)
        self.pool = _longest(memory)
        ib = arch.internal_bw_bits / 8
        self.bandwidth = {"gb": arch.global_buffer_bw_bytes}
        if self.pool:
            self.bandwidth[self.loc(self.pool)] = (self.pool[1] - self.pool[0]) * ib
        self.traffic = dict.fromkeys(self.bandwidth, 0)
        self.where: dict[int, tuple[str, int]] = {}
        self.held: set[int] = set()
        """Tensors placed whole to survive into the next segment (written unstreamed)."""
        for t, (loc, nbytes) in carried.items():
            if not self.take(loc, nbytes):
                raise CMSwitchError(f"tensor {graph.tensors[t].name} held at {loc} does not "
                                    f"fit the memory of the next segment")
            self.where[t] = (loc, nbytes)
            if loc in self.traffic:
                self.traffic[loc] += nbytes * self._reads(t)

    @staticmethod
    def loc(run: tuple[int, int]) -> str:
        return f"a[{run[0]}:{run[1]}]"

    def _reads(self, t: int) -> int:
        return sum(1 for c in self.graph.tensors[t].consumers if self.first <= c <= self.last)

    def take(self, loc: str, nbytes: int) -> bool:
        """Reserve `nbytes` at `loc` ("gb" or "a[LO:HI]") if it has room."""
        if loc == "gb":
            if self.gb_free < nbytes:
                return False
            self.gb_free -= nbytes
            return True
        arrays = _arrays_of(loc)
        share = -(-nbytes // len(arrays))
        if any(self.array_free.get(a, -1) < share for a in arrays):
            return False
        for a in arrays:
            self.array_free[a] -= share
        return True

    def hold(self, t: int, stay: list[int], blocked: set[int]) -> bool:
        """Place tensor `t` whole where it survives into the next segment: across the
        longest run of the memory-mode arrays `stay` the next segment does not switch,
        leaving out the `blocked` arrays (where the segment after it preloads weights
        while the next one runs), or in the global buffer — the one with more
        bandwidth first, if it has room."""
        nbytes = self.graph.tensors[t].bytes
        run = _longest([a for a in stay if a not in blocked])
        ib = self.arch.internal_bw_bits / 8
        locs = ([(self.loc(run), (run[1] - run[0]) * ib)] if run else []) + [
            ("gb", self.arch.global_buffer_bw_bytes)]
        for loc, _ in sorted(locs, key=lambda x: -x[1]):  # the faster place first
            if self.take(loc, nbytes):
                self.where[t] = (loc, nbytes)
                self.held.add(t)
                return True
        return False

    def place(self, t: int, spilled: bool = False) -> tuple[str, int]:
        """(location, window bytes) of tensor `t` in this segment."""
        if t in self.where:
            return self.where[t]
        tensor = self.graph.tensors[t]
        readers = [c for c in tensor.consumers if self.first <= c <= self.last]
        if spilled or not readers:
            self.where[t] = ("dram", tensor.bytes)
            return self.where[t]
        window = max(self.graph.working_set(t, c) for c in readers)
        traffic = tensor.bytes * (1 + len(readers))
        order = sorted(self.bandwidth, key=lambda loc: (
            (self.traffic[loc] + traffic) / self.bandwidth[loc], loc))
        for loc in order:
            if self.take(loc, window):
                self.traffic[loc] += traffic
                self.where[t] = (loc, window)
                return self.where[t]
        self.where[t] = ("dram", tensor.bytes)
        return self.where[t]


def _ref(graph: Graph, t: int, placer: _Placer) -> str:
    return f"{graph.tensors[t].name}@{placer.place(t)[0]}"


def _window(gop: GraphOp, placer: _Placer) -> int | None:
    """The streaming window of an op's outputs (the first's); None (whole tensors
    stay) if one of them is held for the next segment."""
    if placer.held.intersection(gop.outputs):
        return None
    return placer.where[gop.outputs[0]][1]


def _lower_op(gop: GraphOp, graph: Graph, placer: _Placer, arch: Arch) -> list[Operation]:
    spill = set(_range(gop.op, "spill") or ())
    for pos, t in enumerate(gop.outputs):
        placer.place(t, spilled=pos in spill)
    outs = ",".join(_ref(graph, t, placer) for t in gop.outputs)
    cost = gop.cost
    if isinstance(gop.op, VectorOp):
        ins = ",".join(_ref(graph, t, placer) for t in gop.inputs) or None
        window = _window(gop, placer)
        return [metaop.VecOp(gop.op.kind.data, gop.name, cost.vector_ops, ins, outs, window)]
    lo, hi = _range(gop.op, "arrays")
    window = _window(gop, placer)
    if isinstance(gop.op, DynMatmulOp):
        copies = (hi - lo) // cost.arrays
        write = metaop.WriteOperandOp(gop.name, lo, hi, _ref(graph, gop.inputs[1], placer),
                                      cost.tiles, copies, cost.weight_bytes,
                                      cost.compute // (arch.mvm_cycles * cost.m))
        mvm = metaop.MvmOp(gop.name, lo, hi, cost.compute // arch.mvm_cycles, cost.k,
                           cost.n, _ref(graph, gop.inputs[0], placer), outs, window)
        return [write, mvm]
    return [metaop.MvmOp(gop.name, lo, hi, cost.m, cost.groups * cost.k, cost.groups * cost.n,
                         _ref(graph, gop.inputs[0], placer), outs, window)]


def _tiles(gop: GraphOp) -> tuple[int, int]:
    """``[TK, TN]`` tiles per copy: row tiles stacked over block-diagonal group packs."""
    tn = gop.cost.tiles[1]
    return gop.cost.arrays // tn, tn


def _load_weight(gop: GraphOp) -> metaop.LoadWeightOp:
    """`CIM.load_weight` of every copy of a weight op into its allocated arrays."""
    lo, hi = _range(gop.op, "arrays")
    return metaop.LoadWeightOp(gop.name, lo, hi, _tiles(gop), (hi - lo) // gop.cost.arrays,
                               gop.cost.weight_bytes)


def compute_arrays(graph: Graph, first: int, last: int, kind: str = "arrays") -> set[int]:
    """The compute arrays of operators ``first..last`` (their memory-mode arrays with
    ``kind="memory"``)."""
    return {a for g in graph.ops[first:last + 1]
            if (arr := _range(g.op, kind)) is not None for a in range(*arr)}


def _prefetchable(ops: list[GraphOp], busy: list[tuple[int, int]],
                  carried: dict[int, tuple[str, int]]) -> list[GraphOp]:
    """The weight ops among `ops` (the next segment's) whose compute arrays miss this
    segment's `busy` ranges and the arrays holding `carried` data."""
    taken = {a for lo, hi in busy for a in range(lo, hi)}
    for loc, _ in carried.values():
        taken.update(_arrays_of(loc))
    early = []
    for g in ops:
        arrays = _range(g.op, "arrays")
        if g.cost.kind != "weight" or arrays is None:
            continue
        if not taken.intersection(range(*arrays)):
            early.append(g)
    return early


def lower_segment(graph: Graph, seg: SegmentOp, first: int, last: int, arch: Arch,
                  modes: list[str], carried: dict[int, tuple[str, int]] | None = None,
                  held_out: tuple[int, ...] = (), next_compute: set[int] | None = None,
                  prefetch: list[GraphOp] | None = None, preloaded: set[str] | None = None,
                  next_memory: set[int] | None = None, blocked: set[int] | None = None
                  ) -> metaop.SegmentOp:
    """The `metaop.segment` of one allocated `cim.segment`.  `carried`: tensors held on
    chip from the previous segment (id -> (location, bytes)), read in place; on return
    it holds the tensors of `held_out` this segment managed to keep for the next one,
    whose compute and memory arrays are `next_compute` and `next_memory` (the latter
    switch to memory mode now when something is held; a held tensor avoids the
    `blocked` arrays; one that finds no room is stored to DRAM and loaded again, as
    without holding).  `prefetch`: the next
    segment's weight ops, whose weights are loaded inside this segment's pipeline if
    their arrays are free here (§9.1); their names are added to `preloaded`, and this
    segment skips the loads of ops already in it."""
    carried = carried if carried is not None else {}
    preloaded = preloaded if preloaded is not None else set()
    gops = graph.ops[first:last + 1]
    compute = [_range(g.op, "arrays") for g in gops if g.cost.arrays]
    if any(r is None for r in compute):
        raise CMSwitchError(f"segment {seg.id.value.data} is not allocated: run cim-allocate first")
    memory = [r for g in gops if (r := _range(g.op, "memory")) is not None]
    early = _prefetchable(prefetch or [], compute + memory, carried)
    taken = compute + [_range(g.op, "arrays") for g in early]
    if held_out:
        # the next segment's memory arrays this segment does not use switch to memory
        # mode now, so what it holds for the next one is striped over the pool the
        # next one reads from (its MIP priced that pool's bandwidth)
        used = {a for lo, hi in taken + memory for a in range(lo, hi)}
        memory = memory + _runs(sorted(set(next_memory or ()) - used))
    body: list[Operation] = switch_ops(modes, taken, memory)
    body += [_load_weight(g) for g in gops
             if g.cost.kind == "weight" and g.name not in preloaded]
    in_memory = [a for a, mode in enumerate(modes) if mode == "M"]
    placer = _Placer(graph, first, last, arch, in_memory, carried)
    stay = [a for a in in_memory if a not in (next_compute or set())]
    kept = {t for t in held_out if placer.hold(t, stay, blocked or set())}
    pipeline: list[Operation] = []
    live_in = sorted({t for g in gops for t in g.inputs
                      if (graph.tensors[t].producer is None or graph.tensors[t].producer < first)})
    for t in live_in:
        if t in carried:
            continue
        loc, window = placer.place(t)
        if loc != "dram":
            pipeline.append(metaop.MemLoadOp(graph.tensors[t].name, "dram", loc,
                                             graph.tensors[t].bytes, window))
    for g in gops:
        pipeline.extend(_lower_op(g, graph, placer, arch))
        for t in g.outputs:
            tensor = graph.tensors[t]
            outlives = tensor.is_output or any(c > last for c in tensor.consumers)
            loc = placer.where[t][0]
            if outlives and loc != "dram" and t not in kept:
                pipeline.append(metaop.MemStoreOp(tensor.name, loc, "dram", tensor.bytes))
    pipeline += [_load_weight(g) for g in early]
    preloaded.update(g.name for g in early)
    body.append(metaop.ParallelOp(pipeline))
    carried.clear()
    carried.update({t: placer.where[t] for t in sorted(kept)})
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
        carried: dict[int, tuple[str, int]] = {}
        flow = []
        preloaded: set[str] = set()
        for k, ctx in enumerate(plan):
            nxt = (plan[k + 1].first, plan[k + 1].last) if k + 1 < len(plan) else None
            after = compute_arrays(graph, *nxt) if nxt else set()
            ahead = graph.ops[nxt[0]:nxt[1] + 1] if nxt else []
            pool = compute_arrays(graph, *nxt, kind="memory") if nxt else set()
            later = plan[k + 2] if k + 2 < len(plan) else None
            blocked = set()
            if later is not None and later.preloaded:
                lead = preloadable(graph, later.first, later.last)[:later.preloaded]
                blocked = {a for i in lead for a in compute_arrays(graph, i, i)}
            flow.append(lower_segment(graph, ctx.seg, ctx.first, ctx.last, arch, modes,
                                      carried, ctx.held_out, after, ahead, preloaded, pool,
                                      blocked))
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
