"""Reading ONNX graphs: the few helpers the importer, its rewrites and functional mode
share, so they agree on what a node's attribute, a constant and a node's name are."""

from __future__ import annotations

from collections.abc import Container

import onnx
from onnx import TensorProto

#: The default ONNX operator set's domain names.
DEFAULT_DOMAINS = ("", "ai.onnx")

#: Operators never folded nor mapped: they carry subgraphs.
CONTROL_FLOW_OPS = frozenset({"If", "Loop", "Scan", "SequenceMap"})

#: Operators whose output is a compile-time constant whenever shapes are static.
SHAPE_OPS = frozenset({"Shape", "Size"})

#: Operators whose output holds its first input's values, re-viewed: a weight the
#: importer folds through them keeps that input's name (functional mode follows
#: them from the name to the weight operator).
VALUE_VIEWS = frozenset({"Identity", "Cast", "Reshape", "Flatten", "Squeeze", "Unsqueeze",
                         "Transpose"})


def get_attr(node: onnx.NodeProto, name: str, default):
    """The value of attribute `name` of `node` (`onnx.helper.get_attribute_value`), or
    `default`."""
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


def constant_value(node: onnx.NodeProto) -> TensorProto | None:
    """A `Constant` node's tensor: its ``value``, or ``value_int(s)`` /
    ``value_float(s)`` as an int64 / float tensor (ONNX Constant spec); None for the
    sparse and string forms."""
    for attr in node.attribute:
        if attr.name == "value":
            return attr.t
        if attr.name in ("value_int", "value_ints", "value_float", "value_floats"):
            data = onnx.helper.get_attribute_value(attr)
            dtype = TensorProto.INT64 if "int" in attr.name else TensorProto.FLOAT
            dims = [len(data)] if isinstance(data, list) else []
            return onnx.helper.make_tensor(node.output[0], dtype, dims,
                                           data if isinstance(data, list) else [data])
    return None


def constants(graph: onnx.GraphProto) -> dict[str, TensorProto]:
    """The graph's initializers and `Constant` node values (`constant_value`) by name."""
    found = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            value = constant_value(node)
            if value is not None:
                found[node.output[0]] = value
    return found


def folded_tensors(graph: onnx.GraphProto) -> set[str]:
    """Tensors known at compile time, as the importer classifies them: the constants
    (`constants`) and the outputs of default-domain nodes, other than control flow,
    whose every input is such a tensor, or that are a Shape / Size."""
    folded = set(constants(graph))
    for node in graph.node:
        if folds(node, folded):
            folded.update(o for o in node.output if o)
    return folded


def folds(node: onnx.NodeProto, known: Container[str]) -> bool:
    """Whether the importer computes `node` at compile time, given the tensors already
    `known` then: a default-domain node other than control flow whose every input is
    known (vacuously for `Constant`), or a Shape / Size (static shapes)."""
    if node.domain not in DEFAULT_DOMAINS or node.op_type in CONTROL_FLOW_OPS:
        return False
    return node.op_type in SHAPE_OPS or all(i in known for i in node.input if i)


def node_name(node: onnx.NodeProto, index: int) -> str:
    """The node's name, or ``<OpType>_<index>`` (its position in the graph) when it has
    none: what the importer records as ``onnx_node``."""
    return node.name or f"{node.op_type}_{index}"
