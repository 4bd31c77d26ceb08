"""The flattened operator graph the optimizer works on (DESIGN.md §4).

`build_graph` walks a `func.func` of `cim` ops in program order (a topological order;
residual branches and attention are DAGs, not chains), looking through `cim.segment`
regions, and records every operator's cost and every tensor's producer, consumers and
size.  `segment_problem` cuts out one candidate segment as the hashable input of the
segment MIP (`cmswitch.solver.mip`); identical segments give equal problems, which is
what the solve cache keys on.
"""

from __future__ import annotations

import re

from dataclasses import dataclass, field, replace

from xdsl.dialects.builtin import StringAttr
from xdsl.dialects.func import FuncOp
from xdsl.ir import Operation, SSAValue

from cmswitch.arch import Arch
from cmswitch.cost.model import OpCost, op_cost, tensor_bytes
from cmswitch.dialects.cim import (
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


@dataclass
class GraphOp:
    """One operator: the IR op, its cost, and its input/output tensor ids."""

    index: int
    op: Operation
    cost: OpCost
    inputs: list[int]
    outputs: list[int]

    @property
    def name(self) -> str:
        return self.cost.name


@dataclass
class Graph:
    """Operators in program order and the tensors between them."""

    ops: list[GraphOp]
    tensors: list[Tensor]
    value_ids: dict[SSAValue, int]

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
        gop = self.ops[consumer]
        op, t = gop.op, self.tensors[tensor]
        if isinstance(op, Conv2dOp):
            h = tensor_shape(op.input)[2]
            kh = op.kernel.get_values()[0]
            rows = op.dilations.get_values()[0] * (kh - 1) + 1 + op.strides.get_values()[0] - 1
            return min(t.bytes, -(-t.bytes * min(rows, h) // h))
        operand = op.operands[gop.inputs.index(tensor)]
        shape = tensor_shape(operand)
        if not shape or not _row_streams(op, operand):
            return t.bytes
        rows = max(1, t.bytes // max(1, shape[-1]))
        return min(t.bytes, -(-t.bytes * STREAM_ROWS // rows))


STREAM_ROWS = 64
"""Rows (input vectors) a row-streaming consumer buffers: two of the simulator's
default 32-vector chunks of a 2048-vector stream, double-buffered.  [A] assumption."""

ROW_KINDS = frozenset((
    "add", "sub", "mul", "div", "neg", "pow", "sqrt", "reciprocal", "exp", "erf", "tanh",
    "sigmoid", "relu", "clip", "gelu", "silu", "cos", "sin", "where", "isnan", "not",
    "equal", "less", "greater", "and", "or", "cast", "max", "min", "softmax", "layernorm",
    "rmsnorm", "psum_add", "reshape", "identity", "squeeze", "unsqueeze", "flatten",
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


_SAFE = re.compile(r"[^A-Za-z0-9_.:/$-]")


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
    return _unique(_SAFE.sub("_", hint or f"op{index}"), used)


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
    other than `func.return`."""
    for op in func.body.block.ops:
        if op.dialect_name() not in ("cim", "func"):
            raise CMSwitchError(f"unexpected operation '{op.name}' in @{func.sym_name.data}")
    tensors: list[Tensor] = []
    ids: dict[SSAValue, int] = {}

    names: set[str] = set()

    def new_tensor(v: SSAValue, producer: int | None) -> int:
        ids[v] = len(tensors)
        name = _unique(_SAFE.sub("_", v.name_hint or f"t{len(tensors)}"), names)
        tensors.append(Tensor(name, tensor_bytes(v, arch), producer))
        return ids[v]

    for arg in func.body.block.args:
        new_tensor(arg, None)
    ops: list[GraphOp] = []
    used: set[str] = set()
    for top in func.body.block.ops:
        inner = list(top.body.block.ops) if isinstance(top, SegmentOp) else [top]
        for op in inner:
            if isinstance(op, YieldOp) or op.dialect_name() != "cim":
                continue
            index = len(ops)
            ins = [ids[v] for v in op.operands]
            outs = [new_tensor(r, index) for r in op.results]
            for t in ins:
                tensors[t].consumers.append(index)
            ops.append(GraphOp(index, op, op_cost(op, _op_name(op, index, used), arch), ins, outs))
        if isinstance(top, SegmentOp):
            yielded = top.body.block.last_op
            for res, val in zip(top.outs, yielded.operands, strict=True):
                ids[res] = ids[val]
    ret = func.body.block.last_op
    for v in ret.operands if ret is not None else ():
        tensors[ids[v]].is_output = True
    return Graph(ops, tensors, ids)


@dataclass(frozen=True)
class Edge:
    """A tensor produced and consumed inside one segment: `bytes`, and `window` bytes
    it occupies on chip while streaming."""

    bytes: int
    window: int


@dataclass(frozen=True)
class SegmentProblem:
    """Input of the segment MIP; hashable, names stripped, so identical segments
    (repeated transformer blocks) share one solve.

    ops: cost records in program order; live_in / live_out: bytes that cross the chip
    boundary through DRAM (read before, written after); edges: internal tensors;
    held_in / held_out: bytes kept on chip across the boundary before / after the
    segment (DESIGN.md §9.3) — not DRAM traffic, but they occupy memory for the
    whole segment.
    """

    ops: tuple[OpCost, ...]
    live_in: int
    live_out: int
    edges: tuple[Edge, ...]
    held_in: int = 0
    held_out: int = 0
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


def segment_problem(graph: Graph, first: int, last: int, held_in: tuple[int, ...] = (),
                    held_out: tuple[int, ...] = (), memory_mode: bool = True,
                    preloaded: int = 0, reserve: int = 0, prefetch: int = 0
                    ) -> SegmentProblem:
    """The MIP input for operators ``first..last`` (inclusive) of `graph`; `held_in`
    / `held_out` are tensor ids kept on chip across the boundary before / after it
    (from `held_tensors`), which leave the DRAM traffic for the capacity;
    `memory_mode` False forbids memory-mode arrays.  `preloaded`: how many leading
    weight ops were loaded during the previous segment (one copy each); `reserve` /
    `prefetch`: the arrays and bytes of the next segment's preload (`preload_of`).
    Raises CMSwitchError if `preloaded` exceeds the `preloadable` ops."""
    lead = set(preloadable(graph, first, last)[:preloaded])
    if len(lead) < preloaded:
        raise CMSwitchError(f"{graph.span(first, last)}: {preloaded} preloaded weight ops "
                            f"asked, only {len(lead)} lead the segment")
    inside = range(first, last + 1)
    live_in: set[int] = set()
    live_out: set[int] = set()
    edges: list[Edge] = []
    for i in inside:
        for t in graph.ops[i].inputs:
            if graph.tensors[t].producer is None or graph.tensors[t].producer < first:
                live_in.add(t)
        for t in graph.ops[i].outputs:
            tensor = graph.tensors[t]
            if tensor.is_output or any(c > last for c in tensor.consumers):
                live_out.add(t)
            local = [c for c in tensor.consumers if c <= last]
            if local:
                window = max(graph.working_set(t, c) for c in local)
                edges.append(Edge(tensor.bytes, window))
    live_in.difference_update(held_in)
    live_out.difference_update(held_out)
    return SegmentProblem(
        ops=tuple(replace(graph.ops[i].cost, name="", **({"max_copies": 1} if i in lead else {}))
                  for i in inside),
        live_in=sum(graph.tensors[t].bytes for t in sorted(live_in)),
        live_out=sum(graph.tensors[t].bytes for t in sorted(live_out)),
        edges=tuple(edges),
        held_in=sum(graph.tensors[t].bytes for t in held_in),
        held_out=sum(graph.tensors[t].bytes for t in held_out),
        memory_mode=memory_mode,
        preloaded=preloaded,
        reserve=reserve,
        prefetch=prefetch,
    )
