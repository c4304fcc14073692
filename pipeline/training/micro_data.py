"""Training examples for the micro agent: launcher episodes rendered through the evaluation's own prompt code.

Every example is one step of a generated episode, built by ``pipeline.step.prompt`` exactly as
``EpisodeRunner`` builds it at evaluation time (chat template, UI-TARS computer prompt, past screenshots
and "Step k:" history turns, teacher-forced history), followed by the answer the agent must write.

Training episodes come from the random stream ``micro-train:<seed>:<i>``; evaluation datasets come from
``starkv-synthetic:launcher:<int seed>:<i>`` (``generate_synthetic``). The two never produce the same
episode stream, so evaluation never sees a training episode.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from pipeline.agent.history import HistoryConfig
from pipeline.benchmarks.common.base import Episode, Step
from pipeline.benchmarks.synthetic.benchmark import LauncherBenchmark
from pipeline.benchmarks.synthetic.launcher import (
    COLOURS,
    GRID,
    ICONS_PER_SCREEN,
    LauncherIcon,
    LauncherStep,
    launcher_episode,
    launcher_goal,
)
from pipeline.config import AgentConfig
from pipeline.step.prompt import StepHistory, step_messages

TRAIN_STREAM = "micro-train"
IGNORE_INDEX = -100
#: Colour classes of the auxiliary colour loss: the launcher's colours in their order, then "no icon".
COLOUR_CLASSES = (*COLOURS, "none")
NO_ICON = len(COLOURS)


@dataclass
class Example:
    """One step as model inputs: prompt + answer ids, labels only on the answer (and its end token)."""

    input_ids: torch.Tensor  # (L,)
    labels: torch.Tensor  # (L,)
    pixel_values: torch.Tensor
    image_grid_thw: torch.Tensor
    mm_token_type_ids: torch.Tensor | None
    kind: str
    answer: str
    target_token: int = -1  # position of the target icon's image token in input_ids (-1: unknown)
    colour_token: int = -1  # position of the instruction's colour word in input_ids (-1: unknown)
    image_colours: torch.Tensor | None = None  # (L,) colour class of every image token, IGNORE_INDEX elsewhere
    steps_back: int = 0  # 0: the target is on the current screen; k: on the screen k steps earlier


def screen_colour_labels(icons: tuple[LauncherIcon, ...] | list[LauncherIcon]) -> list[int]:
    """Colour class (index in ``COLOUR_CLASSES``) of each of a launcher screen's ``GRID * GRID`` language-model
    image tokens, row-major: one icon = one 28-px cell = one merged token, so the token of cell (row, col)
    is ``row * GRID + col``; cells without an icon are ``NO_ICON``."""
    names = list(COLOURS)
    labels = [NO_ICON] * (GRID * GRID)
    for icon in icons:
        labels[icon.row * GRID + icon.col] = names.index(icon.colour)
    return labels


def _training_episode(rng: random.Random, num_steps: int, icons_per_screen: int, recall_probability: float,
                      recall_back: tuple[float, ...] | None) -> Iterator[LauncherStep]:
    """``launcher_episode`` with another recall probability and, with ``recall_back``, the recalled target's
    distance drawn by weight; with ``recall_back`` None and the generator's probability it is the
    generator's episode."""
    return launcher_episode(rng, num_steps, icons_per_screen=icons_per_screen, recall_probability=recall_probability,
                            recall_back=recall_back)


def episode_prompts(rng: random.Random, min_steps: int, max_steps: int, agent: AgentConfig,
                    processor: Any, icons_per_screen: int = ICONS_PER_SCREEN) -> Iterator[tuple[str, list[Any], str, str]]:
    """``(chat text, images, answer, step kind)`` per step of one launcher episode drawn from ``rng``."""
    for text, images, step in episode_steps(rng, min_steps, max_steps, agent, processor, icons_per_screen):
        yield text, images, step.answer, step.kind


def episode_steps(rng: random.Random, min_steps: int, max_steps: int, agent: AgentConfig, processor: Any,
                  icons_per_screen: int = ICONS_PER_SCREEN, recall_probability: float | None = None,
                  recall_back: tuple[float, ...] | None = None,
                  ) -> Iterator[tuple[str, list[Any], LauncherStep]]:
    """``(chat text, images, generated step)`` per step of one launcher episode drawn from ``rng``.

    ``recall_probability`` / ``recall_back``: see ``_training_episode`` (None: the generator's own draw).
    The prompt's images are the last ``len(images)`` generated screens, oldest first (``step_icons``)."""
    benchmark = LauncherBenchmark
    agent = agent.resolved(benchmark)
    history_cfg = HistoryConfig(image_slots=agent.image_slots, text_history=agent.text_history,
                                source=agent.history_source, system_prompt=benchmark.system_prompt)
    goal = launcher_goal(rng)
    num_steps = rng.randint(min_steps, max_steps)
    if recall_probability is None and recall_back is None:
        generated = list(launcher_episode(rng, num_steps, icons_per_screen=icons_per_screen))
    else:
        from pipeline.benchmarks.synthetic.launcher import RECALL_PROBABILITY

        generated = list(_training_episode(rng, num_steps, icons_per_screen,
                                           RECALL_PROBABILITY if recall_probability is None else recall_probability,
                                           recall_back))
    steps = [Step(step_index=k, image_path="", instruction=g.instruction, history_text=g.history_text)
             for k, g in enumerate(generated)]
    episode = Episode(episode_id="train", benchmark="launcher", goal=goal, steps=steps)
    history = StepHistory.for_agent(agent)
    for gen, step in zip(generated, steps):
        messages, images = step_messages(benchmark, agent, history_cfg, episode, step, gen.image, history)
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        yield text, images, gen
        history.add(step, gen.image, "", "ground_truth")


def encode(processor: Any, text: str, images: list[Any], answer: str, kind: str,
           target: tuple[int, int] | None = None, colour: str | None = None,
           screens: list[tuple[LauncherIcon, ...]] | None = None, steps_back: int = 0) -> Example:
    """Tokenise a prompt and its answer; the answer ends with ``<|im_end|>``, where generation stops.

    ``target``: (image index in the prompt, cell index row-major) of the icon the answer clicks; its image
    token's position is recorded for attention supervision (merged image tokens are laid out row-major);
    so is the position of ``colour``'s (first) token in the instruction, its last occurrence in the prompt.
    ``screens``: the icons of each prompt image in order; every image token gets its cell's colour class
    (``screen_colour_labels``) in ``image_colours``, for the auxiliary colour loss.
    """
    inputs = processor(text=[text], images=images, return_tensors="pt")
    tokenizer = processor.tokenizer
    answer_ids = tokenizer(answer, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    end = torch.tensor([tokenizer.convert_tokens_to_ids("<|im_end|>")])
    prompt_ids = inputs["input_ids"][0]
    input_ids = torch.cat([prompt_ids, answer_ids, end])
    labels = torch.cat([torch.full_like(prompt_ids, IGNORE_INDEX), answer_ids, end])
    mm = inputs.get("mm_token_type_ids")
    if mm is not None:
        mm = torch.cat([mm[0], torch.zeros(len(answer_ids) + 1, dtype=mm.dtype)])
    target_token = -1
    if target is not None:
        starts = (prompt_ids == tokenizer.convert_tokens_to_ids("<|vision_start|>")).nonzero().flatten()
        target_token = int(starts[target[0]]) + 1 + target[1]
    colour_token = -1
    if colour is not None:
        word = tokenizer(f" {colour}", add_special_tokens=False)["input_ids"][0]
        where = (prompt_ids == word).nonzero().flatten()
        colour_token = int(where[-1]) if len(where) else -1
    image_colours = None
    if screens is not None:
        image_colours = torch.full_like(input_ids, IGNORE_INDEX)
        where = (input_ids == processor.image_token_id).nonzero().flatten()
        cells = [label for icons in screens for label in screen_colour_labels(icons)]
        if len(where) != len(cells):
            raise ValueError(f"{len(where)} image tokens for {len(screens)} screens of {GRID * GRID} cells")
        image_colours[where] = torch.tensor(cells)
    return Example(input_ids, labels, inputs["pixel_values"], inputs["image_grid_thw"], mm, kind, answer,
                   target_token, colour_token, image_colours, steps_back)


def step_examples(rng: random.Random, processor: Any, agent: AgentConfig, min_steps: int, max_steps: int,
                  icons_per_screen: int = ICONS_PER_SCREEN, recall_probability: float | None = None,
                  recall_back: tuple[float, ...] | None = None, colours: bool = False) -> Iterator[Example]:
    """The encoded steps of one episode drawn from ``rng`` (``colours``: with ``image_colours`` labels)."""
    generated: list[LauncherStep] = []
    for text, images, step in episode_steps(rng, min_steps, max_steps, agent, processor, icons_per_screen,
                                            recall_probability, recall_back):
        generated.append(step)
        cell = step.target.row * GRID + step.target.col
        screens = [g.icons for g in generated[len(generated) - len(images):]] if colours else None
        yield encode(processor, text, images, step.answer, step.kind, (len(images) - 1 - step.steps_back, cell),
                     step.target.colour, screens, step.steps_back)


def training_examples(seed: int, processor: Any, agent: AgentConfig, min_steps: int = 3,
                      max_steps: int = 6, start: int = 0,
                      icon_counts: tuple[int, ...] = (ICONS_PER_SCREEN,), recall_probability: float | None = None,
                      recall_back: tuple[float, ...] | None = None, colours: bool = False) -> Iterator[Example]:
    """An endless stream of training examples, episode ``start`` onwards of the ``seed`` stream.

    ``icon_counts``: icons per screen, drawn per episode. Screens with one or two icons are easier
    (reading a place before telling colours apart) and speed up learning; evaluation always has three.
    ``recall_probability``, ``recall_back``, ``colours``: see ``step_examples``.
    """
    index = start
    while True:
        rng = random.Random(f"{TRAIN_STREAM}:{seed}:{index}")
        icons = icon_counts[0] if len(icon_counts) == 1 else rng.choice(icon_counts)
        yield from step_examples(rng, processor, agent, min_steps, max_steps, icons, recall_probability,
                                 recall_back, colours)
        index += 1


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch; padding is masked out of attention and of the loss."""
    length = max(len(e.input_ids) for e in examples)
    n = len(examples)
    input_ids = torch.full((n, length), pad_id, dtype=torch.long)
    labels = torch.full((n, length), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((n, length), dtype=torch.long)
    mm = torch.zeros((n, length), dtype=torch.long)
    for i, e in enumerate(examples):
        size = len(e.input_ids)
        input_ids[i, :size], labels[i, :size], attention[i, :size] = e.input_ids, e.labels, 1
        if e.mm_token_type_ids is not None:
            mm[i, :size] = e.mm_token_type_ids
    batch = {"input_ids": input_ids, "labels": labels, "attention_mask": attention,
             "target_token": torch.tensor([e.target_token for e in examples]),
             "colour_token": torch.tensor([e.colour_token for e in examples]),
             "pixel_values": torch.cat([e.pixel_values for e in examples]),
             "image_grid_thw": torch.cat([e.image_grid_thw for e in examples])}
    if any(e.mm_token_type_ids is not None for e in examples):
        batch["mm_token_type_ids"] = mm
    if all(e.image_colours is not None for e in examples):
        colours = torch.full((n, length), IGNORE_INDEX, dtype=torch.long)
        for i, e in enumerate(examples):
            colours[i, :len(e.input_ids)] = e.image_colours
        batch["image_colours"] = colours
    return batch


__all__ = ["COLOUR_CLASSES", "Example", "IGNORE_INDEX", "NO_ICON", "TRAIN_STREAM", "collate", "encode",
           "episode_prompts", "screen_colour_labels", "step_examples", "training_examples"]
