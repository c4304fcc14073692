"""AgentNetBench (OpenCUA): per-trajectory JSON files + screenshots, scored step by step.

Layout: ``<root>/<task_id>.json`` (files whose name starts with ``mapping`` are skipped, as in the
reference driver) and ``<root>/images/<image>`` (option ``images_dir`` to point elsewhere). Coordinates
are relative [0, 1]; GT boxes are ``rel_bbox = [x, y, w, h]``. Steps are teacher-forced: every step is
scored on its GT screenshot. Both folders may be local paths or fsspec URLs; remote screenshots stay
where they are (``Step.image_path`` is then the URL, which the runner opens with fsspec).

Scoring follows the STaR-KV / GUI-KV reference driver (OpenCUA's ``ActionEvaluator`` rules applied to the
first predicted vs the first GT action, after merging ``write`` + ``press enter`` into ``write(text\\n)``
on both sides):

* the types must match; click family (click, doubleclick, rightclick, tripleclick, moveto, dragto):
  1 if the point is inside any ``rel_bbox`` (edges included), else 1 if the distance d to the GT position
  is ≤ τ = 0.01·√2, else exp(−120·(d − τ));
* write: lowercase + strip; equal → 1 (0.9 when exactly one side ended in a newline); else
  s = 1 − editdistance / maxlen (×0.9 for the newline case), 1 if s ≥ 0.8 else s / 0.8;
* press / hotkey: equal lowercase key **sets**; scroll: 1 on type match; terminate: equal status;
* when the score is 0, the best score over ``alternative_options`` is taken.

``StepScore.score`` is that soft score; ``StepScore.correct`` is ``score >= 0.5`` (a click within about
0.02 of the target, a near-exact text) — the official metric is the mean soft score, ``correct`` only
feeds generic accuracy counters.

UI-TARS -> AgentNetBench conversion: click/long_press -> click, left_double -> doubleclick, right_single ->
rightclick, drag -> dragto(end point), hotkey -> hotkey(keys split on spaces), type -> write,
scroll -> scroll(+5 up/right, −5 down/left), press_back -> press([escape]), finished -> terminate
(success | failure); wait, press_home, open_app, call_user have no counterpart and score 0. The reference
driver rewrites hotkey 'ctrl' to 'control', which can never match a GT 'ctrl'; that quirk is off by
default and available as option ``ctrl_quirk=True`` for parity with published numbers.

Option ``protocol: reference`` replaces conversion, scoring and aggregation by the driver's own rules
(``agentnet_reference``; docs/benchmarks/parity.md lists each difference).
"""

from __future__ import annotations

import json
import math
import posixpath
from collections.abc import Iterable
from pathlib import PurePosixPath
from typing import Any

from pipeline.agent.actions import ParsedAction
from pipeline.benchmarks.agentnet.reference import aggregate_reference, driver_predictions, driver_score
from pipeline.benchmarks.agentnet.rules import (
    CLICK_FAMILY,
    KEY_TYPES,
    UITARS_CLICKS,
    PredAction,
    click_prediction,
    typed_score,
    write_score,
)
from pipeline.benchmarks.common.base import (
    BenchmarkDataError,
    DriverBenchmark,
    Episode,
    Step,
    StepScore,
    register_benchmark,
    row_value,
)
from pipeline.benchmarks.common.storage import file_under, open_data, open_fs, url_of

COORD_THRESHOLD = 0.01 * math.sqrt(2.0)
DECAY = 120.0
CORRECT_THRESHOLD = 0.5
GT_TYPES = CLICK_FAMILY | KEY_TYPES | {"write", "scroll", "terminate"}
ENTER_KEYS = frozenset({"enter", "return"})


# ---------------------------------------------------------------------------------------------------
# Ground truth
# ---------------------------------------------------------------------------------------------------

def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
        return None
    return float(v)


def normalize_gt_action(raw: Any) -> tuple[dict[str, Any] | None, str | None]:
    """One GT action in a compact form ``{type, point?, boxes?, text?, keys?, status?, amount?}``
    (type lowercased, boxes ``[x, y, w, h]`` relative) or ``(None, problem)``."""
    if not isinstance(raw, dict):
        return None, "is not an object"
    kind = raw.get("type")
    if not isinstance(kind, str) or kind.lower() not in GT_TYPES:
        return None, f"field 'type' is {kind!r}; expected one of {', '.join(sorted(GT_TYPES))}"
    kind = kind.lower()
    params = raw.get("params") if isinstance(raw.get("params"), dict) else {}
    out: dict[str, Any] = {"type": kind}
    if kind in CLICK_FAMILY:
        pos = params.get("position")
        x = _num(pos.get("x")) if isinstance(pos, dict) else None
        y = _num(pos.get("y")) if isinstance(pos, dict) else None
        if x is None or y is None:
            return None, f"{kind} needs numeric params.position.x and params.position.y"
        out["point"] = [x, y]
        boxes = []
        meta = raw.get("metadata") if isinstance(raw.get("metadata"), dict) else {}
        for b in meta.get("bboxes") or []:
            rel = b.get("rel_bbox") if isinstance(b, dict) else None
            if isinstance(rel, (list, tuple)) and len(rel) == 4 and all(_num(v) is not None for v in rel):
                boxes.append([float(v) for v in rel])
        out["boxes"] = boxes
    elif kind == "write":
        text = params.get("text", params.get("content"))
        if not isinstance(text, str):
            return None, "write needs a string params.text (or params.content)"
        out["text"] = text
    elif kind in KEY_TYPES:
        keys = params.get("keys", params.get("key"))
        if isinstance(keys, str):
            keys = [keys]
        if not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys):
            return None, f"{kind} needs a non-empty list of strings params.keys"
        out["keys"] = list(keys)
    elif kind == "scroll":
        out["amount"] = _num(params.get("amount"))
    elif kind == "terminate":
        status = params.get("status")
        if not isinstance(status, str):
            return None, "terminate needs a string params.status"
        out["status"] = status
    return out, None


def merge_gt_write_enter(actions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``write(t)`` followed by press/hotkey of exactly enter/return -> ``write(t + "\\n")``."""
    out: list[dict[str, Any]] = []
    i = 0
    while i < len(actions):
        a = actions[i]
        nxt = actions[i + 1] if i + 1 < len(actions) else None
        if (a["type"] == "write" and nxt is not None and nxt["type"] in KEY_TYPES
                and len(nxt["keys"]) == 1 and nxt["keys"][0].lower() in ENTER_KEYS):
            out.append({**a, "text": a["text"] + "\n"})
            i += 2
            continue
        out.append(a)
        i += 1
    return out


def merge_pred_write_enter(actions: list[PredAction]) -> list[PredAction]:
    """The same merge on predicted tuples."""
    out: list[PredAction] = []
    i = 0
    while i < len(actions):
        kind, value = actions[i]
        nxt = actions[i + 1] if i + 1 < len(actions) else None
        if (kind == "write" and nxt is not None and nxt[0] in KEY_TYPES and isinstance(nxt[1], list)
                and len(nxt[1]) == 1 and str(nxt[1][0]).lower() in ENTER_KEYS):
            out.append(("write", value + "\n"))
            i += 2
            continue
        out.append((kind, value))
        i += 1
    return out


def _gt_list(raw: Any, label: str, merge: bool = True) -> tuple[list[dict[str, Any]], str | None]:
    """The normalised GT actions of ``raw`` (write + enter merged unless ``merge`` is False)."""
    if not isinstance(raw, list) or not raw:
        return [], f"field '{label}' is missing or empty"
    out = []
    for i, item in enumerate(raw):
        action, problem = normalize_gt_action(item)
        if problem:
            return [], f"{label}[{i}] {problem}"
        out.append(action)
    return (merge_gt_write_enter(out) if merge else out), None


# ---------------------------------------------------------------------------------------------------
# Prediction conversion and pair scoring
# ---------------------------------------------------------------------------------------------------

def _status(text: str | None) -> str:
    t = (text or "").lower()
    return "failure" if any(w in t for w in ("fail", "infeasible", "impossible")) else "success"


def uitars_to_agentnet(action: ParsedAction, ctrl_quirk: bool = False) -> list[PredAction]:
    """The UI-TARS action as AgentNetBench tuples (relative coordinates); [] when it has no counterpart."""
    t = action.action_type
    if t in UITARS_CLICKS:
        return click_prediction(action)
    if t == "drag":
        end = action.end_point
        return [("dragto", (float(end[0]), float(end[1])))] if end is not None else []
    if t == "hotkey":
        keys = (action.key or "").lower().split()
        if ctrl_quirk:
            keys = ["control" if k == "ctrl" else k for k in keys]
        return [("hotkey", keys)] if keys else []
    if t == "type":
        text = action.text or ""
        if text.endswith("\n"):
            return merge_pred_write_enter([("write", text[:-1]), ("press", ["enter"])])
        return [("write", text)]
    if t == "scroll":
        return [("scroll", 5 if (action.direction or "").lower() in ("up", "right") else -5)]
    if t == "press_back":
        return [("press", ["escape"])]
    if t == "finished":
        return [("terminate", _status(action.text))]
    return []


def click_score(point: tuple[float, float], gt: dict[str, Any]) -> float:
    """1 inside any rel_bbox (edges included) or within τ of the GT point; else exp(−120·(d − τ))."""
    px, py = point
    for x, y, w, h in gt.get("boxes") or []:
        if x - 1e-9 <= px <= x + w + 1e-9 and y - 1e-9 <= py <= y + h + 1e-9:
            return 1.0
    d = math.hypot(px - gt["point"][0], py - gt["point"][1])
    return 1.0 if d <= COORD_THRESHOLD else math.exp(-DECAY * (d - COORD_THRESHOLD))


def score_pair(pred: PredAction, gt: dict[str, Any]) -> float:
    """Score one predicted tuple against one (normalised) GT action; terminate statuses compared
    case-insensitively."""
    return typed_score(pred, gt, click_score, write_score, lambda got, want: str(got).lower() == want.lower())


# ---------------------------------------------------------------------------------------------------
# Benchmark
# ---------------------------------------------------------------------------------------------------

def _str(v: Any) -> str:
    return v if isinstance(v, str) else ""


def _history_text(step: dict[str, Any]) -> str:
    mono = step.get("inner_monologue") if isinstance(step.get("inner_monologue"), dict) else {}
    for key in ("low_level_instruction", "thought", "observation"):
        if _str(mono.get(key)).strip():
            return mono[key].strip()
    return ""


@register_benchmark("agentnetbench")
class AgentNetBenchmark(DriverBenchmark):
    """AgentNetBench trajectories. ``path``: local folder or fsspec URL. Options: ``images_dir`` (local or
    URL, default ``<path>/images``), ``ctrl_quirk``, ``protocol`` (``official`` | ``reference``: the
    STaR-KV / GUI-KV driver's conversion, scoring and aggregation, ``agentnet_reference``)."""

    interval_metrics = ("accuracy", "overall_score", "average_trajectory_score", "milestone_score", "score_*")

    prompt_kind = "agentnet"
    # GUI-KV driver: --image_slots 5, the model's own earlier outputs as history ("# Step k:\nStep k:\n..."),
    # no system turn.
    default_history_source = "model"
    default_image_slots = 5
    history_header = "gui_kv"
    system_prompt = None

    def __init__(self, path: str, **options: Any) -> None:
        super().__init__(path, **options)
        self.ctrl_quirk = bool(options.get("ctrl_quirk", False))

    def _files(self) -> tuple[Any, str, list[str]]:
        """``(filesystem, root, trajectory files)`` for a local folder or fsspec URL."""
        fs, root = open_data(str(self.path), "agentnetbench",
                             "<task_id>.json trajectory files and an images/ folder", folder=True)
        files = sorted(str(info["name"]) for info in fs.ls(root, detail=True)
                       if info.get("type") == "file" and str(info["name"]).endswith(".json")
                       and not posixpath.basename(str(info["name"])).startswith("mapping"))
        if not files:
            raise BenchmarkDataError(f"agentnetbench: no trajectory files (*.json, not mapping*) in "
                                     f"{url_of(fs, root)}")
        return fs, root, files

    def _images(self, fs: Any, root: str) -> tuple[Any, str]:
        """``(filesystem, folder)`` of the screenshots: option ``images_dir`` or ``<path>/images``."""
        explicit = self.options.get("images_dir")
        return open_fs(str(explicit)) if explicit else (fs, f"{root}/images")

    def load(self) -> Iterable[Episode]:
        fs, root, files = self._files()
        images = self._images(fs, root)
        episodes = []
        for file in files:
            name, stem = url_of(fs, file), PurePosixPath(file).stem
            try:
                with fs.open(file, "rb") as fh:
                    data = json.loads(fh.read().decode("utf-8"))
            except (OSError, ValueError) as exc:
                episodes.append(Episode(episode_id=stem, benchmark=self.name, steps=[
                    Step(step_index=0, image_path="", error=f"{name}: not readable JSON: {exc}")]))
                continue
            episodes.append(self._episode(name, stem, data, images))
        return episodes

    def _episode(self, file: str, stem: str, data: Any, images: tuple[Any, str]) -> Episode:
        if not isinstance(data, dict):
            return Episode(episode_id=stem, benchmark=self.name, steps=[
                Step(step_index=0, image_path="", error=f"{file}: top level is not an object")])
        task_id = data.get("task_id") if isinstance(data.get("task_id"), str) else stem
        goal = _str(data.get("high_level_task_description")) or _str(data.get("user_task_description"))
        raw_steps = data.get("steps")
        if not isinstance(raw_steps, list) or not raw_steps:
            return Episode(episode_id=task_id, benchmark=self.name, goal=goal, steps=[
                Step(step_index=0, image_path="", error=f"{file}: field 'steps' is missing or empty")])
        steps = [self._step(file, i, s, goal, len(raw_steps), images) for i, s in enumerate(raw_steps)]
        return Episode(episode_id=task_id, benchmark=self.name, goal=goal, steps=steps,
                       meta={"source": file, "num_steps": len(steps)})

    def _step(self, file: str, index: int, raw: Any, goal: str, num_steps: int,
              images: tuple[Any, str]) -> Step:
        """One step; ``file`` names the trajectory in messages, ``images`` is ``(filesystem, folder)``."""
        where = f"{file}: steps[{index}]"
        raw = raw if isinstance(raw, dict) else {}
        problems = []
        image = raw.get("image")
        image_path = ""
        image_missing = False
        if not isinstance(image, str) or not image:
            problems.append("field 'image' is missing")
        else:
            image_path, found = file_under(images, image)
            if not found:
                image_missing = True  # the reference driver skips such a step (protocol reference)
                problems.append(f"image file {image_path} (field 'image') does not exist")
        gt, problem = _gt_list(raw.get("ground_truth_actions"), "ground_truth_actions")
        if problem:
            problems.append(problem)
        unmerged, _ = _gt_list(raw.get("ground_truth_actions"), "ground_truth_actions", merge=False)
        alternatives: list[list[dict[str, Any]]] = []
        alt_firsts: list[dict[str, Any]] = []
        dropped = []
        for j, option in enumerate(raw.get("alternative_options") or []):
            alt, problem = _gt_list(option, f"alternative_options[{j}]")
            if problem:
                dropped.append(problem)
            else:
                alternatives.append(alt)
                alt_firsts.append(_gt_list(option, "", merge=False)[0][0])
        meta = {
            "gt_actions": gt, "alternatives": alternatives, "gt_type": gt[0]["type"] if gt else None,
            "milestone": bool(raw.get("milestone", False)), "step_num": raw.get("step_num"),
            "low_level_instruction": _history_text(raw), "goal": goal, "num_steps": num_steps,
            "image_size": None, "dropped_alternatives": dropped, "image_missing": image_missing,
            # the reference driver scores the first *unmerged* GT action and each alternative's first one
            "gt_first": unmerged[0] if unmerged else None, "alt_firsts": alt_firsts,
        }
        return Step(step_index=index, image_path=image_path, instruction=goal,
                    target={"ground_truth_actions": gt, "alternative_options": alternatives},
                    history_text=_history_text(raw), meta=meta,
                    error=f"{where}: {'; '.join(problems)}" if problems else None)

    def score(self, step: Step, action: ParsedAction, image_size: tuple[int, int]) -> StepScore:
        meta = step.meta if isinstance(step.meta, dict) else {}
        gt = meta.get("gt_actions") or []
        fields: dict[str, Any] = {"gt_type": gt[0]["type"] if gt else None, "pred_type": None,
                                  "alternative_used": False, "milestone": bool(meta.get("milestone")),
                                  "has_prediction": False, "image_missing": bool(meta.get("image_missing"))}
        if step.error or not gt:
            return StepScore(False, 0.0, reason=step.error or "step has no ground-truth action", fields=fields)
        if action.error is not None or action.action_type == "invalid":
            return StepScore(False, 0.0, reason=action.error or "invalid action", fields=fields)
        if self.protocol == "reference":
            return self._score_reference(meta, action, fields)
        preds = uitars_to_agentnet(action, ctrl_quirk=self.ctrl_quirk)
        if not preds:
            return StepScore(False, 0.0, reason=f"{action.action_type} has no AgentNetBench counterpart",
                             fields=fields)
        first = preds[0]
        fields["pred_type"], fields["has_prediction"] = first[0], True
        score = score_pair(first, gt[0])
        reason = "" if score > 0 else f"{first[0]} vs GT {gt[0]['type']}: 0"
        if score == 0.0:
            for alt in meta.get("alternatives") or []:
                alt_score = score_pair(first, alt[0])
                if alt_score > score:
                    score, fields["alternative_used"], reason = alt_score, True, f"alternative {alt[0]['type']}"
        return StepScore(score >= CORRECT_THRESHOLD, score, reason=reason, fields=fields)

    def _score_reference(self, meta: dict[str, Any], action: ParsedAction, fields: dict[str, Any]) -> StepScore:
        preds = driver_predictions(action)
        gt_first = meta.get("gt_first")
        if not preds or not isinstance(gt_first, dict):
            return StepScore(False, 0.0, reason=f"{action.action_type}: no prediction for the reference driver",
                             fields=fields)
        first = preds[0]
        fields["pred_type"], fields["has_prediction"] = first[0], True
        score, fields["alternative_used"] = driver_score(first, gt_first, meta.get("alt_firsts") or [])
        reason = "" if score > 0 else f"{first[0]} vs GT {gt_first['type']}: 0"
        return StepScore(score >= CORRECT_THRESHOLD, score, reason=reason, fields=fields)

    def aggregate(self, rows: list[dict[str, Any]]) -> dict[str, float]:
        """``overall_score`` (mean step score, micro; error rows count 0), ``average_trajectory_score``,
        ``milestone_score``, ``score_<gt type>`` / ``count_<gt type>``, ``alternative_matches``,
        ``accuracy`` (share with correct), ``num_steps``, ``num_errors``. Protocol ``reference``: the
        driver's aggregation (``agentnet_reference.aggregate_reference``)."""
        n = len(rows)
        out: dict[str, float] = {"overall_score": 0.0, "average_trajectory_score": 0.0, "accuracy": 0.0,
                                 "num_steps": float(n),
                                 "num_errors": float(sum(1 for r in rows if r.get("error")))}
        if not n:
            return out

        def value(r: dict[str, Any]) -> float:
            s = r.get("score")
            return 0.0 if r.get("error") or not isinstance(s, (int, float)) else float(s)

        if self.protocol == "reference":
            return aggregate_reference(rows, value, lambda r, name: row_value(r, name))

        scores = [value(r) for r in rows]
        out["overall_score"] = sum(scores) / n
        out["accuracy"] = sum(1 for r in rows if r.get("correct") and not r.get("error")) / n
        by_traj: dict[str, list[float]] = {}
        by_type: dict[str, list[float]] = {}
        milestones = []
        alt = 0
        for r, s in zip(rows, scores):
            by_traj.setdefault(str(r.get("episode_id")), []).append(s)
            kind = row_value(r, "gt_type")
            if isinstance(kind, str):
                by_type.setdefault(kind, []).append(s)
            if row_value(r, "milestone"):
                milestones.append(s)
            alt += bool(row_value(r, "alternative_used"))
        out["average_trajectory_score"] = sum(sum(v) / len(v) for v in by_traj.values()) / len(by_traj)
        out["milestone_score"] = sum(milestones) / len(milestones) if milestones else 0.0
        out["num_milestones"] = float(len(milestones))
        out["alternative_matches"] = float(alt)
        for kind in sorted(by_type):
            out[f"score_{kind}"] = sum(by_type[kind]) / len(by_type[kind])
            out[f"count_{kind}"] = float(len(by_type[kind]))
        return out
