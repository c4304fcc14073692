"""Tiny datasets in the reference drivers' own layouts (not the dataset authors'), for parity tests.

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
                               file_name: str = "500_steps.json") -> Path:
    """Write ``records`` as ``<root>/<file_name>``, their screenshots under ``<root>/<episode>/<k>.png`` and
    ``android_control_test.json``; returns the steps file. ``sizes`` maps episode id to (W, H)."""
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
    path = root / file_name
    path.write_text(json.dumps(records, indent=1), encoding="utf-8")
    return path
