"""The optimizer's cost model: what CMSwitch believes an operator costs (DESIGN.md §3, §9).

This module turns `cim` operators into numbers for the segment MIP.  The simulator
(`cmswitch.sim`) never imports it: it times the emitted flow from the hardware
description alone, so the gap between the two measures this model's error.

Units: cycles, bytes, arrays.  ``M`` = input vectors, ``K`` x ``N`` = im2col weight
matrix of one group, ``g`` = groups.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import ceil, prod

from xdsl.dialects.builtin import IntegerAttr, StringAttr
from xdsl.ir import Operation, SSAValue

from cmswitch.arch import Arch
from cmswitch.dialects.cim import (
    VECTOR_KINDS,
    Conv2dOp,
    DynMatmulOp,
    MatmulOp,
    VectorOp,
    tensor_shape,
)

#: Digital-unit operations per output element, by vector kind (our estimate: a
#: multiply-add or compare counts 1; exp/div-heavy kernels count more).
#: Pooling and reductions are priced per *input* element instead (see `vector_ops`).
OPS_PER_ELEMENT: dict[str, int] = {
    "softmax": 5, "layernorm": 8, "rmsnorm": 5, "gelu": 8, "silu": 4, "sigmoid": 4, "tanh": 4,
    "erf": 4, "exp": 2, "pow": 2, "sqrt": 2, "reciprocal": 2, "div": 2,
    "cos": 4, "sin": 4,
    # issue 14's kinds, counted the same way from their ONNX formulas: batchnorm
    # x*s + t (scale and shift precomputed); instance_norm as layernorm; leaky_relu /
    # prelu a compare and a multiply; elu / celu / selu an exp (2) and a select, celu
    # and selu a scale more; softplus log(1 + exp x); softsign x / (1 + |x|);
    # hard_sigmoid a multiply-add and a clip; hard_swish that and a multiply;
    # log_softmax as softmax plus a log; log as exp; group_norm as layernorm.
    # lrn and resize: `vector_ops`.
    "batchnorm": 2, "instance_norm": 8, "leaky_relu": 2, "prelu": 2, "elu": 3, "celu": 4,
    "selu": 4, "softplus": 4, "softsign": 4, "hard_sigmoid": 3, "hard_swish": 4,
    "log_softmax": 7, "log": 2, "group_norm": 8,
}
RESIZE_NEIGHBOURS = {"nearest": 1, "linear": 2, "cubic": 4}
"""resize (ONNX Resize ``mode``): input elements read per output element along each
resized axis — nearest copies one, linear weighs 2, cubic 4 (the cubic convolution
kernel's support).  An output element costs one multiply-add per neighbour:
``n ** axes`` over the axes whose size changes (bilinear on H and W: 4, bicubic: 16,
nearest: 1, a copy)."""
LRN_OPS_PER_WINDOW_ELEMENT = 1
"""lrn: one multiply-add per element of its ``size``-channel window (the square sum),
plus `LRN_OPS_PER_ELEMENT` for ``(bias + alpha/size * sum)^beta`` and the divide."""
LRN_OPS_PER_ELEMENT = 6
"""lrn: the scale and bias (2), the power (2, as `pow`) and the divide (2) per element."""
#: Movement kinds that physically copy every element (one digital-unit op each);
#: the other movement kinds (reshape, squeeze, ...) only re-address data: free.
COPYING_MOVES = frozenset({"transpose", "concat", "split", "gather", "slice", "expand",
                           "pad", "tile"})
#: Kinds priced per input element (each input element is read and combined once).
PER_INPUT = frozenset({"maxpool", "avgpool", "global_avgpool", "reduce_mean",
                       "reduce_sum", "reduce_max", "sum", "mean", "col2im"})


@dataclass(frozen=True)
class OpCost:
    """The optimizer's view of one operator.

    kind:   "weight" (weights stationary in arrays), "dynamic" (run-time operand
            written into arrays), or "vector" (digital unit / data movement).
    arrays: arrays per weight copy, ``a = ceil(g/gpa) * ceil(K/rows) * ceil(N/wpr)``
            with ``gpa`` groups packed block-diagonally per array (0 for vector ops).
    compute: cycles for one copy to process all vectors, ``M * mvm_cycles`` (times the
            number of instances for dynamic matmuls, which run one instance at a time
            per copy).
    feed:   on-chip feed traffic, bytes: ``g * M * (K + N) * act_bits/8`` (§9.2).
    weight_bytes: bytes of one weight copy, ``g*K*N*weight_bits/8`` (for dynamic
            matmuls: the run-time operand, written at ``weight_write_bw_bytes``).
    vector_ops: digital-unit elementary operations.
    max_copies: the largest useful number of weight copies (see `useful_copies`).
    """

    name: str
    kind: str
    m: int = 0
    k: int = 0
    n: int = 0
    groups: int = 1
    tiles: tuple[int, int] = (0, 0)
    arrays: int = 0
    compute: int = 0
    feed: int = 0
    weight_bytes: int = 0
    vector_ops: int = 0
    max_copies: int = 1


def tensor_bytes(value: SSAValue, arch: Arch) -> int:
    """Bytes of an activation tensor on chip: elements * act_bits/8 (rounded up)."""
    return ceil(prod(tensor_shape(value)) * arch.act_bits / 8)


def tiles_for(k: int, n: int, arch: Arch) -> tuple[int, int]:
    """Array tiles of one ``K x N`` weight block: ``(ceil(K/rows), ceil(N/wpr))``,
    ``wpr = cols*cell_bits/weight_bits`` weights per array row (DESIGN.md §1, §3)."""
    return ceil(k / arch.rows), ceil(n / arch.weights_per_row)


def groups_per_array(k: int, n: int, groups: int, arch: Arch) -> int:
    """Groups of a grouped/depthwise conv packed block-diagonally into one array:
    ``min(rows // K, wpr // N)`` when one group's block fits an array, else 1 (§9.5)."""
    if groups == 1 or k > arch.rows or n > arch.weights_per_row:
        return 1
    return max(1, min(arch.rows // k, arch.weights_per_row // n, groups))


def useful_copies(compute: int, weight_bytes: int, arrays: int, arch: Arch) -> int:
    """Largest copy count ``d`` whose last copy saves at least as much compute as it
    costs to program: ``compute*(1/(d-1) - 1/d) >= weight_bytes/weight_write_bw``,
    capped by the chip (``d*arrays <= arch.arrays``).  A copy that costs more to load
    than it saves is never worth it (§9.1: weight loading dominates at batch 1)."""
    cap = max(1, arch.arrays // max(arrays, 1))
    load = weight_bytes / arch.weight_write_bw_bytes
    d = 1
    while d < cap and compute * (1 / d - 1 / (d + 1)) >= load:
        d += 1
    return d


def _weight_op_cost(name: str, m: int, k: int, n: int, groups: int, arch: Arch,
                    instances: int = 1, kind: str = "weight") -> OpCost:
    gpa = groups_per_array(k, n, groups, arch)
    tk, tn = tiles_for(k, n, arch)
    arrays = ceil(groups / gpa) * tk * tn
    compute = instances * m * arch.mvm_cycles
    wbytes = ceil(instances * groups * k * n * arch.weight_bits / 8)
    feed = ceil(instances * groups * m * (k + n) * arch.act_bits / 8)
    if kind == "dynamic":
        # Copies split the instances (batch x heads); each operand is written once.
        copies = max(1, min(instances, arch.arrays // max(arrays, 1)))
    else:
        copies = useful_copies(compute, wbytes, arrays, arch)
    return OpCost(
        name=name, kind=kind, m=m, k=k, n=n, groups=groups, tiles=(tk, tn),
        arrays=arrays, compute=compute, feed=feed, weight_bytes=wbytes,
        max_copies=copies,
    )


def vector_ops(op: VectorOp) -> int:
    """Digital-unit operations of a vector op: output elements x `OPS_PER_ELEMENT`,
    input elements for pooling/reductions, output elements for copying moves, 0 for
    re-addressing moves (reshape, squeeze, ...)."""
    kind = op.kind.data
    out_elems = sum(prod(tensor_shape(r)) for r in op.outputs)
    if VECTOR_KINDS[kind] == "movement":
        return out_elems if kind in COPYING_MOVES else 0
    if kind in PER_INPUT:
        return sum(prod(tensor_shape(x)) for x in op.inputs)
    if kind == "lrn":
        size = op.attributes.get("size")
        window = size.value.data if isinstance(size, IntegerAttr) else 1
        return out_elems * (window * LRN_OPS_PER_WINDOW_ELEMENT + LRN_OPS_PER_ELEMENT)
    if kind == "resize":
        return out_elems * resize_ops_per_element(op)
    return out_elems * OPS_PER_ELEMENT.get(kind, 1)


def resize_ops_per_element(op: VectorOp) -> int:
    """Digital-unit operations per output element of a ``resize``:
    ``RESIZE_NEIGHBOURS[mode] ** axes`` with ``axes`` the dimensions whose size the op
    changes (at least 1); an unknown mode counts as linear."""
    mode = op.attributes.get("mode")
    name = mode.data if isinstance(mode, StringAttr) else "nearest"
    per_axis = RESIZE_NEIGHBOURS.get(name, RESIZE_NEIGHBOURS["linear"])
    src, dst = tensor_shape(op.inputs[0]), tensor_shape(op.outputs[0])
    axes = sum(1 for a, b in zip(src, dst) if a != b) if len(src) == len(dst) else len(dst)
    return per_axis ** max(axes, 1)


def op_cost(op: Operation, name: str, arch: Arch) -> OpCost:
    """The cost record of one `cim` operator.  Raises ValueError for other ops."""
    if isinstance(op, Conv2dOp):
        m, k, n = op.im2col_dims()
        return _weight_op_cost(name, m, k, n, op.group_count, arch)
    if isinstance(op, MatmulOp):
        m, k, n = op.im2col_dims()
        return _weight_op_cost(name, m, k, n, 1, arch)
    if isinstance(op, DynMatmulOp):
        out = tensor_shape(op.output)
        a, b = tensor_shape(op.lhs), tensor_shape(op.rhs)
        return _weight_op_cost(name, a[-2], a[-1], b[-1], 1, arch,
                               instances=prod(out[:-2]), kind="dynamic")
    if isinstance(op, VectorOp):
        return OpCost(name=name, kind="vector", vector_ops=vector_ops(op))
    raise ValueError(f"no cost model for operation '{op.name}'")


def compute_cycles(cost: OpCost, copies: int) -> float:
    """Cycles for `copies` weight copies to process all input vectors:
    ``compute / d`` (``M * mvm_cycles / d``; copies split the vectors).  Raises
    ValueError for fewer than one copy."""
    if copies < 1:
        raise ValueError(f"{cost.name}: needs at least one weight copy, got {copies}")
    return cost.compute / copies


def data_cycles(cost: OpCost, memory_arrays: int, arch: Arch, gb_share: float = 0.0,
                dram_share: float = 0.0) -> float:
    """Cycles to feed an operator: its feed bytes ``g*M*(K+N)*act_bits/8`` over the
    bandwidth of its memory-mode arrays (``m * internal_bw_bits/8`` bytes/cycle) plus
    the shares of the global buffer and DRAM it gets (bytes/cycle).  DESIGN.md §3.
    Raises ValueError when the operator gets no bandwidth but has data to move."""
    bandwidth = memory_arrays * arch.internal_bw_bits / 8 + gb_share + dram_share
    if bandwidth <= 0:
        if cost.feed:
            raise ValueError(f"{cost.name}: no bandwidth to feed {cost.feed} bytes")
        return 0.0
    return cost.feed / bandwidth


def alone_cycles(cost: OpCost, copies: int, port_bytes: dict[str, float],
                 bandwidth: dict[str, float], arch: Arch) -> tuple[float, float]:
    """The cost model's ``(load, run)`` cycles of one operator as if it ran alone
    (the per-operator rows of the compile report and the operator chart; the segment
    MIP prices the operators of a segment jointly instead, DESIGN.md §4).

    load: a weight op reads one copy from DRAM and programs `copies` of them,
    ``max(W/external_bw, d*W/weight_write_bw)`` (as `mip.load_cycles`); a dynamic
    matmul writes its run-time operand once, ``W/weight_write_bw``; vector ops 0.
    run: the slowest of its own time (``compute/d`` for MVMs, ``vector_ops /
    vector_ops_per_cycle`` for the digital unit) and, per location, the bytes it moves
    there (`port_bytes`, bytes) over that location's bandwidth (`bandwidth`,
    bytes/cycle).  Raises ValueError for a location with bytes but no bandwidth or for
    fewer than one copy of a matrix op."""
    if cost.kind == "weight":
        load = max(cost.weight_bytes / arch.external_bw_bytes,
                   copies * cost.weight_bytes / arch.weight_write_bw_bytes)
    elif cost.kind == "dynamic":
        load = cost.weight_bytes / arch.weight_write_bw_bytes
    else:
        load = 0.0
    run = compute_cycles(cost, copies) if cost.arrays else \
        cost.vector_ops / arch.vector_ops_per_cycle
    for place, nbytes in sorted(port_bytes.items()):
        if not nbytes:
            continue
        if bandwidth.get(place, 0) <= 0:
            raise ValueError(f"{cost.name}: {nbytes:g} bytes on {place}, which has no bandwidth")
        run = max(run, nbytes / bandwidth[place])
    return load, run

