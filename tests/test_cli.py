"""Bad input gets one line on stderr, exit code 1 (2 for usage), never a traceback."""

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import MODELS

BIN = Path(sys.executable).parent


def _run(*args, stdin: str | None = None):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, input=stdin)


@pytest.fixture()
def bad_files(tmp_path):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_text("not a model")
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes((MODELS / "resnet18.onnx").read_bytes()[:5000])
    arch = tmp_path / "arch.yaml"
    arch.write_text((Path(__file__).parent.parent / "cmswitch/arch/presets/dynaplasia.yaml")
                    .read_text().replace("arrays: 96", "arrays: 0"))
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("name: x\nbogus: 1\n")
    mlir = tmp_path / "bad.mlir"
    mlir.write_text("func.func @main() {\n  %0 = cim.vector \"relu\" : () -> tensor<4xf32>\n")
    spaced = tmp_path / "spaced.yaml"
    spaced.write_text((Path(__file__).parent.parent / "cmswitch/arch/presets/dynaplasia.yaml")
                      .read_text().replace("name: dynaplasia", "name: my chip"))
    return dict(garbage=garbage, truncated=truncated, arch=arch, unknown=unknown, mlir=mlir,
                spaced=spaced)


@pytest.mark.parametrize("case,args,message", [
    ("garbage", ["cmswitch", "compile", "{garbage}"], "not an ONNX model"),
    ("truncated", ["cmswitch", "compile", "{truncated}"], "truncated.onnx"),
    ("missing", ["cmswitch", "compile", "/no/such/model.onnx"], "no such model file"),
    ("zero arrays", ["cmswitch", "compile", str(MODELS / "resnet18.onnx"), "--arch", "{arch}"],
     "field 'arrays'"),
    ("unknown key", ["cmswitch", "compile", str(MODELS / "resnet18.onnx"), "--arch", "{unknown}"],
     "field 'bogus'"),
    ("bad mlir", ["cmswitch", "compile", "{mlir}"], "bad.mlir"),
    ("opt garbage", ["cmswitch-opt", "{garbage}"], "not an ONNX model"),
    ("opt missing", ["cmswitch-opt", "/no/such.mlir"], "No such file"),
    ("sim missing", ["cmswitch-sim", "/no/such.cmsasm"], "such"),
    ("batch on fixed shapes", ["cmswitch", "compile", str(MODELS / "resnet18.onnx"), "--batch", "4"],
     "no input has a dynamic dimension for --batch"),
    ("spaces in arch name", ["cmswitch", "compile", str(MODELS / "resnet18.onnx"), "--arch", "{spaced}"],
     "field 'name'"),
])
def test_bad_input_is_one_clean_line(bad_files, case, args, message):
    argv = [BIN / args[0]] + [a.format(**bad_files) for a in args[1:]]
    r = _run(*argv)
    assert r.returncode == 1, (case, r.stderr)
    assert "Traceback" not in r.stderr
    assert message in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_usage_errors_exit_2():
    assert _run(BIN / "cmswitch").returncode == 2
    assert _run(BIN / "cmswitch", "compile", "m.onnx", "--strategy", "nope").returncode == 2
    r = _run(BIN / "cmswitch-opt", "--cim-partition=bogus=1", MODELS / "resnet18.onnx")
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_opt_reads_stdin_and_runs_passes_in_order():
    src = (Path(__file__).parent.parent / "filecheck/transforms/cim-segment.mlir").read_text()
    r = _run(BIN / "cmswitch-opt", "--cim-segment", "--cim-allocate=solver=highs", "-", stdin=src)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("cim.segment") == 2 and "compute_arrays" in r.stdout


def test_symbolic_batch_is_bound_by_batch(tmp_path):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.zeros((64, 32), np.float32), "fc.weight")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "fc.weight"], ["y"], name="fc")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 32])], [w])
    path = tmp_path / "dyn.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    refused = _run(BIN / "cmswitch", "compile", path)
    assert refused.returncode == 1 and "--dim batch=VALUE" in refused.stderr
    ok = _run(BIN / "cmswitch", "compile", path, "--batch", "8", "--json", tmp_path / "r.json")
    assert ok.returncode == 0, ok.stderr
    import json

    ops = json.loads((tmp_path / "r.json").read_text())["operators"]
    assert [(o["m"], o["k"], o["n"]) for o in ops if o["kind"] == "weight"] == [(8, 64, 32)]


def test_summary_marks_segments_off_by_more_than_one_and_a_half():
    """`--summary --simulate`: simulated cycles per segment beside the prediction; a
    segment whose ratio is outside [1/1.5, 1.5] gets "!" and is listed even past the
    row limit (numbers made up: 100 vs 140 is within, 100 vs 151 and 100 vs 60 not)."""
    import io
    from types import SimpleNamespace

    from cmswitch.arch import load_arch
    from cmswitch.tools.cli import print_summary

    segs = [{"id": k, "operators": [f"op{k}"], "compute_arrays": 1, "memory_arrays": 0,
             "weight_copies": {}, "predicted_cycles": 100} for k in range(4)]
    plan = SimpleNamespace(model="m", arch=load_arch("dynaplasia"), strategy="cmswitch",
                           segments=segs, predicted_cycles=400, lower_bound_cycles=100,
                           lower_bound_terms={"compute": 100, "dram": 1},
                           mip={"solves": 0, "cache_hits": 0, "segment_mips": 0},
                           compile_seconds=0.0)
    sim = {"segments": [{"id": str(k), "cycles": c} for k, c in enumerate((140, 100, 151, 60))]}
    out = io.StringIO()
    print_summary(plan, out, rows=1, sim=sim)
    lines = {line.split()[0]: line for line in out.getvalue().splitlines()
             if line.split() and line.split()[0].isdigit()}
    assert set(lines) == {"0", "2", "3"}  # row 0, then the two marked ones
    assert lines["0"].split()[-1] == "140"
    assert lines["2"].endswith("151 !") and lines["3"].endswith("60 !")
    assert "segments off by more than 1.5x (!): 2" in out.getvalue()


@pytest.mark.parametrize("argv", [
    ["cmswitch", "compile", str(MODELS / "resnet18.onnx"), "--arch", "dynaplsia"],
    ["cmswitch-sim", str(MODELS / "resnet18.onnx"), "--arch", "dynaplsia"],
    ["cmswitch", "sweep", "resnet18", "--arch", "dynaplsia"],
])
def test_an_unknown_preset_is_a_usage_error_with_the_nearest_name(argv):
    """Issue 19: `--arch nosuch` exited 1 while `--strategy nosuch` exited 2."""
    r = _run(BIN / argv[0], *argv[1:])
    assert r.returncode == 2, r.stderr
    assert "unknown hardware 'dynaplsia'" in r.stderr and "did you mean 'dynaplasia'?" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("old, new, message", [
    # a misspelt field gets the nearest name
    ("switch_cycles:", "switch_cycle:",
     "unknown field 'switch_cycle' (did you mean 'switch_cycles'?)"),
    # cell_bits 3 with weight_bits 8: the cost model would store 8/3 cells a weight
    ("cell_bits: 1 ", "cell_bits: 3 ", "8-bit weights do not fill whole 3-bit cells"),
])
def test_a_bad_hardware_file_is_refused_by_name(tmp_path, old, new, message):
    fields = (Path(__file__).parent.parent / "cmswitch/arch/presets/dynaplasia.yaml").read_text()
    path = tmp_path / "hw.yaml"
    path.write_text(fields.replace("name: dynaplasia", "name: mine").replace(old, new))
    r = _run(BIN / "cmswitch", "compile", str(MODELS / "resnet18.onnx"), "--arch", str(path))
    assert r.returncode == 1
    assert message in r.stderr


def test_statements_without_json_is_a_usage_error(tmp_path):
    flow = tmp_path / "r.cmsasm"
    r = _run(BIN / "cmswitch", "compile", str(MODELS / "resnet18.onnx"), "-o", str(flow), "--quiet")
    assert r.returncode == 0, r.stderr
    r = _run(BIN / "cmswitch-sim", str(flow), "--statements")
    assert r.returncode == 2 and "give --json too" in r.stderr


@pytest.mark.parametrize("argv, message", [
    (["--cim-segmnt"], "unknown pass --cim-segmnt; did you mean '--cim-segment'?"),
    (["--cim-alocate=solver=highs"], "unknown pass --cim-alocate; did you mean '--cim-allocate'?"),
    (["-p", "cim-segmnt"], "did you mean 'cim-segment'?"),
    (["-p", "canonicalise"], "did you mean 'canonicalize'?"),  # xDSL's own passes too
])
def test_a_misspelt_pass_is_a_usage_error_with_the_nearest_name(argv, message):
    r = _run(BIN / "cmswitch-opt", *argv, str(MODELS / "resnet18.onnx"))
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr


def test_plain_xdsl_opt_names_a_misspelt_pass_in_one_line(tmp_path):
    mlir = tmp_path / "m.mlir"
    mlir.write_text("builtin.module {}\n")
    r = _run(BIN / "xdsl-opt", "-p", "cim-segmnt", str(mlir))
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        "error: Unrecognized passes: ['cim-segmnt']; did you mean 'cim-segment'?"]


@pytest.mark.parametrize("argv, message", [
    (["llama2-7b", "--phase", "decode"], "--phase decode needs --kv-len L"),
    (["llama2-7b", "--kv-len", "8"], "--kv-len applies to --phase decode"),
    (["llama2-7b", "--phase", "decode", "--kv-len", "8", "--seq", "4"], "give --kv-len, not --seq"),
    ([str(MODELS / "resnet18.onnx"), "--layers", "2"], "--layers applies to the published configurations"),
    ([str(MODELS / "gpt2.onnx"), "--phase", "decode", "--kv-len", "4"],
     "--phase applies to the published configurations"),
    (["bert-base", "--layers", "13"], "bert-base has 12 layers; --layers 13 asks for more"),
    (["bert-base", "--phase", "decode", "--kv-len", "4"], "an encoder: it has no decode phase"),
    (["bert-base", "-o", "-", "--json", "-"], "both want stdout"),
    (["bert-base", "--plot", "p", "--plot-segment", "abc"], "invalid int value: 'abc'"),
])
def test_decode_and_layer_option_mistakes_are_usage_errors(argv, message):
    r = _run(BIN / "cmswitch", "compile", *argv, "--quiet")
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr


def test_decode_summary_says_where_the_kv_cache_lives():
    r = _run(BIN / "cmswitch", "compile", "llama2-7b", "--phase", "decode", "--kv-len", "16",
             "--batch", "2", "--layers", "1", "--summary", "--quiet")
    assert r.returncode == 0, r.stderr
    # 2 cached tensors of 2 x 32 x 128 x 16 bytes
    assert "decode step, KV cache of 16 tokens: 262144 B in" in r.stdout


@pytest.mark.parametrize("spec, message", [
    ("cim-segment{window=-1}", "error: bad pass option: cim-segment: window must be >= 0, got -1"),
    ("cim-segment{windw=3}", 'error: bad pass option: Provided arguments ["windw"] not found'),
])
def test_plain_xdsl_opt_reports_a_bad_pass_option_in_one_line(tmp_path, spec, message):
    mlir = tmp_path / "m.mlir"
    mlir.write_text("builtin.module {}\n")
    r = _run(BIN / "xdsl-opt", "-p", spec, str(mlir))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and lines[0].startswith(message), r.stderr
