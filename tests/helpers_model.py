"""Test helpers: build real prompts for the tiny model and record what a compressor keeps."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from PIL import Image, ImageDraw

from starkv import PromptLayout
from starkv.compressor import Compressor


def screenshot(width: int, height: int, seed: int) -> Image.Image:
    """A deterministic GUI-ish picture (blocks of colour) so image tokens differ between screenshots."""
    g = torch.Generator().manual_seed(seed)
    img = Image.new("RGB", (width, height), (235, 235, 240))
    draw = ImageDraw.Draw(img)
    for _ in range(12):
        x, y = (torch.rand(2, generator=g) * torch.tensor([width - 60, height - 30])).int().tolist()
        colour = tuple((torch.rand(3, generator=g) * 255).int().tolist())
        draw.rectangle([x, y, x + 60, y + 30], fill=colour)
    return img


def prompt_inputs(processor, num_images: int = 2, text: str = "Click the Save button.", size=(320, 240)):
    """Processor output for a multi-screenshot chat prompt, plus its PromptLayout."""
    content = []
    messages = []
    images = [screenshot(*size, seed=i) for i in range(num_images)]
    for i in range(num_images - 1):
        messages.append({"role": "user", "content": [{"type": "image"}]})
        messages.append({"role": "assistant", "content": [{"type": "text", "text": f"Step {i + 1}: clicked"}]})
    content = [{"type": "image"}, {"type": "text", "text": text}]
    messages.append({"role": "user", "content": content})
    chat = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[chat], images=images, return_tensors="pt")
    tok = processor.tokenizer
    layout = PromptLayout.from_input_ids(inputs["input_ids"][0].tolist(), tok.convert_tokens_to_ids("<|vision_start|>"),
                                         tok.convert_tokens_to_ids("<|vision_end|>"))
    return inputs, layout


@dataclass
class Recording(Compressor):
    """Wraps a compressor and remembers the kept indices per layer (for oracle tests)."""

    inner: Compressor | None = None
    kept: dict[int, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.window_size = self.inner.window_size

    def query_window(self, layout, prompt_length):
        return self.inner.query_window(layout, prompt_length)

    def layer_capacity(self, prompt_length, cap, layer_idx, num_layers):
        return self.inner.layer_capacity(prompt_length, cap, layer_idx, num_layers)

    def select(self, ctx):
        idx = self.inner.select(ctx)
        self.kept[ctx.layer_idx] = idx.clone()
        return idx


class ScriptedOutputs:
    """The text of every model call is ``script(chat text of that call)``; everything else is real.

    The model still runs each call (prefill, compression at the unit's budget, decode); only the decoded
    text the parser reads is replaced, because a tiny random model never writes a scroll or a click on
    purpose. ``calls`` keeps ``(chat text, images)`` per call, in order."""

    def __init__(self, runner, script):
        self.runner, self.script, self.calls = runner, script, []

    def __enter__(self):
        tokenizer = self.runner.loaded.processor.tokenizer
        prompt = self.runner.prompt

        def recorded(*args, **kwargs):
            text, images = prompt(*args, **kwargs)
            self.calls.append((text, images))
            return text, images

        self.runner.prompt = recorded
        tokenizer.decode = lambda *args, **kwargs: self.script(self.calls[-1][0])
        return self

    def __exit__(self, *exc):
        del self.runner.prompt
        del self.runner.loaded.processor.tokenizer.decode


def tiny_with_prompt(model_dir, num_images: int = 3, size=(448, 336)):
    """The tiny model (CPU, float32) and a ``num_images``-screenshot prompt for it: ``(loaded, inputs, layout)``."""
    from pipeline.models.loader import ModelSpec, load_model

    loaded = load_model(ModelSpec(path=str(model_dir), device="cpu", dtype="float32"))
    inputs, layout = prompt_inputs(loaded.processor, num_images=num_images, size=size)
    return loaded, inputs, layout
