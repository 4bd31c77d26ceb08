"""Shared fixtures: paths to the bundled models."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
MODEL_NAMES = ["resnet18", "mobilenet_v2", "vgg16", "bert_base", "gpt2", "llama2_7b_2layers"]


@pytest.fixture(scope="session")
def models_dir() -> Path:
    return MODELS
