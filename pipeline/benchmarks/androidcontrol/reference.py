"""AndroidControl scored rule by rule like the STaR-KV / GUI-KV driver (``androidcontrol_eval.py``).

Used by ``AndroidControlBenchmark`` with option ``protocol: reference``. Every rule below is the driver's,
restated (the line numbers are those listed in the benchmarks spec appendix):

* screenshots wider than 1200 or taller than 2600 px are downscaled by ``min(1200/W, 2600/H)`` (sides
  truncated to integers) and the predicted point is mapped to those *resized* pixels, then compared with
  the ground truth in *original* pixels — so a perfect click on a 1440×3120 screen can miss;
* grounding steps (GT click / long_press / type with a point / input_text): click ≡ long_press; with an
  accessibility tree the target is the smallest node containing the GT point, hit when the predicted
  pixel lies inside it grown by ``max(8, 0.015·min(w, h))``; otherwise (or after a miss) the L∞ rule
  ``|dx|, |dy| ≤ max(72, 0.10·min(w, h))``. A predicted ``type`` never carries a point in the driver,
  so a GT ``type`` with a point scores 0; a GT ``input_text`` needs the lenient text match;
* GT open_app: a predicted ``open_app`` is correct whatever the app name; a click counts when the
  tree node under it names the app, or (fallback) when the app is named in the goal / step instruction /
  previous actions and the click is below the top 6 % and left of the right 3 %;
* GT navigate_back: ``press_back``; or a click on a node whose text says back / navigate up, in the
  top-left toolbar (x ≤ 0.16, y ≤ 0.46), or — no node under it — in the top-left 30 %×36 % or top-right
  (x ≥ 0.8, y ≤ 0.14) corners;
* ``press_home`` is never correct (the driver maps no action to navigate_home);
* scroll: same axis (up ≡ down, left ≡ right); finished → status: ``successful`` unless the content
  contains a failure word (unsuccessful, infeasible, impossible, cannot, can't, unable, fail, error),
  compared with ``goal_status``; wait: type match.
"""

from __future__ import annotations

import re
from typing import Any

from pipeline.agent.actions import ParsedAction

MAX_W, MAX_H = 1200, 2600
FAILURE_WORDS = ("unsuccessful", "infeasible", "impossible", "cannot", "can't", "unable", "fail", "error")
_AXIS = {"up": "v", "down": "v", "left": "h", "right": "h"}
_OP_TO_GT = {"press_back": "navigate_back", "wait": "wait", "finished": "status", "scroll": "scroll"}


def driver_size(width: int, height: int) -> tuple[int, int]:
    """The size the driver scores in: downscaled to fit 1200×2600 (integer sides), else unchanged."""
    if width > MAX_W or height > MAX_H:
        ratio = min(MAX_W / width, MAX_H / height)
        return int(width * ratio), int(height * ratio)
    return width, height


def typing_match(pred: Any, gt: str) -> bool:
    """The driver's typed-text match: NFKC, quotes dropped, case and whitespace folded; e-mails ignore
    spaces; a trailing newline is ignored; 4-8 digit numbers may differ in one digit; containment either
    way when the GT has at least 5 characters. An empty GT never matches."""
    import unicodedata

    def norm(s: Any) -> str:
        s = unicodedata.normalize("NFKC", str(s or ""))
        for ch in ("\u2019", "\u2018", "\u0060", "\u00b4", "'"):
            s = s.replace(ch, "")
        return " ".join(s.split()).strip().lower()

    if not gt:
        return False
    p, g = norm(pred), norm(gt)
    if p == g:
        return True
    if "@" in gt and "@" in str(pred or "") and re.sub(r"\s+", "", gt.lower()) == re.sub(r"\s+", "", str(pred).lower()):
        return True
    if g.isdigit() and p.isdigit() and len(g) == len(p) and 4 <= len(g) <= 8:
        if sum(a != b for a, b in zip(g, p)) <= 1:
            return True
    return len(g) >= 5 and bool(p) and (g in p or p in g)


def _smallest_node(nodes: list[dict[str, Any]] | None, x: float, y: float) -> dict[str, Any] | None:
    best, best_area = None, float("inf")
    for node in nodes or []:
        x1, y1, x2, y2 = node["box"]
        if x1 <= x <= x2 and y1 <= y <= y2 and (x2 - x1) * (y2 - y1) < best_area:
            best, best_area = node, (x2 - x1) * (y2 - y1)
    return best


def _near(px: float, py: float, gt: dict[str, Any], size: tuple[int, int]) -> bool:
    thr = max(72.0, 0.10 * min(size))
    return abs(px - float(gt["x"])) <= thr and abs(py - float(gt["y"])) <= thr


def _app_named(meta: dict[str, Any], app: str) -> bool:
    app = app.strip().lower()
    app = app[4:].strip() if app.startswith("the ") else app
    if not app:
        return False
    blob = " ".join([str(meta.get("goal", "")), str(meta.get("step_instruction", "")),
                     *map(str, meta.get("previous_actions") or [])]).lower()
    if app in blob:
        return True
    blob_alnum = re.sub(r"[^a-z0-9]+", " ", blob)
    app_alnum = re.sub(r"[^a-z0-9]+", " ", app).strip()
    if app_alnum and app_alnum in blob_alnum:
        return True
    return any(len(t) >= 3 and t in blob_alnum for t in app_alnum.split())


def _node_names_app(node: dict[str, Any], app: str) -> bool:
    text, desc, app = node["text"].lower(), node["desc"].lower(), app.lower()
    if app and ((text and app in text) or (desc and app in desc)):
        return True
    blob = f"{text} {desc}"
    bare = app[4:].strip() if app.startswith("the ") else app
    tokens = [t for t in re.sub(r"[^a-z0-9]+", " ", bare).split() if len(t) >= 3]
    if blob.strip() and len(tokens) >= 2 and all(t in blob for t in tokens):
        return True
    if blob.strip() and len(tokens) == 1 and len(tokens[0]) >= 4 and tokens[0] in blob:
        return True
    compact_app = re.sub(r"[^a-z0-9]+", "", app)
    return len(compact_app) >= 4 and compact_app in re.sub(r"[^a-z0-9]+", "", f"{text}{desc}")


def _says_back(node: dict[str, Any]) -> bool:
    blob = f"{node['text']} {node['desc']}".lower()
    return bool(blob.strip()) and ("navigate up" in blob or "navigate_up" in blob or "go back" in blob
                                   or "go_back" in blob or re.search(r"\bback\b", blob) is not None)


def _click_opens_app(point: tuple[float, float], size: tuple[int, int], nodes: Any, meta: dict[str, Any],
                     gt: dict[str, Any]) -> tuple[bool, str]:
    w, h = size
    px, py = point[0] * w, point[1] * h
    node = _smallest_node(nodes, px, py)
    if node is not None and _node_names_app(node, gt.get("app_name", "")):
        return True, ""
    ok = _app_named(meta, gt.get("app_name", "")) and py >= 0.06 * h and px <= 0.97 * w
    return ok, "" if ok else "click does not open the app"


def _click_goes_back(point: tuple[float, float], size: tuple[int, int], nodes: Any, meta: dict[str, Any],
                     gt: dict[str, Any]) -> tuple[bool, str]:
    w, h = size
    nx, ny = point
    node = _smallest_node(nodes, nx * w, ny * h) if nodes else None
    if node is not None and _says_back(node):
        return True, ""
    if nodes and 0 <= nx <= 0.16 and 0 <= ny <= 0.46:
        return True, ""
    ok = node is None and ((nx <= 0.30 and ny <= 0.36) or (nx >= 0.80 and ny <= 0.14))
    return ok, "" if ok else "click is not a back affordance"


# GT types a click may also stand for: GT type -> (the action that always matches it, the rule that judges a
# click with a point in the driver's pixels)
_CLICK_STANDS_FOR = {"open_app": ("open_app", _click_opens_app), "navigate_back": ("press_back", _click_goes_back)}


def status_of(content: str | None) -> str:
    """``finished(content)`` as the driver reads it: the two literal values, else failure words -> infeasible."""
    c = content or ""
    if c in ("successful", "infeasible"):
        return c
    return "infeasible" if any(w in c.lower() for w in FAILURE_WORDS) else "successful"


def score_reference(meta: dict[str, Any], gt: dict[str, Any], action: ParsedAction,
                    fields: dict[str, Any]) -> tuple[bool, str]:
    """(correct, reason) for one step under the driver's rules; fills ``fields`` (type_match, distance,
    driver_size)."""
    size = meta.get("image_size")
    w, h = driver_size(int(size[0]), int(size[1])) if size else (1, 1)
    fields["driver_size"] = [w, h]
    op, gt_type = action.action_type, gt["action_type"]
    point = action.point if op in ("click", "long_press") else None  # the driver reads no point for type
    nodes = meta.get("a11y")
    gt_kind = "type_text" if gt_type in ("type", "input_text") else gt_type
    pred_kind = "type_text" if op == "type" else op
    if op in ("click", "long_press", "type") and gt_kind in ("click", "long_press", "type_text"):
        ok_types = pred_kind == gt_kind or (pred_kind in ("click", "long_press") and gt_kind in ("click", "long_press"))
        fields["type_match"] = ok_types
        if not ok_types:
            return False, f"type {op} != {gt_type}"
        is_type = pred_kind == "type_text"
        if is_type and gt_type == "input_text":
            ok = typing_match(action.text, gt.get("text", ""))
            return ok, "" if ok else f"text {action.text!r} does not match {gt.get('text')!r}"
        if point is None:
            return False, f"{op} gives the driver no point (GT {gt_type} has one)"
        px, py = point[0] * w, point[1] * h
        fields["distance"] = max(abs(px - float(gt["x"])), abs(py - float(gt["y"])))
        target = _smallest_node(nodes, float(gt["x"]), float(gt["y"]))
        if target is not None:
            m = max(8.0, 0.015 * min(w, h))
            x1, y1, x2, y2 = target["box"]
            if x1 - m <= px <= x2 + m and y1 - m <= py <= y2 + m:
                return True, ""
        ok = _near(px, py, gt, (w, h))
        return ok, "" if ok else f"L-inf {fields['distance']:.1f}px from the GT point in {w}x{h} pixels"
    own_action, click_rule = _CLICK_STANDS_FOR.get(gt_type, (None, None))
    if click_rule is not None and op in ("click", own_action):
        fields["type_match"] = True
        if op == own_action:
            return True, ""
        if point is None:
            return False, "click without a point"
        return click_rule(point, (w, h), nodes, meta, gt)
    mapped = _OP_TO_GT.get(op, op)
    fields["type_match"] = mapped == gt_type
    if mapped != gt_type:
        return False, f"type {op} -> {mapped} != {gt_type}" + (" (the driver maps nothing to navigate_home)"
                                                             if op == "press_home" else "")
    if gt_type == "scroll":
        d = (action.direction or "").lower()
        ok = d in _AXIS and _AXIS[d] == _AXIS.get(str(gt.get("direction")), "")
        return ok, "" if ok else f"scroll axis of {d!r} != that of {gt.get('direction')!r}"
    if gt_type == "status":
        got = status_of(action.text)
        ok = str(gt.get("goal_status", "")) == got
        return ok, "" if ok else f"status {got!r} != {gt.get('goal_status')!r}"
    return True, ""  # wait, open_app (any name)
