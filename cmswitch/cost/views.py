"""Views: data movements done by addressing, not by copying (issue 17).

A reshape, a transpose that keeps rows whole, a column slice or a concat moves no
arithmetic; compiled as a `VEC` copy it costs a read and a write of the whole tensor
through a port (often DRAM: 60% of BERT-base's cycles were DRAM-bound blocks, much of
it such moves).  `find_views` picks the movement operators whose every reader can
take the moved data *in place* — read from the tensors the view was made of, at other
addresses — and `cmswitch.cost.graph.build_graph` leaves them out of the operator
graph: their readers read the source tensors directly, so the MIP, the lowering and
the simulator all see the same, smaller traffic.  The IR keeps the view ops (they
define the consumers' shapes; functional mode evaluates them on the source values).

What the hardware is assumed to do (DESIGN.md §9.12), each reader by its own address
generator, with no extra cycles:

- a **reshape** (also flatten, squeeze, unsqueeze, identity) keeps row-major order:
  any reader reads the source as it lies;
- a **row permutation** (a transpose that keeps the last axis last, BERT's
  ``B x S x H x D -> B x H x S x D``) is read row by row at permuted addresses, each
  row at least `MIN_ROW_BYTES` long (a DRAM burst), by any reader;
- a **last-axis swap** (``K -> K^T``) is done by the weight-write port: a dynamic
  matmul's `CIM.write_operand` writes each source row into an array column;
- a **column slice** (step 1 along the last axis only, e.g. the K-slices
  `cim-partition` cuts) is read by an MVM input stream as the column range of each
  row, at least `MIN_ROW_BYTES` per row;
- a **concat** is read part by part by the digital unit: a `VEC` statement names
  every part (its ``in=`` list), an MVM stream does not (it reads one tensor).

A view chain that a reader cannot take (a sliced tensor read by the digital unit,
which reads whole tensors; a concat feeding an MVM; anything that is a model output)
keeps its copy.  Streaming: a reader of a view keeps the producer's row order (and so
its streaming window) only through reshapes, column slices and last-axis concats; any
other view makes it wait for the whole source (`Chain.unordered`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from xdsl.dialects.builtin import DenseArrayBase, IntegerAttr
from xdsl.ir import Operation, SSAValue

from cmswitch.arch import Arch
from cmswitch.dialects.cim import Conv2dOp, DynMatmulOp, MatmulOp, VectorOp, tensor_shape

RESHAPE_KINDS = frozenset({"reshape", "flatten", "squeeze", "unsqueeze", "identity"})
"""Vector kinds that only rename a row-major tensor."""

MIN_ROW_BYTES = 32
"""Shortest contiguous run (bytes) a permuted or sliced row may have and still be read
in place: one DRAM burst at the presets' 32 B/cycle port.  [A] assumption."""


@dataclass(frozen=True)
class Chain:
    """What the views between a reader and its source tensors did to the data."""

    multi: bool = False
    """Several source tensors (a concat): only a `VEC` statement reads them all."""
    partial: bool = False
    """A column range of each source row (a slice): only an MVM stream reads that."""
    transposed: bool = False
    """The last two axes swapped: only a dynamic matmul's operand write does that."""
    unordered: bool = False
    """Rows read in another order than the source was written: the reader waits for
    the whole source (no streaming window)."""

    def then(self, other: Chain) -> Chain:
        """This chain followed (or preceded) by `other`: every effect of either."""
        return Chain(*(getattr(self, f.name) or getattr(other, f.name) for f in fields(self)))


def _ints(op: Operation, name: str) -> list[int] | None:
    attr = op.attributes.get(name)
    if isinstance(attr, DenseArrayBase):
        return [int(x) for x in attr.get_values()]
    if isinstance(attr, IntegerAttr):
        return [attr.value.data]
    return None


def _row_bytes(shape: tuple[int, ...], arch: Arch) -> float:
    return (shape[-1] if shape else 1) * arch.act_bits / 8


def view_step(op: Operation, arch: Arch) -> Chain | None:
    """The `Chain` effect of `op` if it is a movement the hardware can do by addressing
    (see the module docstring), else None.  Only the shapes and the ``perm`` /
    ``axis`` / ``steps`` attributes are read."""
    if not isinstance(op, VectorOp) or len(op.results) != 1 or not op.inputs:
        return None
    kind = op.kind.data
    out = tensor_shape(op.results[0])
    src = tensor_shape(op.inputs[0])
    if kind in RESHAPE_KINDS:
        return Chain() if len(op.inputs) == 1 else None
    if kind == "transpose":
        perm = _ints(op, "perm")
        if len(op.inputs) != 1 or perm is None or sorted(perm) != list(range(len(src))):
            return None
        n = len(perm)
        if perm == list(range(n)):
            return Chain()
        if perm[-1] == n - 1:
            return Chain(unordered=True) if _row_bytes(src, arch) >= MIN_ROW_BYTES else None
        if n >= 2 and perm[-2:] == [n - 1, n - 2]:
            return Chain(transposed=True, unordered=True)
        return None
    if kind == "slice":
        steps = _ints(op, "steps")
        if len(op.inputs) != 1 or len(src) != len(out) or (steps and any(s != 1 for s in steps)):
            return None
        if src[:-1] != out[:-1] or _row_bytes(out, arch) < MIN_ROW_BYTES:
            return None
        return Chain(partial=True)
    if kind == "concat":
        axis = _ints(op, "axis")
        if axis is None or not out:
            return None
        last = axis[0] % len(out) == len(out) - 1
        return Chain(multi=True, unordered=not last)
    return None


def accepts(reader: Operation, slot: int, chain: Chain) -> bool:
    """Whether operand `slot` of `reader` can be read through a view `chain` in place:
    a dynamic matmul's operand write (one source, any layout), an MVM input stream
    (one source, rows whole or column ranges), a convolution's line buffer (reshapes
    only), the digital unit (whole rows of any number of sources)."""
    if isinstance(reader, DynMatmulOp) and slot == 1:
        return not chain.multi
    if isinstance(reader, (MatmulOp, DynMatmulOp)):
        return not (chain.multi or chain.transposed)
    if isinstance(reader, Conv2dOp):
        return chain == Chain()
    if isinstance(reader, VectorOp):
        return not (chain.partial or chain.transposed)
    return False


def find_views(ops: list[Operation], readers: dict[SSAValue, list[tuple[Operation, int]]],
               returned: set[SSAValue], arch: Arch) -> dict[Operation, Chain]:
    """The operators of `ops` (program order) compiled as views, with their own
    `Chain` step.  `readers`: every value's reading operators and operand slots;
    `returned`: the function's results (a view of a model output would leave nothing
    to store).  A candidate (`view_step`) is a view only if every reader of its
    result, looking through the readers that are views themselves, `accepts` the
    whole chain.  Whether a view is taken depends only on its readers, which come
    later in program order, so one pass from the last operator back decides each
    exactly once."""
    steps: dict[Operation, Chain] = {}
    for op in reversed(ops):
        step = view_step(op, arch)
        if step is not None and _taken(op.results[0], step, steps, readers, returned):
            steps[op] = step
    return dict(reversed(steps.items()))


def _taken(value: SSAValue, chain: Chain, steps: dict[Operation, Chain],
           readers: dict[SSAValue, list[tuple[Operation, int]]], returned: set[SSAValue]) -> bool:
    uses = readers.get(value, [])
    if not uses or value in returned:
        return False
    for reader, slot in uses:
        if reader in steps:
            if not _taken(reader.results[0], chain.then(steps[reader]), steps, readers, returned):
                return False
        elif not accepts(reader, slot, chain):
            return False
    return True
