"""The `cim` dialect: the graph-level vocabulary of CMSwitch.

Operations act on tensors (NCHW for convolutions, row-major ``(..., features)`` for
matrix ops).  Three families, following DESIGN.md §2:

* weight-stationary matrix ops (`cim.conv2d`, `cim.matmul`): the weight is a constant
  that lives in compute-mode arrays; each op knows its im2col weight matrix ``K x N`` and
  its number of input vectors ``M``;
* dynamic matrix ops (`cim.dyn_matmul`): both operands are activations (attention
  ``Q·Kᵀ`` and ``P·V``); one operand is written into arrays at run time;
* `cim.vector`: everything the digital unit does (elementwise, activation, softmax,
  normalization, pooling, partial-sum accumulation) and pure data movement (reshape,
  transpose, concat, slice, gather, ...).

`cim.segment` groups the operators of one network segment (produced by `cim-segment`)
and carries the array allocation once `cim-allocate` has run.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import prod

from xdsl.dialects.builtin import (
    I64,
    DenseArrayBase,
    DictionaryAttr,
    FloatAttr,
    IntegerAttr,
    StringAttr,
    TensorType,
    f64,
    i64,
)
from xdsl.ir import Attribute, Dialect, Operation, Region, SSAValue
from xdsl.irdl import (
    IRDLOperation,
    ParsePropInAttrDict,
    irdl_op_definition,
    operand_def,
    opt_prop_def,
    prop_def,
    region_def,
    result_def,
    traits_def,
    var_operand_def,
    var_result_def,
)
from xdsl.traits import HasParent, IsTerminator
from xdsl.utils.exceptions import VerifyException

#: Vector-op kinds and their class: "compute" kinds occupy the digital unit (one or a
#: few operations per element), "movement" kinds only move or re-address data.
VECTOR_KINDS: dict[str, str] = {
    **{
        k: "compute"
        for k in (
            "add", "sub", "mul", "div", "neg", "pow", "sqrt", "reciprocal", "exp",
            "erf", "tanh", "sigmoid", "relu", "clip", "gelu", "silu", "cos", "sin",
            "where", "isnan", "not", "equal", "less", "greater", "and", "or", "cast",
            "max", "min",
            "softmax", "layernorm", "rmsnorm", "reduce_mean", "reduce_sum", "reduce_max",
            "maxpool", "avgpool", "global_avgpool", "psum_add",
            "batchnorm", "instance_norm", "lrn", "leaky_relu", "prelu", "elu", "selu",
            "celu", "softplus", "softsign", "abs", "hard_sigmoid", "hard_swish",
            "log_softmax", "log", "sum", "mean", "group_norm", "resize", "col2im",
        )
    },
    **{
        k: "movement"
        for k in (
            "reshape", "transpose", "concat", "split", "slice", "gather", "expand",
            "squeeze", "unsqueeze", "flatten", "identity", "range", "shape", "pad", "tile",
        )
    },
}


NODE_ATTR = "onnx_node"
"""Informative attribute of every op the ONNX importer emits: the name of the node it
comes from (``<OpType>_<index>`` for an anonymous node,
`cmswitch.frontend.onnx_util.node_name`); `cim-partition` keeps it on the pieces and
reports show it beside the flow name (`cmswitch.api.Plan`)."""


# ----------------------------------------------------------------------------------
# Annotations: the attributes the passes leave on the module and on `cim.segment` ops.
# The IR contract between passes lives here, so passes, the printer and the baselines
# read and write the same names without importing one another.

ARCH_ATTR = "cim.arch"
"""Module attribute: the hardware.  A string naming a preset or a description file, or
the description itself, a dictionary of its fields (``{name = "dynaplasia.arrays-48",
arrays = 48 : i64, ...}``) for hardware built in Python (`cmswitch.api.compile(arch=
Arch)`, sweeps).  Read with `module_hardware`, written with `hardware_attr`."""

HOLD_ATTR = "hold"
"""Unit attribute on a `cim.segment` (`cim-segment`): the tensors it passes only to the
next segment stay on chip across the boundary instead of going through DRAM."""

PRELOADED_ATTR = "preloaded"
"""Integer attribute on a `cim.segment` (`cim-segment`): its first N weight ops are
loaded while the previous segment runs, in arrays that segment leaves unused (§9.1)."""

COMPUTE_ONLY_ATTR = "compute_only"
"""Unit attribute on a `cim.segment` (`cim-segment`): allocate it without memory-mode
arrays."""

POOL_ATTR = "pool"
"""Segment attribute ``array<i64: lo, hi>`` (`cim-allocate`): the memory-mode arrays its
streamed tensors are striped over."""

HOLD_RANGE_ATTR = "hold_arrays"
"""Segment attribute ``array<i64: lo, hi>`` (`cim-allocate`): the memory-mode arrays
holding the tensors it keeps on chip for the next segment (§9.3)."""

PLACES_ATTR = "places"
"""Segment attribute (`cim-allocate`): tensor name -> "pool" | "gb" | "dram" |
"hold_in" | "hold_out" | "stream", where the segment's flow keeps each tensor it
touches ("stream": handed from its writer to the vector op reading it, DESIGN.md
§9.13)."""

SWITCH_ATTR = "switch_cycles"
"""Segment attribute (`cim-allocate`): cycles of its `CM.switch` statements, part of
its prediction."""


def hardware_attr(hardware: str | dict) -> StringAttr | DictionaryAttr:
    """The `ARCH_ATTR` value for a preset name / file path, or for a description's
    fields (str, int or float values, as `cmswitch.arch.Arch.header_fields` gives)."""
    if isinstance(hardware, str):
        return StringAttr(hardware)
    fields: dict[str, Attribute] = {}
    for key, value in hardware.items():
        if isinstance(value, str):
            fields[key] = StringAttr(value)
        elif isinstance(value, int):
            fields[key] = IntegerAttr(value, i64)
        else:
            fields[key] = FloatAttr(value, f64)
    return DictionaryAttr(fields)


def module_hardware(module: Operation) -> str | dict | None:
    """What `ARCH_ATTR` records on `module`: the preset name or file path (a string),
    the inline description's fields (a dict), or None.  Raises VerifyException for an
    attribute of another kind or an inline field that is not a string or number."""
    value = module.attributes.get(ARCH_ATTR)
    if value is None:
        return None
    if isinstance(value, StringAttr):
        return value.data or None
    if not isinstance(value, DictionaryAttr):
        raise VerifyException(f"{ARCH_ATTR} must be a preset name, a file path or a "
                              f"dictionary of hardware fields, not {value}")
    fields: dict = {}
    for key, item in value.data.items():
        if isinstance(item, StringAttr):
            fields[key] = item.data
        elif isinstance(item, (IntegerAttr, FloatAttr)):
            fields[key] = item.value.data
        else:
            raise VerifyException(f"{ARCH_ATTR}: field '{key}' of an inline hardware "
                                  "description must be a string, integer or float")
    return fields


def int_prop(value: int) -> IntegerAttr:
    """An i64 property value."""
    return IntegerAttr(value, i64)


def array_prop(values: Sequence[int]) -> DenseArrayBase:
    """An ``array<i64: ...>`` property value."""
    return DenseArrayBase.from_list(i64, list(values))


def tensor_shape(value: SSAValue | Attribute) -> tuple[int, ...]:
    """Static shape of a tensor value or type; raises VerifyException if not a tensor."""
    typ = value.type if isinstance(value, SSAValue) else value
    if not isinstance(typ, TensorType):
        raise VerifyException(f"expected a ranked tensor, got {typ}")
    return tuple(typ.get_shape())


def conv_output_size(size: int, kernel: int, stride: int, pad_begin: int,
                     pad_end: int, dilation: int) -> int:
    """Output extent of one spatial axis (ONNX Conv spec, explicit pads):
    ``floor((size + pad_begin + pad_end - dilation*(kernel-1) - 1) / stride) + 1``."""
    return (size + pad_begin + pad_end - dilation * (kernel - 1) - 1) // stride + 1


def _check_positive(name: str, values: Sequence[int], length: int) -> None:
    if len(values) != length:
        raise VerifyException(f"'{name}' must have {length} entries, got {len(values)}")
    if any(v <= 0 for v in values):
        raise VerifyException(f"'{name}' entries must be positive, got {list(values)}")


SHAPE_PRESERVING = frozenset({
    "neg", "sqrt", "reciprocal", "exp", "erf", "tanh", "sigmoid", "relu", "clip", "gelu",
    "silu", "cos", "sin", "isnan", "not", "cast", "softmax", "layernorm", "rmsnorm",
    "batchnorm", "instance_norm", "lrn", "leaky_relu", "prelu", "elu", "selu", "celu",
    "softplus", "softsign", "abs", "hard_sigmoid", "hard_swish", "log_softmax", "log",
    "group_norm", "identity"})
"""Vector kinds whose (first) result has the shape of their first input."""

BROADCASTING = frozenset({"add", "sub", "mul", "div", "pow", "max", "min", "equal", "less",
                          "greater", "and", "or", "where", "psum_add", "sum", "mean"})
"""Vector kinds whose operands broadcast (numpy rules) to their result."""

RESHAPING = frozenset({"reshape", "flatten", "squeeze", "unsqueeze"})
"""Vector kinds that keep the elements and change only the shape."""


def _check_vector_shapes(kind: str, ins: list[tuple[int, ...]],
                         outs: list[tuple[int, ...]]) -> None:
    """Raise VerifyException when a `cim.vector`'s result shape cannot be what its kind
    computes from its inputs: `SHAPE_PRESERVING` kinds keep the first input's shape,
    every operand of a `BROADCASTING` kind broadcasts to the result, `RESHAPING` kinds and
    ``transpose`` keep the element count, ``concat`` outputs the sum of its inputs'
    elements.  Kinds without an operand (constants folded in) are not checked."""
    if not ins:
        return
    out = outs[0]
    if kind in SHAPE_PRESERVING and out != ins[0]:
        raise VerifyException(f"'{kind}' keeps its input's shape {list(ins[0])}, but the "
                              f"result is {list(out)}")
    if kind in BROADCASTING:
        for x in ins:  # each operand broadcasts to the result (a folded constant may
            # have widened it, so the result may be larger than the operands' broadcast)
            fits = len(x) <= len(out) and all(
                d in (1, o) for d, o in zip(reversed(x), reversed(out)))
            if not fits:
                raise VerifyException(f"'{kind}' operand {list(x)} does not broadcast to "
                                      f"the result {list(out)}")
    if kind in RESHAPING | {"transpose"} and prod(out) != prod(ins[0]):
        raise VerifyException(f"'{kind}' keeps the {prod(ins[0])} elements of "
                              f"{list(ins[0])}, but the result {list(out)} has {prod(out)}")
    if kind == "concat" and prod(out) != sum(prod(x) for x in ins):
        raise VerifyException(f"'concat' of {[list(x) for x in ins]} has "
                              f"{sum(prod(x) for x in ins)} elements, but the result "
                              f"{list(out)} has {prod(out)}")


def _check_weight_slice(op: IRDLOperation, k: int, n: int) -> None:
    """`weight_slice = array<i64: k0, k1, n0, n1>`: the part of the parent weight matrix
    (im2col rows k0..k1, columns n0..n1) this operator holds after `cim-partition`."""
    ws = op.properties.get("weight_slice")
    if ws is None:
        return
    assert isinstance(ws, DenseArrayBase)
    vals = ws.get_values()
    if len(vals) != 4:
        raise VerifyException("'weight_slice' must be [k0, k1, n0, n1]")
    k0, k1, n0, n1 = vals
    if not (0 <= k0 < k1 and 0 <= n0 < n1):
        raise VerifyException(f"'weight_slice' {list(vals)} is not a non-empty range")
    if k1 - k0 != k or n1 - n0 != n:
        raise VerifyException(
            f"'weight_slice' {list(vals)} covers {k1 - k0}x{n1 - n0}, "
            f"but the operator's weight is {k}x{n}"
        )


@irdl_op_definition
class Conv2dOp(IRDLOperation):
    """2-D convolution with a constant weight, mapped by im2col.

    Input ``N x Cin x H x W``, output ``N x Cout x Ho x Wo``; weight
    ``Cout x Cin/groups x kh x kw``.  Per group the im2col weight matrix is
    ``K x N`` with ``K = Cin/groups * kh * kw`` and ``N = Cout/groups``; the op has
    ``M = N_batch * Ho * Wo`` input vectors (per group).  ``pads`` follow ONNX:
    ``[top, left, bottom, right]``.

    Example:
    ```mlir
    %y = cim.conv2d %x {weight = "conv1.weight", kernel = array<i64: 7, 7>,
           strides = array<i64: 2, 2>, pads = array<i64: 3, 3, 3, 3>,
           dilations = array<i64: 1, 1>, groups = 1 : i64}
           : tensor<1x3x224x224xf32> -> tensor<1x64x112x112xf32>
    ```
    """

    name = "cim.conv2d"

    input = operand_def(TensorType)
    output = result_def(TensorType)

    weight = prop_def(StringAttr)
    kernel = prop_def(DenseArrayBase[I64])
    strides = prop_def(DenseArrayBase[I64])
    pads = prop_def(DenseArrayBase[I64])
    dilations = prop_def(DenseArrayBase[I64])
    groups = prop_def(IntegerAttr[I64])
    weight_slice = opt_prop_def(DenseArrayBase[I64])

    irdl_options = (ParsePropInAttrDict(),)
    assembly_format = "$input attr-dict `:` type($input) `->` type($output)"

    def __init__(self, x: SSAValue, result_type: Attribute, weight: str,
                 kernel: Sequence[int], strides: Sequence[int], pads: Sequence[int],
                 dilations: Sequence[int], groups: int,
                 weight_slice: Sequence[int] | None = None):
        props: dict[str, Attribute] = {
            "weight": StringAttr(weight),
            "kernel": array_prop(kernel),
            "strides": array_prop(strides),
            "pads": array_prop(pads),
            "dilations": array_prop(dilations),
            "groups": int_prop(groups),
        }
        if weight_slice is not None:
            props["weight_slice"] = array_prop(weight_slice)
        super().__init__(operands=[x], result_types=[result_type], properties=props)

    @property
    def group_count(self) -> int:
        return self.groups.value.data

    def im2col_dims(self) -> tuple[int, int, int]:
        """``(M, K, N)`` of one group: input vectors, weight rows, weight columns."""
        n, cin, _, _ = tensor_shape(self.input)
        _, cout, ho, wo = tensor_shape(self.output)
        kh, kw = self.kernel.get_values()
        g = self.group_count
        return n * ho * wo, cin // g * kh * kw, cout // g

    def verify_(self) -> None:
        xs, ys = tensor_shape(self.input), tensor_shape(self.output)
        if len(xs) != 4 or len(ys) != 4:
            raise VerifyException("cim.conv2d expects rank-4 NCHW input and output")
        kernel, strides = self.kernel.get_values(), self.strides.get_values()
        pads, dil = self.pads.get_values(), self.dilations.get_values()
        _check_positive("kernel", kernel, 2)
        _check_positive("strides", strides, 2)
        _check_positive("dilations", dil, 2)
        if len(pads) != 4 or any(p < 0 for p in pads):
            raise VerifyException("'pads' must be 4 non-negative entries [t, l, b, r]")
        g = self.group_count
        if g <= 0 or xs[1] % g or ys[1] % g:
            raise VerifyException(
                f"groups={g} must divide input channels {xs[1]} and output channels {ys[1]}"
            )
        if xs[0] != ys[0]:
            raise VerifyException(f"batch mismatch: input {xs[0]}, output {ys[0]}")
        expect = tuple(
            conv_output_size(xs[2 + a], kernel[a], strides[a], pads[a], pads[a + 2], dil[a])
            for a in range(2)
        )
        if expect != ys[2:]:
            raise VerifyException(
                f"output spatial size {list(ys[2:])} does not match {list(expect)} "
                "derived from input, kernel, strides, pads and dilations"
            )
        _, k, n = self.im2col_dims()
        _check_weight_slice(self, k, n)


@irdl_op_definition
class MatmulOp(IRDLOperation):
    """Fully-connected layer / MatMul against a constant ``K x N`` weight.

    Input ``(..., K)``, output ``(..., N)``; ``M`` = product of the leading dims.
    ``bias`` marks an added constant bias vector (Gemm's ``C``).

    Example:
    ```mlir
    %y = cim.matmul %x {weight = "fc.weight", bias}
           : tensor<1x512xf32> -> tensor<1x1000xf32>
    ```
    """

    name = "cim.matmul"

    input = operand_def(TensorType)
    output = result_def(TensorType)

    weight = prop_def(StringAttr)
    weight_slice = opt_prop_def(DenseArrayBase[I64])

    irdl_options = (ParsePropInAttrDict(),)
    assembly_format = "$input attr-dict `:` type($input) `->` type($output)"

    def __init__(self, x: SSAValue, result_type: Attribute, weight: str,
                 weight_slice: Sequence[int] | None = None,
                 attributes: dict[str, Attribute] | None = None):
        props: dict[str, Attribute] = {"weight": StringAttr(weight)}
        if weight_slice is not None:
            props["weight_slice"] = array_prop(weight_slice)
        super().__init__(operands=[x], result_types=[result_type], properties=props,
                         attributes=attributes or {})

    def im2col_dims(self) -> tuple[int, int, int]:
        """``(M, K, N)``: input vectors, weight rows, weight columns."""
        xs, ys = tensor_shape(self.input), tensor_shape(self.output)
        return prod(xs[:-1]), xs[-1], ys[-1]

    def verify_(self) -> None:
        xs, ys = tensor_shape(self.input), tensor_shape(self.output)
        if not xs or not ys:
            raise VerifyException("cim.matmul operands must have rank >= 1")
        if xs[:-1] != ys[:-1]:
            raise VerifyException(
                f"leading dims differ: input {list(xs[:-1])}, output {list(ys[:-1])}"
            )
        _, k, n = self.im2col_dims()
        _check_weight_slice(self, k, n)


@irdl_op_definition
class DynMatmulOp(IRDLOperation):
    """Matrix product of two activations (attention ``Q·Kᵀ``, ``P·V``).

    ``lhs (..., M, K)`` times ``rhs (..., K, N)`` gives ``(..., M, N)``; the leading
    (batch, head) dims broadcast as in numpy.  The ``rhs`` is written into arrays at run
    time, then the ``lhs`` rows stream through them.

    Example:
    ```mlir
    %s = cim.dyn_matmul %q, %kt : tensor<1x12x128x64xf32>, tensor<1x12x64x128xf32>
           -> tensor<1x12x128x128xf32>
    ```
    """

    name = "cim.dyn_matmul"

    lhs = operand_def(TensorType)
    rhs = operand_def(TensorType)
    output = result_def(TensorType)

    assembly_format = (
        "$lhs `,` $rhs attr-dict `:` type($lhs) `,` type($rhs) `->` type($output)"
    )

    def __init__(self, lhs: SSAValue, rhs: SSAValue, result_type: Attribute):
        super().__init__(operands=[lhs, rhs], result_types=[result_type])

    def verify_(self) -> None:
        a, b, c = tensor_shape(self.lhs), tensor_shape(self.rhs), tensor_shape(self.output)
        if len(a) < 2 or len(b) < 2:
            raise VerifyException("cim.dyn_matmul operands must have rank >= 2")
        if a[-1] != b[-2]:
            raise VerifyException(f"contracted dims differ: lhs K={a[-1]}, rhs K={b[-2]}")
        if c[-2:] != (a[-2], b[-1]):
            raise VerifyException(
                f"result tail {list(c[-2:])} must be [{a[-2]}, {b[-1]}]"
            )


@irdl_op_definition
class VectorOp(IRDLOperation):
    """An operation of the digital unit, or pure data movement.

    ``kind`` is one of `VECTOR_KINDS`.  Operands are the activation inputs (constant
    operands such as a bias or a shape are folded into the op); results are the
    outputs (``split`` has several).  Further attributes (``axis``, ``kernel``, ...)
    are informative.

    Example:
    ```mlir
    %y = cim.vector "relu" %x : (tensor<1x64x56x56xf32>) -> tensor<1x64x56x56xf32>
    ```
    """

    name = "cim.vector"

    kind = prop_def(StringAttr)
    inputs = var_operand_def(TensorType)
    outputs = var_result_def(TensorType)

    irdl_options = (ParsePropInAttrDict(),)
    assembly_format = (
        "$kind $inputs attr-dict `:` `(` type($inputs) `)` `->` type($outputs)"
    )

    def __init__(self, kind: str, inputs: Sequence[SSAValue],
                 result_types: Sequence[Attribute],
                 attributes: dict[str, Attribute] | None = None):
        super().__init__(operands=[list(inputs)], result_types=[list(result_types)],
                         properties={"kind": StringAttr(kind)},
                         attributes=attributes or {})

    def verify_(self) -> None:
        if self.kind.data not in VECTOR_KINDS:
            raise VerifyException(
                f"unknown vector kind '{self.kind.data}'; expected one of "
                + ", ".join(sorted(VECTOR_KINDS))
            )
        if not self.outputs:
            raise VerifyException("cim.vector must produce at least one result")
        _check_vector_shapes(self.kind.data, [tensor_shape(x) for x in self.inputs],
                             [tensor_shape(y) for y in self.outputs])


@irdl_op_definition
class SegmentOp(IRDLOperation):
    """One network segment: operators that run together while the array modes are
    fixed (DESIGN.md §4).  Produced by `cim-segment`; `cim-allocate` adds the allocation
    as attributes (``compute_arrays``, ``memory_arrays``, ``predicted_cycles``, ...).

    The body uses values defined above it and yields the values used after it.

    Example:
    ```mlir
    %y = cim.segment 0 -> tensor<1x64x112x112xf32> {
      %c = cim.conv2d %x {...} : tensor<1x3x224x224xf32> -> tensor<1x64x112x112xf32>
      cim.yield %c : tensor<1x64x112x112xf32>
    }
    ```
    """

    name = "cim.segment"

    id = prop_def(IntegerAttr[I64])
    outs = var_result_def()
    body = region_def("single_block")

    assembly_format = "$id attr-dict-with-keyword (`->` type($outs)^)? $body"

    def __init__(self, seg_id: int, result_types: Sequence[Attribute], body: Region):
        super().__init__(properties={"id": int_prop(seg_id)},
                         result_types=[list(result_types)], regions=[body])

    # -- annotations (`HOLD_ATTR` ... `SWITCH_ATTR` above): typed accessors ----------

    @property
    def holds(self) -> bool:
        """`HOLD_ATTR`: the tensors passed only to the next segment stay on chip."""
        return HOLD_ATTR in self.attributes

    @property
    def compute_only(self) -> bool:
        """`COMPUTE_ONLY_ATTR`: allocated without memory-mode arrays."""
        return COMPUTE_ONLY_ATTR in self.attributes

    @property
    def preloaded(self) -> int:
        """`PRELOADED_ATTR`: leading weight ops loaded during the previous segment (0
        when absent)."""
        attr = self.attributes.get(PRELOADED_ATTR)
        return attr.value.data if isinstance(attr, IntegerAttr) else 0

    def array_range(self, name: str) -> tuple[int, int] | None:
        """A ``array<i64: lo, hi>`` annotation (`POOL_ATTR`, `HOLD_RANGE_ATTR`), or None."""
        attr = self.attributes.get(name)
        return tuple(attr.get_values()) if isinstance(attr, DenseArrayBase) else None

    @property
    def places(self) -> dict[str, str] | None:
        """`PLACES_ATTR`: tensor name -> place, or None before `cim-allocate`."""
        attr = self.attributes.get(PLACES_ATTR)
        if not isinstance(attr, DictionaryAttr):
            return None
        return {k: v.data for k, v in attr.data.items() if isinstance(v, StringAttr)}

    def _verify_annotations(self) -> None:
        seg = self.id.value.data
        attr = self.attributes.get(PRELOADED_ATTR)
        if attr is not None and (not isinstance(attr, IntegerAttr) or attr.value.data < 0):
            raise VerifyException(f"cim.segment {seg}: '{PRELOADED_ATTR}' must be a "
                                  "non-negative integer")
        for name in (POOL_ATTR, HOLD_RANGE_ATTR):
            attr = self.attributes.get(name)
            if attr is None:
                continue
            values = attr.get_values() if isinstance(attr, DenseArrayBase) else ()
            if len(values) != 2 or not 0 <= values[0] <= values[1]:
                raise VerifyException(f"cim.segment {seg}: '{name}' must be "
                                      "array<i64: lo, hi> with 0 <= lo <= hi")
        attr = self.attributes.get(PLACES_ATTR)
        if attr is not None:
            allowed = ("pool", "gb", "dram", "hold_in", "hold_out", "stream")
            if not isinstance(attr, DictionaryAttr) or not all(
                    isinstance(v, StringAttr) and v.data in allowed for v in attr.data.values()):
                raise VerifyException(f"cim.segment {seg}: '{PLACES_ATTR}' maps tensor names "
                                      f"to one of {', '.join(allowed)}")

    def verify_(self) -> None:
        self._verify_annotations()
        block = self.body.block
        last = block.last_op
        if not isinstance(last, YieldOp):
            raise VerifyException("cim.segment body must end with cim.yield")
        got = [v.type for v in last.values]
        want = [r.type for r in self.outs]
        if got != want:
            raise VerifyException(
                f"cim.yield types {[str(t) for t in got]} differ from the segment's "
                f"result types {[str(t) for t in want]}"
            )


@irdl_op_definition
class YieldOp(IRDLOperation):
    """Terminator of `cim.segment`: the values live after the segment.

    Example: ``cim.yield %a, %b : tensor<4xf32>, tensor<8xf32>``
    """

    name = "cim.yield"

    values = var_operand_def()
    traits = traits_def(IsTerminator(), HasParent(SegmentOp))
    assembly_format = "attr-dict ($values^ `:` type($values))?"

    def __init__(self, values: Sequence[SSAValue]):
        super().__init__(operands=[list(values)])


WEIGHT_OPS = (Conv2dOp, MatmulOp)
"""Operators whose weight lives in compute-mode arrays."""

CIM = Dialect(
    "cim",
    [Conv2dOp, MatmulOp, DynMatmulOp, VectorOp, SegmentOp, YieldOp],
    [],
)
