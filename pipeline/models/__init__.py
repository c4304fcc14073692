"""Model loading: the tiny offline Qwen2.5-VL and real UI-TARS-1.5 checkpoints through one loader.

The names below load on first use: importing a light submodule (``pipeline.models.micro`` for a path)
must not pull in transformers, so a CLI command that needs no model starts in a fraction of a second.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "UITARS_MAX_PIXELS": "loader", "UITARS_MIN_PIXELS": "loader", "LoadedModel": "loader", "ModelSpec": "loader",
    "load_model": "loader", "load_processor": "loader", "Qwen2_5_VLImageOnlyProcessor": "processor",
    "TINY_MAX_PIXELS": "tiny", "TINY_MIN_PIXELS": "tiny", "build_tiny_model": "tiny",
    "ensure_tiny_model": "tiny", "tiny_model_cache_dir": "tiny",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'pipeline.models' has no attribute {name!r}")
    return getattr(importlib.import_module(f"pipeline.models.{module}"), name)
