"""Property test: random DAG models on random valid hardware compile, and both flows
(cmswitch and the cimmlc baseline) run in the simulator without breaking a rule.

Checked per example (see `random_models.flow_problems`): the simulator accepts the
flow (modes, capacity, dependencies); every operator runs exactly once, in one
segment; every tensor is written before it is read; no segment uses more arrays than
the chip has; and cmswitch is never predicted slower than cimmlc (the baseline's
plan is priced by the same cost model, so a slower cmswitch plan is a search bug);
and cmswitch's prediction is within `ERROR_BOUND` of the simulated cycles (flows of
at least `ERROR_MIN_CYCLES`).

Profiles: plain pytest runs a quick, derandomized profile (`CI_EXAMPLES` graphs).
``CMSWITCH_FUZZ_EXAMPLES=500`` (what `make fuzz` sets) runs that many graphs without
stopping at the first violation, prints ``500 graphs tried, N violations``, saves each
violating model and hardware under ``CMSWITCH_FUZZ_REPRO`` (default /tmp/fuzz-repro)
and fails if N > 0.  ``CMSWITCH_FUZZ_SEED`` picks the seed of that run (default 0).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from random_models import flow_problems, random_arches, random_models

from cmswitch.api import compile as compile_model
from cmswitch.errors import ModelTooLargeError
from cmswitch.errors import CMSwitchError
from cmswitch.frontend.onnx_importer import import_onnx
from cmswitch.sim.simulator import simulate

CI_EXAMPLES = 20
FUZZ_EXAMPLES = int(os.environ.get("CMSWITCH_FUZZ_EXAMPLES", "0"))
FUZZ_SEED = int(os.environ.get("CMSWITCH_FUZZ_SEED", "0"))
REPRO_DIR = Path(os.environ.get("CMSWITCH_FUZZ_REPRO", "/tmp/fuzz-repro"))

_COMMON = dict(deadline=None, database=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
if FUZZ_EXAMPLES:
    PROFILE = settings(max_examples=FUZZ_EXAMPLES, phases=[Phase.generate], **_COMMON)
else:
    # no shrinking: a failure stops at once, its model and hardware saved under REPRO_DIR
    PROFILE = settings(max_examples=CI_EXAMPLES, derandomize=True,
                       phases=[Phase.explicit, Phase.generate], **_COMMON)


def _arch_file(fields: dict, folder: Path) -> Path:
    """The hardware as a YAML file named by its content (load_arch caches by path)."""
    text = yaml.safe_dump(fields, sort_keys=False)
    path = folder / f"arch-{hashlib.sha256(text.encode()).hexdigest()[:16]}.yaml"
    path.write_text(text)
    return path


ERROR_BOUND = 0.10
"""Largest |predicted / simulated - 1| of cmswitch allowed on a fuzz graph whose flow
runs at least `ERROR_MIN_CYCLES` (issue 12: the plan is the flow; `make fuzz` prints
the worst it met)."""
ERROR_MIN_CYCLES = 1000
"""Shorter flows are a few MVMs long, where one cycle of pipeline fill or rounding is
10-20% (measured: 6 predicted vs 5 simulated, 180 vs 141); their error is reported,
not bounded."""

ERRORS: list[tuple[float, str]] = []
"""(|predicted / simulated - 1|, whether the flow is bounded) of every cmswitch flow."""

REFUSED: list[str] = []
"""Models both strategies refused with ModelTooLargeError (an operator cim-partition
cannot split exceeds the chip): the specified diagnosis, counted and printed apart."""


def check_case(model, arch_fields: dict, folder: Path) -> list[str]:
    """Compile ``model`` for the hardware with both strategies, simulate both flows and
    return the broken invariants (empty: all hold).  A CMSwitchError for a valid model
    on valid hardware counts as a violation too."""
    arch = str(_arch_file(arch_fields, folder))
    data = model.SerializeToString()
    problems: list[str] = []
    predicted: dict[str, int] = {}
    refused: list[str] = []
    for strategy in ("cmswitch", "cimmlc"):
        try:
            plan = compile_model(import_onnx(data, name="fuzz"), arch=arch, strategy=strategy)
            report = simulate(plan.flow)
        except ModelTooLargeError as e:
            refused.append(str(e))  # the specified refusal of a model that cannot fit
            continue
        except CMSwitchError as e:
            problems.append(f"{strategy}: error: {e}")
            continue
        predicted[strategy] = plan.predicted_cycles
        problems += [f"{strategy}: {p}" for p in flow_problems(plan, report)]
        if strategy == "cmswitch" and report["cycles"]:
            error = abs(plan.predicted_cycles / report["cycles"] - 1)
            ERRORS.append((error, report["cycles"] >= ERROR_MIN_CYCLES))
            if error > ERROR_BOUND and report["cycles"] >= ERROR_MIN_CYCLES:
                problems.append(f"cmswitch predicted {plan.predicted_cycles} cycles, "
                                f"simulated {report['cycles']} ({error:.1%} off)")
    if len(refused) == 1:
        problems.append(f"only one strategy refused the model as too large: {refused[0]}")
    if refused:
        REFUSED.append(refused[0])
    if len(predicted) == 2 and predicted["cmswitch"] > predicted["cimmlc"]:
        problems.append(f"cmswitch predicted {predicted['cmswitch']} cycles, slower than "
                        f"cimmlc's {predicted['cimmlc']}")
    return problems


def _save_repro(index: int, model, arch_fields: dict, problems: list[str]) -> Path:
    REPRO_DIR.mkdir(parents=True, exist_ok=True)
    stem = REPRO_DIR / f"fuzz-{FUZZ_SEED}-{index:04d}"
    stem.with_suffix(".onnx").write_bytes(model.SerializeToString())
    stem.with_suffix(".yaml").write_text(yaml.safe_dump(arch_fields, sort_keys=False))
    stem.with_suffix(".txt").write_text("\n".join(problems) + "\n")
    return stem


def test_random_models_keep_invariants(tmp_path, capsys):
    """Any valid hardware, down to 2 arrays of 16 rows (make fuzz runs this one)."""
    _fuzz(random_arches(), tmp_path, capsys)


def test_random_models_on_roomy_chips(tmp_path, capsys):
    """Chips of >= 64 arrays of >= 128 rows, where every generated grouped conv and
    dynamic matmul fits (so the known partition bug above cannot hide other failures)."""
    _fuzz(random_arches(min_arrays=64, min_rows=128), tmp_path, capsys)


def _fuzz(arches, tmp_path: Path, capsys) -> None:
    tried: list[int] = []
    violations: list[str] = []

    @PROFILE
    @seed(FUZZ_SEED)
    @given(model=random_models(), arch=arches)
    def run(model, arch):
        tried.append(1)
        if not FUZZ_EXAMPLES:
            problems = check_case(model, arch, tmp_path)
            if problems:
                stem = _save_repro(0, model, arch, problems)
                raise AssertionError(f"reproducer: {stem}.onnx --arch {stem}.yaml\n"
                                     + "\n".join(problems))
            return
        try:
            problems = check_case(model, arch, tmp_path)
        except Exception as e:  # a crash is a violation too; keep fuzzing
            problems = [f"crash: {type(e).__name__}: {e}"]
        if problems:
            stem = _save_repro(len(tried), model, arch, problems)
            violations.append(f"{stem}: {problems[0]}")

    run()
    if FUZZ_EXAMPLES:
        with capsys.disabled():
            print(f"\n{len(tried)} graphs tried, {len(violations)} violations "
                  f"({len(REFUSED)} refused as too large for their chip)")
            for label, errs in (
                    (f"flows of >= {ERROR_MIN_CYCLES} cycles, bound {ERROR_BOUND:.0%}",
                     sorted(e for e, big in ERRORS if big)),
                    ("shorter flows, not bounded", sorted(e for e, big in ERRORS if not big))):
                if errs:
                    print(f"worst cmswitch prediction error: {errs[-1]:.1%}, median "
                          f"{errs[len(errs) // 2]:.1%} over {len(errs)} {label}")
            for line in violations:
                print(f"  {line}")
    assert not violations, f"{len(violations)} violations, reproducers in {REPRO_DIR}"


@given(model=random_models())
@settings(max_examples=CI_EXAMPLES, derandomize=True, **_COMMON)
def test_random_models_import_with_generator_shapes(model):
    """The importer's output shapes agree with the generator's own shape arithmetic
    (the graph outputs' declared shapes, computed from the ONNX operator formulas)."""
    from xdsl.dialects import func

    module = import_onnx(model.SerializeToString(), name="fuzz")
    fn = next(op for op in module.walk() if isinstance(op, func.FuncOp))
    got = [list(t.get_shape()) for t in fn.function_type.outputs]
    want = [[d.dim_value for d in o.type.tensor_type.shape.dim] for o in model.graph.output]
    assert got == want


def test_generator_is_deterministic():
    """The same hypothesis seed draws the same model (reproducers stay reproducible)."""
    drawn = []

    @settings(max_examples=1, derandomize=True, **_COMMON)
    @given(st.data())
    def draw(data):
        drawn.append(data.draw(random_models()).SerializeToString())

    draw()
    draw()
    assert drawn[0] == drawn[1]


if __name__ == "__main__":  # pragma: no cover - convenience: python tests/test_fuzz.py
    raise SystemExit(pytest.main([__file__, "-q"]))
