"""Graph rewrites on the ONNX model before import, as inference compilers do them:
BatchNormalization folded into the convolution or matrix product before it, and a
zero Pad folded into the convolution after it.  Both the importer and functional mode
(which reads the weights) apply `fold_for_inference`, so they see the same graph.

* **BatchNormalization** (inference form, one output) with constant ``scale``, ``B``,
  ``input_mean``, ``input_var`` after a Conv — or a Gemm with a constant ``B``, alpha
  and beta 1 — whose output only the BatchNormalization reads: with
  ``s = scale / sqrt(var + epsilon)`` the product's output channel ``c`` becomes
  ``s_c * (W x)_c + (b_c - mean_c) * s_c + B_c`` — weights scaled per output channel
  and a bias ``(b - mean) * s + B`` (ONNX BatchNormalization spec, the ``Y = (X -
  input_mean) / sqrt(input_var + epsilon) * scale + B`` formula; the fold is the
  standard one of inference compilers, e.g. PyTorch's ``fuse_conv_bn_eval``).
  A Conv's channel axis is 1 (weights ``M x C/g x k...``, scaled along axis 0); a
  Gemm's is its last (``N``: ``B`` scaled along axis 1, or 0 with ``transB``).  Any
  other BatchNormalization stays an operator.
* **Pad** (mode ``constant``, value 0 or absent, constant ``pads``, no padding on the
  batch and channel axes) whose output only Conv nodes with explicit pads read: its
  pads are added to theirs (ONNX Pad and Conv specs: both pad with zeros).

The folded weights keep their name when only that node reads them, else get a
``_bn`` suffix; values are computed when every operand's data is in the file, and
otherwise left out (an external-data marker, like the weight-stripped models'), so
shapes import and functional mode says the data is missing.  A rewritten model is a
copy: the caller's is not changed.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from cmswitch.frontend.onnx_util import DEFAULT_DOMAINS
from cmswitch.frontend.onnx_util import constants as _constants
from cmswitch.frontend.onnx_util import get_attr as _attr

MISSING = "__folded_without_data__"
"""``location`` of a folded weight whose operands' data is not in the file."""


def has_data(t: TensorProto) -> bool:
    if t.data_location == TensorProto.EXTERNAL:
        return False
    if int(np.prod(t.dims)) == 0:
        return True
    return bool(t.raw_data or t.float_data or t.double_data or t.int32_data
                or t.int64_data or t.uint64_data)


def _without_data(name: str, dims, data_type: int) -> TensorProto:
    t = TensorProto(name=name, dims=list(dims), data_type=data_type)
    t.data_location = TensorProto.EXTERNAL
    entry = t.external_data.add()
    entry.key, entry.value = "location", MISSING
    return t


def tensor(name: str, value: np.ndarray | None, dims, data_type: int) -> TensorProto:
    if value is None:
        return _without_data(name, dims, data_type)
    return numpy_helper.from_array(value.astype(helper.tensor_dtype_to_np_dtype(data_type)),
                                   name)


def constant_array(consts: dict[str, TensorProto], name: str) -> np.ndarray | None:
    """The data of constant `name` as numpy, or None (not a constant, or no data)."""
    t = consts.get(name)
    return None if t is None or not has_data(t) else numpy_helper.to_array(t)


def fresh_name(names: set[str], base: str) -> str:
    """`base`, or ``base_1``, ``base_2``... : the first not in `names` (added to it)."""
    name, k = base, 1
    while name in names:
        name, k = f"{base}_{k}", k + 1
    names.add(name)
    return name


class _Graph:
    """Use counts and constants of one graph, updated as nodes are rewritten."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.consts = _constants(graph)
        self.uses = Counter(i for n in graph.node for i in n.input if i)
        self.uses.update(o.name for o in graph.output)
        self.producer = {o: n for n in graph.node for o in n.output}
        self.names = set(self.consts) | {o for n in graph.node for o in n.output}

    def array(self, name: str) -> np.ndarray | None:
        return constant_array(self.consts, name)

    def fresh(self, base: str) -> str:
        return fresh_name(self.names, base)

    def own(self, name: str) -> bool:
        """Whether `name` is an initializer no other node reads (its data may change)."""
        return bool(name) and self.uses[name] == 1 and \
            any(t.name == name for t in self.graph.initializer)

    def put(self, new: TensorProto) -> None:
        """Put initializer `new` in the graph, replacing the one of its name if any."""
        inits = self.graph.initializer
        for i, t in enumerate(inits):
            if t.name == new.name:
                inits[i].CopyFrom(new)
                break
        else:
            inits.append(new)
        self.consts[new.name] = new
        for vi in self.graph.input:  # old exporters list initializers as inputs too
            if vi.name == new.name:
                vi.CopyFrom(helper.make_tensor_value_info(new.name, new.data_type,
                                                          list(new.dims)))


def _fold_batchnorm(g: _Graph, bn: onnx.NodeProto) -> bool:
    """Fold `bn` into its producer if the module docstring's conditions hold."""
    if len([o for o in bn.output if o]) != 1 or _attr(bn, "training_mode", 0):
        return False
    x, params = bn.input[0], list(bn.input[1:5])
    if len(params) != 4 or any(p not in g.consts for p in params):
        return False
    prod = g.producer.get(x)
    if prod is None or g.uses[x] != 1 or prod.op_type not in ("Conv", "Gemm") or \
            prod.domain not in DEFAULT_DOMAINS:
        return False
    if len(prod.input) < 2 or prod.input[1] not in g.consts or prod.input[0] in g.consts:
        return False
    x_in, w_name = prod.input[0], prod.input[1]
    w_proto = g.consts[w_name]
    w_dims = list(w_proto.dims)
    if prod.op_type == "Conv":
        axis = 0
    elif len(w_dims) == 2 and not _attr(prod, "transA", 0) and \
            _attr(prod, "alpha", 1.0) == 1.0 and _attr(prod, "beta", 1.0) == 1.0:
        axis = 0 if _attr(prod, "transB", 0) else 1
    else:
        return False
    channels = w_dims[axis]
    if any(int(np.prod(g.consts[p].dims)) != channels for p in params):
        return False
    bias_name = prod.input[2] if len(prod.input) > 2 and prod.input[2] else ""
    if bias_name and bias_name not in g.consts:
        return False
    if prod.op_type == "Gemm" and bias_name and \
            [d for d in g.consts[bias_name].dims] not in ([channels], [1, channels]):
        return False  # a C broadcast along M (scalar, M x 1, M x N) is not per channel
    scale, shift, mean, var = (g.array(p) for p in params)
    w, b = g.array(w_name), g.array(bias_name) if bias_name else None
    known = all(v is not None for v in (scale, shift, mean, var, w)) and \
        (not bias_name or b is not None)
    new_w = new_b = None
    if known:
        s = scale.astype(np.float64) / np.sqrt(var.astype(np.float64) + _attr(bn, "epsilon", 1e-5))
        shape = [1] * len(w_dims)
        shape[axis] = channels
        new_w = w.astype(np.float64) * s.reshape(shape)
        base = b.astype(np.float64) if b is not None else 0.0
        new_b = (base - mean.astype(np.float64)) * s + shift.astype(np.float64)
    w_out = w_name if g.own(w_name) else g.fresh(f"{w_name}_bn")
    g.put(tensor(w_out, new_w, w_dims, w_proto.data_type))
    b_out = bias_name if g.own(bias_name) else g.fresh(f"{w_out}_bn_bias")
    g.put(tensor(b_out, new_b, [channels], w_proto.data_type))
    del prod.input[:]
    prod.input.extend([x_in, w_out, b_out])
    prod.output[0] = bn.output[0]
    g.producer[bn.output[0]] = prod
    return True


def _fold_pad(g: _Graph, pad: onnx.NodeProto) -> bool:
    """Fold a zero `pad` into the Conv nodes reading it (module docstring)."""
    if _attr(pad, "mode", b"constant") not in (b"constant", "constant") or len(pad.input) < 2:
        return False
    pads = g.array(pad.input[1]) if pad.input[1] in g.consts else None
    if pads is None:
        return False
    if len(pad.input) > 2 and pad.input[2]:
        value = g.array(pad.input[2]) if pad.input[2] in g.consts else None
        if value is None or np.any(value != 0):
            return False
    if len(pad.input) > 3 and pad.input[3]:
        return False  # explicit axes: rare, keep the operator
    pads = [int(p) for p in pads.reshape(-1)]
    rank = len(pads) // 2
    if rank < 3 or any(pads[a] or pads[a + rank] for a in (0, 1)) or any(p < 0 for p in pads):
        return False
    out = pad.output[0]
    readers = [n for n in g.graph.node if out in n.input]
    if not readers or g.uses[out] != len(readers) or \
            any(o.name == out for o in g.graph.output):
        return False
    for conv in readers:
        if conv.op_type != "Conv" or conv.input[0] != out or list(conv.input).count(out) != 1:
            return False
        if _attr(conv, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            return False
        if g.consts.get(conv.input[1]) is None or len(g.consts[conv.input[1]].dims) != rank:
            return False
    spatial = rank - 2
    for conv in readers:
        old = list(_attr(conv, "pads", [0] * 2 * spatial))
        new = [old[a] + pads[2 + a] for a in range(spatial)] + \
              [old[spatial + a] + pads[rank + 2 + a] for a in range(spatial)]
        for a in list(conv.attribute):
            if a.name == "pads":
                conv.attribute.remove(a)
        conv.attribute.append(helper.make_attribute("pads", new))
        conv.input[0] = pad.input[0]
    return True


def fold_for_inference(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with the module docstring's folds applied (a copy; `model` itself if
    nothing folds).  Nodes inside subgraphs are not rewritten."""
    graph = model.graph
    if not any(n.op_type in ("BatchNormalization", "Pad") for n in graph.node):
        return model
    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = _Graph(model.graph)
    keep, folded = [], []
    for node in list(model.graph.node):
        default = node.domain in DEFAULT_DOMAINS
        if default and node.op_type == "BatchNormalization" and _fold_batchnorm(g, node) or \
                default and node.op_type == "Pad" and _fold_pad(g, node):
            folded.append(node)
        else:
            keep.append(node)
    if not folded:
        return model
    names = {i for n in folded for i in n.input[1:]}
    del model.graph.node[:]
    model.graph.node.extend(keep)
    _drop_unused(model.graph, names)
    return model


def _drop_unused(graph: onnx.GraphProto, names: set[str]) -> None:
    """Remove the initializers (and their graph-input entries) among `names` that no
    node reads any more — unless a node carries a subgraph, which may read them."""
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
           for n in graph.node for a in n.attribute):
        return
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    gone = {name for name in names if name not in used}
    inits = [t for t in graph.initializer if t.name not in gone]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    inputs = [vi for vi in graph.input if vi.name not in gone]
    del graph.input[:]
    graph.input.extend(inputs)
