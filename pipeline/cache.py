"""Where derived files live (tiny model, generated datasets, extracted screenshots): one rule for all."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root(override: str | os.PathLike | None = None) -> Path:
    """``override`` (e.g. a benchmark's ``cache_dir`` option), else ``$STARKV_CACHE``, else ``~/.cache/starkv-eval``."""
    value = override or os.environ.get("STARKV_CACHE") or "~/.cache/starkv-eval"
    return Path(str(value)).expanduser().resolve()
