"""Parse `.cmsasm` text back into the `metaop` IR: the inverse of `printer.py`.

``parse_flow(text)`` builds the module `cim-to-metaop` builds: the module attributes
(``cim.model``, ``cim.arch``, ``metaop.tensors``/``inputs``/``outputs``), one
`metaop.segment` per ``.segment``, and every statement and ``parallel`` block in file
order, so ``print_flow(parse_flow(text))`` reproduces a printed flow byte for byte.

The grammar is docs/cmsasm.md: ``;`` comments, blank lines, ``key=value`` fields in
any order, optional ``instances=`` (default 1), ``window=``, ``VEC`` ``in=``, and
``.segment`` ``ops=``/``predicted=`` (default empty / 0).  Checked here: syntax,
nesting, names, ranges, that every referenced tensor has a ``.tensor`` line before
it, and each op's own `metaop` verifier.  Hardware limits, modes and dependencies are
the simulator's business.  Every error is one line, ``FILE:LINE: message``.

The ``.arch`` header carries every hardware field, while the module records hardware
by preset name or file path (``cim.arch``).  A header naming a preset with exactly
its fields becomes that preset; any other header needs ``arch=`` (a preset or file
whose fields equal the header's).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from xdsl.dialects.builtin import (
    ArrayAttr,
    DenseArrayBase,
    DictionaryAttr,
    IntegerAttr,
    ModuleOp,
    StringAttr,
    i64,
)
from xdsl.ir import Attribute, Block, Operation, Region
from xdsl.utils.exceptions import VerifyException

from cmswitch.arch import Arch, arch_from_dict, load_arch, preset_names
from cmswitch.dialects import metaop
from cmswitch.errors import CMSwitchError
from cmswitch.names import is_flow_name
from cmswitch.dialects.metaop import INPUTS_ATTR, OUTPUTS_ATTR, TENSORS_ATTR
from cmswitch.dialects.cim import ARCH_ATTR

_INT = re.compile(r"\d+\Z")
_I64_MAX = 2**63 - 1


class _Fail(Exception):
    """A parse error without its position (the line loop adds FILE:LINE)."""


# ----------------------------------------------------------------------------------
# tokens and fields


def _split(tokens: Sequence[str], what: str) -> tuple[list[str], dict[str, str]]:
    """Positional tokens in order, and the ``key=value`` fields (no key twice)."""
    positional: list[str] = []
    fields: dict[str, str] = {}
    for token in tokens:
        key, eq, value = token.partition("=")
        if not eq:
            positional.append(token)
            continue
        if key in fields:
            raise _Fail(f"{what}: field {key}= given twice")
        fields[key] = value
    return positional, fields


def _take(fields: dict[str, str], what: str, required: tuple[str, ...],
          optional: tuple[str, ...] = ()) -> dict[str, str | None]:
    """The fields by key (None for a missing optional one); unknown or missing -> error."""
    for key in fields:
        if key not in required and key not in optional:
            raise _Fail(f"{what}: unknown field {key}=")
    for key in required:
        if key not in fields:
            raise _Fail(f"{what}: missing field {key}=")
    return {key: fields.get(key) for key in required + optional}


def _positional(positional: list[str], what: str, shape: str) -> None:
    """Positional tokens must match `shape` (space-separated; ``->`` literal)."""
    want = shape.split()
    if len(positional) != len(want) or any(
            w == "->" and p != "->" for w, p in zip(want, positional)):
        raise _Fail(f"{what}: expected `{what} {shape}` (key=value fields aside), "
                    f"got `{' '.join([what, *positional])}`")


def _int(text: str | None, key: str) -> int:
    """A non-negative decimal i64."""
    if text is None or not _INT.match(text) or int(text) > _I64_MAX:
        raise _Fail(f"{key}: expected a non-negative decimal integer, got {text!r}")
    return int(text)


def _opt_int(text: str | None, key: str) -> int | None:
    return None if text is None else _int(text, key)


def _name(text: str, what: str) -> str:
    if not is_flow_name(text):
        raise _Fail(f"bad {what} name {text!r} (allowed: letters, digits, _ . : / -)")
    return text


def _range(text: str) -> tuple[int, int]:
    """``a[LO:HI]`` with LO < HI, as (LO, HI) (read by `metaop.LocationAttr`)."""
    try:
        where = metaop.LocationAttr.from_text(text)
    except VerifyException as error:
        need = "need LO < HI" if "LO < HI" in str(error) else "expected a[LO:HI]"
        raise _Fail(f"bad array range {text!r} ({need})") from None
    if where.range is None:
        raise _Fail(f"bad array range {text!r} (expected a[LO:HI])")
    return where.range


def _location(text: str) -> metaop.LocationAttr:
    """``dram``, ``gb``, ``stream`` or ``a[LO:HI]`` (read by `metaop.LocationAttr`)."""
    if text in metaop.NAMED_LOCATIONS:
        return metaop.LocationAttr.of(text)
    return metaop.LocationAttr.arrays(*_range(text))


def _tiles(text: str | None) -> tuple[int, int]:
    tk, x, tn = (text or "").partition("x")
    if not x:
        raise _Fail(f"tiles= needs TKxTN, got {text!r}")
    return _int(tk, "tiles"), _int(tn, "tiles")


# ----------------------------------------------------------------------------------
# the parser


class _FlowParser:
    """Line-by-line state: header, open segment, open parallel block."""

    def __init__(self, filename: str, arch: str | None):
        self.filename = filename
        self.arch_option = arch
        self.arch_spec: str | None = None
        self.model: str | None = None
        self.tensors: dict[str, int] = {}
        self.inputs: list[str] = []
        self.outputs: list[str] = []
        self.segments: list[Operation] = []
        self.segment_line = 0
        self.segment_head: tuple[int, str, int] = (0, "", 0)
        self.body: list[Operation] = []
        self.block_line = 0
        self.block: list[Operation] = []
        self.interned = _Interned()

    # -- entry ------------------------------------------------------------------

    def parse(self, text: str) -> ModuleOp:
        for lineno, raw in enumerate(text.split("\n"), start=1):
            tokens = raw.split(";", 1)[0].split()
            if not tokens:
                continue
            try:
                self._line(tokens, lineno)
            except _Fail as fail:
                raise CMSwitchError(f"{self.filename}:{lineno}: {fail}") from None
            except VerifyException as error:
                raise CMSwitchError(f"{self.filename}:{lineno}: "
                                    f"{' '.join(str(error).split())}") from None
        if self.block_line:
            self._fail_at(self.block_line, "`parallel {` is never closed")
        if self.segment_line:
            self._fail_at(self.segment_line, "`.segment` has no `.end`")
        if self.arch_spec is None:
            self._fail_at(1, "missing `.arch` header")
        return self._module()

    def _fail_at(self, line: int, message: str) -> NoReturn:
        raise CMSwitchError(f"{self.filename}:{line}: {message}")

    def _module(self) -> ModuleOp:
        attrs: dict[str, Attribute] = {}
        if self.model is not None:
            attrs["cim.model"] = StringAttr(self.model)
        attrs[ARCH_ATTR] = StringAttr(self.arch_spec or "")
        attrs[TENSORS_ATTR] = DictionaryAttr(
            {name: IntegerAttr(size, i64) for name, size in self.tensors.items()})
        attrs[INPUTS_ATTR] = ArrayAttr([StringAttr(n) for n in self.inputs])
        attrs[OUTPUTS_ATTR] = ArrayAttr([StringAttr(n) for n in self.outputs])
        return ModuleOp(self.segments, attributes=attrs)

    # -- one line ----------------------------------------------------------------

    def _line(self, tokens: list[str], line: int) -> None:
        head = tokens[0]
        if head == "parallel":
            self._open_block(tokens, line)
        elif head == "}":
            self._close_block(tokens)
        elif head == ".segment":
            self._open_segment(tokens, line)
        elif head == ".end":
            self._close_segment(tokens)
        elif head.startswith("."):
            if self.segment_line:
                raise _Fail(f"{head} inside the segment opened at line {self.segment_line}")
            directive = _DIRECTIVES.get(head)
            if directive is None:
                raise _Fail(f"unknown directive {head}")
            directive(self, tokens, line)
        else:
            self._statement(tokens)

    def _statement(self, tokens: list[str]) -> None:
        head = tokens[0]
        kind = "VEC" if head.startswith("VEC.") else head
        build = _STATEMENTS.get(kind)
        if build is None:
            raise _Fail(f"unknown statement {head}")
        if not self.segment_line:
            raise _Fail(f"{head} outside a segment")
        positional, fields = _split(tokens[1:], head)
        op = build(self, head, positional, fields)
        op.verify_()
        if self.block_line and isinstance(op, metaop.SwitchOp):
            raise _Fail("CM.switch cannot appear inside a parallel block")
        (self.block if self.block_line else self.body).append(op)

    # -- structure ---------------------------------------------------------------

    def _open_block(self, tokens: list[str], line: int) -> None:
        if tokens[1:] != ["{"]:
            raise _Fail("expected `parallel {`")
        if not self.segment_line:
            raise _Fail("`parallel {` outside a segment")
        if self.block_line:
            raise _Fail(f"nested `parallel {{` (block opened at line {self.block_line})")
        self.block_line, self.block = line, []

    def _close_block(self, tokens: list[str]) -> None:
        if len(tokens) != 1:
            raise _Fail("unexpected text after `}`")
        if not self.block_line:
            raise _Fail("`}` without `parallel {`")
        self.body.append(metaop.ParallelOp.create(regions=[Region(Block(self.block))]))
        self.block_line, self.block = 0, []

    def _open_segment(self, tokens: list[str], line: int) -> None:
        if self.segment_line:
            raise _Fail(f"`.segment` inside the segment opened at line {self.segment_line}")
        if self.arch_spec is None:
            raise _Fail("`.segment` before the `.arch` header")
        positional, fields = _split(tokens[1:], ".segment")
        _positional(positional, ".segment", "ID")
        got = _take(fields, ".segment", (), ("ops", "predicted"))
        seg_id = _int(positional[0], ".segment ID")
        predicted = _int(got["predicted"], "predicted") if got["predicted"] is not None else 0
        self.segment_line, self.body = line, []
        self.segment_head = (seg_id, got["ops"] or "", predicted)

    def _close_segment(self, tokens: list[str]) -> None:
        if len(tokens) != 1:
            raise _Fail("unexpected text after `.end`")
        if not self.segment_line:
            raise _Fail("`.end` without `.segment`")
        if self.block_line:
            raise _Fail(f"`.end` inside the `parallel` block opened at line {self.block_line}")
        seg_id, ops, predicted = self.segment_head
        v = self.interned
        self.segments.append(metaop.SegmentOp.create(
            properties={"id": v.i(seg_id), "ops": v.s(ops), "predicted": v.i(predicted)},
            regions=[Region(Block(self.body))]))
        self.segment_line, self.body = 0, []

    # -- header ------------------------------------------------------------------

    def _arch(self, tokens: list[str], line: int) -> None:
        if self.arch_spec is not None:
            raise _Fail("second `.arch` header")
        if self.segments:
            raise _Fail("`.arch` after the first `.segment`")
        positional, fields = _split(tokens[1:], ".arch")
        _positional(positional, ".arch", "NAME")
        data: dict[str, Any] = {"name": positional[0]}
        for key, value in fields.items():
            data[key] = _number(value, key)
        try:
            header = arch_from_dict(data, origin="`.arch`")
        except CMSwitchError as error:
            raise _Fail(str(error)) from None
        self.arch_spec = self._arch_spec(header)

    def _arch_spec(self, header: Arch) -> str:
        """The preset name or file recorded as ``cim.arch`` for this header."""
        if self.arch_option is not None:
            given = load_arch(self.arch_option)
            field = _first_difference(given, header)
            if field is not None:
                raise _Fail(f"hardware '{self.arch_option}' differs from the `.arch` header "
                            f"in field '{field}'")
            return self.arch_option
        if header.name not in preset_names():
            raise _Fail(f"hardware '{header.name}' is not a preset "
                        f"({', '.join(preset_names())}); give its description file (arch=FILE)")
        field = _first_difference(load_arch(header.name), header)
        if field is not None:
            raise _Fail(f"the `.arch` header differs from preset '{header.name}' in field "
                        f"'{field}'; give its description file (arch=FILE)")
        return header.name

    def _model(self, tokens: list[str], line: int) -> None:
        if self.model is not None:
            raise _Fail("second `.model` line")
        if len(tokens) != 2:
            raise _Fail("expected `.model NAME`")
        self.model = _name(tokens[1], "model")

    def _tensor(self, tokens: list[str], line: int) -> None:
        positional, fields = _split(tokens[1:], ".tensor")
        if not positional:
            raise _Fail("expected `.tensor NAME bytes=B [input] [output]`")
        name = _name(positional[0], "tensor")
        flags = positional[1:]
        for flag in flags:
            if flag not in ("input", "output") or flags.count(flag) > 1:
                raise _Fail(f".tensor {name}: unexpected `{flag}` (flags: input, output)")
        if name in self.tensors:
            raise _Fail(f"tensor '{name}' declared twice")
        self.tensors[name] = _int(_take(fields, ".tensor", ("bytes",))["bytes"], "bytes")
        if "input" in flags:
            self.inputs.append(name)
        if "output" in flags:
            self.outputs.append(name)

    # -- references --------------------------------------------------------------

    def ref(self, text: str | None, key: str) -> metaop.TensorRefAttr:
        """A tensor reference ``NAME@LOCATION`` of a declared tensor."""
        if not text:
            raise _Fail(f"{key}= needs NAME@LOCATION")
        known = self.interned.refs.get(text)
        if known is not None:
            return known
        name, at, where = text.rpartition("@")
        if not at:
            raise _Fail(f"bad tensor reference {text!r} (expected NAME@LOCATION)")
        loc = self.interned.loc(where)
        if name not in self.tensors:
            raise _Fail(f"tensor '{_name(name, 'tensor')}' has no `.tensor` line before it")
        ref = self.interned.refs[text] = metaop.TensorRefAttr(self.interned.s(name), loc)
        return ref

    def refs(self, text: str | None, key: str) -> ArrayAttr:
        """Comma-separated tensor references, as an array attribute."""
        if not text:
            raise _Fail(f"{key}= needs NAME@LOCATION[,...]")
        return ArrayAttr([self.ref(part, key) for part in text.split(",")])


def _number(text: str, key: str) -> int | float:
    if _INT.match(text):
        return int(text)
    try:
        value = float(text)
    except ValueError:
        raise _Fail(f"{key}= needs a number, got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise _Fail(f"{key}= needs a finite number, got {text!r}")
    return value


def _fmt(value: Any) -> str:
    """A field as printer.py writes it."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def _first_difference(a: Arch, b: Arch) -> str | None:
    """The first field whose printed value differs or that only one of them gives
    (an energy field), or None."""
    fa, fb = a.header_fields(), b.header_fields()
    keys = list(fa) + [key for key in fb if key not in fa]
    return next((key for key in keys if _fmt(fa.get(key)) != _fmt(fb.get(key))), None)


# ----------------------------------------------------------------------------------
# statements: (parser, opcode, positional tokens, fields) -> op
#
# Ops are made with `create` from interned property values, in the order the dialect's
# constructors use (the generic MLIR form prints them in that order), then checked by
# the op's own verifier.  The constructors build fresh attributes on every call, which
# made them most of the parse time (~250 us per op against ~20).


class _Interned:
    """Property values by Python value: xDSL attributes are immutable, so ops with
    equal values can share one attribute object."""

    def __init__(self) -> None:
        self.strings: dict[str, StringAttr] = {}
        self.ints: dict[int, IntegerAttr] = {}
        self.arrays: dict[tuple[int, ...], DenseArrayBase] = {}
        self.locs: dict[str, metaop.LocationAttr] = {}
        self.refs: dict[str, metaop.TensorRefAttr] = {}
        self.modes = {m.value: metaop.ModeAttr(m) for m in metaop.SwitchMode}

    def loc(self, text: str) -> metaop.LocationAttr:
        attr = self.locs.get(text)
        if attr is None:
            attr = self.locs[text] = _location(text)
        return attr

    def s(self, text: str) -> StringAttr:
        attr = self.strings.get(text)
        if attr is None:
            attr = self.strings[text] = StringAttr(text)
        return attr

    def i(self, value: int) -> IntegerAttr:
        attr = self.ints.get(value)
        if attr is None:
            attr = self.ints[value] = IntegerAttr(value, i64)
        return attr

    def a(self, *values: int) -> DenseArrayBase:
        attr = self.arrays.get(values)
        if attr is None:
            attr = self.arrays[values] = DenseArrayBase.from_list(i64, list(values))
        return attr


def _switch(p: _FlowParser, what: str, pos: list[str], fields: dict[str, str]) -> Operation:
    _positional(pos, what, "MODE a[LO:HI]")
    _take(fields, what, ())
    if pos[0] not in metaop.MODES:
        raise _Fail(f"CM.switch mode must be TOM or TOC, got '{pos[0]}'")
    v = p.interned
    return metaop.SwitchOp.create(properties={"mode": v.modes[pos[0]],
                                              "arrays": v.a(*_range(pos[1]))})


def _load_weight(p: _FlowParser, what: str, pos: list[str], fields: dict[str, str]) -> Operation:
    _positional(pos, what, "OP -> a[LO:HI]")
    got = _take(fields, what, ("tiles", "copies", "bytes"))
    v = p.interned
    return metaop.LoadWeightOp.create(properties={
        "op": v.s(_name(pos[0], "operator")), "arrays": v.a(*_range(pos[2])),
        "tiles": v.a(*_tiles(got["tiles"])), "copies": v.i(_int(got["copies"], "copies")),
        "bytes": v.i(_int(got["bytes"], "bytes")),
    })


def _write_operand(p: _FlowParser, what: str, pos: list[str], fields: dict[str, str]) -> Operation:
    _positional(pos, what, "OP -> a[LO:HI]")
    got = _take(fields, what, ("in", "tiles", "copies", "bytes"), ("instances",))
    instances = _opt_int(got["instances"], "instances")
    v = p.interned
    return metaop.WriteOperandOp.create(properties={
        "op": v.s(_name(pos[0], "operator")), "arrays": v.a(*_range(pos[2])),
        "input": p.ref(got["in"], "in"), "tiles": v.a(*_tiles(got["tiles"])),
        "copies": v.i(_int(got["copies"], "copies")), "bytes": v.i(_int(got["bytes"], "bytes")),
        "instances": v.i(1 if instances is None else instances),
    })


def _mvm(p: _FlowParser, what: str, pos: list[str], fields: dict[str, str]) -> Operation:
    _positional(pos, what, "OP a[LO:HI]")
    got = _take(fields, what, ("vectors", "k", "n", "in", "out"), ("window",))
    v = p.interned
    props: dict[str, Attribute] = {
        "op": v.s(_name(pos[0], "operator")), "arrays": v.a(*_range(pos[1])),
        "vectors": v.i(_int(got["vectors"], "vectors")), "k": v.i(_int(got["k"], "k")),
        "n": v.i(_int(got["n"], "n")), "input": p.ref(got["in"], "in"),
        "output": p.ref(got["out"], "out"),
    }
    if got["window"] is not None:
        props["window"] = v.i(_int(got["window"], "window"))
    return metaop.MvmOp.create(properties=props)


def _vec(p: _FlowParser, what: str, pos: list[str], fields: dict[str, str]) -> Operation:
    _positional(pos, what, "NAME")
    got = _take(fields, what, ("ops", "out"), ("in", "window"))
    if what == "VEC.":
        raise _Fail("VEC needs a kind: VEC.KIND NAME ...")
    v = p.interned
    props: dict[str, Attribute] = {
        "kind": v.s(_name(what[len("VEC."):], "VEC kind")), "label": v.s(_name(pos[0], "operator")),
        "ops": v.i(_int(got["ops"], "ops")),
    }
    if got["in"] is not None:
        props["inputs"] = p.refs(got["in"], "in")
    props["outputs"] = p.refs(got["out"], "out")
    if got["window"] is not None:
        props["window"] = v.i(_int(got["window"], "window"))
    return metaop.VecOp.create(properties=props)


def _transfer(cls: type[metaop.MemLoadOp | metaop.MemStoreOp | metaop.MemMoveOp]
              ) -> Callable[[_FlowParser, str, list[str], dict[str, str]], Operation]:
    def build(p: _FlowParser, what: str, pos: list[str], fields: dict[str, str]) -> Operation:
        _positional(pos, what, "TENSOR@LOC -> LOC")
        got = _take(fields, what, ("bytes",), ("window",))
        ref = p.ref(pos[0], what)
        v = p.interned
        props: dict[str, Attribute] = {
            "tensor": ref.tensor, "source": ref.loc, "dest": v.loc(pos[2]),
            "bytes": v.i(_int(got["bytes"], "bytes")),
        }
        if got["window"] is not None:
            props["window"] = v.i(_int(got["window"], "window"))
        return cls.create(properties=props)
    return build


_STATEMENTS: dict[str, Callable[[_FlowParser, str, list[str], dict[str, str]], Operation]] = {
    "CM.switch": _switch,
    "CIM.load_weight": _load_weight,
    "CIM.write_operand": _write_operand,
    "CIM.mvm": _mvm,
    "VEC": _vec,
    "MEM.load": _transfer(metaop.MemLoadOp),
    "MEM.store": _transfer(metaop.MemStoreOp),
    "MEM.move": _transfer(metaop.MemMoveOp),
}

_DIRECTIVES: dict[str, Callable[[_FlowParser, list[str], int], None]] = {
    ".arch": _FlowParser._arch,
    ".model": _FlowParser._model,
    ".tensor": _FlowParser._tensor,
}


def parse_flow(text: str | bytes, filename: str = "<flow>", arch: str | None = None) -> ModuleOp:
    """Parse `.cmsasm` text (str, or UTF-8 bytes) into the `metaop` module that
    `cim-to-metaop` builds; ``print_flow`` of the result reproduces a printed flow.

    `filename` names the text in errors.  `arch` (a preset name or a description file
    path) is recorded as ``cim.arch`` and must have exactly the `.arch` header's fields;
    without it the header must name a preset and match it.  Raises CMSwitchError
    ``"FILE:LINE: message"`` (one line) for a syntax, nesting, name, range or
    verifier error, an undeclared tensor, or a missing/mismatched `.arch` header.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as error:
            raise CMSwitchError(f"{filename}: not UTF-8 text ({error.reason} "
                                f"at byte {error.start})") from None
    return _FlowParser(filename, arch).parse(text)
