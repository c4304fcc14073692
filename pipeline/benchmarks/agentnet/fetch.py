"""Where AgentNetBench comes from: the HF dataset repo ``xlangai/AgentNetBench`` (OpenCUA, MIT).

The loader reads ``<task_id>.json`` trajectories with their screenshots in ``images/`` beside them (the
layout of OpenCUA's ``evaluation/agentnetbench`` README). The repo's own file list could not be checked
from the machine this was written on (docs/benchmarks/data.md), so the fetch does not assume one: it
takes every file of the repo but the card, extracts each ``.zip`` into a folder named after it, then
looks for the folder holding trajectory JSON files and an ``images/`` folder (``test_data/`` first), and
prints that folder as the ``path``.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.benchmarks.common.fetch import FetchSpec, HubSource, extract_zip, missing_images, register_fetch

REPO_ID = "xlangai/AgentNetBench"


def _trajectories(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.json") if not p.name.startswith("mapping"))


def _prepare(target: Path) -> None:
    for archive in sorted(target.rglob("*.zip")):
        if not archive.name.startswith("."):
            extract_zip(archive, archive.with_suffix(""))


def _locate(target: Path) -> Path:
    """The folder with trajectories and ``images/``: ``test_data/`` if it is one, else the shallowest."""
    preferred = target / "test_data"
    candidates = [preferred] if preferred.is_dir() else []
    candidates += sorted((p.parent for p in target.rglob("images") if p.is_dir()), key=lambda p: len(p.parts))
    candidates.append(target)
    for folder in candidates:
        if _trajectories(folder) and (folder / "images").is_dir():
            return folder
    return target


def _verify(path: Path, spec: FetchSpec) -> list[str]:
    """Trajectory files exist and every step's ``image`` is under ``images/``."""
    files = _trajectories(path)
    if not files:
        return [f"agentnetbench: no <task_id>.json trajectories (with images/) found under {path}"]
    names: list[str] = []
    problems: list[str] = []
    for file in files:
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            problems.append(f"agentnetbench: {file} is not JSON ({exc})")
            continue
        steps = data.get("steps") if isinstance(data, dict) else None
        names += [s["image"] for s in steps or [] if isinstance(s, dict) and isinstance(s.get("image"), str)]
    return problems + missing_images(path / "images", names, "agentnetbench")


@register_fetch("agentnetbench")
def spec() -> FetchSpec:
    return FetchSpec(name="agentnetbench", source=HubSource(REPO_ID), include=("*",),
                     exclude=("README.md", ".gitattributes", ".DS_Store"), prepare=_prepare, locate=_locate,
                     verify=_verify)



