"""The prompt of one agent step, from the episode so far: shared by evaluation and micro-agent training.

Training builds its examples with exactly this code, so the micro agent sees at training time the very
chat messages, history screenshots and prompt text that ``EpisodeRunner`` feeds it at evaluation time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pipeline.agent.history import HistoryConfig, build_messages, format_history_text
from pipeline.agent.prompts import PREVIOUS_ACTIONS_KINDS, render_prompt

if TYPE_CHECKING:
    from PIL.Image import Image

    from pipeline.benchmarks.common.base import Benchmark, Episode, Step
    from pipeline.config import AgentConfig

# Vision placeholders in a model's own output would desynchronise the processor's image count when that
# output is fed back as history; they carry no meaning there and are removed.
_VISION_TOKENS = re.compile(r"<\|(?:vision_start|vision_end|vision_pad|image_pad|video_pad)\|>")


@dataclass
class StepHistory:
    """The past steps a prompt can show: screenshots inside the image window, texts inside the text window.

    ``images`` holds one entry per kept past step (None once it has left the image window); ``texts``
    holds ``(1-based step number, history text)`` for the same steps.
    """

    image_window: int
    text_window: int
    images: list[Image | None] = field(default_factory=list)
    texts: list[tuple[int, str]] = field(default_factory=list)

    @classmethod
    def for_agent(cls, agent: AgentConfig) -> StepHistory:
        text_window = agent.text_history if agent.text_history > 0 else 10**6
        return cls(image_window=agent.image_slots - 1, text_window=text_window)

    def add(self, step: Step, image: Image, model_output: str, source: str) -> None:
        """Record a step that ran: its screenshot and its text (the model's output or the ground truth)."""
        own = _VISION_TOKENS.sub("", model_output) if source == "model" else ""
        self.add_frame(step.step_index + 1, image, own if own.strip() else (step.history_text or step.instruction))

    def add_frame(self, number: int, image: Image, text: str) -> None:
        """Record a past step by its 1-based number, screenshot and text (also context-only frames)."""
        keep = max(self.image_window, self.text_window)
        self.images = [*self.images, image][-keep:]
        self.texts = [*self.texts, (number, text)][-keep:]
        first_image = len(self.images) - self.image_window
        self.images = [im if i >= first_image else None for i, im in enumerate(self.images)]


def context_history(agent: AgentConfig, step: Step) -> StepHistory | None:
    """The history of a step that carries context-only frames (``meta["context"]``: earlier steps of its
    episode that are not run, e.g. AndroidControl's ``android_control_test.json``), else None."""
    frames = step.meta.get("context")
    if frames is None:
        return None
    from pipeline.benchmarks.common.storage import open_screenshot

    history = StepHistory.for_agent(agent)
    for frame in frames:
        history.add_frame(int(frame["step_index"]) + 1, open_screenshot(frame["image_path"]), frame["text"])
    return history


def step_messages(benchmark: Benchmark, agent: AgentConfig, history_cfg: HistoryConfig, episode: Episode,
                  step: Step, image: Image, history: StepHistory) -> tuple[list[dict[str, Any]], list[Any]]:
    """Chat messages and images (in placeholder order) for ``step``; ``agent`` is already resolved.

    A step with context frames (``context_history``) shows those as its past steps instead of the
    episode's earlier run steps, when past steps are shown as screenshots (image_slots > 1)."""
    kind = benchmark.prompt_kind
    instruction = step.instruction or episode.goal
    # With one screenshot, kinds that have a "## Previous Actions" section get the past texts there
    # (GUI-KV AndroidControl default mode, Mind2Web); otherwise each past step is an assistant turn
    # "Step k:\n<text>" after its screenshot when that is inside the image window (build_messages).
    in_prompt = kind in PREVIOUS_ACTIONS_KINDS and agent.image_slots <= 1
    if not in_prompt:
        history = context_history(agent, step) or history
    prev = [text for _, text in history.texts][-history.text_window:] if in_prompt else None
    own = step.meta.get("prompt_previous_actions")  # a record's own history (Mind2Web blocks layout)
    if in_prompt and isinstance(own, list):
        prev = list(own)
    if step.meta.get("scroll_lines"):  # "Scroll down." per scroll so far in this step (pipeline.agent.views)
        prev = [*(prev or []), *step.meta["scroll_lines"]]
    goal = benchmark.prompt_goal(episode, step)
    prompt = render_prompt(kind, instruction, family=agent.prompt_family, language=agent.language,
                           goal=goal, previous_actions=prev)
    gui_kv = benchmark.history_header == "gui_kv"
    history_images = [] if in_prompt else list(history.images)
    texts = [] if in_prompt else [format_history_text(k, t, gui_kv_header=gui_kv) for k, t in history.texts]
    return build_messages(prompt, [*history_images, image], texts, history_cfg)


__all__ = ["StepHistory", "step_messages"]
