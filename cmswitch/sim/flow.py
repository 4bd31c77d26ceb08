"""Streaming parser of `.cmsasm` meta-operator flows (grammar: docs/cmsasm.md).

`iter_records(lines, name)` turns lines into records one at a time, so a flow of
100k statements is never held in memory twice.  Every record keeps its 1-based line
number.  Syntax and nesting errors raise `CMSwitchError("FILE:LINE: message")`.

Records:
- `ArchDecl`, `ModelDecl`, `TensorDecl` — the header directives;
- `SegmentBegin` / `SegmentEnd`, `ParallelBegin` / `ParallelEnd` — structure;
- `Statement` — one meta-operator (`CM.*`, `CIM.*`, `MEM.*`, `VEC.*`).

The parser checks syntax and nesting only (statements inside a segment, no nested
segments or `parallel` blocks, every block closed).  Hardware limits, modes,
contents and dependencies are the simulator's business.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, NamedTuple

from cmswitch.arch import ENERGY_FIELDS  # noqa: F401  (the optional `.arch` fields)
from cmswitch.errors import CMSwitchError
from cmswitch.names import is_flow_name

ARCH_FIELDS = (
    "arrays", "rows", "cols", "cell_bits", "weight_bits", "act_bits", "mvm_cycles",
    "internal_bw_bits", "external_bw_bytes", "global_buffer_bytes",
    "global_buffer_bw_bytes", "switch_cycles", "weight_write_bw_bytes",
    "vector_ops_per_cycle", "clock_mhz",
)
"""The `.arch` fields every flow gives."""
OPTIONAL_FIELDS = ("stream_fusion",)
"""The `.arch` fields a flow may leave out (besides the energy fields): `stream_fusion`
(default 0)."""




class Loc(NamedTuple):
    """A location: kind "a" (memory-mode arrays lo..hi-1), "gb", "dram" or "stream"
    (handed from its writer to the digital unit, no port)."""

    kind: str
    lo: int = 0
    hi: int = 0

    def __str__(self) -> str:
        if self.kind == "a":
            return f"a[{self.lo}:{self.hi}]"
        return self.kind

    @property
    def on_chip(self) -> bool:
        return self.kind != "dram"


class Ref(NamedTuple):
    """A tensor reference `TENSOR@LOCATION`."""

    tensor: str
    loc: Loc

    def __str__(self) -> str:
        return f"{self.tensor}@{self.loc}"


@dataclass(slots=True, frozen=True)
class ArchDecl:
    line: int
    name: str
    fields: dict


@dataclass(slots=True, frozen=True)
class ModelDecl:
    line: int
    name: str


@dataclass(slots=True, frozen=True)
class TensorDecl:
    line: int
    name: str
    nbytes: int
    is_input: bool
    is_output: bool


@dataclass(slots=True, frozen=True)
class SegmentBegin:
    line: int
    id: int
    ops: tuple
    predicted: int | None


@dataclass(slots=True, frozen=True)
class SegmentEnd:
    line: int


@dataclass(slots=True, frozen=True)
class ParallelBegin:
    line: int


@dataclass(slots=True, frozen=True)
class ParallelEnd:
    line: int


@dataclass(slots=True)
class Statement:
    """One meta-operator.

    kind: "CM.switch", "CIM.load_weight", "CIM.write_operand", "CIM.mvm", "VEC",
    "MEM.load", "MEM.store", "MEM.move"; opcode is the word as written (`VEC.relu`).
    op: operator (CIM.*) or VEC name; mode: "TOM"/"TOC" for CM.switch.
    arrays: the compute arrays (CIM.*) or the switched arrays (CM.switch).
    nbytes: `bytes=` (bytes); window: `window=` (bytes) or None.
    """

    line: int
    kind: str
    opcode: str
    op: str = ""
    mode: str = ""
    arrays: Loc | None = None
    reads: tuple = ()
    writes: tuple = ()
    nbytes: int = 0
    tiles: tuple = (1, 1)
    copies: int = 1
    instances: int = 1
    vectors: int = 0
    k: int = 0
    n: int = 0
    ops: int = 0
    window: int | None = None
    in_block: bool = False


class _Fail(Exception):
    """A syntax error without its position (added by the caller)."""


# ----------------------------------------------------------------------------------
# sources


class FlowSource:
    """A flow given as text or as a path; `lines()` can be iterated more than once."""

    def __init__(self, flow: str | os.PathLike) -> None:
        self._text: str | None = None
        self._path: Path | None = None
        if isinstance(flow, str) and "\n" in flow:
            self._text = flow
            self.name = "<flow>"
            return
        self._path = Path(flow)
        self.name = str(flow)
        if not self._path.is_file():
            raise FileNotFoundError(f"{flow}: no such flow file")

    def lines(self) -> Iterator[str]:
        """The lines, split at "\n" only (a "\r" before it is whitespace)."""
        if self._text is not None:
            yield from self._text.split("\n")
            return
        with open(self._path, encoding="utf-8", newline="\n") as handle:
            try:
                yield from handle
            except UnicodeDecodeError as error:
                raise CMSwitchError(f"{self.name}: not UTF-8 text ({error.reason} "
                                    f"at byte {error.start})") from None


def parse_flow(flow: str | os.PathLike) -> list:
    """All records of a flow (text or path) as a list; for tests and small flows."""
    source = FlowSource(flow)
    return list(iter_records(source.lines(), source.name))


# ----------------------------------------------------------------------------------
# the record stream


def iter_records(lines: Iterable[str], name: str = "<flow>") -> Iterator:
    """Yield the records of a flow, checking syntax and nesting."""
    segment_line = 0
    block_line = 0
    lineno = 0
    for lineno, raw in enumerate(lines, start=1):
        try:
            tokens = _tokens(raw)
            if not tokens:
                continue
            record = _parse_tokens(tokens, lineno)
        except _Fail as fail:
            raise CMSwitchError(f"{name}:{lineno}: {fail}") from None
        segment_line, block_line = _check_nesting(record, segment_line, block_line, name)
        if isinstance(record, Statement) and block_line:
            record.in_block = True
        yield record
    if block_line:
        raise CMSwitchError(f"{name}:{block_line}: `parallel {{` is never closed")
    if segment_line:
        raise CMSwitchError(f"{name}:{segment_line}: `.segment` has no `.end`")


_TEXT = re.compile(r"[\x21-\x7e \t]*\Z")
"""What a flow line may hold before its comment: printable ASCII, spaces and tabs."""
_SEPARATORS = re.compile(r"[ \t]+")


def _tokens(raw: str) -> list:
    """The tokens of one line: text before `;`, split at spaces and tabs.  Raises
    _Fail for any other character (non-ASCII digits or letters, NBSP, vertical tab,
    control characters): the grammar is ASCII (docs/cmsasm.md)."""
    text = raw.split(";", 1)[0].rstrip("\r\n")
    if not _TEXT.match(text):
        bad = next(c for c in text if not _TEXT.match(c))
        raise _Fail(f"character {bad!r} (U+{ord(bad):04X}) outside the ASCII grammar")
    return [t for t in _SEPARATORS.split(text.strip(" \t")) if t]


def iter_accesses(lines: Iterable[str]) -> Iterator[tuple]:
    """Yield `(line, reads, writes)` tensor references of each statement, cheaply.

    A lenient scan for a first pass over a flow (the simulator's liveness pre-pass):
    it agrees with `iter_records` on every valid line and skips what it cannot read
    (the full parse reports those).  reads/writes are lists of (tensor, Loc).
    """
    for lineno, raw in enumerate(lines, start=1):
        text = raw.split(";", 1)[0]
        if "@" not in text:
            continue
        tokens = text.split()
        try:
            reads, writes = _scan_refs(tokens)
        except _Fail:
            continue
        yield lineno, reads, writes


def _scan_refs(tokens: list) -> tuple:
    if tokens[0].startswith("MEM."):
        positional = [token for token in tokens[1:] if "=" not in token]
        if len(positional) != 3:
            return [], []
        source = _ref(positional[0])
        return [source], [Ref(source.tensor, _loc(positional[2]))]
    reads: list = []
    writes: list = []
    for token in tokens[1:]:
        if token.startswith("in="):
            reads.extend(_refs(token[3:]))
        elif token.startswith("out="):
            writes.extend(_refs(token[4:]))
    return reads, writes


def _check_nesting(record, segment_line: int, block_line: int, name: str) -> tuple:
    """Return the new (open segment line, open block line); 0 means none open."""
    line = record.line

    def fail(message: str):
        raise CMSwitchError(f"{name}:{line}: {message}")

    if isinstance(record, SegmentBegin):
        if segment_line:
            fail(f"`.segment` inside the segment opened at line {segment_line}")
        return line, 0
    if isinstance(record, SegmentEnd):
        if not segment_line:
            fail("`.end` without `.segment`")
        if block_line:
            fail(f"`.end` inside the `parallel` block opened at line {block_line}")
        return 0, 0
    if isinstance(record, ParallelBegin):
        if not segment_line:
            fail("`parallel {` outside a segment")
        if block_line:
            fail(f"nested `parallel {{` (block opened at line {block_line})")
        return segment_line, line
    if isinstance(record, ParallelEnd):
        if not block_line:
            fail("`}` without `parallel {`")
        return segment_line, 0
    if isinstance(record, Statement):
        if not segment_line:
            fail(f"{record.opcode} outside a segment")
        return segment_line, block_line
    if segment_line:
        fail(f"header directive inside the segment opened at line {segment_line}")
    return segment_line, block_line


def _parse_tokens(tokens: list, line: int):
    head = tokens[0]
    if head == "parallel":
        if tokens[1:] != ["{"]:
            raise _Fail("expected `parallel {`")
        return ParallelBegin(line)
    if head == "}":
        if len(tokens) != 1:
            raise _Fail("unexpected text after `}`")
        return ParallelEnd(line)
    if head.startswith("."):
        parser = _DIRECTIVES.get(head)
        if parser is None:
            raise _Fail(f"unknown directive {head}")
        return parser(tokens, line)
    kind = "VEC" if head.startswith("VEC.") and len(head) > 4 else head
    parser = _STATEMENTS.get(kind)
    if parser is None:
        raise _Fail(f"unknown meta-operator {head}")
    positional, fields = _split_fields(tokens[1:], head)
    return parser(Statement(line, kind, head), positional, fields)


def _split_fields(tokens: list, what: str) -> tuple:
    """Separate positional tokens (in order) from `key=value` fields."""
    positional = []
    fields = {}
    for token in tokens:
        key, eq, value = token.partition("=")
        if not eq:
            positional.append(token)
            continue
        if key in fields:
            raise _Fail(f"{what}: field {key}= given twice")
        fields[key] = value
    return positional, fields


# ----------------------------------------------------------------------------------
# field helpers


_GOOD_NAMES: set = set()


def _name(text: str, what: str) -> str:
    if text in _GOOD_NAMES:
        return text
    if not is_flow_name(text):
        raise _Fail(f"bad {what} name {text!r}")
    if len(_GOOD_NAMES) < 1_000_000:
        _GOOD_NAMES.add(text)
    return text


MAX_VALUE = 10 ** 15
"""Largest number a flow may state (bytes, vectors, ops, cycles): beyond any chip or
model (a petabyte), and exact in a double."""
_DIGITS = re.compile(r"[0-9]+\Z")
_DECIMAL = re.compile(r"[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?\Z")


def _int(text: str, key: str, minimum: int = 0) -> int:
    """An ASCII decimal integer in minimum..MAX_VALUE (no sign, no `_`, no other
    digits)."""
    if not _DIGITS.match(text) or len(text) > 16:
        raise _Fail(f"{key}= needs a decimal integer (ASCII digits) up to {MAX_VALUE}, "
                    f"got {text!r}")
    value = int(text, 10)
    if value < minimum or value > MAX_VALUE:
        raise _Fail(f"{key}= must be in {minimum}..{MAX_VALUE}, got {value}")
    return value


def _number(text: str, key: str) -> int | float:
    """An ASCII decimal number (integer, fraction, exponent) up to MAX_VALUE."""
    if _DIGITS.match(text):
        return _int(text, key)
    if not _DECIMAL.match(text):
        raise _Fail(f"{key}= needs a decimal number (ASCII), got {text!r}")
    value = float(text)
    if not value <= MAX_VALUE:
        raise _Fail(f"{key}= must be at most {MAX_VALUE}, got {text!r}")
    return value


_LOCS: dict = {"gb": Loc("gb"), "dram": Loc("dram"), "stream": Loc("stream")}


def _loc(text: str) -> Loc:
    loc = _LOCS.get(text)
    if loc is not None:
        return loc
    loc = _parse_loc(text)
    if len(_LOCS) < 100_000:
        _LOCS[text] = loc
    return loc


def _parse_loc(text: str) -> Loc:
    if not (text.startswith("a[") and text.endswith("]")):
        raise _Fail(f"bad location {text!r} (expected a[LO:HI], gb, dram or stream)")
    lo_text, colon, hi_text = text[2:-1].partition(":")
    if not colon:
        raise _Fail(f"bad array range {text!r} (expected a[LO:HI])")
    lo = _int(lo_text, "array range start")
    hi = _int(hi_text, "array range end")
    if hi <= lo:
        raise _Fail(f"empty array range {text!r} (need LO < HI)")
    return Loc("a", lo, hi)


def _arrays(text: str) -> Loc:
    loc = _loc(text)
    if loc.kind != "a":
        raise _Fail(f"expected an array range a[LO:HI], got {text!r}")
    return loc


def _ref(text: str) -> Ref:
    tensor, at, where = text.partition("@")
    if not at:
        raise _Fail(f"bad tensor reference {text!r} (expected TENSOR@LOCATION)")
    return Ref(_name(tensor, "tensor"), _loc(where))


def _refs(text: str) -> tuple:
    if not text:
        raise _Fail("empty tensor list")
    return tuple(_ref(part) for part in text.split(","))


def _tiles(text: str) -> tuple:
    tk, x, tn = text.partition("x")
    if not x:
        raise _Fail(f"tiles= needs TKxTN, got {text!r}")
    return _int(tk, "tiles", 1), _int(tn, "tiles", 1)


class _Fields:
    """Typed access to a statement's `key=value` fields; rejects unknown keys."""

    def __init__(self, fields: dict, what: str, allowed: tuple) -> None:
        unknown = sorted(set(fields) - set(allowed))
        if unknown:
            raise _Fail(f"{what}: unknown field {unknown[0]}=")
        self.fields = fields
        self.what = what

    def get(self, key: str, convert: Callable, default=None, required: bool = True):
        text = self.fields.get(key)
        if text is None:
            if required:
                raise _Fail(f"{self.what}: missing field {key}=")
            return default
        return convert(text, key) if convert in (_int, _pos, _number) else convert(text)


def _expect(positional: list, count: int, what: str, form: str) -> None:
    if len(positional) != count:
        raise _Fail(f"{what}: expected `{form}`")


def _pos(text: str, key: str) -> int:
    """A positive ASCII decimal integer (`_int` with minimum 1)."""
    return _int(text, key, 1)


def _window(fields: _Fields) -> int | None:
    """`window=` bytes: at least 1 (a window of nothing streams nothing)."""
    return fields.get("window", _pos, required=False)


# ----------------------------------------------------------------------------------
# directives


def _parse_arch(tokens: list, line: int) -> ArchDecl:
    if len(tokens) < 2 or "=" in tokens[1]:
        raise _Fail("`.arch` needs a NAME")
    positional, fields = _split_fields(tokens[2:], ".arch")
    if positional:
        raise _Fail(f".arch: unexpected {positional[0]!r} (expected key=value)")
    values = {key: _number(value, key) for key, value in fields.items()}
    missing = [key for key in ARCH_FIELDS if key not in values]
    if missing:
        raise _Fail(f".arch: missing field {missing[0]}=")
    return ArchDecl(line, _name(tokens[1], "arch"), values)


def _parse_model(tokens: list, line: int) -> ModelDecl:
    if len(tokens) != 2:
        raise _Fail("expected `.model NAME`")
    return ModelDecl(line, _name(tokens[1], "model"))


def _parse_tensor(tokens: list, line: int) -> TensorDecl:
    if len(tokens) < 2:
        raise _Fail("expected `.tensor NAME bytes=B [input] [output]`")
    positional, raw = _split_fields(tokens[2:], ".tensor")
    fields = _Fields(raw, ".tensor", ("bytes",))
    flags = set(positional)
    if not flags <= {"input", "output"} or len(flags) != len(positional):
        raise _Fail(f".tensor: bad flags {' '.join(positional)!r} (allowed: input output)")
    nbytes = fields.get("bytes", _int)
    return TensorDecl(line, _name(tokens[1], "tensor"), nbytes, "input" in flags, "output" in flags)


def _parse_segment(tokens: list, line: int) -> SegmentBegin:
    if len(tokens) < 2 or "=" in tokens[1]:
        raise _Fail("expected `.segment ID ops=OP,... predicted=CYCLES`")
    positional, raw = _split_fields(tokens[2:], ".segment")
    if positional:
        raise _Fail(f".segment: unexpected {positional[0]!r}")
    fields = _Fields(raw, ".segment", ("ops", "predicted"))
    ops_text = fields.get("ops", str, default="", required=False)
    ops = tuple(_name(op, "operator") for op in ops_text.split(",")) if ops_text else ()
    predicted = fields.get("predicted", _int, required=False)
    if not _DIGITS.match(tokens[1]) or len(tokens[1]) > 16:
        raise _Fail(f".segment: the ID is a decimal integer (ASCII digits), got {tokens[1]!r}")
    return SegmentBegin(line, int(tokens[1]), ops, predicted)


def _parse_end(tokens: list, line: int) -> SegmentEnd:
    if len(tokens) != 1:
        raise _Fail("unexpected text after `.end`")
    return SegmentEnd(line)


_DIRECTIVES = {
    ".arch": _parse_arch,
    ".model": _parse_model,
    ".tensor": _parse_tensor,
    ".segment": _parse_segment,
    ".end": _parse_end,
}


# ----------------------------------------------------------------------------------
# statements


def _parse_switch(st: Statement, positional: list, raw: dict) -> Statement:
    _Fields(raw, st.opcode, ())
    _expect(positional, 2, st.opcode, "CM.switch TOM|TOC a[LO:HI]")
    if positional[0] not in ("TOM", "TOC"):
        raise _Fail(f"CM.switch: mode must be TOM or TOC, got {positional[0]!r}")
    st.mode = positional[0]
    st.arrays = _arrays(positional[1])
    return st


def _parse_load_weight(st: Statement, positional: list, raw: dict) -> Statement:
    fields = _Fields(raw, st.opcode, ("tiles", "copies", "bytes"))
    _expect(positional, 3, st.opcode, "CIM.load_weight OP tiles=TKxTN copies=D bytes=B -> a[LO:HI]")
    return _weight_target(st, positional, fields)


def _parse_write_operand(st: Statement, positional: list, raw: dict) -> Statement:
    fields = _Fields(raw, st.opcode, ("in", "tiles", "copies", "bytes", "instances"))
    _expect(positional, 3, st.opcode,
            "CIM.write_operand OP in=T@LOC tiles=TKxTN copies=D bytes=B [instances=I] -> a[LO:HI]")
    st.reads = (fields.get("in", _ref),)
    st.instances = fields.get("instances", _int, default=1, required=False)
    if st.instances < 1:
        raise _Fail(f"{st.opcode}: instances= must be >= 1")
    return _weight_target(st, positional, fields)


def _weight_target(st: Statement, positional: list, fields: _Fields) -> Statement:
    if positional[1] != "->":
        raise _Fail(f"{st.opcode}: expected `-> a[LO:HI]` after the operator")
    st.op = _name(positional[0], "operator")
    st.arrays = _arrays(positional[2])
    st.tiles = fields.get("tiles", _tiles)
    st.copies = fields.get("copies", _int)
    if st.copies < 1:
        raise _Fail(f"{st.opcode}: copies= must be >= 1")
    st.nbytes = fields.get("bytes", _int)
    return st


def _parse_mvm(st: Statement, positional: list, raw: dict) -> Statement:
    fields = _Fields(raw, st.opcode, ("vectors", "k", "n", "in", "out", "window"))
    _expect(positional, 2, st.opcode, "CIM.mvm OP a[LO:HI] vectors=M k=K n=N in=T@LOC out=T@LOC")
    st.op = _name(positional[0], "operator")
    st.arrays = _arrays(positional[1])
    st.vectors = fields.get("vectors", _pos)
    st.k = fields.get("k", _pos)
    st.n = fields.get("n", _pos)
    st.reads = (fields.get("in", _ref),)
    st.writes = (fields.get("out", _ref),)
    st.window = _window(fields)
    return st


def _parse_vec(st: Statement, positional: list, raw: dict) -> Statement:
    fields = _Fields(raw, st.opcode, ("ops", "in", "out", "window"))
    _expect(positional, 1, st.opcode, "VEC.KIND NAME ops=E in=T@LOC,... out=T@LOC,...")
    _name(st.opcode[4:], "VEC kind")
    st.op = _name(positional[0], "VEC")
    st.ops = fields.get("ops", _int)
    st.reads = fields.get("in", _refs, default=(), required=False)
    st.writes = fields.get("out", _refs)
    st.window = _window(fields)
    return st


def _parse_mem(st: Statement, positional: list, raw: dict) -> Statement:
    fields = _Fields(raw, st.opcode, ("bytes", "window"))
    _expect(positional, 3, st.opcode, f"{st.opcode} T@LOC -> LOC bytes=B")
    if positional[1] != "->":
        raise _Fail(f"{st.opcode}: expected `->` between source and destination")
    source = _ref(positional[0])
    destination = _loc(positional[2])
    _check_mem_ends(st.kind, source.loc, destination)
    st.reads = (source,)
    st.writes = (Ref(source.tensor, destination),)
    st.nbytes = fields.get("bytes", _int)
    st.window = _window(fields)
    return st


def _check_mem_ends(kind: str, source: Loc, destination: Loc) -> None:
    if kind == "MEM.load" and (source.kind != "dram" or destination.kind == "dram"):
        raise _Fail("MEM.load copies from dram to an on-chip location")
    if kind == "MEM.store" and (source.kind == "dram" or destination.kind != "dram"):
        raise _Fail("MEM.store copies from an on-chip location to dram")
    if kind == "MEM.move" and (source.kind == "dram" or destination.kind == "dram"):
        raise _Fail("MEM.move copies between on-chip locations")
    if kind == "MEM.move" and source == destination:
        raise _Fail("MEM.move to the location it reads from")


_STATEMENTS = {
    "CM.switch": _parse_switch,
    "CIM.load_weight": _parse_load_weight,
    "CIM.write_operand": _parse_write_operand,
    "CIM.mvm": _parse_mvm,
    "VEC": _parse_vec,
    "MEM.load": _parse_mem,
    "MEM.store": _parse_mem,
    "MEM.move": _parse_mem,
}
