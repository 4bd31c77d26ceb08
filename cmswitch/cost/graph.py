"""The flattened operator graph the optimizer works on (DESIGN.md §4).

`build_graph` walks a `func.func` of `cim` ops in program order (a topological order;
residual branches and attention are DAGs, not chains), looking through `cim.segment`
regions, and records every operator's cost and every tensor's producer, consumers and
size.  `segment_problem` cuts out one candidate segment as the hashable input of the
segment MIP (`cmswitch.solver.mip`); identical segments give equal problems, which is
what the solve cache keys on.
"""

from __future__ import annotations

import math

from dataclasses import dataclass, field, fields, replace

from xdsl.dialects.builtin import StringAttr, TensorType
from xdsl.dialects.func import FuncOp
from xdsl.ir import Operation, SSAValue

from cmswitch.arch import Arch
from cmswitch.names import flow_name
from cmswitch.cost.model import OpCost, op_cost, tensor_bytes
from cmswitch.cost.views import Chain, find_views
from cmswitch.dialects.cim import (
    VECTOR_KINDS,
    Conv2dOp,
    DynMatmulOp,
    MatmulOp,
    SegmentOp,
    VectorOp,
    YieldOp,
    tensor_shape,
)
from cmswitch.errors import CMSwitchError


@dataclass
class Tensor:
    """One activation tensor: `bytes` on chip, producing op index (None for a graph
    input), consuming op indices, and whether the function returns it."""

    name: str
    bytes: int
    producer: int | None
    consumers: list[int] = field(default_factory=list)
    is_output: bool = False
    shape: tuple[int, ...] = ()
    """The tensor's own shape (its readers may see it through a view of another)."""


@dataclass
class GraphOp:
    """One operator: the IR op, its cost, and its input/output tensor ids.

    `slots[p]` is the operand of `op` that input `p` feeds: an operand read through a
    concat view (`cmswitch.cost.views`) is several inputs, one per part; `whole` holds
    the input positions read through a view that reorders rows (no streaming)."""

    index: int
    op: Operation
    cost: OpCost
    inputs: list[int]
    outputs: list[int]
    slots: tuple[int, ...] = ()
    whole: frozenset[int] = frozenset()

    def operand(self, position: int) -> SSAValue:
        """The IR operand input `position` feeds."""
        return self.op.operands[self.slots[position] if self.slots else position]

    @property
    def name(self) -> str:
        return self.cost.name


@dataclass
class Graph:
    """Operators in program order and the tensors between them."""

    ops: list[GraphOp]
    tensors: list[Tensor]
    value_ids: dict[SSAValue, int]
    arch: Arch
    views: dict[SSAValue, Operation] = field(default_factory=dict)
    """Results of the view ops (`cmswitch.cost.views`, not in `ops`) -> the view op,
    segment results included: what functional mode evaluates."""
    order: list[Operation] = field(default_factory=list)
    """Every `cim` operator in program order, views included."""
    memo: dict = field(default_factory=dict, repr=False, compare=False)
    """Results of `working_set` and of `segment_problem`'s tensor pricing, computed
    once per graph (the DP asks for the same spans many times)."""

    def span(self, first: int, last: int) -> str:
        """``first..last`` operator names: how errors and reports name a segment."""
        return f"{self.ops[first].name}..{self.ops[last].name}"

    def working_set(self, tensor: int, consumer: int) -> int:
        """On-chip bytes a streaming consumer needs of a tensor (§9.2):
        - a convolution: its line buffer ``(dil*(kh-1)+1 + stride-1) rows x W x C``;
        - a row-streaming consumer — the activation operand of a matmul (each input
          vector is used once), an element-wise or last-axis vector op whose operand
          has the output's shape, a reshape — `STREAM_ROWS` rows of the last axis;
        - any other consumer (transpose, concat, pools, a broadcast operand, the
          stationary operand of a dynamic matmul): the whole tensor."""
        key = ("ws", tensor, consumer)
        if key not in self.memo:
            self.memo[key] = self._working_set(tensor, consumer)
        return self.memo[key]

    def _working_set(self, tensor: int, consumer: int) -> int:
        gop = self.ops[consumer]
        op, t = gop.op, self.tensors[tensor]
        positions = [p for p, u in enumerate(gop.inputs) if u == tensor]
        if any(p in gop.whole for p in positions):
            return t.bytes
        if isinstance(op, Conv2dOp):
            h = tensor_shape(op.input)[2]
            kh = op.kernel.get_values()[0]
            rows = op.dilations.get_values()[0] * (kh - 1) + 1 + op.strides.get_values()[0] - 1
            return min(t.bytes, -(-t.bytes * min(rows, h) // h))
        operand = gop.operand(positions[0])
        shape = tensor_shape(operand)
        if not shape or not _row_streams(op, operand):
            return t.bytes
        row = self.row_bytes(tensor)
        if tuple(shape) != t.shape:  # read through a view: a row is what the reader reads
            row = max(row, -(-shape[-1] * self.arch.act_bits // 8))
        return min(t.bytes, STREAM_ROWS * row)

    def fusable(self, tensor: int) -> bool:
        """Whether `tensor` can be handed to its reader as a stream (DESIGN.md §9.13):
        an operator writes it (a `CIM.mvm` or a `VEC`), exactly one operator reads it,
        once, and that reader is a computing vector op that consumes it row by row in
        the order it is written (`ROW_KINDS`, not through a view that reorders rows),
        and it is no model output.  Whether it is handed then depends only on both
        ends sitting in one segment's same pipeline phase (`_tensor_uses`).
        Memoized."""
        key = ("fusable", tensor)
        if key not in self.memo:
            self.memo[key] = self._fusable(tensor)
        return self.memo[key]

    def _fusable(self, tensor: int) -> bool:
        t = self.tensors[tensor]
        if t.producer is None or t.is_output or len(t.consumers) != 1:
            return False
        gop = self.ops[t.consumers[0]]
        positions = [p for p, u in enumerate(gop.inputs) if u == tensor]
        if len(positions) != 1 or positions[0] in gop.whole:
            return False
        op = gop.op
        return (isinstance(op, VectorOp) and VECTOR_KINDS[op.kind.data] == "compute"
                and _row_streams(op, gop.operand(positions[0])))

    def row_bytes(self, tensor: int) -> int:
        """Bytes of one streamed row of a tensor: one output vector of the `CIM.mvm`
        that writes it (``n*act_bits/8``: a convolution writes pixel by pixel, every
        channel at once, docs/cmsasm.md), kept through the row-wise vector ops that
        preserve the shape (relu, add, ... of a conv output stream pixels too); else
        the last axis (``shape[-1]`` elements).  At least 1 byte; memoized."""
        key = ("row", tensor)
        chain = []
        while key not in self.memo:
            chain.append(tensor)
            source = self._row_source(tensor)
            if not isinstance(source, tuple):
                self.memo[key] = source
                break
            tensor = source[0]
            key = ("row", tensor)
        value = self.memo[key]
        for t in chain:
            self.memo[("row", t)] = value
        return value

    def _row_source(self, tensor: int):
        """The row bytes of `tensor` (int), or ``(input tensor,)`` whose rows it keeps."""
        t = self.tensors[tensor]
        if t.producer is not None:
            gop = self.ops[t.producer]
            if gop.cost.arrays:
                return max(1, -(-mvm_shape(gop.cost, self.arch)[2] * self.arch.act_bits // 8))
            op = gop.op
            if isinstance(op, VectorOp) and op.kind.data in ROW_KINDS:
                out = tensor_shape(op.results[gop.outputs.index(tensor)])
                for p, u in enumerate(gop.inputs):
                    single = gop.slots.count(gop.slots[p]) == 1 if gop.slots else True
                    if (single and p not in gop.whole and tensor_shape(gop.operand(p)) == out
                            and u != tensor):
                        return (u,)
        shape = t.shape
        elements = max(1, math.prod(shape)) if shape else 1
        return max(1, -(-t.bytes * (shape[-1] if shape else 1) // elements))


STREAM_ROWS = 64
"""Rows (input vectors) a row-streaming consumer buffers: two of the simulator's
default 32-vector chunks of a 2048-vector stream, double-buffered.  [A] assumption."""

ROW_KINDS = frozenset((
    "add", "sub", "mul", "div", "neg", "pow", "sqrt", "reciprocal", "exp", "erf", "tanh",
    "sigmoid", "relu", "clip", "gelu", "silu", "cos", "sin", "where", "isnan", "not",
    "equal", "less", "greater", "and", "or", "cast", "max", "min", "softmax", "layernorm",
    "rmsnorm", "psum_add", "reshape", "identity", "squeeze", "unsqueeze", "flatten",
    "batchnorm", "leaky_relu", "prelu", "elu", "selu", "celu", "softplus", "softsign", "abs",
    "hard_sigmoid", "hard_swish", "log_softmax", "log", "sum", "mean",
))
"""Vector kinds that consume their operands row by row in order (element-wise, or
normalising over the last axis, or a view that keeps row-major order)."""


def _row_streams(op: Operation, operand: SSAValue) -> bool:
    """Whether `op` reads `operand` once, row by row, in order."""
    if isinstance(op, (MatmulOp, DynMatmulOp)):
        return operand is op.operands[0]
    if not isinstance(op, VectorOp) or op.kind.data not in ROW_KINDS:
        return False
    if op.kind.data in ("reshape", "flatten", "squeeze", "unsqueeze", "identity"):
        return True
    return all(tensor_shape(r) == tensor_shape(operand) for r in op.results)




def _op_name(op: Operation, index: int, used: set[str]) -> str:
    """A readable unique name: a weight op is named after its weight (``conv1.weight``
    -> ``conv1``; a partitioned piece adds ``.k<row>.n<col>`` of its slice), any other
    op after its first result."""
    hint = op.results[0].name_hint if op.results else None
    weight = op.properties.get("weight")
    if isinstance(weight, StringAttr):
        hint = weight.data.removesuffix(".weight")
        ws = op.properties.get("weight_slice")
        if ws is not None:
            k0, _, n0, _ = ws.get_values()
            hint += f".k{k0}.n{n0}"
    return _unique(flow_name(hint or f"op{index}"), used)


def _unique(name: str, used: set[str]) -> str:
    """`name`, or `name:2`, `name:3`, ... — the first not in `used` (then added)."""
    candidate, n = name, 1
    while candidate in used:
        n += 1
        candidate = f"{name}:{n}"
    used.add(candidate)
    return candidate


def flatten_ops(func: FuncOp) -> list[Operation]:
    """The `cim` operators of a function in program order, looking through segments."""
    ops: list[Operation] = []
    for op in func.body.block.ops:
        if isinstance(op, SegmentOp):
            ops.extend(o for o in op.body.block.ops if not isinstance(o, YieldOp))
        elif op.dialect_name() == "cim":
            ops.append(op)
    return ops


def build_graph(func: FuncOp, arch: Arch) -> Graph:
    """Flatten `func` into a Graph.  Raises CMSwitchError for a non-`cim` operator
    other than `func.return`, a tensor whose shape is dynamic (``?``), negative or
    empty, and a function with no operator to compile."""
    where = f"@{func.sym_name.data}"
    for op in func.body.block.ops:
        if op.dialect_name() not in ("cim", "func"):
            raise CMSwitchError(f"unexpected operation '{op.name}' in {where}")
    for op in func.walk():
        for v in (*op.results, *(a for r in op.regions for b in r.blocks for a in b.args)):
            shape = tensor_shape(v) if isinstance(v.type, TensorType) else ()
            if any(d <= 0 for d in shape):
                what = "a dynamic (?)" if any(d < 0 for d in shape) else "a zero"
                raise CMSwitchError(f"{where}: %{v.name_hint or 'value'} of {op.name} has "
                                    f"{what} dimension, shape "
                                    f"{'x'.join('?' if d < 0 else str(d) for d in shape)}: the compiler "
                                    "needs static, non-empty shapes")
    tensors: list[Tensor] = []
    ids: dict[SSAValue, int] = {}

    names: set[str] = set()

    def new_tensor(v: SSAValue, producer: int | None) -> int:
        ids[v] = len(tensors)
        name = _unique(flow_name(v.name_hint or f"t{len(tensors)}"), names)
        tensors.append(Tensor(name, tensor_bytes(v, arch), producer,
                              shape=tuple(tensor_shape(v))))
        return ids[v]

    flat = flatten_ops(func)
    steps = _view_steps(func, flat, arch)
    views: dict[SSAValue, tuple[tuple[int, ...], Chain]] = {}
    view_ops: dict[SSAValue, Operation] = {}

    def resolve(v: SSAValue) -> tuple[tuple[int, ...], Chain]:
        return views[v] if v in views else ((ids[v],), Chain())

    for arg in func.body.block.args:
        new_tensor(arg, None)
    ops: list[GraphOp] = []
    used: set[str] = set()
    for top in func.body.block.ops:
        inner = list(top.body.block.ops) if isinstance(top, SegmentOp) else [top]
        for op in inner:
            if isinstance(op, YieldOp) or op.dialect_name() != "cim":
                continue
            if op in steps:  # a view: its readers read its sources in place
                sources, chain = (), steps[op]
                for v in op.operands:
                    part, c = resolve(v)
                    sources, chain = sources + part, chain.then(c)
                views[op.results[0]] = (sources, chain)
                view_ops[op.results[0]] = op
                continue
            index = len(ops)
            ins, slots, whole = [], [], set()
            for slot, v in enumerate(op.operands):
                part, chain = resolve(v)
                for t in part:
                    if chain.unordered:
                        whole.add(len(ins))
                    ins.append(t)
                    slots.append(slot)
            outs = [new_tensor(r, index) for r in op.results]
            for t in ins:
                tensors[t].consumers.append(index)
            ops.append(GraphOp(index, op, op_cost(op, _op_name(op, index, used), arch), ins, outs,
                               tuple(slots), frozenset(whole)))
        if isinstance(top, SegmentOp):
            yielded = top.body.block.last_op
            for res, val in zip(top.outs, yielded.operands, strict=True):
                if val in views:
                    views[res], view_ops[res] = views[val], view_ops[val]
                else:
                    ids[res] = ids[val]
    if not ops:
        raise CMSwitchError(f"{where} has no cim operator to compile")
    ret = func.body.block.last_op
    for v in ret.operands if ret is not None else ():
        tensors[ids[v]].is_output = True
    return Graph(ops, tensors, ids, arch, view_ops, flat)


def _view_steps(func: FuncOp, flat: list[Operation], arch: Arch) -> dict[Operation, Chain]:
    """`find_views` over the function's operators, looking through segments: each
    value's readers by operand slot, segment results taken as the values they yield."""
    inner: dict[SSAValue, SSAValue] = {}
    for top in func.body.block.ops:
        if isinstance(top, SegmentOp):
            inner.update(zip(top.outs, top.body.block.last_op.operands, strict=True))
    readers: dict[SSAValue, list[tuple[Operation, int]]] = {}
    for op in flat:
        for slot, v in enumerate(op.operands):
            readers.setdefault(inner.get(v, v), []).append((op, slot))
    ret = func.body.block.last_op
    returned = {inner.get(v, v) for v in (ret.operands if ret is not None else ())}
    return find_views(flat, readers, returned, arch)


PLACES = ("pool", "gb", "dram")
"""Where a tensor of a segment may live (DESIGN.md §10.1): striped over the segment's
pool of memory-mode arrays, in the global buffer, or in DRAM."""


@dataclass(frozen=True)
class TensorUse:
    """One tensor a segment touches, priced as `cim-to-metaop` moves it (DESIGN.md
    §10.1: every byte a statement of the flow moves is a term of the MIP).  Bytes are
    the bytes the flow's statements put on a location's port (docs/cmsasm.md):

    - `onchip`: on the tensor's on-chip location (pool or global buffer) if it lives
      there — its producer's write (or the `MEM.load` that brings a live-in tensor in),
      every read of every consumer in the segment (an MVM reads ``vectors * k`` bytes:
      the im2col view, ~9x a 3x3 convolution's input), and the `MEM.store` of a tensor
      that outlives the segment;
    - `dram_onchip`: DRAM bytes if it lives on chip (the `MEM.load` / `MEM.store`);
    - `dram_direct`: DRAM bytes if it lives in DRAM (producer's write and every read);
    - `window`: bytes it occupies on chip while it streams (the statement's
      ``window=``, `Graph.working_set`), its whole size if held;
    - `fixed`: "" when the MIP chooses the place among `PLACES`; "dram" for a tensor
      no statement of the segment reads (written straight to DRAM); "hold_in" /
      "hold_out" for a tensor held on chip across the segment's start / end (it sits
      in that boundary's hold arrays, `hold_arrays`); "stream" for a tensor its
      writer hands straight to the one vector op reading it in the same pipeline phase
      (`Graph.fusable`, DESIGN.md §9.13): no port, no window, no bytes;
    - `late_onchip`, `late_dram_onchip`, `late_dram_direct`: the part of `onchip`,
      `dram_onchip`, `dram_direct` moved by the segment's late statements
      (`SegmentProblem.late`: they start only once the run-time operand writes are
      done), so the second phase of the segment's pipeline carries them alone.
    """

    bytes: int
    window: int
    onchip: float
    dram_onchip: float
    dram_direct: float
    fixed: str = ""
    late_onchip: float = 0.0
    late_dram_onchip: float = 0.0
    late_dram_direct: float = 0.0


def hold_arrays(sizes: list[int], array_bytes: int) -> int:
    """Memory-mode arrays that hold tensors of `sizes` bytes whole, each striped over
    all of them (``ceil(bytes/H)`` bytes per array, as the simulator counts): the
    smallest ``H`` with ``sum ceil(b/H) <= array_bytes``; 0 for none (DESIGN.md §9.3)."""
    if not sizes:
        return 0
    h = max(1, -(-sum(sizes) // array_bytes))
    while sum(-(-b // h) for b in sizes) > array_bytes:
        h += 1
    return h


@dataclass(frozen=True)
class SegmentProblem:
    """Input of the segment MIP; hashable, names stripped, so identical segments
    (repeated transformer blocks) share one solve.

    ops: cost records in program order; tensors: every tensor the segment touches, in
    tensor-id order (`segment_tensor_ids` gives the ids), with what each placement
    costs; hold_in / hold_out: memory-mode arrays that keep the tensors held across
    the segment's start / end (DESIGN.md §9.3, `hold_arrays`); dram_fixed: DRAM bytes
    no choice changes (tensors written straight to DRAM).
    """

    ops: tuple[OpCost, ...]
    tensors: tuple[TensorUse, ...] = ()
    hold_in: int = 0
    hold_out: int = 0
    memory_mode: bool = True
    """False: no array may switch to memory mode (the all-compute ablation)."""
    preloaded: int = 0
    """The first `preloaded` matrix ops (weight ops, one copy each: their
    ``max_copies`` is 1 here) were loaded while the previous segment ran (DESIGN.md
    §9.1): no load cycles in this segment."""
    reserve: int = 0
    """Arrays this segment leaves unused (neither mode) for the next segment's
    preloaded weights."""
    prefetch: int = 0
    """Bytes of the next segment's preloaded weights, read from DRAM and written
    through the weight-write port during this segment's pipeline."""
    late: tuple[int, ...] = ()
    """Indices into `ops` of the late operators: the dynamic matmuls and every
    operator downstream of one inside the segment.  A dynamic matmul's `CIM.mvm`
    waits for its whole `CIM.write_operand` (docs/cmsasm.md; the simulator's rule),
    so these run in a second phase, after the weight-write port has done the
    segment's writes (issue 12: BERT's attention segments simulated 1.9x their
    single-phase prediction)."""

    def __hash__(self) -> int:
        """The fields' hash, computed once: the solve cache and the DP look a problem
        up many times (a frozen dataclass would rehash every tensor each time)."""
        cached = self.__dict__.get("_hash")
        if cached is None:
            cached = hash(tuple(getattr(self, f.name) for f in fields(self)))
            object.__setattr__(self, "_hash", cached)
        return cached

    def __getstate__(self) -> dict:
        """The fields without the cached derived values (a string's hash differs in
        another process)."""
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    @property
    def choices(self) -> tuple[int, ...]:
        """Indices of the tensors whose place the MIP chooses (computed once)."""
        cached = self.__dict__.get("_choices")
        if cached is None:
            cached = tuple(i for i, t in enumerate(self.tensors) if not t.fixed)
            object.__setattr__(self, "_choices", cached)
        return cached

    def fixed_dram(self) -> float:
        """DRAM bytes of the tensors written straight to DRAM."""
        return sum(t.dram_direct for t in self.tensors if t.fixed == "dram")

    def hold_traffic(self, side: str, late: bool = False) -> float:
        """Port bytes on the hold arrays of `side` ("hold_in" or "hold_out"); only
        the late statements' bytes if `late`."""
        return sum(t.late_onchip if late else t.onchip
                   for t in self.tensors if t.fixed == side)

    def late_fixed_dram(self) -> float:
        """The late statements' part of `fixed_dram`."""
        return sum(t.late_dram_direct for t in self.tensors if t.fixed == "dram")


def held_tensors(graph: Graph, first: int, last: int, next_last: int) -> tuple[int, ...]:
    """Tensors that may stay on chip across the boundary after segment
    ``first..last`` when the next segment is ``last+1..next_last`` (DESIGN.md §9.3,
    bounded as it suggests): produced in this segment, read after it, read only by
    the next segment, and not a model output (outputs must reach DRAM anyway)."""
    held = []
    for i in range(first, last + 1):
        for t in graph.ops[i].outputs:
            tensor = graph.tensors[t]
            if tensor.is_output or not tensor.consumers:
                continue
            if max(tensor.consumers) > last and max(tensor.consumers) <= next_last:
                held.append(t)
    return tuple(held)


def preloadable(graph: Graph, first: int, last: int) -> list[int]:
    """Operator indices of segment ``first..last`` whose weights may be loaded while
    the previous segment runs (DESIGN.md §9.1): its leading matrix operators, up to
    the first one that is not a weight op (a run-time operand cannot be written before
    its producer ran).  A DP choice preloads a prefix of this list."""
    lead = []
    for o in graph.ops[first:last + 1]:
        if not o.cost.arrays:
            continue
        if o.cost.kind != "weight":
            break
        lead.append(o.index)
    return lead


def preload_of(graph: Graph, first: int, last: int, count: int) -> tuple[int, int]:
    """``(arrays, bytes)`` of one weight copy of the first `count` `preloadable` ops of
    segment ``first..last``: what the previous segment reserves and streams in."""
    ops = [graph.ops[i].cost for i in preloadable(graph, first, last)[:count]]
    return sum(o.arrays for o in ops), sum(o.weight_bytes for o in ops)


def mvm_shape(cost: OpCost, arch: Arch) -> tuple[int, int, int]:
    """``(vectors, k, n)`` of a matrix op's `CIM.mvm` statement: a weight op streams
    ``M`` vectors of ``g*K`` elements and writes ``g*N`` per vector; a dynamic matmul
    streams all its instances' vectors (``compute / mvm_cycles``) of ``K`` and writes
    ``N`` per vector.  Input bytes ``vectors*k*act_bits/8``, output ``vectors*n*...``
    (docs/cmsasm.md).  `cim-to-metaop` emits these; the MIP prices them."""
    if cost.kind == "dynamic":
        return cost.compute // arch.mvm_cycles, cost.k, cost.n
    return cost.m, cost.groups * cost.k, cost.groups * cost.n


def _reads(gop: GraphOp, t: int, graph: Graph, arch: Arch) -> tuple[float, float]:
    """Bytes op `gop` reads of tensor `t` on its port (per operand occurrence):
    ``(by CIM.write_operand, by the op's MVM or VEC statement)``."""
    cost = gop.cost
    if not cost.arrays:  # VEC: each input's declared size
        return 0.0, graph.tensors[t].bytes * gop.inputs.count(t)
    vectors, k, _ = mvm_shape(cost, arch)
    written = streamed = 0.0
    for pos, u in enumerate(gop.inputs):
        if u != t:
            continue
        # a dynamic matmul's second operand is read once by CIM.write_operand
        if pos == 1 and cost.kind == "dynamic":
            written += cost.weight_bytes
        else:
            streamed += vectors * k * arch.act_bits / 8
    return written, streamed


def _writes(gop: GraphOp, t: int, graph: Graph, arch: Arch) -> float:
    """Bytes op `gop` writes of its output `t`."""
    if not gop.cost.arrays:
        return graph.tensors[t].bytes
    vectors, _, n = mvm_shape(gop.cost, arch)
    return vectors * n * arch.act_bits / 8


def op_window(graph: Graph, gop: GraphOp, first: int, last: int) -> int:
    """The ``window=`` of `gop`'s statement: the largest streaming window of its outputs
    read inside segment ``first..last`` (the flow gives one per statement; each output
    then occupies at most that, capped by its size)."""
    wins = [graph.working_set(t, c) for t in gop.outputs
            for c in graph.tensors[t].consumers if first <= c <= last]
    return max(wins, default=0)


def segment_tensor_ids(graph: Graph, first: int, last: int) -> list[int]:
    """Ids of every tensor operators ``first..last`` read or write, in id order: the
    order of `SegmentProblem.tensors`."""
    ids = {t for g in graph.ops[first:last + 1] for t in (*g.inputs, *g.outputs)}
    return sorted(ids)


def segment_problem(graph: Graph, first: int, last: int, held_in: tuple[int, ...] = (),
                    held_out: tuple[int, ...] = (), memory_mode: bool = True,
                    preloaded: int = 0, reserve: int = 0, prefetch: int = 0
                    ) -> SegmentProblem:
    """The MIP input for operators ``first..last`` (inclusive) of `graph`; `held_in`
    / `held_out` are tensor ids kept on chip across the boundary before / after it
    (from `held_tensors`), which sit whole in their boundary's hold arrays;
    `memory_mode` False forbids memory-mode arrays.  `preloaded`: how many leading
    weight ops were loaded during the previous segment (one copy each); `reserve` /
    `prefetch`: the arrays and bytes of the next segment's preload (`preload_of`).
    Raises CMSwitchError if `preloaded` exceeds the `preloadable` ops."""
    ops = segment_ops(graph, first, last, preloaded)
    key = ("uses", first, last, held_in, held_out)
    if key not in graph.memo:
        graph.memo[key] = _tensor_uses(graph, first, last, held_in, held_out)
    uses, hold_in, hold_out = graph.memo[key]
    return SegmentProblem(
        ops=ops,
        tensors=uses,
        hold_in=hold_in,
        hold_out=hold_out,
        memory_mode=memory_mode,
        preloaded=preloaded,
        reserve=reserve,
        prefetch=prefetch,
        late=tuple(i - first for i in sorted(late_ops(graph, first, last))),
    )


def segment_ops(graph: Graph, first: int, last: int, preloaded: int = 0
                ) -> tuple[OpCost, ...]:
    """`SegmentProblem.ops` of operators ``first..last``: their costs without names,
    one copy at most for the first `preloaded` `preloadable` ones.  Raises
    CMSwitchError if `preloaded` exceeds the `preloadable` ops."""
    lead = set(preloadable(graph, first, last)[:preloaded])
    if len(lead) < preloaded:
        raise CMSwitchError(f"{graph.span(first, last)}: {preloaded} preloaded weight ops "
                            f"asked, only {len(lead)} lead the segment")
    return tuple(_stripped(graph, i, i in lead) for i in range(first, last + 1))


def _op_signature(graph: Graph, index: int) -> tuple:
    """Everything `segment_problem` reads about op `index` and its tensors, with
    every op position relative to `index`: its stripped cost; per input slot the
    tensor's bytes, producer (offset and output slot; a graph input by its id),
    consumers (offsets), whether it is a model output, the working set this op
    needs of it and whether it can be handed to this op as a stream (`fusable`); the
    same per output.  Ops of a repeated block (LLaMA's 32 decoder
    layers) get equal signatures."""
    gop = graph.ops[index]

    def desc(t: int) -> tuple:
        tensor = graph.tensors[t]
        if tensor.producer is None:
            where: tuple = ("input", t)
        else:
            where = (tensor.producer - index, graph.ops[tensor.producer].outputs.index(t))
        return (tensor.bytes, where, tuple(c - index for c in tensor.consumers),
                tensor.is_output)

    return (_stripped(graph, index, False),
            tuple((desc(t), graph.working_set(t, index), graph.fusable(t))
                  for t in gop.inputs),
            tuple(desc(t) for t in gop.outputs))


def span_signature(graph: Graph, first: int, last: int, interned: dict[tuple, int]
                   ) -> tuple[int, ...]:
    """A key equal for two spans of operators ``first..last`` whose `segment_problem`s
    are equal for equally placed held tensors (`relative_tensors`): the ops'
    `_op_signature`s, each interned in `interned` as a small integer (one dict per
    compile, so the chunk sizes' graphs share it).  Two spans with equal signatures
    touch tensors of equal bytes, consumers and working sets in the same id order
    (ids follow producer positions), so their problems are equal;
    tests/test_segment_dp.py checks it on every span of repeated-block models."""
    # the ids mean something only beside `interned`: the memo is per interning dict
    # (a graph priced under two solve caches must not mix their ids)
    memo = graph.memo.setdefault(("signatures", id(interned)), (interned, {}))
    if memo[0] is not interned:
        memo = graph.memo[("signatures", id(interned))] = (interned, {})
    spans = memo[1]
    if (first, last) not in spans:
        ids = []
        for i in range(first, last + 1):
            if i not in spans:
                spans[i] = interned.setdefault(_op_signature(graph, i), len(interned))
            ids.append(spans[i])
        spans[first, last] = tuple(ids)
    return spans[first, last]


def relative_tensors(graph: Graph, first: int, tensors: tuple[int, ...]) -> tuple:
    """Held tensor ids as ``(producer offset from first, output slot)``: the form
    `span_signature` keys take them in."""
    out = []
    for t in tensors:
        producer = graph.tensors[t].producer
        out.append((producer - first, graph.ops[producer].outputs.index(t))
                   if producer is not None else ("input", t))
    return tuple(out)


def late_ops(graph: Graph, first: int, last: int) -> frozenset[int]:
    """Operator indices of segment ``first..last`` that start only after a run-time
    operand write (`SegmentProblem.late`): its dynamic matmuls and, in program order,
    every operator reading a tensor a late operator produced."""
    key = ("late", first, last)
    if key in graph.memo:
        return graph.memo[key]
    late: set[int] = set()
    for i in range(first, last + 1):
        gop = graph.ops[i]
        if gop.cost.kind == "dynamic" or any(
                graph.tensors[t].producer in late for t in gop.inputs):
            late.add(i)
    graph.memo[key] = frozenset(late)
    return graph.memo[key]


def _stripped(graph: Graph, index: int, preloaded: bool) -> OpCost:
    """Op `index`'s cost without its name (so equal segments give equal problems),
    one copy at most if `preloaded`; made once per graph."""
    key = ("cost", index, preloaded)
    if key not in graph.memo:
        graph.memo[key] = replace(graph.ops[index].cost, name="",
                                  **({"max_copies": 1} if preloaded else {}))
    return graph.memo[key]


def _tensor_uses(graph: Graph, first: int, last: int, held_in: tuple[int, ...],
                 held_out: tuple[int, ...]) -> tuple[tuple[TensorUse, ...], int, int]:
    """`segment_problem`'s tensors and hold-array counts (in, out) for a span."""
    arch = graph.arch
    late = late_ops(graph, first, last)
    uses = []
    hold_in_sizes, hold_out_sizes = [], []
    for t in segment_tensor_ids(graph, first, last):
        tensor = graph.tensors[t]
        inside = tensor.producer is not None and first <= tensor.producer <= last
        readers = [c for c in tensor.consumers if first <= c <= last]
        reads = late_reads = 0.0
        for c in dict.fromkeys(readers):
            written, streamed = _reads(graph.ops[c], t, graph, arch)
            reads += written + streamed
            late_reads += streamed if c in late else 0.0
        outlives = tensor.is_output or any(c > last for c in tensor.consumers)
        if t in held_in:
            uses.append(TensorUse(tensor.bytes, tensor.bytes, reads, 0, 0, "hold_in",
                                  late_reads))
            hold_in_sizes.append(tensor.bytes)
            continue
        write = _writes(graph.ops[tensor.producer], t, graph, arch) if inside else 0.0
        produced_late = inside and tensor.producer in late
        late_write = write if produced_late else 0.0
        if t in held_out:
            uses.append(TensorUse(tensor.bytes, tensor.bytes, write + reads, 0, 0, "hold_out",
                                  late_write + late_reads))
            hold_out_sizes.append(tensor.bytes)
            continue
        if not readers:
            uses.append(TensorUse(tensor.bytes, 0, 0, 0, write, "dram", 0, 0, late_write))
            continue
        if (arch.stream_fusion and inside and graph.fusable(t)
                and (readers[0] in late) == produced_late):
            uses.append(TensorUse(tensor.bytes, 0, 0, 0, 0, "stream"))
            continue
        if inside:
            producer = graph.ops[tensor.producer]
            whole = any(o in held_out for o in producer.outputs)
            window = tensor.bytes if whole else min(
                tensor.bytes, op_window(graph, producer, first, last))
            store = tensor.bytes if outlives else 0
            late_store = store if produced_late else 0  # MEM.store follows its producer
            uses.append(TensorUse(tensor.bytes, window, write + reads + store, store,
                                  write + reads, "", late_write + late_reads + late_store,
                                  late_store, late_write + late_reads))
        else:  # live-in: MEM.load into the chip, or every consumer reads DRAM
            window = max(graph.working_set(t, c) for c in readers)
            uses.append(TensorUse(tensor.bytes, min(tensor.bytes, window),
                                  tensor.bytes + reads, tensor.bytes, reads, "",
                                  late_reads, 0, late_reads))
    # a tensor whose DRAM bytes (both phases) an on-chip place does not lower only
    # loads ports there: DRAM is at least as good for every allocation (exact dominance)
    uses = [replace(u, fixed="dram") if not u.fixed and u.dram_direct <= u.dram_onchip
            and u.late_dram_direct <= u.late_dram_onchip else u for u in uses]
    ab = arch.array_bytes
    return tuple(uses), hold_arrays(hold_in_sizes, ab), hold_arrays(hold_out_sizes, ab)
