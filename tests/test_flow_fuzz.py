"""The flow mutation fuzzer (flow_fuzz) and its independent rule checker (flow_oracle).

The checker is trusted only after it is shown to see the rule-breaking edits the
simulator rejects (issue 15's classes) and to accept every flow the compiler emits.
Then the fuzz: mutants of the bundled models' flows, each rejected with one located
line or accepted with a valid report and a rule-abiding flow.  Plain pytest runs
`CI_MUTANTS`; ``CMSWITCH_FLOW_FUZZ=1000`` (what `make fuzz` sets) runs that many over all
six models and prints the counts; ``CMSWITCH_FUZZ_SEED`` picks the seed.
"""

from __future__ import annotations

import os

import pytest
from flow_fuzz import run
from flow_oracle import Violation, check
from test_sim import VALID, mutate

from conftest import MODEL_NAMES, MODELS
from cmswitch.api import compile as compile_model

CI_MUTANTS = 120
MUTANTS = int(os.environ.get("CMSWITCH_FLOW_FUZZ", "0"))
SEED = int(os.environ.get("CMSWITCH_FUZZ_SEED", "0"))


@pytest.fixture(scope="module")
def flows() -> dict:
    """Each bundled model's flow on the default hardware (two small ones for CI), and
    ResNet-18's on `dynaplasia-fused`, whose flow hands tensors over as streams."""
    names = MODEL_NAMES if MUTANTS else ["resnet18", "mobilenet_v2"]
    flows = {name: compile_model(MODELS / f"{name}.onnx", jobs=1).flow for name in names}
    fused = compile_model(MODELS / "resnet18.onnx", arch="dynaplasia-fused", jobs=1).flow
    assert "@stream" in fused
    return flows | {"resnet18@dynaplasia-fused": fused}


def test_the_checker_accepts_the_compilers_flows(flows):
    for name, text in flows.items():
        check(text)
    check(VALID)


@pytest.mark.parametrize("old, new, words", [
    # reads of data never (fully) written
    ("MEM.load x@dram -> a[40:48] bytes=25600", "MEM.load x@dram -> a[40:48] bytes=1", "holds 1 of"),
    ("CIM.mvm fc1 a[0:2] vectors=800", "CIM.mvm fc1 a[0:2] vectors=1", "holds 16 of"),
    ("MEM.store z@gb -> dram bytes=12800", "MEM.store z@gb -> dram bytes=100", "output z"),
    ("in=x@a[40:48]", "in=x@a[40:47]", "does not exist"),
    # missing or unused weights
    ("CIM.load_weight fc1 tiles=1x1 copies=2 bytes=512", "CIM.load_weight fc1 tiles=1x1 copies=2 bytes=0",
     "programmed with 0"),
    ("CIM.mvm fc1 a[0:2] vectors=800 k=32", "CIM.mvm fc1 a[0:2] vectors=800 k=100000", "beyond"),
    ("vectors=800 k=32 n=16", "vectors=800 k=32 n=100000", "beyond"),
    ("CIM.mvm fc1 a[0:2]", "CIM.mvm fc1 a[0:3]", "does not hold a tile"),
    # capacity
    ("MEM.load x@dram -> a[40:48] bytes=25600", "MEM.load x@dram -> a[40:41] bytes=25600",
     "holds 25600"),
    ("out=h@a[48:56]", "out=h@a[48:56] window=15", "< one vector"),
    # modes
    ("CM.switch TOM a[40:56]", "CM.switch TOM a[41:56]", "compute-mode"),
    # lexical
    ("a[40:48] bytes=25600", "a[40:48] bytes=25_600", "not an integer"),
    ("a[40:48] bytes=25600", "a[40:48] bytes=\u0662\u0665\u0666\u0660\u0660", "non-ASCII"),
    ("dram -> a[40:48]", "dram ->\u00a0a[40:48]", "non-ASCII"),
])
def test_the_checker_sees_each_rule_breaking_edit(old, new, words):
    text = mutate(old, new)
    with pytest.raises(Violation, match=words):
        check(text)


def test_mutants_are_rejected_on_one_line_or_obey_the_rules(flows, tmp_path, capsys):
    count = MUTANTS or CI_MUTANTS
    tally = run(flows, count, SEED, tmp_path)
    with capsys.disabled():
        print(f"\n{tally.line()}")
    details = "\n".join(f"{kind}: {what}\n  {message}" for kind, what, message, _ in tally.failures)
    assert tally.failed == 0, details
    # the fuzz reaches both sides: rejections, and accepted edits the checker judges
    assert tally.rejected > count // 4 and tally.accepted - tally.neutral > count // 20, tally.line()
