"""The independent simulator: execute a `.cmsasm` flow, check it, and time it.

`simulate(flow_text_or_path, arch_override=None) -> dict` reads the flow twice as a
stream (a first pass records, for every on-chip tensor copy, the lines that read and
write it; the second pass executes), so flows of 100k statements are never held in
memory.  It imports nothing from `cmswitch.cost`, `cmswitch.solver` or
`cmswitch.transforms`: every time below is derived from the `.arch` header fields alone
(or from `arch_override`, a dict with the same field names).

State
-----
Each array has a mode (reset: compute) and contents: in compute mode, one tile of one
copy of one operator's weight (or run-time operand) or nothing; in memory mode, the
bytes of the tensors placed in it.  The global buffer holds tensors up to
`global_buffer_bytes`; DRAM holds every input and everything stored to it.  A tensor
placed in `a[LO:HI]` is spread evenly: each of the `HI-LO` arrays holds
`ceil(bytes/(HI-LO))` of it.  An on-chip copy `T@LOC` is freed right after the statement
(or `parallel` block) after which the next access to `T@LOC` in the flow is not a read
(a fresh write, or no access at all), when `CM.switch TOC` erases its arrays, and, for a
tensor streamed with `window=` inside a block, at the end of that block.

Timing of one statement (cycles; all bandwidths in bytes/cycle)
--------------------------------------------------------------
Every statement is a *stream*: a private time (its own arrays / the switch) plus
demands on shared resources.  Alone, it takes
`ceil(max(private, max_r demand_r / capacity_r))` cycles:

- `CM.switch`: private `switch_cycles`, whatever the number of arrays.
- `CIM.load_weight`: `bytes` read once from DRAM (`external_bw_bytes`) and
  `copies*bytes` programmed through the weight-write port (`weight_write_bw_bytes`),
  i.e. `max(bytes/external_bw, copies*bytes/weight_write_bw)`.
- `CIM.write_operand`: the same with the source port of `in=` instead of DRAM.
- `CIM.mvm`: private `ceil(vectors/copies) * mvm_cycles` (the arrays of all copies work
  at once, each copy on its own vectors; copies = whole copies of OP in the range), input
  `vectors*k*act_bits/8` bytes on the `in=` port, output `vectors*n*act_bits/8` bytes
  on the `out=` port.
- `VEC.*`: `ops/vector_ops_per_cycle` on the digital unit, plus each input and output
  tensor's declared size on its port.
- `MEM.load/store/move`: `bytes` on the source port and on the destination port,
  i.e. `bytes / min(source bandwidth, destination bandwidth)`.

Ports: `a[LO:HI]` = `(HI-LO)*internal_bw_bits/8`, one port per array shared by reads
and writes (overlapping ranges share the arrays they have in common); `gb` =
`global_buffer_bw_bytes`; `dram` = `external_bw_bytes`; the weight-write port and the
digital unit are single chip-wide resources.

Parallel blocks (streaming pipeline)
------------------------------------
Each statement's work is cut into `C = min(CHUNKS, units)` equal chunks (units: vectors,
bytes, or vector ops).  Chunks of one statement run in order.  A consumer's chunk `j`
(0-based) of `C_c` may start once every earlier statement of the block that writes a
tensor copy it reads has finished `ceil((j+1)*C_p/C_c)` of its `C_p` chunks; an MVM on
arrays programmed earlier in the block waits for the whole `load_weight` /
`write_operand`.  Shared resources are divided by max-min fairness on progress rate
among the statements that have started and not finished: all of them advance at the
same fraction of their own work per cycle unless limited by their private time or by
another saturated resource (progressive filling), recomputed whenever a statement
starts or finishes; a chunk in flight is re-timed on each recomputation.  The block
takes the finish time of its last chunk, rounded up.  Pipeline fill (the first chunk of
each producer), drain and contention come out of this by themselves.

Implementation: rates change only when a statement starts or finishes, so `_BlockRun`
computes chunk end times epoch by epoch with a recurrence instead of one event per chunk
(checked against a per-chunk event simulation), and block times are memoized by a
canonical signature (repeated layers give identical blocks).  Measured: 100k statements
(9091 six-statement blocks) in ~7.5 s with repeated blocks, ~15 s with all distinct,
on a host where a 10M-iteration Python loop takes 1.4 s.

Breakdown attribution
---------------------
Each sequential statement or block is charged wholly to one category: the one with the
largest lower bound over its streams — compute (MVM private time, digital unit load),
data (port loads of MVM/VEC/MEM traffic), weight_load (all traffic of load_weight /
write_operand), switch (switch time).  Ties go to compute, then data, weight_load,
switch.  So a block is compute unless its data (or weight) traffic bounds it.

Array counts of a segment (the same definitions as the compile report and the plots):
`compute_arrays` = arrays an MVM of the segment runs on; `memory_arrays` = arrays the
segment reads or places data in (and runs no MVM on), i.e. the memory arrays its plan
uses; `memory_mode_peak` = the most arrays in memory mode at once during the segment,
which also counts arrays an earlier segment left in memory mode until they switch back
(so compute_arrays + memory_mode_peak can exceed the chip's arrays).

Utilization: an MVM of `vectors` on `TKxTN`-tile copies keeps `vectors*mvm_cycles*TK*TN`
array-cycles busy; a segment's utilization is that sum over `arrays * segment cycles`.

Energy (issue 16; when the header gives the energy fields)
---------------------------------------------------------
Counted from the same events that are timed, one category each (picojoules):

- compute: `vectors*TK*TN` array activations of each `CIM.mvm` x `mvm_pj`;
- memory_arrays: every byte on a memory-mode array port (reads and writes) x 8 x
  `array_access_pj_per_bit`; buffer: every byte on the `gb` port x 8 x
  `buffer_pj_per_bit`; dram: every byte on the `dram` port x 8 x `dram_pj_per_bit`;
- programming: bytes through the weight-write port (`copies*bytes` of a load_weight) x 8
  x `weight_write_pj_per_bit`;
- switching: arrays named by each `CM.switch` x `switch_pj`;
- digital: `ops=` of each `VEC.*` x `vector_op_pj`;
- static: `arrays` x `array_static_mw` x the flow's seconds (mW x s = 1e9 pJ).

The categories sum to the total, per segment and for the flow.  Efficiency: TOPS/W =
ops / pJ with ops = 2 x `vectors*k*n` of every mvm (useful MACs, not array capacity).

Attribution (issue 19)
----------------------
Each statement belongs to an operator: its `OP` (CIM.*, VEC.*), the tensor a MEM.*
statement moves, or "CM.switch".  Per operator the report sums its statements, their
`alone_cycles` (each statement's time as if it ran alone: exact for a sequential
statement, a lower bound of its share of a `parallel` block, whose statements overlap),
the bytes they move by where (dram, buffer, arrays, weight_write), their useful mvm ops
and their energy.  A block's cycles stay the segment's; per-operator cycles inside a
pipeline are not additive, so none are invented.
"""

from __future__ import annotations

import math
import os
from bisect import bisect_left, bisect_right
from typing import Iterable

from cmswitch.errors import CMSwitchError
from cmswitch.sim.flow import (
    ARCH_FIELDS,
    OPTIONAL_FIELDS,
    ENERGY_FIELDS,
    ArchDecl,
    FlowSource,
    Loc,
    ModelDecl,
    ParallelBegin,
    ParallelEnd,
    Ref,
    SegmentBegin,
    SegmentEnd,
    Statement,
    TensorDecl,
    iter_accesses,
    iter_records,
)

CHUNKS = 64
"""Chunks per statement in a parallel block (fewer when it has fewer work units)."""

_INF = math.inf
_EPS = 1e-9
_CATEGORIES = ("compute", "data", "weight_load", "switch")
ENERGY_CATEGORIES = ("compute", "memory_arrays", "buffer", "dram", "programming",
                     "switching", "digital", "static")
"""Energy categories of a report, in order (see "Energy" above)."""
_BYTE_KIND = {"gb": "buffer", "dram": "dram", "wport": "weight_write"}
_BYTE_KINDS = ("dram", "buffer", "arrays", "weight_write")
"""Where an operator row's bytes went: DRAM, the global buffer, memory-mode array ports,
the weight-write port (programming)."""
_PORT_ENERGY = {"gb": ("buffer", "buffer_pj_per_bit"), "dram": ("dram", "dram_pj_per_bit"),
                "wport": ("programming", "weight_write_pj_per_bit")}


def simulate(flow: str | os.PathLike, arch_override: dict | None = None,
             trace: bool = False, statements: bool = False) -> dict:
    """Check and time a flow (its text, or a path); return the report dict.

    The report's "operators" attribute work to operators (see "Attribution" in the
    module docstring); with `statements`, "statement_rows" holds the same per statement.
    With `trace`, the report also holds "trace": one dict per statement, in flow order,
    {"segment", "line", "opcode", "op", "parallel" (line of its block or None),
    "start", "end"} with start/end in cycles from the start of the flow (floats; a
    block's statements overlap; its cycles are rounded up as a whole).  Off, it costs
    nothing.  Raises CMSwitchError naming the file and line of the first rule the flow
    breaks, OSError when the file cannot be read.
    """
    source = FlowSource(flow)
    accesses = _access_lines(iter_accesses(source.lines()))
    machine = _Machine(source.name, accesses, arch_override, trace, statements)
    for record in iter_records(source.lines(), source.name):
        machine.feed(record)
    return machine.report()


# ----------------------------------------------------------------------------------
# first pass: accesses of on-chip tensor copies


def _access_lines(scanned: Iterable) -> dict:
    """Map (tensor, Loc) -> list of `line*2 + is_read` for every on-chip access, in order.

    A statement that reads and writes the same copy counts as a read.
    """
    accesses: dict = {}
    for line, reads, writes in scanned:
        read = {(ref.tensor, ref.loc) for ref in reads if ref.loc.kind != "dram"}
        for key in read:
            accesses.setdefault(key, []).append(line * 2 + 1)
        for ref in writes:
            key = (ref.tensor, ref.loc)
            if ref.loc.kind != "dram" and key not in read:
                accesses.setdefault(key, []).append(line * 2)
    return accesses


# ----------------------------------------------------------------------------------
# streams and their timing


class _Stream:
    """One statement's work: private time (cycles), demands {resource: amount}.

    Resources: "dram", "gb", "wport", "vec" and ("a", lo, hi) array ports; amounts in
    bytes (vector ops for "vec").  kind: the breakdown category of its traffic.
    """

    __slots__ = ("line", "kind", "private", "private_kind", "demands", "chunks", "deps",
                 "array_cycles")

    def __init__(self, line: int, kind: str, private: float = 0.0,
                 private_kind: str = "compute") -> None:
        self.line = line
        self.kind = kind
        self.private = private
        self.private_kind = private_kind
        self.demands: dict = {}
        self.chunks = 1
        self.deps: list = []
        self.array_cycles = 0

    def add(self, resource, amount: float) -> None:
        if amount > 0:
            self.demands[resource] = self.demands.get(resource, 0.0) + amount


def _split_array_ports(streams: list) -> None:
    """Rewrite ("a", lo, hi) demands onto disjoint elementary ranges, evenly spread."""
    ranges = sorted({key for stream in streams for key in stream.demands if type(key) is tuple})
    if all(left[2] <= right[1] for left, right in zip(ranges, ranges[1:])):
        return  # disjoint ranges: nothing to split
    points = sorted({bound for key in ranges for bound in key[1:]})
    for stream in streams:
        if not any(isinstance(key, tuple) for key in stream.demands):
            continue
        demands: dict = {}
        for key, amount in stream.demands.items():
            if not isinstance(key, tuple):
                demands[key] = demands.get(key, 0.0) + amount
                continue
            _, lo, hi = key
            start = bisect_left(points, lo)
            stop = bisect_left(points, hi)
            for left, right in zip(points[start:stop], points[start + 1:stop + 1]):
                part = ("a", left, right)
                demands[part] = demands.get(part, 0.0) + amount * (right - left) / (hi - lo)
        stream.demands = demands


def _ceil(cycles: float) -> int:
    """Whole cycles, forgiving float noise (cycles)."""
    return max(0, math.ceil(cycles - _EPS))


def _attribute(streams: list, capacity) -> str:
    """The breakdown category that bounds these streams (see module docstring)."""
    bounds = dict.fromkeys(_CATEGORIES, 0.0)
    loads: dict = {}
    for stream in streams:
        bounds[stream.private_kind] = max(bounds[stream.private_kind], stream.private)
        for resource, amount in stream.demands.items():
            kind = "compute" if resource == "vec" and stream.kind != "weight_load" else stream.kind
            loads[(resource, kind)] = loads.get((resource, kind), 0.0) + amount
    for (resource, kind), amount in loads.items():
        bounds[kind] = max(bounds[kind], amount / capacity(resource))
    return max(_CATEGORIES, key=lambda kind: (bounds[kind], -_CATEGORIES.index(kind)))


def _time_alone(stream: _Stream, capacity) -> float:
    """Cycles of a statement running alone (float)."""
    _split_array_ports([stream])
    time = stream.private
    for resource, amount in stream.demands.items():
        time = max(time, amount / capacity(resource))
    return time


def _allocate(active: Iterable[int], rate_cap: list, demands: list, capacity) -> dict:
    """Max-min fair progress rates (fraction of own work per cycle) by progressive filling."""
    left = set(active)
    spare: dict = {}
    for s in left:
        for resource in demands[s]:
            spare[resource] = capacity(resource)
    rates: dict = {}
    while left:
        level = min(rate_cap[s] for s in left)
        need: dict = {}
        for s in left:
            for resource, amount in demands[s].items():
                need[resource] = need.get(resource, 0.0) + amount
        for resource, total in need.items():
            level = min(level, max(spare[resource], 0.0) / total)
        if level == _INF:
            rates.update(dict.fromkeys(left, _INF))
            break
        limit = level * (1 + 1e-9)
        tight = {r for r, total in need.items() if max(spare[r], 0.0) / total <= limit}
        frozen = [s for s in left
                  if rate_cap[s] <= limit or any(r in tight for r in demands[s])]
        for s in frozen:
            rates[s] = level
            left.discard(s)
            for resource, amount in demands[s].items():
                spare[resource] -= level * amount
    return rates


def _block_signature(streams: list, capacity) -> tuple:
    """Everything the block timing depends on, with resources renamed by first use."""
    names: dict = {}
    shape = []
    for stream in streams:
        demands = tuple((names.setdefault(r, len(names)), amount)
                        for r, amount in stream.demands.items())
        shape.append((stream.chunks, stream.private, demands, tuple(stream.deps)))
    return tuple(capacity(r) for r in names), tuple(shape)


_BLOCK_MEMO: dict = {}
_BLOCK_MEMO_LIMIT = 200_000


def _block_time(streams: list, capacity) -> float:
    """Makespan of a parallel block (cycles), memoized: repeated layers repeat blocks."""
    key = _block_signature(streams, capacity)
    time = _BLOCK_MEMO.get(key)
    if time is None:
        time = _run_block(streams, capacity)
        if len(_BLOCK_MEMO) < _BLOCK_MEMO_LIMIT:
            _BLOCK_MEMO[key] = time
    return time


def _run_block(streams: list, capacity) -> float:
    """Simulate a parallel block chunk by chunk; return its makespan (cycles, float).

    Rates only change when a statement starts or finishes, so time is cut into epochs
    at those instants; inside an epoch every started statement has a fixed chunk
    duration `d` and its chunk ends follow `end_k = max(end_{k-1}, ready_k) + d`, where
    `ready_k` is when its producers have delivered what chunk k needs.
    """
    run = _BlockRun(streams, capacity)
    while run.activate():
        run.epoch()
    return run.now


_NEED_CACHE: dict = {}


def _need_index(producer_chunks: int, consumer_chunks: int, whole: bool) -> list:
    """For each consumer chunk k: the producer chunk that must have ended (0-based).

    Proportional: chunk k needs ceil((k+1)*C_p/C_c) producer chunks; whole: all C_p.
    """
    key = (producer_chunks, consumer_chunks, whole)
    table = _NEED_CACHE.get(key)
    if table is None:
        if whole:
            table = [producer_chunks - 1] * consumer_chunks
        else:
            table = [-(-(k + 1) * producer_chunks // consumer_chunks) - 1
                     for k in range(consumer_chunks)]
        _NEED_CACHE[key] = table
    return table


class _BlockRun:
    """State of one parallel-block simulation (see `_run_block`).

    Per epoch, `times[s] = [starts, ends, stopped]` lists the chunks of started
    statement s from `done[s]` on, computed lazily up to `horizon` (the earliest start
    or finish found so far, which ends the epoch).
    """

    def __init__(self, streams: list, capacity) -> None:
        self.count = len(streams)
        self.chunks = [stream.chunks for stream in streams]
        self.deps = [[(p, _need_index(self.chunks[p], stream.chunks, whole))
                      for p, whole in stream.deps] for stream in streams]
        self.demands = [stream.demands for stream in streams]
        self.rate_cap = [1.0 / s.private if s.private > 0 else _INF for s in streams]
        self.capacity = capacity
        self.done = [0] * self.count          # chunks finished
        self.inflight: list = [None] * self.count  # work left (fraction) of a started chunk
        self.finished = [False] * self.count
        self.active: set = set()              # started and not finished
        self.now = 0.0
        self.times: dict = {}
        self.horizon = _INF

    def ready_now(self, s: int) -> bool:
        """Whether the producers have finished what the first chunk of s needs."""
        return all(self.done[p] > need[0] for p, need in self.deps[s])

    def activate(self) -> bool:
        """Start every statement whose first chunk is ready now; False when all are done."""
        for s in range(self.count):
            if not self.finished[s] and s not in self.active and self.ready_now(s):
                self.active.add(s)
        if not self.active:
            return False
        rates = _allocate(self.active, self.rate_cap, self.demands, self.capacity)
        self.rates = rates
        self.duration = {s: 0.0 if rates[s] == _INF else 1.0 / (self.chunks[s] * rates[s])
                         for s in self.active}
        return True

    def ready_at(self, s: int, chunk: int, start: float) -> float:
        """Latest of `start` and the ends of the producer chunks that `chunk` of s needs."""
        done = self.done
        times = self.times
        for p, need in self.deps[s]:
            m = need[chunk]
            base = done[p]
            if m < base:
                continue
            entry = times.get(p)
            if entry is None:
                return _INF  # the producer has not started: not in this epoch
            ends = entry[1]
            j = m - base
            if j >= len(ends) and not self.extend(p, j):
                return _INF
            if ends[j] > start:
                start = ends[j]
        return start

    def extend(self, s: int, index: int) -> bool:
        """Compute chunk ends of s up to `index` (relative to done[s]) before the horizon."""
        entry = self.times[s]
        starts, ends, stopped = entry
        if stopped:
            return False
        duration = self.duration[s]
        chunks = self.chunks[s]
        first = self.done[s]
        while len(ends) <= index:
            chunk = first + len(ends)
            if chunk >= chunks:
                return False
            if not ends and self.inflight[s] is not None:
                start = -_INF  # started in an earlier epoch
                rate = self.rates[s]
                end = self.now if rate == _INF else self.now + self.inflight[s] / rate
            else:
                start = self.ready_at(s, chunk, ends[-1] if ends else self.now)
                if start >= self.horizon:
                    entry[2] = True
                    return False
                end = start + duration
            starts.append(start)
            ends.append(end)
            if chunk + 1 == chunks and end < self.horizon:
                self.horizon = end
        return True

    def epoch(self) -> None:
        """Advance to the next instant a statement starts or finishes."""
        self.horizon = _INF
        self.times = {s: [[], [], False] for s in self.active}
        for s in range(self.count):
            if not self.finished[s] and s not in self.active:
                start = self.ready_at(s, 0, self.now)  # may itself lower the horizon
                self.horizon = min(self.horizon, start)
        for s in sorted(self.active):
            self.extend(s, self.chunks[s])
        if self.horizon == _INF:  # cannot happen: dependencies only point backwards
            raise CMSwitchError("internal: parallel block made no progress")
        self.commit(self.horizon)

    def commit(self, at: float) -> None:
        for s in list(self.active):
            starts, ends, _ = self.times[s]
            finished = bisect_right(ends, at)
            self.done[s] += finished
            self.inflight[s] = None
            if finished < len(ends) and starts[finished] < at:
                self.inflight[s] = (ends[finished] - at) * self.rates[s]
            if self.done[s] == self.chunks[s]:
                self.finished[s] = True
                self.active.discard(s)
        self.now = at


class _TracedBlockRun(_BlockRun):
    """A `_BlockRun` that also records when each statement's first chunk starts and its
    last chunk ends (cycles from the block's start)."""

    def __init__(self, streams: list, capacity) -> None:
        super().__init__(streams, capacity)
        self.first: list = [None] * self.count
        self.last: list = [None] * self.count

    def commit(self, at: float) -> None:
        for s in self.active:
            starts, ends, _ = self.times[s]
            if self.first[s] is None and starts and starts[0] <= at:
                self.first[s] = starts[0]
            finished = bisect_right(ends, at)
            if finished and self.done[s] + finished == self.chunks[s]:
                self.last[s] = ends[finished - 1]
        super().commit(at)


_SPAN_MEMO: dict = {}


def _block_spans(streams: list, capacity) -> tuple:
    """(makespan, [(start, end) per statement]) of a parallel block (cycles), memoized."""
    key = _block_signature(streams, capacity)
    result = _SPAN_MEMO.get(key)
    if result is None:
        run = _TracedBlockRun(streams, capacity)
        while run.activate():
            run.epoch()
        result = (run.now, list(zip(run.first, run.last)))
        if len(_SPAN_MEMO) < _BLOCK_MEMO_LIMIT:
            _SPAN_MEMO[key] = result
    return result


# ----------------------------------------------------------------------------------
# the machine


class _Segment:
    """Accumulators of one `.segment` (cycles, array-cycles of MVM work)."""

    def __init__(self, record: SegmentBegin, memory_mode: int) -> None:
        self.record = record
        self.cycles = 0
        self.array_cycles = 0
        self.compute_arrays: set = set()   # arrays an mvm of the segment runs on
        self.data_arrays: set = set()      # arrays the segment reads or places data in
        self.memory_mode_peak = memory_mode
        self.energy = dict.fromkeys(ENERGY_CATEGORIES, 0.0)
        self.ops = 0


class _Block:
    """Bookkeeping of one open `parallel` block."""

    def __init__(self, line: int) -> None:
        self.line = line
        self.streams: list = []
        self.writers: dict = {}   # (tensor, Loc) -> [stream index]
        self.owners: dict = {}    # array -> (owner, line)
        self.programmed: dict = {}  # array -> stream index of its load_weight/write_operand
        self.switched: set = set()
        self.data: set = set()
        self.touched: set = set()
        self.records: list = []   # its statements, kept only when tracing
        self.handed: dict = {}    # tensor -> [writer line, bytes, reader line] of a stream


class _Machine:
    """Executes records one by one; see the module docstring for the semantics."""

    def __init__(self, name: str, accesses: dict, arch_override: dict | None,
                 trace: bool = False, statements: bool = False) -> None:
        self.name = name
        self.accesses = accesses
        self.cursor: dict = {}
        self.override = dict(arch_override) if arch_override else None
        self.arch: dict | None = None
        self.energy: dict | None = None  # pJ per event kind, from the header; None: unknown
        self.arch_name = ""
        self.model = ""
        self.tensors: dict = {}
        self.dram: dict = {}       # tensor -> bytes written to dram (inputs: all)
        self.filled: dict = {}     # (tensor, Loc) -> bytes written to that copy so far
        self.resident: dict = {}   # (tensor, Loc) -> bytes occupied
        self.streamed: dict = {}   # (tensor, Loc) -> window bytes, for this block
        self.gone: dict = {}       # (tensor, Loc) -> why it is no longer there
        self.segment: _Segment | None = None
        self.block: _Block | None = None
        self.segments: list = []
        self.totals = dict.fromkeys(_CATEGORIES, 0)
        self.statements = 0
        self.array_cycles = 0
        self.line = 0
        self.trace: list | None = [] if trace else None
        self.op_rows: dict = {}      # operator (or moved tensor) -> its attribution row
        self.statement_rows: list | None = [] if statements else None

    # -- errors and dispatch -------------------------------------------------------

    def fail(self, message: str, line: int | None = None):
        raise CMSwitchError(f"{self.name}: line {line or self.line}: {message}")

    def feed(self, record) -> None:
        self.line = record.line
        if isinstance(record, Statement):
            self.statement(record)
        elif isinstance(record, ParallelBegin):
            self.block = _Block(record.line)
        elif isinstance(record, ParallelEnd):
            self.end_block()
        elif isinstance(record, SegmentBegin):
            self.begin_segment(record)
        elif isinstance(record, SegmentEnd):
            self.end_segment()
        elif isinstance(record, ArchDecl):
            self.set_arch(record)
        elif isinstance(record, ModelDecl):
            self.model = record.name
        elif isinstance(record, TensorDecl):
            self.declare(record)

    # -- header ----------------------------------------------------------------------

    def set_arch(self, record: ArchDecl) -> None:
        if self.arch is not None:
            self.fail("second `.arch` header")
        fields = {key: record.fields[key] for key in ARCH_FIELDS}
        fields.update({k: record.fields[k] for k in OPTIONAL_FIELDS if k in record.fields})
        energy = {key: record.fields[key] for key in ENERGY_FIELDS if key in record.fields}
        name = record.name
        if self.override:
            fields.update({k: self.override[k] for k in ARCH_FIELDS + OPTIONAL_FIELDS
                           if k in self.override})
            energy = {k: self.override[k] for k in ENERGY_FIELDS if k in self.override}
            name = str(self.override.get("name", name))
        self.check_arch({**fields, **energy})
        self.arch = fields
        self.energy = {k: float(v) for k, v in energy.items()} or None
        self.arch_name = name
        self.stream_fusion = fields.get("stream_fusion", 0)
        arrays = fields["arrays"]
        self.memory = bytearray(arrays)          # 1 = memory mode
        self.contents: list = [None] * arrays    # compute-mode tile or None
        self.occupancy = [0] * arrays            # bytes of data per memory-mode array
        self.gb_used = 0
        self.memory_count = 0
        self.array_bytes = fields["rows"] * fields["cols"] * fields["cell_bits"] // 8
        self.caps = {"dram": fields["external_bw_bytes"],
                     "gb": fields["global_buffer_bw_bytes"],
                     "wport": fields["weight_write_bw_bytes"],
                     "vec": fields["vector_ops_per_cycle"]}

    def check_arch(self, fields: dict) -> None:
        """The header's fields against the hardware files' own schema and limits
        (`cmswitch.arch.Arch`: integer sizes, positive counts, arrays <= 2^20, rates in
        1e-6..1e12)."""
        from cmswitch.arch import arch_from_dict

        try:
            arch_from_dict({"name": "header", **fields}, ".arch")
        except CMSwitchError as e:
            self.fail(str(e))

    def capacity(self, resource) -> float:
        """Bandwidth of a resource (bytes/cycle; vector ops/cycle for "vec")."""
        if isinstance(resource, tuple):
            return (resource[2] - resource[1]) * self.arch["internal_bw_bits"] / 8
        return self.caps[resource]

    def declare(self, record: TensorDecl) -> None:
        if record.name in self.tensors:
            self.fail(f"tensor {record.name} declared twice "
                      f"(first at line {self.tensors[record.name].line})")
        self.tensors[record.name] = record
        if record.is_input:
            self.dram[record.name] = record.nbytes

    # -- segments and blocks ---------------------------------------------------------

    def begin_segment(self, record: SegmentBegin) -> None:
        if self.arch is None:
            self.fail("`.segment` before the `.arch` header")
        self.segment = _Segment(record, self.memory_count)

    def end_segment(self) -> None:
        seg = self.segment
        arrays = self.arch["arrays"]
        util = seg.array_cycles / (arrays * seg.cycles) if seg.cycles else 0.0
        row = {
            "id": seg.record.id, "line": seg.record.line, "ops": list(seg.record.ops),
            "cycles": seg.cycles, "predicted_cycles": seg.record.predicted,
            "compute_arrays": len(seg.compute_arrays),
            "memory_arrays": len(seg.data_arrays - seg.compute_arrays),
            "memory_mode_peak": seg.memory_mode_peak,
            "utilization": util,
        }
        if self.energy is not None:
            seg.energy["static"] = (arrays * self.energy["array_static_mw"] * seg.cycles
                                    / self.arch["clock_mhz"] * 1e3)
            row["energy_pj"] = sum(seg.energy.values())
            row["energy_breakdown_pj"] = dict(seg.energy)
        row["mvm_ops"] = seg.ops
        self.segments.append(row)
        self.segment = None

    def charge(self, cycles: int, kind: str, array_cycles: int) -> None:
        self.segment.cycles += cycles
        self.segment.array_cycles += array_cycles
        self.totals[kind] += cycles
        self.array_cycles += array_cycles

    def end_block(self) -> None:
        block = self.block
        self.block = None
        streams = block.streams
        if streams:
            _split_array_ports(streams)
            if self.trace is None:
                cycles = _ceil(_block_time(streams, self.capacity))
            else:
                makespan, spans = _block_spans(streams, self.capacity)
                cycles = _ceil(makespan)
                origin = sum(self.totals.values())
                for st, (start, end) in zip(block.records, spans):
                    self.trace_span(st, origin + start, origin + end, block.line)
            kind = _attribute(streams, self.capacity)
            self.charge(cycles, kind, sum(stream.array_cycles for stream in streams))
        for tensor, (line, _, reader) in block.handed.items():
            if reader is None:
                self.fail(f"{tensor}@stream is read by no later VEC statement of its "
                          f"parallel block (line {block.line})", line)
        for key in list(self.streamed):
            self.release(key, f"was only streamed (window=) in the parallel block "
                              f"at line {block.line}")
        self.retire(block.touched, self.line)

    def trace_span(self, st: Statement, start: float, end: float, block: int | None) -> None:
        """Record one statement's start and end (cycles from the start of the flow)."""
        self.trace.append({"segment": self.segment.record.id, "line": st.line,
                           "opcode": st.opcode, "op": st.op, "parallel": block,
                           "start": round(start, 3), "end": round(end, 3)})

    # -- statements --------------------------------------------------------------------

    def statement(self, st: Statement) -> None:
        self.statements += 1
        handler = getattr(self, "do_" + st.kind.replace(".", "_"))
        touched: set = set()
        stream = handler(st, touched)
        energy = self.count_energy(st, stream)
        if self.block is not None:
            probe = _Stream(st.line, stream.kind, stream.private)
            probe.demands = dict(stream.demands)
            self.attribute(st, stream, _ceil(_time_alone(probe, self.capacity)), energy)
            self.block.streams.append(stream)
            self.block.touched |= touched
            if self.trace is not None:
                self.block.records.append(st)
            return
        cycles = _ceil(_time_alone(stream, self.capacity))
        self.attribute(st, stream, cycles, energy)
        if self.trace is not None:
            origin = sum(self.totals.values())
            self.trace_span(st, origin, origin + cycles, None)
        self.charge(cycles, _attribute([stream], self.capacity), stream.array_cycles)
        self.retire(touched, st.line)

    def count_energy(self, st: Statement, stream: _Stream) -> float | None:
        """Charge the statement's events to its segment's energy categories (pJ) and its
        useful MVM ops (2 per MAC) to the segment; see "Energy" in the module docstring.
        Returns the statement's energy (pJ; None without energy fields)."""
        seg = self.segment
        if st.kind == "CIM.mvm":
            seg.ops += 2 * st.vectors * st.k * st.n
        rates = self.energy
        if rates is None:
            return None
        energy = seg.energy
        total = 0.0
        if st.kind == "CIM.mvm":
            part = stream.array_cycles // self.arch["mvm_cycles"] * rates["mvm_pj"]
            energy["compute"] += part
            total += part
        elif st.kind == "CM.switch":
            part = (st.arrays.hi - st.arrays.lo) * rates["switch_pj"]
            energy["switching"] += part
            total += part
        for resource, amount in stream.demands.items():
            if resource == "vec":
                category, part = "digital", amount * rates["vector_op_pj"]
            elif type(resource) is tuple:
                category, part = "memory_arrays", 8 * amount * rates["array_access_pj_per_bit"]
            else:
                category, rate = _PORT_ENERGY[resource]
                part = 8 * amount * rates[rate]
            energy[category] += part
            total += part
        return total

    def attribute(self, st: Statement, stream: _Stream, alone: int,
                  energy: float | None) -> None:
        """Add the statement to its operator's row (see "Attribution" in the module
        docstring) and, when asked, keep its own row."""
        name = ("CM.switch" if st.kind == "CM.switch" else
                st.op or (st.reads[0].tensor if st.reads else st.opcode))
        row = self.op_rows.get(name)
        if row is None:
            row = self.op_rows[name] = {
                "name": name, "statements": 0, "alone_cycles": 0,
                "bytes": dict.fromkeys(_BYTE_KINDS, 0.0), "mvm_ops": 0,
                "energy_pj": None if energy is None else 0.0}
        moved = dict.fromkeys(_BYTE_KINDS, 0.0)
        for resource, amount in stream.demands.items():
            if resource != "vec":
                moved["arrays" if type(resource) is tuple else _BYTE_KIND[resource]] += amount
        row["statements"] += 1
        row["alone_cycles"] += alone
        for kind, amount in moved.items():
            row["bytes"][kind] += amount
        ops = 2 * st.vectors * st.k * st.n if st.kind == "CIM.mvm" else 0
        row["mvm_ops"] += ops
        if energy is not None:
            row["energy_pj"] += energy
        if self.statement_rows is not None:
            self.statement_rows.append({
                "line": st.line, "segment": self.segment.record.id, "opcode": st.opcode,
                "name": name, "parallel": self.block.line if self.block else None,
                "alone_cycles": alone, "bytes": moved, "mvm_ops": ops, "energy_pj": energy})

    def do_CM_switch(self, st: Statement, touched: set) -> _Stream:
        lo, hi = self.check_range(st.arrays)
        self.claim(st, f"CM.switch at line {st.line}", lo, hi)
        to_memory = st.mode == "TOM"
        if not to_memory:
            self.evict(lo, hi, f"was erased by CM.switch TOC at line {st.line}")
        changed = (hi - lo) - self.memory[lo:hi].count(to_memory)  # others keep their mode
        self.memory_count += changed if to_memory else -changed
        self.memory[lo:hi] = bytes([to_memory]) * (hi - lo)
        if to_memory:  # erases weights; memory-mode arrays hold no tiles anyway
            self.contents[lo:hi] = [None] * (hi - lo)
        if self.segment.memory_mode_peak < self.memory_count:
            self.segment.memory_mode_peak = self.memory_count
        return _Stream(st.line, "switch", self.arch["switch_cycles"], "switch")

    def do_CIM_load_weight(self, st: Statement, touched: set) -> _Stream:
        stream = _Stream(st.line, "weight_load")
        stream.add("dram", st.nbytes)
        return self.program(st, stream)

    def do_CIM_write_operand(self, st: Statement, touched: set) -> _Stream:
        """The operand has `instances` parts (batch x heads) of bytes/instances each;
        the copies take them in turn, so every byte is written once."""
        stream = _Stream(st.line, "weight_load")
        self.read(st.reads[0], st, stream, st.nbytes, touched)
        return self.program(st, stream)

    def program(self, st: Statement, stream: _Stream) -> _Stream:
        """Place the tiles of `copies` copies of st.op into compute arrays."""
        lo, hi = self.check_range(st.arrays)
        tk, tn = st.tiles
        per_copy = tk * tn
        if hi - lo != per_copy * st.copies:
            self.fail(f"{st.opcode} {st.op}: {st.arrays} has {hi - lo} arrays but "
                      f"tiles={tk}x{tn} copies={st.copies} need {per_copy * st.copies}")
        self.need_mode(lo, hi, 0, f"{st.opcode} {st.op}", "CM.switch TOC")
        part = st.nbytes / st.instances
        if part > per_copy * self.array_bytes:
            self.fail(f"{st.opcode} {st.op}: {part:g} bytes per copy exceed the "
                      f"{per_copy} arrays' {per_copy * self.array_bytes} bytes")
        self.claim(st, st.op, lo, hi)
        for i in range(lo, hi):
            copy, tile = divmod(i - lo, per_copy)
            self.contents[i] = (st.op, tk, tn, st.line, copy, tile, part)
        if self.block is not None:
            index = len(self.block.streams)
            for i in range(lo, hi):
                self.block.programmed[i] = index
        written = st.nbytes if st.kind == "CIM.write_operand" else st.copies * st.nbytes
        stream.add("wport", written)
        stream.chunks = min(CHUNKS, max(1, st.nbytes))
        return stream

    def do_CIM_mvm(self, st: Statement, touched: set) -> _Stream:
        lo, hi = self.check_range(st.arrays)
        self.need_mode(lo, hi, 0, f"CIM.mvm {st.op}", "CM.switch TOC and CIM.load_weight")
        tk, tn, copies = self.whole_copies(st, lo, hi)
        self.check_shape(st, lo, tk, tn)
        self.claim(st, st.op, lo, hi)
        act = self.arch["act_bits"]
        cycles = self.arch["mvm_cycles"]
        stream = _Stream(st.line, "data", -(-st.vectors // copies) * cycles)
        stream.chunks = min(CHUNKS, max(1, st.vectors))
        stream.array_cycles = st.vectors * cycles * tk * tn
        self.read(st.reads[0], st, stream, st.vectors * st.k * act / 8, touched)
        self.write(st.writes[0], st, stream, st.vectors * st.n * act / 8, touched)
        self.check_window(st, st.reads[0], st.k, "input")
        self.check_window(st, st.writes[0], st.n, "output")
        self.depend_on_programming(stream, lo, hi)
        self.segment.compute_arrays.update(range(lo, hi))
        return stream

    def do_VEC(self, st: Statement, touched: set) -> _Stream:
        stream = _Stream(st.line, "data")
        stream.add("vec", st.ops)
        for ref in st.reads:
            self.read(ref, st, stream, self.tensor(ref, st).nbytes, touched)
        for ref in st.writes:
            self.write(ref, st, stream, self.tensor(ref, st).nbytes, touched)
        units = st.ops or sum(stream.demands.values())
        stream.chunks = min(CHUNKS, max(1, math.ceil(units)))
        return stream

    def do_MEM(self, st: Statement, touched: set) -> _Stream:
        stream = _Stream(st.line, "data")
        source = st.reads[0]
        self.read(source, st, stream, st.nbytes, touched, need=0)
        declared = self.tensor(source, st).nbytes
        if st.nbytes > declared:
            self.fail(f"{st.opcode} moves {st.nbytes} bytes of {source.tensor}, "
                      f"declared {declared} bytes")
        self.check_filled(st, source, st.nbytes)
        self.write(st.writes[0], st, stream, st.nbytes, touched)
        stream.chunks = min(CHUNKS, max(1, st.nbytes))
        return stream

    do_MEM_load = do_MEM_store = do_MEM_move = do_MEM

    # -- arrays ------------------------------------------------------------------------

    def check_range(self, loc: Loc) -> tuple:
        if loc.hi > self.arch["arrays"]:
            self.fail(f"{loc} is beyond the chip's {self.arch['arrays']} arrays")
        return loc.lo, loc.hi

    def need_mode(self, lo: int, hi: int, memory: int, what: str, hint: str) -> None:
        """Every array lo..hi-1 must be in memory mode (memory=1) or compute mode (0)."""
        if self.memory[lo:hi].count(memory) == hi - lo:
            return
        for i in range(lo, hi):
            if self.memory[i] != memory:
                mode = "memory" if self.memory[i] else "compute"
                self.fail(f"{what}: array {i} is in {mode} mode ({hint} first)")

    def whole_copies(self, st: Statement, lo: int, hi: int) -> tuple:
        """Check a[lo:hi] holds whole copies of st.op; return (TK, TN, copies)."""
        groups: dict = {}
        shape = None
        for i in range(lo, hi):
            held = self.contents[i]
            if held is None:
                self.fail(f"CIM.mvm {st.op}: array {i} holds no weights")
            if held[0] != st.op:
                self.fail(f"CIM.mvm {st.op}: array {i} holds {held[0]}, not {st.op}")
            if shape is not None and held[1:3] != shape:
                self.fail(f"CIM.mvm {st.op}: {st.arrays} mixes tilings of {st.op}")
            shape = held[1:3]
            groups.setdefault(held[3:5], set()).add(held[5])
        per_copy = shape[0] * shape[1]
        for (line, copy), tiles in groups.items():
            if len(tiles) != per_copy:
                self.fail(f"CIM.mvm {st.op}: {st.arrays} holds {len(tiles)} of the {per_copy} "
                          f"tiles of copy {copy} loaded at line {line}; it must hold whole copies")
        return shape[0], shape[1], len(groups)

    def check_shape(self, st: Statement, lo: int, tk: int, tn: int) -> None:
        """Rule 1b: the mvm's `k x n` matrix fits the tiles a copy holds — `k <=
        TK*TN*rows` and `n <= TK*TN*weights_per_row` (each tile has `rows` input rows
        and `weights_per_row` outputs; a grouped convolution packs its block diagonal
        into the tiles, so only their total is a bound) — and each copy was
        programmed with at least `max(k, n)` weights (every input row and output
        column of the matrix holds one)."""
        rows = self.arch["rows"]
        wpr = self.arch["cols"] * self.arch["cell_bits"] // self.arch["weight_bits"]
        tiles = tk * tn
        if st.k > tiles * rows or st.n > tiles * wpr:
            self.fail(f"CIM.mvm {st.op}: k={st.k} n={st.n} exceed its {tk}x{tn} tiles "
                      f"({tiles * rows} rows, {tiles * wpr} weights per row in all)")
        bits = min(self.arch["weight_bits"], self.arch["act_bits"])
        least = max(st.k, st.n) * bits / 8
        part = self.contents[lo][6]
        if part < least - _EPS:
            self.fail(f"CIM.mvm {st.op}: its copies were programmed with {part:g} bytes, "
                      f"fewer than the {least:g} a {st.k}x{st.n} matrix needs")

    def claim(self, st: Statement, owner: str, lo: int, hi: int) -> None:
        """Rule 5: in a parallel block an array serves one operator (or one switch)."""
        block = self.block
        if block is None:
            return
        switch = st.kind == "CM.switch"
        for i in range(lo, hi):
            first = block.owners.setdefault(i, (owner, st.line))
            if first[0] != owner:
                self.fail(f"array {i} is used by {first[0]} (line {first[1]}) and by {owner} "
                          f"in one parallel block")
            if switch and i in block.data:
                self.fail(f"array {i} is switched by CM.switch and holds data "
                          f"in one parallel block")
        if switch:
            block.switched.update(range(lo, hi))

    def depend_on_programming(self, stream: _Stream, lo: int, hi: int) -> None:
        if self.block is None:
            return
        sources = {self.block.programmed[i] for i in range(lo, hi) if i in self.block.programmed}
        stream.deps.extend((p, True) for p in sorted(sources))

    # -- data --------------------------------------------------------------------------

    def tensor(self, ref: Ref, st: Statement) -> TensorDecl:
        decl = self.tensors.get(ref.tensor)
        if decl is None:
            self.fail(f"{st.opcode}: tensor {ref.tensor} is not declared (.tensor)")
        return decl

    def port(self, loc: Loc):
        return ("a", loc.lo, loc.hi) if loc.kind == "a" else loc.kind

    def use_data_arrays(self, loc: Loc, st: Statement, what: str) -> None:
        lo, hi = self.check_range(loc)
        self.need_mode(lo, hi, 1, f"{st.opcode} {what} {loc}", "CM.switch TOM")
        self.segment.data_arrays.update(range(lo, hi))
        block = self.block
        if block is None:
            return
        for i in range(lo, hi):
            if i in block.switched:
                self.fail(f"array {i} is switched by CM.switch and holds data "
                          f"in one parallel block")
        block.data.update(range(lo, hi))

    def read(self, ref: Ref, st: Statement, stream: _Stream, nbytes: float, touched: set,
             need: float | None = None) -> None:
        """Rule 3: the copy ref must exist and hold `need` bytes (default: the whole
        tensor) written there; in a block, depend on its earlier writers."""
        decl = self.tensor(ref, st)
        if ref.loc.kind == "stream":
            self.read_stream(ref, st, stream, decl)
            return
        stream.add(self.port(ref.loc), nbytes)
        need = decl.nbytes if need is None else need
        if ref.loc.kind == "dram":
            if ref.tensor not in self.dram:
                self.fail(f"{st.opcode} reads {ref}, but {ref.tensor} is not an input "
                          f"and was never written to dram")
            self.check_filled(st, ref, need)
            self.depend_on_writers(stream, ref)
            return
        if ref.loc.kind == "a":
            self.use_data_arrays(ref.loc, st, "reads from")
        key = (ref.tensor, ref.loc)
        touched.add(key)
        if key not in self.resident:
            why = self.gone.get(key, "was never written there")
            self.fail(f"{st.opcode} reads {ref}, which {why}")
        self.check_filled(st, ref, need)
        self.depend_on_writers(stream, ref)

    def read_stream(self, ref: Ref, st: Statement, stream: _Stream, decl: TensorDecl) -> None:
        """Rule 6 (docs/cmsasm.md, "Streams"): one later VEC statement of the writer's
        block reads a stream, whole; no port carries it."""
        handed = self.block.handed.get(ref.tensor) if self.block is not None else None
        if st.kind != "VEC":
            self.fail(f"{st.opcode} reads {ref}: only a VEC statement reads a stream")
        if handed is None:
            self.fail(f"{st.opcode} reads {ref}, which no earlier statement of this "
                      f"parallel block wrote")
        if handed[2] is not None:
            self.fail(f"{st.opcode} reads {ref}, which line {handed[2]} already read "
                      f"(a stream has one reader)")
        self.check_filled(st, ref, decl.nbytes, have=handed[1])
        handed[2] = st.line
        self.depend_on_writers(stream, ref)

    def write_stream(self, ref: Ref, st: Statement, nbytes: float) -> None:
        """Rule 6: a CIM.mvm or VEC statement of a parallel block writes a stream once
        (`nbytes`, through no port)."""
        if self.block is None:
            self.fail(f"{st.opcode} writes {ref} outside a parallel block (a stream "
                      f"lives in one block)")
        if st.kind not in ("CIM.mvm", "VEC"):
            self.fail(f"{st.opcode} writes {ref}: only CIM.mvm and VEC write a stream")
        if not self.stream_fusion:
            self.fail(f"{st.opcode} writes {ref}, but the hardware hands no stream to its "
                      f"digital unit (stream_fusion=0 in .arch)")
        if ref.tensor in self.block.handed:
            self.fail(f"{st.opcode} writes {ref}, which line "
                      f"{self.block.handed[ref.tensor][0]} already wrote in this block")
        self.block.handed[ref.tensor] = [st.line, nbytes, None]
        self.add_writer(ref)

    def check_window(self, st: Statement, ref: Ref, elements: int, what: str) -> None:
        """A copy streamed through `window=` holds at least one whole vector of each mvm
        that writes or reads it (`n` or `k` elements, capped by the tensor's size)."""
        window = self.streamed.get((ref.tensor, ref.loc))
        if window is None:
            return
        need = min(self.tensor(ref, st).nbytes, math.ceil(elements * self.arch["act_bits"] / 8))
        if window < need:
            self.fail(f"CIM.mvm {st.op}: {ref.tensor}@{ref.loc} streams through window="
                      f"{window} bytes, less than one {what} vector ({need} bytes)")

    def check_filled(self, st: Statement, ref: Ref, need: float,
                     have: float | None = None) -> None:
        """Rule 3b: a read takes data that was written — the whole tensor for an mvm, a
        VEC or an operand write, `bytes=` for a MEM statement — into the copy `ref`
        names (`dram`: since the start; on chip: since the copy was created; a stream:
        `have`, what its writer wrote), counted in whole bytes."""
        if have is None:
            have = self.dram[ref.tensor] if ref.loc.kind == "dram" else \
                self.filled.get((ref.tensor, ref.loc), 0)
        if math.ceil(have - _EPS) < need:
            self.fail(f"{st.opcode} reads {need:g} bytes of {ref}, but only {have:g} bytes "
                      f"of it were written there")

    def add_writer(self, ref: Ref) -> None:
        """In a block, the statement being built writes `ref` (its readers depend on it)."""
        if self.block is not None:
            self.block.writers.setdefault((ref.tensor, ref.loc), []).append(len(self.block.streams))

    def depend_on_writers(self, stream: _Stream, ref: Ref) -> None:
        if self.block is None:
            return
        writers = self.block.writers.get((ref.tensor, ref.loc), ())
        stream.deps.extend((p, False) for p in writers)

    def write(self, ref: Ref, st: Statement, stream: _Stream, nbytes: float, touched: set) -> None:
        """Rules 2 and 4: data goes to memory-mode arrays and must fit."""
        decl = self.tensor(ref, st)
        if ref.loc.kind == "stream":
            self.write_stream(ref, st, nbytes)
            return
        stream.add(self.port(ref.loc), nbytes)
        self.add_writer(ref)
        if ref.loc.kind == "dram":
            self.dram[ref.tensor] = self.dram.get(ref.tensor, 0) + nbytes
            return
        if ref.loc.kind == "a":
            self.use_data_arrays(ref.loc, st, "places data in")
        key = (ref.tensor, ref.loc)
        touched.add(key)
        old = self.resident.get(key, 0)
        self.filled[key] = (self.filled.get(key, 0) if key in self.resident else 0) + nbytes
        if self.block is not None and st.window is not None and key not in self.resident:
            self.streamed[key] = st.window
        new = min(decl.nbytes, math.ceil(old + nbytes - _EPS))
        if key in self.streamed:
            new = min(new, self.streamed[key])
        self.occupy(key, old, new, st)

    def occupy(self, key: tuple, old: int, new: int, st: Statement) -> None:
        """Grow the copy `key` from old to new bytes, checking capacity (rule 4)."""
        tensor, loc = key
        self.resident[key] = new
        self.gone.pop(key, None)
        if loc.kind == "gb":
            self.gb_used += new - old
            if self.gb_used > self.arch["global_buffer_bytes"]:
                self.fail(f"{st.opcode}: global buffer capacity exceeded writing {tensor}@gb: "
                          f"{self.gb_used} bytes > {self.arch['global_buffer_bytes']}")
            return
        width = loc.hi - loc.lo
        delta = -(-new // width) - (-(-old // width))
        for i in range(loc.lo, loc.hi):
            self.occupancy[i] += delta
        worst = max(range(loc.lo, loc.hi), key=self.occupancy.__getitem__)
        if self.occupancy[worst] > self.array_bytes:
            self.fail(f"{st.opcode}: memory capacity exceeded writing {tensor}@{loc}: array "
                      f"{worst} would hold {self.occupancy[worst]} bytes > {self.array_bytes}")

    def release(self, key: tuple, why: str) -> None:
        """Free an on-chip copy and remember why it is gone."""
        nbytes = self.resident.pop(key, None)
        self.streamed.pop(key, None)
        self.filled.pop(key, None)
        self.gone[key] = why
        if nbytes is None:
            return
        loc = key[1]
        if loc.kind == "gb":
            self.gb_used -= nbytes
            return
        share = -(-nbytes // (loc.hi - loc.lo))
        for i in range(loc.lo, loc.hi):
            self.occupancy[i] -= share

    def evict(self, lo: int, hi: int, why: str) -> None:
        doomed = [key for key in self.resident
                  if key[1].kind == "a" and key[1].lo < hi and lo < key[1].hi]
        for key in doomed:
            self.release(key, why)

    def retire(self, touched: set, line: int) -> None:
        """Free copies whose next access after `line` is not a read (dead data)."""
        for key in touched:
            events = self.accesses.get(key, ())
            at = self.cursor.get(key, 0)
            limit = line * 2 + 1
            while at < len(events) and events[at] <= limit:
                at += 1
            self.cursor[key] = at
            if key not in self.resident:
                continue
            if at == len(events) or not events[at] & 1:
                self.release(key, f"is dead after line {line} "
                                  f"(its next access is a write, or none)")

    # -- report ------------------------------------------------------------------------

    def energy_report(self, cycles: int) -> dict | None:
        """Flow totals of the segments' energy (None when the header has no energy
        fields): {"total_pj", "breakdown_pj" {category: pJ}, "mvm_ops", "tops_per_watt",
        "average_power_mw"}."""
        if self.energy is None:
            return None
        breakdown = dict.fromkeys(ENERGY_CATEGORIES, 0.0)
        for seg in self.segments:
            for category, value in seg["energy_breakdown_pj"].items():
                breakdown[category] += value
        total = sum(breakdown.values())
        ops = sum(seg["mvm_ops"] for seg in self.segments)
        seconds = cycles / (self.arch["clock_mhz"] * 1e6)
        return {"total_pj": total, "breakdown_pj": breakdown, "mvm_ops": ops,
                "tops_per_watt": ops / total if total else None,
                "average_power_mw": total * 1e-9 / seconds if seconds else None}

    def report(self) -> dict:
        if self.arch is None:
            raise CMSwitchError(f"{self.name}: the flow has no `.arch` header")
        if not self.segments:
            raise CMSwitchError(f"{self.name}: the flow has no segments")
        for decl in self.tensors.values():
            if decl.is_output and decl.name not in self.dram:
                self.fail(f"output tensor {decl.name} is never stored to dram", decl.line)
            if decl.is_output and math.ceil(self.dram[decl.name] - _EPS) < decl.nbytes:
                self.fail(f"output tensor {decl.name}: only {self.dram[decl.name]:g} of its "
                          f"{decl.nbytes} bytes are stored to dram", decl.line)
        cycles = sum(self.totals.values())
        arrays = self.arch["arrays"]
        predicted = [seg["predicted_cycles"] for seg in self.segments
                     if seg["predicted_cycles"] is not None]
        return {
            "model": self.model,
            "arch": self.arch_name,
            "cycles": cycles,
            "seconds": cycles / (self.arch["clock_mhz"] * 1e6),
            "breakdown": dict(self.totals),
            "switch_share": self.totals["switch"] / cycles if cycles else 0.0,
            "predicted_cycles": sum(predicted) if predicted else None,
            "utilization": {
                "overall": self.array_cycles / (arrays * cycles) if cycles else 0.0,
                "segments": [seg["utilization"] for seg in self.segments],
            },
            "segments": self.segments,
            "energy": self.energy_report(cycles),
            "operators": list(self.op_rows.values()),
            **({"statement_rows": self.statement_rows}
               if self.statement_rows is not None else {}),
            "statements": self.statements,
            "arch_fields": {**self.arch, **(self.energy or {})},
            **({"trace": self.trace} if self.trace is not None else {}),
            "units": {"cycles": "clock cycles", "seconds": "s", "breakdown": "clock cycles",
                      "energy": "pJ (total_pj, breakdown_pj, segments' energy_pj); "
                                "tops_per_watt = mvm ops / pJ",
                      "switch_share": "fraction of cycles",
                      "compute_arrays": "arrays an mvm of the segment runs on",
                      "memory_arrays": "arrays the segment reads or places data in",
                      "memory_mode_peak": "most arrays in memory mode at once",
                      "utilization": "fraction of array-cycles doing MVM work"},
        }
