"""Tests of the independent simulator (cmswitch/sim) and the cmswitch-sim CLI.

Every flow here is written by hand; expected cycle counts are worked out in comments
from the hardware line below (docs/cmsasm.md, "Simulator semantics"):
  array port a[LO:HI] = (HI-LO) * 32/8 = 4*(HI-LO) B/cycle; gb = 32 B/cycle;
  dram = 32 B/cycle; weight write = 32 B/cycle; digital unit 64 ops/cycle;
  one array stores 320*320*1/8 = 12800 bytes; mvm_cycles = 8; act_bits = 8.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cmswitch.errors import CMSwitchError
from cmswitch.sim.flow import Loc, Statement, parse_flow
from cmswitch.sim.simulator import simulate
from cmswitch.tools.sim import main

ARCH = (".arch dynaplasia arrays=96 rows=320 cols=320 cell_bits=1 weight_bits=8 act_bits=8 "
        "mvm_cycles=8 internal_bw_bits=32 external_bw_bytes=32 global_buffer_bytes=81920 "
        "global_buffer_bw_bytes=32 switch_cycles=1 weight_write_bw_bytes=32 "
        "vector_ops_per_cycle=64 clock_mhz=200")


def one_segment(body: str, tensors: str = "") -> str:
    """A flow: the default hardware, the given .tensor lines, one segment around body."""
    return f"{ARCH}\n.model t\n{tensors}\n.segment 0 ops=op predicted=0\n{body}\n.end\n"


def line_of(text: str, needle: str) -> int:
    """1-based number of the only line containing needle."""
    hits = [n for n, line in enumerate(text.splitlines(), start=1) if needle in line]
    assert len(hits) == 1, (needle, hits)
    return hits[0]


def rejected(text: str, line: int, *words: str, **kwargs) -> str:
    """Assert the flow is rejected at `line` with a message containing `words`."""
    with pytest.raises(CMSwitchError) as info:
        simulate(text, **kwargs)
    message = str(info.value)
    assert f"line {line}:" in message or f":{line}:" in message, message
    for word in words:
        assert word in message, message
    return message


# ----------------------------------------------------------------------------------
# timing of single statements


def test_load_weight_is_bytes_over_the_slower_port():
    # 12800 bytes, one copy: max(12800/32 dram, 1*12800/32 write) = 400 cycles
    report = simulate(one_segment("  CIM.load_weight w tiles=1x1 copies=1 bytes=12800 -> a[0:1]"))
    assert report["cycles"] == 400
    assert report["breakdown"] == {"compute": 0, "data": 0, "weight_load": 400, "switch": 0}


def test_load_weight_copies_are_programmed_each_but_read_once():
    body = "  CIM.load_weight w tiles=1x2 copies=3 bytes=6400 -> a[0:6]"
    # dram reads 6400 once = 200; programming 3*6400 = 19200 / 32 = 600 -> 600 cycles
    assert simulate(one_segment(body))["cycles"] == 600
    # with a 96 B/cycle write port: max(200, 19200/96 = 200) = 200 cycles
    fast = simulate(one_segment(body), arch_override={"weight_write_bw_bytes": 96})
    assert fast["cycles"] == 200


def test_switch_costs_switch_cycles_per_statement():
    # 1 cycle however many arrays; the override makes it 7
    body = "  CM.switch TOM a[0:96]\n  CM.switch TOC a[0:10]"
    report = simulate(one_segment(body))
    assert report["cycles"] == 2
    assert report["breakdown"]["switch"] == 2
    assert report["switch_share"] == 1.0
    assert simulate(one_segment(body), arch_override={"switch_cycles": 7})["cycles"] == 14


MVM_TENSORS = ".tensor x bytes=3200 input\n.tensor y bytes=1600 output"
MVM_BODY = """\
  CM.switch TOM a[40:48]
  CIM.load_weight fc tiles=1x1 copies=2 bytes=6400 -> a[0:2]
  MEM.load x@dram -> a[40:48] bytes=3200
  CIM.mvm fc a[0:2] vectors=100 k=32 n=16 in=x@a[40:48] out=y@gb
  MEM.store y@gb -> dram bytes=1600"""


def test_single_mvm_timing_and_breakdown():
    # switch 1; load_weight max(6400/32, 2*6400/32) = 400;
    # MEM.load 3200 B / min(dram 32, a[40:48] 32) = 100;
    # mvm: ceil(100/2 copies) * 8 = 400 cycles of compute; its input 100*32 = 3200 B at
    #   32 B/cycle = 100 and output 100*16 = 1600 B at gb 32 B/cycle = 50, so 400
    #   (a lone statement has no chunking fill);
    # MEM.store 1600 / 32 = 50.  Total 1 + 400 + 100 + 400 + 50 = 951.
    report = simulate(one_segment(MVM_BODY, MVM_TENSORS))
    assert report["cycles"] == 951
    assert report["breakdown"] == {"compute": 400, "data": 150, "weight_load": 400, "switch": 1}
    assert report["seconds"] == pytest.approx(951 / 200e6)
    assert report["switch_share"] == pytest.approx(1 / 951)
    # array-cycles: 100 vectors * 8 cycles * 1x1 tiles = 800, over 96 arrays * 951 cycles
    assert report["utilization"]["overall"] == pytest.approx(800 / (96 * 951))
    segment = report["segments"][0]
    assert segment["compute_arrays"] == 2
    assert segment["memory_arrays"] == 8
    assert segment["cycles"] == 951


def test_mvm_fed_by_a_narrow_port_is_data_bound():
    # input from a[40:41]: 4 B/cycle, 3200 B -> 800 cycles > 400 of compute
    body = MVM_BODY.replace("a[40:48]", "a[40:41]")
    report = simulate(one_segment(body, MVM_TENSORS))
    assert report["cycles"] == 1 + 400 + 800 + 800 + 50  # the load is port-bound too
    assert report["breakdown"]["data"] == 800 + 800 + 50
    assert report["breakdown"]["compute"] == 0


def test_vec_is_bound_by_the_digital_unit_or_its_ports():
    tensors = ".tensor a bytes=640 input\n.tensor b bytes=640 output"
    # 64000 ops / 64 per cycle = 1000 > 640 B / 32 B/cycle = 20
    body = "  VEC.relu r ops=64000 in=a@dram out=b@dram"
    report = simulate(one_segment(body, tensors))
    assert report["cycles"] == 1000
    assert report["breakdown"]["compute"] == 1000
    # 64 ops: 1 cycle; dram carries 640 in + 640 out = 1280 B / 32 = 40 cycles
    report = simulate(one_segment(body.replace("64000", "64"), tensors))
    assert report["cycles"] == 40
    assert report["breakdown"]["data"] == 40


# ----------------------------------------------------------------------------------
# parallel blocks


def test_streaming_pipeline_fill_and_drain():
    body = """\
  CM.switch TOM a[40:48]
  CIM.load_weight fc tiles=1x1 copies=2 bytes=6400 -> a[0:2]
  parallel {
    MEM.load x@dram -> a[40:48] bytes=3200
    CIM.mvm fc a[0:2] vectors=100 k=32 n=16 in=x@a[40:48] out=y@gb
    MEM.store y@gb -> dram bytes=1600
  }"""
    # Each statement has 64 chunks.  t=0: only the load runs (100 cycles alone), its
    # first chunk ends at 100/64 = 1.5625.  Then the mvm runs at its own pace
    # (400 cycles, taking 8 B/cycle of the a[40:48] port; the load gets 24 B/cycle and
    # stays ahead, 133 cycles in all), so the mvm ends at 401.5625.  The store follows
    # one chunk behind; its last chunk (25 B) starts at 401.5625 and, alone, takes
    # 25/32 = 0.78125 -> 402.34 -> 403 cycles for the block.
    report = simulate(one_segment(body, MVM_TENSORS))
    assert report["cycles"] == 1 + 400 + 403
    assert report["breakdown"] == {"compute": 403, "data": 0, "weight_load": 400, "switch": 1}


def test_two_stage_mvm_chain_lags_by_one_chunk():
    tensors = ".tensor x bytes=3200 input\n.tensor h bytes=1600\n.tensor y bytes=1600 output"
    body = """\
  CM.switch TOM a[40:56]
  CIM.load_weight f1 tiles=1x1 copies=1 bytes=512 -> a[0:1]
  CIM.load_weight f2 tiles=1x1 copies=1 bytes=256 -> a[1:2]
  MEM.load x@dram -> a[40:48] bytes=3200
  parallel {
    CIM.mvm f1 a[0:1] vectors=100 k=32 n=16 in=x@a[40:48] out=h@a[48:56]
    CIM.mvm f2 a[1:2] vectors=100 k=16 n=16 in=h@a[48:56] out=y@gb
  }
  MEM.store y@gb -> dram bytes=1600"""
    # sequential part: 1 + 512/32=16 + 256/32=8 + 3200/32=100 + 1600/32=50 = 175
    # block: each mvm is 100*8 = 800 cycles of compute, ports far from busy; f2's
    # chunk j waits for f1's chunk j (64 chunks of 12.5 cycles): 12.5 + 800 = 812.5 -> 813
    report = simulate(one_segment(body, tensors))
    assert report["cycles"] == 175 + 813


def test_independent_statements_share_dram():
    tensors = ".tensor a bytes=3200 input\n.tensor b bytes=3200 input"
    body = """\
  CM.switch TOM a[0:16]
  parallel {
    MEM.load a@dram -> a[0:8] bytes=3200
    MEM.load b@dram -> a[8:16] bytes=3200
  }"""
    # each alone: 100 cycles; together they split dram 16/16 B/cycle -> 200
    report = simulate(one_segment(body, tensors))
    assert report["cycles"] == 1 + 200
    assert report["breakdown"]["data"] == 200


def test_overlapping_ranges_share_the_arrays_they_have_in_common():
    tensors = ".tensor a bytes=3200 input\n.tensor b bytes=3200 input"
    body = """\
  CM.switch TOM a[0:12]
  parallel {
    MEM.load a@dram -> a[0:8] bytes=3200
    MEM.load b@dram -> a[4:12] bytes=3200
  }"""
    # dram at 64 B/cycle.  Alone each load takes max(3200/64, 3200/32) = 100.
    # Together: arrays 4..7 (16 B/cycle) carry half of each (1600 + 1600 B) -> 200.
    report = simulate(one_segment(body, tensors), arch_override={"external_bw_bytes": 64})
    assert report["cycles"] == 1 + 200
    apart = body.replace("a[4:12]", "a[8:16]").replace("a[0:12]", "a[0:16]")
    disjoint = one_segment(apart, tensors)
    assert simulate(disjoint, arch_override={"external_bw_bytes": 64})["cycles"] == 1 + 100


def test_weight_loading_overlaps_compute():
    tensors = ".tensor x bytes=3200 input\n.tensor y bytes=1600 output"
    body = """\
  CM.switch TOM a[40:48]
  CIM.load_weight fc tiles=1x1 copies=2 bytes=6400 -> a[0:2]
  MEM.load x@dram -> a[40:48] bytes=3200
  parallel {
    CIM.mvm fc a[0:2] vectors=100 k=32 n=16 in=x@a[40:48] out=y@gb
    CIM.load_weight next tiles=1x1 copies=1 bytes=9600 -> a[2:3]
  }
  MEM.store y@gb -> dram bytes=1600"""
    # block: mvm 400 cycles of compute; the load of `next` (9600/32 = 300) runs beside
    # it on idle arrays -> the block is 400 (not 700)
    report = simulate(one_segment(body, tensors))
    assert report["cycles"] == 1 + 400 + 100 + 400 + 50
    assert report["breakdown"]["compute"] == 400


# ----------------------------------------------------------------------------------
# a valid two-segment flow and its mutations

VALID = f"""\
{ARCH}
.model mut
.tensor x bytes=25600 input
.tensor h bytes=12800
.tensor q bytes=1600
.tensor y bytes=12800 output
.tensor z bytes=12800 output
.segment 0 ops=fc1,fc2 predicted=2000
  CM.switch TOM a[40:56]
  CIM.load_weight fc1 tiles=1x1 copies=2 bytes=512 -> a[0:2]
  CIM.load_weight fc2 tiles=1x1 copies=1 bytes=256 -> a[2:3]
  MEM.load x@dram -> a[40:48] bytes=25600
  parallel {{
    CIM.mvm fc1 a[0:2] vectors=800 k=32 n=16 in=x@a[40:48] out=h@a[48:56]
    CIM.mvm fc2 a[2:3] vectors=800 k=16 n=16 in=h@a[48:56] out=y@gb
  }}
  MEM.store y@gb -> dram bytes=12800
.end
.segment 1 ops=fc3 predicted=1000
  CM.switch TOM a[0:2]          ; the fc1 arrays become a buffer
  MEM.move h@a[48:56] -> a[0:2] bytes=12800
  CM.switch TOC a[40:56]
  CIM.load_weight fc3 tiles=1x1 copies=8 bytes=256 -> a[40:48]
  CIM.mvm fc3 a[40:48] vectors=800 k=16 n=16 in=h@a[0:2] out=z@gb
  MEM.store z@gb -> dram bytes=12800
.end
"""


def mutate(old: str, new: str) -> str:
    assert VALID.count(old) == 1, old
    return VALID.replace(old, new)


def test_valid_flow_runs():
    report = simulate(VALID)
    assert report["model"] == "mut" and report["arch"] == "dynaplasia"
    assert [seg["id"] for seg in report["segments"]] == [0, 1]
    assert [seg["predicted_cycles"] for seg in report["segments"]] == [2000, 1000]
    assert sum(seg["cycles"] for seg in report["segments"]) == report["cycles"]
    assert sum(report["breakdown"].values()) == report["cycles"]
    assert report["segments"][0]["compute_arrays"] == 3
    assert report["segments"][1]["compute_arrays"] == 8
    # data in a[48:56] (read by the move) and a[0:2]; a[40:56] and a[0:2] are in memory
    # mode at once before the TOC
    assert report["segments"][1]["memory_arrays"] == 10
    assert report["segments"][1]["memory_mode_peak"] == 18
    assert report["statements"] == 13  # 7 in segment 0, 6 in segment 1


def test_missing_toc_before_reloading_memory_arrays():
    text = mutate("  CM.switch TOC a[40:56]\n", "")
    rejected(text, line_of(text, "CIM.load_weight fc3"), "array 40 is in memory mode")


def test_mvm_on_memory_mode_arrays():
    text = mutate("  CM.switch TOC a[40:56]\n"
                  "  CIM.load_weight fc3 tiles=1x1 copies=8 bytes=256 -> a[40:48]\n", "")
    rejected(text, line_of(text, "CIM.mvm fc3"), "CIM.mvm fc3", "memory mode")


def test_mvm_on_arrays_holding_another_operator():
    text = mutate("CIM.mvm fc3 a[40:48]", "CIM.mvm fc3 a[2:3]")
    rejected(text, line_of(text, "CIM.mvm fc3"), "holds fc2, not fc3")


def test_mvm_on_part_of_a_copy():
    text = mutate("  CIM.load_weight fc3 tiles=1x1 copies=8 bytes=256 -> a[40:48]",
                  "  CIM.load_weight fc3 tiles=2x2 copies=2 bytes=256 -> a[40:48]")
    text = text.replace("CIM.mvm fc3 a[40:48]", "CIM.mvm fc3 a[40:46]")
    rejected(text, line_of(text, "CIM.mvm fc3"), "whole copies")


def test_read_of_a_tensor_never_written():
    text = mutate("in=h@a[0:2]", "in=q@a[0:2]")
    rejected(text, line_of(text, "CIM.mvm fc3"), "q@a[0:2]", "never written")


def test_read_of_a_non_input_from_dram():
    text = mutate("MEM.load x@dram", "MEM.load q@dram")
    rejected(text, line_of(text, "MEM.load q@dram"), "q@dram")


def test_memory_capacity_exceeded_in_arrays():
    # x (25600 B) in one array of 12800 B
    text = mutate("MEM.load x@dram -> a[40:48]", "MEM.load x@dram -> a[40:41]")
    rejected(text, line_of(text, "MEM.load x@dram"), "capacity", "array 40")


def test_memory_capacity_exceeded_in_global_buffer():
    # y (12800 B) written to gb by fc2 with a 10000-byte global buffer
    rejected(VALID, line_of(VALID, "CIM.mvm fc2"), "global buffer",
             arch_override={"global_buffer_bytes": 10000})


def test_window_makes_a_streamed_tensor_fit():
    # x (20000 B) cannot sit whole in a[40:41] (12800 B) but can stream through it
    tensors = ".tensor x bytes=20000 input\n.tensor y bytes=10000 output"
    body = """\
  CM.switch TOM a[40:41]
  CIM.load_weight fc tiles=1x1 copies=1 bytes=512 -> a[0:1]
  parallel {
    MEM.load x@dram -> a[40:41] bytes=20000
    CIM.mvm fc a[0:1] vectors=625 k=32 n=16 in=x@a[40:41] out=y@gb
  }
  MEM.store y@gb -> dram bytes=10000"""
    text = one_segment(body, tensors)
    rejected(text, line_of(text, "MEM.load x@dram"), "capacity", "array 40")
    simulate(text.replace("bytes=20000\n", "bytes=20000 window=4000\n"))
    # one 32-element input vector of the mvm is the least a window holds
    simulate(text.replace("bytes=20000\n", "bytes=20000 window=32\n"))
    rejected(text.replace("bytes=20000\n", "bytes=20000 window=31\n"),
             line_of(text, "CIM.mvm fc"), "less than one input vector (32 bytes)")


def test_streamed_tensor_is_gone_after_the_block():
    text = mutate("out=h@a[48:56]", "out=h@a[48:56] window=3200")
    rejected(text, line_of(text, "MEM.move h@a[48:56]"), "window=")


def test_toc_erases_data():
    # back and forth: the arrays are memory again, but h's copy did not survive
    text = mutate("  CIM.load_weight fc3",
                  "  CM.switch TOC a[0:2]\n  CM.switch TOM a[0:2]\n  CIM.load_weight fc3")
    rejected(text, line_of(text, "CIM.mvm fc3"), "erased by CM.switch TOC")


def test_two_operators_on_one_array_in_a_parallel_block():
    intruder = "    CIM.load_weight fc3 tiles=1x1 copies=1 bytes=256 -> a[2:3]\n"
    text = mutate("out=y@gb\n  }", "out=y@gb\n" + intruder + "  }")
    rejected(text, line_of(text, intruder.strip()), "array 2 is used by fc2", "fc3")


def test_load_weight_array_count_must_match_tiles_and_copies():
    text = mutate("copies=2 bytes=512 -> a[0:2]", "copies=2 bytes=512 -> a[0:3]")
    rejected(text, line_of(text, "CIM.load_weight fc1"), "need 2")


def test_consumer_before_producer_in_a_block():
    text = mutate(
        "    CIM.mvm fc1 a[0:2] vectors=800 k=32 n=16 in=x@a[40:48] out=h@a[48:56]\n"
        "    CIM.mvm fc2 a[2:3] vectors=800 k=16 n=16 in=h@a[48:56] out=y@gb\n",
        "    CIM.mvm fc2 a[2:3] vectors=800 k=16 n=16 in=h@a[48:56] out=y@gb\n"
        "    CIM.mvm fc1 a[0:2] vectors=800 k=32 n=16 in=x@a[40:48] out=h@a[48:56]\n")
    rejected(text, line_of(text, "CIM.mvm fc2"), "never written")


def test_output_must_reach_dram():
    text = mutate("  MEM.store z@gb -> dram bytes=12800\n", "")
    rejected(text, line_of(text, ".tensor z"), "output tensor z")


def test_data_in_compute_arrays():
    text = mutate("MEM.load x@dram -> a[40:48]", "MEM.load x@dram -> a[30:38]")
    rejected(text, line_of(text, "MEM.load x@dram"), "array 30 is in compute mode")


# ----------------------------------------------------------------------------------
# the parser


def test_parser_keeps_line_numbers_and_fields():
    records = parse_flow(VALID)
    statements = [r for r in records if isinstance(r, Statement)]
    mvm = next(r for r in statements if r.op == "fc1" and r.kind == "CIM.mvm")
    assert mvm.line == line_of(VALID, "CIM.mvm fc1")
    assert mvm.arrays == Loc("a", 0, 2) and mvm.vectors == 800 and mvm.in_block
    assert str(mvm.reads[0]) == "x@a[40:48]" and str(mvm.writes[0]) == "h@a[48:56]"


@pytest.mark.parametrize("old, new, words", [
    ("CIM.mvm fc3", "CIM.mvx fc3", "unknown meta-operator"),
    ("vectors=800 k=16 n=16 in=h@a[0:2]", "k=16 n=16 in=h@a[0:2]", "missing field vectors="),
    ("-> a[40:48]\n  CIM.mvm", "-> a[48:40]\n  CIM.mvm", "empty array range"),
    ("CM.switch TOM a[0:2]", "CM.switch TOX a[0:2]", "TOM or TOC"),
    ("bytes=256 -> a[40:48]", "bytes=256 bytes=3 -> a[40:48]", "given twice"),
])
def test_syntax_errors_name_file_and_line(old, new, words):
    text = mutate(old, new)
    line = line_of(text, new.splitlines()[0])
    with pytest.raises(CMSwitchError) as info:
        parse_flow(text)
    assert str(info.value).startswith(f"<flow>:{line}: ")
    assert words in str(info.value)


def test_a_vec_kind_and_an_integer_field_follow_the_grammar():
    """Found by the flow fuzzer: the kind after `VEC.` is a name like any other, and an
    integer `.arch` field is not written as a decimal (docs/cmsasm.md, lexical rules)."""
    body = "  VEC.re$lu r ops=64 in=a@dram out=b@dram"
    tensors = ".tensor a bytes=64 input\n.tensor b bytes=64 output"
    text = one_segment(body, tensors)
    with pytest.raises(CMSwitchError, match=rf"<flow>:{line_of(text, 're$lu')}: bad VEC kind"):
        parse_flow(text)
    text = one_segment(body.replace("re$lu", "relu"), tensors).replace("arrays=96", "arrays=96.0")
    rejected(text, 1, "'arrays'", "valid integer")


def test_structure_errors():
    with pytest.raises(CMSwitchError, match=r"<flow>:2: CM.switch outside a segment"):
        parse_flow(f"{ARCH}\nCM.switch TOM a[0:1]\n")
    with pytest.raises(CMSwitchError, match=r"<flow>:2: `.segment` has no `.end`"):
        parse_flow(f"{ARCH}\n.segment 0\n")
    with pytest.raises(CMSwitchError, match=r"nested `parallel"):
        parse_flow(f"{ARCH}\n.segment 0\nparallel {{\nparallel {{\n}}\n}}\n.end\n")


# ----------------------------------------------------------------------------------
# the CLI


@pytest.fixture
def flow_file(tmp_path):
    def write(text: str, name: str = "f.cmsasm"):
        path = tmp_path / name
        path.write_text(text)
        return str(path)
    return write


def test_cli_text_report(flow_file, capsys):
    assert main([flow_file(VALID)]) == 0
    out = capsys.readouterr().out
    assert "total:" in out and "cycles" in out and "weight_load" in out and "%" in out


def test_cli_json_report(flow_file, capsys):
    assert main([flow_file(VALID), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    for key in ("cycles", "seconds", "breakdown", "switch_share", "segments",
                "utilization", "statements", "model", "arch"):
        assert key in report
    assert set(report["breakdown"]) == {"compute", "data", "weight_load", "switch"}
    for key in ("id", "ops", "cycles", "predicted_cycles", "compute_arrays", "memory_arrays"):
        assert key in report["segments"][0]
    assert report["cycles"] == simulate(VALID)["cycles"]


def test_cli_bad_flow_is_one_line_exit_1(flow_file, capsys):
    text = mutate("copies=2 bytes=512 -> a[0:2]", "copies=2 bytes=512 -> a[0:3]")
    assert main([flow_file(text)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert f"line {line_of(text, 'CIM.load_weight fc1')}:" in err
    assert "Traceback" not in err


def test_cli_missing_file_exit_1(tmp_path, capsys):
    assert main([str(tmp_path / "nope.cmsasm")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


def test_cli_usage_error_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2


def test_cli_subprocess_has_no_traceback(flow_file):
    bad = flow_file(mutate("CIM.mvm fc3 a[40:48]", "CIM.mvm fc3 a[2:3]"))
    result = subprocess.run([sys.executable, "-m", "cmswitch.tools.sim", bad],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr


def test_cli_arch_file_replaces_the_header(flow_file, capsys):
    fields = dict(item.split("=") for item in ARCH.split()[2:])
    fields = {key: float(value) if "." in value else int(value) for key, value in fields.items()}
    fields.update(name="slow-switch", switch_cycles=5)
    arch = flow_file(json.dumps(fields), "slow.json")
    assert main([flow_file(VALID), "--arch", arch, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["arch"] == "slow-switch"
    assert report["breakdown"]["switch"] == 3 * 5  # VALID has three CM.switch
    assert report["cycles"] == simulate(VALID)["cycles"] + 3 * 4


def test_simulate_accepts_a_path(flow_file):
    from pathlib import Path

    assert simulate(Path(flow_file(VALID)))["cycles"] == simulate(VALID)["cycles"]


def test_simulator_is_independent_of_the_optimizer():
    import ast
    from pathlib import Path

    import cmswitch.sim

    for source in Path(cmswitch.sim.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            for name in names:
                assert not name.startswith(("cmswitch.cost", "cmswitch.solver",
                                            "cmswitch.transforms")), (source, name)


def test_transfer_larger_than_the_tensor_is_rejected():
    text = mutate("MEM.load x@dram -> a[40:48] bytes=25600", "MEM.load x@dram -> a[40:48] bytes=99999999")
    rejected(text, line_of(text, "MEM.load x@dram"), "declared 25600 bytes")


def test_flow_without_segments_is_rejected():
    header = "\n".join(line for line in VALID.splitlines() if line.startswith((".arch", ".model", ".tensor")))
    with pytest.raises(CMSwitchError, match="no segments"):
        simulate(header + "\n")


# ----------------------------------------------------------------------------------
# strict judge (issue 15): flows that broke the rules and were accepted


def test_a_partial_store_then_a_full_load_is_rejected():
    text = mutate("MEM.store y@gb -> dram bytes=12800", "MEM.store y@gb -> dram bytes=1")
    text = text.replace("  MEM.store z@gb -> dram bytes=12800",
                        "  MEM.store z@gb -> dram bytes=12800\n  MEM.load y@dram -> gb bytes=12800")
    rejected(text, line_of(text, "MEM.load y@dram"), "reads 12800 bytes of y@dram",
             "only 1 bytes")


@pytest.mark.parametrize("old, new, at, words", [
    # load 1 byte of x, then an mvm reads all 25600 (rule 3b)
    ("MEM.load x@dram -> a[40:48] bytes=25600", "MEM.load x@dram -> a[40:48] bytes=1",
     "CIM.mvm fc1", ("reads 25600 bytes of x@a[40:48]", "only 1 bytes")),
    # fc1 over 1 vector writes 16 bytes of h; fc2 then reads all 12800
    ("CIM.mvm fc1 a[0:2] vectors=800", "CIM.mvm fc1 a[0:2] vectors=1",
     "CIM.mvm fc2", ("reads 12800 bytes of h@a[48:56]",)),
    # an output stored in part
    ("MEM.store z@gb -> dram bytes=12800", "MEM.store z@gb -> dram bytes=100",
     ".tensor z", ("only 100 of its 12800 bytes",)),
])
def test_reads_of_data_never_fully_written_are_rejected(old, new, at, words):
    text = mutate(old, new)
    rejected(text, line_of(text, at), *words)


@pytest.mark.parametrize("old, new, words", [
    ("CIM.mvm fc1 a[0:2] vectors=800 k=32", "CIM.mvm fc1 a[0:2] vectors=800 k=100000",
     ("k=100000", "exceed its 1x1 tiles")),
    ("vectors=800 k=32 n=16", "vectors=800 k=32 n=100000", ("n=100000", "exceed")),
    ("CIM.load_weight fc1 tiles=1x1 copies=2 bytes=512", "CIM.load_weight fc1 tiles=1x1 copies=2 bytes=0",
     ("programmed with 0 bytes", "32x16")),
])
def test_an_mvm_must_fit_and_use_the_weights_loaded(old, new, words):
    text = mutate(old, new)
    rejected(text, line_of(text, "CIM.mvm fc1"), *words)


def test_a_window_of_nothing_is_rejected():
    text = mutate("out=h@a[48:56]", "out=h@a[48:56] window=0")
    with pytest.raises(CMSwitchError, match=f":{line_of(text, 'CIM.mvm fc1')}: .*window= must be in 1"):
        simulate(text)


@pytest.mark.parametrize("old, new, at, words", [
    # fc1 writes 16-byte vectors (n=16, 8-bit) into a 15-byte window
    ("out=h@a[48:56]", "out=h@a[48:56] window=15", "CIM.mvm fc1",
     "window=15 bytes, less than one output vector (16 bytes)"),
    # a 16-byte window, but fc2 reads 20-element vectors of it
    ("CIM.mvm fc2 a[2:3] vectors=800 k=16", "CIM.mvm fc2 a[2:3] vectors=800 k=20",
     "CIM.mvm fc2", "window=16 bytes, less than one input vector (20 bytes)"),
])
def test_a_window_holds_a_whole_vector(old, new, at, words):
    """Issue 15: `window=1` streamed 802,816 bytes through one array."""
    text = mutate(old, new).replace("out=h@a[48:56]\n", "out=h@a[48:56] window=16\n")
    rejected(text, line_of(text, at), words)


@pytest.mark.parametrize("spelling", ["25_600", "+25600", "\u0662\u0665\u0666\u0660\u0660",
                                      "\uff12\uff15\uff16\uff10\uff10", "1" * 400])
def test_numbers_are_ascii_decimal_and_bounded(spelling):
    text = mutate("MEM.load x@dram -> a[40:48] bytes=25600",
                  f"MEM.load x@dram -> a[40:48] bytes={spelling}")
    with pytest.raises(CMSwitchError, match=f":{line_of(text, 'MEM.load x@dram')}:"):
        simulate(text)


@pytest.mark.parametrize("space", ["\u00a0", "\x0b", "\x0c"])
def test_only_spaces_and_tabs_separate_tokens(space):
    text = mutate("MEM.load x@dram -> a[40:48] bytes=25600",
                  f"MEM.load x@dram ->{space}a[40:48] bytes=25600")
    with pytest.raises(CMSwitchError, match="outside the ASCII grammar"):
        simulate(text)


@pytest.mark.parametrize("old, new, field", [
    ("clock_mhz=200", "clock_mhz=5e-324", "clock_mhz"),
    ("arrays=96", "arrays=1000000000000", "arrays"),
    ("external_bw_bytes=32", "external_bw_bytes=1e-300", "external_bw_bytes"),
])
def test_the_arch_header_obeys_the_hardware_files_limits(old, new, field):
    """Issue 15: a denormal clock printed `inf ms`, 10^12 arrays ran out of memory."""
    rejected(mutate(old, new), 1, f".arch: field '{field}'")
