"""`cim-partition`: split operators whose single weight copy needs more arrays than the
chip into sub-operators that fit (DESIGN.md §4, §9.4).

An ``K x N`` weight with ``tk x tn`` array tiles (``tk = ceil(K/rows)``,
``tn = ceil(N/wpr)``) and ``tk*tn > arrays`` is cut into pieces of at most
``max-arrays`` arrays: ``kt = min(tk, max-arrays)`` row tiles by
``max(1, max-arrays // kt)`` column tiles.  Along K the input is sliced
(`cim.vector "slice"`) and the partial sums are added by the digital unit
(`cim.vector "psum_add"`); along N the outputs are concatenated (`cim.vector
"concat"`).  Convolutions are cut along K at whole input channels (multiples of
``kh*kw`` im2col rows).  The pieces' work adds up to the whole: sum of ``K x N`` blocks
= ``K x N``, each with the same ``M``.
"""

from __future__ import annotations

from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects.builtin import IntegerAttr, ModuleOp, TensorType, i64
from xdsl.ir import Operation, SSAValue
from xdsl.passes import ModulePass
from xdsl.rewriter import Rewriter

from cmswitch.arch import Arch
from cmswitch.cost.model import op_cost, tiles_for
from cmswitch.dialects.cim import (
    NODE_ATTR,
    Conv2dOp,
    DynMatmulOp,
    MatmulOp,
    VectorOp,
    tensor_shape,
)
from cmswitch.errors import CMSwitchError, ModelTooLargeError
from cmswitch.transforms.common import check_options, main_func, resolve_arch


def _ranges(total: int, step: int) -> list[tuple[int, int]]:
    return [(lo, min(lo + step, total)) for lo in range(0, total, step)]


def _with_dim(value: SSAValue, axis: int, size: int) -> TensorType:
    shape = list(tensor_shape(value))
    shape[axis] = size
    return TensorType(value.type.element_type, shape)


def _named(op: Operation, name: str) -> Operation:
    for r in op.results:
        r.name_hint = name
    return op


@dataclass(frozen=True)
class _Plan:
    """How to cut one operator: K ranges in input elements along `axis` (channels for
    a conv, features for a matmul), the im2col rows per element `per`, N ranges."""

    axis: int
    per: int
    k_ranges: list[tuple[int, int]]
    n_ranges: list[tuple[int, int]]


PIECE_SHAPES = ("full-k", "balanced")
"""How `plan_split` shapes the pieces of one operator (`CimPartitionPass.shape`):

* ``full-k``: each piece spans all of K when ``K`` fits the piece (no partial sums)
  and is cut along N — every N group re-reads the whole input activation;
* ``balanced``: the row tiles per piece that move the fewest activation bytes — the
  input re-read once per N group (``ceil(N/Np) * K`` per input vector), plus, when K
  is cut, the partial sums each piece writes and `psum_add` reads (``2 * N`` per K
  piece) and the input slices written once (``2 * K``).  Wider pieces re-read less,
  taller ones sum fewer partials; large-M operators whose input lives in DRAM (LLM
  prefill) gain most.

The compile tries both and keeps the plan the segment DP predicts fastest
(`cmswitch.api.chunk_candidates`)."""


def plan_split(k_elems: int, per: int, n: int, arch: Arch, max_arrays: int,
               shape: str = "full-k") -> tuple[list, list]:
    """K ranges (in units of `per` im2col rows) and N ranges so that each piece needs
    at most `max_arrays` arrays, shaped as `shape` says (`PIECE_SHAPES`).  Raises
    CMSwitchError if one unit of K cannot fit."""
    tk, tn = tiles_for(k_elems * per, n, arch)
    kt = min(tk, max_arrays)
    if per > kt * arch.rows:
        raise CMSwitchError(f"one input channel ({per} im2col rows) exceeds {max_arrays} arrays")
    if shape == "balanced":
        kt = _balanced_row_tiles(k_elems, per, n, tk, tn, arch, max_arrays)
    nt = max(1, max_arrays // kt)
    k_step = max(1, kt * arch.rows // per)
    return _ranges(k_elems, k_step), _ranges(n, nt * arch.weights_per_row)


def _balanced_row_tiles(k_elems: int, per: int, n: int, tk: int, tn: int, arch: Arch,
                        max_arrays: int) -> int:
    """The row tiles per piece moving the fewest activation elements per input vector
    (`PIECE_SHAPES`, ``balanced``); ties go to the taller piece (fewer partial sums)."""
    best: tuple[int, int] | None = None
    for kt in range(min(tk, max_arrays), 0, -1):
        if per > kt * arch.rows:
            break
        k_step = max(1, kt * arch.rows // per)
        k_pieces = -(-k_elems // k_step)
        n_groups = -(-n // (min(tn, max(1, max_arrays // kt)) * arch.weights_per_row))
        moved = n_groups * k_elems + (2 * k_pieces * n + 2 * k_elems if k_pieces > 1 else 0)
        if best is None or moved < best[0]:
            best = (moved, kt)
    assert best is not None
    return best[1]


def _base(op: Operation) -> str:
    return op.results[0].name_hint or "op"


def _split(op: Conv2dOp | MatmulOp, plan: _Plan) -> None:
    x = op.input
    out = op.output
    axis_out = 1 if isinstance(op, Conv2dOp) else len(tensor_shape(out)) - 1
    name = _base(op)
    new_ops: list[Operation] = []
    slices: list[SSAValue] = []
    for ki, (k0, k1) in enumerate(plan.k_ranges):
        if len(plan.k_ranges) == 1:
            slices.append(x)
            continue
        sl = VectorOp("slice", [x], [_with_dim(x, plan.axis, k1 - k0)], attributes={
            "axis": IntegerAttr(plan.axis, i64), "start": IntegerAttr(k0, i64),
            "end": IntegerAttr(k1, i64)})
        new_ops.append(_named(sl, f"{name}.in{ki}"))
        slices.append(sl.outputs[0])
    columns: list[SSAValue] = []
    for ni, (n0, n1) in enumerate(plan.n_ranges):
        partials: list[SSAValue] = []
        for ki, ((k0, k1), xs) in enumerate(zip(plan.k_ranges, slices)):
            piece = _piece(op, xs, _with_dim(out, axis_out, n1 - n0),
                           [k0 * plan.per, k1 * plan.per, n0, n1])
            new_ops.append(_named(piece, f"{name}.k{ki}n{ni}"))
            partials.append(piece.results[0])
        if len(partials) > 1:
            add = VectorOp("psum_add", partials, [partials[0].type])
            new_ops.append(_named(add, f"{name}.n{ni}"))
            partials = [add.outputs[0]]
        columns.append(partials[0])
    if len(columns) > 1:
        cat = VectorOp("concat", columns, [out.type],
                       attributes={"axis": IntegerAttr(axis_out, i64)})
        new_ops.append(_named(cat, name))
        columns = [cat.outputs[0]]
    node = op.attributes.get(NODE_ATTR)
    if node is not None:  # every piece, slice, partial sum and concat: the same layer
        for new in new_ops:
            new.attributes.setdefault(NODE_ATTR, node)
    Rewriter.replace_op(op, new_ops, columns)


def _piece(op: Conv2dOp | MatmulOp, x: SSAValue, typ: TensorType, ws: list[int]) -> Operation:
    parent = op.weight_slice.get_values() if op.weight_slice is not None else None
    if parent is not None:
        ws = [parent[0] + ws[0], parent[0] + ws[1], parent[2] + ws[2], parent[2] + ws[3]]
    if isinstance(op, MatmulOp):
        return MatmulOp(x, typ, op.weight.data, ws, attributes=dict(op.attributes))
    return Conv2dOp(x, typ, op.weight.data, op.kernel.get_values(), op.strides.get_values(),
                    op.pads.get_values(), op.dilations.get_values(), 1, ws)


def _plan_for(op: Conv2dOp | MatmulOp, arch: Arch, max_arrays: int, shape: str
              ) -> _Plan | None:
    _, k, n = op.im2col_dims()
    tk, tn = tiles_for(k, n, arch)
    if tk * tn <= arch.arrays:
        return None
    if isinstance(op, MatmulOp):
        ks, ns = plan_split(k, 1, n, arch, max_arrays, shape)
        return _Plan(len(tensor_shape(op.input)) - 1, 1, ks, ns)
    if op.group_count != 1:
        raise ModelTooLargeError(
            f"grouped convolution '{_base(op)}' needs {tk * tn} arrays per group, more "
            f"than the chip's {arch.arrays} (grouped convolutions are not split)")
    kh, kw = op.kernel.get_values()
    ks, ns = plan_split(tensor_shape(op.input)[1], kh * kw, n, arch, max_arrays, shape)
    return _Plan(1, kh * kw, ks, ns)


def _refuse_unsplittable(op: Operation, arch: Arch) -> None:
    """Raise ModelTooLargeError for an operator this pass cannot split whose one copy
    exceeds the chip: a dynamic matmul (its run-time operand is written whole), or a
    grouped convolution whose groups, packed into arrays, need more than the chip."""
    if not isinstance(op, (DynMatmulOp, Conv2dOp)):
        return
    if isinstance(op, Conv2dOp) and op.group_count == 1:
        return
    need = op_cost(op, "", arch).arrays
    if need <= arch.arrays:
        return
    what = "dynamic matmul" if isinstance(op, DynMatmulOp) else "grouped convolution"
    name = op.results[0].name_hint or op.name
    raise ModelTooLargeError(
        f"{what} '{name}' needs {need} arrays for one copy, the chip has {arch.arrays}; "
        f"cim-partition does not split {what}s")


MAX_PIECES = 200_000
"""The most weight pieces `cim-partition` makes for one model.  Each piece is an
operator the segment DP prices, so compile time grows with them; at batch 1 on
`dynaplasia` (half-chip pieces) LLaMA2-7B makes 13,931 and OPT-13B 24,379, so a
70B-class model fits too.  More is refused before any piece is made (issue 15: a
10^6 x 10^6 MatMul would make 1.6 million)."""


def _refuse_too_many_pieces(plans: list) -> None:
    """Raise ModelTooLargeError when the split `plans` ((op, _Plan) pairs) would make
    more than `MAX_PIECES` pieces, naming the operator that makes the most."""
    counts = [(len(p.k_ranges) * len(p.n_ranges), op) for op, p in plans]
    total = sum(c for c, _ in counts)
    if total <= MAX_PIECES:
        return
    most, op = max(counts, key=lambda item: item[0])
    raise ModelTooLargeError(
        f"the model's weights would be cut into {total} pieces, more than cim-partition's "
        f"limit of {MAX_PIECES} ('{_base(op)}' alone makes {most}); compile it for a chip "
        f"with more arrays, or a smaller model")


@dataclass(frozen=True)
class CimPartitionPass(ModulePass):
    """Split operators larger than the chip into pieces of at most `max-arrays`
    arrays (0: half the chip's arrays, leaving room for memory-mode arrays), shaped
    as `shape` says (`PIECE_SHAPES`: ``full-k`` or ``balanced``)."""

    name = "cim-partition"

    arch: str | None = None
    max_arrays: int = 0
    shape: str = "full-k"

    def __post_init__(self) -> None:
        check_options(self.name, max_arrays=self.max_arrays)
        if self.shape not in PIECE_SHAPES:
            raise ValueError(f"{self.name}: shape must be one of {', '.join(PIECE_SHAPES)}, "
                             f"got '{self.shape}'")

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        arch = resolve_arch(op, self.arch)
        limit = self.max_arrays or max(1, arch.arrays // 2)
        if limit > arch.arrays:
            raise CMSwitchError(f"cim-partition: max-arrays={limit} exceeds the chip's {arch.arrays} arrays")
        func = main_func(op)
        plans = []
        for inner in list(func.walk()):
            _refuse_unsplittable(inner, arch)
            if isinstance(inner, (Conv2dOp, MatmulOp)):
                plan = _plan_for(inner, arch, limit, self.shape)
                if plan is not None:
                    plans.append((inner, plan))
        _refuse_too_many_pieces(plans)
        for inner, plan in plans:
            _split(inner, plan)
