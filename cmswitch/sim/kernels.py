"""The numpy kernels of functional mode: what each `cim` operator computes (im2col
convolutions, pooling, normalizations, gathers, the vector kinds of `vector_kernel`)."""

from __future__ import annotations

import itertools
import math
from typing import Any, Callable

import numpy as np
from xdsl.ir import Operation

from cmswitch.errors import CMSwitchError
from cmswitch.sim.onnx_weights import attr_value, exact_dtype




# ----------------------------------------------------------------------------------
# numpy kernels


def im2col(op: Operation, x: np.ndarray) -> np.ndarray:
    """Input vectors of a `cim.conv2d`: ``(M, G, K)`` with ``M = N*Ho*Wo`` (row-major
    over N, Ho, Wo) and ``K = Cin/G*kh*kw`` (channel-major, then kh, kw)."""
    from cmswitch.dialects.cim import tensor_shape

    n, cin, _, _ = x.shape
    _, _, ho, wo = tensor_shape(op.output)
    kh, kw = op.kernel.get_values()
    sh, sw = op.strides.get_values()
    top, left, bottom, right = op.pads.get_values()
    dh, dw = op.dilations.get_values()
    g = op.group_count
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    cols = np.empty((n, cin, kh, kw, ho, wo), dtype=np.float32)
    for i, j in itertools.product(range(kh), range(kw)):
        cols[:, :, i, j] = xp[:, :, i * dh:i * dh + sh * (ho - 1) + 1:sh,
                              j * dw:j * dw + sw * (wo - 1) + 1:sw]
    cols = cols.reshape(n, g, cin // g, kh, kw, ho, wo).transpose(0, 5, 6, 1, 2, 3, 4)
    return cols.reshape(n * ho * wo, g, (cin // g) * kh * kw)


def _pool(op: Operation, x: np.ndarray, out_shape: tuple, kind: str) -> np.ndarray:
    """MaxPool / AveragePool (ONNX): ``kernel``, ``strides``, ``pads``, ``dilations``,
    ``count_include_pad``; ``ceil_mode`` windows come from the output shape."""
    kernel = attr_value(op, "kernel")
    if not kernel:
        raise CMSwitchError(f"VEC.{kind}: pooling without a kernel attribute")
    rank = len(kernel)
    strides = attr_value(op, "strides", [1] * rank)
    pads = attr_value(op, "pads", [0] * 2 * rank)
    dil = attr_value(op, "dilations", [1] * rank)
    out_sp = out_shape[-rank:]
    lead = [(0, 0)] * (x.ndim - rank)
    pad_value = -np.inf if kind == "maxpool" else (0.0 if attr_value(op, "count_include_pad", 0) else np.nan)
    xp = np.pad(x.astype(np.float32), lead + [(pads[a], pads[a + rank]) for a in range(rank)],
                constant_values=pad_value)
    extra = [max(0, (out_sp[a] - 1) * strides[a] + (kernel[a] - 1) * dil[a] + 1 - xp.shape[x.ndim - rank + a])
             for a in range(rank)]
    xp = np.pad(xp, lead + [(0, e) for e in extra],
                constant_values=-np.inf if kind == "maxpool" else np.nan)
    windows = []
    for offset in itertools.product(*(range(k) for k in kernel)):
        index = [slice(None)] * (x.ndim - rank) + [
            slice(offset[a] * dil[a], offset[a] * dil[a] + strides[a] * (out_sp[a] - 1) + 1, strides[a])
            for a in range(rank)]
        windows.append(xp[tuple(index)])
    stack = np.stack(windows)
    return stack.max(axis=0) if kind == "maxpool" else np.nanmean(stack, axis=0)


def _pool_indices(op: Operation, x: np.ndarray, out_shape: tuple) -> np.ndarray:
    """MaxPool's optional ``Indices`` output (ONNX): per output element the flat index
    into ``x`` of the maximum (row-major over all axes; ``storage_order`` 1 makes the
    last two spatial axes column-major).  The first maximum of a window wins."""
    kernel = attr_value(op, "kernel")
    rank = len(kernel)
    strides = attr_value(op, "strides", [1] * rank)
    pads = attr_value(op, "pads", [0] * 2 * rank)
    dil = attr_value(op, "dilations", [1] * rank)
    lead = x.shape[:x.ndim - rank]
    column_major = bool(attr_value(op, "storage_order", 0)) and rank >= 2
    best = np.full(out_shape, -np.inf)
    where = np.zeros(out_shape, dtype=np.int64)
    for position in itertools.product(*(range(d) for d in out_shape)):
        spatial = position[len(lead):]
        for offset in itertools.product(*(range(k) for k in kernel)):
            coords = [spatial[a] * strides[a] + offset[a] * dil[a] - pads[a] for a in range(rank)]
            if any(c < 0 or c >= x.shape[len(lead) + a] for a, c in enumerate(coords)):
                continue
            full = (*position[:len(lead)], *coords)
            if x[full] > best[position]:
                best[position] = x[full]
                if column_major:
                    h, w = x.shape[-2], x.shape[-1]
                    inner = coords[-1] * h + coords[-2]
                    outer = np.ravel_multi_index(full[:-2], x.shape[:-2]) if x.ndim > 2 else 0
                    where[position] = outer * h * w + inner
                else:
                    where[position] = np.ravel_multi_index(full, x.shape)
    return where


def _reduce(op: Operation, x: np.ndarray, out_shape: tuple, fn: Callable) -> np.ndarray:
    axes = attr_value(op, "axes")
    if isinstance(axes, int):
        axes = [axes]
    if not axes:
        axes = None if not attr_value(op, "noop_with_empty_axes", 0) else []
    if axes == []:
        return x.reshape(out_shape)
    axes = None if axes is None else tuple(a % x.ndim for a in axes)
    return fn(x, axis=axes, keepdims=True).reshape(out_shape)


def _slice(op: Operation, x: np.ndarray) -> np.ndarray:
    index = [slice(None)] * x.ndim
    if attr_value(op, "axis") is not None and attr_value(op, "start") is not None:
        axis = attr_value(op, "axis") % x.ndim
        index[axis] = slice(attr_value(op, "start"), attr_value(op, "end"))
        return x[tuple(index)]
    starts, ends = attr_value(op, "starts"), attr_value(op, "ends")
    if starts is None or ends is None:
        raise CMSwitchError("VEC.slice: its starts/ends were not recorded in the module")
    axes = attr_value(op, "axes", list(range(len(starts))))
    steps = attr_value(op, "steps", [1] * len(starts))
    for a, s, e, st in zip(axes, starts, ends, steps):
        index[a % x.ndim] = slice(s, e, st)
    return x[tuple(index)]


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _layernorm(op: Operation, ins: list) -> list[np.ndarray]:
    """ONNX LayerNormalization: ``Y``, and the optional outputs ``Mean`` and
    ``InvStdDev`` (``1/sqrt(var + eps)``) over the normalized axes, kept as size 1."""
    if len(ins) < 2:
        raise CMSwitchError("VEC.layernorm: its scale is missing from the module")
    x = ins[0]
    axis = attr_value(op, "axis", -1) % x.ndim
    axes = tuple(range(axis, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    inv = 1 / np.sqrt(var + np.float32(attr_value(op, "epsilon", 1e-5)))
    y = (x - mean) * inv * ins[1]
    return [y + ins[2] if len(ins) > 2 else y, mean, inv]


_erf = np.vectorize(math.erf, otypes=[np.float64])


class Operands(list):
    """A vector op's operand values in ONNX input order, with their input indices
    `slots` (activations and the constants carried by name, `with_constants`)."""

    def __init__(self, values, slots: list[int]) -> None:
        super().__init__(values)
        self.slots = slots


def with_constants(op: Operation, ins: list, constant: Callable[[str], np.ndarray]
                   ) -> list:
    """`ins` (the activation operands) merged in ONNX input order with the op's
    constant operands (``constant_slots`` / ``constant_names``, read by `constant`)."""
    const_slots = attr_value(op, "constant_slots", [])
    if not const_slots:
        return ins
    names = [a.data for a in op.attributes["constant_names"].data]
    act_slots = attr_value(op, "operand_slots", list(range(len(ins))))
    pairs = sorted([*zip(act_slots, ins),
                    *((s, constant(n)) for s, n in zip(const_slots, names))],
                   key=lambda p: p[0])
    return Operands([v for _, v in pairs], [s for s, _ in pairs])


def _slot(op: Operation, ins: list, index: int) -> np.ndarray | None:
    """The operand that was ONNX input `index` (``operand_slots``), or None."""
    slots = getattr(ins, "slots", None) or attr_value(op, "operand_slots", list(range(len(ins))))
    return ins[slots.index(index)] if index in slots else None


def _clip(op: Operation, ins: list) -> np.ndarray:
    """Clip (ONNX >= 11): each bound from its run-time operand (inputs 1 and 2), else
    the recorded ``min`` / ``max``, else none."""
    out = ins[0]
    for index, name, fn in ((1, "min", np.maximum), (2, "max", np.minimum)):
        bound = _slot(op, ins, index)
        if bound is None and attr_value(op, name) is not None:
            bound = np.asarray(attr_value(op, name), dtype=ins[0].dtype)
        if bound is not None:
            out = fn(out, bound)
    return out


def _need(op: Operation, ins: list, count: int, what: str) -> None:
    if len(ins) < count:
        raise CMSwitchError(f"VEC.{op.kind.data}: its {what} are not run-time operands "
                            "and were not recorded; functional mode cannot compute it")


def _per_channel(v: np.ndarray, ndim: int) -> np.ndarray:
    """A per-channel vector ``(C,)`` shaped to broadcast along axis 1 of rank `ndim`."""
    return v.reshape([1, -1] + [1] * (ndim - 2))


def _batchnorm(op: Operation, ins: list) -> np.ndarray:
    """ONNX BatchNormalization (inference): ``(x - mean) / sqrt(var + eps) * scale + B``
    per channel (axis 1)."""
    _need(op, ins, 5, "scale, bias, mean and variance")
    x, scale, bias, mean, var = ins[:5]
    eps = np.float32(attr_value(op, "epsilon", 1e-5))
    n = x.ndim
    return ((x - _per_channel(mean, n)) / np.sqrt(_per_channel(var, n) + eps)
            * _per_channel(scale, n) + _per_channel(bias, n))


def _instance_norm(op: Operation, ins: list) -> np.ndarray:
    """ONNX InstanceNormalization: per sample and channel over the spatial axes."""
    _need(op, ins, 3, "scale and bias")
    x, scale, bias = ins[:3]
    axes = tuple(range(2, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    y = (x - mean) / np.sqrt(var + np.float32(attr_value(op, "epsilon", 1e-5)))
    return y * _per_channel(scale, x.ndim) + _per_channel(bias, x.ndim)


def _lrn(op: Operation, ins: list) -> np.ndarray:
    """ONNX LRN: ``x / (bias + alpha/size * square_sum)^beta``, the square sum over
    channels ``c - floor((size-1)/2) .. c + ceil((size-1)/2)``."""
    x = ins[0]
    size = attr_value(op, "size")
    if size is None:
        raise CMSwitchError("VEC.lrn: its size was not recorded in the module")
    alpha, beta = attr_value(op, "alpha", 1e-4), attr_value(op, "beta", 0.75)
    bias = attr_value(op, "bias", 1.0)
    lo, hi = (size - 1) // 2, -(-(size - 1) // 2)
    sq = np.square(x.astype(np.float64))
    total = np.zeros_like(sq)
    channels = x.shape[1]
    for c in range(channels):
        total[:, c] = sq[:, max(0, c - lo):min(channels, c + hi + 1)].sum(axis=1)
    return (x / (bias + alpha / size * total) ** beta).astype(np.float32)


def _recorded(op: Operation, name: str) -> Any:
    """A constant operand the importer recorded as attribute `name`: a scalar, or an
    array in the shape of its ``<name>_shape`` attribute (flat if it has none)."""
    value = attr_value(op, name)
    if value is None or not isinstance(value, list):
        return value
    values = np.asarray(value)
    return values.reshape(attr_value(op, f"{name}_shape", list(values.shape)))


def _slope(op: Operation, ins: list) -> np.ndarray:
    """PRelu's slope: a run-time operand, else the recorded ``slope`` (``slope_shape``)."""
    slope = _slot(op, ins, 1)
    if slope is not None:
        return slope
    slope = _recorded(op, "slope")
    if slope is None:
        _need(op, ins, 2, "slope")
    return np.asarray(slope, dtype=np.float32)


def _log_softmax(op: Operation, ins: list) -> np.ndarray:
    x = ins[0]
    axis = attr_value(op, "axis", -1)
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def _pad(op: Operation, ins: list) -> np.ndarray:
    """ONNX Pad (opset >= 11): ``pads`` begins then ends per axis (of ``axes`` if
    given), ``mode`` constant / reflect / edge / wrap, ``constant_value``."""
    x = ins[0]
    pads = _slot(op, ins, 1)
    pads = pads.astype(np.int64).tolist() if pads is not None else attr_value(op, "pads")
    if pads is None:
        raise CMSwitchError("VEC.pad: its pads were not recorded in the module")
    value = _slot(op, ins, 2)
    value = value if value is not None else attr_value(op, "constant_value", 0.0)
    axes = _slot(op, ins, 3)
    axes = axes.tolist() if axes is not None else attr_value(op, "axes", list(range(x.ndim)))
    axes = [axes] if isinstance(axes, int) else axes
    width = [(0, 0)] * x.ndim
    for i, a in enumerate(axes):
        width[a % x.ndim] = (pads[i], pads[i + len(axes)])
    grow = [(max(0, b), max(0, e)) for b, e in width]
    mode = attr_value(op, "mode", "constant")
    if mode == "constant":
        fill = np.asarray(value).reshape(-1)
        y = np.pad(x, grow, constant_values=fill[0] if fill.size else 0)
    else:
        y = np.pad(x, grow, mode=mode)  # numpy's reflect / edge / wrap are ONNX's
    # negative pads crop
    return y[tuple(slice(-min(0, b), y.shape[a] + min(0, e)) for a, (b, e) in enumerate(width))]


def _tile(op: Operation, ins: list) -> np.ndarray:
    repeats = _slot(op, ins, 1)
    repeats = repeats.astype(np.int64).tolist() if repeats is not None else attr_value(op, "repeats")
    if repeats is None:
        raise CMSwitchError("VEC.tile: its repeats were not recorded in the module")
    return np.tile(ins[0], repeats)


def _nary(fn: Callable) -> Callable:
    return lambda op, ins: fn(np.stack(np.broadcast_arrays(*ins)), axis=0)


def _col2im(op: Operation, ins: list, out_shape: tuple) -> np.ndarray:
    """ConvTranspose's overlap-add (`cmswitch.frontend.onnx_importer`'s
    `_lower_conv_transpose`): ``cols`` ``N x H x W x (C*kh*kw)`` scattered into the
    output ``N x C x Ho x Wo`` at ``h*s + i*d - pad_top``, ``w*s + j*d - pad_left``;
    plus the bias operand (per channel) if any."""
    cols = ins[0]
    n, h, w, _ = cols.shape
    _, c, ho, wo = out_shape
    kh, kw = attr_value(op, "kernel")
    sh, sw = attr_value(op, "strides", [1, 1])
    dh, dw = attr_value(op, "dilations", [1, 1])
    top, left = attr_value(op, "pads", [0, 0, 0, 0])[:2]
    patches = cols.reshape(n, h, w, c, kh, kw)
    y = np.zeros(out_shape, dtype=np.float32)
    for i, j in itertools.product(range(kh), range(kw)):
        rows = np.arange(h) * sh + i * dh - top
        colsx = np.arange(w) * sw + j * dw - left
        keep_r, keep_c = (rows >= 0) & (rows < ho), (colsx >= 0) & (colsx < wo)
        block = patches[:, keep_r][:, :, keep_c][..., i, j].transpose(0, 3, 1, 2)
        y[:, :, rows[keep_r][:, None], colsx[keep_c][None, :]] += block
    bias = _slot(op, ins, 1)
    return y + bias.reshape(1, -1, 1, 1) if bias is not None else y


REFERENCE_KINDS = frozenset({"resize", "group_norm", "rmsnorm"})
"""Kinds whose operator functional mode runs with onnx's reference evaluator on the
ONNX node itself (`OnnxWeights.run_node`): Resize's interpolation modes and
coordinate transforms, Group and RMS normalization (their opset variants) — the
spec's own implementation instead of a rewrite of it."""

_SELU_ALPHA = 1.67326319217681884765625
_SELU_GAMMA = 1.05070102214813232421875
"""Selu's defaults (ONNX spec)."""

_NEW_KINDS: dict[str, Callable] = {
    "batchnorm": _batchnorm, "instance_norm": _instance_norm, "lrn": _lrn,
    "leaky_relu": lambda op, ins: np.where(ins[0] < 0, np.float32(attr_value(op, "alpha", 0.01))
                                           * ins[0], ins[0]),
    "prelu": lambda op, ins: np.where(ins[0] < 0, _slope(op, ins) * ins[0], ins[0]),
    "elu": lambda op, ins: np.where(ins[0] < 0, np.float32(attr_value(op, "alpha", 1.0))
                                    * (np.exp(ins[0]) - 1), ins[0]),
    "selu": lambda op, ins: np.float32(attr_value(op, "gamma", _SELU_GAMMA)) * np.where(
        ins[0] > 0, ins[0], np.float32(attr_value(op, "alpha", _SELU_ALPHA)) * (np.exp(ins[0]) - 1)),
    "celu": lambda op, ins: np.maximum(0, ins[0]) + np.minimum(0, np.float32(
        attr_value(op, "alpha", 1.0)) * (np.exp(ins[0] / np.float32(attr_value(op, "alpha", 1.0))) - 1)),
    "softplus": lambda op, ins: np.logaddexp(0, ins[0]),  # log(1 + e^x), no overflow
    "softsign": lambda op, ins: ins[0] / (1 + np.abs(ins[0])),
    "abs": lambda op, ins: np.abs(ins[0]),
    "hard_sigmoid": lambda op, ins: np.clip(np.float32(attr_value(op, "alpha", 0.2)) * ins[0]
                                            + np.float32(attr_value(op, "beta", 0.5)), 0, 1),
    "hard_swish": lambda op, ins: ins[0] * np.clip(ins[0] / 6 + 0.5, 0, 1),
    "log_softmax": _log_softmax, "log": lambda op, ins: np.log(ins[0]),
    "sum": _nary(np.sum), "mean": _nary(np.mean), "pad": _pad, "tile": _tile,
}
"""Kernels of issue 14's kinds (ONNX operator formulas), ``(op, ins) -> array``."""

_UNARY: dict[str, Callable] = {
    "neg": np.negative, "sqrt": np.sqrt, "reciprocal": np.reciprocal, "exp": np.exp,
    "erf": _erf, "tanh": np.tanh, "sigmoid": lambda x: 1 / (1 + np.exp(-x)),
    "relu": lambda x: np.maximum(x, 0), "cos": np.cos, "sin": np.sin, "isnan": np.isnan,
    "not": np.logical_not, "silu": lambda x: x / (1 + np.exp(-x)),
}
_BINARY: dict[str, Callable] = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide,
    "equal": np.equal, "less": np.less, "greater": np.greater,
    "and": np.logical_and, "or": np.logical_or,
}
_RESHAPES = frozenset({"reshape", "flatten", "squeeze", "unsqueeze", "identity"})


def vector_kernel(op: Operation, ins: list, out_shapes: list, out_dtypes: list,
                  table: Callable[[str], np.ndarray] | None = None) -> list:
    """Outputs of a `cim.vector` on numpy inputs (the op's activation operands, in
    order).  Output shapes and dtypes are the module's; `table` reads the constant
    data of a Gather by name.  Raises CMSwitchError for a
    kind functional mode does not implement, or an op whose constant operand the
    importer folded away (an ``add`` with one input, ...)."""
    kind = op.kind.data
    x = ins[0] if ins else None

    def one(value: np.ndarray) -> list:
        return [np.asarray(value)]

    if kind in _NEW_KINDS:
        return one(_NEW_KINDS[kind](op, ins))
    if kind == "col2im":
        return one(_col2im(op, ins, out_shapes[0]))

    if kind in _BINARY:
        if len(ins) != 2:
            raise CMSwitchError(f"VEC.{kind}: {len(ins)} activation operand(s); a constant "
                                "operand was folded by the importer and is not in the module")
        return one(_BINARY[kind](ins[0], ins[1]))
    if kind == "psum_add":
        return one(np.sum(np.stack(np.broadcast_arrays(*ins)), axis=0, dtype=np.float32))
    if kind in ("max", "min"):
        fn = np.maximum if kind == "max" else np.minimum
        return one(fn.reduce(np.stack(np.broadcast_arrays(*ins))))
    if kind == "pow":
        exponent = ins[1] if len(ins) == 2 else _recorded(op, "exponent")
        if exponent is None:
            raise CMSwitchError("VEC.pow: its constant exponent was not recorded in the module")
        return one(np.power(x, exponent))
    if kind == "where":
        if len(ins) != 3:
            raise CMSwitchError("VEC.where: a constant operand was folded by the importer")
        return one(np.where(ins[0].astype(bool), ins[1], ins[2]))
    if kind in _UNARY:
        return one(_UNARY[kind](x))
    if kind == "gelu":
        if attr_value(op, "approximate", "none") == "tanh":
            return one(0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3))))
        return one(0.5 * x * (1 + _erf(x / np.sqrt(2))))
    if kind == "clip":
        return one(_clip(op, ins))
    if kind == "cast":
        if attr_value(op, "variant") in ("quantize", "dequantize"):
            return one(_scaled_cast(op, ins, exact_dtype(op)))
        return one(x.astype(out_dtypes[0]))
    if kind == "range":
        start, limit, delta = (np.asarray(_slot(op, ins, i)).reshape(()) for i in range(3))
        return one(np.arange(start, limit, delta).astype(out_dtypes[0]))
    if kind == "softmax":
        return one(_softmax(x, attr_value(op, "axis", -1)))
    if kind == "layernorm":
        return _layernorm(op, ins)[:len(out_shapes)]
    if kind in ("reduce_mean", "reduce_sum", "reduce_max"):
        fn = {"reduce_mean": np.mean, "reduce_sum": np.sum, "reduce_max": np.max}[kind]
        return one(_reduce(op, x, out_shapes[0], fn))
    if kind == "global_avgpool":
        return one(x.mean(axis=tuple(range(2, x.ndim)), keepdims=True))
    if kind in ("maxpool", "avgpool"):
        pooled = [_pool(op, x, out_shapes[0], kind)]
        if kind == "maxpool" and len(out_shapes) > 1:
            pooled.append(_pool_indices(op, x, out_shapes[1]))
        return pooled
    if kind in _RESHAPES:
        # Dropout at inference: the data, and its optional mask all true (ONNX spec)
        return [x.reshape(out_shapes[0])] + [np.ones(s, dtype=np.bool_) for s in out_shapes[1:]]
    if kind == "expand":
        return one(np.broadcast_to(x, out_shapes[0]))
    if kind == "transpose":
        return one(np.transpose(x, attr_value(op, "perm")))
    if kind == "concat":
        return one(np.concatenate(ins, axis=attr_value(op, "axis")))
    if kind == "slice":
        return one(_slice(op, x))
    if kind == "split":
        axis = attr_value(op, "axis", 0) % x.ndim
        cuts = np.cumsum([s[axis] for s in out_shapes])[:-1]
        return list(np.split(x, cuts, axis=axis))
    if kind == "gather":
        return one(_gather(op, ins, table))
    raise CMSwitchError(f"functional mode does not implement VEC.{kind}")


def _gather(op: Operation, ins: list, table: Callable | None) -> np.ndarray:
    name = attr_value(op, "table")
    if name is not None and table is not None and len(ins) == 1:
        data, indices = table(name), ins[0]
    elif len(ins) == 2:
        data, indices = ins
    else:
        raise CMSwitchError("VEC.gather: operands are not (data, indices)")
    indices = indices.astype(np.int64)
    variant = attr_value(op, "variant")
    if variant == "elements":  # GatherElements
        axis = attr_value(op, "axis", 0) % data.ndim
        return np.take_along_axis(data, np.where(indices < 0, indices + data.shape[axis],
                                                 indices), axis=axis)
    if variant == "nd":  # GatherND
        return _gather_nd(data, indices, attr_value(op, "batch_dims", 0))
    return np.take(data, indices, axis=attr_value(op, "axis", 0))


def _gather_nd(data: np.ndarray, indices: np.ndarray, batch_dims: int) -> np.ndarray:
    """ONNX GatherND: the last axis of `indices` indexes the data axes after the first
    `batch_dims` (which `indices` shares)."""
    batch = data.shape[:batch_dims]
    depth = indices.shape[-1]
    lead = indices.shape[batch_dims:-1]
    out = np.empty((*batch, *lead, *data.shape[batch_dims + depth:]), dtype=data.dtype)
    for b in itertools.product(*(range(n) for n in batch)):
        for pos in itertools.product(*(range(n) for n in lead)):
            where = tuple(int(i) for i in indices[(*b, *pos)])
            out[(*b, *pos)] = data[(*b, *where)]
    return out


def _scaled_cast(op: Operation, ins: list, out_dtype) -> np.ndarray:
    """QuantizeLinear ``saturate(round_half_even(x / scale) + zero_point)`` and
    DequantizeLinear ``(x - zero_point) * scale`` (ONNX), with a scalar or per-axis
    (``axis``, default 1) scale and zero point; blocked quantization is refused."""
    if attr_value(op, "block_size", 0):
        raise CMSwitchError("VEC.cast: blocked (de)quantization is not implemented in "
                            "functional mode")
    x, scale = ins[0], _slot(op, ins, 1)
    zero = _slot(op, ins, 2)
    if scale is None:
        raise CMSwitchError("VEC.cast: the scale of a (de)quantization is missing")

    def shaped(v: np.ndarray) -> np.ndarray:
        if v.ndim == 0 or v.size == 1:
            return v.reshape(())
        shape = [1] * x.ndim
        shape[attr_value(op, "axis", 1) % x.ndim] = v.size
        return v.reshape(shape)

    scale = shaped(scale).astype(np.float32)
    if attr_value(op, "variant") == "dequantize":
        base = x.astype(np.float32) if zero is None else \
            x.astype(np.float32) - shaped(zero).astype(np.float32)
        return (base * scale).astype(out_dtype)
    info = np.iinfo(out_dtype)
    q = np.rint(x.astype(np.float32) / scale)
    if zero is not None:
        q = q + shaped(zero).astype(np.float32)
    return np.clip(q, info.min, info.max).astype(out_dtype)


