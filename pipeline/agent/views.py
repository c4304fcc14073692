"""Steps whose page is split into viewport screenshots the model scrolls between (GUI-KV Mind2Web blocks).

The GUI-KV Multimodal-Mind2Web driver shows block 0 of a step's page and lets the model scroll: after a
``scroll`` the driver adds ``"Scroll <direction>."`` to the step's previous actions, moves one block down or
up when that block exists (it stays put at the first / last block and for any other direction) and calls
the model again on the new block, at most ``max_calls`` (5) calls in all. Any other output ends the step
and is scored; a step whose 5th call is still a scroll is scored on that scroll. This module holds those
rules and nothing else: ``pipeline.step.multicall`` runs the calls.

A loader declares such a step with ``meta["views"]`` (screenshot paths, block 0 first, ``image_path`` is
block 0), ``meta["max_calls"]`` and optionally ``meta["frame_size"]`` (the size the driver parses and
scores every call in: block 0's, read once before the loop).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pipeline.agent.parser import COORDINATE_ARGUMENTS, first_argument

if TYPE_CHECKING:
    from pipeline.agent.actions import ParsedAction
    from pipeline.benchmarks.common.base import Step

MAX_CALLS = 5  # GUI-KV multimodal_mind2web_eval.py: `max_steps = 5` model calls per step


@dataclass(frozen=True)
class ScrollViews:
    """The screenshots one step may show (block 0 first) and how many model calls it may take."""

    paths: tuple[str, ...]
    max_calls: int = MAX_CALLS

    @classmethod
    def of(cls, step: Step) -> ScrollViews | None:
        """The step's views, or None for an ordinary one-call step."""
        paths = step.meta.get("views")
        if not paths:
            return None
        return cls(paths=tuple(str(p) for p in paths), max_calls=int(step.meta.get("max_calls") or MAX_CALLS))


@dataclass
class ViewWalk:
    """Where one step's calls stand: the block shown, calls made, the scroll lines added to the history."""

    views: ScrollViews
    view: int = 0
    calls: int = 0
    lines: list[str] = field(default_factory=list)
    trace: list[dict[str, Any]] = field(default_factory=list)

    def record(self, action: ParsedAction) -> bool:
        """Count a call that produced ``action``; True when the model is to be called again.

        A scroll without a point ends the step (the driver reads the point as the first action input and
        its parse fails, leaving an empty prediction); a scroll whose first written argument is not a
        coordinate does not move (the driver then reads the point text as the direction)."""
        self.calls += 1
        self.trace.append({"view": self.view, "action_type": action.action_type, "direction": action.direction})
        if action.action_type != "scroll" or action.point is None:
            return False
        direction = action.direction or ""
        self.lines.append(f"Scroll {direction}.")
        readable = not action.raw or first_argument(action.raw) in COORDINATE_ARGUMENTS
        if readable and direction == "down" and self.view + 1 < len(self.views.paths):
            self.view += 1
        elif readable and direction == "up" and self.view > 0:
            self.view -= 1
        return self.calls < self.views.max_calls

    def call_step(self, step: Step) -> Step:
        """``step`` as the next call sees it: the current block's screenshot, the scroll lines so far."""
        meta = {**step.meta, "scroll_lines": list(self.lines)}
        return dataclasses.replace(step, image_path=self.views.paths[self.view], meta=meta)


__all__ = ["MAX_CALLS", "ScrollViews", "ViewWalk"]
