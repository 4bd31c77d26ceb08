"""Shared fixtures: paths to the bundled models."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
MODEL_NAMES = ["resnet18", "mobilenet_v2", "vgg16", "bert_base", "gpt2", "llama2_7b_2layers"]


@pytest.fixture(scope="session")
def models_dir() -> Path:
    return MODELS


@pytest.fixture(scope="session")
def compiled():
    """`compiled(model, arch="dynaplasia", strategy="cmswitch")`: the Plan of a bundled
    model, compiled once per session and shared (compiles are deterministic)."""
    from cmswitch.api import compile as compile_model

    plans: dict = {}

    def get(model: str, arch: str = "dynaplasia", strategy: str = "cmswitch"):
        key = (model, arch, strategy)
        if key not in plans:
            plans[key] = compile_model(str(MODELS / f"{model}.onnx"), arch=arch,
                                       strategy=strategy, jobs=1)
        return plans[key]

    return get
