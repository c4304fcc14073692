"""The micro agent: a small Qwen2.5-VL trained here on launcher episodes, shipped in the repository.

Same architecture, chat template, processor class and loader as the tiny model, so everything that runs
on the tiny model runs on it; unlike the tiny model it has learnt to act, so accuracy responds to what a
compressor evicts. ``model.path: micro`` loads the shipped weights (``pipeline/models/micro_agent/``);
``starkv-eval train-micro`` rebuilds them from scratch (``pipeline/training/micro.py``).

Choices, and why:

* ``rope_theta`` 100 instead of 1e6: with head_dim 32 the 1e6 frequencies of the height/width M-RoPE
  sections are nearly flat across a screen (a measured plateau in the probe). Measured here on one-icon
  screens: after 575 steps the answer loss was 0.10 with theta 100 and 0.17 with 1e4 (chance 0.24); with
  100 and the wide tinted rim it fell to 0.01-0.04 by 1,000 steps. Positions are also painted into the
  pixels (see ``pipeline.benchmarks.synthetic.launcher``).
* Digits are single tokens, so coordinates are written digit by digit.
* Image limits: a 168×168 launcher screen is 6×6 = 36 language-model tokens and is never resized, so
  the click coordinates the agent writes are the screen's own pixels.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerFast, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from pipeline.agent.prompts import render_prompt
from pipeline.benchmarks.synthetic.launcher import CELL, COLOURS, GRID
from pipeline.models.files import MANIFEST_FILE, MICRO_DIR, micro_model_dir, read_manifest
from pipeline.models.tiny import (
    TEXT_SIZES,
    VISION_SIZES,
    build_config,
    build_tokenizer,
    init_model,
    make_processor,
    special_token_ids,
)

MICRO_RECIPE_VERSION = 2
MICRO_MIN_PIXELS = 56 * 56
MICRO_MAX_PIXELS = 64 * 28 * 28  # a 224 x 224 screen; launcher screens (168 x 168) are never resized
MICRO_VOCAB_SIZE = 1024
MICRO_ROPE_THETA = 100.0

MICRO_TEXT_SIZES = dict(TEXT_SIZES, intermediate_size=384, num_hidden_layers=4)  # the tiny model's, deeper
MICRO_VISION_SIZES = dict(VISION_SIZES, out_hidden_size=MICRO_TEXT_SIZES["hidden_size"])


def _corpus() -> list[str]:
    """The text the agent reads and writes: the computer prompt, launcher instructions, histories, actions."""
    lines = render_prompt("grounding", "Click the red icon").splitlines()
    for colour in COLOURS:
        lines += [f"Click the {colour} icon", f"Click where the {colour} icon was", f"Clicked the {colour} icon"]
    centres = [CELL * k + CELL // 2 for k in range(GRID)]
    lines += [f"Action: click(start_box='({x},{y})')" for x in centres for y in centres]
    lines += [f"Step {k}:" for k in range(1, 11)]
    lines += ["You are a helpful assistant.", "0123456789 .,:;!?'\"()[]{}<>=+-*/\\_#@&%$|~`^ \n\t"]
    return [line for line in lines if line] * 4


def build_micro_tokenizer() -> PreTrainedTokenizerFast:
    return build_tokenizer(_corpus(), split_digits=True, vocab_size=MICRO_VOCAB_SIZE)


def build_micro_config(tokenizer: PreTrainedTokenizerFast, rope_theta: float = MICRO_ROPE_THETA) -> Qwen2_5_VLConfig:
    """The micro agent's config; ``rope_theta`` is saved in ``config.json``, so a folder loads with its own."""
    return build_config(special_token_ids(tokenizer), vocab_size=len(tokenizer), text_sizes=MICRO_TEXT_SIZES,
                        vision_sizes=MICRO_VISION_SIZES, rope_theta=rope_theta)


def init_micro(seed: int, rope_theta: float | None = None) -> tuple[Qwen2_5_VLForConditionalGeneration, Any]:
    """Untrained micro model (weights from ``seed``) and its processor; ``rope_theta`` None: ``MICRO_ROPE_THETA``."""
    tokenizer = build_micro_tokenizer()
    theta = MICRO_ROPE_THETA if rope_theta is None else rope_theta
    model = init_model(build_micro_config(tokenizer, theta), tokenizer, seed)
    return model, make_processor(tokenizer, MICRO_MIN_PIXELS, MICRO_MAX_PIXELS)


def weights_sha256(model_dir: str | Path) -> str:
    return hashlib.sha256((Path(model_dir) / "model.safetensors").read_bytes()).hexdigest()


__all__ = ["MANIFEST_FILE", "MICRO_DIR", "MICRO_MAX_PIXELS", "MICRO_MIN_PIXELS", "MICRO_RECIPE_VERSION",
           "MICRO_ROPE_THETA",
           "build_micro_config", "build_micro_tokenizer", "init_micro", "micro_model_dir", "read_manifest",
           "weights_sha256"]
