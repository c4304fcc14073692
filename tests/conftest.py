"""Shared pytest fixtures (keep minimal; add new fixtures below)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """Folder with the tiny random Qwen2.5-VL (seed 0), built once per test session."""
    from pipeline.models.tiny import ensure_tiny_model

    return ensure_tiny_model(tmp_path_factory.mktemp("tiny-qwen2.5-vl") / "seed0", seed=0)


@pytest.fixture
def tiny_model(tiny_model_dir):
    """``(model, processor)`` of the tiny model, loaded fresh on CPU in float32 through the loader."""
    from pipeline.models.loader import ModelSpec, load_model

    loaded = load_model(ModelSpec(path=str(tiny_model_dir), device="cpu", dtype="float32"))
    return loaded.model, loaded.processor
