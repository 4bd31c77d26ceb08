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
module (`Plan.module`), names mapped by `cmswitch.cost.graph.build_graph`; weight
values from the ONNX file's initializers.  All arithmetic is float32 and nothing is
quantized: this checks the dataflow, not the number format.
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper
from xdsl.dialects.builtin import (
    DenseArrayBase,
    FloatAttr,
    IntegerAttr,
    IntegerType,
    ModuleOp,
    StringAttr,
    TensorType,
)
from xdsl.ir import Operation

from cmswitch.dialects.cim import NODE_ATTR
from cmswitch.errors import CMSwitchError
from cmswitch.frontend.onnx_util import constants, node_name
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

RTOL = 1e-4
"""Relative tolerance of the comparison with onnxruntime (float32 sums in another order)."""
ATOL = 1e-5
"""Absolute tolerance, relative to the output's magnitude: element ``a`` matches ``b``
when ``|a-b| <= ATOL*max(1, max|B|) + RTOL*|b|`` (``B`` the whole output).  float32
sums round in proportion to their terms, so an element that cancels to near zero in
an output of values in the thousands carries an error far above 1e-5."""

DRAM = Loc("dram")


# ----------------------------------------------------------------------------------
# weights from the ONNX file


@dataclass(frozen=True)
class WeightMatrix:
    """A weight operator's matrices: `values` ``(G, K, N)`` float32 (one im2col ``K x N``
    matrix per group), and `bias` broadcastable to ``(M, G, N)`` or None."""

    values: np.ndarray
    bias: np.ndarray | None


class OnnxWeights:
    """Weight matrices and biases of an ONNX model, looked up by the weight name a
    `cim.conv2d` / `cim.matmul` carries (its ``weight`` property).

    The orientation comes from the Conv / Gemm / MatMul node that reads the
    initializer (or `Constant` output): Conv weights ``Cout x Cin/G x kh x kw`` become
    ``G`` matrices ``(Cin/G*kh*kw) x (Cout/G)`` (rows channel-major, then kh, kw); Gemm
    honours ``transB`` (or ``transA`` for a constant left operand); Conv's ``B`` and
    Gemm's ``C`` are the bias.  Raises CMSwitchError for a weight whose data is not in
    the file, that no such node reads directly (constant-folded weights), that two
    nodes read differently.  A Gemm's ``alpha`` scales its matrix and ``beta`` its
    bias (ONNX: ``Y = alpha A B + beta C``).
    """

    def __init__(self, model: onnx.ModelProto, base_dir: Path, label: str,
                 source_opset: int | None = None) -> None:
        self.label = label
        #: the default-domain opset of the file as written (before `prepare_model`)
        self.source_opset = source_opset
        self.base_dir = base_dir
        self.model = model
        graph = model.graph
        inits = {t.name for t in graph.initializer}
        #: the graph's activation inputs (not initializers), in order
        self.inputs = [vi.name for vi in graph.input if vi.name not in inits]
        self.tensors: dict[str, TensorProto] = constants(graph)
        self.users: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
        for node in graph.node:
            for pos, name in enumerate(node.input):
                if name in self.tensors:
                    self.users.setdefault(name, []).append((node, pos))
        self._arrays: dict[str, np.ndarray] = {}
        self._matrices: dict[str, WeightMatrix] = {}

    @classmethod
    def load(cls, path: str | os.PathLike) -> "OnnxWeights":
        """Read an ONNX file (external data only when needed).  Raises CMSwitchError
        if it cannot be read."""
        from cmswitch.frontend.onnx_importer import _default_opset, prepare_model

        path = Path(path)
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as exc:  # onnx raises DecodeError, OSError, ...
            raise CMSwitchError(f"{path}: cannot read ONNX model ({str(exc).splitlines()[0]})") from None
        # the importer's graph: BatchNormalization folded into the weights it scales
        return cls(prepare_model(model, str(path)), path.resolve().parent, str(path),
                   _default_opset(model))

    def array(self, name: str) -> np.ndarray:
        """The constant tensor `name` as numpy.  Raises CMSwitchError when its data is
        missing (e.g. a weight-stripped model)."""
        if name in self._arrays:
            return self._arrays[name]
        tensor = self.tensors.get(name)
        if tensor is None:
            raise CMSwitchError(f"{self.label}: no initializer or Constant named '{name}'")
        if tensor.data_location == TensorProto.EXTERNAL:
            tensor = self._external(tensor)
        try:
            value = numpy_helper.to_array(tensor)
        except Exception as exc:
            raise CMSwitchError(f"{self.label}: cannot read the data of '{name}' "
                                f"({str(exc).splitlines()[0]})") from None
        self._arrays[name] = value
        return value

    def constant(self, name: str) -> np.ndarray:
        """The value of constant tensor `name`: an initializer or `Constant` output
        (`array`), or a tensor the importer derived by constant folding, evaluated
        here by onnx's reference evaluator (`onnx.reference`) on the subgraph that
        computes it (graph inputs it reads only for their shapes are fed zeros).  Raises CMSwitchError if its data is missing or it
        cannot be evaluated."""
        if name in self.tensors:
            return self.array(name)
        if name not in self._arrays:
            self._arrays[name] = self._evaluate(name)
        return self._arrays[name]

    def run_node(self, op: Operation, ins: list) -> list[np.ndarray]:
        """Outputs of the ONNX node `op` was imported from (its ``onnx_node``), computed
        by onnx's reference evaluator on `ins` (the op's activation operands, at their
        ``operand_slots``) and the node's constant inputs (`constant`).  For the kinds
        of `REFERENCE_KINDS`.  Raises CMSwitchError if the node is not in the model or
        the evaluator fails."""
        from onnx.reference import ReferenceEvaluator

        name = _attr(op, NODE_ATTR)
        graph = self.model.graph
        found = [n for i, n in enumerate(graph.node) if node_name(n, i) == name]
        if len(found) != 1:
            raise CMSwitchError(f"VEC.{op.kind.data}: ONNX node '{name}' is "
                                f"{'not in' if not found else 'not unique in'} the model")
        node = found[0]
        slots = _attr(op, "operand_slots", list(range(len(ins))))
        feeds = {}
        for index, tensor in enumerate(node.input):
            if not tensor:
                continue
            feeds[tensor] = ins[slots.index(index)] if index in slots else self.constant(tensor)
        inputs = [onnx.helper.make_tensor_value_info(
            t, onnx.helper.np_dtype_to_tensor_dtype(v.dtype), list(v.shape))
            for t, v in feeds.items()]
        model = self._submodel([node], inputs, [o for o in node.output if o], [])
        try:
            return [np.asarray(v) for v in ReferenceEvaluator(model).run(None, feeds)]
        except Exception as exc:
            raise CMSwitchError(f"VEC.{op.kind.data}: onnx's reference evaluator failed on "
                                f"node '{name}' ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
                                ) from None

    def _submodel(self, nodes: list, inputs: list, outputs: list[str],
                  inits: list) -> onnx.ModelProto:
        """A model of `nodes` of this one (same opsets), for onnx's reference evaluator."""
        graph = onnx.helper.make_graph(
            nodes, "part", inputs, [onnx.helper.make_empty_tensor_value_info(o) for o in outputs],
            inits)
        return onnx.helper.make_model(graph, opset_imports=self.model.opset_import,
                                      ir_version=self.model.ir_version)

    def _evaluate(self, name: str) -> np.ndarray:
        from onnx.reference import ReferenceEvaluator

        try:
            graph = self.model.graph
            producer = {o: n for n in graph.node for o in n.output}
            needed, todo, nodes = set(), [name], []
            while todo:  # the nodes `name` depends on
                current = todo.pop()
                node = producer.get(current)
                if node is None or id(node) in needed:
                    continue
                needed.add(id(node))
                todo.extend(i for i in node.input if i)
            nodes = [n for n in graph.node if id(n) in needed]
            used = {i for n in nodes for i in n.input}
            inputs = [vi for vi in graph.input if vi.name in used and vi.name not in self.tensors]
            inits = [t for t in graph.initializer if t.name in used]
            for t in inits:  # a derived constant's sources need their data
                if t.data_location == TensorProto.EXTERNAL:
                    self.array(t.name)  # raises the missing-data error
            feeds = {}
            for vi in inputs:  # read only for their shapes (Shape, Size)
                dims = [d.dim_value if d.HasField("dim_value") else -1
                        for d in vi.type.tensor_type.shape.dim]
                if any(d < 0 for d in dims):
                    raise ValueError(f"it depends on the symbolic shape of '{vi.name}'")
                dtype = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
                feeds[vi.name] = np.zeros(dims, dtype=dtype)
            sub = self._submodel(nodes, inputs, [name], inits)
            return np.asarray(ReferenceEvaluator(sub).run([name], feeds)[0])
        except CMSwitchError:
            raise
        except Exception as exc:
            raise CMSwitchError(f"{self.label}: cannot evaluate the constant operand '{name}' "
                                f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
                                ) from None

    def _external(self, tensor: TensorProto) -> TensorProto:
        from onnx.external_data_helper import load_external_data_for_tensor

        copy = TensorProto()
        copy.CopyFrom(tensor)
        try:
            load_external_data_for_tensor(copy, str(self.base_dir))
        except Exception:
            where = next((e.value for e in tensor.external_data if e.key == "location"), "?")
            raise CMSwitchError(
                f"{self.label}: the data of weight '{tensor.name}' is stored outside the "
                f"model ('{where}') and cannot be read; functional mode needs the weights"
            ) from None
        copy.data_location = TensorProto.DEFAULT
        del copy.external_data[:]
        return copy

    def matrix(self, name: str) -> WeightMatrix:
        """The whole (unsliced) `WeightMatrix` of weight `name`."""
        if name in self._matrices:
            return self._matrices[name]
        readers = [(n, p) for n, p in self.users.get(name, ())
                   if n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul")]
        if not readers:
            raise CMSwitchError(
                f"{self.label}: no Conv/Gemm/MatMul node reads weight '{name}' directly; "
                "functional mode cannot rebuild weights computed by constant folding")
        found = [self._read(node, pos, name) for node, pos in readers]
        first = found[0]
        for other in found[1:]:
            same_bias = (first.bias is None) == (other.bias is None) and (
                first.bias is None or np.array_equal(first.bias, other.bias))
            if not (np.array_equal(first.values, other.values) and same_bias):
                raise CMSwitchError(f"{self.label}: weight '{name}' is read by several nodes "
                                    "in different ways; functional mode cannot tell them apart")
        self._matrices[name] = first
        return first

    def _bias(self, node: onnx.NodeProto, index: int) -> np.ndarray | None:
        if len(node.input) <= index or not node.input[index]:
            return None
        name = node.input[index]
        if name not in self.tensors:
            return None  # an activation bias is a separate `add` in the module
        return self.array(name).astype(np.float32)

    def _read(self, node: onnx.NodeProto, pos: int, name: str) -> WeightMatrix:
        w = self.array(name).astype(np.float32)
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Conv":
            if pos != 1 or w.ndim not in (3, 4):  # 1-D: the module's conv of height 1
                raise CMSwitchError(f"{self.label}: Conv node '{node.name}' reads '{name}' "
                                    "as its input; only constant 2-D weights are supported")
            groups = int(attrs.get("group", 1))
            cout = w.shape[0]
            values = w.reshape(groups, cout // groups, -1).transpose(0, 2, 1)
            bias = self._bias(node, 2)
            return WeightMatrix(np.ascontiguousarray(values),
                                None if bias is None else bias.reshape(1, groups, -1))
        if node.op_type == "ConvTranspose":  # Cin x Cout x kh x kw -> Cin x (Cout*kh*kw)
            return WeightMatrix(np.ascontiguousarray(w.reshape(w.shape[0], -1))[None], None)
        if node.op_type == "Gemm":  # Y = alpha A B + beta C: the scales go with the data
            alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
            plain = self._product(node, pos, name, w, attrs, with_bias=beta != 0.0)
            bias = None if plain.bias is None else plain.bias * np.float32(beta)
            return WeightMatrix(plain.values * np.float32(alpha), bias)
        return self._product(node, pos, name, w, attrs)

    def _product(self, node: onnx.NodeProto, pos: int, name: str, w: np.ndarray,
                 attrs: dict, with_bias: bool = True) -> WeightMatrix:
        """The matrix of a Gemm / MatMul reading weight `name` at input `pos`."""
        if w.ndim > 2 and any(d != 1 for d in w.shape[:-2]):
            raise CMSwitchError(f"{self.label}: weight '{name}' is a batch of matrices")
        if pos == 1:
            matrix = w.reshape(-1, 1) if w.ndim == 1 else w.reshape(w.shape[-2:])
            if attrs.get("transB", 0):
                matrix = matrix.T
            bias = self._bias(node, 2) if node.op_type == "Gemm" and with_bias else None
            if bias is not None:  # C broadcasts to (M, N): keep (1 or M, 1 group, N)
                bias = np.atleast_2d(bias)
                bias = np.broadcast_to(bias, (bias.shape[0], matrix.shape[1]))[:, None, :]
            return WeightMatrix(np.ascontiguousarray(matrix)[None], bias)
        # constant left operand: the module computes Y^T = op(B)^T @ op(A)^T
        if node.op_type == "Gemm" and with_bias and self._bias(node, 2) is not None:
            raise CMSwitchError(f"{self.label}: Gemm node '{node.name}' with a constant A and "
                                "a bias C is not supported in functional mode")
        if w.ndim == 1:
            matrix = w.reshape(-1, 1)
        else:
            a = w.reshape(w.shape[-2:])
            matrix = a if attrs.get("transA", 0) else a.T
        return WeightMatrix(np.ascontiguousarray(matrix)[None], None)


def piece_weight(op: Operation, weights: OnnxWeights) -> WeightMatrix:
    """The `WeightMatrix` an operator holds: its ``weight_slice`` ``[k0, k1, n0, n1]``
    of the whole matrix (the bias only on the piece with ``k0 == 0``, so K-split partial
    sums add it once).  Raises CMSwitchError if the ONNX weight does not have the
    operator's shape."""
    whole = weights.matrix(op.weight.data)
    _, k, n = op.im2col_dims()
    groups = getattr(op, "group_count", 1)
    g_all, k_all, n_all = whole.values.shape
    ws = op.properties.get("weight_slice")
    k0, k1, n0, n1 = ws.get_values() if ws is not None else (0, k_all, 0, n_all)
    if g_all != groups or k1 > k_all or n1 > n_all or (k1 - k0, n1 - n0) != (k, n):
        raise CMSwitchError(
            f"weight '{op.weight.data}' is {g_all} x {k_all}x{n_all} (groups x KxN) in the "
            f"ONNX model, but the operator needs {groups} x {k}x{n} at rows {k0}:{k1}, "
            f"columns {n0}:{n1}")
    values = whole.values[:, k0:k1, n0:n1]
    bias = whole.bias[..., n0:n1] if whole.bias is not None and k0 == 0 else None
    return WeightMatrix(values, bias)


# ----------------------------------------------------------------------------------
# the compiled module, by flow names


def _np_dtype(typ: Any) -> type:
    elem = typ.element_type if isinstance(typ, TensorType) else None
    if isinstance(elem, IntegerType):
        return np.bool_ if elem.width.data == 1 else np.int64
    return np.float32


def _exact_dtype(op: Operation) -> type:
    """The numpy type of the op's first output as the module declares it (its width
    and signedness, e.g. a QuantizeLinear's uint8: the range it saturates to)."""
    elem = op.results[0].type.element_type
    if isinstance(elem, IntegerType) and elem.width.data > 1:
        signed = elem.signedness.data.name != "UNSIGNED"
        return np.dtype(f"{'int' if signed else 'uint'}{elem.width.data}").type
    return _np_dtype(op.results[0].type)


class Operators:
    """The compiled `cim` module seen through the names of the flow: operators by
    `GraphOp.name`, tensor shapes and dtypes by `Tensor.name`, the model's input and
    output tensor names in function-argument / return order."""

    def __init__(self, module: ModuleOp) -> None:
        from cmswitch.cost.graph import build_graph
        from cmswitch.dialects.cim import tensor_shape
        from cmswitch.transforms.common import main_func, resolve_arch

        func = main_func(module)
        graph = build_graph(func, resolve_arch(module, None))
        self.ops: dict[str, Operation] = {g.name: g.op for g in graph.ops}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.dtypes: dict[str, type] = {}
        for value, index in graph.value_ids.items():
            name = graph.tensors[index].name
            self.shapes[name] = tensor_shape(value)
            self.dtypes[name] = _np_dtype(value.type)
        self.inputs = [graph.tensors[graph.value_ids[a]].name for a in func.body.block.args]
        ret = func.body.block.last_op
        self.outputs = [graph.tensors[graph.value_ids[v]].name for v in ret.operands]



# ----------------------------------------------------------------------------------
# numpy kernels


def _attr(op: Operation, name: str, default: Any = None) -> Any:
    """An informative attribute as a Python value (int, float, str, list)."""
    attr = op.attributes.get(name)
    if attr is None:
        return default
    if isinstance(attr, IntegerAttr):
        return attr.value.data
    if isinstance(attr, FloatAttr):
        return attr.value.data
    if isinstance(attr, StringAttr):
        return attr.data
    if isinstance(attr, DenseArrayBase):
        return list(attr.get_values())
    return default


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
    kernel = _attr(op, "kernel")
    if not kernel:
        raise CMSwitchError(f"VEC.{kind}: pooling without a kernel attribute")
    rank = len(kernel)
    strides = _attr(op, "strides", [1] * rank)
    pads = _attr(op, "pads", [0] * 2 * rank)
    dil = _attr(op, "dilations", [1] * rank)
    out_sp = out_shape[-rank:]
    lead = [(0, 0)] * (x.ndim - rank)
    pad_value = -np.inf if kind == "maxpool" else (0.0 if _attr(op, "count_include_pad", 0) else np.nan)
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
    kernel = _attr(op, "kernel")
    rank = len(kernel)
    strides = _attr(op, "strides", [1] * rank)
    pads = _attr(op, "pads", [0] * 2 * rank)
    dil = _attr(op, "dilations", [1] * rank)
    lead = x.shape[:x.ndim - rank]
    column_major = bool(_attr(op, "storage_order", 0)) and rank >= 2
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
    axes = _attr(op, "axes")
    if isinstance(axes, int):
        axes = [axes]
    if not axes:
        axes = None if not _attr(op, "noop_with_empty_axes", 0) else []
    if axes == []:
        return x.reshape(out_shape)
    axes = None if axes is None else tuple(a % x.ndim for a in axes)
    return fn(x, axis=axes, keepdims=True).reshape(out_shape)


def _slice(op: Operation, x: np.ndarray) -> np.ndarray:
    index = [slice(None)] * x.ndim
    if _attr(op, "axis") is not None and _attr(op, "start") is not None:
        axis = _attr(op, "axis") % x.ndim
        index[axis] = slice(_attr(op, "start"), _attr(op, "end"))
        return x[tuple(index)]
    starts, ends = _attr(op, "starts"), _attr(op, "ends")
    if starts is None or ends is None:
        raise CMSwitchError("VEC.slice: its starts/ends were not recorded in the module")
    axes = _attr(op, "axes", list(range(len(starts))))
    steps = _attr(op, "steps", [1] * len(starts))
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
    axis = _attr(op, "axis", -1) % x.ndim
    axes = tuple(range(axis, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    inv = 1 / np.sqrt(var + np.float32(_attr(op, "epsilon", 1e-5)))
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
    const_slots = _attr(op, "constant_slots", [])
    if not const_slots:
        return ins
    names = [a.data for a in op.attributes["constant_names"].data]
    act_slots = _attr(op, "operand_slots", list(range(len(ins))))
    pairs = sorted([*zip(act_slots, ins),
                    *((s, constant(n)) for s, n in zip(const_slots, names))],
                   key=lambda p: p[0])
    return Operands([v for _, v in pairs], [s for s, _ in pairs])


def _slot(op: Operation, ins: list, index: int) -> np.ndarray | None:
    """The operand that was ONNX input `index` (``operand_slots``), or None."""
    slots = getattr(ins, "slots", None) or _attr(op, "operand_slots", list(range(len(ins))))
    return ins[slots.index(index)] if index in slots else None


def _clip(op: Operation, ins: list) -> np.ndarray:
    """Clip (ONNX >= 11): each bound from its run-time operand (inputs 1 and 2), else
    the recorded ``min`` / ``max``, else none."""
    out = ins[0]
    for index, name, fn in ((1, "min", np.maximum), (2, "max", np.minimum)):
        bound = _slot(op, ins, index)
        if bound is None and _attr(op, name) is not None:
            bound = np.asarray(_attr(op, name), dtype=ins[0].dtype)
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
    eps = np.float32(_attr(op, "epsilon", 1e-5))
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
    y = (x - mean) / np.sqrt(var + np.float32(_attr(op, "epsilon", 1e-5)))
    return y * _per_channel(scale, x.ndim) + _per_channel(bias, x.ndim)


def _lrn(op: Operation, ins: list) -> np.ndarray:
    """ONNX LRN: ``x / (bias + alpha/size * square_sum)^beta``, the square sum over
    channels ``c - floor((size-1)/2) .. c + ceil((size-1)/2)``."""
    x = ins[0]
    size = _attr(op, "size")
    if size is None:
        raise CMSwitchError("VEC.lrn: its size was not recorded in the module")
    alpha, beta = _attr(op, "alpha", 1e-4), _attr(op, "beta", 0.75)
    bias = _attr(op, "bias", 1.0)
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
    value = _attr(op, name)
    if value is None or not isinstance(value, list):
        return value
    values = np.asarray(value)
    return values.reshape(_attr(op, f"{name}_shape", list(values.shape)))


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
    axis = _attr(op, "axis", -1)
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def _pad(op: Operation, ins: list) -> np.ndarray:
    """ONNX Pad (opset >= 11): ``pads`` begins then ends per axis (of ``axes`` if
    given), ``mode`` constant / reflect / edge / wrap, ``constant_value``."""
    x = ins[0]
    pads = _slot(op, ins, 1)
    pads = pads.astype(np.int64).tolist() if pads is not None else _attr(op, "pads")
    if pads is None:
        raise CMSwitchError("VEC.pad: its pads were not recorded in the module")
    value = _slot(op, ins, 2)
    value = value if value is not None else _attr(op, "constant_value", 0.0)
    axes = _slot(op, ins, 3)
    axes = axes.tolist() if axes is not None else _attr(op, "axes", list(range(x.ndim)))
    axes = [axes] if isinstance(axes, int) else axes
    width = [(0, 0)] * x.ndim
    for i, a in enumerate(axes):
        width[a % x.ndim] = (pads[i], pads[i + len(axes)])
    grow = [(max(0, b), max(0, e)) for b, e in width]
    mode = _attr(op, "mode", "constant")
    if mode == "constant":
        fill = np.asarray(value).reshape(-1)
        y = np.pad(x, grow, constant_values=fill[0] if fill.size else 0)
    else:
        y = np.pad(x, grow, mode=mode)  # numpy's reflect / edge / wrap are ONNX's
    # negative pads crop
    return y[tuple(slice(-min(0, b), y.shape[a] + min(0, e)) for a, (b, e) in enumerate(width))]


def _tile(op: Operation, ins: list) -> np.ndarray:
    repeats = _slot(op, ins, 1)
    repeats = repeats.astype(np.int64).tolist() if repeats is not None else _attr(op, "repeats")
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
    kh, kw = _attr(op, "kernel")
    sh, sw = _attr(op, "strides", [1, 1])
    dh, dw = _attr(op, "dilations", [1, 1])
    top, left = _attr(op, "pads", [0, 0, 0, 0])[:2]
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
    "leaky_relu": lambda op, ins: np.where(ins[0] < 0, np.float32(_attr(op, "alpha", 0.01))
                                           * ins[0], ins[0]),
    "prelu": lambda op, ins: np.where(ins[0] < 0, _slope(op, ins) * ins[0], ins[0]),
    "elu": lambda op, ins: np.where(ins[0] < 0, np.float32(_attr(op, "alpha", 1.0))
                                    * (np.exp(ins[0]) - 1), ins[0]),
    "selu": lambda op, ins: np.float32(_attr(op, "gamma", _SELU_GAMMA)) * np.where(
        ins[0] > 0, ins[0], np.float32(_attr(op, "alpha", _SELU_ALPHA)) * (np.exp(ins[0]) - 1)),
    "celu": lambda op, ins: np.maximum(0, ins[0]) + np.minimum(0, np.float32(
        _attr(op, "alpha", 1.0)) * (np.exp(ins[0] / np.float32(_attr(op, "alpha", 1.0))) - 1)),
    "softplus": lambda op, ins: np.logaddexp(0, ins[0]),  # log(1 + e^x), no overflow
    "softsign": lambda op, ins: ins[0] / (1 + np.abs(ins[0])),
    "abs": lambda op, ins: np.abs(ins[0]),
    "hard_sigmoid": lambda op, ins: np.clip(np.float32(_attr(op, "alpha", 0.2)) * ins[0]
                                            + np.float32(_attr(op, "beta", 0.5)), 0, 1),
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
        if _attr(op, "approximate", "none") == "tanh":
            return one(0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3))))
        return one(0.5 * x * (1 + _erf(x / np.sqrt(2))))
    if kind == "clip":
        return one(_clip(op, ins))
    if kind == "cast":
        if _attr(op, "variant") in ("quantize", "dequantize"):
            return one(_scaled_cast(op, ins, _exact_dtype(op)))
        return one(x.astype(out_dtypes[0]))
    if kind == "range":
        start, limit, delta = (np.asarray(_slot(op, ins, i)).reshape(()) for i in range(3))
        return one(np.arange(start, limit, delta).astype(out_dtypes[0]))
    if kind == "softmax":
        return one(_softmax(x, _attr(op, "axis", -1)))
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
        return one(np.transpose(x, _attr(op, "perm")))
    if kind == "concat":
        return one(np.concatenate(ins, axis=_attr(op, "axis")))
    if kind == "slice":
        return one(_slice(op, x))
    if kind == "split":
        axis = _attr(op, "axis", 0) % x.ndim
        cuts = np.cumsum([s[axis] for s in out_shapes])[:-1]
        return list(np.split(x, cuts, axis=axis))
    if kind == "gather":
        return one(_gather(op, ins, table))
    raise CMSwitchError(f"functional mode does not implement VEC.{kind}")


def _gather(op: Operation, ins: list, table: Callable | None) -> np.ndarray:
    name = _attr(op, "table")
    if name is not None and table is not None and len(ins) == 1:
        data, indices = table(name), ins[0]
    elif len(ins) == 2:
        data, indices = ins
    else:
        raise CMSwitchError("VEC.gather: operands are not (data, indices)")
    indices = indices.astype(np.int64)
    variant = _attr(op, "variant")
    if variant == "elements":  # GatherElements
        axis = _attr(op, "axis", 0) % data.ndim
        return np.take_along_axis(data, np.where(indices < 0, indices + data.shape[axis],
                                                 indices), axis=axis)
    if variant == "nd":  # GatherND
        return _gather_nd(data, indices, _attr(op, "batch_dims", 0))
    return np.take(data, indices, axis=_attr(op, "axis", 0))


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
    if _attr(op, "block_size", 0):
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
        shape[_attr(op, "axis", 1) % x.ndim] = v.size
        return v.reshape(shape)

    scale = shaped(scale).astype(np.float32)
    if _attr(op, "variant") == "dequantize":
        base = x.astype(np.float32) if zero is None else \
            x.astype(np.float32) - shaped(zero).astype(np.float32)
        return (base * scale).astype(out_dtype)
    info = np.iinfo(out_dtype)
    q = np.rint(x.astype(np.float32) / scale)
    if zero is not None:
        q = q + shaped(zero).astype(np.float32)
    return np.clip(q, info.min, info.max).astype(out_dtype)


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
        value = self.read(st.reads[0], st)
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
        x = self.read(st.reads[0], st)
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
        ins = [self.read(ref, st) for ref in st.reads]
        want = [tensor_shape(v) for v in op.inputs]
        if [tuple(v.shape) for v in ins] != want:
            self.fail(f"{st.opcode} {st.op}: inputs of shapes {[list(v.shape) for v in ins]}, "
                      f"the operator reads {[list(s) for s in want]}")
        if len(st.writes) != len(op.outputs):
            self.fail(f"{st.opcode} {st.op}: {len(st.writes)} outputs, the operator has "
                      f"{len(op.outputs)}")
        shapes = [tensor_shape(r) for r in op.outputs]
        dtypes = [_np_dtype(r.type) for r in op.outputs]
        try:
            if kind in REFERENCE_KINDS:
                outs = self.weights.run_node(op, ins)
            else:
                ins = with_constants(op, ins, self.weights.constant)
                with np.errstate(all="ignore"):
                    outs = vector_kernel(op, ins, shapes, dtypes, self.weights.array)
        except CMSwitchError as error:
            self.fail(f"{st.opcode} {st.op}: {error}")
        if len(outs) != len(st.writes):
            self.fail(f"{st.opcode} {st.op}: functional mode computes {len(outs)} of the "
                      f"operator's {len(st.writes)} outputs")
        for ref, value, shape, dtype in zip(st.writes, outs, shapes, dtypes):
            if value.shape != shape:
                self.fail(f"{st.opcode} {st.op}: computed shape {list(value.shape)}, the "
                          f"module says {list(shape)}")
            self.write(ref, np.ascontiguousarray(value, dtype=dtype), st)

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


def run_flow(flow: str | os.PathLike, module: ModuleOp, weights: OnnxWeights,
             inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Execute a flow (text or path) functionally.

    module:  the allocated `cim` module the flow was lowered from (`Plan.module`);
    weights: the ONNX model's weights; inputs: a value per model input tensor, by flow
             tensor name (numpy, the module's shapes).
    Returns the values of the flow's output tensors, by name, read from DRAM.
    Raises CMSwitchError ``FILE: line N: message`` when the flow reads a value where it
    is not, names arrays that do not hold the operator's weight, or does not match the
    module (shapes, operator kinds, vector counts); and for unsupported operators.
    """
    source = FlowSource(flow)
    machine = FunctionalMachine(source.name, Operators(module), weights, inputs)
    for record in iter_records(source.lines(), source.name):
        machine.feed(record)
    return machine.outputs()


# ----------------------------------------------------------------------------------
# comparison with onnxruntime


def random_inputs(operators: Operators, seed: int) -> dict[str, np.ndarray]:
    """Seeded inputs by tensor name: standard normal floats, integers in {0, 1}."""
    rng = np.random.default_rng(seed)
    values = {}
    for name in operators.inputs:
        shape, dtype = operators.shapes[name], operators.dtypes[name]
        if dtype is np.float32:
            values[name] = rng.standard_normal(shape).astype(np.float32)
        else:
            values[name] = rng.integers(0, 2, size=shape).astype(dtype)
    return values


def _onnxruntime(path: Path | bytes, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    try:
        import onnxruntime
    except ImportError:
        raise CMSwitchError("functional mode needs onnxruntime (pip install "
                            "'cmswitch[dev]' or onnxruntime)") from None
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    try:
        session = onnxruntime.InferenceSession(path if isinstance(path, bytes) else str(path),
                                               options, providers=["CPUExecutionProvider"])
        return session.run(None, feeds)
    except Exception as exc:  # onnxruntime raises its own exception types
        where = "the upgraded model" if isinstance(path, bytes) else path
        raise CMSwitchError(f"{where}: onnxruntime failed: {str(exc).splitlines()[0]}") from None


ORT_MIN_OPSET = 7
"""The oldest default-domain opset onnxruntime runs."""


def _reference_outputs(path: Path, weights: OnnxWeights,
                       feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The model's outputs on `feeds`: onnxruntime on the file; for a file older than
    onnxruntime's `ORT_MIN_OPSET`, onnxruntime on the graph the importer compiled
    (`weights.model`: upgraded by onnx's version converter, folded), or onnx's
    reference evaluator if onnxruntime cannot run that either.  Raises CMSwitchError if
    none can."""
    if (weights.source_opset or ORT_MIN_OPSET) >= ORT_MIN_OPSET:
        return _onnxruntime(path, feeds)
    prepared = weights.model
    try:
        return _onnxruntime(prepared.SerializeToString(), feeds)
    except CMSwitchError:
        from onnx.reference import ReferenceEvaluator

        try:
            return ReferenceEvaluator(prepared).run(None, feeds)
        except Exception as exc:
            raise CMSwitchError(f"{path}: neither onnxruntime nor onnx's reference "
                                f"evaluator runs the model ({str(exc).splitlines()[0]})") from None


def require_onnx(model: str | os.PathLike) -> Path:
    """The model's path; raises CMSwitchError unless it is an existing `.onnx` file
    whose weights are all readable (checked before a possibly long compile)."""
    path = Path(model)
    if path.suffix != ".onnx" or not path.is_file():
        raise CMSwitchError(f"{model}: functional mode needs an .onnx model file with weights")
    weights = OnnxWeights.load(path)
    for tensor in weights.tensors.values():
        where = next((e.value for e in tensor.external_data if e.key == "location"), None)
        if tensor.data_location == TensorProto.EXTERNAL and not (weights.base_dir / str(where)).is_file():
            weights.array(tensor.name)  # raises the missing-data error
    return path


def compare(plan: Any, model: str | os.PathLike, seed: int = 0, flow: str | None = None,
            rtol: float = RTOL, atol: float = ATOL) -> dict:
    """Run `plan`'s flow (or `flow`, e.g. a modified one) functionally and the ONNX
    `model` in onnxruntime on the same seeded random inputs; compare the outputs.

    `plan` must come from ``cmswitch.api.compile(model, keep_module=True)``.  Returns
    the report: ``ok`` (every output element has ``|a-b| <= atol*max(1, max|b|) +
    rtol*|b|``),
    ``max_abs_error``, ``max_rel_error`` (max ``|a-b|`` over max ``|b|`` of that output),
    ``outputs`` (per output: name, shape, errors), ``rtol``, ``atol``, ``seed``,
    ``statements`` executed.  Raises CMSwitchError as `run_flow` does, or when the
    model is not an ONNX file with its weights.
    """
    path = require_onnx(model)
    if getattr(plan, "module", None) is None:
        raise CMSwitchError("functional mode needs the compiled module: "
                            "compile with keep_module=True")
    weights = OnnxWeights.load(path)
    operators = Operators(plan.module)
    values = random_inputs(operators, seed)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in weights.model.graph.input}
    # each input in its own ONNX type (uint8, float16, ...) for onnxruntime, and the
    # flow fed the same values
    feeds = {onnx_name: np.asarray(values[name]).astype(
                 onnx.helper.tensor_dtype_to_np_dtype(types[onnx_name]))
             for onnx_name, name in zip(weights.inputs, operators.inputs)}
    for onnx_name, name in zip(weights.inputs, operators.inputs):
        values[name] = feeds[onnx_name].astype(operators.dtypes[name])
    source = FlowSource(flow if flow is not None else plan.flow)
    machine = FunctionalMachine(source.name, operators, weights, values)
    for record in iter_records(source.lines(), source.name):
        machine.feed(record)
    ours = machine.outputs()
    reference = _reference_outputs(path, weights, feeds)
    rows = []
    ok = True
    for name, ref in zip(operators.outputs, reference):
        if name not in ours:
            raise CMSwitchError(f"output {name} is not an output tensor of the flow")
        got = ours[name].astype(np.float64)
        ref = np.asarray(ref, dtype=np.float64)
        if got.shape != ref.shape:
            raise CMSwitchError(f"output {name}: shape {list(got.shape)}, onnxruntime gives "
                                f"{list(ref.shape)}")
        diff = np.abs(got - ref)
        abs_err = float(diff.max()) if diff.size else 0.0
        scale = float(np.abs(ref).max()) if ref.size else 0.0
        rel_err = abs_err / scale if scale > 0 else abs_err
        close = bool(np.allclose(got, ref, rtol=rtol, atol=atol * max(1.0, scale),
                                 equal_nan=True))
        ok = ok and close
        rows.append({"name": name, "shape": list(ref.shape), "max_abs_error": abs_err,
                     "max_rel_error": rel_err, "ok": close})
    return {
        "model": plan.model, "arch": plan.arch.name, "seed": seed, "rtol": rtol, "atol": atol,
        "statements": machine.statements, "ok": ok,
        "max_abs_error": max((r["max_abs_error"] for r in rows), default=0.0),
        "max_rel_error": max((r["max_rel_error"] for r in rows), default=0.0),
        "outputs": rows,
    }


def check_against_onnxruntime(model: str | os.PathLike, arch: str | None = None,
                              seed: int = 0, *, rtol: float = RTOL, atol: float = ATOL,
                              **options: Any) -> dict:
    """Compile an ONNX model (`options` go to `cmswitch.api.compile`: strategy,
    solver, batch, ...) for `arch` (preset name or file), execute the flow
    functionally and compare with onnxruntime; returns `compare`'s report."""
    from cmswitch.api import compile as compile_model

    plan = compile_model(model, arch=arch, keep_module=True, **options)
    return compare(plan, model, seed=seed, rtol=rtol, atol=atol)


def format_report(report: dict) -> str:
    """One line: the errors, the tolerance and the verdict."""
    verdict = "matches onnxruntime" if report["ok"] else "DIFFERS from onnxruntime"
    return (f"functional: {report['statements']} statements, max abs error "
            f"{report['max_abs_error']:.3g}, max rel error {report['max_rel_error']:.3g} "
            f"(rtol {report['rtol']:g}, atol {report['atol']:g}, seed {report['seed']}): "
            f"{verdict}\n")
