"""ONNX importer: an ONNX model becomes a `builtin.module` holding one `func.func @main`
written in the `cim` dialect.

Pipeline (each step raises `CMSwitchError` with a one-line message on bad input):

1. decode the protobuf (`onnx.ModelProto`); external weight data is never loaded, so
   weight-stripped models import fine.  A model older than opset `MIN_OPSET` is
   upgraded with onnx's version converter; one newer than the installed onnx is refused;
2. inline model-local functions; fold BatchNormalization into the conv / Gemm before it
   and zero Pad into the convs after it (`cmswitch.frontend.rewrites`); bind symbolic
   input dims from ``dims``;
3. classify every node: a node whose inputs are all constants (initializers, `Constant`
   outputs, values computed only from constants, or `Shape`/`Size` of a statically
   shaped tensor) is *constant-folded*: nothing is emitted and its outputs are
   constants too.  Any other node must have a mapping, else "unsupported ONNX
   operator";
4. `onnx.shape_inference.infer_shapes(strict_mode=True, data_prop=True)` gives every
   intermediate shape; every emitted value must end up fully static and non-empty;
5. emit, in graph order: Conv -> `cim.conv2d`, Gemm/MatMul against a constant ->
   `cim.matmul`, MatMul of two activations -> `cim.dyn_matmul`, everything else ->
   `cim.vector` of a kind from `VECTOR_KINDS` (operands: the activation inputs only).

Operator semantics follow the ONNX operator specification
(https://onnx.ai/onnx/operators/): Conv (pads ``[x1_begin, x2_begin, x1_end, x2_end]``,
``auto_pad``), Gemm (``transA``/``transB``, optional ``C``), MatMul (numpy.matmul
semantics, broadcasting leading dims, 1-D operands promoted).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from math import prod
from pathlib import Path

import onnx
import onnx.inliner
import onnx.shape_inference
import onnx.version_converter
from onnx import AttributeProto, TensorProto, numpy_helper

from xdsl.dialects import func
from xdsl.dialects.builtin import (
    ArrayAttr,
    BFloat16Type,
    DenseArrayBase,
    Float16Type,
    Float32Type,
    Float64Type,
    FloatAttr,
    IntegerAttr,
    IntegerType,
    ModuleOp,
    Signedness,
    StringAttr,
    TensorType,
    UnitAttr,
    f32,
    i64,
)
from xdsl.ir import Attribute, Block, Operation, Region, SSAValue
from xdsl.utils.exceptions import VerifyException

from cmswitch.dialects.cim import (
    NODE_ATTR,
    Conv2dOp,
    DynMatmulOp,
    MatmulOp,
    VectorOp,
    array_prop,
    conv_output_size,
)
from cmswitch.errors import CMSwitchError
from cmswitch.frontend.onnx_util import DEFAULT_DOMAINS, VALUE_VIEWS, folds
from cmswitch.frontend.onnx_util import constant_value as _constant_value
from cmswitch.frontend.onnx_util import get_attr as _get_attr
from cmswitch.frontend.onnx_util import node_name

__all__ = ["import_onnx", "load_model", "prepare_model", "VECTOR_OP_KINDS"]

#: ONNX operator (default domain) -> `cim.vector` kind.
VECTOR_OP_KINDS: dict[str, str] = {
    # elementwise arithmetic
    "Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div", "Neg": "neg", "Pow": "pow",
    "Sqrt": "sqrt", "Reciprocal": "reciprocal", "Exp": "exp", "Erf": "erf",
    "Max": "max", "Min": "min",
    # activations
    "Relu": "relu", "Clip": "clip", "Gelu": "gelu", "Tanh": "tanh", "Sigmoid": "sigmoid",
    "Cos": "cos", "Sin": "sin",
    # logic and comparison
    "Where": "where", "IsNaN": "isnan", "Not": "not", "Equal": "equal", "Less": "less",
    "Greater": "greater", "And": "and", "Or": "or", "Cast": "cast", "CastLike": "cast",
    # normalization, reductions, pooling
    "Softmax": "softmax", "LayerNormalization": "layernorm",
    "ReduceMean": "reduce_mean", "ReduceSum": "reduce_sum", "ReduceMax": "reduce_max",
    "MaxPool": "maxpool", "AveragePool": "avgpool",
    "GlobalAveragePool": "global_avgpool", "GlobalMaxPool": "reduce_max",
    # data movement
    "Reshape": "reshape", "Transpose": "transpose", "Concat": "concat", "Split": "split",
    "Slice": "slice", "Gather": "gather", "GatherElements": "gather",
    "GatherND": "gather", "Expand": "expand", "Squeeze": "squeeze",
    "Unsqueeze": "unsqueeze", "Flatten": "flatten", "Identity": "identity",
    "Dropout": "identity", "Range": "range",
    # quantized (QDQ) activations: a scaled cast; constant scales and zero points fold
    "QuantizeLinear": "cast", "DequantizeLinear": "cast",
    # everyday CNN exports (issue 14): the normalizations not folded into a conv by
    # `cmswitch.frontend.rewrites`, the other activations, n-ary sums, padding
    "BatchNormalization": "batchnorm", "InstanceNormalization": "instance_norm",
    "LRN": "lrn", "LeakyRelu": "leaky_relu", "PRelu": "prelu", "Elu": "elu",
    "Selu": "selu", "Celu": "celu", "Softplus": "softplus", "Softsign": "softsign",
    "Abs": "abs", "HardSigmoid": "hard_sigmoid", "HardSwish": "hard_swish",
    "LogSoftmax": "log_softmax", "Log": "log", "Sum": "sum", "Mean": "mean",
    "Pad": "pad", "Tile": "tile",
    "GroupNormalization": "group_norm", "RMSNormalization": "rmsnorm", "Resize": "resize",
}

#: ONNX operators sharing a vector kind with another, told apart by the op's
#: ``variant`` attribute (same cost; functional mode computes each its own way).
VARIANT_OF: dict[str, str] = {
    "GatherElements": "elements", "GatherND": "nd",
    "QuantizeLinear": "quantize", "DequantizeLinear": "dequantize",
}

#: Operators with a dedicated lowering (weight or dynamic matrix ops).
MATRIX_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})

#: Constant inputs worth recording on a `cim.vector` as attributes (input index ->
#: attribute name), read when the data is small and stored in the model.
CONST_INPUT_ATTRS: dict[str, dict[int, str]] = {
    "Reshape": {1: "shape"}, "Expand": {1: "shape"},
    "Squeeze": {1: "axes"}, "Unsqueeze": {1: "axes"},
    "ReduceMean": {1: "axes"}, "ReduceSum": {1: "axes"}, "ReduceMax": {1: "axes"},
    "Slice": {1: "starts", 2: "ends", 3: "axes", 4: "steps"},
    "Split": {1: "split"}, "Clip": {1: "min", 2: "max"}, "Pow": {1: "exponent"},
    "Pad": {1: "pads", 2: "constant_value", 3: "axes"}, "Tile": {1: "repeats"},
    "PRelu": {1: "slope"},
}

#: Constant inputs that do not change what an operator computes at inference (input
#: index sets): Dropout's ratio and training_mode, CastLike's type-only target.
CONST_INPUTS_IGNORED: dict[str, frozenset[int]] = {
    "Dropout": frozenset({1, 2}), "CastLike": frozenset({1}),
}

SLOTS_ATTR = "operand_slots"
"""`cim.vector` attribute: the ONNX input index of each operand, when they are not
simply the first inputs in order (a constant or an omitted optional input before an
activation: Clip's ``max`` without ``min``)."""

CONST_SLOTS_ATTR = "constant_slots"
CONST_NAMES_ATTR = "constant_names"
"""`cim.vector` attributes for the constant operands not recorded as values (a bias
added by an Add, an unfolded BatchNormalization's statistics, a LayerNormalization's
scale): their ONNX input indices and tensor names.  The cost model needs only the
activations; functional mode reads these constants from the model (initializers, or
evaluated by onnx's reference evaluator when derived by constant folding) and runs
the operator on all its operands."""

_MAX_CONST_ATTR_ELEMS = 64

#: ONNX TensorProto element type -> xDSL element type.
_ELEM_TYPES: dict[int, Attribute] = {
    TensorProto.FLOAT: Float32Type(),
    TensorProto.FLOAT16: Float16Type(),
    TensorProto.BFLOAT16: BFloat16Type(),
    TensorProto.DOUBLE: Float64Type(),
    TensorProto.BOOL: IntegerType(1),
    TensorProto.INT8: IntegerType(8),
    TensorProto.INT16: IntegerType(16),
    TensorProto.INT32: IntegerType(32),
    TensorProto.INT64: IntegerType(64),
    TensorProto.UINT8: IntegerType(8, Signedness.UNSIGNED),
    TensorProto.UINT16: IntegerType(16, Signedness.UNSIGNED),
    TensorProto.UINT32: IntegerType(32, Signedness.UNSIGNED),
    TensorProto.UINT64: IntegerType(64, Signedness.UNSIGNED),
}


#: Oldest default-domain opset imported as is; an older model is converted to it first
#: (Slice took its starts/ends as inputs from opset 10, Clip and Pad from 11, Split,
#: Squeeze, Unsqueeze and ReduceSum their axes from 13).
MIN_OPSET = 13


# --------------------------------------------------------------------------- helpers


def sanitize_name(name: str) -> str:
    """An xDSL-valid SSA name hint for an ONNX tensor name: characters outside
    ``[A-Za-z0-9_.$-]`` become ``_``; a leading digit (or an empty name) gets a ``v``
    prefix."""
    out = "".join(c if c.isascii() and (c.isalnum() or c in "_.$-") else "_" for c in name)
    if not out or out[0].isdigit():
        out = "v" + out
    return out


def _one_line(exc: BaseException) -> str:
    """First non-empty line of an exception message (ONNX errors span many lines)."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


def _node_label(node: onnx.NodeProto, index: int) -> str:
    """The node's name, or ``<OpType #index>`` for anonymous nodes."""
    return node.name or f"<{node.op_type} #{index}>"


@dataclass
class _Ctx:
    """Import state.

    consts:  constant tensor name -> the tensor it derives from (an initializer name,
             a `Constant` node output, or its own name), used as a weight name.
    sizes:   constant tensor name -> element count (0 if unknown), to pick the
             dominant origin of a folded value.
    data:    small constant tensors whose data is stored in the model (initializers,
             `Constant` nodes): name -> TensorProto.
    types:   tensor name -> inferred `onnx.TypeProto` (after shape inference).
    values:  activation name -> SSA value.
    """

    label: str
    opset: int | None = None
    consts: dict[str, str] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    data: dict[str, TensorProto] = field(default_factory=dict)
    types: dict[str, onnx.TypeProto] = field(default_factory=dict)
    values: dict[str, SSAValue] = field(default_factory=dict)
    ops: list[Operation] = field(default_factory=list)


# --------------------------------------------------------------------------- loading


def _read_model(source: str | bytes | os.PathLike, label: str) -> onnx.ModelProto:
    """Decode the model; raises CMSwitchError if it cannot be read, is not ONNX, or is
    truncated (no graph, no outputs)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        try:
            data = Path(os.fspath(source)).read_bytes()
        except OSError as exc:
            raise CMSwitchError(f"{label}: cannot read model file: {exc.strerror}") from None
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as exc:  # protobuf raises DecodeError (or others) on garbage
        raise CMSwitchError(
            f"{label}: not an ONNX model or truncated ({_one_line(exc)})"
        ) from None
    if model.ir_version <= 0 or not model.HasField("graph"):
        raise CMSwitchError(f"{label}: not an ONNX model or truncated (no graph)")
    if not model.graph.output or not model.graph.node:
        raise CMSwitchError(
            f"{label}: not an ONNX model or truncated (graph has no nodes or outputs)"
        )
    return model


def _default_opset(model: onnx.ModelProto) -> int | None:
    """The model's opset of the default ONNX domain, or None if it imports none."""
    for imp in model.opset_import:
        if imp.domain in DEFAULT_DOMAINS:
            return imp.version
    return None


def _upgrade_opset(model: onnx.ModelProto, label: str) -> onnx.ModelProto:
    """Bring an old model up to `MIN_OPSET` with onnx's version converter (operators
    whose attributes later became inputs, e.g. Slice, Clip, Split, Squeeze, get their
    current form).  Raises CMSwitchError for an opset newer than the installed onnx
    knows, or an old model the converter cannot convert."""
    version = _default_opset(model)
    newest = onnx.defs.onnx_opset_version()
    if version is None or MIN_OPSET <= version <= newest:
        return model
    if version > newest:
        raise CMSwitchError(
            f"{label}: opset {version} is newer than the installed onnx "
            f"{onnx.__version__} supports ({newest}); upgrade onnx or export at a lower opset"
        )
    try:
        return onnx.version_converter.convert_version(model, MIN_OPSET)
    except Exception as exc:
        raise CMSwitchError(
            f"{label}: opset {version} is older than {MIN_OPSET} and onnx's version "
            f"converter cannot upgrade it: {_one_line(exc)}; re-export at opset {MIN_OPSET} or newer"
        ) from None


def _bind_dims(model: onnx.ModelProto, dims: dict[str, int], label: str,
               batch: int | None = None, seq: int | None = None) -> None:
    """Replace symbolic dims of the graph inputs by values: a dim named in ``dims``;
    else, with ``batch``, any symbolic or unknown dim at axis 0; else, with ``seq``,
    a symbolic dim whose name contains "seq".  Values propagate to every tensor with
    the same dim name.  Raises CMSwitchError for a dim left unbound, or for a binding
    no input uses (a user asking for batch 4 must not silently get batch 1)."""
    for key, value in [*dims.items(), ("--batch", batch), ("--seq", seq)]:
        if value is not None and (not isinstance(value, int) or value <= 0):
            raise CMSwitchError(f"{label}: {key} must be a positive integer, got {value!r}")
    graph = model.graph
    inits = {t.name for t in graph.initializer}
    named = dict(dims)
    used: set[str] = set()
    for vi in graph.input:
        if vi.name in inits:
            continue
        if not vi.type.HasField("tensor_type"):
            raise CMSwitchError(f"{label}: input '{vi.name}' is not a tensor")
        if not vi.type.tensor_type.HasField("shape"):
            raise CMSwitchError(f"{label}: input '{vi.name}' has an unknown rank")
        for axis, dim in enumerate(vi.type.tensor_type.shape.dim):
            if dim.HasField("dim_value"):
                continue
            param = dim.dim_param
            if param in dims:
                used.add(param)
            elif axis == 0 and batch is not None:
                used.add("--batch")
                if not param:
                    dim.dim_value = batch
                    continue
                named[param] = batch
            elif seq is not None and "seq" in param.lower():
                used.add("--seq")
                named[param] = seq
            else:
                what = f"symbolic dim '{param}'" if param else "an unnamed dynamic dim"
                hint = f"--dim {param}=VALUE" if param else "--batch N (axis 0 only)"
                if param and axis == 0:
                    hint = f"--batch N or {hint}"
                elif param and "seq" in param.lower():
                    hint = f"--seq L or {hint}"
                raise CMSwitchError(
                    f"{label}: input '{vi.name}' has {what} at axis {axis}; bind it with {hint}"
                )
    unused = [k for k in dims if k not in used]
    unused += [k for k, v in (("--batch", batch), ("--seq", seq)) if v is not None and k not in used]
    if unused:
        raise CMSwitchError(
            f"{label}: no input has a dynamic dimension for {', '.join(unused)} "
            "(the model's input shapes are fixed there)"
        )
    for vi in [*graph.input, *graph.output, *graph.value_info]:
        if not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
            continue
        for dim in vi.type.tensor_type.shape.dim:
            if dim.HasField("dim_param") and dim.dim_param in named:
                dim.dim_value = named[dim.dim_param]


def _infer(model: onnx.ModelProto, label: str) -> onnx.ModelProto:
    """Run ONNX shape inference in strict mode with data propagation."""
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    except Exception as exc:
        raise CMSwitchError(f"{label}: shape inference failed: {_one_line(exc)}") from None


# --------------------------------------------------------------------------- classify


def _is_default_domain(node: onnx.NodeProto) -> bool:
    return node.domain in DEFAULT_DOMAINS


def _classify(graph: onnx.GraphProto, ctx: _Ctx) -> list[bool]:
    """For each node, whether it is constant-folded.  Fills ``ctx.consts``/``sizes``/
    ``data`` for constants.  Raises CMSwitchError for an unsupported operator, an
    input used before it is defined, or a constant graph output."""
    for init in graph.initializer:
        ctx.consts[init.name] = init.name
        ctx.sizes[init.name] = prod(init.dims)
        ctx.data[init.name] = init
    inits = set(ctx.consts)
    defined = set(ctx.consts) | {vi.name for vi in graph.input if vi.name not in inits}
    folded: list[bool] = []
    for index, node in enumerate(graph.node):
        label = _node_label(node, index)
        for name in node.input:
            if name and name not in defined:
                raise CMSwitchError(
                    f"{ctx.label}: node '{label}' uses '{name}' before it is defined"
                )
        _check_in_opset(node, label, ctx)
        is_const = _node_is_constant(node, ctx)
        if not is_const:
            _check_supported(node, label, ctx.label)
        if is_const:
            _record_constant(node, ctx)
        folded.append(is_const)
        defined.update(o for o in node.output if o)
    for out in graph.output:
        if out.name not in defined:
            raise CMSwitchError(
                f"{ctx.label}: graph output '{out.name}' is not produced by any node"
            )
        if out.name in ctx.consts:
            raise CMSwitchError(
                f"{ctx.label}: graph output '{out.name}' is a constant; nothing to compute"
            )
    return folded


def _node_is_constant(node: onnx.NodeProto, ctx: _Ctx) -> bool:
    """Folded at compile time (`onnx_util.folds`: the rule functional mode shares)."""
    return folds(node, ctx.consts)


def _check_in_opset(node: onnx.NodeProto, label: str, ctx: _Ctx) -> None:
    """Raise CMSwitchError if a default-domain node's operator does not exist at the
    model's opset (e.g. Gelu before opset 20): shape inference would skip it and leave
    its outputs without shapes."""
    if ctx.opset is None or not _is_default_domain(node) or not onnx.defs.has(node.op_type):
        return
    try:
        onnx.defs.get_schema(node.op_type, ctx.opset, "")
    except onnx.defs.SchemaError:
        first = min(s.since_version for s in onnx.defs.get_all_schemas_with_history()
                    if s.name == node.op_type and s.domain == "")
        raise CMSwitchError(
            f"{ctx.label}: node '{label}': operator '{node.op_type}' does not exist in "
            f"opset {ctx.opset} (it was added in opset {first}); export at opset {first} "
            "or newer"
        ) from None


def _check_supported(node: onnx.NodeProto, label: str, source: str) -> None:
    """Raise CMSwitchError (naming the file ``source``, the operator and the node)
    unless the (non-constant) node has a mapping."""
    known = node.op_type in MATRIX_OPS or node.op_type in VECTOR_OP_KINDS
    if _is_default_domain(node) and known:
        return
    op = node.op_type if _is_default_domain(node) else f"{node.domain}.{node.op_type}"
    raise CMSwitchError(f"{source}: unsupported ONNX operator '{op}' at node '{label}'")


def _record_constant(node: onnx.NodeProto, ctx: _Ctx) -> None:
    """Mark the outputs of a folded node as constants.  Their origin — the tensor a
    weight operator names as its ``weight``, and functional mode evaluates — is the
    largest constant input's (ties: the first) for the `VALUE_VIEWS`; any other
    folded node (`Constant`, ConstantOfShape, a scaled or dequantized weight) computes
    new values and is its outputs' own origin."""
    origin, size = "", -1
    for name in node.input:
        if name and name in ctx.consts and ctx.sizes[name] > size:
            origin, size = ctx.consts[name], ctx.sizes[name]
    if node.op_type not in VALUE_VIEWS:
        origin = ""
    if node.op_type == "Constant" and node.output:
        value = _constant_value(node)
        if value is not None:
            ctx.data[node.output[0]] = value
    for out in node.output:
        if not out:
            continue
        ctx.consts[out] = origin or out
        ctx.sizes[out] = max(size, 0)


# --------------------------------------------------------------------------- types


def _collect_types(model: onnx.ModelProto, ctx: _Ctx) -> None:
    """Tensor name -> inferred TypeProto, from inputs, value_info and outputs."""
    graph = model.graph
    for vi in [*graph.input, *graph.value_info, *graph.output]:
        ctx.types[vi.name] = vi.type


def _static_shape(ctx: _Ctx, name: str, where: str) -> tuple[int, ...]:
    """Fully static shape of tensor ``name`` (inferred, or an initializer's dims).
    Raises CMSwitchError if unknown, symbolic, or zero-size."""
    init = ctx.data.get(name)
    if init is not None and name not in ctx.types:
        return tuple(init.dims)
    typ = ctx.types.get(name)
    tt = typ.tensor_type if typ is not None and typ.HasField("tensor_type") else None
    if tt is None or not tt.HasField("shape"):
        raise CMSwitchError(
            f"{ctx.label}: cannot determine the shape of tensor '{name}' ({where})"
        )
    dims: list[int] = []
    for dim in tt.shape.dim:
        if not dim.HasField("dim_value"):
            raise CMSwitchError(
                f"{ctx.label}: cannot determine the shape of tensor '{name}' ({where}): "
                f"dim {len(dims)} is {dim.dim_param or 'unknown'}"
            )
        dims.append(dim.dim_value)
    if any(d < 0 for d in dims):
        raise CMSwitchError(
            f"{ctx.label}: tensor '{name}' ({where}) has a negative dimension, shape {dims}"
        )
    if 0 in dims:
        raise CMSwitchError(
            f"{ctx.label}: tensor '{name}' ({where}) has zero size, shape {dims}"
        )
    return tuple(dims)


def _tensor_type(ctx: _Ctx, name: str, where: str) -> TensorType:
    """`TensorType` of an activation tensor; raises CMSwitchError for unknown shapes,
    zero-size tensors and element types without an xDSL counterpart."""
    shape = _static_shape(ctx, name, where)
    typ = ctx.types[name]
    elem = _ELEM_TYPES.get(typ.tensor_type.elem_type)
    if elem is None:
        elem_name = TensorProto.DataType.Name(typ.tensor_type.elem_type)
        raise CMSwitchError(
            f"{ctx.label}: tensor '{name}' ({where}) has unsupported element type {elem_name}"
        )
    return TensorType(elem, shape)


def _name(value: SSAValue, onnx_name: str) -> SSAValue:
    value.name_hint = sanitize_name(onnx_name)
    return value


# --------------------------------------------------------------------------- attributes


def _attr_value(attr: AttributeProto) -> Attribute | None:
    """Informative xDSL attribute for a simple ONNX attribute (None: not recorded)."""
    kind = attr.type
    if kind == AttributeProto.INT:
        return IntegerAttr(attr.i, i64)
    if kind == AttributeProto.INTS:
        return array_prop(list(attr.ints))
    if kind == AttributeProto.FLOAT:
        return FloatAttr(attr.f, f32)
    if kind == AttributeProto.FLOATS:
        return DenseArrayBase.from_list(f32, list(attr.floats))
    if kind == AttributeProto.STRING:
        return StringAttr(attr.s.decode("utf-8", errors="replace"))
    if kind == AttributeProto.STRINGS:
        return ArrayAttr([StringAttr(s.decode("utf-8", errors="replace")) for s in attr.strings])
    return None


def _const_attr(ctx: _Ctx, name: str) -> Attribute | None:
    """Small constant input stored in the model as an attribute: integers -> i64 array
    (scalar -> i64), float scalars -> f32.  None if unavailable (external data, large,
    computed)."""
    tensor = ctx.data.get(name)
    if tensor is None or tensor.data_location == TensorProto.EXTERNAL:
        return None
    if prod(tensor.dims) > _MAX_CONST_ATTR_ELEMS:
        return None
    try:
        arr = numpy_helper.to_array(tensor)
    except Exception:
        return None
    if arr.dtype.kind in "iub":
        vals = [int(v) for v in arr.reshape(-1)]
        return IntegerAttr(vals[0], i64) if arr.ndim == 0 else array_prop(vals)
    if arr.dtype.kind == "f" and arr.ndim == 0:
        return FloatAttr(float(arr), f32)
    if arr.dtype.kind == "f":
        return DenseArrayBase.from_list(f32, [float(v) for v in arr.reshape(-1)])
    return None


def _vector_attrs(node: onnx.NodeProto, ctx: _Ctx, in_shape: Sequence[int] | None
                  ) -> dict[str, Attribute]:
    """Informative attributes of a `cim.vector`: the ONNX attributes (``kernel_shape``
    renamed ``kernel``; pooling ``auto_pad`` made explicit ``pads``), small constant
    inputs (``axes``, ``shape``, ...), and the table of a constant-data Gather."""
    attrs: dict[str, Attribute] = {}
    for attr in node.attribute:
        value = _attr_value(attr)
        if value is not None:
            attrs["kernel" if attr.name == "kernel_shape" else attr.name] = value
    for index, attr_name in CONST_INPUT_ATTRS.get(node.op_type, {}).items():
        if index < len(node.input) and node.input[index] in ctx.consts:
            value = _const_attr(ctx, node.input[index])
            if value is not None:
                attrs.setdefault(attr_name, value)
                dims = list(ctx.data[node.input[index]].dims)
                if isinstance(value, DenseArrayBase) and len(dims) > 1:
                    attrs.setdefault(f"{attr_name}_shape", array_prop(dims))
    if node.op_type in VARIANT_OF:
        attrs["variant"] = StringAttr(VARIANT_OF[node.op_type])
    if node.op_type == "GlobalMaxPool" and in_shape:
        attrs["axes"] = array_prop(list(range(2, len(in_shape))))
    if node.op_type.startswith("Gather") and node.input and node.input[0] in ctx.consts:
        attrs["table"] = StringAttr(ctx.consts[node.input[0]])
    auto_pad = _get_attr(node, "auto_pad", b"NOTSET")
    if "kernel" in attrs and auto_pad not in (b"NOTSET", "NOTSET") and in_shape:
        kernel = _get_attr(node, "kernel_shape", [])
        rank = len(kernel)
        strides = _get_attr(node, "strides", [1] * rank)
        dil = _get_attr(node, "dilations", [1] * rank)
        attrs["pads"] = array_prop(
            _explicit_pads(auto_pad, in_shape[-rank:], kernel, strides, dil, [0] * 2 * rank)
        )
        del attrs["auto_pad"]
    return dict(sorted(attrs.items()))


def _explicit_pads(auto_pad, spatial: Sequence[int], kernel: Sequence[int],
                   strides: Sequence[int], dilations: Sequence[int],
                   pads: Sequence[int]) -> list[int]:
    """ONNX Conv/Pool ``auto_pad`` -> explicit ``[begin..., end...]`` pads.

    SAME_UPPER/SAME_LOWER: output = ceil(in / stride); total padding
    ``max(0, (out-1)*stride + (k-1)*dilation + 1 - in)``, the odd extra pixel at the end
    (UPPER) or the beginning (LOWER).  VALID: no padding.  NOTSET: ``pads`` as given.
    """
    mode = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    rank = len(spatial)
    if mode == "VALID":
        return [0] * (2 * rank)
    if mode not in ("SAME_UPPER", "SAME_LOWER"):
        return list(pads) if pads else [0] * (2 * rank)
    begins, ends = [], []
    for size, k, s, d in zip(spatial, kernel, strides, dilations):
        out = -(-size // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
        small, large = total // 2, total - total // 2
        begins.append(small if mode == "SAME_UPPER" else large)
        ends.append(large if mode == "SAME_UPPER" else small)
    return begins + ends


# --------------------------------------------------------------------------- emission


def _emit(ctx: _Ctx, op: Operation, names: Sequence[str]) -> Operation:
    """Append ``op``, name its results after ``names`` and register them."""
    ctx.ops.append(op)
    for result, onnx_name in zip(op.results, names):
        _name(result, onnx_name)
        ctx.values[onnx_name] = result
    return op


def _activation(ctx: _Ctx, name: str, label: str) -> SSAValue:
    value = ctx.values.get(name)
    if value is None:
        raise CMSwitchError(f"{ctx.label}: node '{label}' input '{name}' has no value")
    return value


def _helper_value(ctx: _Ctx, kind: str, x: SSAValue, shape: Sequence[int], hint: str,
                  attrs: dict[str, Attribute] | None = None) -> SSAValue:
    """Emit an importer-inserted `cim.vector` (transpose / reshape) of ``x``."""
    assert isinstance(x.type, TensorType)
    op = VectorOp(kind, [x], [TensorType(x.type.element_type, list(shape))], attrs)
    ctx.ops.append(op)
    return _name(op.results[0], hint)


def _swap_last_two(ctx: _Ctx, x: SSAValue, hint: str) -> SSAValue:
    """``transpose`` of the last two axes of ``x`` (rank >= 2)."""
    shape = list(x.type.get_shape())  # type: ignore[union-attr]
    perm = list(range(len(shape)))
    perm[-2], perm[-1] = perm[-1], perm[-2]
    return _helper_value(ctx, "transpose", x, [shape[p] for p in perm], hint,
                         {"perm": array_prop(perm)})


def _reshaped(ctx: _Ctx, x: SSAValue, shape: Sequence[int], hint: str) -> SSAValue:
    """``x`` reshaped to ``shape`` (no op when it already has that shape)."""
    if tuple(x.type.get_shape()) == tuple(shape):  # type: ignore[union-attr]
        return x
    return _helper_value(ctx, "reshape", x, shape, hint)


def _lower_conv(node: onnx.NodeProto, ctx: _Ctx, label: str) -> None:
    """ONNX Conv -> `cim.conv2d` (2-D only; the weight must be constant, the bias B is
    folded).  Defaults per spec: group 1, strides/dilations 1, pads 0, kernel_shape
    from the weight.  Raises CMSwitchError for non-2-D or dynamic-weight convolutions
    a non-constant bias, or an output shape that disagrees with shape inference."""
    x_name, w_name = node.input[0], node.input[1]
    if w_name in ctx.values and w_name not in ctx.consts:
        raise CMSwitchError(
            f"{ctx.label}: Conv node '{label}': weight '{w_name}' is computed at run time "
            "or a graph input; only constant (initializer) weights are supported"
        )
    if x_name in ctx.consts or w_name not in ctx.consts:
        raise CMSwitchError(
            f"{ctx.label}: Conv node '{label}' needs an activation input and a constant "
            "weight"
        )
    if len(node.input) > 2 and node.input[2] and node.input[2] not in ctx.consts:
        raise CMSwitchError(
            f"{ctx.label}: Conv node '{label}' has a non-constant bias '{node.input[2]}'"
        )
    x = _activation(ctx, x_name, label)
    out_type = _tensor_type(ctx, node.output[0], f"output of node '{label}'")
    x_shape = x.type.get_shape()  # type: ignore[union-attr]
    w_shape = _static_shape(ctx, w_name, f"weight of node '{label}'")
    if len(x_shape) == 3 and len(w_shape) == 3:
        _lower_conv1d(node, ctx, label, x, out_type)
        return
    if len(x_shape) != 4 or len(w_shape) != 4:
        raise CMSwitchError(
            f"{ctx.label}: Conv node '{label}' is {len(x_shape) - 2}-D (input rank "
            f"{len(x_shape)}); only 1-D and 2-D convolutions are supported"
        )
    kernel = list(_get_attr(node, "kernel_shape", w_shape[2:]))
    strides = list(_get_attr(node, "strides", [1, 1]))
    dilations = list(_get_attr(node, "dilations", [1, 1]))
    pads = _explicit_pads(_get_attr(node, "auto_pad", b"NOTSET"), x_shape[2:], kernel,
                          strides, dilations, list(_get_attr(node, "pads", [0] * 4)))
    group = int(_get_attr(node, "group", 1))
    expect = [conv_output_size(x_shape[2 + a], kernel[a], strides[a], pads[a], pads[a + 2],
                               dilations[a]) for a in range(2)]
    if list(out_type.get_shape()[2:]) != expect:
        raise CMSwitchError(
            f"{ctx.label}: Conv node '{label}': output {list(out_type.get_shape())} "
            f"disagrees with spatial size {expect} from kernel/strides/pads/dilations"
        )
    op = Conv2dOp(x, out_type, ctx.consts[w_name], kernel, strides, pads, dilations, group)
    _emit(ctx, op, [node.output[0]])


def _lower_conv1d(node: onnx.NodeProto, ctx: _Ctx, label: str, x: SSAValue,
                  out_type: TensorType) -> None:
    """A 1-D Conv (input ``N x C x L``, weight ``M x C/g x k``) as a `cim.conv2d` of
    height 1: input reshaped to ``N x C x 1 x L``, kernel ``1 x k``, strides,
    dilations and pads ``1 / 0`` on the added axis; output ``N x M x 1 x L'`` reshaped
    back.  The im2col matrix is the 1-D one (``K = C/g * k``), so the weight's
    ``M x C/g x k`` data is the same matrix."""
    n, c, length = x.type.get_shape()  # type: ignore[union-attr]
    w_shape = _static_shape(ctx, node.input[1], f"weight of node '{label}'")
    k = int(_get_attr(node, "kernel_shape", w_shape[2:])[0])
    stride = int(_get_attr(node, "strides", [1])[0])
    dilation = int(_get_attr(node, "dilations", [1])[0])
    begin, end = _explicit_pads(_get_attr(node, "auto_pad", b"NOTSET"), [length], [k],
                                [stride], [dilation], list(_get_attr(node, "pads", [0, 0])))
    out_shape = list(out_type.get_shape())
    if out_shape[2] != conv_output_size(length, k, stride, begin, end, dilation):
        raise CMSwitchError(
            f"{ctx.label}: Conv node '{label}': output {out_shape} disagrees with the "
            "length from kernel/strides/pads/dilations")
    x2 = _reshaped(ctx, x, [n, c, 1, length], f"{node.input[0]}_2d")
    y2 = TensorType(out_type.element_type, [out_shape[0], out_shape[1], 1, out_shape[2]])
    op = Conv2dOp(x2, y2, ctx.consts[node.input[1]], [1, k], [1, stride],
                  [0, begin, 0, end], [1, dilation], int(_get_attr(node, "group", 1)))
    _emit(ctx, op, [f"{node.output[0]}_2d"])
    ctx.values[node.output[0]] = _reshaped(ctx, op.results[0], out_shape, node.output[0])


def _lower_product(node: onnx.NodeProto, ctx: _Ctx, label: str, trans_a: bool,
                   trans_b: bool) -> None:
    """``Y = op(A) @ op(B) (+ C)`` for Gemm and MatMul (numpy.matmul semantics).

    * B constant: `cim.matmul` of ``op(A)`` (a ``transpose`` is emitted for transA),
      weight = B's origin; a 1-D B or a result needing re-broadcast gets a ``reshape``.
    * A constant, B activation: ``Yᵀ = op(B)ᵀ @ op(A)ᵀ``, i.e. a matmul on the
      transposed activation followed by a ``transpose`` back.
    * both activations: `cim.dyn_matmul` (1-D operands reshaped to 2-D first).
    * Gemm's C: a constant C sets the ``bias`` unit attribute on the matrix op; an
      activation C becomes a following ``add``.
    Raises CMSwitchError for a constant left operand that is a batch of matrices (a
    constant right one arrives split into 2-D weights by `cmswitch.frontend.decompose`).
    """
    out_name = node.output[0]
    out_type = _tensor_type(ctx, out_name, f"output of node '{label}'")
    c_name = node.input[2] if len(node.input) > 2 else ""
    dyn_bias = bool(c_name) and c_name not in ctx.consts
    prod_name = f"{out_name}_mm" if dyn_bias else out_name
    a_const, b_const = node.input[0] in ctx.consts, node.input[1] in ctx.consts
    if not a_const and not b_const:
        op = _lower_dyn(node, ctx, label, trans_a, trans_b, out_type, prod_name)
    else:
        op = _lower_weight_product(node, ctx, label, trans_a, trans_b, out_type, prod_name)
    if c_name and not dyn_bias:
        op.attributes["bias"] = UnitAttr()
    if dyn_bias:
        c = _activation(ctx, c_name, label)
        _emit(ctx, VectorOp("add", [ctx.values[prod_name], c], [out_type]), [out_name])


def _lower_weight_product(node: onnx.NodeProto, ctx: _Ctx, label: str, trans_a: bool,
                          trans_b: bool, out_type: TensorType, out_name: str
                          ) -> Operation:
    """One constant operand: emit `cim.matmul` (plus helper transposes/reshapes) whose
    final value is registered as ``out_name``; returns the `cim.matmul`."""
    a_name, b_name = node.input[0], node.input[1]
    b_const = b_name in ctx.consts
    const_name = b_name if b_const else a_name
    w_shape = _static_shape(ctx, const_name, f"weight of node '{label}'")
    if len(w_shape) > 2 and any(d != 1 for d in w_shape[:-2]):
        raise CMSwitchError(
            f"{ctx.label}: {node.op_type} node '{label}': constant operand '{const_name}' "
            f"of shape {list(w_shape)} is a batch of matrices; only a MatMul's right "
            "operand may be one (a constant left operand must be 2-D)"
        )
    weight = ctx.consts[const_name]
    elem = out_type.element_type
    out_shape = list(out_type.get_shape())
    if b_const:
        x = _activation(ctx, a_name, label)
        if trans_a:
            x = _swap_last_two(ctx, x, f"{a_name}_T")
        n = 1 if len(w_shape) == 1 else (w_shape[-2] if trans_b else w_shape[-1])
        mm_shape = [*x.type.get_shape()[:-1], n]  # type: ignore[union-attr]
        mm_name = out_name if mm_shape == out_shape else f"{out_name}_mm"
        op = _emit(ctx, MatmulOp(x, TensorType(elem, mm_shape), weight), [mm_name])
        ctx.values[out_name] = _reshaped(ctx, op.results[0], out_shape, out_name)
        return op
    # constant left operand: Y^T = op(B)^T @ op(A)^T
    x = _activation(ctx, b_name, label)
    x_shape = list(x.type.get_shape())  # type: ignore[union-attr]
    if len(x_shape) == 1:  # MatMul(W, v): v is already the row vector op(B)^T
        xt = _reshaped(ctx, x, [1, *x_shape], f"{b_name}_row")
    else:
        xt = x if trans_b else _swap_last_two(ctx, x, f"{b_name}_T")
    m = w_shape[-1] if trans_a else (w_shape[-2] if len(w_shape) > 1 else 1)
    yt_shape = [*xt.type.get_shape()[:-1], m]  # type: ignore[union-attr]
    op = _emit(ctx, MatmulOp(xt, TensorType(elem, yt_shape), weight), [f"{out_name}_T"])
    y = op.results[0] if len(x_shape) == 1 else _swap_last_two(ctx, op.results[0], out_name)
    ctx.values[out_name] = _reshaped(ctx, y, out_shape, out_name)
    return op


def _lower_dyn(node: onnx.NodeProto, ctx: _Ctx, label: str, trans_a: bool,
               trans_b: bool, out_type: TensorType, out_name: str) -> Operation:
    """Both operands are activations: `cim.dyn_matmul` ``(..., M, K) x (..., K, N)``
    with numpy-broadcast leading dims; 1-D operands are reshaped to ``1 x K`` / ``K x 1``
    and the result reshaped back.  Returns the `cim.dyn_matmul`."""
    lhs = _activation(ctx, node.input[0], label)
    rhs = _activation(ctx, node.input[1], label)
    if trans_a:
        lhs = _swap_last_two(ctx, lhs, f"{node.input[0]}_T")
    if trans_b:
        rhs = _swap_last_two(ctx, rhs, f"{node.input[1]}_T")
    lhs_shape = list(lhs.type.get_shape())  # type: ignore[union-attr]
    rhs_shape = list(rhs.type.get_shape())  # type: ignore[union-attr]
    if len(lhs_shape) == 1:
        lhs = _reshaped(ctx, lhs, [1, *lhs_shape], f"{node.input[0]}_2d")
    if len(rhs_shape) == 1:
        rhs = _reshaped(ctx, rhs, [*rhs_shape, 1], f"{node.input[1]}_2d")
    a, b = list(lhs.type.get_shape()), list(rhs.type.get_shape())  # type: ignore[union-attr]
    lead_a, lead_b = a[:-2], b[:-2]
    width = max(len(lead_a), len(lead_b))
    lead_a = [1] * (width - len(lead_a)) + lead_a
    lead_b = [1] * (width - len(lead_b)) + lead_b
    lead = [max(p, q) for p, q in zip(lead_a, lead_b)]
    dm_shape = [*lead, a[-2], b[-1]]
    out_shape = list(out_type.get_shape())
    dm_name = out_name if dm_shape == out_shape else f"{out_name}_mm"
    op = _emit(ctx, DynMatmulOp(lhs, rhs, TensorType(out_type.element_type, dm_shape)),
               [dm_name])
    ctx.values[out_name] = _reshaped(ctx, op.results[0], out_shape, out_name)
    return op


def _lower_vector(node: onnx.NodeProto, ctx: _Ctx, label: str) -> None:
    """Any other operator -> `cim.vector` over its activation inputs; constant inputs
    are folded away (small ones recorded as attributes)."""
    inputs = [_activation(ctx, n, label) for n in node.input if n and n not in ctx.consts]
    outs = [o for o in node.output if o]
    types = [_tensor_type(ctx, o, f"output of node '{label}'") for o in outs]
    in_shape = inputs[0].type.get_shape() if inputs else None  # type: ignore[union-attr]
    attrs = _vector_attrs(node, ctx, in_shape)
    recorded = CONST_INPUT_ATTRS.get(node.op_type, {})
    ignored = CONST_INPUTS_IGNORED.get(node.op_type, frozenset())
    carried = [(i, n) for i, n in enumerate(node.input)
               if n and n in ctx.consts and i not in ignored
               and not (i in recorded and recorded[i] in attrs)
               and not (i == 0 and "table" in attrs)]
    if carried:
        attrs[CONST_SLOTS_ATTR] = array_prop([i for i, _ in carried])
        attrs[CONST_NAMES_ATTR] = ArrayAttr([StringAttr(n) for _, n in carried])
    slots = [i for i, n in enumerate(node.input) if n and n not in ctx.consts]
    if slots != list(range(len(slots))):
        attrs[SLOTS_ATTR] = array_prop(slots)
    op = VectorOp(VECTOR_OP_KINDS[node.op_type], inputs, types, attrs)
    _emit(ctx, op, outs)


def _lower_conv_transpose(node: onnx.NodeProto, ctx: _Ctx, label: str) -> None:
    """A 2-D ConvTranspose (ONNX spec; group 1, constant weight ``Cin x Cout x kh x
    kw``) in the arrays as its *input-stationary* im2col view: every input pixel's
    ``Cin`` vector times the weight matrix ``Cin x (Cout*kh*kw)`` gives that pixel's
    contributions to a ``kh x kw`` patch of every output channel — a `cim.matmul`
    with ``M = N*H*W``, ``K = Cin``, ``N = Cout*kh*kw`` on the channels-last input —
    and a `cim.vector` ``col2im`` adds the overlapping patches into the output
    (``y[n, c, h*s + i*d - pad, w*s + j*d - pad] += cols[n, h, w, c, i, j]``, plus the
    constant bias, carried as its operand).  1-D and grouped ones arrive rewritten
    into this form (`cmswitch.frontend.decompose`).  Raises CMSwitchError for a
    run-time weight or bias, groups left, or a rank other than 2-D."""
    x_name, w_name = node.input[0], node.input[1]
    if w_name not in ctx.consts or x_name in ctx.consts:
        raise CMSwitchError(f"{ctx.label}: ConvTranspose node '{label}' needs an activation "
                            "input and a constant weight")
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else ""
    if bias and bias not in ctx.consts:
        raise CMSwitchError(f"{ctx.label}: ConvTranspose node '{label}' has a non-constant "
                            f"bias '{bias}'")
    if int(_get_attr(node, "group", 1)) != 1:
        raise CMSwitchError(f"{ctx.label}: ConvTranspose node '{label}' has groups; only "
                            "group 1 is supported")
    x = _activation(ctx, x_name, label)
    shape = list(x.type.get_shape())  # type: ignore[union-attr]
    w_shape = _static_shape(ctx, w_name, f"weight of node '{label}'")
    if len(shape) != 4 or len(w_shape) != 4:
        raise CMSwitchError(f"{ctx.label}: ConvTranspose node '{label}' is "
                            f"{len(shape) - 2}-D; only 1-D and 2-D transposed convolutions "
                            "are supported")
    out_type = _tensor_type(ctx, node.output[0], f"output of node '{label}'")
    n, cin, h, w = shape
    cout, kh, kw = w_shape[1], w_shape[2], w_shape[3]
    strides = list(_get_attr(node, "strides", [1, 1]))
    dilations = list(_get_attr(node, "dilations", [1, 1]))
    out_hw = list(out_type.get_shape()[2:])
    pads = list(_get_attr(node, "pads", [0, 0, 0, 0]))
    auto_pad = _get_attr(node, "auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    if auto_pad != "NOTSET" or _get_attr(node, "output_shape", None) is not None:
        # ONNX: total padding = stride*(in-1) + output_padding + (k-1)*d + 1 - out;
        # SAME_UPPER begins with total//2, SAME_LOWER and an output_shape with
        # total - total//2 (onnx.reference's ConvTranspose)
        out_pad = list(_get_attr(node, "output_padding", [0, 0]))
        totals = [strides[a] * ([h, w][a] - 1) + out_pad[a] + ([kh, kw][a] - 1) * dilations[a]
                  + 1 - out_hw[a] for a in range(2)]
        upper = auto_pad == "SAME_UPPER"
        begins = [t // 2 if upper else t - t // 2 for t in totals]
        pads = begins + [t - b for t, b in zip(totals, begins)]
    xt = _helper_value(ctx, "transpose", x, [n, h, w, cin], f"{x_name}_nhwc",
                       {"perm": array_prop([0, 2, 3, 1])})
    cols = _emit(ctx, MatmulOp(xt, TensorType(out_type.element_type, [n, h, w, cout * kh * kw]),
                               ctx.consts[w_name]), [f"{node.output[0]}_cols"])
    attrs: dict[str, Attribute] = {
        "kernel": array_prop([kh, kw]), "strides": array_prop(strides),
        "pads": array_prop(pads), "dilations": array_prop(dilations)}
    if bias:
        attrs[CONST_SLOTS_ATTR] = array_prop([1])
        attrs[CONST_NAMES_ATTR] = ArrayAttr([StringAttr(bias)])
    _emit(ctx, VectorOp("col2im", [cols.results[0]], [out_type], attrs), [node.output[0]])


def _lower_gemm(node: onnx.NodeProto, ctx: _Ctx, label: str) -> None:
    """Gemm ``Y = alpha * op(A) @ op(B) + beta * C`` (ONNX spec).  ``beta = 0`` drops
    C.  With a constant operand, ``alpha`` scales the stored weight and ``beta`` the
    constant bias: the matrix op records both (attributes ``alpha`` / ``beta``, read
    by functional mode with the weights); the cost is the unscaled product's.
    ``alpha != 1`` on a product of two activations and ``beta != 1`` on an activation C
    arrive rewritten into multiplies (`cmswitch.frontend.decompose`); CMSwitchError
    if one is left."""
    alpha = float(_get_attr(node, "alpha", 1.0))
    beta = float(_get_attr(node, "beta", 1.0))
    if len(node.input) > 2 and node.input[2] and beta == 0.0:
        trimmed = onnx.NodeProto()
        trimmed.CopyFrom(node)
        del trimmed.input[2:]
        node = trimmed
    has_c = len(node.input) > 2 and bool(node.input[2])
    weighted = node.input[0] in ctx.consts or node.input[1] in ctx.consts
    scaled_c = has_c and beta != 1.0
    if (alpha != 1.0 or scaled_c) and not weighted:
        raise CMSwitchError(f"{ctx.label}: Gemm node '{label}': alpha={alpha:g}, "
                            f"beta={beta:g} on a product of two activations is not supported")
    if scaled_c and node.input[2] not in ctx.consts:
        raise CMSwitchError(f"{ctx.label}: Gemm node '{label}': beta={beta:g} on an "
                            "activation C is not supported")
    mark = len(ctx.ops)
    _lower_product(node, ctx, label, bool(_get_attr(node, "transA", 0)),
                   bool(_get_attr(node, "transB", 0)))
    if alpha == 1.0 and not scaled_c:
        return
    matrix = next(op for op in ctx.ops[mark:] if isinstance(op, MatmulOp))
    matrix.attributes["alpha"] = FloatAttr(alpha, f32)
    if scaled_c:
        matrix.attributes["beta"] = FloatAttr(beta, f32)


def _lower_node(node: onnx.NodeProto, ctx: _Ctx, label: str) -> None:
    """Dispatch one non-constant node."""
    if node.op_type == "Conv":
        _lower_conv(node, ctx, label)
        return
    if node.op_type == "Gemm":
        _lower_gemm(node, ctx, label)
        return
    if node.op_type == "ConvTranspose":
        _lower_conv_transpose(node, ctx, label)
        return
    if node.op_type == "MatMul":
        _lower_product(node, ctx, label, False, False)
        return
    if node.op_type == "Dropout" and len(node.input) > 2 and node.input[2]:
        flag = node.input[2]
        value = _const_attr(ctx, flag) if flag in ctx.consts else None
        if not isinstance(value, IntegerAttr) or value.value.data:
            raise CMSwitchError(f"{ctx.label}: Dropout node '{label}' may run in training "
                                "mode (training_mode is not a constant false); export the "
                                "model for inference")
    if node.op_type == "BatchNormalization" and _get_attr(node, "training_mode", 0):
        raise CMSwitchError(f"{ctx.label}: BatchNormalization node '{label}' is in training "
                            "mode (running statistics as outputs); export the model for "
                            "inference")
    _lower_vector(node, ctx, label)


# --------------------------------------------------------------------------- entry


_VIEWS = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")
"""Operators that only reinterpret their input's elements: same element count."""


def _check_single_assignment(graph: onnx.GraphProto, label: str) -> None:
    """Each tensor has one producer (a node, a graph input or an initializer), as
    ONNX requires (IR spec: "single static assignment").  Raises CMSwitchError."""
    seen = {vi.name: "a graph input" for vi in graph.input}
    seen.update({t.name: "an initializer" for t in graph.initializer})
    for index, node in enumerate(graph.node):
        for out in node.output:
            if not out:
                continue
            if out in seen:
                raise CMSwitchError(f"{label}: tensor '{out}' is produced twice: by "
                                    f"{seen[out]} and by node '{node_name(node, index)}'")
            seen[out] = f"node '{node_name(node, index)}'"


def _check_view(ctx: _Ctx, node: onnx.NodeProto, where: str) -> None:
    """A Reshape / Flatten / Squeeze / Unsqueeze keeps its input's element count
    (shape inference takes a constant target shape as given).  Raises CMSwitchError."""
    if len(node.input) < 1 or len(node.output) < 1:
        return
    x, y = _static_shape(ctx, node.input[0], where), _static_shape(ctx, node.output[0], where)
    if math.prod(x) != math.prod(y):
        raise CMSwitchError(f"{ctx.label}: {where}: {node.op_type} of {list(x)} "
                            f"({math.prod(x)} elements) to {list(y)} ({math.prod(y)} elements)")


def prepare_model(model: onnx.ModelProto, label: str,
                  bindings: tuple[dict[str, int], int | None, int | None] | None = None
                  ) -> onnx.ModelProto:
    """The graph the importer lowers, from a decoded model: upgraded to `MIN_OPSET`
    (`_upgrade_opset`), model-local functions inlined, BatchNormalization and zero Pad
    folded (`cmswitch.frontend.rewrites.fold_for_inference`), dynamic dims bound by
    ``bindings`` = ``(dims, batch, seq)`` (`_bind_dims`; None: left as they are), then
    fused Attention,
    1-D / grouped ConvTranspose and MatMuls against a constant batch of matrices
    rewritten into mapped operators (`cmswitch.frontend.decompose`, which needs the
    shapes it reads static).  Functional mode reads its weights from the same graph.
    Raises CMSwitchError as those steps do, or if the functions cannot be inlined."""
    from cmswitch.frontend.decompose import decompose
    from cmswitch.frontend.rewrites import fold_for_inference

    model = _upgrade_opset(model, label)
    if model.functions:
        try:
            model = onnx.inliner.inline_local_functions(model)
        except Exception as exc:
            raise CMSwitchError(f"{label}: cannot inline local functions: {_one_line(exc)}") from None
    model = fold_for_inference(model)
    if bindings is not None:
        _bind_dims(model, bindings[0], label, bindings[1], bindings[2])
    return decompose(model, label)


def import_onnx(source: str | bytes | os.PathLike, dims: dict[str, int] | None = None,
                name: str | None = None, *, filename: str | None = None,
                batch: int | None = None, seq: int | None = None) -> ModuleOp:
    """Import an ONNX model as ``builtin.module attributes {cim.model = "<name>"}``
    holding ``func.func @main(inputs...) -> (outputs...)`` in the `cim` dialect.

    source:   a path, or the raw bytes of a model (external weight data is not read).
    dims:     values for symbolic input dims by name, e.g. ``{"batch": 1}``.
    batch:    value for the dynamic axis-0 dim of the inputs; seq: for "seq*" dims.
    name:     the model name (default: the file stem, else the graph name).
    filename: label for error messages when ``source`` is bytes.

    Raises CMSwitchError (one line, naming the file, node or tensor) for: unreadable /
    non-ONNX / truncated input, an opset newer than onnx knows or too old to convert,
    an unbound symbolic input dim, failed shape inference,
    an unsupported operator, a tensor whose shape cannot be determined, a zero-size
    tensor, or an element type without an xDSL counterpart.
    """
    is_bytes = isinstance(source, (bytes, bytearray, memoryview))
    label = (filename or name or "<bytes>") if is_bytes else os.fspath(source)
    label = str(label)
    model = prepare_model(_read_model(source, label), label, (dims or {}, batch, seq))
    graph = model.graph
    model_name = name or (None if is_bytes else Path(label).stem) or graph.name or "model"
    ctx = _Ctx(label=label, opset=_default_opset(model))
    _check_single_assignment(graph, label)
    folded = _classify(graph, ctx)
    model = _infer(model, label)
    graph = model.graph
    _collect_types(model, ctx)

    inits = {t.name for t in graph.initializer}
    arg_names = [vi.name for vi in graph.input if vi.name not in inits]
    arg_types = [_tensor_type(ctx, n, f"graph input '{n}'") for n in arg_names]
    block = Block(arg_types=arg_types)
    for arg, arg_name in zip(block.args, arg_names):
        ctx.values[arg_name] = _name(arg, arg_name)

    for index, node in enumerate(graph.node):
        if folded[index]:
            continue
        if node.op_type in _VIEWS and node.domain in DEFAULT_DOMAINS:
            _check_view(ctx, node, _node_label(node, index))
        mark = len(ctx.ops)
        _lower_node(node, ctx, _node_label(node, index))
        name = StringAttr(node_name(node, index))
        for op in ctx.ops[mark:]:
            op.attributes.setdefault(NODE_ATTR, name)

    results = [ctx.values[out.name] for out in graph.output]
    block.add_ops(ctx.ops)
    block.add_op(func.ReturnOp(*results))
    fn = func.FuncOp("main", (arg_types, [r.type for r in results]), Region(block))
    module = ModuleOp([fn], attributes={"cim.model": StringAttr(model_name)})
    try:
        module.verify()
    except VerifyException as exc:
        raise CMSwitchError(f"{label}: imported IR does not verify: {_one_line(exc)}") from None
    return module


def load_model(path: str | os.PathLike, dims: dict[str, int] | None = None) -> ModuleOp:
    """`import_onnx` of a model file; the model name is the file stem."""
    return import_onnx(path, dims=dims)
