"""ONNX weights for functional mode: initializer values by name, the weight matrix of
a partitioned piece (`piece_weight`), and the dtypes of the compiled module."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper
from xdsl.dialects.builtin import (
    DenseArrayBase,
    FloatAttr,
    IntegerAttr,
    IntegerType,
    StringAttr,
    TensorType,
)
from xdsl.ir import Operation

from cmswitch.dialects.cim import NODE_ATTR
from cmswitch.errors import CMSwitchError
from cmswitch.frontend.onnx_util import VALUE_VIEWS, constants, folded_tensors, node_name




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
        #: tensors known at compile time (what the importer folds)
        self.folded: set[str] = folded_tensors(graph)
        for node in graph.node:
            for pos, name in enumerate(node.input):
                if name:
                    self.users.setdefault(name, []).append((node, pos))
        self._arrays: dict[str, np.ndarray] = {}
        self._matrices: dict[str, WeightMatrix] = {}

    @classmethod
    def load(cls, path: str | os.PathLike,
             bindings: tuple[dict[str, int], int | None, int | None] | None = None,
             prepare: bool = True) -> "OnnxWeights":
        """Read an ONNX file (external data only when needed) as the importer prepares
        it (`prepare_model`, dynamic dims bound by `bindings` = ``(dims, batch, seq)``
        as the compile bound them), or as written (``prepare=False``).  Raises
        CMSwitchError if it cannot be read or prepared."""
        from cmswitch.frontend.onnx_importer import _default_opset, prepare_model

        path = Path(path)
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as exc:  # onnx raises DecodeError, OSError, ...
            raise CMSwitchError(f"{path}: cannot read ONNX model ({str(exc).splitlines()[0]})") from None
        # the importer's graph: BatchNormalization folded into the weights it scales,
        # fused operators decomposed
        prepared = prepare_model(model, str(path), bindings) if prepare else model
        return cls(prepared, path.resolve().parent, str(path), _default_opset(model))

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

        name = attr_value(op, NODE_ATTR)
        graph = self.model.graph
        found = [n for i, n in enumerate(graph.node) if node_name(n, i) == name]
        if len(found) != 1:
            raise CMSwitchError(f"VEC.{op.kind.data}: ONNX node '{name}' is "
                                f"{'not in' if not found else 'not unique in'} the model")
        node = found[0]
        slots = attr_value(op, "operand_slots", list(range(len(ins))))
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
        readers = self._weight_readers(name)
        if not readers:
            raise CMSwitchError(
                f"{self.label}: no Conv/Gemm/MatMul node reads weight '{name}' (directly or "
                "through reshapes, transposes and casts); functional mode cannot rebuild it")
        found = [self._read(node, pos, tensor) for node, pos, tensor in readers]
        first = found[0]
        for other in found[1:]:
            same_bias = (first.bias is None) == (other.bias is None) and (
                first.bias is None or np.array_equal(first.bias, other.bias))
            if not (np.array_equal(first.values, other.values) and same_bias):
                raise CMSwitchError(f"{self.label}: weight '{name}' is read by several nodes "
                                    "in different ways; functional mode cannot tell them apart")
        self._matrices[name] = first
        return first

    def _weight_readers(self, name: str) -> list[tuple[onnx.NodeProto, int, str]]:
        """The weight-operator nodes reading `name`, or a tensor the importer names
        after it (one computed from it by `VALUE_VIEWS` nodes at compile time): each
        with the input position and the tensor it reads."""
        found, todo, seen = [], [name], set()
        while todo:
            tensor = todo.pop()
            if tensor in seen:
                continue
            seen.add(tensor)
            for node, pos in self.users.get(tensor, ()):
                if node.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
                    found.append((node, pos, tensor))
                elif node.op_type in VALUE_VIEWS and pos == 0 and node.output and \
                        node.output[0] in self.folded:
                    todo.append(node.output[0])
        return found

    def _bias(self, node: onnx.NodeProto, index: int) -> np.ndarray | None:
        if len(node.input) <= index or not node.input[index]:
            return None
        name = node.input[index]
        if name not in self.folded:
            return None  # an activation bias is a separate `add` in the module
        return self.constant(name).astype(np.float32)

    def _read(self, node: onnx.NodeProto, pos: int, name: str) -> WeightMatrix:
        w = self.constant(name).astype(np.float32)
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


def np_dtype(typ: Any) -> type:
    elem = typ.element_type if isinstance(typ, TensorType) else None
    if isinstance(elem, IntegerType):
        return np.bool_ if elem.width.data == 1 else np.int64
    return np.float32


def exact_dtype(op: Operation) -> type:
    """The numpy type of the op's first output as the module declares it (its width
    and signedness, e.g. a QuantizeLinear's uint8: the range it saturates to)."""
    elem = op.results[0].type.element_type
    if isinstance(elem, IntegerType) and elem.width.data > 1:
        signed = elem.signedness.data.name != "UNSIGNED"
        return np.dtype(f"{'int' if signed else 'uint'}{elem.width.data}").type
    return np_dtype(op.results[0].type)


def attr_value(op: Operation, name: str, default: Any = None) -> Any:
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
