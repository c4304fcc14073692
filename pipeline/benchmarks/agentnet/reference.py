"""AgentNetBench scored like the STaR-KV / GUI-KV driver (``agentnetbench_eval.py``), rule by rule.

Used by ``AgentNetBenchmark`` with option ``protocol: reference``. The differences from the project's
default (OpenCUA's rules on the first action) are the driver's:

* conversion: ``finished`` is a success only when its content contains "success" (``finished()`` and
  any other wording are failures); ``type`` with an empty content, ``scroll`` without a point, ``drag``
  without both points, ``wait`` / ``press_home`` / ``open_app`` / ``call_user`` give **no prediction**;
  ``type('x\\n')`` becomes ``write('x')`` followed by ``press(enter)`` and only the write is scored;
  hotkey keys have every ``ctrl`` substring rewritten to ``control``;
* ground truth is not merged (``write`` + ``press enter`` stay two actions; the first is scored);
* write: both sides lower-cased and stripped *before* the newline test, so no 0.9 newline penalty ever
  applies; terminate: statuses compared exactly;
* alternatives: on a type mismatch the first alternative whose first action has the predicted type is
  scored; a final 0 is then replaced by the best alternative;
* aggregation (``aggregate_reference``): a step with a missing screenshot is skipped (not in the overall
  mean) but stays in its trajectory's denominator; per-type and milestone means use only steps that had a
  prediction.
"""

from __future__ import annotations

import math
from typing import Any

from pipeline.agent.actions import ParsedAction
from pipeline.benchmarks.agentnet.rules import (
    UITARS_CLICKS,
    PredAction,
    click_prediction,
    typed_score,
    write_score,
)


def driver_predictions(action: ParsedAction) -> list[PredAction]:
    """The UI-TARS action as the driver's AgentNetBench tuples; [] = no prediction."""
    t = action.action_type
    if t in UITARS_CLICKS:
        return click_prediction(action)
    if t == "drag":
        if action.point is None or action.end_point is None:
            return []
        return [("dragto", (float(action.end_point[0]), float(action.end_point[1])))]
    if t == "hotkey":
        keys = [k.replace("ctrl", "control") for k in (action.key or "").lower().split()]
        return [("hotkey", keys)] if keys else []
    if t == "type":
        text = action.text or ""
        if not text:
            return []
        return [("write", text[:-1]), ("press", ["enter"])] if text.endswith("\n") else [("write", text)]
    if t == "scroll":
        if action.point is None or not action.direction:
            return []
        return [("scroll", 5 if action.direction in ("up", "right") else -5)]
    if t == "press_back":
        return [("press", ["escape"])]
    if t == "finished":
        return [("terminate", "success" if "success" in (action.text or "").lower() else "failure")]
    return []


def click_score(point: tuple[float, float], gt: dict[str, Any]) -> float:
    """1 inside any box (exact edges) or within τ = 0.01·√2 of the GT point; else exp(−120·(d − τ))."""
    px, py = point
    for x, y, w, h in gt.get("boxes") or []:
        if x <= px <= x + w and y <= py <= y + h:
            return 1.0
    d = math.hypot(px - gt["point"][0], py - gt["point"][1])
    tau = 0.01 * math.sqrt(2.0)
    return 1.0 if d <= tau else math.exp(-120.0 * (d - tau))


def driver_write_score(pred: str, gt: str) -> float:
    """Stripped, lower-cased texts: equal -> 1; else s = 1 - edit/maxlen, 1 if s >= 0.8 else s / 0.8 (the
    driver strips before its newline test, so no newline penalty ever applies)."""
    return write_score(pred, gt, newline_penalty=1.0)


def pair_score(pred: PredAction, gt: dict[str, Any]) -> float:
    """One predicted tuple against one GT action in the loader's form (``normalize_gt_action``, not merged);
    terminate statuses compared exactly."""
    return typed_score(pred, gt, click_score, driver_write_score, lambda got, want: got == want)


def driver_score(pred: PredAction, gt: dict[str, Any], alternatives: list[dict[str, Any]]) -> tuple[float, bool]:
    """(score, alternative used) of the first prediction against the first GT action; ``alternatives``
    holds the first action of each alternative option."""

    def evaluate(candidate: dict[str, Any], alts: list[dict[str, Any]]) -> float:
        if pred[0] != candidate["type"]:
            return next((pair_score(pred, alt) for alt in alts if pred[0] == alt["type"]), 0.0)
        return pair_score(pred, candidate)

    score, used = evaluate(gt, alternatives), False
    if score == 0.0:
        for alt in alternatives:
            s = evaluate(alt, [])
            if s > score:
                score, used = s, True
    return score, used


def aggregate_reference(rows: list[dict[str, Any]], value: Any, field: Any) -> dict[str, float]:
    """The driver's summary: ``value(row)`` is a row's score, ``field(row, name)`` reads a score field."""
    kept = [r for r in rows if not field(r, "image_missing")]
    out: dict[str, float] = {"num_steps": float(len(rows)), "num_skipped": float(len(rows) - len(kept)),
                             "num_errors": float(sum(1 for r in rows if r.get("error")))}
    out["overall_score"] = sum(value(r) for r in kept) / len(kept) if kept else 0.0
    out["accuracy"] = (sum(1 for r in kept if r.get("correct") and not r.get("error")) / len(kept)) if kept else 0.0
    by_traj: dict[str, list[float]] = {}
    for r in rows:  # skipped steps stay in their trajectory's denominator with 0
        by_traj.setdefault(str(r.get("episode_id")), []).append(0.0 if field(r, "image_missing") else value(r))
    out["average_trajectory_score"] = (sum(sum(v) / len(v) for v in by_traj.values()) / len(by_traj)) if by_traj else 0.0
    predicted = [r for r in kept if field(r, "has_prediction") and not r.get("error")]
    milestones = [value(r) for r in predicted if field(r, "milestone")]
    out["milestone_score"] = sum(milestones) / len(milestones) if milestones else 0.0
    out["num_milestones"] = float(len(milestones))
    out["alternative_matches"] = float(sum(bool(field(r, "alternative_used")) for r in kept))
    by_type: dict[str, list[float]] = {}
    for r in predicted:
        kind = field(r, "gt_type")
        if isinstance(kind, str):
            by_type.setdefault(kind, []).append(value(r))
    for kind in sorted(by_type):
        out[f"score_{kind}"] = sum(by_type[kind]) / len(by_type[kind])
        out[f"count_{kind}"] = float(len(by_type[kind]))
    return out
