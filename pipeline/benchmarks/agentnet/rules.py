"""What both AgentNetBench protocols share: the predicted-action tuples, the UI-TARS click conversion,
the write similarity and the per-type dispatch of a pair score.

The official rules (``benchmark``) and the STaR-KV / GUI-KV driver's (``reference``) differ only in the
pieces they pass in: the click rule, the newline penalty, the terminate-status comparison.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pipeline.agent.actions import ParsedAction

WRITE_THRESHOLD = 0.8
CLICK_FAMILY = frozenset({"click", "doubleclick", "rightclick", "tripleclick", "moveto", "dragto"})
KEY_TYPES = frozenset({"press", "hotkey"})
# UI-TARS click-like actions -> their AgentNetBench click-family name
UITARS_CLICKS = {"click": "click", "long_press": "click", "left_double": "doubleclick",
                 "right_single": "rightclick"}

PredAction = tuple[str, Any]


def click_prediction(action: ParsedAction) -> list[PredAction]:
    """A click-like UI-TARS action (``UITARS_CLICKS``) as its AgentNetBench tuple; [] without a point."""
    if action.point is None:
        return []
    return [(UITARS_CLICKS[action.action_type], (float(action.point[0]), float(action.point[1])))]


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (two-row dynamic programme)."""
    if a == b:
        return 0
    if not a or not b:
        return len(a) + len(b)
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(cur[j - 1] + 1, prev[j] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def write_score(pred: str, gt: str, newline_penalty: float = 0.9) -> float:
    """Edit similarity of lowercased, stripped texts; × ``newline_penalty`` when exactly one side ends in a
    newline; ≥ 0.8 counts as 1."""
    penalty = newline_penalty if pred.endswith("\n") != gt.endswith("\n") else 1.0
    p, g = pred.lower().strip(), gt.lower().strip()
    if p == g:
        return penalty
    s = 1.0 - edit_distance(p, g) / max(len(p), len(g))
    s *= penalty
    return 1.0 if s >= WRITE_THRESHOLD else s / WRITE_THRESHOLD


def typed_score(pred: PredAction, gt: dict[str, Any], click: Callable[[Any, dict[str, Any]], float],
                write: Callable[[str, str], float], same_status: Callable[[Any, str], bool]) -> float:
    """One predicted tuple against one (normalised) GT action: 0 unless the types match, then ``click``,
    ``write`` or ``same_status`` by type; press / hotkey compare lowercase key sets; scroll: the type match
    suffices."""
    kind, value = pred
    if kind != gt["type"]:
        return 0.0
    if kind in CLICK_FAMILY:
        return click(value, gt)
    if kind == "write":
        return write(str(value), gt["text"])
    if kind in KEY_TYPES:
        return 1.0 if {str(k).lower() for k in value} == {k.lower() for k in gt["keys"]} else 0.0
    if kind == "terminate":
        return 1.0 if same_status(value, gt["status"]) else 0.0
    return 1.0
