"""The prefill hook on the tiny Qwen2.5-VL: cache shapes, window, b = 100 identity, and exactness."""

from __future__ import annotations

import pytest
import torch
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

import starkv
from starkv.budget import kept_length
from tests.helpers_model import Recording, prompt_inputs


def _generate(model, inputs, **kw):
    model.model.rope_deltas = None
    return model.generate(**inputs, do_sample=False, return_dict_in_generate=True, output_logits=True, **kw)


@pytest.mark.parametrize("budget", [10, 20, 50])
def test_cache_length_heads_and_window(tiny_model, budget):
    model, processor = tiny_model
    inputs, layout = prompt_inputs(processor, num_images=2)
    L = inputs["input_ids"].shape[1]
    rec = Recording(inner=starkv.build("snapkv"))
    with torch.inference_mode(), starkv.attach(model, rec, budget, layout) as att:
        out = _generate(model, inputs, max_new_tokens=1)
    cfg = model.config.text_config
    expected = int(L * budget / 100)
    assert expected == kept_length(L, budget)
    for layer in out.past_key_values.layers:
        # one generated token: prefill cache (C) + nothing appended after the last forward
        assert layer.keys.shape[1] == cfg.num_key_value_heads < cfg.num_attention_heads
        assert layer.keys.shape[2] == expected
    assert [s.kept_length for s in att.stats] == [expected] * cfg.num_hidden_layers
    assert att.kv_bytes < att.kv_bytes_full
    assert att.kv_bytes == pytest.approx(att.kv_bytes_full * expected / L, rel=1e-9)
    window = torch.arange(L - 8, L)
    for idx in rec.kept.values():
        assert idx.shape == (cfg.num_key_value_heads, expected)
        for row in idx:
            assert torch.equal(row[-8:], window)
            assert torch.all(row[1:] > row[:-1])


def test_budget_100_equals_uncompressed(tiny_model):
    model, processor = tiny_model
    inputs, layout = prompt_inputs(processor, num_images=2)
    with torch.inference_mode():
        ref = _generate(model, inputs, max_new_tokens=6)
        with starkv.attach(model, starkv.build("snapkv"), 100, layout) as att:
            out = _generate(model, inputs, max_new_tokens=6)
    assert torch.equal(out.sequences, ref.sequences)
    for a, b in zip(out.logits, ref.logits):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert att.kv_bytes == att.kv_bytes_full


def test_hooks_removed_after_block(tiny_model):
    model, processor = tiny_model
    inputs, layout = prompt_inputs(processor, num_images=1)
    before = ALL_ATTENTION_FUNCTIONS.get_interface("sdpa", None)
    with torch.inference_mode():
        with starkv.attach(model, starkv.build("snapkv"), 20, layout):
            pass
        out = _generate(model, inputs, max_new_tokens=1)
    assert ALL_ATTENTION_FUNCTIONS.get_interface("sdpa", None) is before
    assert out.past_key_values.layers[0].keys.shape[2] == inputs["input_ids"].shape[1]


def _masked_oracle(kept: dict[int, torch.Tensor], prompt_len: int, group: int):
    """Eager attention that hides, for the query rows after the prompt, the keys the compressor dropped."""

    def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        layer_idx = getattr(module, "layer_idx", None)
        if layer_idx is None or layer_idx not in kept:  # vision tower: plain sdpa
            return ALL_ATTENTION_FUNCTIONS["sdpa"](module, query, key, value, attention_mask, scaling=scaling,
                                                   dropout=dropout, **kwargs)
        q_len, k_len = query.shape[-2], key.shape[-2]
        key = key.repeat_interleave(group, dim=1)
        value = value.repeat_interleave(group, dim=1)
        scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
        q_pos = torch.arange(k_len - q_len, k_len)
        allowed = torch.arange(k_len)[None, :] <= q_pos[:, None]  # causal
        allowed = allowed[None, None].repeat(1, query.shape[1], 1, 1)
        keep = torch.zeros(query.shape[1], k_len, dtype=torch.bool)
        idx = kept[layer_idx].repeat_interleave(group, dim=0)  # KV head -> its query heads
        keep.scatter_(1, idx, True)
        keep[:, prompt_len:] = True  # generated tokens are never dropped
        late = q_pos >= prompt_len
        allowed[0][:, late] &= keep[:, None, :]
        scores = scores.masked_fill(~allowed, float("-inf"))
        out = torch.matmul(scores.softmax(-1), value)
        return out.transpose(1, 2).contiguous(), None

    return attention


@pytest.mark.parametrize("name", ["snapkv"])
def test_next_token_logits_equal_masked_full_forward(tiny_model, name):
    """Exactness oracle: decoding on the compressed cache == full forward with dropped keys masked."""
    model, processor = tiny_model
    inputs, layout = prompt_inputs(processor, num_images=2)
    L = inputs["input_ids"].shape[1]
    rec = Recording(inner=starkv.build(name))
    with torch.inference_mode(), starkv.attach(model, rec, 30, layout):
        out = _generate(model, inputs, max_new_tokens=2)
    first = out.sequences[:, L:L + 1]
    cfg = model.config.text_config
    AttentionInterface.register("starkv_oracle", _masked_oracle(rec.kept, L, cfg.num_attention_heads //
                                                                cfg.num_key_value_heads))
    extended = dict(inputs)
    extended["input_ids"] = torch.cat([inputs["input_ids"], first], dim=1)
    extended["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones_like(first)], dim=1)
    extended["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(first)], dim=1)
    model.set_attn_implementation("starkv_oracle")
    try:
        with torch.inference_mode():
            model.model.rope_deltas = None
            logits = model(**extended).logits[:, -1]
    finally:
        model.set_attn_implementation("sdpa")
    torch.testing.assert_close(out.logits[1], logits, rtol=1e-4, atol=1e-4)
    # and the compression really changed something
    with torch.inference_mode():
        model.model.rope_deltas = None
        full = model(**extended).logits[:, -1]
    assert not torch.allclose(full, logits, atol=1e-6)
