"""Model-folder files read without transformers: the shipped micro agent's folder and manifest.

Kept apart from ``micro`` and ``tiny`` (which build models) so the CLI and a job's validation can name and
check the micro agent in a fraction of a second.
"""

from __future__ import annotations

import json
from pathlib import Path

MICRO_DIR = Path(__file__).resolve().parent / "micro_agent"
MANIFEST_FILE = "micro_manifest.json"


def read_json_file(path: Path) -> dict | None:
    """A JSON object from ``path``; None when the file is missing or unreadable (an incomplete build)."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_manifest(model_dir: str | Path) -> dict | None:
    """The micro-agent manifest of a folder, or None if it is not a micro-agent folder."""
    return read_json_file(Path(model_dir) / MANIFEST_FILE)


def micro_model_dir() -> Path:
    """The shipped micro agent; a clear error if its weights are missing (e.g. an incomplete checkout)."""
    if read_manifest(MICRO_DIR) is None or not (MICRO_DIR / "model.safetensors").is_file():
        raise FileNotFoundError(f"micro agent weights not found in {MICRO_DIR}; rebuild them with "
                                "`starkv-eval train-micro`")
    return MICRO_DIR
