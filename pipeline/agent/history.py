"""Chat messages for one agent step: past screenshots and past action texts, then the current turn.

Layout (benchmarks.md 1.5: OSWorld ``uitars15_v1`` canonical, GUI-KV AgentNetBench ``--image_slots``)::

    [system]     config.system_prompt                         (omitted when None)
    for each past step, oldest -> newest:
      [user]       [<screenshot>]                             only for the last image_slots-1 past steps
      [assistant]  [<that step's text>]                       only for the last text_history past steps
    [user]       [<current screenshot>, <prompt text>]

Choices, and why:

* The prompt text rides with the current screenshot in the last user turn (GUI-KV / STaR-KV drivers), not
  in a text-only first user turn as OSWorld does: the reference numbers we reproduce come from that layout,
  and it keeps the task text next to the image it is about.
* Each past screenshot is its own image-only user turn followed by its assistant turn, so image spans stay
  in chronological order and the current screenshot is always the last span (what ``PromptLayout`` and
  the temporal / MI state of STaR-KV assume).
* Steps older than the image window survive only as text (OSWorld "always kept", GUI-KV keeps the last
  10). A past step outside both windows disappears entirely.
* The Qwen2.5-VL chat template inserts "You are a helpful assistant." whenever the first turn is not a
  system turn, so ``system_prompt=None`` renders the same as the default; it is there for templates that
  do not. (GUI-KV's AndroidControl driver sends "You are a helpful assistant. " with a trailing space.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union

if TYPE_CHECKING:
    from PIL.Image import Image

ImageLike = Union[str, "Image"]

HISTORY_SOURCES = ("ground_truth", "model")


@dataclass
class HistoryConfig:
    """How much history a step sees.

    ``image_slots``: screenshots in the prompt, current one included (5 = 4 past + current, the "five
    screenshots" setting). ``text_history``: how many of the most recent past steps keep their assistant
    text (<= 0: all). ``source``: where the past texts come from -- ``ground_truth`` (teacher-forced) or
    ``model`` (the model's own earlier outputs, GUI-KV AgentNetBench); see ``select_past_texts``.
    """

    image_slots: int = 5
    text_history: int = 10
    source: str = "ground_truth"
    system_prompt: str | None = "You are a helpful assistant."

    def __post_init__(self) -> None:
        if self.image_slots < 1:
            raise ValueError(f"image_slots must be >= 1 (the current screenshot), got {self.image_slots}")
        if self.source not in HISTORY_SOURCES:
            raise ValueError(f"unknown history source {self.source!r}; allowed: {', '.join(HISTORY_SOURCES)}")


def format_history_text(step_number: int, text: str, *, gui_kv_header: bool = False) -> str:
    """``"Step k:\\n<text>"`` as GUI-KV stores past outputs (k is 1-based).

    GUI-KV's AgentNetBench driver additionally prefixes ``"# Step k:\\n"`` when it builds the assistant turn,
    so the model sees both headers; ``gui_kv_header=True`` reproduces that exactly.
    """
    body = f"Step {step_number}:\n{text}"
    return f"# Step {step_number}:\n{body}" if gui_kv_header else body


def select_past_texts(
    ground_truth: Sequence[str], model_outputs: Sequence[str | None] | None, config: HistoryConfig
) -> list[str]:
    """The per-step history texts for ``config.source``.

    With ``source="model"`` a step without a stored model output (``None`` or missing) falls back to its
    ground-truth text, as the GUI-KV driver does.
    """
    if config.source == "ground_truth" or model_outputs is None:
        return list(ground_truth)
    return [
        model_outputs[i] if i < len(model_outputs) and model_outputs[i] is not None else gt
        for i, gt in enumerate(ground_truth)
    ]


def _turn(role: str, content: list[dict[str, Any]]) -> dict[str, Any]:
    return {"role": role, "content": content}


def build_messages(
    prompt_text: str,
    images: Sequence[ImageLike],
    past_texts: Sequence[str],
    config: HistoryConfig | None = None,
) -> tuple[list[dict[str, Any]], list[ImageLike]]:
    """HF chat messages for one step and the images in the order their placeholders appear.

    ``images``: past screenshots oldest first, the current screenshot last; ``past_texts``: one per past
    step, same order, so ``len(images) == len(past_texts) + 1``. Image parts are bare ``{"type": "image"}``
    placeholders; pass the returned image list to the processor.
    """
    config = config or HistoryConfig()
    if len(images) != len(past_texts) + 1:
        raise ValueError(
            f"need one image per past step plus the current one: got {len(images)} images "
            f"for {len(past_texts)} past texts"
        )
    n_past = len(past_texts)
    first_with_image = n_past - (config.image_slots - 1)
    first_with_text = n_past - config.text_history if config.text_history > 0 else 0

    messages: list[dict[str, Any]] = []
    ordered: list[ImageLike] = []
    if config.system_prompt is not None:
        messages.append(_turn("system", [{"type": "text", "text": config.system_prompt}]))
    for i, text in enumerate(past_texts):
        if i >= first_with_image:
            messages.append(_turn("user", [{"type": "image"}]))
            ordered.append(images[i])
        if i >= first_with_text:
            messages.append(_turn("assistant", [{"type": "text", "text": text}]))
    messages.append(_turn("user", [{"type": "image"}, {"type": "text", "text": prompt_text}]))
    ordered.append(images[-1])
    return messages, ordered
