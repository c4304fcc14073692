"""Geometry and text matching shared by the benchmark scorers.

Every scorer compares in normalised [0, 1] image space (x right, y down) because that is the space
``ParsedAction`` points live in; ground truth is converted here, once, from the benchmark's own units.
"""

from __future__ import annotations

import math
import string
from collections.abc import Sequence

Box = tuple[float, float, float, float]
Point = tuple[float, float]

# Slack for the inclusive edge test: a point that is on the edge in exact arithmetic must not miss
# because of one rounding step (e.g. 0.1 * 3 != 0.3).
EDGE_EPS = 1e-9


def xywh_to_xyxy(box: Sequence[float]) -> Box:
    """``[x, y, w, h]`` (ScreenSpot, AgentNetBench) -> ``[x1, y1, x2, y2]``."""
    x, y, w, h = (float(v) for v in box)
    return (x, y, x + w, y + h)


def xyxy_to_xywh(box: Sequence[float]) -> Box:
    """``[x1, y1, x2, y2]`` -> ``[x, y, w, h]``."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return (x1, y1, x2 - x1, y2 - y1)


def normalize_point(point: Sequence[float], image_size: tuple[int, int]) -> Point:
    """Pixel point -> [0, 1] of an image of ``(width, height)``."""
    w, h = image_size
    return (float(point[0]) / w, float(point[1]) / h)


def normalize_box(box: Sequence[float], image_size: tuple[int, int]) -> Box:
    """Pixel ``xyxy`` box -> [0, 1] of an image of ``(width, height)``."""
    w, h = image_size
    x1, y1, x2, y2 = (float(v) for v in box)
    return (x1 / w, y1 / h, x2 / w, y2 / h)


def point_in_box(point: Sequence[float], box: Sequence[float], eps: float = EDGE_EPS) -> bool:
    """Whether ``point`` lies inside the ``xyxy`` ``box``, edges included (official ScreenSpot rule)."""
    px, py = float(point[0]), float(point[1])
    x1, y1, x2, y2 = (float(v) for v in box)
    return x1 - eps <= px <= x2 + eps and y1 - eps <= py <= y2 + eps


def box_center(box: Sequence[float]) -> Point:
    """Centre of an ``xyxy`` box."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return ((x1 + x2) / 2.0, (y1 + y2) / 2.0)


def l2_distance(a: Sequence[float], b: Sequence[float]) -> float:
    """Euclidean distance between two points (use normalised points: distances are then comparable
    across resolutions, as in the AgentNetBench / GUI-Odyssey thresholds)."""
    return math.hypot(float(a[0]) - float(b[0]), float(a[1]) - float(b[1]))


def token_f1(pred: str, label: str, *, lowercase: bool = False, drop_punctuation: bool = False,
             both_empty: float = 1.0) -> float:
    """Token-set F1 of two whitespace-tokenised strings; the one rule behind every benchmark's variant.

    Parameters
    ----------
    pred, label : str
        The predicted and the ground-truth text.
    lowercase : bool
        Compare lower-cased tokens.
    drop_punctuation : bool
        Leave out tokens that are runs of ``string.punctuation`` (e.g. ``-`` or ``()``).
    both_empty : float
        The score when neither has a token (one empty side scores 0).
    """
    def tokens(text: str) -> set[str]:
        words = (text.lower() if lowercase else text).split()
        return {t for t in words if not (drop_punctuation and t in string.punctuation)}

    p, g = tokens(pred), tokens(label)
    if not p and not g:
        return both_empty
    tp = len(p & g)
    if tp == 0:
        return 0.0
    precision, recall = tp / len(p), tp / len(g)
    return 2 * precision * recall / (precision + recall)
