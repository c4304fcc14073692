"""Where ScreenSpot-v2 comes from: the HF dataset repo ``OS-Copilot/ScreenSpot-v2`` (Apache-2.0).

The repo holds ``screenspot_{mobile,desktop,web}_v2.json`` and the images as ``screenspotv2_image.zip``
(about 1.33 GB). The fetch keeps the zip (so a re-run skips it) and extracts it once into
``screenspotv2_image/`` beside the JSON files, the folder the loader reads first, so no worker has to
extract it into its own cache.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.benchmarks.common.fetch import FetchSpec, HubSource, extract_zip, missing_images, register_fetch

REPO_ID = "OS-Copilot/ScreenSpot-v2"
SPLITS = ("mobile", "desktop", "web")
IMAGE_DIR = "screenspotv2_image"
IMAGE_ZIP = "screenspotv2_image.zip"


def _prepare(target: Path) -> None:
    extract_zip(target / IMAGE_ZIP, target / IMAGE_DIR)


def _verify(path: Path, spec: FetchSpec) -> list[str]:
    """Each JSON file is a list, and every ``img_filename`` it names is in the image folder."""
    problems: list[str] = []
    names: list[str] = []
    for split in SPLITS:
        file = path / f"screenspot_{split}_v2.json"
        try:
            records = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            problems.append(f"screenspot_v2: {file} is missing or not JSON ({exc})")
            continue
        if not isinstance(records, list) or not records:
            problems.append(f"screenspot_v2: {file} is not a non-empty JSON list")
            continue
        names += [r["img_filename"] for r in records if isinstance(r, dict) and isinstance(r.get("img_filename"), str)]
    return problems + missing_images(path / IMAGE_DIR, names, "screenspot_v2")


@register_fetch("screenspot_v2")
def spec() -> FetchSpec:
    return FetchSpec(name="screenspot_v2", source=HubSource(REPO_ID),
                     include=tuple(f"screenspot_{s}_v2.json" for s in SPLITS) + (IMAGE_ZIP,),
                     prepare=_prepare, verify=_verify)
