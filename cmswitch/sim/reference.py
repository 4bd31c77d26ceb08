"""Functional mode against onnxruntime: seeded inputs, the reference outputs, and the
comparison report (`compare`, `format_report`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto

from cmswitch.errors import CMSwitchError
from cmswitch.sim.functional import FunctionalMachine, Operators
from cmswitch.sim.onnx_weights import OnnxWeights
from cmswitch.sim.flow import (
    FlowSource,
    iter_records,
)

RTOL = 1e-4
"""Relative tolerance of the comparison with onnxruntime (float32 sums in another order)."""
LOW_PRECISION = {onnx.TensorProto.FLOAT16: 1e-2, onnx.TensorProto.BFLOAT16: 2e-2}
"""Relative tolerance for float16 / bfloat16 outputs (and a tenth of it as the
absolute one, relative to the output's magnitude like `ATOL`): the flow computes in
float32, the reference rounds every step to the narrow type (float16 keeps 11
significant bits, bfloat16 8: a relative step of 2^-7)."""
ATOL = 1e-5
"""Absolute tolerance, relative to the output's magnitude: element ``a`` matches ``b``
when ``|a-b| <= ATOL*max(1, max|B|) + RTOL*|b|`` (``B`` the whole output).  float32
sums round in proportion to their terms, so an element that cancels to near zero in
an output of values in the thousands carries an error far above 1e-5."""



# ----------------------------------------------------------------------------------
# comparison with onnxruntime


def random_inputs(operators: Operators, seed: int) -> dict[str, np.ndarray]:
    """Seeded inputs by tensor name: standard normal floats, integers in {0, 1}."""
    rng = np.random.default_rng(seed)
    values = {}
    for name in operators.inputs:
        shape, dtype = operators.shapes[name], operators.dtypes[name]
        if dtype is np.float32:
            values[name] = rng.standard_normal(shape).astype(np.float32)
        else:
            values[name] = rng.integers(0, 2, size=shape).astype(dtype)
    return values


def _onnxruntime(path: Path | bytes, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    try:
        import onnxruntime
    except ImportError:
        raise CMSwitchError("functional mode needs onnxruntime (pip install "
                            "'cmswitch[dev]' or onnxruntime)") from None
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    try:
        session = onnxruntime.InferenceSession(path if isinstance(path, bytes) else str(path),
                                               options, providers=["CPUExecutionProvider"])
        return session.run(None, feeds)
    except Exception as exc:  # onnxruntime raises its own exception types
        where = "the upgraded model" if isinstance(path, bytes) else path
        raise CMSwitchError(f"{where}: onnxruntime failed: {str(exc).splitlines()[0]}") from None


ORT_MIN_OPSET = 7
"""The oldest default-domain opset onnxruntime runs."""


def _reference_outputs(path: Path, weights: OnnxWeights,
                       feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The model's outputs on `feeds`: onnxruntime on the file; for a file older than
    onnxruntime's `ORT_MIN_OPSET`, onnxruntime on the graph the importer compiled
    (`weights.model`: upgraded by onnx's version converter, folded), or onnx's
    reference evaluator if onnxruntime cannot run that either.  Raises CMSwitchError if
    none can."""
    if (weights.source_opset or ORT_MIN_OPSET) >= ORT_MIN_OPSET:
        return _onnxruntime(path, feeds)
    prepared = weights.model
    try:
        return _onnxruntime(prepared.SerializeToString(), feeds)
    except CMSwitchError:
        from onnx.reference import ReferenceEvaluator

        try:
            return ReferenceEvaluator(prepared).run(None, feeds)
        except Exception as exc:
            raise CMSwitchError(f"{path}: neither onnxruntime nor onnx's reference "
                                f"evaluator runs the model ({str(exc).splitlines()[0]})") from None


def require_onnx(model: str | os.PathLike) -> Path:
    """The model's path; raises CMSwitchError unless it is an existing `.onnx` file
    whose weights are all readable (checked before a possibly long compile)."""
    path = Path(model)
    if path.suffix != ".onnx" or not path.is_file():
        raise CMSwitchError(f"{model}: functional mode needs an .onnx model file with weights")
    weights = OnnxWeights.load(path, prepare=False)  # dims not bound yet
    for tensor in weights.tensors.values():
        where = next((e.value for e in tensor.external_data if e.key == "location"), None)
        if tensor.data_location == TensorProto.EXTERNAL and not (weights.base_dir / str(where)).is_file():
            weights.array(tensor.name)  # raises the missing-data error
    return path


def compare(plan: Any, model: str | os.PathLike, seed: int = 0, flow: str | None = None,
            rtol: float = RTOL, atol: float = ATOL) -> dict:
    """Run `plan`'s flow (or `flow`, e.g. a modified one) functionally and the ONNX
    `model` in onnxruntime on the same seeded random inputs; compare the outputs.

    `plan` must come from ``cmswitch.api.compile(model, keep_module=True)``.  Returns
    the report: ``ok`` (every output element has ``|a-b| <= atol*max(1, max|b|) +
    rtol*|b|``; float16 / bfloat16 outputs with `LOW_PRECISION`'s tolerances, each
    output row says which),
    ``max_abs_error``, ``max_rel_error`` (max ``|a-b|`` over max ``|b|`` of that output),
    ``outputs`` (per output: name, shape, errors), ``rtol``, ``atol``, ``seed``,
    ``statements`` executed.  Raises CMSwitchError as `run_flow` does, or when the
    model is not an ONNX file with its weights.
    """
    path = require_onnx(model)
    if getattr(plan, "module", None) is None:
        raise CMSwitchError("functional mode needs the compiled module: "
                            "compile with keep_module=True")
    weights = OnnxWeights.load(path, (getattr(plan, "dims", None) or {},
                                      getattr(plan, "batch", None), getattr(plan, "seq", None)))
    operators = plan.flow_operators()
    values = random_inputs(operators, seed)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in weights.model.graph.input}
    # each input in its own ONNX type (uint8, float16, ...) for onnxruntime, and the
    # flow fed the same values
    feeds = {onnx_name: np.asarray(values[name]).astype(
                 onnx.helper.tensor_dtype_to_np_dtype(types[onnx_name]))
             for onnx_name, name in zip(weights.inputs, operators.inputs)}
    for onnx_name, name in zip(weights.inputs, operators.inputs):
        values[name] = feeds[onnx_name].astype(operators.dtypes[name])
    source = FlowSource(flow if flow is not None else plan.flow)
    machine = FunctionalMachine(source.name, operators, weights, values)
    for record in iter_records(source.lines(), source.name):
        machine.feed(record)
    ours = machine.outputs()
    reference = _reference_outputs(path, weights, feeds)
    rows = []
    ok = True
    out_types = [vi.type.tensor_type.elem_type for vi in weights.model.graph.output]
    for name, ref, elem in zip(operators.outputs, reference, out_types):
        low = LOW_PRECISION.get(elem, 0.0)  # float16 / bfloat16: their rounding
        out_rtol, out_atol = max(rtol, low), max(atol, low / 10)
        if name not in ours:
            raise CMSwitchError(f"output {name} is not an output tensor of the flow")
        got = ours[name].astype(np.float64)
        ref = np.asarray(ref, dtype=np.float64)
        if got.shape != ref.shape:
            raise CMSwitchError(f"output {name}: shape {list(got.shape)}, onnxruntime gives "
                                f"{list(ref.shape)}")
        # NaN where onnxruntime has NaN too matches; NaN on one side only is an
        # infinite error (so the error figures never print nan)
        both_nan = np.isnan(got) & np.isnan(ref)
        diff = np.where(both_nan, 0.0, np.abs(got - ref))
        diff = np.where(np.isnan(diff), np.inf, diff)
        abs_err = float(diff.max()) if diff.size else 0.0
        finite = np.abs(ref[np.isfinite(ref)])
        scale = float(finite.max()) if finite.size else 0.0
        rel_err = abs_err / scale if scale > 0 else abs_err
        close = bool(np.allclose(got, ref, rtol=out_rtol, atol=out_atol * max(1.0, scale),
                                 equal_nan=True))
        ok = ok and close
        rows.append({"name": name, "shape": list(ref.shape), "max_abs_error": abs_err,
                     "max_rel_error": rel_err, "rtol": out_rtol, "atol": out_atol,
                     "ok": close})
    return {
        "model": plan.model, "arch": plan.arch.name, "seed": seed, "rtol": rtol, "atol": atol,
        "statements": machine.statements, "ok": ok,
        "max_abs_error": max((r["max_abs_error"] for r in rows), default=0.0),
        "max_rel_error": max((r["max_rel_error"] for r in rows), default=0.0),
        "outputs": rows,
    }




def format_report(report: dict) -> str:
    """One line: the errors, the tolerance and the verdict."""
    verdict = "matches onnxruntime" if report["ok"] else "DIFFERS from onnxruntime"
    looser = sorted({(r["rtol"], r["atol"]) for r in report["outputs"]
                     if r.get("rtol", report["rtol"]) != report["rtol"]})
    extra = ("; float16/bfloat16 outputs at " + " or ".join(
        f"rtol {r:g}, atol {a:g}" for r, a in looser)) if looser else ""
    return (f"functional: {report['statements']} statements, max abs error "
            f"{report['max_abs_error']:.3g}, max rel error {report['max_rel_error']:.3g} "
            f"(rtol {report['rtol']:g}, atol {report['atol']:g}{extra}, seed "
            f"{report['seed']}): {verdict}\n")
