"""The IR contract lives in the dialects (issue 18): the assembly reader/writer and the
simulator import no pass, and no pass imports another pass; they share the dialects
(attribute names, hardware records) and the non-pass modules of `cmswitch.transforms`
(`common`, `segments`, `layout`)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import cmswitch

PACKAGE = Path(cmswitch.__file__).parent
PASSES = ("cim_partition", "cim_segment", "cim_allocate", "cim_to_metaop")


def imported(source: Path) -> set[str]:
    """Every module `source` imports, at top level or inside functions."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("folder", ["asm", "sim"])
def test_asm_and_sim_import_no_transform(folder):
    for source in (PACKAGE / folder).glob("*.py"):
        bad = {n for n in imported(source) if n.startswith("cmswitch.transforms")}
        assert not bad, (source.name, bad)


@pytest.mark.parametrize("name", PASSES)
def test_no_pass_imports_another(name):
    source = PACKAGE / "transforms" / f"{name}.py"
    others = {f"cmswitch.transforms.{p}" for p in PASSES if p != name}
    assert not imported(source) & others, (name, imported(source) & others)


@pytest.mark.parametrize("name", ["common", "segments", "layout"])
def test_shared_transform_modules_import_no_pass(name):
    source = PACKAGE / "transforms" / f"{name}.py"
    passes = {f"cmswitch.transforms.{p}" for p in PASSES}
    assert not imported(source) & passes


def test_baselines_use_the_public_plan_writer():
    api = imported(PACKAGE / "api.py")
    assert "cmswitch.transforms.layout" in api
    for strategy in ("cimmlc.py", "layerwise.py"):
        assert not imported(PACKAGE / "strategies" / strategy) & {
            f"cmswitch.transforms.{p}" for p in PASSES}


def test_one_name_grammar_the_documented_one():
    """docs/cmsasm.md's name rule is the one every reader uses."""
    from cmswitch.asm.parser import parse_flow
    from cmswitch.errors import CMSwitchError
    from cmswitch.names import NAME_CHARS, flow_name, is_flow_name
    from cmswitch.sim.simulator import simulate

    doc = (PACKAGE.parent / "docs" / "cmsasm.md").read_text()
    assert f"`[{NAME_CHARS}]+`" in doc
    assert is_flow_name("layer1.0/conv:2-a_b") and not is_flow_name("x$in")
    assert flow_name("x$in") == "x_in"
    bad = ".model m$\n"
    with pytest.raises(CMSwitchError, match="name"):
        parse_flow(bad)
    with pytest.raises(CMSwitchError, match="name"):
        simulate(bad)


def test_functional_mode_imports_no_part_of_the_optimizer():
    """Functional execution sits under sim/ (issue 18) with the timing simulator's
    independence: no cost model, solver, pass or compiler API."""
    forbidden = ("cmswitch.cost", "cmswitch.solver", "cmswitch.transforms", "cmswitch.api",
                 "cmswitch.strategies")
    for name in ("functional", "kernels", "onnx_weights", "reference"):
        bad = {n for n in imported(PACKAGE / "sim" / f"{name}.py") if n.startswith(forbidden)}
        assert not bad, (name, bad)
