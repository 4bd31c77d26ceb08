"""The `metaop` dialect: the meta-operator flow a CIM backend or the simulator runs
(DESIGN.md §5).  One op per (segment, operator, action) over array *ranges*, so a whole
LLM flow stays small.  Ops have no SSA values: they are statements executed in order;
`metaop.parallel` runs its body concurrently (a pipeline).

Locations are strings: ``a[LO:HI]`` (memory-mode arrays LO..HI-1), ``gb`` (global
buffer) or ``dram``; a tensor reference is ``NAME@LOCATION``.  The `.cmsasm` text form
is documented in docs/cmsasm.md.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import ClassVar

from xdsl.dialects.builtin import I64, DenseArrayBase, IntegerAttr, StringAttr
from xdsl.ir import Attribute, Block, Dialect, Region
from xdsl.irdl import (
    IRDLOperation,
    ParsePropInAttrDict,
    irdl_op_definition,
    opt_prop_def,
    prop_def,
    region_def,
    traits_def,
)
from xdsl.traits import NoTerminator
from xdsl.utils.exceptions import VerifyException

from cmswitch.dialects.cim import array_prop, int_prop
from cmswitch.names import NAME_PATTERN

TENSORS_ATTR = "metaop.tensors"
"""Module attribute (`cim-to-metaop`): tensor name -> bytes, every tensor of the flow."""
INPUTS_ATTR = "metaop.inputs"
"""Module attribute (`cim-to-metaop`): names of the tensors that start in DRAM."""
OUTPUTS_ATTR = "metaop.outputs"
"""Module attribute (`cim-to-metaop`): names of the tensors the flow must store to DRAM."""

_LOCATION = re.compile(r"^(dram|gb|a\[(\d+):(\d+)\])$")
_TENSOR_REF = re.compile(rf"^{NAME_PATTERN}@(dram|gb|a\[\d+:\d+\])$")
MODES = ("TOM", "TOC")


def check_range(name: str, arrays: DenseArrayBase) -> tuple[int, int]:
    """``arrays = array<i64: LO, HI>`` must be a non-empty half-open range."""
    vals = arrays.get_values()
    if len(vals) != 2 or not 0 <= vals[0] < vals[1]:
        raise VerifyException(f"'{name}' must be a non-empty range [lo, hi), got {list(vals)}")
    return vals[0], vals[1]


def check_location(text: str) -> None:
    """A location is ``dram``, ``gb`` or ``a[LO:HI]`` with LO < HI."""
    match = _LOCATION.match(text)
    if match is None:
        raise VerifyException(f"bad location '{text}': expected dram, gb or a[LO:HI]")
    if match.group(2) is not None and int(match.group(2)) >= int(match.group(3)):
        raise VerifyException(f"bad location '{text}': empty array range")


def check_refs(text: str) -> None:
    """Comma-separated tensor references ``NAME@LOCATION``."""
    for ref in text.split(","):
        if not _TENSOR_REF.match(ref):
            raise VerifyException(f"bad tensor reference '{ref}': expected NAME@LOCATION")
        check_location(ref.split("@", 1)[1])


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

    Example: ``metaop.switch "TOM" [40, 48]``
    """

    name = "metaop.switch"
    mode = prop_def(StringAttr)
    arrays = prop_def(DenseArrayBase[I64])
    assembly_format = "$mode $arrays attr-dict"

    def __init__(self, mode: str, lo: int, hi: int):
        super().__init__(properties={"mode": StringAttr(mode), "arrays": array_prop([lo, hi])})

    def verify_(self) -> None:
        if self.mode.data not in MODES:
            raise VerifyException(f"switch mode must be TOM or TOC, got '{self.mode.data}'")
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
    ``metaop.write_operand "scores" [0, 12] {input = "k_t@gb", tiles = array<i64: 1, 4>, copies = 3 : i64, bytes = 98304 : i64, instances = 12 : i64}``
    """

    name = "metaop.write_operand"
    op = prop_def(StringAttr)
    arrays = prop_def(DenseArrayBase[I64])
    input = prop_def(StringAttr)
    tiles = prop_def(DenseArrayBase[I64])
    copies = prop_def(IntegerAttr[I64])
    bytes = prop_def(IntegerAttr[I64])
    instances = prop_def(IntegerAttr[I64])
    irdl_options = (ParsePropInAttrDict(),)
    assembly_format = "$op $arrays attr-dict"

    def __init__(self, op: str, lo: int, hi: int, src: str, tiles: Sequence[int],
                 copies: int, nbytes: int, instances: int = 1):
        super().__init__(properties={
            "op": StringAttr(op), "arrays": array_prop([lo, hi]), "input": StringAttr(src),
            "tiles": array_prop(tiles), "copies": int_prop(copies), "bytes": int_prop(nbytes),
            "instances": int_prop(instances),
        })

    def verify_(self) -> None:
        check_placement(self)
        check_refs(self.input.data)
        _positive("instances", self.instances)


@irdl_op_definition
class MvmOp(IRDLOperation):
    """``CIM.mvm``: stream ``vectors`` input vectors of ``k`` elements through every
    copy of ``op`` held in compute arrays LO..HI-1; each gives ``n`` outputs per vector.
    ``input``/``output`` are tensor references; ``window`` (bytes, optional) is the
    on-chip space a streamed output occupies.

    Example:
    ``metaop.mvm "conv1" [0, 8] {vectors = 12544 : i64, k = 147 : i64, n = 64 : i64, input = "x@a[88:96]", output = "conv1@a[80:88]"}``
    """

    name = "metaop.mvm"
    op = prop_def(StringAttr)
    arrays = prop_def(DenseArrayBase[I64])
    vectors = prop_def(IntegerAttr[I64])
    k = prop_def(IntegerAttr[I64])
    n = prop_def(IntegerAttr[I64])
    input = prop_def(StringAttr)
    output = prop_def(StringAttr)
    window = opt_prop_def(IntegerAttr[I64])
    irdl_options = (ParsePropInAttrDict(),)
    assembly_format = "$op $arrays attr-dict"

    def __init__(self, op: str, lo: int, hi: int, vectors: int, k: int, n: int,
                 src: str, dst: str, window: int | None = None):
        props: dict[str, Attribute] = {
            "op": StringAttr(op), "arrays": array_prop([lo, hi]), "vectors": int_prop(vectors),
            "k": int_prop(k), "n": int_prop(n), "input": StringAttr(src), "output": StringAttr(dst),
        }
        if window is not None:
            props["window"] = int_prop(window)
        super().__init__(properties=props)

    def verify_(self) -> None:
        check_range("arrays", self.arrays)
        for name in ("vectors", "k", "n"):
            _positive(name, getattr(self, name))
        check_refs(self.input.data)
        check_refs(self.output.data)


@irdl_op_definition
class VecOp(IRDLOperation):
    """``VEC.<kind>``: ``ops`` elementary operations on the digital unit (0 for pure
    data movement), reading ``inputs`` and writing ``outputs`` (tensor references).

    Example:
    ``metaop.vec "relu" "relu1" {ops = 802816 : i64, inputs = "conv1@a[80:88]", outputs = "relu1@a[72:80]"}``
    """

    name = "metaop.vec"
    kind = prop_def(StringAttr)
    label = prop_def(StringAttr)
    ops = prop_def(IntegerAttr[I64])
    inputs = opt_prop_def(StringAttr)
    outputs = prop_def(StringAttr)
    window = opt_prop_def(IntegerAttr[I64])
    irdl_options = (ParsePropInAttrDict(),)
    assembly_format = "$kind $label attr-dict"

    def __init__(self, kind: str, label: str, ops: int, inputs: str | None, outputs: str,
                 window: int | None = None):
        props: dict[str, Attribute] = {
            "kind": StringAttr(kind), "label": StringAttr(label), "ops": int_prop(ops),
            "outputs": StringAttr(outputs),
        }
        if inputs:
            props["inputs"] = StringAttr(inputs)
        if window is not None:
            props["window"] = int_prop(window)
        super().__init__(properties=props)

    def verify_(self) -> None:
        _positive("ops", self.ops, allow_zero=True)
        if self.inputs is not None:
            check_refs(self.inputs.data)
        check_refs(self.outputs.data)


class _TransferOp(IRDLOperation):
    """Shared shape of MEM.load / MEM.store / MEM.move: ``tensor`` moves from location
    ``source`` to location ``dest``, ``bytes`` moved, optional streaming ``window``
    (bytes the destination holds at a time)."""

    tensor = prop_def(StringAttr)
    source = prop_def(StringAttr)
    dest = prop_def(StringAttr)
    bytes = prop_def(IntegerAttr[I64])
    window = opt_prop_def(IntegerAttr[I64])
    irdl_options = (ParsePropInAttrDict(),)
    assembly_format = "$tensor $source $dest attr-dict"
    ALLOWED: ClassVar[tuple[str | None, str | None]] = (None, None)

    def __init__(self, tensor: str, source: str, dest: str, nbytes: int,
                 window: int | None = None):
        props: dict[str, Attribute] = {
            "tensor": StringAttr(tensor), "source": StringAttr(source),
            "dest": StringAttr(dest), "bytes": int_prop(nbytes),
        }
        if window is not None:
            props["window"] = int_prop(window)
        super().__init__(properties=props)

    def verify_(self) -> None:
        check_location(self.source.data)
        check_location(self.dest.data)
        _positive("bytes", self.bytes)
        src_need, dst_need = self.ALLOWED
        if src_need == "dram" and self.source.data != "dram":
            raise VerifyException(f"{self.name} reads from dram, not '{self.source.data}'")
        if dst_need == "dram" and self.dest.data != "dram":
            raise VerifyException(f"{self.name} writes to dram, not '{self.dest.data}'")
        if src_need == "chip" and "dram" in (self.source.data, self.dest.data):
            raise VerifyException(f"{self.name} moves data on chip only")


@irdl_op_definition
class MemLoadOp(_TransferOp):
    """``MEM.load``: copy a tensor from DRAM to an on-chip location.

    Example: ``metaop.mem_load "x" "dram" "a[88:96]" {bytes = 150528 : i64}``
    """

    name = "metaop.mem_load"
    ALLOWED: ClassVar[tuple[str | None, str | None]] = ("dram", None)


@irdl_op_definition
class MemStoreOp(_TransferOp):
    """``MEM.store``: copy a tensor from an on-chip location to DRAM.

    Example: ``metaop.mem_store "relu1" "a[72:80]" "dram" {bytes = 802816 : i64}``
    """

    name = "metaop.mem_store"
    ALLOWED: ClassVar[tuple[str | None, str | None]] = (None, "dram")


@irdl_op_definition
class MemMoveOp(_TransferOp):
    """``MEM.move``: on-chip copy between memory-mode arrays and the global buffer.

    Example: ``metaop.mem_move "relu1" "a[72:80]" "gb" {bytes = 4096 : i64}``
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
    [],
)
