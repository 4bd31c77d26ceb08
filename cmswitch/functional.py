"""Functional mode, the entry points (DESIGN.md §6; docs/functional.md): compile an ONNX
model and run its flow on numbers against onnxruntime.

The executor lives with the simulator, split by concept, and imports no part of the
optimizer: `cmswitch.sim.functional` (the machine that walks a flow, `run_flow`),
`cmswitch.sim.kernels` (what each operator computes), `cmswitch.sim.onnx_weights`
(weights from the ONNX file) and `cmswitch.sim.reference` (onnxruntime and the
comparison).  The compiler hands it the module by flow names
(`cmswitch.api.Plan.flow_operators`).  This module only joins the two.
"""

from __future__ import annotations

import os
from typing import Any

from cmswitch.sim.functional import FunctionalMachine, Operators, run_flow, weight_tiles
from cmswitch.sim.onnx_weights import OnnxWeights
from cmswitch.sim.reference import ATOL, RTOL, compare, format_report, require_onnx

__all__ = ["ATOL", "RTOL", "FunctionalMachine", "OnnxWeights", "Operators",
           "check_against_onnxruntime", "compare", "format_report", "require_onnx",
           "run_flow", "weight_tiles"]


def check_against_onnxruntime(model: str | os.PathLike, arch: str | None = None,
                              seed: int = 0, *, rtol: float = RTOL, atol: float = ATOL,
                              **options: Any) -> dict:
    """Compile an ONNX model (`options` go to `cmswitch.api.compile`: strategy,
    solver, batch, ...) for `arch` (preset name or file), execute the flow
    functionally and compare with onnxruntime; returns `compare`'s report."""
    from cmswitch.api import compile as compile_model

    plan = compile_model(model, arch=arch, keep_module=True, **options)
    return compare(plan, model, seed=seed, rtol=rtol, atol=atol)
