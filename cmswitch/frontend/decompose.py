"""Operators rewritten, before import, into ONNX operators the importer maps — the
same graph an unfused export would hold.  Both the importer and functional mode (which
reads the weights) apply `decompose` (through `prepare_model`), so they see the same
graph; functional mode still compares with onnxruntime on the file as written, so the
rewrite itself is checked against an independent implementation.

* **Attention** (opset 23-25, default domain) becomes the unfused pattern of the ONNX
  spec and of ``onnx.reference``'s ``_compute_attention``: 3-D ``Q/K/V`` reshaped to
  ``B x H x S x D`` (``q_num_heads`` / ``kv_num_heads``) and transposed; ``past_key``
  / ``past_value`` concatenated before the new keys and values (``present_key`` /
  ``present_value``); ``S = Q @ Kᵀ`` (a dynamic matmul of two activations) times
  ``scale`` (default ``1/sqrt(D)``); ``softcap * tanh(S / softcap)`` when
  ``softcap > 0``; plus the attention bias; Softmax over the keys; ``P @ V``.  The bias
  is the sum of the mask (a boolean mask becomes ``Where(mask, 0, -inf)``, a mask
  shorter than the keys is padded with ``-inf``) and the parts known at compile time:
  the causal frontier (``key j <= query i + past length``, or ``+ nonpad_kv_seqlen[b] -
  Sq`` with an external cache), the sliding window (``left_window_size`` /
  ``right_window_size``) and the padding of ``nonpad_kv_seqlen`` — one constant
  tensor built here with numpy.  A query row whose bias is all ``-inf`` gets zero
  probabilities (the spec's fully-masked-row rule): a ``Where`` after the Softmax,
  emitted when such a row exists or the mask is a run-time input.  Grouped-query
  attention (``Hq = g * Hkv``) reads each K/V head in place: ``Q`` viewed as ``B x Hkv x
  (g*Sq) x D`` (heads ``kv*g .. kv*g+g-1`` share key head ``kv``, as ``np.repeat`` in the
  reference), so K and V are not copied ``g`` times.  ``qk_matmul_output`` follows the
  reference: the (soft-capped) scores for modes 0 and 1, with the bias for 2, the
  probabilities for 3.  ``softmax_precision`` is not modelled (the flow computes in
  float32).
* **ConvTranspose** 1-D: the input unsqueezed to height 1 and the weight to
  ``Cin x Cout/g x 1 x k`` (a 2-D ConvTranspose, squeezed back).  With groups: the
  input split along its channels, one group-1 ConvTranspose per group on its slice of
  the weight (``Cin/g x Cout/g x kh x kw``) and bias, and the outputs concatenated —
  what a grouped transposed convolution computes (ONNX spec).
* **MatMul against a constant batch of matrices** ``B: L... x K x N``: one 2-D weight
  per matrix of the batch (numpy broadcasting of the leading dims against ``A``'s),
  ``A`` split along its flattened leading dims, one `MatMul` per matrix, the products
  concatenated and reshaped to the output.
* **Gemm** with ``alpha != 1`` on a product of two activations, or ``beta`` other
  than 0 and 1 on an activation ``C`` (a constant operand takes its scale into the
  stored weight or bias instead): the product (keeping ``alpha`` when a weight can
  take it), a ``Mul`` by ``alpha``, ``C`` times ``beta`` (a ``Mul``) added.

Every rewrite needs the shapes it reads (ranks, heads, sequence lengths) static after
the dims are bound; it raises CMSwitchError (one line naming the node) otherwise, and
for forms it cannot express: a run-time ``nonpad_kv_seqlen``, heads that do not
divide, 3-D ConvTranspose (left to the importer's refusal).  New nodes are named
``<node>/<part>``; new tensors get fresh names from the node's output.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import onnx
import onnx.shape_inference
from onnx import TensorProto, helper, numpy_helper

from cmswitch.errors import CMSwitchError
from cmswitch.frontend.onnx_util import DEFAULT_DOMAINS, constants, folded_tensors, node_name
from cmswitch.frontend.onnx_util import get_attr as _attr
from cmswitch.frontend.rewrites import constant_array, fresh_name

DECOMPOSED_OPS = frozenset({"Attention"})
"""Operators only ever imported through `decompose` (the others it rewrites —
ConvTranspose, MatMul — also have direct lowerings)."""

MAX_BATCH_MATRICES = 1024
"""Most matrices a constant batch operand of a MatMul may hold: each becomes its own
weight operator and arrays (beyond that the model is not a weight-stationary fit)."""

class _Builder:
    """Shapes, constants and fresh names of the graph being rewritten."""

    def __init__(self, model: onnx.ModelProto, label: str) -> None:
        self.label = label
        self.graph = model.graph
        self.consts = constants(model.graph)
        self.names = set(self.consts) | {o for n in model.graph.node for o in n.output} | \
            {vi.name for vi in model.graph.input}
        try:
            inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
        except Exception:  # the importer's strict inference reports the problem later
            inferred = model
        self.types: dict[str, tuple[int, list[int | None]]] = {}
        g = inferred.graph
        for vi in [*g.input, *g.value_info, *g.output]:
            tt = vi.type.tensor_type
            if not vi.type.HasField("tensor_type") or not tt.HasField("shape"):
                continue
            dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
            self.types[vi.name] = (tt.elem_type, dims)
        for t in g.initializer:
            self.types[t.name] = (t.data_type, list(t.dims))
        for name, t in self.consts.items():
            self.types.setdefault(name, (t.data_type, list(t.dims)))
        #: tensors known at compile time (what the importer folds)
        self.folded: set[str] = folded_tensors(model.graph)
        self.nodes: list[onnx.NodeProto] = []
        self.prefix = ""

    def fresh(self, base: str) -> str:
        return fresh_name(self.names, base)

    def shape(self, name: str, where: str) -> list[int]:
        dims = self.types.get(name, (0, None))[1]
        if dims is None or any(d is None for d in dims):
            raise CMSwitchError(f"{self.label}: {where}: the shape of '{name}' is not static "
                                "(bind dynamic dims with --batch, --seq or --dim)")
        return list(dims)  # type: ignore[arg-type]

    def elem(self, name: str) -> int:
        return self.types.get(name, (TensorProto.FLOAT, None))[0] or TensorProto.FLOAT

    def array(self, name: str) -> np.ndarray | None:
        return constant_array(self.consts, name)

    def node(self, op: str, inputs: Sequence[str], part: str, out: str | None = None,
             **attrs) -> str:
        """Append node ``<prefix>/<part>``; returns its (first) output's name."""
        name = out or self.fresh(f"{self.prefix}_{part}")
        self.nodes.append(helper.make_node(op, list(inputs), [name],
                                           name=f"{self.prefix}/{part}", **attrs))
        return name

    def const(self, value: np.ndarray, base: str) -> str:
        name = self.fresh(f"{self.prefix}_{base}")
        self.graph.initializer.append(numpy_helper.from_array(value, name))
        self.consts[name] = self.graph.initializer[-1]
        return name

    def ints(self, values: Sequence[int], base: str) -> str:
        return self.const(np.asarray(values, dtype=np.int64), base)


def _input(node: onnx.NodeProto, index: int) -> str:
    return node.input[index] if len(node.input) > index else ""


def _output(node: onnx.NodeProto, index: int) -> str:
    return node.output[index] if len(node.output) > index else ""


# --------------------------------------------------------------------------- Attention


def _attention(b: _Builder, node: onnx.NodeProto, where: str) -> None:
    """Emit the unfused form of Attention `node` (module docstring)."""
    q, k, v = node.input[0], node.input[1], node.input[2]
    mask, past_k, past_v, nonpad = (_input(node, i) for i in (3, 4, 5, 6))
    if bool(past_k) != bool(past_v):
        raise CMSwitchError(f"{b.label}: {where}: past_key and past_value must be given "
                            "together")
    if nonpad and past_k:
        raise CMSwitchError(f"{b.label}: {where}: nonpad_kv_seqlen cannot be combined with "
                            "past_key / past_value")
    for name in (k, v):
        if name in b.folded:
            raise CMSwitchError(f"{b.label}: {where}: '{name}' is a constant; attention to "
                                "a fixed memory (constant K / V) is not supported")
    q_shape, k_shape, v_shape = (b.shape(n, where) for n in (q, k, v))
    rank = len(q_shape)
    if rank not in (3, 4) or len(k_shape) != rank or len(v_shape) != rank:
        raise CMSwitchError(f"{b.label}: {where}: Q, K and V must all be 3-D or all 4-D")
    dtype = helper.tensor_dtype_to_np_dtype(b.elem(q))
    batch = q_shape[0]
    if rank == 3:
        hq, hkv = int(_attr(node, "q_num_heads", 0)), int(_attr(node, "kv_num_heads", 0))
        if hq <= 0 or hkv <= 0 or q_shape[2] % hq or k_shape[2] % hkv or v_shape[2] % hkv:
            raise CMSwitchError(f"{b.label}: {where}: 3-D inputs need q_num_heads and "
                                "kv_num_heads that divide the hidden sizes")
        q = _heads(b, q, q_shape, hq, "q")
        k = _heads(b, k, k_shape, hkv, "k")
        v = _heads(b, v, v_shape, hkv, "v")
        q_shape = [batch, hq, q_shape[1], q_shape[2] // hq]
        k_shape = [batch, hkv, k_shape[1], k_shape[2] // hkv]
        v_shape = [batch, hkv, v_shape[1], v_shape[2] // hkv]
    hq, sq, d = q_shape[1], q_shape[2], q_shape[3]
    hkv = k_shape[1]
    if v_shape[1] != hkv or v_shape[2] != k_shape[2] or v_shape[0] != batch or \
            k_shape[0] != batch or k_shape[3] != d:
        raise CMSwitchError(f"{b.label}: {where}: K {k_shape} and V {v_shape} do not match "
                            f"Q {q_shape} (batch, key/value heads, keys, head size)")
    if hq != hkv and (hkv == 0 or hq % hkv):
        raise CMSwitchError(f"{b.label}: {where}: {hq} query heads cannot share {hkv} "
                            "key/value heads")
    past_len = 0
    if past_k:
        past_len = b.shape(past_k, where)[2]
        k = b.node("Concat", [past_k, k], "present_key", _output(node, 1) or None, axis=2)
        v = b.node("Concat", [past_v, v], "present_value", _output(node, 2) or None, axis=2)
    else:
        for index, value in ((1, k), (2, v)):
            if _output(node, index):
                b.node("Identity", [value], ("present_key", "present_value")[index - 1],
                       _output(node, index))
    skv = k_shape[2] + past_len
    dv = v_shape[3]
    group = hq // hkv
    # scores S = Q K^T * scale; grouped heads share their key head in place
    kt = b.node("Transpose", [k], "k_t", perm=[0, 1, 3, 2])
    qg = q if group == 1 else b.node("Reshape", [q, b.ints([batch, hkv, group * sq, d],
                                                            "q_shape")], "q_groups")
    s = b.node("MatMul", [qg, kt], "scores")
    if group > 1:
        s = b.node("Reshape", [s, b.ints([batch, hq, sq, skv], "s_shape")], "scores_heads")
    scale = float(_attr(node, "scale", 1.0 / math.sqrt(d)))
    s = b.node("Mul", [s, b.const(np.asarray(scale, dtype=dtype), "scale")], "scaled")
    softcap = float(_attr(node, "softcap", 0.0))
    if softcap > 0:
        cap = b.const(np.asarray(softcap, dtype=dtype), "softcap")
        s = b.node("Mul", [b.node("Tanh", [b.node("Div", [s, cap], "capped")], "tanh"), cap],
                   "softcapped")
    mode = int(_attr(node, "qk_matmul_output_mode", 0))
    qk_out = _output(node, 3)
    if qk_out and mode in (0, 1):
        b.node("Identity", [s], "qk_matmul_output", qk_out)
    bias, runtime = _attention_bias(b, node, where, dtype, batch, sq, skv, past_len, mask)
    if bias is not None:
        s = b.node("Add", [s, bias], "biased")
    if qk_out and mode == 2:
        b.node("Identity", [s], "qk_matmul_output", qk_out)
    p = b.node("Softmax", [s], "probs", axis=-1)
    p = _masked_rows(b, p, bias, runtime, dtype)
    if qk_out and mode == 3:
        b.node("Identity", [p], "qk_matmul_output", qk_out)
    if qk_out and mode not in (0, 1, 2, 3):
        raise CMSwitchError(f"{b.label}: {where}: qk_matmul_output_mode {mode} is not one "
                            "of 0-3")
    y_name = node.output[0] if rank == 4 else None
    pg = p if group == 1 else b.node("Reshape", [p, b.ints([batch, hkv, group * sq, skv],
                                                            "p_shape")], "probs_groups")
    y = b.node("MatMul", [pg, v], "context", None if group > 1 else y_name)
    if group > 1:
        y = b.node("Reshape", [y, b.ints([batch, hq, sq, dv], "y_shape")], "context_heads",
                   y_name)
    if rank == 3:
        yt = b.node("Transpose", [y], "context_t", perm=[0, 2, 1, 3])
        b.node("Reshape", [yt, b.ints([batch, sq, hq * dv], "y3_shape")], "output",
               node.output[0])


def _heads(b: _Builder, x: str, shape: list[int], heads: int, tag: str) -> str:
    """``B x S x (H*D)`` -> ``B x H x S x D``."""
    split = b.node("Reshape", [x, b.ints([shape[0], shape[1], heads, shape[2] // heads],
                                         f"{tag}_split")], f"{tag}_split")
    return b.node("Transpose", [split], f"{tag}_heads", perm=[0, 2, 1, 3])


def _attention_bias(b: _Builder, node: onnx.NodeProto, where: str, dtype, batch: int,
                    sq: int, skv: int, past_len: int, mask: str
                    ) -> tuple[str | None, bool]:
    """The additive bias's tensor name (None: no bias) and whether it holds a run-time
    part (the mask)."""
    causal = bool(_attr(node, "is_causal", 0))
    left = int(_attr(node, "left_window_size", -1))
    right = int(_attr(node, "right_window_size", -1))
    if left < -1 or right < -1:
        raise CMSwitchError(f"{b.label}: {where}: left_window_size / right_window_size must "
                            f"be -1 or nonnegative, got {left} / {right}")
    nonpad_name = _input(node, 6)
    nonpad = None
    if nonpad_name:
        nonpad = b.array(nonpad_name)
        if nonpad is None:
            raise CMSwitchError(f"{b.label}: {where}: nonpad_kv_seqlen '{nonpad_name}' is "
                                "not a constant with data; only a constant one is supported")
        nonpad = nonpad.astype(np.int64).reshape(-1)
        if nonpad.size != batch or nonpad.min() < 0 or nonpad.max() > skv:
            raise CMSwitchError(f"{b.label}: {where}: nonpad_kv_seqlen {nonpad.tolist()} "
                                f"must give one length in 0..{skv} per batch entry "
                                f"({batch})")
    # compile-time part: causal frontier, sliding window, padding (reference order)
    offset: np.ndarray | int = past_len
    if nonpad is not None:
        offset = nonpad - sq
    i = np.arange(sq).reshape(sq, 1)
    j = np.arange(skv).reshape(1, skv)
    per_batch = np.ndim(offset) > 0
    diff = (i + np.reshape(offset, (-1, 1, 1))) - j if per_batch else i + int(offset) - j
    allowed = np.ones(diff.shape, dtype=bool)
    if causal:
        allowed &= diff >= 0
    if left >= 0:
        allowed &= diff <= left
    if right >= 0:
        allowed &= -diff <= right
    fixed = np.where(allowed, 0.0, -np.inf)
    if per_batch:
        fixed = fixed.reshape(-1, 1, sq, skv)
    if nonpad is not None:
        keep = np.arange(skv) < nonpad[:, None]
        fixed = fixed + np.where(keep, 0.0, -np.inf).reshape(batch, 1, 1, skv)
    has_fixed = bool(np.isneginf(fixed).any())
    mask_value = None
    if mask:
        constant = b.array(mask)
        if constant is not None:
            try:
                if constant.ndim < 2 or constant.shape[-1] > skv:
                    raise ValueError
                mask_value = _mask_bias(constant, skv)
                np.broadcast_shapes(mask_value.shape, (batch, 1, sq, skv) if per_batch
                                    else (sq, skv))
            except ValueError:
                raise CMSwitchError(f"{b.label}: {where}: attn_mask of shape "
                                    f"{list(constant.shape)} does not broadcast to the "
                                    f"scores' {sq} queries x {skv} keys") from None
            mask = ""
    if mask_value is not None:
        fixed = fixed + mask_value
        has_fixed = True
    const = b.const(fixed.astype(dtype), "bias") if has_fixed else None
    if not mask:
        return const, False
    m = mask
    if b.elem(mask) == TensorProto.BOOL:
        zero = b.const(np.asarray(0.0, dtype=dtype), "zero")
        ninf = b.const(np.asarray(-np.inf, dtype=dtype), "neg_inf")
        m = b.node("Where", [m, zero, ninf], "mask_bias")
    width = b.shape(mask, where)[-1]
    if width < skv:
        rank = len(b.shape(mask, where))
        pads = [0] * (2 * rank)
        pads[2 * rank - 1] = skv - width
        m = b.node("Pad", [m, b.ints(pads, "mask_pads"),
                           b.const(np.asarray(-np.inf, dtype=dtype), "mask_pad_value")],
                   "mask_padded")
    if const is not None:
        m = b.node("Add", [m, const], "bias")
    return m, True


def _mask_bias(mask: np.ndarray, skv: int) -> np.ndarray:
    """A constant mask as an additive float bias padded to ``skv`` keys."""
    bias = np.where(mask, 0.0, -np.inf) if mask.dtype == np.bool_ else mask.astype(np.float64)
    width = bias.shape[-1]
    if width < skv:
        bias = np.pad(bias, [(0, 0)] * (bias.ndim - 1) + [(0, skv - width)],
                      constant_values=-np.inf)
    return bias


def _masked_rows(b: _Builder, p: str, bias: str | None, runtime: bool, dtype) -> str:
    """Zero the probabilities of query rows whose bias is all ``-inf``."""
    if bias is None:
        return p
    zero = b.const(np.asarray(0.0, dtype=dtype), "zero")
    if not runtime:
        rows = np.isneginf(numpy_helper.to_array(b.consts[bias]).astype(np.float64)
                           .max(axis=-1, keepdims=True))
        if not rows.any():
            return p
        return b.node("Where", [b.const(rows, "masked_rows"), zero, p], "probs_safe")
    top = b.node("ReduceMax", [bias, b.ints([-1], "row_axes")], "bias_row_max", keepdims=1)
    rows = b.node("Equal", [top, b.const(np.asarray(-np.inf, dtype=dtype), "row_neg_inf")],
                  "masked_rows")
    return b.node("Where", [rows, zero, p], "probs_safe")


# --------------------------------------------------------------------------- ConvTranspose


def _conv_transpose(b: _Builder, node: onnx.NodeProto, where: str) -> None:
    """A 1-D or grouped ConvTranspose as 2-D group-1 ones (module docstring).  The
    weight's and bias's views and slices are nodes the importer folds at compile time
    (Unsqueeze, Slice), so a weight computed from constants works as an initializer
    does."""
    x, w = node.input[0], node.input[1]
    bias = _input(node, 2)
    for name, what in ((w, "weight"), (bias, "bias")):
        if name and name not in b.folded:
            raise CMSwitchError(f"{b.label}: {where} has a run-time {what} '{name}'; it "
                                "must be a constant")
    x_shape, w_shape = b.shape(x, where), b.shape(w, where)
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    out = node.output[0]
    if len(x_shape) == 3:
        if len(attrs.get("pads", [0, 0])) != 2:
            raise CMSwitchError(f"{b.label}: {where}: a 1-D ConvTranspose takes 2 pads, got "
                                f"{len(attrs['pads'])}")
        x2 = b.node("Unsqueeze", [x, b.ints([2], "axes")], "to_2d")
        w2 = b.node("Unsqueeze", [w, b.ints([2], "w_axes")], "weight_2d")
        for key, first in (("kernel_shape", 1), ("strides", 1), ("dilations", 1),
                           ("output_padding", 0), ("output_shape", 1)):
            if key in attrs:
                attrs[key] = [first, *attrs[key]]
        if "pads" in attrs:
            attrs["pads"] = [0, attrs["pads"][0], 0, attrs["pads"][1]]
        y2 = b.fresh(f"{out}_2d")
        _grouped(b, x2, w2, bias, attrs, [x_shape[0], x_shape[1], 1, x_shape[2]],
                 [*w_shape[:2], 1, w_shape[2]], y2)
        b.node("Squeeze", [y2, b.ints([2], "axes")], "to_1d", out)
        return
    _grouped(b, x, w, bias, attrs, x_shape, w_shape, out)


def _slice0(b: _Builder, x: str, start: int, end: int, part: str) -> str:
    """``x[start:end]`` along axis 0 (a Slice node on a constant: folded on import)."""
    return b.node("Slice", [x, b.ints([start], "starts"), b.ints([end], "ends"),
                            b.ints([0], "axes0")], part)


def _grouped(b: _Builder, x: str, w: str, bias: str, attrs: dict, x_shape: list[int],
             w_shape: list[int], out: str) -> None:
    groups = int(attrs.pop("group", 1))
    if groups == 1:
        b.node("ConvTranspose", [x, w, bias] if bias else [x, w], "conv", out, **attrs)
        return
    cin, cout_g = w_shape[0], w_shape[1]
    if x_shape[1] != cin:
        raise CMSwitchError(f"{b.label}: ConvTranspose '{b.prefix}': the input has "
                            f"{x_shape[1]} channels, the weight {cin}")
    if cin % groups:
        raise CMSwitchError(f"{b.label}: ConvTranspose '{b.prefix}': {cin} input channels "
                            f"do not split into {groups} groups")
    cin_g = cin // groups
    splits = [b.fresh(f"{x}_g{g}") for g in range(groups)]
    b.nodes.append(helper.make_node("Split", [x, b.ints([cin_g] * groups, "split")], splits,
                                    name=f"{b.prefix}/split", axis=1))
    parts = []
    for g in range(groups):
        inputs = [splits[g], _slice0(b, w, g * cin_g, (g + 1) * cin_g, f"weight{g}")]
        if bias:
            inputs.append(_slice0(b, bias, g * cout_g, (g + 1) * cout_g, f"bias{g}"))
        parts.append(b.node("ConvTranspose", inputs, f"group{g}", **attrs))
    b.node("Concat", parts, "concat", out, axis=1)


# --------------------------------------------------------------------------- MatMul


def _batched_matmul(b: _Builder, node: onnx.NodeProto, where: str) -> None:
    """MatMul(A, B) with B a constant batch of matrices (module docstring)."""
    a, w = node.input[0], node.input[1]
    a_shape, w_shape = b.shape(a, where), b.shape(w, where)
    out_shape = b.shape(node.output[0], where)
    w_lead, kn = w_shape[:-2], w_shape[-2:]
    if len(a_shape) == 1:
        a = b.node("Reshape", [a, b.ints([1, a_shape[0]], "a_row")], "a_row")
        a_shape = [1, a_shape[0]]
    a_lead, (m, kdim) = a_shape[:-2], a_shape[-2:]
    try:
        lead = list(np.broadcast_shapes(tuple(a_lead), tuple(w_lead)))
    except ValueError:
        raise CMSwitchError(f"{b.label}: {where}: leading dims {a_lead} and {w_lead} do not "
                            "broadcast") from None
    count = math.prod(lead)
    if count > MAX_BATCH_MATRICES:
        raise CMSwitchError(f"{b.label}: {where}: {count} products with a constant batch "
                            f"of matrices (more than {MAX_BATCH_MATRICES}, each its own "
                            "weight operator)")
    a_count = math.prod(a_lead)
    if a_count == 1:
        pieces = [b.node("Reshape", [a, b.ints([1, m, kdim], "a_shape")], "a_one")]
    else:
        flat = b.node("Reshape", [a, b.ints([a_count, m, kdim], "a_shape")], "a_flat")
        pieces = [b.fresh(f"{a}_b{i}") for i in range(a_count)]
        b.nodes.append(helper.make_node("Split", [flat, b.ints([1] * a_count, "split")],
                                        pieces, name=f"{b.prefix}/split", axis=0))
    w_flat = b.node("Reshape", [w, b.ints([-1, *kn], "w_shape")], "weights")
    matrices: dict[int, str] = {}
    products = []
    for idx in np.ndindex(*lead):
        a_idx = _flat_index(idx, a_lead)
        w_idx = _flat_index(idx, w_lead)
        if w_idx not in matrices:  # one Gather per matrix: folded on import
            matrices[w_idx] = b.node("Gather", [w_flat, b.const(np.asarray(w_idx, np.int64),
                                                                 "index")],
                                     f"weight{w_idx}", axis=0)
        products.append(b.node("MatMul", [pieces[a_idx], matrices[w_idx]],
                               f"matmul{len(products)}"))
    stacked = products[0] if len(products) == 1 else \
        b.node("Concat", products, "concat", axis=0)
    b.node("Reshape", [stacked, b.ints(out_shape, "out_shape")], "output", node.output[0])


def _flat_index(idx: tuple[int, ...], dims: Sequence[int]) -> int:
    """Row-major index into ``dims`` of the right-aligned broadcast index `idx`."""
    tail = idx[len(idx) - len(dims):] if dims else ()
    flat = 0
    for i, d in zip(tail, dims):
        flat = flat * d + (i if d != 1 else 0)
    return flat


# --------------------------------------------------------------------------- Gemm


def _scaled_gemm(b: _Builder, node: onnx.NodeProto, where: str) -> None:
    """Gemm ``alpha * op(A) op(B) + beta * C`` whose scales the arrays cannot take
    (module docstring): the product without them, times ``alpha`` (when neither A nor
    B is a constant weight to scale), plus ``beta * C``."""
    a, w = node.input[0], node.input[1]
    c = _input(node, 2)
    alpha = float(_attr(node, "alpha", 1.0))
    beta = float(_attr(node, "beta", 1.0))
    weighted = a in b.folded or w in b.folded
    dtype = helper.tensor_dtype_to_np_dtype(b.elem(a))
    keep = {k: _attr(node, k, 0) for k in ("transA", "transB")}
    if weighted:
        keep["alpha"] = alpha
    out = node.output[0]
    last = not (c and beta != 0.0) and (weighted or alpha == 1.0)
    y = b.node("Gemm", [a, w], "product", out if last else None, **keep)
    if not weighted and alpha != 1.0:
        last = not (c and beta != 0.0)
        y = b.node("Mul", [y, b.const(np.asarray(alpha, dtype=dtype), "alpha")], "alpha",
                   out if last else None)
    if c and beta != 0.0:
        cs = c if beta == 1.0 else b.node(
            "Mul", [c, b.const(np.asarray(beta, dtype=dtype), "beta")], "beta")
        b.node("Add", [y, cs], "bias", out)


# --------------------------------------------------------------------------- entry


def _target(b: _Builder, node: onnx.NodeProto) -> str | None:
    """Which rewrite `node` needs, if any."""
    if node.domain not in DEFAULT_DOMAINS:
        return None
    if node.op_type == "Attention":
        return "attention"
    if node.op_type == "ConvTranspose" and len(node.input) > 1:
        rank = len(b.types.get(node.input[1], (0, []))[1] or [])
        if rank == 3 or (rank == 4 and int(_attr(node, "group", 1)) != 1):
            return "conv_transpose"
    if node.op_type == "Gemm" and len(node.input) > 1:
        weighted = node.input[0] in b.folded or node.input[1] in b.folded
        c = _input(node, 2)
        beta = float(_attr(node, "beta", 1.0))
        if (not weighted and float(_attr(node, "alpha", 1.0)) != 1.0) or \
                (c and c not in b.folded and beta not in (0.0, 1.0)):
            return "gemm"
    if node.op_type == "MatMul" and node.input[1] in b.folded and \
            node.input[0] not in b.folded:
        dims = b.types.get(node.input[1], (0, None))[1] or []
        if len(dims) > 2 and any(d != 1 for d in dims[:-2]):
            return "matmul"
    return None


_REWRITES = {"attention": _attention, "conv_transpose": _conv_transpose,
             "matmul": _batched_matmul, "gemm": _scaled_gemm}


def decompose(model: onnx.ModelProto, label: str) -> onnx.ModelProto:
    """`model` with the module docstring's rewrites applied (a copy; `model` itself if
    none applies).  Raises CMSwitchError as the module docstring says."""
    if not any(n.op_type in ("Attention", "ConvTranspose", "MatMul", "Gemm")
               for n in model.graph.node):
        return model
    probe = _Builder(model, label)
    if not any(_target(probe, n) for n in model.graph.node):
        return model
    model = onnx.ModelProto.FromString(model.SerializeToString())
    b = _Builder(model, label)
    for index, node in enumerate(list(model.graph.node)):
        kind = _target(b, node)
        if kind is None:
            b.nodes.append(node)
            continue
        b.prefix = node_name(node, index)
        _REWRITES[kind](b, node, f"{node.op_type} node '{b.prefix}'")
    del model.graph.node[:]
    model.graph.node.extend(b.nodes)
    return model
