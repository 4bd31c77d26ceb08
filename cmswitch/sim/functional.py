"""Functional mode: run a `.cmsasm` flow on real numbers and compare it with
onnxruntime (DESIGN.md §6; docs/functional.md).

The timing simulator checks that a flow obeys the rules and how long it takes; this
module checks that it *computes the model*.  `FunctionalMachine` walks the flow's
statements in order and keeps a numpy value per tensor copy ``(tensor, location)``:

* `MEM.load` / `MEM.store` / `MEM.move` copy a value between ``dram``, ``gb`` and
  ``a[LO:HI]``; reading a copy that is not at the named location is an error;
* `CIM.load_weight` puts each weight tile into its array (docs/cmsasm.md: copy ``c``,
  tile ``(i, j)`` -> array ``LO + c*TK*TN + i*TN + j``); `CIM.mvm` multiplies the
  input found at its ``in=`` location by the tiles *held in the arrays it names*, tile
  by tile, summing the partial sums over the K tiles, the copies splitting the vectors;
* `VEC.*` computes its kind; `CM.switch` erases weights (TOM) or data (TOC).

Operator semantics (convolution attributes for im2col, the weight slice of a
partitioned piece, a vector op's kind and attributes) come from the compiled `cim`
module (`Plan.module`), by the flow's names (`Operators`, which the compiler builds:
`cmswitch.api.Plan.flow_operators`); weight values from the ONNX file's initializers.
All arithmetic is float32 and nothing is quantized: this checks the dataflow, not the
number format.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field

import numpy as np
from xdsl.ir import Operation

from cmswitch.errors import CMSwitchError
from cmswitch.sim.kernels import REFERENCE_KINDS, im2col, vector_kernel, with_constants
from cmswitch.sim.onnx_weights import OnnxWeights, WeightMatrix, np_dtype, piece_weight
from cmswitch.sim.flow import (
    ArchDecl,
    FlowSource,
    Loc,
    ParallelBegin,
    ParallelEnd,
    Ref,
    Statement,
    TensorDecl,
    iter_records,
)

DRAM = Loc("dram")



@dataclass
class Operators:
    """The compiled `cim` module seen through the names of the flow: operators by flow
    name, tensor shapes and numpy dtypes by flow tensor name, and the model's input and
    output tensor names in function-argument / return order.  Built by the compiler,
    which names the flow (`cmswitch.api.Plan.flow_operators`); functional mode only reads
    it, so it imports no part of the optimizer."""

    ops: dict[str, Operation]
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, type]
    inputs: list[str]
    outputs: list[str]
    names: dict = field(default_factory=dict)
    """IR value -> the flow tensor that holds it."""
    views: dict = field(default_factory=dict)
    """IR value -> the view op whose result it is: no flow tensor holds it; a reader
    evaluates the view on the tensors the view reads (`cmswitch.cost.views`)."""





# ----------------------------------------------------------------------------------
# the machine


@dataclass
class _Held:
    """What one compute-mode array holds: a tile of OP's weight copy, or (dynamic
    matmuls) the run-time operand.  `program` is the line that wrote it (a copy is
    identified by program line and copy index)."""

    op: str
    program: int
    copy: int
    blocks: list          # [(group, k0, k1, n0, n1, values K' x N')]
    operand: np.ndarray | None = None


def weight_tiles(values: np.ndarray, rows: int, wpr: int) -> tuple[int, int, dict]:
    """Tiles of one weight copy: ``(TK, TN, {(i, j): blocks})``.

    ``values`` is ``(G, K, N)``; ``wpr`` weights per array row.  Tile ``(i, j)`` of a
    group holds rows ``i*rows..`` and columns ``j*wpr..`` of its matrix; groups whose
    ``K x N`` block fits one array are packed block-diagonally, ``min(rows//K,
    wpr//N, G)`` per array, and the packs stack along the tile rows, so
    ``TK = ceil(G/packed) * ceil(K/rows)``, ``TN = ceil(N/wpr)``."""
    g_count, k, n = values.shape
    tk, tn = -(-k // rows), -(-n // wpr)
    packed = 1 if g_count == 1 or k > rows or n > wpr else min(rows // k, wpr // n, g_count)
    packs = -(-g_count // packed)
    tiles: dict = {}
    for p, i, j in itertools.product(range(packs), range(tk), range(tn)):
        k0, k1 = i * rows, min(k, (i + 1) * rows)
        n0, n1 = j * wpr, min(n, (j + 1) * wpr)
        tiles[(p * tk + i, j)] = [
            (g, k0, k1, n0, n1, values[g, k0:k1, n0:n1])
            for g in range(p * packed, min(g_count, (p + 1) * packed))]
    return packs * tk, tn, tiles


class FunctionalMachine:
    """Executes a flow on numpy values; see the module docstring.  Errors raise
    CMSwitchError ``FILE: line N: message``."""

    def __init__(self, name: str, operators: Operators, weights: OnnxWeights,
                 inputs: dict[str, np.ndarray]) -> None:
        self.name = name
        self.operators = operators
        self.weights = weights
        self.inputs = inputs
        self.arch: dict = {}
        self.modes: list[str] = []
        self.held: list[_Held | None] = []
        self.data: dict[tuple[str, Loc], np.ndarray] = {}
        self.declared: dict[str, TensorDecl] = {}
        self.in_block = False
        self.streamed: set = set()
        self.line = 0
        self.statements = 0
        self._pieces: dict[str, WeightMatrix] = {}

    def fail(self, message: str):
        raise CMSwitchError(f"{self.name}: line {self.line}: {message}")

    # -- records -----------------------------------------------------------------

    def feed(self, record) -> None:
        self.line = record.line
        if isinstance(record, ArchDecl):
            self.arch = record.fields
            self.modes = ["C"] * int(record.fields["arrays"])
            self.held = [None] * len(self.modes)
        elif isinstance(record, TensorDecl):
            self.declare(record)
        elif isinstance(record, ParallelBegin):
            self.in_block, self.streamed = True, set()
        elif isinstance(record, ParallelEnd):
            for key in self.streamed:
                self.data.pop(key, None)
            self.in_block, self.streamed = False, set()
        elif isinstance(record, Statement):
            if not self.arch:
                self.fail(f"{record.opcode} before the .arch header")
            self.statements += 1
            getattr(self, "do_" + record.kind.replace(".", "_"))(record)

    def declare(self, record: TensorDecl) -> None:
        self.declared[record.name] = record
        if not record.is_input:
            return
        value = self.inputs.get(record.name)
        if value is None:
            self.fail(f"no value given for the model input {record.name}")
        self.data[(record.name, DRAM)] = value

    def outputs(self) -> dict[str, np.ndarray]:
        """Values of the tensors declared `output`, read from DRAM."""
        result = {}
        for decl in self.declared.values():
            if not decl.is_output:
                continue
            value = self.data.get((decl.name, DRAM))
            if value is None:
                raise CMSwitchError(f"{self.name}: output {decl.name} was never stored to dram")
            result[decl.name] = value
        return result

    # -- data --------------------------------------------------------------------

    def arrays(self, loc: Loc, mode: str, what: str) -> range:
        if loc.hi > len(self.modes):
            self.fail(f"{what} {loc}: the chip has {len(self.modes)} arrays")
        wrong = [i for i in range(loc.lo, loc.hi) if self.modes[i] != mode]
        if wrong:
            need = "memory" if mode == "M" else "compute"
            self.fail(f"{what} {loc}: array {wrong[0]} is not in {need} mode")
        return range(loc.lo, loc.hi)

    def read(self, ref: Ref, st: Statement) -> np.ndarray:
        value = self.data.get((ref.tensor, ref.loc))
        if value is not None:
            return value
        where = sorted(str(loc) for t, loc in self.data if t == ref.tensor)
        found = f"it is at {', '.join(where)}" if where else "it is nowhere"
        what = f"{st.opcode} {st.op}" if st.op else st.opcode
        self.fail(f"{what} reads {ref}, but {ref.tensor} is not there ({found})")

    def write(self, ref: Ref, value: np.ndarray, st: Statement) -> None:
        shape = self.operators.shapes.get(ref.tensor)
        if shape is None:
            self.fail(f"{st.opcode} writes {ref.tensor}, which is not a tensor of the module")
        if tuple(value.shape) != shape:
            self.fail(f"{st.opcode} writes {ref.tensor} of shape {list(value.shape)}, "
                      f"the module's is {list(shape)}")
        if ref.loc.kind == "a":
            self.arrays(ref.loc, "M", f"{st.opcode} writes data to")
        key = (ref.tensor, ref.loc)
        if self.in_block and st.window is not None and ref.loc.on_chip and key not in self.data:
            self.streamed.add(key)
        self.data[key] = value

    # -- statements --------------------------------------------------------------

    def do_CM_switch(self, st: Statement) -> None:
        loc = st.arrays
        if loc.hi > len(self.modes):
            self.fail(f"CM.switch {loc}: the chip has {len(self.modes)} arrays")
        changed = [i for i in range(loc.lo, loc.hi) if self.modes[i] != st.mode[2]]
        for i in changed:
            self.modes[i] = st.mode[2]
            self.held[i] = None
        if st.mode == "TOC" and changed:
            hit = set(changed)
            for key in [k for k in self.data if k[1].kind == "a"
                        and hit.intersection(range(k[1].lo, k[1].hi))]:
                del self.data[key]

    def operator(self, name: str, st: Statement) -> Operation:
        op = self.operators.ops.get(name)
        if op is None:
            self.fail(f"{st.opcode}: operator {name} is not in the compiled module")
        return op

    def piece(self, name: str, st: Statement) -> tuple[Operation, WeightMatrix]:
        from cmswitch.dialects.cim import WEIGHT_OPS

        op = self.operator(name, st)
        if not isinstance(op, WEIGHT_OPS):
            self.fail(f"{st.opcode}: {name} is a {op.name}, not a weight operator")
        if name not in self._pieces:
            try:
                self._pieces[name] = piece_weight(op, self.weights)
            except CMSwitchError as error:
                self.fail(f"{st.opcode} {name}: {error}")
        return op, self._pieces[name]

    def program_range(self, st: Statement) -> range:
        tk, tn = st.tiles
        if st.arrays.hi - st.arrays.lo != tk * tn * st.copies:
            self.fail(f"{st.opcode} {st.op}: {st.arrays} is not {tk}x{tn} tiles x "
                      f"{st.copies} copies")
        return self.arrays(st.arrays, "C", f"{st.opcode} {st.op} into")

    def do_CIM_load_weight(self, st: Statement) -> None:
        _, weight = self.piece(st.op, st)
        rows, wpr = int(self.arch["rows"]), self._wpr()
        tk, tn, tiles = weight_tiles(weight.values, rows, wpr)
        if (tk, tn) != st.tiles:
            self.fail(f"CIM.load_weight {st.op}: tiles={st.tiles[0]}x{st.tiles[1]}, but its "
                      f"weight needs {tk}x{tn} tiles of {rows}x{wpr} on this chip")
        self.program_range(st)
        for c, ((i, j), blocks) in itertools.product(range(st.copies), tiles.items()):
            self.held[st.arrays.lo + c * tk * tn + i * tn + j] = _Held(st.op, st.line, c, blocks)

    def do_CIM_write_operand(self, st: Statement) -> None:
        from cmswitch.dialects.cim import DynMatmulOp

        op = self.operator(st.op, st)
        if not isinstance(op, DynMatmulOp):
            self.fail(f"CIM.write_operand: {st.op} is not a dynamic matmul")
        value = self.operands(op, [op.rhs], st)[0]
        span = self.program_range(st)
        per_copy = st.tiles[0] * st.tiles[1]
        for i in span:
            self.held[i] = _Held(st.op, st.line, (i - span.start) // per_copy, [], value)

    def copies(self, st: Statement) -> list[list[_Held]]:
        """The whole copies of OP held in the mvm's arrays, in array order."""
        groups: dict[tuple, list[_Held]] = {}
        for i in self.arrays(st.arrays, "C", f"CIM.mvm {st.op} on"):
            held = self.held[i]
            if held is None or held.op != st.op:
                what = "nothing" if held is None else f"a tile of {held.op}"
                self.fail(f"CIM.mvm {st.op}: array {i} holds {what}, not {st.op}'s weight")
            groups.setdefault((held.program, held.copy), []).append(held)
        return list(groups.values())

    def do_CIM_mvm(self, st: Statement) -> None:
        from cmswitch.dialects.cim import Conv2dOp, DynMatmulOp, tensor_shape

        op = self.operator(st.op, st)
        copies = self.copies(st)
        x = self.operands(op, [op.operands[0]], st)[0]
        in_shape = tensor_shape(op.lhs if isinstance(op, DynMatmulOp) else op.input)
        if tuple(x.shape) != in_shape:
            self.fail(f"CIM.mvm {st.op}: input {st.reads[0]} has shape {list(x.shape)}, "
                      f"the operator reads {list(in_shape)}")
        if isinstance(op, DynMatmulOp):
            operand = copies[0][0].operand
            if operand is None or tuple(operand.shape) != tensor_shape(op.rhs):
                self.fail(f"CIM.mvm {st.op}: its arrays do not hold its run-time operand")
            self.write(st.writes[0], np.matmul(x, operand).astype(np.float32), st)
            return
        op, weight = self.piece(st.op, st)
        g, k, n = weight.values.shape
        expected = len(weight_tiles(weight.values, int(self.arch["rows"]), self._wpr())[2])
        if any(len(copy) != expected for copy in copies):
            self.fail(f"CIM.mvm {st.op}: {st.arrays} holds only part of a copy "
                      f"({expected} tiles each)")
        vectors = im2col(op, x) if isinstance(op, Conv2dOp) else x.reshape(-1, 1, k)
        m = vectors.shape[0]
        if (st.vectors, st.k, st.n) != (m, g * k, g * n):
            self.fail(f"CIM.mvm {st.op}: vectors={st.vectors} k={st.k} n={st.n}, but the "
                      f"operator has M={m}, K={g * k}, N={g * n}")
        out = np.zeros((m, g, n), dtype=np.float32)
        for rows, copy in zip(np.array_split(np.arange(m), len(copies)), copies):
            for held in copy:
                for group, k0, k1, n0, n1, values in held.blocks:
                    out[rows, group, n0:n1] += vectors[rows, group, k0:k1] @ values
        if weight.bias is not None:
            out += np.broadcast_to(weight.bias, (m, g, n))
        out_shape = tensor_shape(op.output)
        if isinstance(op, Conv2dOp):
            nb, _, ho, wo = out_shape
            result = out.reshape(nb, ho, wo, g * n).transpose(0, 3, 1, 2)
        else:
            result = out.reshape(out_shape)
        self.write(st.writes[0], np.ascontiguousarray(result), st)

    def _wpr(self) -> int:
        """Weights per array row: ``cols*cell_bits // weight_bits``."""
        return int(self.arch["cols"]) * int(self.arch["cell_bits"]) // int(self.arch["weight_bits"])

    def do_VEC(self, st: Statement) -> None:
        from cmswitch.dialects.cim import VectorOp, tensor_shape

        op = self.operator(st.op, st)
        kind = st.opcode[4:]
        if not isinstance(op, VectorOp) or op.kind.data != kind:
            what = op.kind.data if isinstance(op, VectorOp) else op.name
            self.fail(f"{st.opcode} {st.op}: the module's operator is {what}")
        ins = self.operands(op, list(op.operands), st)
        want = [tensor_shape(v) for v in op.inputs]
        if [tuple(v.shape) for v in ins] != want:
            self.fail(f"{st.opcode} {st.op}: inputs of shapes {[list(v.shape) for v in ins]}, "
                      f"the operator reads {[list(s) for s in want]}")
        if len(st.writes) != len(op.outputs):
            self.fail(f"{st.opcode} {st.op}: {len(st.writes)} outputs, the operator has "
                      f"{len(op.outputs)}")
        outs = self.vector(op, ins, st)
        if len(outs) != len(st.writes):
            self.fail(f"{st.opcode} {st.op}: functional mode computes {len(outs)} of the "
                      f"operator's {len(st.writes)} outputs")
        for ref, value, result in zip(st.writes, outs, op.outputs):
            self.write(ref, np.ascontiguousarray(value, dtype=np_dtype(result.type)), st)

    def vector(self, op: Operation, ins: list[np.ndarray], st: Statement) -> list[np.ndarray]:
        """The outputs of vector op `op` on `ins`, each checked against the module's
        shape."""
        from cmswitch.dialects.cim import tensor_shape

        shapes = [tensor_shape(r) for r in op.outputs]
        dtypes = [np_dtype(r.type) for r in op.outputs]
        try:
            if op.kind.data in REFERENCE_KINDS:
                outs = self.weights.run_node(op, ins)
            else:
                ins = with_constants(op, ins, self.weights.constant)
                with np.errstate(all="ignore"):
                    outs = vector_kernel(op, ins, shapes, dtypes, self.weights.array)
        except CMSwitchError as error:
            self.fail(f"{st.opcode} {st.op}: {error}")
        for value, shape in zip(outs, shapes):
            if value.shape != shape:
                self.fail(f"{st.opcode} {st.op}: computed shape {list(value.shape)}, the "
                          f"module says {list(shape)}")
        return outs

    def sources(self, value) -> list[str]:
        """The flow tensors an operand reads: its own, or those of the view it is
        (`Operators.views`), in order."""
        view = self.operators.views.get(value)
        if view is None:
            return [self.operators.names.get(value, "?")]
        return [name for v in view.operands for name in self.sources(v)]

    def operands(self, op: Operation, values: list, st: Statement) -> list[np.ndarray]:
        """The values of `op`'s operands `values` from what the statement reads: its
        ``in=`` tensors in order, one per operand, or one per source of an operand
        that is a view (data the hardware addresses in place, `cmswitch.cost.views`:
        the view is evaluated on them).  The values are whatever the named copies
        hold, so a flow reading the wrong tensor computes a wrong result.  Fails when
        the statement reads another number of tensors."""
        counts = [len(self.sources(v)) for v in values]
        if len(st.reads) != sum(counts):
            self.fail(f"{st.opcode} {st.op}: reads {len(st.reads)} tensors, the operator "
                      f"reads {sum(counts)} ({', '.join(self.sources(v)[0] for v in values)}...)")
        reads = iter(st.reads)
        return [self.value(v, reads, st) for v in values]

    def value(self, value, reads, st: Statement) -> np.ndarray:
        view = self.operators.views.get(value)
        if view is None:
            return self.read(next(reads), st)
        ins = [self.value(v, reads, st) for v in view.operands]
        return self.vector(view, ins, st)[0]

    def do_MEM_load(self, st: Statement) -> None:
        self.do_MEM(st)

    def do_MEM_store(self, st: Statement) -> None:
        self.do_MEM(st)

    def do_MEM_move(self, st: Statement) -> None:
        self.do_MEM(st)

    def do_MEM(self, st: Statement) -> None:
        source = st.reads[0]
        if source.loc.kind == "a":
            self.arrays(source.loc, "M", f"{st.opcode} reads data from")
        self.write(st.writes[0], self.read(source, st), st)


def run_flow(flow: str | os.PathLike, operators: Operators, weights: OnnxWeights,
             inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Execute a flow (text or path) functionally.

    operators: the allocated `cim` module the flow was lowered from, by flow names
             (`cmswitch.api.Plan.flow_operators`);
    weights: the ONNX model's weights; inputs: a value per model input tensor, by flow
             tensor name (numpy, the module's shapes).
    Returns the values of the flow's output tensors, by name, read from DRAM.
    Raises CMSwitchError ``FILE: line N: message`` when the flow reads a value where it
    is not, names arrays that do not hold the operator's weight, or does not match the
    module (shapes, operator kinds, vector counts); and for unsupported operators.
    """
    source = FlowSource(flow)
    machine = FunctionalMachine(source.name, operators, weights, inputs)
    for record in iter_records(source.lines(), source.name):
        machine.feed(record)
    return machine.outputs()


