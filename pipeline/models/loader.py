"""One loader for the tiny offline model and a real UI-TARS-1.5-7B (Qwen2.5-VL) checkpoint.

Everything is loaded from local files only: a Hugging Face repo id (``org/name``) is first resolved to its
snapshot folder in the hub cache (``pipeline.models.hub``; a job does that once in its driver and hands the
actors the folder). The loader also reports the facts other parts need
(layer/head counts for KV budgets, vision token ids for the prompt layout, the effective min/max pixels
for smart_resize in the agent) so nobody has to dig through configs again.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration
from transformers.image_utils import SizeDict

from pipeline.models.files import micro_model_dir, read_manifest
from pipeline.models.hub import is_repo_id, resolve_repo, snapshot_repo
from pipeline.models.processor import Qwen2_5_VLImageOnlyProcessor
from pipeline.models.tiny import DEFAULT_SEED, ensure_tiny_model, read_marker

QWEN25VL_MODEL_TYPE = "qwen2_5_vl"
QWEN25VL_ARCHITECTURE = "Qwen2_5_VLForConditionalGeneration"

# Image limits UI-TARS-1.5 code (OSWorld, UI-TARS-desktop, GUI-KV) uses; coordinates depend on them.
UITARS_MIN_PIXELS = 100 * 28 * 28
UITARS_MAX_PIXELS = 16384 * 28 * 28

MICRO_PATH = "micro"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class ModelSpec:
    """What to load. ``path`` is a checkpoint folder, a Hugging Face repo id ``org/name`` (at ``revision``:
    branch, tag or commit sha; ``main`` when None), ``"tiny"`` / ``"tiny:<seed>"`` (random weights) or
    ``"micro"`` (the micro agent trained here, shipped in ``pipeline/models/micro_agent``)."""

    path: str
    revision: str | None = None
    dtype: str = "auto"
    attn_implementation: str | None = None
    device: str = "auto"
    min_pixels: int | None = None
    max_pixels: int | None = None


@dataclass
class LoadedModel:
    """A ready model + processor and the config facts the rest of the pipeline needs."""

    model: Qwen2_5_VLForConditionalGeneration
    processor: Any
    spec: ModelSpec
    device: torch.device
    dtype: torch.dtype
    name: str
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vision_start_id: int
    vision_end_id: int
    image_pad_id: int
    min_pixels: int
    max_pixels: int
    attn_implementation: str = "sdpa"


def parse_tiny_path(path: str) -> int | None:
    """Seed for ``"tiny"`` / ``"tiny:<seed>"``, None for any other path."""
    if path == "tiny":
        return DEFAULT_SEED
    if path.startswith("tiny:"):
        try:
            return int(path.split(":", 1)[1])
        except ValueError:
            raise ValueError(f"bad tiny model path {path!r}: expected 'tiny' or 'tiny:<int seed>'") from None
    return None


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}: use 'auto' or one of {sorted(_DTYPES)}")
    return _DTYPES[dtype]


def resolve_attn_implementation(attn: str | None, device: torch.device) -> str:
    if attn is not None:
        return attn
    if device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def check_qwen25vl_checkpoint(path: str | Path) -> dict:
    """Fail early, naming the path, unless ``path`` holds a Qwen2.5-VL ``config.json``."""
    folder = Path(path)
    if not folder.exists():
        raise FileNotFoundError(f"model path does not exist: {folder}")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"no config.json in model path {folder}")
    try:
        config = json.loads(config_file.read_text())
    except ValueError as err:
        raise ValueError(f"unreadable config.json in {folder}: {err}") from err
    model_type = config.get("model_type")
    architectures = config.get("architectures") or []
    if model_type != QWEN25VL_MODEL_TYPE and QWEN25VL_ARCHITECTURE not in architectures:
        raise ValueError(
            f"{folder} is not a Qwen2.5-VL checkpoint: found model_type={model_type!r}, "
            f"architectures={architectures!r} (expected model_type={QWEN25VL_MODEL_TYPE!r} / "
            f"{QWEN25VL_ARCHITECTURE})"
        )
    return config


def _has_image_processor(obj: Any) -> bool:
    return getattr(obj, "image_processor", None) is not None and getattr(obj, "tokenizer", None) is not None


def _saved_processor_class(path: str | Path) -> str | None:
    config_file = Path(path) / "processor_config.json"
    try:
        return json.loads(config_file.read_text()).get("processor_class")
    except (OSError, ValueError):
        return None


def load_processor(path: str | Path) -> Any:
    """The stock processor where it works (torchvision present), else the image-only one.

    ``AutoProcessor`` can fail (no torchvision) or silently return just the tokenizer (unknown
    ``processor_class``), so its result is type-checked.
    """
    if _saved_processor_class(path) == Qwen2_5_VLImageOnlyProcessor.__name__:
        # Our own class (tiny model): AutoProcessor does not know it and would return only the tokenizer.
        return Qwen2_5_VLImageOnlyProcessor.from_pretrained(str(path), local_files_only=True)
    try:
        processor = AutoProcessor.from_pretrained(str(path), local_files_only=True)
        if _has_image_processor(processor):
            return processor
    except Exception:  # noqa: BLE001 - any failure here means "use the fallback"
        pass
    return Qwen2_5_VLImageOnlyProcessor.from_pretrained(str(path), local_files_only=True)


def image_pixel_limits(image_processor: Any) -> tuple[int, int]:
    """(min_pixels, max_pixels) the image processor actually resizes with."""
    size = image_processor.size
    get = size.get if isinstance(size, dict) else lambda key: getattr(size, key, None)
    return int(get("shortest_edge")), int(get("longest_edge"))


def set_image_pixel_limits(image_processor: Any, min_pixels: int, max_pixels: int) -> None:
    """Override the resize limits on the processor itself (5.x resizes from ``size``; per-call
    min/max_pixels are deprecated)."""
    if min_pixels > max_pixels:
        raise ValueError(f"min_pixels {min_pixels} > max_pixels {max_pixels}")
    image_processor.size = SizeDict(shortest_edge=int(min_pixels), longest_edge=int(max_pixels))
    # Older processors also read these attributes; keep them in step where present.
    for attr, value in (("min_pixels", min_pixels), ("max_pixels", max_pixels)):
        if hasattr(image_processor, attr):
            setattr(image_processor, attr, int(value))


def load_model(spec: ModelSpec) -> LoadedModel:
    """Load model + processor from a local folder, a hub repo id (its cached or downloaded snapshot) or the
    tiny model, in eval mode on the device."""
    seed = parse_tiny_path(spec.path)
    if seed is not None:
        folder = ensure_tiny_model(seed=seed)
    elif spec.path == MICRO_PATH:
        folder = micro_model_dir()
    elif is_repo_id(spec.path):
        folder = resolve_repo(spec.path, spec.revision).folder
    else:
        folder = Path(spec.path).expanduser()
    check_qwen25vl_checkpoint(folder)
    marker = read_marker(folder)
    manifest = read_manifest(folder)
    tiny = marker is not None
    # Our own builds carry their image limits in the saved processor (the micro agent's coordinates
    # depend on them); a real checkpoint gets UI-TARS's.
    own_build = tiny or manifest is not None

    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device)
    attn = resolve_attn_implementation(spec.attn_implementation, device)
    kwargs: dict[str, Any] = dict(dtype=dtype, attn_implementation=attn, local_files_only=True)
    if device.type == "cuda":
        kwargs["device_map"] = str(device)  # load straight onto the GPU, not via host memory
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(folder), **kwargs)
    model = model.to(device).eval()

    processor = load_processor(folder)
    saved_min, saved_max = image_pixel_limits(processor.image_processor)
    default_min, default_max = (saved_min, saved_max) if own_build else (UITARS_MIN_PIXELS, UITARS_MAX_PIXELS)
    min_pixels = spec.min_pixels if spec.min_pixels is not None else default_min
    max_pixels = spec.max_pixels if spec.max_pixels is not None else default_max
    set_image_pixel_limits(processor.image_processor, min_pixels, max_pixels)

    config = model.config
    text = config.text_config
    num_heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // num_heads
    if tiny:
        name = f"tiny-qwen2.5-vl-seed{marker.get('seed', DEFAULT_SEED)}"
    elif manifest is not None:
        name = f"micro-agent-r{manifest.get('recipe_version', 0)}"
    elif snapshot_repo(folder) is not None:  # a hub snapshot: the repo's name, not the commit sha
        name = snapshot_repo(folder)[0].split("/")[-1]
    else:
        name = folder.resolve().name
    return LoadedModel(
        model=model,
        processor=processor,
        spec=spec,
        device=device,
        dtype=dtype,
        name=name,
        num_layers=text.num_hidden_layers,
        num_heads=num_heads,
        num_kv_heads=text.num_key_value_heads,
        head_dim=head_dim,
        vision_start_id=config.vision_start_token_id,
        vision_end_id=config.vision_end_token_id,
        image_pad_id=config.image_token_id,
        min_pixels=min_pixels,
        max_pixels=max_pixels,
        attn_implementation=attn,
    )


__all__ = [
    "UITARS_MAX_PIXELS",
    "UITARS_MIN_PIXELS",
    "LoadedModel",
    "ModelSpec",
    "check_qwen25vl_checkpoint",
    "image_pixel_limits",
    "load_model",
    "load_processor",
    "parse_tiny_path",
    "resolve_attn_implementation",
    "resolve_device",
    "resolve_dtype",
    "set_image_pixel_limits",
]
