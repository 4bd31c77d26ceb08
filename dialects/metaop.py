"""The `metaop` dialect: the meta-operator flow a CIM backend or the simulator runs
(DESIGN.md §5).  One op per (segment, operator, action) over array *ranges*, so a whole
LLM flow stays small.  Ops have no SSA values: they are statements executed in order;
`metaop.parallel` runs its body concurrently (a pipeline).

Three typed attributes carry the flow's vocabulary, each with its own syntax:

- `LocationAttr` ``#metaop.loc<a[LO:HI]>`` (memory-mode arrays LO..HI-1), ``<gb>``
  (global buffer), ``<dram>`` or ``<stream>`` (handed by its writer straight to the
  digital unit, no port: element-wise fusion, DESIGN.md §9.13);
- `TensorRefAttr` ``#metaop.ref<"NAME", a[LO:HI]>``: a tensor at a location (``NAME@LOC``
  in the `.cmsasm` text);
- `ModeAttr` ``#metaop<mode TOM>`` / ``TOC``: the target mode of a switch.

Names follow the one flow-name grammar (`cmswitch.names`).  `LocationAttr.from_text` /
`TensorRefAttr.from_text` are the only readers of the ``a[LO:HI]`` / ``NAME@LOC`` text
outside the simulator (which keeps its own reader).  The `.cmsasm` text form is
documented in docs/cmsasm.md.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import ClassVar

from xdsl.dialects.builtin import I64, ArrayAttr, DenseArrayBase, IntAttr, IntegerAttr, StringAttr
from xdsl.dialects.utils import EnumAttribute
from xdsl.ir import (
    Attribute,
    Block,
    Dialect,
    ParametrizedAttribute,
    Region,
    SpacedOpaqueSyntaxAttribute,
)
from xdsl.irdl import (
    IRDLOperation,
    ParsePropInAttrDict,
    irdl_attr_definition,
    irdl_op_definition,
    opt_prop_def,
    prop_def,
    region_def,
    traits_def,
)
from xdsl.parser import AttrParser
from xdsl.printer import Printer
from xdsl.traits import NoTerminator
from xdsl.utils.exceptions import VerifyException
from xdsl.utils.str_enum import StrEnum

from cmswitch.dialects.cim import array_prop, int_prop
from cmswitch.names import is_flow_name

TENSORS_ATTR = "metaop.tensors"
"""Module attribute (`cim-to-metaop`): tensor name -> bytes, every tensor of the flow."""
INPUTS_ATTR = "metaop.inputs"
"""Module attribute (`cim-to-metaop`): names of the tensors that start in DRAM."""
OUTPUTS_ATTR = "metaop.outputs"
"""Module attribute (`cim-to-metaop`): names of the tensors the flow must store to DRAM."""

_RANGE_TEXT = re.compile(r"a\[(\d+):(\d+)\]\Z")
NAMED_LOCATIONS = ("dram", "gb", "stream")
"""The locations without an array range (`LocationAttr.of`)."""
_I64_MAX = (1 << 63) - 1


class SwitchMode(StrEnum):
    """The mode a `CM.switch` sets: memory (TOM) or compute (TOC)."""

    TOM = "TOM"
    TOC = "TOC"


MODES = tuple(m.value for m in SwitchMode)


@irdl_attr_definition
class ModeAttr(EnumAttribute[SwitchMode], SpacedOpaqueSyntaxAttribute):
    """The target mode of `metaop.switch`.  Example: ``#metaop<mode TOM>``."""

    name = "metaop.mode"


@irdl_attr_definition
class LocationAttr(ParametrizedAttribute):
    """Where data lives: ``dram``, ``gb`` (the global buffer), ``stream`` (an MVM's or
    vector op's output handed row by row to the one `VEC` statement that reads it,
    through no port and no buffer: DESIGN.md §9.13) or ``a[LO:HI]`` (memory-mode arrays
    LO..HI-1, LO < HI).  Example: ``#metaop.loc<a[88:96]>``; `str()` gives the
    `.cmsasm` text (``a[88:96]``).  `kind` is "dram", "gb", "stream" or "a"; `lo` /
    `hi` are 0 unless kind is "a"."""

    name = "metaop.loc"
    kind: StringAttr
    lo: IntAttr
    hi: IntAttr

    @staticmethod
    def arrays(lo: int, hi: int) -> LocationAttr:
        return LocationAttr(StringAttr("a"), IntAttr(lo), IntAttr(hi))

    @staticmethod
    def of(kind: str) -> LocationAttr:
        """``dram``, ``gb`` or ``stream``."""
        return LocationAttr(StringAttr(kind), IntAttr(0), IntAttr(0))

    @staticmethod
    def from_text(text: str) -> LocationAttr:
        """``dram``, ``gb``, ``stream`` or ``a[LO:HI]``.  Raises VerifyException
        otherwise (also for LO >= HI or a bound beyond int64)."""
        if text in NAMED_LOCATIONS:
            return LocationAttr.of(text)
        match = _RANGE_TEXT.match(text)
        if match is None:
            raise VerifyException(f"bad location '{text}': expected dram, gb, stream or a[LO:HI]")
        lo, hi = int(match.group(1)), int(match.group(2))
        if not lo < hi or hi > _I64_MAX:
            raise VerifyException(f"bad location '{text}': need LO < HI")
        return LocationAttr.arrays(lo, hi)

    @property
    def range(self) -> tuple[int, int] | None:
        """(LO, HI) of an array location, None for dram / gb / stream."""
        return (self.lo.data, self.hi.data) if self.kind.data == "a" else None

    def __str__(self) -> str:
        if self.kind.data == "a":
            return f"a[{self.lo.data}:{self.hi.data}]"
        return self.kind.data

    def verify(self) -> None:
        kind, lo, hi = self.kind.data, self.lo.data, self.hi.data
        if kind == "a":
            if not 0 <= lo < hi:
                raise VerifyException(f"bad location 'a[{lo}:{hi}]': empty array range")
        elif kind not in NAMED_LOCATIONS or lo or hi:
            raise VerifyException(f"bad location kind '{kind}': expected dram, gb, stream or a")

    @classmethod
    def parse_parameters(cls, parser: AttrParser) -> Sequence[Attribute]:
        with parser.in_angle_brackets():
            return cls.parse_body(parser).parameters

    @staticmethod
    def parse_body(parser: AttrParser) -> LocationAttr:
        """``dram`` | ``gb`` | ``stream`` | ``a[LO:HI]`` at the parser's position."""
        for kind in NAMED_LOCATIONS:
            if parser.parse_optional_keyword(kind):
                return LocationAttr.of(kind)
        parser.parse_keyword("a", " (a location is dram, gb, stream or a[LO:HI])")
        parser.parse_punctuation("[")
        lo = parser.parse_integer(allow_negative=False, allow_boolean=False)
        parser.parse_punctuation(":")
        hi = parser.parse_integer(allow_negative=False, allow_boolean=False)
        parser.parse_punctuation("]")
        return LocationAttr.arrays(lo, hi)

    def print_parameters(self, printer: Printer) -> None:
        printer.print_string(f"<{self}>")


@irdl_attr_definition
class TensorRefAttr(ParametrizedAttribute):
    """A tensor at a location, ``NAME@LOC`` in the `.cmsasm` text.  Example:
    ``#metaop.ref<"conv1", a[80:88]>``.  The name follows the flow-name grammar
    (`cmswitch.names`)."""

    name = "metaop.ref"
    tensor: StringAttr
    loc: LocationAttr

    @staticmethod
    def to(tensor: str, loc: LocationAttr | str) -> TensorRefAttr:
        where = loc if isinstance(loc, LocationAttr) else LocationAttr.from_text(loc)
        return TensorRefAttr(StringAttr(tensor), where)

    @staticmethod
    def from_text(text: str) -> TensorRefAttr:
        """``NAME@LOC``.  Raises VerifyException for a bad name or location."""
        tensor, at, loc = text.rpartition("@")
        if not at:
            raise VerifyException(f"bad tensor reference '{text}': expected NAME@LOCATION")
        ref = TensorRefAttr.to(tensor, loc)
        ref.verify()
        return ref

    def __str__(self) -> str:
        return f"{self.tensor.data}@{self.loc}"

    def verify(self) -> None:
        if not is_flow_name(self.tensor.data):
            raise VerifyException(f"bad tensor reference '{self}': the name allows "
                                  "letters, digits, _ . : / -")

    @classmethod
    def parse_parameters(cls, parser: AttrParser) -> Sequence[Attribute]:
        with parser.in_angle_brackets():
            tensor = parser.parse_str_literal()
            parser.parse_punctuation(",")
            return (StringAttr(tensor), LocationAttr.parse_body(parser))

    def print_parameters(self, printer: Printer) -> None:
        printer.print_string("<")
        printer.print_string_literal(self.tensor.data)
        printer.print_string(f", {self.loc}>")


def refs(items: Sequence[TensorRefAttr | str]) -> ArrayAttr[TensorRefAttr]:
    """An array of tensor references (``NAME@LOC`` texts are read)."""
    return ArrayAttr([r if isinstance(r, TensorRefAttr) else TensorRefAttr.from_text(r)
                      for r in items])


def _ref(item: TensorRefAttr | str) -> TensorRefAttr:
    return item if isinstance(item, TensorRefAttr) else TensorRefAttr.from_text(item)


def _loc(item: LocationAttr | str) -> LocationAttr:
    return item if isinstance(item, LocationAttr) else LocationAttr.from_text(item)


def check_range(name: str, arrays: DenseArrayBase) -> tuple[int, int]:
    """``arrays = array<i64: LO, HI>`` must be a non-empty half-open range."""
    vals = arrays.get_values()
    if len(vals) != 2 or not 0 <= vals[0] < vals[1]:
        raise VerifyException(f"'{name}' must be a non-empty range [lo, hi), got {list(vals)}")
    return vals[0], vals[1]


def _positive(name: str, attr: IntegerAttr, allow_zero: bool = False) -> int:
    value = attr.value.data
    if value < 0 or (value == 0 and not allow_zero):
        raise VerifyException(f"'{name}' must be {'non-negative' if allow_zero else 'positive'}, got {value}")
    return value


def check_placement(op: IRDLOperation) -> None:
    """Weight placement of load_weight / write_operand: ``tiles = [TK, TN]`` > 0,
    ``copies`` and ``bytes`` positive, and ``HI-LO == TK*TN*copies`` arrays."""
    lo, hi = check_range("arrays", op.arrays)
    tiles = op.tiles.get_values()
    if len(tiles) != 2 or min(tiles) <= 0:
        raise VerifyException(f"'tiles' must be [TK, TN] > 0, got {list(tiles)}")
    copies = _positive("copies", op.copies)
    _positive("bytes", op.bytes)
    if hi - lo != tiles[0] * tiles[1] * copies:
        raise VerifyException(
            f"{hi - lo} arrays cannot hold {copies} copies of {tiles[0]}x{tiles[1]} tiles"
        )


@irdl_op_definition
class SwitchOp(IRDLOperation):
    """``CM.switch``: switch arrays LO..HI-1 to memory mode (TOM) or compute mode (TOC).

    Example: ``metaop.switch TOM [40, 48]``
    """

    name = "metaop.switch"
    mode = prop_def(ModeAttr)
    arrays = prop_def(DenseArrayBase[I64])
    assembly_format = "$mode $arrays attr-dict"

    def __init__(self, mode: str | SwitchMode, lo: int, hi: int):
        super().__init__(properties={"mode": ModeAttr(SwitchMode(mode)),
                                     "arrays": array_prop([lo, hi])})

    def verify_(self) -> None:
        check_range("arrays", self.arrays)


@irdl_op_definition
class LoadWeightOp(IRDLOperation):
    """``CIM.load_weight``: program ``copies`` copies of an operator's weight
    (``tiles = [TK, TN]`` array tiles per copy, ``bytes`` per copy) from DRAM into the
    compute arrays LO..HI-1; ``HI-LO == TK*TN*copies``.

    Example:
    ``metaop.load_weight "conv1" [0, 8] {tiles = array<i64: 1, 2>, copies = 4 : i64, bytes = 9408 : i64}``
    """

    name = "metaop.load_weight"
    op = prop_def(StringAttr)
    arrays = prop_def(DenseArrayBase[I64])
    tiles = prop_def(DenseArrayBase[I64])
    copies = prop_def(IntegerAttr[I64])
    bytes = prop_def(IntegerAttr[I64])
    irdl_options = (ParsePropInAttrDict(),)
    assembly_format = "$op $arrays attr-dict"

    def __init__(self, op: str, lo: int, hi: int, tiles: Sequence[int], copies: int, nbytes: int):
        super().__init__(properties={
            "op": StringAttr(op), "arrays": array_prop([lo, hi]), "tiles": array_prop(tiles),
            "copies": int_prop(copies), "bytes": int_prop(nbytes),
        })

    def verify_(self) -> None:
        check_placement(self)


@irdl_op_definition
class WriteOperandOp(IRDLOperation):
    """``CIM.write_operand``: a dynamic matmul writes its run-time operand (``input``,
    a tensor reference; ``bytes`` in all, in ``instances`` independent parts such as
    batch x heads) into compute arrays, placed like `metaop.load_weight`; the copies
    take the parts in turn.

    Example:
    ``metaop.write_operand "scores" [0, 12] {input = #metaop.ref<"k_t", gb>, tiles = array<i64: 1, 4>, copies = 3 : i64, bytes = 98304 : i64, instances = 12 : i64}``
    """

    name = "metaop.write_operand"
    op = prop_def(StringAttr)
    arrays = prop_def(DenseArrayBase[I64])
    input = prop_def(TensorRefAttr)
    tiles = prop_def(DenseArrayBase[I64])
    copies = prop_def(IntegerAttr[I64])
    bytes = prop_def(IntegerAttr[I64])
    instances = prop_def(IntegerAttr[I64])
    irdl_options = (ParsePropInAttrDict(),)
    assembly_format = "$op $arrays attr-dict"

    def __init__(self, op: str, lo: int, hi: int, src: TensorRefAttr | str,
                 tiles: Sequence[int], copies: int, nbytes: int, instances: int = 1):
        super().__init__(properties={
            "op": StringAttr(op), "arrays": array_prop([lo, hi]), "input": _ref(src),
            "tiles": array_prop(tiles), "copies": int_prop(copies), "bytes": int_prop(nbytes),
            "instances": int_prop(instances),
        })

    def verify_(self) -> None:
        check_placement(self)
        _positive("instances", self.instances)
        _not_stream(self.input, "its operand")


@irdl_op_definition
class MvmOp(IRDLOperation):
    """``CIM.mvm``: stream ``vectors`` input vectors of ``k`` elements through every
    copy of ``op`` held in compute arrays LO..HI-1; each gives ``n`` outputs per vector.
    ``input``/``output`` are tensor references; ``window`` (bytes, optional) is the
    on-chip space a streamed output occupies.

    Example:
    ``metaop.mvm "conv1" [0, 8] {vectors = 12544 : i64, k = 147 : i64, n = 64 : i64, input = #metaop.ref<"x", a[88:96]>, output = #metaop.ref<"conv1", a[80:88]>}``
    """

    name = "metaop.mvm"
    op = prop_def(StringAttr)
    arrays = prop_def(DenseArrayBase[I64])
    vectors = prop_def(IntegerAttr[I64])
    k = prop_def(IntegerAttr[I64])
    n = prop_def(IntegerAttr[I64])
    input = prop_def(TensorRefAttr)
    output = prop_def(TensorRefAttr)
    window = opt_prop_def(IntegerAttr[I64])
    irdl_options = (ParsePropInAttrDict(),)
    assembly_format = "$op $arrays attr-dict"

    def __init__(self, op: str, lo: int, hi: int, vectors: int, k: int, n: int,
                 src: TensorRefAttr | str, dst: TensorRefAttr | str, window: int | None = None):
        props: dict[str, Attribute] = {
            "op": StringAttr(op), "arrays": array_prop([lo, hi]), "vectors": int_prop(vectors),
            "k": int_prop(k), "n": int_prop(n), "input": _ref(src), "output": _ref(dst),
        }
        if window is not None:
            props["window"] = int_prop(window)
        super().__init__(properties=props)

    def verify_(self) -> None:
        check_range("arrays", self.arrays)
        for name in ("vectors", "k", "n"):
            _positive(name, getattr(self, name))
        _not_stream(self.input, "its input")


@irdl_op_definition
class VecOp(IRDLOperation):
    """``VEC.<kind>``: ``ops`` elementary operations on the digital unit (0 for pure
    data movement), reading ``inputs`` and writing ``outputs`` (tensor references).

    Example:
    ``metaop.vec "relu" "relu1" {ops = 802816 : i64, inputs = [#metaop.ref<"conv1", a[80:88]>], outputs = [#metaop.ref<"relu1", a[72:80]>]}``
    """

    name = "metaop.vec"
    kind = prop_def(StringAttr)
    label = prop_def(StringAttr)
    ops = prop_def(IntegerAttr[I64])
    inputs = opt_prop_def(ArrayAttr[TensorRefAttr])
    outputs = prop_def(ArrayAttr[TensorRefAttr])
    window = opt_prop_def(IntegerAttr[I64])
    irdl_options = (ParsePropInAttrDict(),)
    assembly_format = "$kind $label attr-dict"

    def __init__(self, kind: str, label: str, ops: int,
                 inputs: Sequence[TensorRefAttr | str] | None,
                 outputs: Sequence[TensorRefAttr | str], window: int | None = None):
        props: dict[str, Attribute] = {
            "kind": StringAttr(kind), "label": StringAttr(label), "ops": int_prop(ops),
        }
        if inputs:
            props["inputs"] = refs(inputs)
        props["outputs"] = refs(outputs)
        if window is not None:
            props["window"] = int_prop(window)
        super().__init__(properties=props)

    def verify_(self) -> None:
        _positive("ops", self.ops, allow_zero=True)
        if self.inputs is not None and not self.inputs.data:
            raise VerifyException("'inputs' lists no tensor (leave it out instead)")
        if not self.outputs.data:
            raise VerifyException("'outputs' lists no tensor")


def _not_stream(ref: TensorRefAttr, what: str) -> None:
    """Only a `VEC` statement reads a ``stream`` (DESIGN.md §9.13)."""
    if ref.loc.kind.data == "stream":
        raise VerifyException(f"{what} {ref.tensor.data}@stream: only a VEC statement "
                              f"reads a stream")


class _TransferOp(IRDLOperation):
    """Shared shape of MEM.load / MEM.store / MEM.move: ``tensor`` moves from location
    ``source`` to location ``dest``, ``bytes`` moved, optional streaming ``window``
    (bytes the destination holds at a time)."""

    tensor = prop_def(StringAttr)
    source = prop_def(LocationAttr)
    dest = prop_def(LocationAttr)
    bytes = prop_def(IntegerAttr[I64])
    window = opt_prop_def(IntegerAttr[I64])
    irdl_options = (ParsePropInAttrDict(),)
    assembly_format = "$tensor $source $dest attr-dict"
    ALLOWED: ClassVar[tuple[str | None, str | None]] = (None, None)

    def __init__(self, tensor: str, source: LocationAttr | str, dest: LocationAttr | str,
                 nbytes: int, window: int | None = None):
        props: dict[str, Attribute] = {
            "tensor": StringAttr(tensor), "source": _loc(source),
            "dest": _loc(dest), "bytes": int_prop(nbytes),
        }
        if window is not None:
            props["window"] = int_prop(window)
        super().__init__(properties=props)

    def verify_(self) -> None:
        if not is_flow_name(self.tensor.data):
            raise VerifyException(f"bad tensor name '{self.tensor.data}': the name allows "
                                  "letters, digits, _ . : / -")
        _positive("bytes", self.bytes)
        src_need, dst_need = self.ALLOWED
        source, dest = str(self.source), str(self.dest)
        if src_need == "dram" and source != "dram":
            raise VerifyException(f"{self.name} reads from dram, not '{source}'")
        if dst_need == "dram" and dest != "dram":
            raise VerifyException(f"{self.name} writes to dram, not '{dest}'")
        if src_need == "chip" and "dram" in (source, dest):
            raise VerifyException(f"{self.name} moves data on chip only")
        if "stream" in (source, dest):
            raise VerifyException(f"{self.name} cannot move a stream (only the VEC "
                                  f"statement fused to its writer reads it)")


@irdl_op_definition
class MemLoadOp(_TransferOp):
    """``MEM.load``: copy a tensor from DRAM to an on-chip location.

    Example: ``metaop.mem_load "x" <dram> <a[88:96]> {bytes = 150528 : i64}``
    """

    name = "metaop.mem_load"
    ALLOWED: ClassVar[tuple[str | None, str | None]] = ("dram", None)


@irdl_op_definition
class MemStoreOp(_TransferOp):
    """``MEM.store``: copy a tensor from an on-chip location to DRAM.

    Example: ``metaop.mem_store "relu1" <a[72:80]> <dram> {bytes = 802816 : i64}``
    """

    name = "metaop.mem_store"
    ALLOWED: ClassVar[tuple[str | None, str | None]] = (None, "dram")


@irdl_op_definition
class MemMoveOp(_TransferOp):
    """``MEM.move``: on-chip copy between memory-mode arrays and the global buffer.

    Example: ``metaop.mem_move "relu1" <a[72:80]> <gb> {bytes = 4096 : i64}``
    """

    name = "metaop.mem_move"
    ALLOWED: ClassVar[tuple[str | None, str | None]] = ("chip", "chip")


@irdl_op_definition
class ParallelOp(IRDLOperation):
    """``parallel { ... }``: the enclosed statements run concurrently as a pipeline.

    Example: ``metaop.parallel { metaop.mvm ... metaop.vec ... }``
    """

    name = "metaop.parallel"
    body = region_def("single_block")
    traits = traits_def(NoTerminator())
    assembly_format = "$body attr-dict"

    def __init__(self, ops: Sequence[IRDLOperation]):
        super().__init__(regions=[Region(Block(ops))])

    def verify_(self) -> None:
        for op in self.body.block.ops:
            if isinstance(op, (ParallelOp, SegmentOp, SwitchOp)):
                raise VerifyException(f"'{op.name}' cannot appear inside metaop.parallel")


@irdl_op_definition
class SegmentOp(IRDLOperation):
    """``.segment``: the statements of one segment; ``ops`` lists its operators and
    ``predicted`` the optimizer's cycle estimate.

    Example: ``metaop.segment 0 attributes {ops = "conv1,relu1", predicted = 41234 : i64} { ... }``
    """

    name = "metaop.segment"
    id = prop_def(IntegerAttr[I64])
    ops = prop_def(StringAttr)
    predicted = prop_def(IntegerAttr[I64])
    body = region_def("single_block")
    traits = traits_def(NoTerminator())
    irdl_options = (ParsePropInAttrDict(),)
    assembly_format = "$id attr-dict-with-keyword $body"

    def __init__(self, seg_id: int, ops: str, predicted: int, body: Sequence[IRDLOperation]):
        super().__init__(
            properties={"id": int_prop(seg_id), "ops": StringAttr(ops),
                        "predicted": int_prop(predicted)},
            regions=[Region(Block(body))],
        )

    def verify_(self) -> None:
        _positive("predicted", self.predicted, allow_zero=True)
        for op in self.body.block.ops:
            if isinstance(op, SegmentOp):
                raise VerifyException("metaop.segment cannot be nested")


METAOP = Dialect(
    "metaop",
    [SwitchOp, LoadWeightOp, WriteOperandOp, MvmOp, VecOp, MemLoadOp, MemStoreOp,
     MemMoveOp, ParallelOp, SegmentOp],
    [ModeAttr, LocationAttr, TensorRefAttr],
)
