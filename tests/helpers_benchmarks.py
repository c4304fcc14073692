"""Test helpers for the benchmark scorers: result rows as the runner writes them, without running a model."""

from __future__ import annotations

import json
from collections.abc import Collection

from pipeline.agent.actions import ParsedAction


def box_click_rows(bench, episodes, miss: Collection[str] = ()) -> list[dict]:
    """Rows of one-step grounding episodes: error steps are not scored; the others get a click at the box
    centre, or at (0.99, 0.99) for the episode ids in ``miss``."""
    rows = []
    for e in episodes:
        step = e.steps[0]
        row = {"episode_id": e.episode_id, "correct": False, "error": step.error, "meta_json": json.dumps(step.meta)}
        if not step.error:
            x1, y1, x2, y2 = step.target["bbox"]
            w, h = step.meta["image_size"]
            point = (0.99, 0.99) if e.episode_id in miss else ((x1 + x2) / 2 / w, (y1 + y2) / 2 / h)
            row["correct"] = bench.score(step, ParsedAction("click", point=point), (w, h)).correct
        rows.append(row)
    return rows
