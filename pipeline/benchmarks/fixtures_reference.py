"""Tiny datasets in the reference drivers' own layouts (not the dataset authors'), for parity tests.

Multimodal-Mind2Web: GUI-KV's blocks layout (``cross_<split>_blocks.jsonl`` + block screenshots).
AndroidControl: the STaR-KV / GUI-KV driver's per-step JSON (``500_steps.json``) with relative screenshot
paths, an ``accessibility_tree`` on some steps and ``type_text`` ground truth, plus the
``android_control_test.json`` episode index the driver reads for history frames. Deterministic output.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.benchmarks.fixtures_episodes import screenshot_png


def _node(x1: int, y1: int, x2: int, y2: int, text: str = "", desc: str = "") -> dict[str, Any]:
    return {"bbox_pixels": {"x_min": x1, "y_min": y1, "x_max": x2, "y_max": y2}, "text": text,
            "content_description": desc}


def default_androidcontrol_steps() -> list[dict[str, Any]]:
    """Six step records of two episodes (1080×2400 and 1440×3120), listed out of order on purpose.

    Episode 501 (1080×2400): 0 click on a node, 1 type_text without a point, 2 open_app, 3 navigate_home.
    Episode 502 (1440×3120, above the driver's 1200×2600 cap): 0 click at (100, 100), 1 status.
    """
    tree = [_node(0, 0, 1080, 2400, "", "root"), [_node(400, 1100, 680, 1300, "Search"),
                                                 _node(0, 60, 150, 200, "", "Navigate up")]]
    return [
        {"episode_id": 501, "step_index": 1, "goal": "Search for hello in Notes",
         "step_instruction": "Type hello", "screenshot": "501/1.png",
         "previous_actions": ["Tap the search bar"], "action": {"action_type": "type_text", "text": "hello"},
         "accessibility_tree": []},
        {"episode_id": 501, "step_index": 0, "goal": "Search for hello in Notes",
         "step_instruction": "Tap the search bar", "screenshot": "501/0.png", "previous_actions": [],
         "action": {"action_type": "click", "x": 540, "y": 1200}, "accessibility_tree": tree},
        {"episode_id": 501, "step_index": 2, "goal": "Search for hello in Notes",
         "step_instruction": "Open the Notes app", "screenshot": "501/2.png",
         "previous_actions": ["Tap the search bar", "Type hello"],
         "action": {"action_type": "open_app", "app_name": "Notes"}, "accessibility_tree": []},
        {"episode_id": 501, "step_index": 3, "goal": "Search for hello in Notes",
         "step_instruction": "Go home", "screenshot": "501/3.png",
         "previous_actions": ["Tap the search bar", "Type hello", "Open the Notes app"],
         "action": {"action_type": "navigate_home"}},
        {"episode_id": 502, "step_index": 0, "goal": "Open the corner menu", "step_instruction": "Tap the corner",
         "screenshot": "502/0.png", "previous_actions": [], "action": {"action_type": "click", "x": 100, "y": 100}},
        {"episode_id": 502, "step_index": 1, "goal": "Open the corner menu", "step_instruction": "Report done",
         "screenshot": "502/1.png", "previous_actions": ["Tap the corner"],
         "action": {"action_type": "status", "goal_status": "successful"}},
    ]


def write_androidcontrol_steps(root: str | Path, records: list[dict[str, Any]] | None = None,
                               sizes: dict[str, tuple[int, int]] | None = None,
                               skip_images: frozenset[str] | set[str] = frozenset(),
                               file_name: str = "500_steps.json",
                               sample: set[tuple[int, int]] | None = None) -> Path:
    """Write ``records`` as ``<root>/<file_name>``, their screenshots under ``<root>/<episode>/<k>.png`` and
    ``android_control_test.json``; returns the steps file. ``sizes`` maps episode id to (W, H).

    ``sample``: ``(episode_id, step_index)`` pairs written to the steps file (the driver's sparse sample);
    every record still goes into ``android_control_test.json`` with its screenshot."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    records = default_androidcontrol_steps() if records is None else records
    sizes = {"501": (1080, 2400), "502": (1440, 3120), **(sizes or {})}
    episodes: dict[str, list[dict[str, Any]]] = {}

    def order(rec: dict[str, Any]) -> int:
        k = rec.get("step_index")
        return k if isinstance(k, int) else 0

    for rec in records:
        shot = rec.get("screenshot") if isinstance(rec, dict) else None
        if not isinstance(shot, str) or shot in skip_images:
            continue
        size = sizes.get(str(rec.get("episode_id")), (1080, 2400))
        action = rec.get("action") if isinstance(rec.get("action"), dict) else {}
        marker = (action["x"], action["y"]) if "x" in action and "y" in action else None
        (root / shot).parent.mkdir(parents=True, exist_ok=True)
        (root / shot).write_bytes(screenshot_png(size, marker=marker, shade=order(rec)))
        episodes.setdefault(str(rec.get("episode_id")), []).append(rec)
    index = []
    for eid, recs in episodes.items():
        recs = sorted(recs, key=order)
        index.append({"episode": {"episode_id": int(eid) if eid.isdigit() else eid,
                                  "screenshot_paths": [r.get("screenshot") for r in recs],
                                  "actions": [r.get("action") for r in recs],
                                  "step_instructions": [r.get("step_instruction") for r in recs]}})
    (root / "android_control_test.json").write_text(json.dumps(index), encoding="utf-8")
    if sample is not None:
        records = [r for r in records if isinstance(r, dict) and (r.get("episode_id"), r.get("step_index")) in sample]
    path = root / file_name
    path.write_text(json.dumps(records, indent=1), encoding="utf-8")
    return path


def default_mind2web_blocks() -> list[dict[str, Any]]:
    """Three records of two tasks in GUI-KV's blocks layout (boxes in block pixels, 400-px-wide blocks).

    Task ``t1`` (``total_steps`` 3, one record missing: padded with 0): ``a1`` CLICK, three blocks (the last
    one shorter); ``a2`` TYPE "new york", two blocks. Task ``t2``: ``b1`` SELECT "Economy", one block.
    """
    return [
        {"annotation_id": "t1", "action_uid": "a1", "task": "Find flights to New York",
         "bbox": [[100, 120, 80, 40]], "previous_actions": [], "operation": "CLICK", "value": "",
         "total_steps": 3},
        {"annotation_id": "t1", "action_uid": "a2", "task": "Find flights to New York",
         "bbox": [[50, 50, 200, 30]], "previous_actions": ["[button]  Flights -> CLICK"], "operation": "TYPE",
         "value": "new york", "total_steps": 3},
        {"annotation_id": "t2", "action_uid": "b1", "task": "Book an economy seat",
         "bbox": [[20, 200, 120, 30], [150, 200, 60, 30]], "previous_actions": ["[link]  Book -> CLICK"],
         "operation": "SELECT", "value": "Economy", "total_steps": 1},
    ]


DEFAULT_BLOCKS = {"t1_a1": [(400, 300), (400, 300), (400, 200)], "t1_a2": [(400, 300), (400, 300)],
                  "t2_b1": [(400, 300)]}


def write_mind2web_blocks(root: str | Path, records: list[dict[str, Any]] | None = None,
                          blocks: dict[str, list[tuple[int, int]]] | None = None, split: str = "task") -> Path:
    """Write ``records`` as ``<root>/cross_<split>_blocks.jsonl`` and each step's blocks as
    ``<root>/cross_<split>/<annotation_id>_<action_uid>/<k>.png``; returns the JSONL file.

    ``blocks`` maps ``"<annotation_id>_<action_uid>"`` to the (W, H) of each block (default: one 400×300
    block; an empty list writes none). Block 0 draws the target box, the others a shade of their own."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    records = default_mind2web_blocks() if records is None else records
    sizes = {**DEFAULT_BLOCKS, **(blocks or {})}
    lines = []
    for rec in records:
        lines.append(json.dumps(rec))
        if not isinstance(rec, dict):
            continue
        key = f"{rec.get('annotation_id')}_{rec.get('action_uid')}"
        folder = root / f"cross_{split}" / key
        boxes = rec.get("bbox") if isinstance(rec.get("bbox"), list) else []
        first = boxes[0] if boxes and isinstance(boxes[0], list) and len(boxes[0]) == 4 else None
        for k, size in enumerate(sizes.get(key, [(400, 300)])):
            folder.mkdir(parents=True, exist_ok=True)
            box = (first[0], first[1], first[0] + first[2], first[1] + first[3]) if first and k == 0 else None
            (folder / f"{k}.png").write_bytes(screenshot_png(size, box=box, shade=k))
    path = root / f"cross_{split}_blocks.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
