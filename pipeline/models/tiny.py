"""A tiny random-weight Qwen2.5-VL built offline, so tests and CPU dry runs need no downloads.

It has the real architecture (mrope, GQA, windowed vision tower, the Qwen special tokens and chat format)
at toy size, so the KV-compression hooks, the prompt layout and the agent run unchanged on it.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from pipeline.cache import cache_root
from pipeline.models.files import read_json_file
from pipeline.models.processor import Qwen2_5_VLImageOnlyProcessor

# Bump when the recipe changes so cached builds are rebuilt.
TINY_RECIPE_VERSION = 1
MARKER_FILE = "starkv_tiny.json"
DEFAULT_SEED = 0

# Image limits for tests: a 1920x1080 screenshot becomes at most 256 image tokens.
TINY_MIN_PIXELS = 56 * 56
TINY_MAX_PIXELS = 256 * 28 * 28

# Qwen2.5-VL special tokens, in the order of the real vocabulary.
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

TEXT_SIZES = dict(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=32768,
)
# head_dim = 128 / 4 = 32 -> mrope_section must sum to 16 (temporal, height, width).
MROPE_SECTION = [4, 6, 6]
VISION_SIZES = dict(
    depth=2,
    hidden_size=64,
    intermediate_size=128,
    num_heads=2,
    out_hidden_size=TEXT_SIZES["hidden_size"],
    fullatt_block_indexes=[1],
    window_size=112,
    patch_size=14,
    spatial_merge_size=2,
    temporal_patch_size=2,
)
BPE_VOCAB_SIZE = 1024

# Same rendering as the official Qwen2.5-VL template (without the video branch's extras):
# default system turn, string or list content, image part -> vision tokens, generation prompt.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}"
    "{{ message['content'] }}"
    "{% else %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or 'image' in part or 'image_url' in part %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' or 'video' in part %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in part %}"
    "{{ part['text'] }}"
    "{% endif %}"
    "{% endfor %}"
    "{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "<|im_start|>assistant\n"
    "{% endif %}"
)

_PROMPT_TEXT = """You are a helpful assistant.
You are a GUI agent. You are given a task and your action history, with screenshots. You need to perform \
the next action to complete the task.

## Output Format
```
Thought: ...
Action: ...
```

## Action Space

click(start_box='(x1,y1)')
left_double(start_box='(x1,y1)')
right_single(start_box='(x1,y1)')
drag(start_box='(x1,y1)', end_box='(x3,y3)')
hotkey(key='ctrl c')
type(content='xxx') # Use escape characters \\', \\", and \\n in content part to ensure we can parse the \
content in normal python string format. If you want to submit your input, use \\n at the end of content.
scroll(start_box='(x1,y1)', direction='down or up or right or left')
wait() #Sleep for 5s and take a screenshot to check for any changes.
finished(content='xxx')
long_press(start_box='(x1,y1)')
open_app(app_name='Settings')
press_home()
press_back()
call_user()
click(point='<point>x1 y1</point>')

## Note
- Use English in `Thought` part.
- Write a small plan and finally summarize your next action (with its target element) in one sentence \
in `Thought` part.

## User Instruction
Open the settings page and turn on dark mode.
"""

_EXTRA_LINES = [
    "Thought: I need to click the search button at the top of the page.",
    "Thought: The menu is open, so I will scroll down to find the Save option.",
    "Thought: Type the email address into the text field and press enter.",
    "Action: click(start_box='(512,384)')",
    "Action: type(content='hello world\\n')",
    "Action: scroll(start_box='(960,540)', direction='down')",
    "Action: drag(start_box='(10,20)', end_box='(300,400)')",
    "Action: hotkey(key='ctrl shift t')",
    "Action: finished(content='done')",
    "Open the browser, search for the weather, and click the first result.",
    "Select the file menu, then click Save As and enter the name report.txt.",
    "Go back to the home screen and open the Messages app.",
    "button, icon, window, tab, link, menu, dialog, checkbox, text box, toolbar, list, item, page",
    "Screenshot 1920x1080, 1280x720, 800x600, 1080x2400; step 1 of 15; history 5 screenshots.",
]


def _corpus(repeats: int = 4) -> list[str]:
    """Deterministic training text: UI-TARS prompt vocabulary, digits, coordinates and punctuation."""
    lines = _PROMPT_TEXT.splitlines() + _EXTRA_LINES
    lines += [" ".join(str(d) for d in range(k, k + 10)) for k in range(0, 100, 10)]
    lines += [f"({x},{y})" for x in range(0, 2000, 97) for y in range(0, 1200, 131)]
    lines += ["0123456789 .,:;!?'\"()[]{}<>=+-*/\\_#@&%$|~`^ \n\t"]
    return [line for line in lines if line] * repeats


def build_tokenizer(corpus: list[str] | None = None, *, split_digits: bool = False,
                    vocab_size: int = BPE_VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """Train a small byte-level BPE in-process; training on a fixed corpus is deterministic.

    ``split_digits`` makes every digit its own token (numbers then read and write digit by digit, which a
    small model learns far more easily than the BPE's inconsistent digit merges).
    """
    tok = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
                         if split_digits else byte_level)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus if corpus is not None else _corpus(), trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
    )
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def build_config(token_ids: dict[str, int], vocab_size: int, *, text_sizes: dict | None = None,
                 vision_sizes: dict | None = None, rope_theta: float = 1e6,
                 mrope_section: list[int] | None = None) -> Qwen2_5_VLConfig:
    """A Qwen2.5-VL config at the given sizes (default: the tiny ones) wired to ``token_ids``."""
    text = dict(
        text_sizes or TEXT_SIZES,
        vocab_size=vocab_size,
        rope_parameters={"rope_type": "default", "rope_theta": rope_theta,
                         "mrope_section": list(mrope_section or MROPE_SECTION)},
        bos_token_id=token_ids["<|endoftext|>"],
        eos_token_id=token_ids["<|im_end|>"],
        pad_token_id=token_ids["<|endoftext|>"],
    )
    return Qwen2_5_VLConfig(
        text_config=text,
        vision_config=dict(vision_sizes or VISION_SIZES),
        image_token_id=token_ids["<|image_pad|>"],
        video_token_id=token_ids["<|video_pad|>"],
        vision_start_token_id=token_ids["<|vision_start|>"],
        vision_end_token_id=token_ids["<|vision_end|>"],
    )


def init_model(config: Qwen2_5_VLConfig, tokenizer: PreTrainedTokenizerFast,
               seed: int) -> Qwen2_5_VLForConditionalGeneration:
    """Random weights for ``config`` from ``seed`` (own RNG scope) with the chat's stop and pad tokens."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config).eval()
    end, pad = tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")
    gen = model.generation_config
    gen.eos_token_id = [end, pad]
    gen.pad_token_id = pad
    gen.bos_token_id = pad
    return model


def make_processor(tokenizer: PreTrainedTokenizerFast, min_pixels: int,
                   max_pixels: int) -> Qwen2_5_VLImageOnlyProcessor:
    image_processor = Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels)
    return Qwen2_5_VLImageOnlyProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                        chat_template=CHAT_TEMPLATE)


def special_token_ids(tokenizer: PreTrainedTokenizerFast) -> dict[str, int]:
    return {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}


def build_tiny_model(out_dir: str | Path, seed: int = DEFAULT_SEED) -> Path:
    """Build the tiny model + processor into ``out_dir`` (safetensors); same seed -> same weights.

    The marker file is written last, so a folder without it is known to be incomplete.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    config = build_config(special_token_ids(tokenizer), vocab_size=len(tokenizer))
    model = init_model(config, tokenizer, seed)
    make_processor(tokenizer, TINY_MIN_PIXELS, TINY_MAX_PIXELS).save_pretrained(out)
    model.save_pretrained(out)
    marker = {
        "recipe_version": TINY_RECIPE_VERSION,
        "seed": seed,
        "transformers": transformers.__version__,
        "min_pixels": TINY_MIN_PIXELS,
        "max_pixels": TINY_MAX_PIXELS,
    }
    (out / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n")
    return out




def read_marker(model_dir: str | Path) -> dict | None:
    """The tiny-model marker of a folder, or None if it is not a (complete) tiny-model build."""
    return read_json_file(Path(model_dir) / MARKER_FILE)


def is_tiny_model_dir(model_dir: str | Path) -> bool:
    return read_marker(model_dir) is not None


def tiny_model_cache_dir() -> Path:
    """Default cache folder: ``$STARKV_CACHE/tiny-qwen2.5-vl`` or ``~/.cache/starkv-eval/tiny-qwen2.5-vl``."""
    return cache_root() / "tiny-qwen2.5-vl"


def _is_current(model_dir: Path, seed: int) -> bool:
    marker = read_marker(model_dir)
    return bool(
        marker
        and marker.get("seed") == seed
        and marker.get("recipe_version") == TINY_RECIPE_VERSION
        and marker.get("transformers") == transformers.__version__
    )


def ensure_tiny_model(dir: str | Path | None = None, seed: int = DEFAULT_SEED) -> Path:
    """Return a folder with a complete tiny model for ``seed``, building it only if missing or stale.

    Default folder: ``tiny_model_cache_dir() / f"seed{seed}"``. The build goes to a temporary sibling
    folder that is renamed into place, so concurrent callers (e.g. several Ray actors) never see a
    half-written model.
    """
    target = Path(dir) if dir is not None else tiny_model_cache_dir() / f"seed{seed}"
    if _is_current(target, seed):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        build_tiny_model(tmp, seed=seed)
        if _is_current(target, seed):  # another process finished first
            return target
        if target.exists():
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.rename(tmp, target)
        except OSError:
            if not _is_current(target, seed):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


__all__ = [
    "CHAT_TEMPLATE",
    "SPECIAL_TOKENS",
    "TINY_MAX_PIXELS",
    "TINY_MIN_PIXELS",
    "build_config",
    "build_tiny_model",
    "build_tokenizer",
    "init_model",
    "make_processor",
    "special_token_ids",
    "ensure_tiny_model",
    "is_tiny_model_dir",
    "read_marker",
    "tiny_model_cache_dir",
]
