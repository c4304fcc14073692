"""Where ScreenSpot-Pro comes from: the HF dataset repo ``likaixin/ScreenSpot-Pro``.

The repo holds ``annotations/<app>_<os>.json`` and ``images/<app>_<os>/*.png`` (plus README.md,
annotate.html and macOS ``.DS_Store`` files, which are not fetched); the two folders are the loader's
layout as they are.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.benchmarks.common.fetch import FetchSpec, HubSource, missing_images, register_fetch

REPO_ID = "likaixin/ScreenSpot-Pro"


def _verify(path: Path, spec: FetchSpec) -> list[str]:
    """At least one annotation file, each a JSON list, and every ``img_filename`` under ``images/``."""
    files = sorted((path / "annotations").glob("*.json"))
    if not files:
        return [f"screenspot_pro: no annotations/*.json under {path}"]
    problems: list[str] = []
    names: list[str] = []
    for file in files:
        try:
            records = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            problems.append(f"screenspot_pro: {file} is not JSON ({exc})")
            continue
        if not isinstance(records, list):
            problems.append(f"screenspot_pro: {file} is not a JSON list")
            continue
        names += [r["img_filename"] for r in records if isinstance(r, dict) and isinstance(r.get("img_filename"), str)]
    return problems + missing_images(path / "images", names, "screenspot_pro")


@register_fetch("screenspot_pro")
def spec() -> FetchSpec:
    return FetchSpec(name="screenspot_pro", source=HubSource(REPO_ID),
                     include=("annotations/*.json", "images/*"), exclude=(".DS_Store",), verify=_verify)
