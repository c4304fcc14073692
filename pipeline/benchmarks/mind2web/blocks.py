"""Multimodal-Mind2Web in the GUI-KV driver's "blocks" layout (the second input format of ``mind2web``).

GUI-KV's ``multimodal_mind2web_eval.py`` reads ``cross_{task,website,domain}_blocks.jsonl`` (one JSON object
a line)::

    {"annotation_id": "...", "action_uid": "...", "task": "<instruction>",
     "bbox": [[x, y, w, h], ...],            # target element box(es), pixels of a viewport screenshot
     "previous_actions": ["...", ...], "operation": "CLICK" | "TYPE" | "SELECT", "value": "...",
     "total_steps": 7}                        # actions of the whole task (missing steps count 0)

and the page of each step split into viewport screenshots
``<images>/cross_<split>/<annotation_id>_<action_uid>/<block>.png`` (``0.png`` the top). A step starts at
block 0 and the model may scroll between blocks (``pipeline.agent.views``: at most 5 calls). The driver
normalises the boxes and every call's point by block 0's size and never looks at which block is shown,
so a step is scored in block-0 pixels whatever block the model ended on (``meta["frame_size"]``). Its
prompt history is the record's own ``previous_actions`` (not the earlier loaded steps).

One Episode per ``annotation_id`` (file order), steps in file order. A record with a missing or
malformed field, or without ``0.png``, is an error step naming the file, the line and the field (the
driver skips a step without block 0 and pads it with 0: the same score).
"""

from __future__ import annotations

import json
import math
import posixpath
from typing import Any

from pipeline.agent.views import MAX_CALLS
from pipeline.benchmarks.common.base import BenchmarkDataError, Episode, Step
from pipeline.benchmarks.common.storage import url_of

# split option -> the name in the driver's files (cross_<name>_blocks.jsonl, cross_<name>/ images)
SPLIT_NAMES = {"test_task": "task", "test_website": "website", "test_domain": "domain",
               "task": "task", "website": "website", "domain": "domain"}
MAX_BLOCKS = 1000  # a guard against a runaway folder listing, far above any real page


def blocks_file_name(split: str) -> str:
    """``cross_<name>_blocks.jsonl`` for a split (``test_task`` or the driver's ``task``)."""
    if split not in SPLIT_NAMES:
        raise ValueError(f"mind2web: split {split!r} has no blocks file; allowed: {', '.join(SPLIT_NAMES)}")
    return f"cross_{SPLIT_NAMES[split]}_blocks.jsonl"


def split_of_file(file: str) -> str | None:
    """The driver's split name of a ``cross_<name>_blocks.jsonl`` path, None for another name."""
    base = posixpath.basename(file)
    if base.startswith("cross_") and base.endswith("_blocks.jsonl"):
        return base[len("cross_"):-len("_blocks.jsonl")]
    return None


def read_lines(fs: Any, file: str) -> list[tuple[int, Any]]:
    """``(line number, parsed object or the problem string)`` per non-blank line; unreadable file: error."""
    try:
        with fs.open(file, "rb") as fh:
            text = fh.read().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BenchmarkDataError(f"mind2web: {url_of(fs, file)} is not a readable text file: {exc}") from exc
    out: list[tuple[int, Any]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append((number, json.loads(line)))
        except ValueError as exc:
            out.append((number, f"line is not JSON ({exc})"))
    return out


def _boxes(raw: Any) -> list[list[float]] | None:
    """xyxy boxes from the driver's ``[[x, y, w, h], ...]``; None when malformed or empty."""
    if not isinstance(raw, list) or not raw:
        return None
    out = []
    for box in raw:
        if not (isinstance(box, list) and len(box) == 4 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box)):
            return None
        x, y, w, h = (float(v) for v in box)
        if w < 0 or h < 0:
            return None
        out.append([x, y, x + w, y + h])
    return out


def _blocks(fs: Any, folder: str) -> list[str]:
    """``0.png, 1.png, ...`` present in ``folder`` without a gap (the driver moves to block k+1 only
    when that file exists)."""
    paths = []
    for k in range(MAX_BLOCKS):
        path = f"{folder}/{k}.png"
        if not fs.isfile(path):
            break
        paths.append(path)
    return paths


def record_step(number: int, raw: Any, *, file: str, images: tuple[Any, str], split: str,
                image_size: Any) -> tuple[str, Step]:
    """``(annotation_id, Step)`` of one line; every problem is named in ``Step.error``."""
    rec = raw if isinstance(raw, dict) else {}
    problems = [] if isinstance(raw, dict) else [raw if isinstance(raw, str) else "line is not a JSON object"]

    def text(name: str, allow_empty: bool = False) -> str:
        value = rec.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and name in ("annotation_id", "action_uid"):
            value = str(value)
        if not isinstance(value, str) or (not allow_empty and not value.strip()):
            if isinstance(raw, dict):
                problems.append(f"field {name!r} is missing or not a{'' if allow_empty else ' non-empty'} string "
                                f"(got {value!r})"[:200])
            return ""
        return value

    task_id, action_uid, instruction = text("annotation_id"), text("action_uid"), text("task")
    op, value = text("operation").upper(), text("value", allow_empty=True)
    boxes = _boxes(rec.get("bbox"))
    if boxes is None and isinstance(raw, dict):
        problems.append("field 'bbox' is not a non-empty list of [x, y, w, h] numbers (w, h >= 0)")
    previous = rec.get("previous_actions")
    if not isinstance(previous, list) or not all(isinstance(p, str) for p in previous):
        if isinstance(raw, dict):
            problems.append("field 'previous_actions' is not a list of strings")
        previous = []
    total = rec.get("total_steps")
    if not isinstance(total, int) or isinstance(total, bool) or total < 1:
        if isinstance(raw, dict):
            problems.append(f"field 'total_steps' is not a positive integer (got {total!r})")
        total = None
    views: list[str] = []
    size = None
    if task_id and action_uid:
        ifs, root = images
        folder = f"{root}/cross_{split}/{task_id}_{action_uid}"
        views = [url_of(ifs, p) for p in _blocks(ifs, folder)]
        if not views:
            problems.append(f"image file {url_of(ifs, folder + '/0.png')} (block 0) does not exist")
        else:
            found = image_size(ifs, f"{folder}/0.png")
            if isinstance(found, str):
                problems.append(f"image file {views[0]} (block 0) {found}")
            else:
                size = [int(found[0]), int(found[1])]
    task_id = task_id or f"line{number}"
    meta = {"annotation_id": task_id, "action_uid": action_uid, "split": split, "op": op, "value": value,
            "image_size": size, "frame_size": size, "views": views, "max_calls": MAX_CALLS,
            "prompt_previous_actions": list(previous), "total_steps": total, "layout": "blocks",
            "line": number}
    step = Step(step_index=0, image_path=views[0] if views else "", instruction=instruction,
                target={"op": op, "value": value, "bboxes": boxes or [], "bbox": boxes[0] if boxes else None},
                history_text=f"{op} {value}".strip() if value else op, meta=meta,
                error=f"{file} line {number}: {'; '.join(problems)}" if problems else None)
    return task_id, step


def build_block_episodes(fs: Any, file: str, images: tuple[Any, str], split: str, image_size: Any,
                         benchmark: str = "mind2web") -> list[Episode]:
    """Episodes (one per task) from the driver's blocks JSONL ``file``; images under ``images``."""
    name = url_of(fs, file)
    tasks: dict[str, list[Step]] = {}
    goals: dict[str, str] = {}
    for number, raw in read_lines(fs, file):
        task_id, step = record_step(number, raw, file=name, images=images, split=split, image_size=image_size)
        tasks.setdefault(task_id, []).append(step)
        if step.instruction:
            goals.setdefault(task_id, step.instruction)
    if not tasks:
        raise BenchmarkDataError(f"mind2web: {name} holds no records")
    episodes = []
    for task_id, steps in tasks.items():
        for k, step in enumerate(steps):
            step.step_index = k
        episodes.append(Episode(episode_id=task_id, benchmark=benchmark, goal=goals.get(task_id, ""), steps=steps,
                                meta={"split": split, "layout": "blocks", "source": name}))
    return episodes


__all__ = ["SPLIT_NAMES", "blocks_file_name", "build_block_episodes", "split_of_file"]
