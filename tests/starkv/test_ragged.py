"""Ragged per-KV-head storage (starkv.storage.ragged): exact attention, real bytes, and AdaKV's tokens vs a dense mask."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

import starkv
from starkv.budget import plan_selection
from starkv.hook import decoder_layers
from starkv.scoring import group_mean, window_scores
from starkv.shared import compress_record, record_prefill, replay_prefill
from starkv.storage.ragged import RaggedLayer, ragged_attention
from tests.helpers_model import tiny_with_prompt

BUDGET = 20


def _dense_masked(query, keys, values, keep, scale):
    """Reference: full K/V, evicted entries of each KV head set to −inf, causal over the last q tokens."""
    _, heads, q_len, _ = query.shape
    num_kv, length = keys.shape[1], keys.shape[2]
    group = heads // num_kv
    out = torch.empty(1, q_len, heads, query.shape[-1], dtype=torch.float64)
    for h in range(heads):
        kv = h // group
        for i in range(q_len):
            logits = []
            for j in range(length):
                visible = (j in keep[kv] or j >= length - q_len) and j <= length - q_len + i
                dot = float(query[0, h, i].double() @ keys[0, kv, j].double()) * scale
                logits.append(dot if visible else -math.inf)
            w = torch.tensor(logits, dtype=torch.float64).softmax(-1)
            out[0, i, h] = w @ values[0, kv].double()
    return out


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("q_len", [1, 3])
def test_ragged_attention_equals_a_dense_masked_computation(impl, q_len):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import eager_attention_forward

    inner = sdpa_attention_forward if impl == "sdpa" else eager_attention_forward
    g = torch.Generator().manual_seed(7)
    heads, num_kv, past, d = 4, 2, 10, 8
    keys = torch.randn(1, num_kv, past + q_len, d, generator=g)
    values = torch.randn(1, num_kv, past + q_len, d, generator=g)
    query = torch.randn(1, heads, q_len, d, generator=g)
    keep = [torch.tensor([0, 3, 4, 9]), torch.tensor([1, 2, 5, 6, 7, 8, 9])]  # 4 and 7 tokens: ragged
    layer = RaggedLayer.gather(keys[:, :, :past], values[:, :, :past], keep)
    assert layer.lengths == (4, 7) and layer.get_seq_length() == 5  # (4 + 7) // 2
    k_new, v_new = layer.update(keys[:, :, past:], values[:, :, past:], 0)
    assert layer.lengths == (4 + q_len, 7 + q_len)
    module = SimpleNamespace(num_key_value_groups=heads // num_kv, is_causal=True, training=False)
    out, _ = ragged_attention(inner, module, query, k_new, v_new, dropout=0.0, scaling=d ** -0.5)
    ref = _dense_masked(query, keys, values, [set(k.tolist()) for k in keep], d ** -0.5)
    assert out.shape == (1, q_len, heads, d)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-6)


def test_ragged_layer_stores_only_what_it_keeps():
    keys = torch.randn(1, 2, 20, 4)
    layer = RaggedLayer.gather(keys, keys.clone(), [torch.tensor([0, 1, 2]), torch.tensor([5])])
    assert layer.nbytes() == (3 + 1) * 4 * 4 * 2  # 4 tokens · d 4 · fp32 4 bytes · (K and V)
    assert layer.get_mask_sizes(1) == (2 + 1, 0)  # mean length 2, plus the query
    with pytest.raises(NotImplementedError, match="beam search"):
        layer.reorder_cache(torch.tensor([0]))


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return tiny_with_prompt(tiny_model_dir)


def _generate(model, inputs, new_tokens):
    model.model.rope_deltas = None
    return model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False, return_dict_in_generate=True,
                          output_logits=True)


def test_kv_bytes_come_from_the_stored_tensors(tiny):
    loaded, inputs, layout = tiny
    model, L = loaded.model, inputs["input_ids"].shape[1]
    with torch.inference_mode(), starkv.attach(model, starkv.build("adakv"), BUDGET, layout) as att:
        out = _generate(model, inputs, 3)
    layers = out.past_key_values.layers
    assert all(isinstance(layer, RaggedLayer) for layer in layers)
    assert len({layer.lengths for layer in layers}) > 1 or len(set(layers[0].lengths)) > 1  # really ragged
    d, elt = layers[0].head_keys[0].shape[-1], layers[0].head_keys[0].element_size()
    per_token = 2 * d * elt  # one token of one KV head: its key and its value
    decoded = 2 * loaded.num_kv_heads * per_token * len(layers)  # the 2 tokens appended after the prefill
    assert att.kv_bytes == sum(layer.nbytes() for layer in layers) - decoded
    assert att.kv_bytes_full == len(layers) * loaded.num_kv_heads * L * per_token
    assert att.kv_bytes / att.kv_bytes_full == pytest.approx(BUDGET / 100, rel=0.01)
    assert att.kv_bytes == len(layers) * loaded.num_kv_heads * int(L * BUDGET / 100) * per_token


def _reference_keep(scores: torch.Tensor, keep_past: int, alpha: float) -> list[set[int]]:
    """AdaKV written out: each head's best ``int(α·k)`` first, then the best of the rest across heads."""
    heads, past = scores.shape
    floor = int(alpha * keep_past)
    keep = [set(scores[h].argsort(descending=True)[:floor].tolist()) for h in range(heads)]
    rest = sorted(((float(scores[h, j]), h, j) for h in range(heads) for j in range(past) if j not in keep[h]),
                  reverse=True)
    for _, h, j in rest[: heads * keep_past - heads * floor]:
        keep[h].add(j)
    return keep


def test_adakv_tokens_equal_a_dense_masked_reference(tiny, monkeypatch):
    """Reference: the full cache; each layer's evicted entries masked per KV head with −inf at decode."""
    from transformers.modeling_utils import AttentionInterface

    loaded, inputs, layout = tiny
    model, L = loaded.model, inputs["input_ids"].shape[1]
    with torch.inference_mode(), starkv.attach(model, starkv.build("adakv"), BUDGET, layout):
        ragged = _generate(model, inputs, 6)

    plan = plan_selection(L, int(L * BUDGET / 100), 8)
    masks: dict[int, torch.Tensor] = {}
    impl = model.config.get_text_config()._attn_implementation  # noqa: SLF001 - the backend the model runs
    mapping = AttentionInterface._global_mapping  # noqa: SLF001 - swap the attention function for the test
    original = mapping[impl]
    decoder = {id(layer.self_attn) for layer in decoder_layers(model)}

    def reference(module, query, key, value, attention_mask, scaling, **kwargs):
        if id(module) not in decoder:  # the vision tower
            return original(module, query, key, value, attention_mask, scaling=scaling, **kwargs)
        if query.shape[2] > 1:  # the prefill: plain causal attention on the full K/V; choose what to keep  # text prefill: choose, then attend
            scores = group_mean(window_scores(query, key, plan.window, plan.past, 5), key.shape[1])
            keep = _reference_keep(scores, plan.keep_past, 0.2)
            mask = torch.zeros(key.shape[1], L)
            for h, kept in enumerate(keep):
                evicted = [j for j in range(plan.past) if j not in kept]
                mask[h, evicted] = -math.inf
            masks[module.layer_idx] = mask
            return original(module, query, key, value, attention_mask, scaling=scaling, **kwargs)
        group = query.shape[1] // key.shape[1]
        mask = torch.cat([masks[module.layer_idx], torch.zeros(key.shape[1], key.shape[2] - L)], dim=-1)
        k, v = key.repeat_interleave(group, dim=1), value.repeat_interleave(group, dim=1)
        logits = query @ k.transpose(-1, -2) * scaling + mask.repeat_interleave(group, dim=0)[None, :, None, :]
        return (logits.softmax(-1) @ v).transpose(1, 2), None

    monkeypatch.setitem(mapping, impl, reference)
    with torch.inference_mode():
        dense = _generate(model, inputs, 6)
    assert len(masks) == loaded.num_layers
    assert torch.equal(ragged.sequences, dense.sequences)
    for a, b in zip(ragged.logits, dense.logits):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_shared_prefill_gives_adakv_the_same_cache_and_tokens(tiny):
    """starkv.shared: one recorded prefill, AdaKV's selection on it, the replayed decode (pipeline sweeps)."""
    loaded, inputs, layout = tiny
    model = loaded.model
    with torch.inference_mode(), starkv.attach(model, starkv.build("adakv"), BUDGET, layout) as att:
        alone = _generate(model, inputs, 4)
    comp = starkv.build("adakv")
    with torch.inference_mode():
        with record_prefill(model, [comp, starkv.build("snapkv")], layout) as record:
            _generate(model, inputs, 1)
        shared_att, holders = compress_record(model, record, comp, BUDGET)
        assert all(isinstance(h, RaggedLayer) for h in holders)
        no_pixels = {k: v for k, v in inputs.items() if k not in ("pixel_values", "pixel_values_videos")}
        with replay_prefill(model, record, holders):
            shared = _generate(model, no_pixels, 4)
    assert [s.head_lengths for s in shared_att.stats] == [s.head_lengths for s in att.stats]
    assert shared_att.kv_bytes == att.kv_bytes
    assert torch.equal(shared.sequences, alone.sequences)


def test_head_adaptive_units_decode_alone_in_a_sweep():
    from pipeline.step.sweep import Member, decode_batches

    def member(name):
        return Member(unit=SimpleNamespace(budget=10.0), compressor=starkv.build(name), history=None)

    snap, ada, snap2 = member("snapkv"), member("adakv"), member("snapkv")
    assert decode_batches([snap, ada, snap2]) == [[snap], [ada], [snap2]]


def test_eager_attention_decodes_a_ragged_cache(tiny, tiny_model_dir):
    """A ragged layer ignores the one decode mask transformers sizes from layer 0: eager works too."""
    from pipeline.models.loader import ModelSpec, load_model

    loaded, inputs, layout = tiny
    eager = load_model(ModelSpec(path=str(tiny_model_dir), device="cpu", dtype="float32",
                                 attn_implementation="eager"))
    runs = []
    for model in (loaded.model, eager.model):
        with torch.inference_mode(), starkv.attach(model, starkv.build("adakv"), BUDGET, layout) as att:
            runs.append((_generate(model, inputs, 4), att.kv_bytes))
    (sdpa_out, sdpa_bytes), (eager_out, eager_bytes) = runs
    assert eager_bytes == sdpa_bytes
    assert torch.equal(eager_out.sequences, sdpa_out.sequences)


def test_a_chunked_prefill_rejects_head_adaptive_compressors():
    from starkv.hook import Attachment, ChunkState, layer_compressor

    att = Attachment(model=None, compressor=starkv.build("adakv"), budget=BUDGET,
                     chunk=ChunkState(prefix_length=12, final=False))
    holder = SimpleNamespace(keys=torch.zeros(1, 2, 12, 4), values=torch.zeros(1, 2, 12, 4))
    with pytest.raises(ValueError, match="chunked prefill"):
        layer_compressor(att, 0, 2).compress(None, torch.zeros(1, 12, 8), holder, 12, torch.zeros(1, 4, 8, 4))
