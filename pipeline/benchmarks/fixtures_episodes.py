"""Tiny AndroidControl and AgentNetBench datasets in their real on-disk formats, for tests and demos.

AndroidControl: GZIP TFRecord shards named like the official ones (``android_control-0000k-of-0000n``)
holding ``tf.train.Example`` records with the official features, plus ``splits.json``.
AgentNetBench: ``<root>/<task_id>.json`` trajectories + ``<root>/images/<task_id>_<step_num>.png``, with a
``mapping_*.json`` file that loaders must skip. Screenshots are PIL-drawn: a flat background with a
rectangle at the GT target, at realistic sizes. Output is deterministic.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from pipeline.benchmarks.tfrecord import encode_example, write_records

_COLOURS = ((236, 239, 244), (250, 250, 250), (33, 37, 41), (224, 242, 241), (255, 243, 224))


def screenshot_png(size: tuple[int, int], marker: tuple[float, float] | None = None, shade: int = 0,
                   box: tuple[float, float, float, float] | None = None) -> bytes:
    """A PNG of ``size`` = (W, H): flat background, optional rectangle ``box`` (x1, y1, x2, y2 px) or a
    60-px square centred on ``marker`` (x, y px)."""
    w, h = size
    img = Image.new("RGB", (w, h), _COLOURS[shade % len(_COLOURS)])
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, 0, w - 1, max(1, h // 25)], fill=(60, 90, 160))  # status / title bar
    if box is None and marker is not None:
        box = (marker[0] - 30, marker[1] - 30, marker[0] + 30, marker[1] + 30)
    if box is not None:
        draw.rectangle([int(v) for v in box], fill=(30, 136, 229), outline=(13, 71, 161), width=3)
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)  # fast; size is irrelevant here
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------------
# AndroidControl
# ---------------------------------------------------------------------------------------------------

@dataclass
class ACEpisode:
    """One AndroidControl episode to write. ``actions`` items are dicts (JSON-encoded) or raw strings
    (written as-is, for bad-data tests). ``screenshots`` overrides the generated PNGs (default: one per
    action plus the final screen)."""

    episode_id: int
    goal: str
    actions: list[dict[str, Any] | str]
    step_instructions: list[str]
    size: tuple[int, int] = (1080, 2400)
    screenshots: list[bytes] | None = None
    extra_features: dict[str, list[Any]] = field(default_factory=dict)

    def screenshot_bytes(self) -> list[bytes]:
        if self.screenshots is not None:
            return list(self.screenshots)
        shots = []
        for i in range(len(self.actions) + 1):
            a = self.actions[i] if i < len(self.actions) else None
            marker = (a["x"], a["y"]) if isinstance(a, dict) and "x" in a and "y" in a else None
            shots.append(screenshot_png(self.size, marker=marker, shade=i))
        return shots


def androidcontrol_example(ep: ACEpisode) -> bytes:
    """The serialized ``tf.train.Example`` of an episode, with the official feature names."""
    shots = ep.screenshot_bytes()
    features: dict[str, list[Any]] = {
        "episode_id": [int(ep.episode_id)],
        "goal": [ep.goal.encode("utf-8")],
        "screenshots": shots,
        "screenshot_widths": [ep.size[0]] * len(shots),
        "screenshot_heights": [ep.size[1]] * len(shots),
        "accessibility_trees": [b""] * len(shots),  # AndroidAccessibilityForest protos; empty here
        "actions": [a if isinstance(a, str) else json.dumps(a) for a in ep.actions],
        "step_instructions": list(ep.step_instructions),
    }
    features.update(ep.extra_features)
    return encode_example(features)


def default_androidcontrol_episodes() -> list[ACEpisode]:
    """Three episodes (two in ``test``, one in ``train``) covering every action type."""
    return [
        ACEpisode(101, "Search for hello world in the Notes app", [
            {"action_type": "click", "x": 540, "y": 1200},
            {"action_type": "input_text", "text": "hello world"},
            {"action_type": "scroll", "direction": "down"},
            {"action_type": "navigate_back"},
        ], ["Tap the search bar", "Type hello world", "Scroll down to see results", "Go back"],
            size=(1080, 2400)),
        ACEpisode(102, "Open Settings and long press the Wi-Fi entry", [
            {"action_type": "open_app", "app_name": "Settings"},
            {"action_type": "long_press", "x": 100, "y": 200},
            {"action_type": "navigate_home"},
            {"action_type": "wait"},
        ], ["Open the Settings app", "Long press Wi-Fi", "Go to the home screen", "Wait for the screen"],
            size=(720, 1280)),
        ACEpisode(103, "Train-split episode", [{"action_type": "click", "x": 10, "y": 10}],
                  ["Tap the corner"], size=(540, 960)),
    ]


def write_androidcontrol(root: str | Path, episodes: list[ACEpisode] | None = None,
                         splits: dict[str, list[int]] | None = None, num_shards: int = 2) -> list[Path]:
    """Write ``episodes`` round-robin into ``num_shards`` GZIP TFRecord shards + ``splits.json``.

    Default splits: the first two default episodes in ``test``, the third in ``train``. Returns the shards.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    episodes = default_androidcontrol_episodes() if episodes is None else episodes
    if splits is None:
        ids = [e.episode_id for e in episodes]
        splits = {"train": ids[2:], "validation": [], "test": ids[:2]}
    (root / "splits.json").write_text(json.dumps(splits), encoding="utf-8")
    shards = []
    for k in range(num_shards):
        path = root / f"android_control-{k:05d}-of-{num_shards:05d}"
        write_records(path, [androidcontrol_example(e) for e in episodes[k::num_shards]], compression="gzip")
        shards.append(path)
    return shards


# ---------------------------------------------------------------------------------------------------
# AgentNetBench
# ---------------------------------------------------------------------------------------------------

def _click(kind: str, x: float, y: float, rel_bbox: list[float] | None, size: tuple[int, int]) -> dict[str, Any]:
    boxes = []
    if rel_bbox is not None:
        w, h = size
        abs_bbox = [rel_bbox[0] * w, rel_bbox[1] * h, rel_bbox[2] * w, rel_bbox[3] * h]
        boxes.append({"category_id": 1, "rel_bbox": rel_bbox, "abs_bbox": abs_bbox,
                      "area": abs_bbox[2] * abs_bbox[3]})
    return {"type": kind, "params": {"position": {"x": x, "y": y}}, "metadata": {"bboxes": boxes}}


def _step(task_id: str, step_num: int, gt: list[dict[str, Any]], instruction: str,
          alternatives: list[list[dict[str, Any]]] | None = None, milestone: bool = False) -> dict[str, Any]:
    return {
        "step_num": step_num, "image": f"{task_id}_{step_num}.png", "action": "", "milestone": milestone,
        "inner_monologue": {"observation": f"Screen {step_num}.", "thought": f"I should {instruction.lower()}.",
                            "low_level_instruction": instruction},
        "ground_truth_actions": gt, "alternative_options": alternatives or [],
    }


def default_agentnet_trajectories() -> list[dict[str, Any]]:
    """Two trajectories (1280×720 and 1920×1080): click with rel_bbox + alternative, write + press
    enter, terminate (non-contiguous step_num 1, 2, 4); hotkey, scroll, moveTo + dragTo."""
    a, b = "s_fixture_a", "s_fixture_b"
    sa, sb = (1280, 720), (1920, 1080)
    return [
        {"task_id": a, "user_task_description": "Search the web for cats",
         "high_level_task_description": "Search for cats in the browser",
         "steps": [
             _step(a, 1, [_click("click", 0.45, 0.325, [0.40, 0.30, 0.10, 0.05], sa)], "Click the search box",
                   alternatives=[[_click("doubleClick", 0.45, 0.325, [0.40, 0.30, 0.10, 0.05], sa)]],
                   milestone=True),
             _step(a, 2, [{"type": "write", "params": {"text": "cats"}},
                          {"type": "press", "params": {"keys": ["enter"]}}], "Type cats and press enter"),
             _step(a, 4, [{"type": "terminate", "params": {"status": "success"}}], "Finish the task"),
         ]},
        {"task_id": b, "user_task_description": "Copy the paragraph and scroll",
         "high_level_task_description": "Copy the first paragraph, scroll down and drag the file",
         "steps": [
             _step(b, 1, [{"type": "hotkey", "params": {"keys": ["ctrl", "c"]}}], "Copy the selection"),
             _step(b, 2, [{"type": "scroll", "params": {"position": {"x": 0.5, "y": 0.5}, "amount": -5}}],
                   "Scroll down"),
             _step(b, 3, [_click("moveTo", 0.2, 0.2, None, sb), _click("dragTo", 0.6, 0.6, None, sb)],
                   "Drag the file to the folder", milestone=True),
         ]},
    ]


def _image_target(step: dict[str, Any], size: tuple[int, int]) -> tuple[float, float, float, float] | None:
    for action in step.get("ground_truth_actions") or []:
        if not isinstance(action, dict):
            continue
        boxes = (action.get("metadata") or {}).get("bboxes") or []
        if boxes and isinstance(boxes[0], dict) and "rel_bbox" in boxes[0]:
            x, y, w, h = boxes[0]["rel_bbox"]
            return (x * size[0], y * size[1], (x + w) * size[0], (y + h) * size[1])
        pos = (action.get("params") or {}).get("position")
        if isinstance(pos, dict):
            cx, cy = pos["x"] * size[0], pos["y"] * size[1]
            return (cx - 20, cy - 20, cx + 20, cy + 20)
    return None


def write_agentnet(root: str | Path, trajectories: list[dict[str, Any]] | None = None,
                   sizes: dict[str, tuple[int, int]] | None = None, skip_images: set[str] | frozenset = frozenset(),
                   mapping_file: bool = True) -> list[Path]:
    """Write trajectory JSONs and their screenshots under ``root``; returns the trajectory files.

    ``sizes`` maps task_id to the screenshot size (default: fixture sizes, else 1280×720);
    ``skip_images`` lists image file names not to write (missing-image tests).
    """
    root = Path(root)
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    trajectories = default_agentnet_trajectories() if trajectories is None else trajectories
    sizes = {"s_fixture_a": (1280, 720), "s_fixture_b": (1920, 1080), **(sizes or {})}
    files = []
    for traj in trajectories:
        task_id = traj["task_id"]
        size = sizes.get(task_id, (1280, 720))
        for i, step in enumerate(traj.get("steps") or []):
            name = step.get("image") if isinstance(step, dict) else None
            if isinstance(name, str) and name not in skip_images:
                (images / name).write_bytes(screenshot_png(size, box=_image_target(step, size), shade=i))
        path = root / f"{task_id}.json"
        path.write_text(json.dumps(traj, indent=1), encoding="utf-8")
        files.append(path)
    if mapping_file:  # the reference driver skips files starting with "mapping"
        (root / "mapping_task_ids.json").write_text(json.dumps({t["task_id"]: t["task_id"] for t in trajectories}),
                                                    encoding="utf-8")
    return files
