"""Model loading: the tiny offline Qwen2.5-VL and real UI-TARS-1.5 checkpoints through one loader."""

from pipeline.models.loader import (
    UITARS_MAX_PIXELS,
    UITARS_MIN_PIXELS,
    LoadedModel,
    ModelSpec,
    load_model,
    load_processor,
)
from pipeline.models.processor import Qwen2_5_VLImageOnlyProcessor
from pipeline.models.tiny import (
    TINY_MAX_PIXELS,
    TINY_MIN_PIXELS,
    build_tiny_model,
    ensure_tiny_model,
    tiny_model_cache_dir,
)

__all__ = [
    "TINY_MAX_PIXELS",
    "TINY_MIN_PIXELS",
    "UITARS_MAX_PIXELS",
    "UITARS_MIN_PIXELS",
    "LoadedModel",
    "ModelSpec",
    "Qwen2_5_VLImageOnlyProcessor",
    "build_tiny_model",
    "ensure_tiny_model",
    "load_model",
    "load_processor",
    "tiny_model_cache_dir",
]
