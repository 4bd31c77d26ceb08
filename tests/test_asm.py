"""Tests of the `.cmsasm` parser (cmswitch/asm/parser.py): IR -> text -> IR is lossless.

Compiled flows (three bundled models) must survive print(parse(text)) byte for byte and
parse back to a module equal to the one `cim-to-metaop` built.  Hand-written flows pin
the grammar's optional parts, and malformed ones give one-line ``FILE:LINE:`` errors.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from xdsl.dialects.builtin import ModuleOp
from xdsl.printer import Printer

from cmswitch import api
from cmswitch.asm.parser import parse_flow
from cmswitch.asm.printer import print_flow
from cmswitch.dialects import metaop
from cmswitch.errors import CMSwitchError
from cmswitch.tools.opt import main as opt_main

MODELS = Path(__file__).resolve().parent.parent / "models"

ARCH = (".arch dynaplasia arrays=96 rows=320 cols=320 cell_bits=1 weight_bits=8 act_bits=8 "
        "mvm_cycles=8 internal_bw_bits=32 external_bw_bytes=32 global_buffer_bytes=81920 "
        "global_buffer_bw_bytes=32 switch_cycles=1 weight_write_bw_bytes=32 "
        "vector_ops_per_cycle=64 clock_mhz=200 stream_fusion=0 mvm_pj=457.1 array_access_pj_per_bit=0.16 "
        "buffer_pj_per_bit=0.31 dram_pj_per_bit=10 weight_write_pj_per_bit=0.16 switch_pj=10 "
        "vector_op_pj=0.5 array_static_mw=0.1")
HEADER = "; CMSwitch meta-operator flow (grammar: docs/cmsasm.md)\n" + ARCH + "\n"


def printed(module: ModuleOp) -> str:
    out = io.StringIO()
    print_flow(module, out)
    return out.getvalue()


def generic(module: ModuleOp) -> str:
    """The generic MLIR form (every attribute and property spelled out)."""
    out = io.StringIO()
    Printer(stream=out, print_generic_format=True).print_op(module)
    return out.getvalue()


# ----------------------------------------------------------------------------------
# compiled flows


@pytest.fixture(scope="module", params=["resnet18", "mobilenet_v2", "bert_base"])
def compiled(request) -> tuple[ModuleOp, str]:
    """(metaop module, flow text) of a bundled model: the plan keeps the allocated
    `cim` module, which `cim-to-metaop` lowers to the module the flow was printed from."""
    from xdsl.context import Context

    from cmswitch.transforms.cim_to_metaop import CimToMetaopPass

    plan = api.compile(MODELS / f"{request.param}.onnx", keep_module=True)
    module = plan.module
    CimToMetaopPass().apply(Context(), module)
    assert any(isinstance(op, metaop.SegmentOp) for op in module.ops)
    return module, plan.flow


def test_compiled_flow_prints_back_byte_for_byte(compiled):
    _, text = compiled
    assert printed(parse_flow(text)) == text


def test_compiled_flow_parses_to_the_lowered_module(compiled):
    module, text = compiled
    parsed = parse_flow(text)
    parsed.verify()
    assert generic(parsed) == generic(module)
    assert parsed.is_structurally_equivalent(module)


def test_compiled_flow_keeps_every_statement(compiled):
    # Independent count: the text's statement lines (inside segments, not structure).
    module, text = compiled
    lines = [ln.strip() for ln in text.splitlines()]
    statements = sum(1 for ln in lines if ln.split(" ", 1)[0] in (
        "CM.switch", "CIM.load_weight", "CIM.write_operand", "CIM.mvm",
        "MEM.load", "MEM.store", "MEM.move") or ln.startswith("VEC."))
    parsed = parse_flow(text)
    leaves = [op for op in parsed.walk()
              if not isinstance(op, (ModuleOp, metaop.SegmentOp, metaop.ParallelOp))]
    assert len(leaves) == statements
    assert len(list(parsed.ops)) == sum(1 for ln in lines if ln.startswith(".segment "))


# ----------------------------------------------------------------------------------
# hand-written flows

SMALL = f"""{ARCH}
; a comment line, then a blank one

.model tiny   ; trailing comment
.tensor x bytes=4096 input
.tensor w_t bytes=2048
.tensor y bytes=1024 output
.tensor z bytes=512
.segment 7 predicted=123 ops=mm,act
  CM.switch TOM a[8:16]
  CIM.write_operand mm tiles=1x2 bytes=2048 copies=2 in=w_t@gb -> a[0:4]
  parallel {{
    MEM.load x@dram -> a[8:16] window=512 bytes=4096
    CIM.mvm mm a[0:4] out=y@gb n=8 k=64 vectors=64 in=x@a[8:16]
    VEC.relu act out=y@gb ops=1024
    MEM.store y@gb -> dram bytes=1024
  }}
.end
"""

SMALL_CANONICAL = HEADER + """.model tiny
.tensor x bytes=4096 input
.tensor w_t bytes=2048
.tensor y bytes=1024 output
.tensor z bytes=512
.segment 7 ops=mm,act predicted=123
  CM.switch TOM a[8:16]
  CIM.write_operand mm in=w_t@gb tiles=1x2 copies=2 bytes=2048 instances=1 -> a[0:4]
  parallel {
    MEM.load x@dram -> a[8:16] bytes=4096 window=512
    CIM.mvm mm a[0:4] vectors=64 k=64 n=8 in=x@a[8:16] out=y@gb
    VEC.relu act ops=1024 out=y@gb
    MEM.store y@gb -> dram bytes=1024
  }
.end
"""


def test_hand_written_flow_fields():
    module = parse_flow(SMALL)
    attrs = module.attributes
    assert attrs["cim.model"].data == "tiny"
    assert attrs["cim.arch"].data == "dynaplasia"
    assert {k: v.value.data for k, v in attrs["metaop.tensors"].data.items()} == {
        "x": 4096, "w_t": 2048, "y": 1024, "z": 512}
    assert [a.data for a in attrs["metaop.inputs"]] == ["x"]
    assert [a.data for a in attrs["metaop.outputs"]] == ["y"]
    (seg,) = module.ops
    assert (seg.id.value.data, seg.ops.data, seg.predicted.value.data) == (7, "mm,act", 123)
    switch, write, block = seg.body.block.ops
    assert (switch.mode.data, switch.arrays.get_values()) == (metaop.SwitchMode.TOM, (8, 16))
    assert str(write.input) == "w_t@gb" and write.input.loc == metaop.LocationAttr.of("gb")
    assert write.tiles.get_values() == (1, 2)
    assert write.instances.value.data == 1          # default when instances= is absent
    load, mvm, vec, store = block.body.block.ops
    assert (load.tensor.data, str(load.source), load.dest.range) == ("x", "dram", (8, 16))
    assert (load.bytes.value.data, load.window.value.data) == (4096, 512)
    assert (mvm.vectors.value.data, mvm.k.value.data, mvm.n.value.data) == (64, 64, 8)
    assert str(mvm.output) == "y@gb" and mvm.window is None
    assert (vec.kind.data, vec.label.data, vec.inputs) == ("relu", "act", None)
    assert isinstance(store, metaop.MemStoreOp) and store.dest == metaop.LocationAttr.of("dram")


def test_hand_written_flow_prints_in_canonical_form():
    assert printed(parse_flow(SMALL)) == SMALL_CANONICAL
    assert printed(parse_flow(SMALL_CANONICAL)) == SMALL_CANONICAL


def test_segment_fields_are_optional_and_model_line_too():
    text = ARCH + "\n.tensor t bytes=8 input\n.segment 0\n  VEC.copy c ops=0 out=t@dram\n.end\n"
    module = parse_flow(text)
    (seg,) = module.ops
    assert (seg.ops.data, seg.predicted.value.data) == ("", 0)
    assert "cim.model" not in module.attributes


def test_module_built_by_hand_round_trips():
    """A module made directly from dialect ops (not by the compiler): print -> parse."""
    from xdsl.dialects.builtin import ArrayAttr, DictionaryAttr, IntegerAttr, StringAttr, i64

    seg0 = metaop.SegmentOp(0, "w,q", 99, [
        metaop.SwitchOp("TOM", 90, 96),
        metaop.LoadWeightOp("w", 0, 12, [2, 3], 2, 70000),
        metaop.ParallelOp([
            metaop.MemLoadOp("in:1", "dram", "gb", 300, window=64),
            metaop.MvmOp("w", 0, 12, 5, 600, 90, "in:1@gb", "mid@a[90:96]", window=128),
            metaop.WriteOperandOp("q", 12, 14, "mid@a[90:96]", [1, 1], 2, 450, instances=6),
            metaop.MvmOp("q", 12, 14, 6, 30, 15, "mid@a[90:96]", "out/0@gb"),
            metaop.MemMoveOp("out/0", "gb", "a[90:96]", 90),
            metaop.VecOp("softmax", "sm", 7, ["out/0@a[90:96]"], ["out/0@dram"]),
        ]),
    ])
    seg1 = metaop.SegmentOp(1, "gen", 0, [
        metaop.SwitchOp("TOC", 90, 96),
        metaop.VecOp("fill", "gen", 0, None, ["in:1@dram"], window=16),
    ])
    module = ModuleOp([seg0, seg1], attributes={
        "cim.model": StringAttr("m"), "cim.arch": StringAttr("prime"),
        "metaop.tensors": DictionaryAttr({n: IntegerAttr(b, i64) for n, b in
                                          [("in:1", 300), ("mid", 450), ("out/0", 90)]}),
        "metaop.inputs": ArrayAttr([StringAttr("in:1")]),
        "metaop.outputs": ArrayAttr([StringAttr("out/0")]),
    })
    module.verify()
    text = printed(module)
    parsed = parse_flow(text)
    assert generic(parsed) == generic(module)
    assert printed(parsed) == text


def test_custom_hardware_needs_its_description_file(tmp_path):
    line = ARCH.replace("dynaplasia arrays=96", "mine arrays=10").replace("=200", "=150.5")
    fields = dict(kv.split("=") for kv in line.split()[2:])
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({"name": "mine", **{k: float(v) if "." in v else int(v)
                                                       for k, v in fields.items()}}))
    text = line + "\n.tensor t bytes=8 input\n.segment 0\n  CM.switch TOM a[0:10]\n.end\n"
    with pytest.raises(CMSwitchError, match=r"^f\.cmsasm:1: hardware 'mine' is not a preset"):
        parse_flow(text, "f.cmsasm")
    module = parse_flow(text, "f.cmsasm", arch=str(path))
    assert module.attributes["cim.arch"].data == str(path)
    assert printed(module).splitlines()[1] == line
    with pytest.raises(CMSwitchError, match=r"^f\.cmsasm:1: hardware 'prime' differs .* 'name'"):
        parse_flow(text, "f.cmsasm", arch="prime")


def test_bytes_input_and_bad_utf8():
    assert printed(parse_flow(SMALL_CANONICAL.encode())) == SMALL_CANONICAL
    with pytest.raises(CMSwitchError, match=r"^f\.cmsasm: not UTF-8 text"):
        parse_flow(b"\xff\xfe .arch", "f.cmsasm")


# hypothesis: any valid MVM statement survives print -> parse
_names = st.from_regex(r"[A-Za-z0-9_.:/-]{1,12}", fullmatch=True)  # docs/cmsasm.md
_pos = st.integers(min_value=1, max_value=2**40)


@settings(max_examples=60, deadline=None)
@given(op=_names, tensor=_names, lo=st.integers(0, 500), width=st.integers(1, 500),
       vectors=_pos, k=_pos, n=_pos, window=st.none() | _pos)
def test_any_mvm_round_trips(op, tensor, lo, width, vectors, k, n, window):
    from xdsl.dialects.builtin import ArrayAttr, DictionaryAttr, IntegerAttr, StringAttr, i64

    mvm = metaop.MvmOp(op, lo, lo + width, vectors, k, n, f"{tensor}@dram",
                       f"{tensor}@a[{lo}:{lo + width}]", window)
    module = ModuleOp([metaop.SegmentOp(0, op, 0, [metaop.ParallelOp([mvm])])], attributes={
        "cim.arch": StringAttr("dynaplasia"),
        "metaop.tensors": DictionaryAttr({tensor: IntegerAttr(1, i64)}),
        "metaop.inputs": ArrayAttr([]), "metaop.outputs": ArrayAttr([]),
    })
    text = printed(module)
    module.attributes["cim.model"] = StringAttr("model")   # the printer's default name
    parsed = parse_flow(text)
    assert parsed.is_structurally_equivalent(module)
    assert printed(parsed) == text


# ----------------------------------------------------------------------------------
# malformed flows: one line, FILE:LINE:, the right line

BODY_TENSORS = ".tensor x bytes=64 input\n.tensor y bytes=64 output\n"


def segment(body: str) -> str:
    """A flow whose segment body starts on line 5 (.arch 1, tensors 2-3, .segment 4)."""
    return f"{ARCH}\n{BODY_TENSORS}.segment 0 ops=op predicted=0\n{body}\n.end\n"


BAD = [
    ("unknown statement", segment("  CIM.frobnicate w -> a[0:1]"), 5,
     "unknown statement CIM.frobnicate"),
    ("reversed range", segment("  CM.switch TOM a[8:4]"), 5, "bad array range 'a[8:4]'"),
    ("range without colon", segment("  CM.switch TOM a[8]"), 5, "bad array range 'a[8]'"),
    ("bad location", segment("  MEM.load x@dram -> a[3:3] bytes=1"), 5, "bad array range"),
    ("unclosed parallel", segment("  parallel {\n    MEM.load x@dram -> gb bytes=64\n"), 8,
     "`.end` inside the `parallel` block opened at line 5"),
    ("unclosed parallel at eof", f"{ARCH}\n.segment 0\n  parallel {{\n", 3,
     "`parallel {` is never closed"),
    ("parallel outside segment", f"{ARCH}\n{BODY_TENSORS}  parallel {{\n", 4,
     "outside a segment"),
    ("nested parallel", segment("  parallel {\n  parallel {\n  }"), 6, "nested `parallel {`"),
    ("close without open", segment("  }"), 5, "`}` without `parallel {`"),
    ("missing .arch", BODY_TENSORS + ".segment 0\n.end\n", 3, "before the `.arch` header"),
    ("missing .arch, no segment", ".model m\n.tensor x bytes=1\n", 1, "missing `.arch` header"),
    ("empty file", "", 1, "missing `.arch` header"),
    ("segment without end", f"{ARCH}\n.segment 0\n  CM.switch TOM a[0:1]\n", 2,
     "`.segment` has no `.end`"),
    ("statement outside segment", f"{ARCH}\nCM.switch TOM a[0:1]\n", 2, "outside a segment"),
    ("undeclared tensor", segment("  MEM.load q@dram -> gb bytes=64"), 5,
     "tensor 'q' has no `.tensor` line"),
    ("unknown field", segment("  MEM.load x@dram -> gb bytes=64 speed=3"), 5,
     "unknown field speed="),
    ("missing field", segment("  CIM.mvm w a[0:1] vectors=1 k=1 in=x@gb out=y@gb"), 5,
     "missing field n="),
    ("field twice", segment("  MEM.load x@dram -> gb bytes=64 bytes=64"), 5, "bytes= given twice"),
    ("not an integer", segment("  MEM.load x@dram -> gb bytes=6.4"), 5,
     "bytes: expected a non-negative"),
    ("bad mode", segment("  CM.switch TOX a[0:1]"), 5, "TOM or TOC"),
    ("load from gb (verifier)", segment("  MEM.load x@gb -> a[0:1] bytes=64"), 5,
     "reads from dram, not 'gb'"),
    ("tiles do not fill arrays (verifier)",
     segment("  CIM.load_weight w tiles=1x2 copies=2 bytes=9 -> a[0:3]"), 5,
     "3 arrays cannot hold 2 copies of 1x2 tiles"),
    ("switch in parallel", segment("  parallel {\n    CM.switch TOM a[0:1]\n  }"), 6,
     "cannot appear inside a parallel block"),
    ("arch field differs", ARCH.replace("arrays=96", "arrays=95") + "\n", 1,
     "differs from preset 'dynaplasia' in field 'arrays'"),
    ("arch field missing", ARCH.replace(" clock_mhz=200", "") + "\n", 1, "field 'clock_mhz'"),
    ("arch unknown field", ARCH + " speed=3\n", 1, "field 'speed'"),
    ("segment id", f"{ARCH}\n.segment first\n.end\n", 2, ".segment ID: expected a non-negative"),
    ("second arch", ARCH + "\n" + ARCH + "\n", 2, "second `.arch` header"),
    ("tensor twice", f"{ARCH}\n.tensor x bytes=1\n.tensor x bytes=2\n", 3, "declared twice"),
    ("bad tensor flag", f"{ARCH}\n.tensor x bytes=1 inptu\n", 2, "unexpected `inptu`"),
    ("unknown directive", f"{ARCH}\n.modle m\n", 2, "unknown directive .modle"),
    ("header in segment", segment(".tensor z bytes=1"), 5, ".tensor inside the segment"),
    ("end in parallel", segment("  parallel {\n.end"), 6, "`.end` inside the `parallel` block"),
    ("bad name", segment("  VEC.relu r,s ops=1 out=y@gb"), 5, "bad operator name 'r,s'"),
]


@pytest.mark.parametrize("text,line,words", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_malformed_flow_is_one_line_error(text, line, words):
    with pytest.raises(CMSwitchError) as info:
        parse_flow(text, "bad.cmsasm")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"bad.cmsasm:{line}: "), message
    assert words in message, message


# ----------------------------------------------------------------------------------
# cmswitch-opt reads .cmsasm


def test_opt_reemits_a_flow(tmp_path):
    src = tmp_path / "small.cmsasm"
    src.write_text(SMALL)
    out = tmp_path / "out.cmsasm"
    assert opt_main([str(src), "--emit=asm", "-o", str(out)]) == 0
    assert out.read_text() == SMALL_CANONICAL


def test_opt_rejects_a_bad_flow_with_one_line(tmp_path, capsys):
    src = tmp_path / "bad.cmsasm"
    src.write_text(segment("  CM.switch TOM a[4:2]"))
    assert opt_main([str(src), "--emit=asm"]) == 1
    err = capsys.readouterr().err
    assert err == f"error: {src}:5: bad array range 'a[4:2]' (need LO < HI)\n"


def test_bench_counts_statement_lines_of_segments():
    from cmswitch.bench.sim_speed import count_statements

    # SMALL: 8 lines inside its one segment (switch, write_operand, `parallel {`, load,
    # mvm, relu, store, `}`); comments, blank lines and header lines do not count.
    assert count_statements(SMALL) == (8, 1, 2)


def test_an_mvm_has_one_output_as_the_simulator_reads_it():
    """The parser took ``out=y@gb,z@gb`` on an mvm, which the simulator refuses; the
    dialect's `TensorRefAttr` output is one reference (issue 18)."""
    from cmswitch.sim.simulator import simulate

    text = (HEADER + ".tensor x bytes=4096 input\n.tensor y bytes=512 output\n"
            ".tensor z bytes=512\n.segment 0\n"
            "  CIM.load_weight mm tiles=1x1 copies=1 bytes=512 -> a[0:1]\n"
            "  MEM.load x@dram -> gb bytes=4096\n"
            "  CIM.mvm mm a[0:1] vectors=64 k=64 n=8 in=x@gb out=y@gb,z@gb\n"
            "  MEM.store y@gb -> dram bytes=512\n.end\n")
    with pytest.raises(CMSwitchError, match=":9: bad tensor name"):
        parse_flow(text)
    with pytest.raises(CMSwitchError, match=":9: bad location"):
        simulate(text)
    assert simulate(text.replace("out=y@gb,z@gb", "out=y@gb"))["cycles"] > 0
    assert printed(parse_flow(text.replace("out=y@gb,z@gb", "out=y@gb"))).count("out=y@gb\n") == 1
