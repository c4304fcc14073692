"""Where each screenshot sits in the prompt: the token spans a compressor needs to treat images specially."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class PromptLayout:
    """Token spans ``[start, end)`` of each screenshot's ``<|image_pad|>`` run, oldest first.

    ``prompt_length`` is the number of prompt tokens L. The current (newest) screenshot is the last span.
    """

    image_spans: tuple[tuple[int, int], ...] = ()
    prompt_length: int = 0

    def __post_init__(self) -> None:
        prev_end = 0
        for start, end in self.image_spans:
            if not (prev_end <= start < end <= self.prompt_length):
                raise ValueError(f"image span ({start}, {end}) out of order or outside prompt of {self.prompt_length}")
            prev_end = end

    @property
    def num_images(self) -> int:
        return len(self.image_spans)

    @property
    def current_image(self) -> tuple[int, int] | None:
        return self.image_spans[-1] if self.image_spans else None

    def clipped_spans(self, limit: int) -> list[tuple[int, int]]:
        """Spans clipped to ``[0, limit)``, empty ones dropped (the compressor only scores past tokens)."""
        out = []
        for start, end in self.image_spans:
            s, e = min(start, limit), min(end, limit)
            if e > s:
                out.append((s, e))
        return out

    @classmethod
    def from_input_ids(cls, input_ids: Sequence[int], vision_start_id: int, vision_end_id: int) -> PromptLayout:
        """Spans between each ``<|vision_start|>`` and the following ``<|vision_end|>``, exclusive of both."""
        ids = list(input_ids)
        spans: list[tuple[int, int]] = []
        start = None
        for pos, tok in enumerate(ids):
            if tok == vision_start_id:
                start = pos + 1
            elif tok == vision_end_id and start is not None:
                if pos > start:
                    spans.append((start, pos))
                start = None
        return cls(image_spans=tuple(spans), prompt_length=len(ids))
