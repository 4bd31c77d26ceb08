"""Hypothesis strategies for the fuzz tests: random DAG-shaped ONNX models and random
valid hardware descriptions, plus an independent checker of compiled flows.

`random_models()` draws a small network layer by layer.  Each layer takes one or two
earlier activations (any earlier one, so branches and residual joins occur) and its
output shape is computed here from the ONNX operator formulas, not by onnx or by the
importer.  Every activation nobody consumes becomes a graph output.

`random_arches()` draws every field of `cmswitch.arch.Arch` within the schema's limits.

`flow_problems(plan, sim_report)` lists the invariants a compiled flow breaks (empty
when all hold): every operator executed exactly once, in exactly one segment; every
tensor written before it is read; no segment using more arrays than the chip has.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import onnx
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

OPSET = 20  #: Gelu exists from opset 20


@dataclass
class _Builder:
    """Graph under construction: activations are (name, shape) pairs."""

    nodes: list = field(default_factory=list)
    inits: list = field(default_factory=list)
    acts: list = field(default_factory=list)
    used: set = field(default_factory=set)
    count: int = 0

    def fresh(self, stem: str) -> str:
        self.count += 1
        return f"{stem}{self.count}"

    def weight(self, shape) -> str:
        name = self.fresh("w")
        self.inits.append(numpy_helper.from_array(np.zeros(shape, np.float32), name))
        return name

    def const_i64(self, values) -> str:
        name = self.fresh("c")
        self.inits.append(numpy_helper.from_array(np.array(values, np.int64), name))
        return name

    def add(self, op: str, inputs: list, shape: list, **attrs) -> tuple:
        out = self.fresh(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        self.used.update(i for i in inputs if any(i == a[0] for a in self.acts))
        self.acts.append((out, list(shape)))
        return out, list(shape)


def _conv_out(size: int, k: int, s: int, pb: int, pe: int, d: int = 1) -> int:
    """ONNX Conv/MaxPool: floor((in + pb + pe - d*(k-1) - 1) / s) + 1."""
    return (size + pb + pe - d * (k - 1) - 1) // s + 1


def _image_layer(draw, b: _Builder) -> None:
    """One layer on a 4-D NCHW activation."""
    images = [a for a in b.acts if len(a[1]) == 4]
    x, (n, c, h, w) = draw(st.sampled_from(images))
    kind = draw(st.sampled_from(["conv", "conv", "conv", "relu", "pool", "add", "concat"]))
    if kind == "conv":
        k = draw(st.sampled_from([1, 3])) if min(h, w) >= 3 else 1
        s = draw(st.sampled_from([1, 1, 2]))
        pads = draw(st.lists(st.integers(0, k // 2), min_size=4, max_size=4))
        groups = [g for g in (1, 2, c) if c % g == 0]
        g = draw(st.sampled_from(groups))
        cout = g * draw(st.integers(1, 48 // g if g < 48 else 1))
        wt = b.weight([cout, c // g, k, k])
        shape = [n, cout, _conv_out(h, k, s, pads[0], pads[2]), _conv_out(w, k, s, pads[1], pads[3])]
        b.add("Conv", [x, wt], shape, kernel_shape=[k, k], strides=[s, s], pads=pads, group=g)
    elif kind == "relu":
        b.add("Relu", [x], [n, c, h, w])
    elif kind == "pool" and min(h, w) >= 2:
        b.add("MaxPool", [x], [n, c, _conv_out(h, 2, 2, 0, 0), _conv_out(w, 2, 2, 0, 0)],
              kernel_shape=[2, 2], strides=[2, 2])
    elif kind in ("add", "concat"):
        same = [a for a in images if a[1] == [n, c, h, w]] if kind == "add" else \
            [a for a in images if a[1][0] == n and a[1][2:] == [h, w]]
        y, ys = draw(st.sampled_from(same))
        if kind == "add":
            b.add("Add", [x, y], [n, c, h, w])
        else:
            b.add("Concat", [x, y], [n, c + ys[1], h, w], axis=1)


def _seq_layer(draw, b: _Builder) -> None:
    """One layer on a 2-D [M, K] or 3-D [B, S, D] activation."""
    seqs = [a for a in b.acts if len(a[1]) in (2, 3)]
    x, shape = draw(st.sampled_from(seqs))
    kind = draw(st.sampled_from(["matmul", "matmul", "gemm", "act", "add", "attention",
                                 "softmax"]))
    if kind == "gemm" and len(shape) == 2:
        n = draw(st.integers(1, 400))
        trans_b = draw(st.booleans())
        wt = b.weight([n, shape[1]] if trans_b else [shape[1], n])
        inputs = [x, wt] + ([b.weight([n])] if draw(st.booleans()) else [])
        b.add("Gemm", inputs, [shape[0], n], transB=int(trans_b))
    elif kind in ("matmul", "gemm"):
        n = draw(st.integers(1, 400))
        b.add("MatMul", [x, b.weight([shape[-1], n])], [*shape[:-1], n])
    elif kind == "act":
        b.add(draw(st.sampled_from(["Relu", "Gelu", "Tanh", "Sigmoid"])), [x], shape)
    elif kind == "softmax":
        b.add("Softmax", [x], shape, axis=-1)
    elif kind == "add":
        y, _ = draw(st.sampled_from([a for a in seqs if a[1] == shape]))
        b.add("Add", [x, y], shape)
    elif kind == "attention" and len(shape) == 3:
        # scores = x @ y^T, then scores @ z: two activation operands (dynamic matmuls)
        same = [a for a in seqs if a[1] == shape]
        y, _ = draw(st.sampled_from(same))
        z, _ = draw(st.sampled_from(same))
        bsz, s, _d = shape
        yt, _ = b.add("Transpose", [y], [bsz, shape[2], s], perm=[0, 2, 1])
        scores, _ = b.add("MatMul", [x, yt], [bsz, s, s])
        b.add("MatMul", [scores, z], shape)


def _flatten(b: _Builder) -> None:
    """GlobalAveragePool + Flatten: the last image activation becomes [N, C]."""
    x, (n, c, _h, _w) = next(a for a in reversed(b.acts) if len(a[1]) == 4)
    pooled, _ = b.add("GlobalAveragePool", [x], [n, c, 1, 1])
    b.add("Flatten", [pooled], [n, c], axis=1)


@st.composite
def random_models(draw, max_layers: int = 8) -> onnx.ModelProto:
    """A random ONNX model (opset 20): a CNN (NCHW input, convs / relu / pools /
    residual adds / concats, optionally flattened into fully-connected layers) or a
    sequence model (matmuls, Gemm, activations, residual adds, attention)."""
    b = _Builder()
    if draw(st.booleans()):
        shape = [1, draw(st.integers(1, 8)), draw(st.integers(4, 12)), draw(st.integers(4, 12))]
        b.acts.append(("x", shape))
        for _ in range(draw(st.integers(1, max_layers))):
            _image_layer(draw, b)
        if draw(st.booleans()):
            _flatten(b)
            for _ in range(draw(st.integers(0, 2))):
                _seq_layer(draw, b)
    else:
        shape = draw(st.sampled_from([
            [draw(st.integers(1, 16)), draw(st.integers(4, 300))],
            [1, draw(st.integers(1, 16)), draw(st.integers(4, 96))],
        ]))
        b.acts.append(("x", shape))
        for _ in range(draw(st.integers(1, max_layers))):
            _seq_layer(draw, b)
    if not b.nodes:  # every draw above was a no-op (e.g. a pool on a 1x1 image)
        b.add("Relu", ["x"], b.acts[0][1])
    outputs = [helper.make_tensor_value_info(a, TensorProto.FLOAT, s)
               for a, s in b.acts[1:] if a not in b.used]
    graph = helper.make_graph(b.nodes, "fuzz",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, b.acts[0][1])],
                              outputs, b.inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


@st.composite
def random_arches(draw, min_arrays: int = 2, min_rows: int = 16) -> dict:
    """A random valid hardware description (every field of cmswitch.arch.Arch), with
    at least ``min_arrays`` arrays of at least ``min_rows`` rows."""
    side = st.sampled_from([16, 32, 64, 128, 256, 320])
    return {
        "name": "fuzz",
        "arrays": draw(st.integers(min_arrays, max(min_arrays, 128))),
        "rows": draw(side.filter(lambda r: r >= min_rows)),
        "cols": draw(side),
        "cell_bits": draw(st.sampled_from([1, 2, 4])),
        "weight_bits": draw(st.sampled_from([4, 8])),
        "act_bits": draw(st.sampled_from([4, 8, 16])),
        "mvm_cycles": draw(st.integers(1, 16)),
        "internal_bw_bits": draw(st.sampled_from([8, 32, 64, 256])),
        "external_bw_bytes": draw(st.sampled_from([1, 4, 32, 128])),
        "global_buffer_bytes": draw(st.sampled_from([256, 4096, 81920, 1 << 20])),
        "global_buffer_bw_bytes": draw(st.sampled_from([1, 8, 32, 256])),
        "switch_cycles": draw(st.sampled_from([0, 1, 10, 500])),
        "weight_write_bw_bytes": draw(st.sampled_from([1, 4, 32, 128])),
        "vector_ops_per_cycle": draw(st.sampled_from([1, 16, 64, 1024])),
        "clock_mhz": 200,
        "stream_fusion": draw(st.sampled_from([0, 1])),
    }


# --------------------------------------------------------------------------- checker

_STATEMENT = re.compile(r"^\s*(CIM\.mvm|CIM\.write_operand|CIM\.load_weight|VEC\.\w+|MEM\.\w+)\s+(\S+)")
_READS = re.compile(r"\bin=(\S+)")
_MEM = re.compile(r"^\s*MEM\.\w+\s+([^@\s]+)@")
_WRITES = re.compile(r"\bout=(\S+)")


def _tensors(field_text: str) -> list[str]:
    """Tensor names of ``T@LOC[,T@LOC...]``."""
    return [ref.split("@")[0] for ref in field_text.split(",")]


def flow_problems(plan, sim_report: dict) -> list[str]:
    """Invariants the compiled flow breaks, read from the flow text itself (not from
    the compiler's data structures): each operator of the plan is executed by exactly
    one `CIM.mvm` or `VEC.*` statement and no other operator is; each operator sits in
    exactly one segment; each tensor read (``in=``, a `MEM.*` source) was an input or
    written before; no segment plans more arrays (compute + memory) than the chip has;
    the simulator ran the flow (`sim_report`) and accounted for every segment.  (The
    simulator's per-segment columns count an array switched within the segment in both
    modes, so they are not compared with the chip size.)"""
    problems: list[str] = []
    names = [o["name"] for o in plan.operators]
    executed: dict[str, int] = {}
    written = set()
    for line in plan.flow.splitlines():
        if line.startswith(".tensor") and " input" in line:
            written.add(line.split()[1])
        match = _STATEMENT.match(line)
        if not match:
            continue
        kind, op = match.groups()
        if kind == "CIM.mvm" or kind.startswith("VEC."):
            executed[op] = executed.get(op, 0) + 1
        reads = [t for r in _READS.findall(line) for t in _tensors(r)]
        mem = _MEM.match(line)
        reads += [mem.group(1)] if mem else []
        for tensor in reads:
            if tensor not in written:
                problems.append(f"'{tensor}' read before it is written: {line.strip()}")
        written.update(t for w in _WRITES.findall(line) for t in _tensors(w))
        if mem:
            written.add(mem.group(1))
    for name in names:
        if executed.get(name, 0) != 1:
            problems.append(f"operator '{name}' executed {executed.get(name, 0)} times")
    problems += [f"flow executes '{op}', which is not an operator of the plan"
                 for op in sorted(set(executed) - set(names))]
    in_segments = sorted(op for s in plan.segments for op in s["operators"])
    if in_segments != sorted(names):
        problems.append("segments do not partition the operators")
    arrays = plan.arch.arrays
    for seg in plan.segments:
        if seg["compute_arrays"] + seg["memory_arrays"] > arrays:
            problems.append(f"segment {seg['id']} plans {seg['compute_arrays']} + "
                            f"{seg['memory_arrays']} arrays on a {arrays}-array chip")
    if len(sim_report["segments"]) != len(plan.segments):
        problems.append(f"simulator ran {len(sim_report['segments'])} segments, "
                        f"the plan has {len(plan.segments)}")
    return problems
