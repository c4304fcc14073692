"""Model loading: tiny offline Qwen2.5-VL build, processor, chat template and the shared loader."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from pipeline.models import (
    TINY_MAX_PIXELS,
    TINY_MIN_PIXELS,
    UITARS_MAX_PIXELS,
    UITARS_MIN_PIXELS,
    ModelSpec,
    Qwen2_5_VLImageOnlyProcessor,
    build_tiny_model,
    ensure_tiny_model,
    load_model,
    tiny_model_cache_dir,
)
from pipeline.models.loader import parse_tiny_path, resolve_attn_implementation, resolve_dtype
from pipeline.models.tiny import MARKER_FILE


def hand_smart_resize(h: int, w: int, min_pixels: int, max_pixels: int, factor: int = 28) -> tuple[int, int]:
    """smart_resize as written in specs/benchmarks.md §1.4 (independent of transformers)."""
    hb, wb = max(factor, round(h / factor) * factor), max(factor, round(w / factor) * factor)
    if hb * wb > max_pixels:
        beta = math.sqrt(h * w / max_pixels)
        hb, wb = math.floor(h / beta / factor) * factor, math.floor(w / beta / factor) * factor
    elif hb * wb < min_pixels:
        beta = math.sqrt(min_pixels / (h * w))
        hb, wb = math.ceil(h * beta / factor) * factor, math.ceil(w * beta / factor) * factor
    return hb, wb


def image_prompt(processor, text: str = "click the OK button") -> str:
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    return processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)


def count_image_pads(loaded, width: int, height: int) -> tuple[int, list[int]]:
    image = Image.new("RGB", (width, height), (200, 120, 40))
    inputs = loaded.processor(text=[image_prompt(loaded.processor)], images=[image], return_tensors="pt")
    return int((inputs["input_ids"] == loaded.image_pad_id).sum()), inputs["image_grid_thw"][0].tolist()


@pytest.fixture
def loaded_tiny(tiny_model_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return load_model(ModelSpec(path=str(tiny_model_dir), device="cpu"))


def test_build_reload_offline_and_config_facts(tiny_model_dir, loaded_tiny):
    files = {p.name for p in tiny_model_dir.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "processor_config.json",
        "tokenizer.json",
        MARKER_FILE,
    } <= files
    assert not any(name.endswith(".bin") for name in files)

    lm = loaded_tiny
    assert lm.device == torch.device("cpu") and lm.dtype == torch.float32
    assert next(lm.model.parameters()).dtype == torch.float32
    assert not lm.model.training
    assert lm.name == "tiny-qwen2.5-vl-seed0"
    assert lm.attn_implementation == "sdpa"
    assert lm.num_layers >= 2
    assert lm.num_kv_heads < lm.num_heads and lm.num_heads % lm.num_kv_heads == 0  # GQA
    assert (lm.num_heads, lm.num_kv_heads, lm.head_dim) == (4, 2, 32)
    assert (lm.min_pixels, lm.max_pixels) == (TINY_MIN_PIXELS, TINY_MAX_PIXELS)
    assert isinstance(lm.processor, Qwen2_5_VLImageOnlyProcessor)

    # Special-token ids in the config are the tokenizer's ids.
    tok = lm.processor.tokenizer
    assert lm.vision_start_id == tok.convert_tokens_to_ids("<|vision_start|>")
    assert lm.vision_end_id == tok.convert_tokens_to_ids("<|vision_end|>")
    assert lm.image_pad_id == tok.convert_tokens_to_ids("<|image_pad|>")
    assert lm.model.config.video_token_id == tok.convert_tokens_to_ids("<|video_pad|>")
    assert lm.model.config.text_config.vocab_size == len(tok)
    mrope = lm.model.config.text_config.rope_parameters["mrope_section"]
    assert sum(mrope) == lm.head_dim // 2


def test_same_seed_same_weights(tmp_path):
    a, b, c = (build_tiny_model(tmp_path / name, seed=s) for name, s in (("a", 0), ("b", 0), ("c", 1)))
    wa, wb, wc = (load_file(str(d / "model.safetensors")) for d in (a, b, c))
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()


def test_box_tokens_are_single_special_tokens(tiny_model):
    _, processor = tiny_model
    tok = processor.tokenizer
    for special in ("<|box_start|>", "<|box_end|>", "<|object_ref_start|>", "<|object_ref_end|>"):
        ids = tok(special, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and ids[0] in tok.all_special_ids
    text = "Action: click(start_box='<|box_start|>(512,384)<|box_end|>')"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.convert_tokens_to_ids("<|box_start|>") in ids
    assert tok.decode(ids, skip_special_tokens=True) == "Action: click(start_box='(512,384)')"
    assert tok.decode(ids) == text
    # The BPE knows the UI-TARS vocabulary: prompts stay short.
    assert len(tok("Thought: I need to click the search button.")["input_ids"]) <= 12


def test_chat_template_matches_qwen_format(tiny_model):
    _, processor = tiny_model
    assert image_prompt(processor) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>click the OK button<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Action: wait()"},
    ]
    assert processor.apply_chat_template(msgs, tokenize=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
        "<|im_start|>assistant\nAction: wait()<|im_end|>\n"
    )


def test_image_tokens_for_1920x1080(loaded_tiny):
    h, w = hand_smart_resize(1080, 1920, TINY_MIN_PIXELS, TINY_MAX_PIXELS)
    assert (h, w) == (336, 588)  # beta = sqrt(1920*1080 / 200704) = 3.214 -> 12 x 21 tokens
    n, grid = count_image_pads(loaded_tiny, 1920, 1080)
    assert grid == [1, h // 14, w // 14]
    assert n == (h // 28) * (w // 28) == 252


def test_spec_pixel_limits_override_saved_ones(tiny_model_dir):
    lm = load_model(ModelSpec(path=str(tiny_model_dir), device="cpu", max_pixels=64 * 28 * 28))
    assert (lm.min_pixels, lm.max_pixels) == (TINY_MIN_PIXELS, 64 * 28 * 28)
    h, w = hand_smart_resize(1080, 1920, TINY_MIN_PIXELS, 64 * 28 * 28)
    assert count_image_pads(lm, 1920, 1080)[0] == (h // 28) * (w // 28) == 60
    # min_pixels: a 100x50 image is scaled up to at least min_pixels.
    lm = load_model(ModelSpec(path=str(tiny_model_dir), device="cpu", min_pixels=16 * 28 * 28))
    h, w = hand_smart_resize(50, 100, 16 * 28 * 28, TINY_MAX_PIXELS)
    assert count_image_pads(lm, 100, 50)[0] == (h // 28) * (w // 28) == 18


def test_non_tiny_checkpoint_gets_uitars_pixel_defaults(tiny_model_dir, tmp_path):
    real_like = tmp_path / "UI-TARS-1.5-7B"
    shutil.copytree(tiny_model_dir, real_like)
    (real_like / MARKER_FILE).unlink()
    lm = load_model(ModelSpec(path=str(real_like), device="cpu"))
    assert lm.name == "UI-TARS-1.5-7B"
    assert (lm.min_pixels, lm.max_pixels) == (UITARS_MIN_PIXELS, UITARS_MAX_PIXELS)
    # specs/benchmarks.md: 1920x1080 -> 1932x1092 -> 69 x 39 = 2,691 tokens at the UI-TARS limits.
    assert hand_smart_resize(1080, 1920, UITARS_MIN_PIXELS, UITARS_MAX_PIXELS) == (1092, 1932)
    assert count_image_pads(lm, 1920, 1080)[0] == 2691


def test_generate_runs(tiny_model):
    model, processor = tiny_model
    image = Image.new("RGB", (448, 448), (10, 200, 30))
    inputs = processor(text=[image_prompt(processor)], images=[image], return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape == (1, inputs["input_ids"].shape[1] + 3)
    assert torch.equal(out[:, : inputs["input_ids"].shape[1]], inputs["input_ids"])


def test_rejects_non_qwen25vl_config(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]})
    )
    with pytest.raises(ValueError, match=r"not a Qwen2\.5-VL checkpoint.*llama.*LlamaForCausalLM") as err:
        load_model(ModelSpec(path=str(tmp_path)))
    assert str(tmp_path) in str(err.value)


def test_rejects_missing_path_and_missing_config(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        load_model(ModelSpec(path=str(missing)))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_model(ModelSpec(path=str(tmp_path)))


def test_tiny_path_builds_into_cache_once(tmp_path, monkeypatch):
    monkeypatch.setenv("STARKV_CACHE", str(tmp_path))
    assert tiny_model_cache_dir() == tmp_path / "tiny-qwen2.5-vl"
    lm = load_model(ModelSpec(path="tiny:3", device="cpu"))
    folder = tmp_path / "tiny-qwen2.5-vl" / "seed3"
    assert lm.name == "tiny-qwen2.5-vl-seed3"
    assert json.loads((folder / MARKER_FILE).read_text())["seed"] == 3
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert ensure_tiny_model(seed=3) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp  # not rebuilt
    # A half-written folder (no marker) is rebuilt.
    (folder / MARKER_FILE).unlink()
    (folder / "model.safetensors").unlink()
    assert ensure_tiny_model(seed=3) == folder
    assert (folder / "model.safetensors").is_file() and (folder / MARKER_FILE).is_file()
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_resolution_rules():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_dtype("auto", cpu) == torch.float32
    assert resolve_dtype("auto", cuda) == torch.bfloat16
    assert resolve_dtype("float16", cpu) == torch.float16
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("int8", cpu)
    assert resolve_attn_implementation(None, cpu) == "sdpa"
    assert resolve_attn_implementation("eager", cpu) == "eager"
    assert parse_tiny_path("tiny") == 0 and parse_tiny_path("tiny:7") == 7
    assert parse_tiny_path("/models/UI-TARS-1.5-7B") is None
    with pytest.raises(ValueError, match="tiny:<int seed>"):
        parse_tiny_path("tiny:x")


def _to_legacy_uitars_layout(folder):
    """Rewrite a tiny build into the transformers-4.x file layout real UI-TARS-1.5-7B ships with:
    flat text config + rope_scaling, preprocessor_config.json, chat_template.json, Qwen2Tokenizer."""
    cfg = json.loads((folder / "config.json").read_text())
    text = cfg.pop("text_config")
    rope = text.pop("rope_parameters")
    for key in ("model_type", "layer_types", "rope_parameters"):
        text.pop(key, None)
    cfg.update(text, rope_theta=rope["rope_theta"], torch_dtype="float32", transformers_version="4.49.0")
    cfg["rope_scaling"] = {"type": "mrope", "mrope_section": rope["mrope_section"]}
    cfg.pop("dtype", None)
    (folder / "config.json").write_text(json.dumps(cfg))
    proc = json.loads((folder / "processor_config.json").read_text())["image_processor"]
    size = proc.pop("size")
    proc.update(min_pixels=size["shortest_edge"], max_pixels=size["longest_edge"])
    proc["processor_class"] = "Qwen2_5_VLProcessor"
    (folder / "preprocessor_config.json").write_text(json.dumps(proc))
    template = (folder / "chat_template.jinja").read_text()
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": template}))
    tok_cfg = json.loads((folder / "tokenizer_config.json").read_text())
    tok_cfg["tokenizer_class"] = "Qwen2Tokenizer"
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    for name in ("processor_config.json", "chat_template.jinja", MARKER_FILE):
        (folder / name).unlink()


def test_loads_legacy_uitars_file_layout(tiny_model_dir, tmp_path):
    folder = tmp_path / "UI-TARS-1.5-7B"
    shutil.copytree(tiny_model_dir, folder)
    _to_legacy_uitars_layout(folder)
    lm = load_model(ModelSpec(path=str(folder), device="cpu"))
    assert (lm.num_layers, lm.num_heads, lm.num_kv_heads, lm.head_dim) == (3, 4, 2, 32)
    assert lm.model.config.text_config.rope_parameters["mrope_section"] == [4, 6, 6]
    assert (lm.min_pixels, lm.max_pixels) == (UITARS_MIN_PIXELS, UITARS_MAX_PIXELS)
    assert image_prompt(lm.processor).count("<|image_pad|>") == 1
    n, grid = count_image_pads(lm, 800, 600)
    assert grid == [1, 42, 58] and n == 21 * 29  # 812x588 after smart_resize


def test_cli_and_job_validation_start_without_transformers():
    """`starkv-eval --help` and a job's validation (micro path included) must not pay transformers' import."""
    import subprocess
    import sys

    code = ("import sys; from pipeline.cli import build_parser; build_parser(); "
            "from pipeline.config import load_config, validate; validate(load_config('jobs/smoke.yaml')); "
            "print(sorted(m for m in ('transformers', 'ray', 'mlflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=str(Path(__file__).resolve().parents[2]))
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
