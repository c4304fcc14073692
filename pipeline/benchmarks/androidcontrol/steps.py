"""AndroidControl in the reference drivers' per-step JSON layout (the second input format).

The STaR-KV / GUI-KV ``androidcontrol_eval.py`` does not read the TFRecords: it reads one JSON list of
steps (``--dataset_file``, default ``500_steps.json``, in the ``--androidcontrol_test`` folder) whose
records are::

    {"episode_id": 1234, "step_index": 2, "goal": "...", "step_instruction": "...",
     "screenshot": "<path relative to the images folder>", "previous_actions": ["...", ...],
     "action": {"action_type": "click", "x": 540, "y": 1200},      # type_text, status, ... as in the data
     "accessibility_tree": [{"bbox_pixels": {"x_min", "x_max", "y_min", "y_max"}, "text", ...}, ...]}

next to ``android_control_test.json`` (the full test episodes, used by the driver only for history
screenshots) and the images. This module turns such a file into Episodes: records are grouped by
``episode_id`` (first appearance order) and sorted by ``step_index``, so without the episode index the
runner's teacher-forced history is the earlier *loaded* steps of the episode; with it
(``androidcontrol_context``) every step gets the driver's history frames, the skipped steps of a sparse
sample included (docs/benchmarks/parity.md).

The driver's ground-truth type ``type_text`` becomes ``input_text`` (text only) or ``type`` (with the
tap point ``x, y``), the two spellings of the TFRecord data. A record with a missing or malformed field is
an error step naming the file, the record index and the field.
"""

from __future__ import annotations

import math
from typing import Any

from pipeline.benchmarks.common.base import Episode, Step
from pipeline.benchmarks.common.storage import read_json, url_of

DEFAULT_STEPS_FILE = "500_steps.json"
EPISODE_INDEX_FILE = "android_control_test.json"


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return None


def driver_action(raw: Any) -> Any:
    """The driver's GT action with ``type_text`` renamed to ``type`` (has x, y) or ``input_text``."""
    if not isinstance(raw, dict) or raw.get("action_type") != "type_text":
        return raw
    kind = "type" if "x" in raw and "y" in raw else "input_text"
    return {**raw, "action_type": kind}


def a11y_nodes(raw: Any) -> tuple[list[dict[str, Any]] | None, str | None]:
    """Flatten the driver's ``accessibility_tree`` (nested lists of nodes) into ``[{box: [x1, y1, x2, y2],
    text, desc}]``; ``(None, None)`` when absent or empty, ``(None, problem)`` when malformed."""
    if raw is None or raw == []:
        return None, None
    if not isinstance(raw, list):
        return None, f"field 'accessibility_tree' is {type(raw).__name__}, expected a list of nodes"
    out: list[dict[str, Any]] = []
    stack = list(reversed(raw))
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(reversed(node))
            continue
        box = node.get("bbox_pixels") if isinstance(node, dict) else None
        keys = ("x_min", "y_min", "x_max", "y_max")
        if not isinstance(box, dict) or not all(isinstance(box.get(k), (int, float)) for k in keys):
            return None, "field 'accessibility_tree' has a node without numeric bbox_pixels x_min/y_min/x_max/y_max"
        out.append({"box": [float(box[k]) for k in keys], "text": str(node.get("text") or ""),
                    "desc": str(node.get("content_description") or "")})
    return out or None, None


def read_steps_file(fs: Any, file: str, holds: str = "step records") -> list[Any]:
    """The JSON list in ``file`` (the drivers' steps file, or their episode index); ValueError naming the
    file when it is not one. ``holds`` names what the list should hold, for the message."""
    data = read_json(fs, file, "androidcontrol")  # BenchmarkDataError is a ValueError
    if not isinstance(data, list):
        raise ValueError(f"androidcontrol: {url_of(fs, file)} holds a {type(data).__name__}, expected a list of {holds}")
    return data


def build_step_episodes(records: list[Any], *, file: str, images: tuple[Any, str], level: str,
                        validate_action: Any, image_size: Any, benchmark: str = "androidcontrol") -> list[Episode]:
    """Episodes from the driver's step records. ``images`` is ``(filesystem, folder)`` of the screenshots;
    ``validate_action(dict) -> (action | None, problem | None)`` and ``image_size(fs, path) -> (w, h) |
    str`` come from the TFRecord loader so both layouts check actions and images alike."""
    grouped: dict[str, list[tuple[int, Step]]] = {}
    goals: dict[str, str] = {}
    for index, raw in enumerate(records):
        where = f"{file} [{index}]"
        rec = raw if isinstance(raw, dict) else {}
        problems = [] if isinstance(raw, dict) else ["record is not a JSON object"]
        ep = rec.get("episode_id")
        episode_id = str(ep) if isinstance(ep, (int, str)) and not isinstance(ep, bool) and str(ep) else None
        if episode_id is None:
            problems.append(f"field 'episode_id' is missing or not an id (got {ep!r})")
            episode_id = f"record-{index}"
        step_index = _int(rec.get("step_index"))
        if step_index is None or step_index < 0:
            problems.append(f"field 'step_index' is missing or not a non-negative integer "
                            f"(got {rec.get('step_index')!r})")
            step_index = 0
        goal = rec.get("goal")
        if not isinstance(goal, str) or not goal.strip():
            problems.append("field 'goal' is missing or empty")
            goal = ""
        instruction = rec.get("step_instruction")
        if not isinstance(instruction, str):
            problems.append("field 'step_instruction' is missing or not a string")
            instruction = ""
        previous = rec.get("previous_actions", [])
        if not isinstance(previous, list) or not all(isinstance(p, str) for p in previous):
            problems.append("field 'previous_actions' is not a list of strings")
            previous = []
        image_path, size = "", None
        shot = rec.get("screenshot")
        if not isinstance(shot, str) or not shot:
            problems.append("field 'screenshot' is missing")
        else:
            ifs, folder = images
            full = shot if shot.startswith("/") else f"{folder}/{shot}"
            image_path = url_of(ifs, full)
            found = image_size(ifs, full)
            if isinstance(found, str):
                problems.append(f"image file {image_path} (field 'screenshot') {found}")
            else:
                size = list(found)
        action, problem = validate_action(driver_action(rec.get("action")))
        if problem:
            problems.append(f"field 'action' {problem}")
        nodes, problem = a11y_nodes(rec.get("accessibility_tree"))
        if problem:
            problems.append(problem)
        gt_point = None
        if action is not None and "x" in action and "y" in action and size:
            gt_point = [float(action["x"]) / size[0], float(action["y"]) / size[1]]
        raw_type = rec.get("action", {}).get("action_type") if isinstance(rec.get("action"), dict) else None
        meta = {
            "level": level, "goal": goal, "step_instruction": instruction, "gt_action": action,
            "gt_action_type": action["action_type"] if action else None, "gt_source_type": raw_type,
            "gt_point": gt_point, "image_size": size, "a11y": nodes, "episode_id": episode_id,
            "previous_actions": previous, "layout": "steps_json", "record": index,
        }
        step = Step(step_index=step_index, image_path=image_path,
                    instruction=goal if level == "high" else instruction, target={"action": action, "point": gt_point},
                    history_text=instruction, meta=meta,
                    error=f"{where}: {'; '.join(problems)}" if problems else None)
        grouped.setdefault(episode_id, []).append((step_index, step))
        goals.setdefault(episode_id, goal)
    episodes = []
    for episode_id, items in grouped.items():
        steps = [s for _, s in sorted(items, key=lambda t: t[0])]
        for prev, s in zip(steps, steps[1:]):
            if s.step_index == prev.step_index and s.error is None:  # a step is written exactly once
                s.error = (f"{file} [{s.meta['record']}]: field 'step_index' {s.step_index} repeats record "
                           f"{prev.meta['record']} of episode {episode_id}")
        for s in steps:
            s.meta["num_steps"] = len(steps)
        episodes.append(Episode(episode_id=episode_id, benchmark=benchmark, goal=goals[episode_id], steps=steps,
                                meta={"source": file, "level": level, "layout": "steps_json"}))
    return episodes
