"""Mutation fuzzer of `.cmsasm` flows: one-to-three random edits of a real flow, each
judged by the simulator, the flow parser and an independent rule checker.

A mutant must be either rejected with one diagnostic line that names the flow and a line
(exit-1 material, no traceback) or accepted with a report that is valid JSON and a flow
that `flow_oracle.check` finds rule-abiding: no read of data never written, no copy
beyond a memory's capacity, no mvm without its whole weights.  Neutral edits (comments,
blank lines, spacing, field order) must give the very same report.  `run(flows, n, seed)`
returns a `Tally`; tests/test_flow_fuzz.py drives it (quick in `make test`, 1,000
mutants in `make fuzz`).
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from flow_oracle import Violation, check

from cmswitch.asm.parser import parse_flow
from cmswitch.errors import CMSwitchError
from cmswitch.sim.simulator import simulate

# FILE:LINE: msg (syntax), FILE: line N: msg (a rule), FILE: msg (the whole flow)
_LOCATED = r"(:\d+:|: line \d+:|:) \S"
_NUMBER = re.compile(r"(?<=[=\[:x])[0-9]+")
_RANGE = re.compile(r"a\[([0-9]+):([0-9]+)\]")
_REF = re.compile(r"([A-Za-z0-9_.:/-]+)@(a\[[0-9]+:[0-9]+\]|gb|dram|stream)")
_KEYVAL = re.compile(r"\b[a-z_]+=\S+")

# odd numbers and spellings: zero, huge, signs, separators, non-ASCII digits, floats
_ODD_NUMBERS = ["0", "1", "-1", "+1", "10_0", "1e3", "0x10", "١٢", "１２", "3.5", "",
                str(10**15), str(10**15 + 1), "9" * 400]
_ODD_CHARS = ["\u00a0", "\v", "\t", "$", "@", "=", ",", "[", "]", "{", "}", ";", "é", "\x00",
              "->", " "]
_OPCODE_SWAPS = {"TOM": "TOC", "TOC": "TOM", "MEM.load": "MEM.store", "MEM.store": "MEM.move",
                 "MEM.move": "MEM.load", "CIM.mvm": "CIM.load_weight",
                 "CIM.load_weight": "CIM.write_operand", "VEC.relu": "VEC.add", "VEC.add": "VEC.relu"}


@dataclass
class Tally:
    """Counts of a fuzz run and the first few failures (kind, mutation, message)."""

    tried: int = 0
    rejected: int = 0
    rejected_by_oracle_too: int = 0
    accepted: int = 0
    neutral: int = 0
    tracebacks: int = 0
    bad_accepts: int = 0
    bad_messages: int = 0
    neutral_changed: int = 0
    failures: list = field(default_factory=list)
    sim_only: list = field(default_factory=list)

    @property
    def failed(self) -> int:
        return self.tracebacks + self.bad_accepts + self.bad_messages + self.neutral_changed

    def line(self) -> str:
        return (f"{self.tried} flows mutated: {self.rejected} rejected "
                f"({self.rejected_by_oracle_too} by the independent checker too), {self.accepted} "
                f"accepted ({self.neutral} neutral edits), {self.tracebacks} tracebacks, "
                f"{self.bad_accepts} rule-breaking accepted, {self.bad_messages} bad "
                f"messages, {self.neutral_changed} neutral edits changed the result")


# ---------------------------------------------------------------- edits of one line


def _numbers(rng: random.Random, text: str) -> str:
    spots = list(_NUMBER.finditer(text))
    if not spots:
        return text
    m = rng.choice(spots)
    value = int(m.group())
    choice = rng.choice(["odd", "near", "scale"])
    if choice == "odd":
        new = rng.choice(_ODD_NUMBERS)
    elif choice == "near":
        new = str(max(0, value + rng.choice([-1, 1, -value // 2 or -1])))
    else:
        new = str(value * rng.choice([2, 10, 1000]) + rng.randint(0, 1))
    return text[:m.start()] + new + text[m.end():]


def _range(rng: random.Random, text: str, arrays: int) -> str:
    spots = list(_RANGE.finditer(text))
    if not spots:
        return text
    m = rng.choice(spots)
    lo, hi = int(m.group(1)), int(m.group(2))
    lo, hi = rng.choice([(lo + 1, hi), (lo, hi - 1), (lo, hi + 1), (max(0, lo - 1), hi),
                         (hi, lo), (0, arrays), (0, arrays + 1), (lo + 1, hi + 1)])
    new = rng.choice([f"a[{lo}:{hi}]", f"a[{lo}:{hi}]", "gb", "dram", "stream"])
    return text[:m.start()] + new + text[m.end():]


def _reference(rng: random.Random, text: str, names: list) -> str:
    spots = list(_REF.finditer(text))
    if not spots:
        return text
    m = rng.choice(spots)
    tensor, loc = m.group(1), m.group(2)
    if rng.random() < 0.5:
        tensor = rng.choice(names)
    else:
        loc = rng.choice(["gb", "dram", "stream", "a[0:1]", loc])
    return text[:m.start()] + f"{tensor}@{loc}" + text[m.end():]


def _fields(rng: random.Random, text: str) -> str:
    spots = list(_KEYVAL.finditer(text))
    choice = rng.choice(["drop", "repeat", "unknown", "window"])
    if choice == "window":
        return text + rng.choice([" window=1", " window=0", " window=64", f" window={10**9}"])
    if choice == "unknown":
        return text + " bogus=1"
    if not spots:
        return text
    m = rng.choice(spots)
    if choice == "drop":
        return text[:m.start()] + text[m.end():]
    return text + " " + m.group()


def _chars(rng: random.Random, text: str) -> str:
    at = rng.randint(0, len(text))
    if rng.random() < 0.3 and text:
        return text[:at] + text[at + 1:]
    return text[:at] + rng.choice(_ODD_CHARS) + text[at:]


def _opcode(rng: random.Random, text: str) -> str:
    for old, new in _OPCODE_SWAPS.items():
        if old in text.split():
            return text.replace(old, new, 1)
    return text


# ---------------------------------------------------------------- neutral edits


def _neutral(rng: random.Random, lines: list) -> list:
    """An edit that must not change the result: a comment, a blank line, spacing, or
    the order of `key=value` fields."""
    i = rng.randrange(len(lines))
    text = lines[i]
    choice = rng.choice(["comment", "blank", "spacing", "order"])
    if choice == "comment":
        lines[i] = text + " ; fuzz comment a[0:1] x@dram bytes=9"
    elif choice == "blank":
        lines.insert(i, rng.choice(["", "   ", "\t", "; only a comment"]))
    elif choice == "spacing":
        lines[i] = "\t" + text.replace(" ", rng.choice(["  ", "\t", " \t "]))
    else:
        head, *fields = text.split(" ")
        keyed = [f for f in fields if re.match(r"[a-z_]+=", f)]
        if len(keyed) < 2 or not text.lstrip().startswith(("CIM.", "VEC.", "MEM.")):
            lines[i] = text + " ; no fields to reorder"
        else:
            rest = [f for f in fields if f not in keyed]
            rng.shuffle(keyed)
            arrow = rest.index("->") if "->" in rest else len(rest)
            lines[i] = " ".join([head, *rest[:arrow], *keyed, *rest[arrow:]])
    return lines


# ---------------------------------------------------------------- mutants


def mutate(rng: random.Random, text: str) -> tuple:
    """(mutant text, description, neutral?) from one-to-three edits of `text`."""
    lines = text.split("\n")
    arrays = int(re.search(r"arrays=([0-9]+)", text).group(1))
    names = re.findall(r"^\.tensor (\S+)", text, re.M)
    if rng.random() < 0.1:
        return "\n".join(_neutral(rng, lines)), "neutral", True
    done = []
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        i = rng.randrange(len(lines))
        kind = rng.choice(["number", "number", "number", "range", "reference", "field",
                           "char", "opcode", "delete", "duplicate", "swap", "move",
                           "truncate", "header"])
        if kind == "header":
            i = next(j for j, s in enumerate(lines) if s.startswith(".arch"))
            kind = "number"
        before = lines[i]
        if kind == "number":
            lines[i] = _numbers(rng, before)
        elif kind == "range":
            lines[i] = _range(rng, before, arrays)
        elif kind == "reference":
            lines[i] = _reference(rng, before, names)
        elif kind == "field":
            lines[i] = _fields(rng, before)
        elif kind == "char":
            lines[i] = _chars(rng, before)
        elif kind == "opcode":
            lines[i] = _opcode(rng, before)
        elif kind == "delete":
            del lines[i]
        elif kind == "duplicate":
            lines.insert(i, before)
        elif kind == "swap" and i + 1 < len(lines):
            lines[i], lines[i + 1] = lines[i + 1], before
        elif kind == "move":
            del lines[i]
            lines.insert(rng.randrange(len(lines) + 1), before)
        elif kind == "truncate":
            lines = lines[:i]
            if not lines:
                lines = [""]
        done.append(f"{kind}@{i + 1}: {before[:90]!r}")
    return "\n".join(lines), "; ".join(done), False


def judge(mutant: str, path: Path, description: str, neutral: bool, tally: Tally,
          original: dict) -> None:
    """Run one mutant (written to `path`, as the command-line tools read it) through
    the simulator, the parser and the oracle; count it."""
    tally.tried += 1
    path.write_text(mutant, encoding="utf-8")

    def fail(kind: str, message: str) -> None:
        setattr(tally, kind, getattr(tally, kind) + 1)
        if len(tally.failures) < 20:
            tally.failures.append((kind, description, message[:300], mutant))

    try:
        parse_flow(mutant, str(path))
    except CMSwitchError:
        pass
    except Exception as exc:  # noqa: BLE001 - a traceback is the finding
        fail("tracebacks", f"parser: {type(exc).__name__}: {exc}")
    try:
        report = simulate(path)
    except CMSwitchError as exc:
        message = str(exc)
        if "\n" in message or not re.match(re.escape(str(path)) + _LOCATED, message):
            fail("bad_messages", message)
        if neutral:
            fail("neutral_changed", f"rejected: {message}")
        tally.rejected += 1
        try:
            check(mutant)
        except Violation:
            tally.rejected_by_oracle_too += 1
        else:
            tally.sim_only.append((description, message))
        return
    except Exception as exc:  # noqa: BLE001
        fail("tracebacks", f"simulator: {type(exc).__name__}: {exc}")
        return
    tally.accepted += 1
    tally.neutral += neutral
    try:
        json.dumps(report, allow_nan=False)
    except (TypeError, ValueError) as exc:
        fail("bad_accepts", f"report is not JSON: {exc}")
    if neutral and _comparable(report) != _comparable(original):
        a, b = _comparable(report), _comparable(original)
        fail("neutral_changed", "report differs: " + ", ".join(
            f"{k}: {b.get(k)!r:.80} -> {a.get(k)!r:.80}" for k in sorted(a.keys() | b.keys())
            if a.get(k) != b.get(k)))
    try:
        check(mutant)
    except Violation as exc:
        fail("bad_accepts", str(exc))


def _comparable(report):
    """The report without what a neutral edit may change: line numbers, the file name."""
    if isinstance(report, dict):
        return {k: _comparable(v) for k, v in report.items() if k not in ("line", "flow", "file")}
    if isinstance(report, list):
        return [_comparable(v) for v in report]
    return report


def run(flows: dict, count: int, seed: int, folder: Path) -> Tally:
    """Mutate the flows ({model: text}) `count` times in all, round-robin; each mutant
    is written to `folder`/mutant.cmsasm."""
    path = Path(folder) / "mutant.cmsasm"
    rng = random.Random(seed)
    tally = Tally()
    models = sorted(flows)
    originals = {m: simulate(flows[m]) for m in models}
    for i in range(count):
        model = models[i % len(models)]
        mutant, description, neutral = mutate(rng, flows[model])
        judge(mutant, path, f"{model}: {description}", neutral, tally, originals[model])
    return tally
