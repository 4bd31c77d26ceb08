"""An independent checker of a `.cmsasm` flow's state rules, for the flow fuzzer.

Written from docs/cmsasm.md ("Rules a valid flow obeys" and "Simulator semantics"),
not from cmswitch/sim, so that a flow the simulator accepts can be judged by a second
reading of the rules.  It checks what the flow does to the chip's state and nothing of
its timing:

- reads: every read names a copy that exists (written and not freed since) and holds
  the bytes the read takes (an mvm / VEC / write_operand the tensor's declared size, a
  MEM statement its `bytes=`); `dram` holds the inputs and whatever was stored there;
  outputs are in `dram` in full at the end;
- capacity: the live copies of memory-mode arrays and the global buffer fit them, with a
  streamed copy of a `parallel` block counted at `min(window, size)`, which holds at
  least one vector of each mvm that writes or reads it;
- modes and weights: data only in memory-mode arrays, weights only in compute-mode
  arrays, an mvm only on whole copies of its operator's tiles programmed with at least
  `max(k, n)` weights, its `k x n` within the tiles; one operator per array per block, a
  block's CM.switch owning its arrays;
- streams (only when the header does not say `stream_fusion=0`): a `stream` copy is
  written once by a `CIM.mvm` or `VEC` statement of a
  `parallel` block and read once, whole, by a later `VEC` statement of that block;
  nothing else touches it and it holds no capacity;
- grammar: ASCII tokens, decimal integers at most 10^15, names `[A-Za-z0-9_.:/-]+`.

`check(text)` returns None for a flow that obeys them, else raises `Violation`.
"""

from __future__ import annotations

import math
import re

from cmswitch.arch import arch_from_dict

MAX_INT = 10**15
_NAME = r"[A-Za-z0-9_.:/-]+"
_NAME_RE = re.compile(_NAME + r"\Z")
_INT_RE = re.compile(r"[0-9]+\Z")
_DEC_RE = re.compile(r"[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?\Z")
_RANGE_RE = re.compile(r"a\[([0-9]+):([0-9]+)\]\Z")
_REF_RE = re.compile(r"(" + _NAME + r")@(a\[[0-9]+:[0-9]+\]|gb|dram|stream)\Z")
_TILES_RE = re.compile(r"([0-9]+)x([0-9]+)\Z")


class Violation(Exception):
    """A rule the flow breaks: `line` (1-based, 0 for the whole flow) and a message."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line


# ------------------------------------------------------------------------ reading


def _int(text: str, line: int, least: int = 0) -> int:
    if not _INT_RE.match(text) or int(text) > MAX_INT or int(text) < least:
        raise Violation(line, f"not an integer in {least}..10^15: {text!r}")
    return int(text)


def _loc(text: str, line: int):
    """'gb' | 'dram' | 'stream' | (lo, hi)."""
    if text in ("gb", "dram", "stream"):
        return text
    m = _RANGE_RE.match(text)
    if not m:
        raise Violation(line, f"not a location: {text!r}")
    lo, hi = _int(m.group(1), line), _int(m.group(2), line)
    if lo >= hi:
        raise Violation(line, f"empty range {text}")
    return (lo, hi)


def _ref(text: str, line: int) -> tuple:
    m = _REF_RE.match(text)
    if not m:
        raise Violation(line, f"not a TENSOR@LOCATION: {text!r}")
    return (m.group(1), _loc(m.group(2), line))


def _name(text: str, line: int) -> str:
    if not _NAME_RE.match(text):
        raise Violation(line, f"bad name {text!r}")
    return text


def _split(tokens: list) -> tuple:
    """(positional tokens in order, `key=value` tokens): fields may stand anywhere."""
    return [t for t in tokens if "=" not in t], [t for t in tokens if "=" in t]


def _fields(tokens: list, line: int, allowed: set, required: set) -> dict:
    out: dict = {}
    for tok in tokens:
        key, eq, value = tok.partition("=")
        if not eq or key not in allowed or key in out:
            raise Violation(line, f"bad field {tok!r}")
        out[key] = value
    if missing := required - out.keys():
        raise Violation(line, f"missing {sorted(missing)}")
    return out


class Stmt:
    """One statement: opcode, op, reads/writes [(tensor, loc)], numbers."""

    def __init__(self, line: int, tokens: list) -> None:
        self.line = line
        self.opcode = tokens[0]
        self.reads: list = []
        self.writes: list = []
        self.window = None
        parse = getattr(self, "_" + self.opcode.replace(".", "_"), None)
        if self.opcode.startswith("VEC."):
            parse = self._VEC
        if parse is None:
            raise Violation(line, f"unknown statement {self.opcode!r}")
        parse(tokens[1:])
        if self.window is not None:
            self.window = _int(self.window, line, 1)

    def _name(self, text: str) -> str:
        return _name(text, self.line)

    def _CM_switch(self, t: list) -> None:
        if len(t) != 2 or t[0] not in ("TOM", "TOC"):
            raise Violation(self.line, "CM.switch TOM|TOC a[LO:HI]")
        self.mode = t[0]
        self.arrays = _loc(t[1], self.line)
        if not isinstance(self.arrays, tuple):
            raise Violation(self.line, "CM.switch needs arrays")

    def _program(self, t: list, with_input: bool) -> None:
        p, kv = _split(t)
        if len(p) != 3 or p[1] != "->":
            raise Violation(self.line, "program statement: OP ... -> a[LO:HI]")
        self.op = self._name(p[0])
        self.arrays = _loc(p[2], self.line)
        if not isinstance(self.arrays, tuple):
            raise Violation(self.line, "weights go to arrays")
        allowed = {"tiles", "copies", "bytes"} | ({"in", "instances"} if with_input else set())
        f = _fields(kv, self.line, allowed, allowed - {"instances"})
        m = _TILES_RE.match(f["tiles"])
        if not m:
            raise Violation(self.line, "tiles=TKxTN")
        self.tk, self.tn = _int(m.group(1), self.line, 1), _int(m.group(2), self.line, 1)
        self.copies = _int(f["copies"], self.line, 1)
        self.nbytes = _int(f["bytes"], self.line)
        self.instances = _int(f.get("instances", "1"), self.line, 1)
        if with_input:
            self.reads = [_ref(f["in"], self.line)]

    def _CIM_load_weight(self, t: list) -> None:
        self._program(t, False)

    def _CIM_write_operand(self, t: list) -> None:
        self._program(t, True)

    def _CIM_mvm(self, t: list) -> None:
        p, kv = _split(t)
        if len(p) != 2:
            raise Violation(self.line, "CIM.mvm OP a[LO:HI] ...")
        self.op = self._name(p[0])
        self.arrays = _loc(p[1], self.line)
        if not isinstance(self.arrays, tuple):
            raise Violation(self.line, "mvm needs arrays")
        f = _fields(kv, self.line, {"vectors", "k", "n", "in", "out", "window"},
                    {"vectors", "k", "n", "in", "out"})
        self.vectors = _int(f["vectors"], self.line, 1)
        self.k = _int(f["k"], self.line, 1)
        self.n = _int(f["n"], self.line, 1)
        self.reads = [_ref(f["in"], self.line)]
        self.writes = [_ref(f["out"], self.line)]
        self.window = f.get("window")

    def _VEC(self, t: list) -> None:
        p, kv = _split(t)
        if len(p) != 1:
            raise Violation(self.line, "VEC.KIND NAME ...")
        self._name(self.opcode[4:])
        self.op = self._name(p[0])
        f = _fields(kv, self.line, {"ops", "in", "out", "window"}, {"ops", "out"})
        self.ops = _int(f["ops"], self.line)
        self.reads = [_ref(r, self.line) for r in f["in"].split(",")] if "in" in f else []
        self.writes = [_ref(r, self.line) for r in f["out"].split(",")]
        self.window = f.get("window")

    def _mem(self, t: list) -> None:
        p, kv = _split(t)
        if len(p) != 3 or p[1] != "->":
            raise Violation(self.line, "MEM.* T@LOC -> LOC bytes=B")
        src = _ref(p[0], self.line)
        dst = _loc(p[2], self.line)
        f = _fields(kv, self.line, {"bytes", "window"}, {"bytes"})
        self.nbytes = _int(f["bytes"], self.line)
        self.window = f.get("window")
        self.reads = [src]
        self.writes = [(src[0], dst)]
        kind = self.opcode
        on_chip = lambda loc: loc != "dram"
        ok = {"MEM.load": src[1] == "dram" and on_chip(dst),
              "MEM.store": on_chip(src[1]) and dst == "dram",
              "MEM.move": on_chip(src[1]) and on_chip(dst) and src[1] != dst}[kind]
        if not ok or "stream" in (src[1], dst):
            raise Violation(self.line, f"{kind} between the wrong locations")

    _MEM_load = _MEM_store = _MEM_move = _mem


def _strip(raw: str, line: int) -> list:
    text = raw.split(";", 1)[0]
    if any(not (32 <= ord(c) < 127 or c == "\t") for c in text.rstrip("\r\n")):
        raise Violation(line, "non-ASCII or control character")
    return text.split()


def read_flow(text: str):
    """(arch dict, tensors {name: [bytes, input, output]}, segments) where a segment is a
    list of units, a unit (is_block, [Stmt]): a `parallel` block, or one statement."""
    arch = None
    tensors: dict = {}
    segments: list = []
    segment = block = None
    for number, raw in enumerate(text.splitlines(), 1):
        tokens = _strip(raw, number)
        if not tokens:
            continue
        head = tokens[0]
        if head == ".arch":
            if arch is not None or segments:
                raise Violation(number, ".arch twice or after a segment")
            fields = dict(tok.partition("=")[::2] for tok in tokens[2:])
            for tok in tokens[2:]:
                if "=" not in tok:
                    raise Violation(number, f"bad .arch field {tok!r}")
            for value in fields.values():
                if not _DEC_RE.match(value) or float(value) > MAX_INT:
                    raise Violation(number, f"bad .arch value {value!r}")
            try:
                arch = arch_from_dict({"name": tokens[1] if len(tokens) > 1 else "",
                                       **{k: float(v) if "." in v or "e" in v.lower() else int(v)
                                          for k, v in fields.items()}})
            except Exception as exc:  # noqa: BLE001 - any refusal is a violation
                raise Violation(number, f".arch refused: {exc}") from None
        elif head == ".model":
            if len(tokens) != 2 or segment is not None:
                raise Violation(number, "bad .model")
        elif head == ".tensor":
            if segment is not None or len(tokens) < 3:
                raise Violation(number, ".tensor inside a segment or short")
            name = _name(tokens[1], number)
            if name in tensors:
                raise Violation(number, f"tensor {name} twice")
            size = _fields([tokens[2]], number, {"bytes"}, {"bytes"})["bytes"]
            flags = tokens[3:]
            if any(f not in ("input", "output") for f in flags) or len(set(flags)) != len(flags):
                raise Violation(number, "bad .tensor flags")
            tensors[name] = [_int(size, number), "input" in flags, "output" in flags, number]
        elif head == ".segment":
            if arch is None or segment is not None:
                raise Violation(number, ".segment without .arch or nested")
            if len(tokens) < 2 or not (tokens[1].isascii() and tokens[1].isdigit()):
                raise Violation(number, ".segment ID is not a decimal integer")
            _fields(tokens[2:], number, {"ops", "predicted"}, set())
            segment = []
        elif head == ".end":
            if segment is None or block is not None or len(tokens) != 1:
                raise Violation(number, "stray .end")
            segments.append(segment)
            segment = None
        elif tokens == ["parallel", "{"]:
            if segment is None or block is not None:
                raise Violation(number, "parallel outside a segment or nested")
            block = []
        elif tokens == ["}"]:
            if block is None:
                raise Violation(number, "stray }")
            segment.append((True, block))
            block = None
        else:
            if segment is None:
                raise Violation(number, "statement outside a segment")
            st = Stmt(number, tokens)
            for ref in st.reads + st.writes:
                if ref[0] not in tensors:
                    raise Violation(number, f"undeclared tensor {ref[0]}")
            if block is not None:
                block.append(st)
            else:
                segment.append((False, [st]))
    if segment is not None or arch is None or not segments:
        raise Violation(0, "no .arch, no segment, or a segment is not closed")
    return arch, tensors, segments


# ------------------------------------------------------------------------ state


def _show(loc) -> str:
    return f"a[{loc[0]}:{loc[1]}]" if isinstance(loc, tuple) else loc


class _Copy:
    def __init__(self, size: int, window) -> None:
        self.bytes = 0
        self.size = size
        self.window = window        # bytes it occupies while streamed, or None


def check(text: str) -> None:
    """Raise Violation for the first broken rule of `text`; None when it obeys them."""
    arch, tensors, segments = read_flow(text)
    array_bytes = arch.rows * arch.cols * arch.cell_bits / 8
    act = arch.act_bits / 8
    units = [unit for seg in segments for unit in seg]
    # next access of each on-chip copy: key -> [(unit, is_read)], one entry per statement
    accesses: dict = {}
    for u, (_block, unit) in enumerate(units):
        for st in unit:
            keys_read = {r for r in st.reads if r[1] != "dram"}
            for key in dict.fromkeys([*st.reads, *st.writes]):
                if key[1] not in ("dram", "stream"):
                    accesses.setdefault(key, []).append((u, key in keys_read))

    def live_after(key, u: int) -> bool:
        later = [read for unit, read in accesses[key] if unit > u]
        return bool(later) and later[0]

    compute = [True] * arch.arrays          # mode: True compute, False memory
    weights: list = [None] * arch.arrays    # (op, tk, tn, load line, copy, tile, part bytes)
    copies: dict = {}                       # (tensor, loc) -> _Copy (on-chip)
    dram = {name: (t[0] if t[1] else 0) for name, t in tensors.items()}
    stored = {name for name, t in tensors.items() if t[1]}  # inputs, or written to dram

    def arrays_of(lo_hi, line):
        lo, hi = lo_hi
        if hi > arch.arrays:
            raise Violation(line, f"a[{lo}:{hi}] beyond {arch.arrays} arrays")
        return range(lo, hi)

    def need_data_mode(loc, line):
        if isinstance(loc, tuple) and any(compute[i] for i in arrays_of(loc, line)):
            raise Violation(line, f"data in compute-mode arrays {loc}")

    def read(key, need: float, line: int) -> None:
        tensor, loc = key
        need_data_mode(loc, line)
        have = dram[tensor] if loc == "dram" else (copies[key].bytes if key in copies else None)
        if have is None:
            raise Violation(line, f"{tensor}@{_show(loc)} does not exist")
        if math.ceil(have - 1e-9) < need:  # whole bytes: 1.5 written fill 2
            raise Violation(line, f"{tensor}@{_show(loc)} holds {have:g} of the {need:g} bytes read")

    def write(key, nbytes: float, window, in_block: bool, line: int) -> None:
        tensor, loc = key
        size = tensors[tensor][0]
        need_data_mode(loc, line)
        if loc == "dram":
            dram[tensor] = min(size, dram[tensor] + nbytes)
            stored.add(tensor)
            return
        if key not in copies:
            copies[key] = _Copy(size, window if in_block and window is not None else None)
        c = copies[key]
        c.bytes = min(size, c.bytes + nbytes)
        check_capacity(line)

    def occupied(c: _Copy) -> float:
        return min(c.window, c.size) if c.window is not None else c.bytes

    def check_capacity(line: int) -> None:
        per_array = [0.0] * arch.arrays
        gb = 0.0
        for (tensor, loc), c in copies.items():
            if loc == "gb":
                gb += occupied(c)
            else:
                lo, hi = loc
                for i in range(lo, hi):
                    per_array[i] += math.ceil(occupied(c) / (hi - lo))
        if gb > arch.global_buffer_bytes:
            raise Violation(line, f"global buffer holds {gb} > {arch.global_buffer_bytes}")
        for i, used in enumerate(per_array):
            if used > array_bytes:
                raise Violation(line, f"array {i} holds {used} > {array_bytes}")

    def erase_copies_touching(lo: int, hi: int) -> None:
        for key in [k for k in copies if isinstance(k[1], tuple)
                    and k[1][0] < hi and lo < k[1][1]]:
            del copies[key]

    def hand(key, nbytes: float, st: Stmt, in_block: bool) -> None:
        if not in_block or not (st.opcode == "CIM.mvm" or st.opcode.startswith("VEC.")):
            raise Violation(st.line, f"{key[0]}@stream written outside a block or by {st.opcode}")
        if key[0] in handed:
            raise Violation(st.line, f"{key[0]}@stream written twice")
        if not arch.stream_fusion:
            raise Violation(st.line, f"{key[0]}@stream on hardware with stream_fusion=0")
        handed[key[0]] = [nbytes, False]

    def take(key, st: Stmt) -> None:
        entry = handed.get(key[0])
        if not st.opcode.startswith("VEC.") or entry is None or entry[1]:
            raise Violation(st.line, f"{key[0]}@stream: not a VEC, not written before in "
                                     f"the block, or read twice")
        if math.ceil(entry[0] - 1e-9) < tensors[key[0]][0]:
            raise Violation(st.line, f"{key[0]}@stream holds {entry[0]:g} bytes, not all")
        entry[1] = True

    for u, (in_block, unit) in enumerate(units):
        owner: dict = {}            # array -> operator (or "switch") inside this block
        fresh_windowed: list = []
        handed: dict = {}           # tensor -> [bytes written, read] of this block's streams
        for st in unit:
            line = st.line
            if st.opcode == "CM.switch":
                rng = arrays_of(st.arrays, line)
                if in_block:
                    for i in rng:
                        if i in owner:
                            raise Violation(line, f"switch of array {i} used in the block")
                        owner[i] = "\0switch"
                for i in rng:
                    if st.mode == "TOM" and compute[i]:
                        compute[i], weights[i] = False, None
                    elif st.mode == "TOC" and not compute[i]:
                        compute[i] = True
                        erase_copies_touching(i, i + 1)
                continue
            if in_block:
                for ref in st.reads + st.writes:
                    if isinstance(ref[1], tuple):
                        for i in arrays_of(ref[1], line):
                            if owner.get(i) == "\0switch":
                                raise Violation(line, f"array {i} switched in this block")
            if st.opcode in ("CIM.load_weight", "CIM.write_operand"):
                rng = arrays_of(st.arrays, line)
                per_copy = st.tk * st.tn
                if len(rng) != per_copy * st.copies:
                    raise Violation(line, "range size != tiles x copies")
                if not all(compute[i] for i in rng):
                    raise Violation(line, "weights into memory-mode arrays")
                part = st.nbytes / st.instances
                if part > per_copy * array_bytes:
                    raise Violation(line, "bytes per copy exceed the tiles")
                if st.reads:
                    if st.reads[0][1] == "stream":
                        take(st.reads[0], st)
                    read(st.reads[0], tensors[st.reads[0][0]][0], line)
                if in_block:
                    _own(owner, rng, st.op, line)
                for i in rng:
                    copy, tile = divmod(i - rng.start, per_copy)
                    weights[i] = (st.op, st.tk, st.tn, line, copy, tile, part)
            elif st.opcode == "CIM.mvm":
                rng = arrays_of(st.arrays, line)
                if in_block:
                    _own(owner, rng, st.op, line)
                _check_mvm(st, rng, compute, weights, arch)
                if st.reads[0][1] == "stream":
                    take(st.reads[0], st)
                read(st.reads[0], tensors[st.reads[0][0]][0], line)
                key = st.writes[0]
                if key[1] == "stream":
                    hand(key, st.vectors * st.n * act, st, in_block)
                else:
                    if in_block and key not in copies and key[1] != "dram" and st.window:
                        fresh_windowed.append(key)
                    write(key, st.vectors * st.n * act, st.window, in_block, line)
                for ref, elements in ((st.reads[0], st.k), (key, st.n)):
                    c = copies.get(ref)
                    if c is not None and c.window is not None and \
                            c.window < min(c.size, math.ceil(elements * act)):
                        raise Violation(line, f"window {c.window} of {ref[0]} < one vector")
            elif st.opcode.startswith("VEC."):
                for key in st.reads:
                    if key[1] == "stream":
                        take(key, st)
                    else:
                        read(key, tensors[key[0]][0], line)
                for key in st.writes:
                    if key[1] == "stream":
                        hand(key, tensors[key[0]][0], st, in_block)
                        continue
                    if in_block and key not in copies and key[1] != "dram" and st.window:
                        fresh_windowed.append(key)
                    write(key, tensors[key[0]][0], st.window, in_block, line)
            else:  # MEM.*
                read(st.reads[0], st.nbytes, line)
                key = st.writes[0]
                if in_block and key not in copies and key[1] != "dram" and st.window:
                    fresh_windowed.append(key)
                write(key, st.nbytes, st.window, in_block, line)
        # end of the unit: streams read, streamed copies gone, others freed unless read next
        for tensor, (_nbytes, taken) in handed.items():
            if not taken:
                raise Violation(unit[-1].line, f"{tensor}@stream is never read in its block")
        for key in fresh_windowed:
            copies.pop(key, None)
            later = [read for unit_, read in accesses[key] if unit_ > u]
            if later and later[0]:
                raise Violation(later_line(units, key, u), f"{key[0]} read after its stream")
        touched = {k for st in unit for k in [*st.reads, *st.writes]
                   if k[1] not in ("dram", "stream")}
        for key in touched:
            if key in copies and not live_after(key, u):
                del copies[key]
    for name, (size, _inp, out, number) in tensors.items():
        if out and (name not in stored or math.ceil(dram[name] - 1e-9) < size):
            raise Violation(0, f"output {name} has {dram[name]} of {size} bytes in dram")


def later_line(units: list, key, u: int) -> int:
    for _block, unit in units[u + 1:]:
        for st in unit:
            if key in st.reads:
                return st.line
    return 0


def _own(owner: dict, rng: range, op: str, line: int) -> None:
    for i in rng:
        if owner.setdefault(i, op) != op:
            raise Violation(line, f"array {i} serves {owner[i]!r} and {op!r} in one block")


def _check_mvm(st: Stmt, rng: range, compute: list, weights: list, arch) -> None:
    line = st.line
    if not all(compute[i] for i in rng):
        raise Violation(line, "mvm on memory-mode arrays")
    found: dict = {}
    for i in rng:
        w = weights[i]
        if w is None or w[0] != st.op:
            raise Violation(line, f"array {i} does not hold a tile of {st.op}")
        found.setdefault((w[3], w[4]), []).append(i)
    for (load_line, copy), arrays in found.items():
        op, tk, tn, _l, _c, _t, part = weights[arrays[0]]
        if len(arrays) != tk * tn:
            raise Violation(line, f"copy {copy} of line {load_line} is not whole in the range")
        if st.k > tk * tn * arch.rows or st.n > tk * tn * arch.cols * arch.cell_bits // arch.weight_bits:
            raise Violation(line, f"k={st.k} n={st.n} beyond {tk}x{tn} tiles")
        if part < max(st.k, st.n) * min(arch.weight_bits, arch.act_bits) / 8:
            raise Violation(line, f"copy programmed with {part} bytes < max(k, n) weights")
