"""Unit storage options: KIVI integer storage (``kv_quant``) and the drivers' per-query-head layout.

Expected codes, scales and bytes are worked out by hand in the comments; the model tests compare a
storage option against the default path on the tiny model, and the UI-TARS-1.5-7B test runs the real
hook on fake tensors at full size.
"""

from __future__ import annotations

import pytest
import torch

import starkv
from starkv.hook import _gather_query_heads
from starkv.storage import KVQuant, KVStorage, kivi, kivi_bytes, kivi_split, split_storage_tag
from starkv.storage.layers import KIVILayer, QueryHeadLayer
from tests.helpers_model import tiny_with_prompt

# ------------------------------------------------------------------ arithmetic, by hand


def test_pack_puts_the_first_code_in_the_lowest_bits():
    # 2 bits: codes 0, 1, 2, 3 -> 0 + 1·4 + 2·16 + 3·64 = 228; 4 bits: 3, 12 -> 3 + 12·16 = 195
    assert kivi.pack(torch.tensor([[0, 1, 2, 3]]), 2).tolist() == [[228]]
    assert kivi.pack(torch.tensor([[3, 12]]), 4).tolist() == [[195]]
    assert kivi.pack(torch.tensor([[7, 255]]), 8).tolist() == [[7, 255]]
    assert kivi.unpack(torch.tensor([[228]], dtype=torch.uint8), 2).tolist() == [[0, 1, 2, 3]]
    assert kivi.unpack(torch.tensor([[195]], dtype=torch.uint8), 4).tolist() == [[3, 12]]


def test_keys_are_quantized_per_channel_over_groups_of_tokens():
    """Two tokens, four channels, G = 2, 2 bits (codes 0..3): one group of both tokens per channel.

    channel 0: (0, 3) -> min 0, scale 3/3 = 1, codes (0, 3); channel 1: (1, 1) constant -> scale 0, codes 0;
    channel 2: (2, 0) -> min 0, scale 2/3, codes (round(2 / (2/3)) = 3, 0); channel 3: (3, 3) constant.
    Token 0 codes (0, 0, 3, 0) -> byte 3·16 = 48; token 1 codes (3, 0, 0, 0) -> byte 3.
    """
    keys = torch.tensor([[0.0, 1.0, 2.0, 3.0], [3.0, 1.0, 0.0, 3.0]]).view(1, 1, 2, 4)
    quant = KVQuant(bits=2, group_size=2, residual_length=2)
    q = kivi.quantize_keys(keys, quant)
    assert q.codes.tolist() == [[[[48], [3]]]]
    torch.testing.assert_close(q.scale, torch.tensor([[[[1.0, 0.0, 2 / 3, 0.0]]]]))
    assert q.zero.tolist() == [[[[0.0, 1.0, 0.0, 3.0]]]]
    torch.testing.assert_close(kivi.dequantize_keys(q, quant, torch.float32), keys)  # exact on this grid


def test_values_are_quantized_per_token_over_groups_of_channels():
    """One token (0, 2, 10, 10), G = 2, 2 bits: group (0, 2) -> min 0, scale 2/3, codes (0, 3); group
    (10, 10) constant -> scale 0, zero 10, codes (0, 0). Byte: 0 + 3·4 + 0 + 0 = 12."""
    values = torch.tensor([0.0, 2.0, 10.0, 10.0]).view(1, 1, 1, 4)
    quant = KVQuant(bits=2, group_size=2, residual_length=2)
    q = kivi.quantize_values(values, quant)
    assert q.codes.tolist() == [[[[12]]]]
    torch.testing.assert_close(q.scale, torch.tensor([[[[2 / 3, 0.0]]]]))
    assert q.zero.tolist() == [[[[0.0, 10.0]]]]
    torch.testing.assert_close(kivi.dequantize_values(q, quant, torch.float32), values)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_dequantized_elements_are_within_half_a_scale(bits):
    g = torch.Generator().manual_seed(bits)
    keys, values = torch.randn(1, 2, 64, 32, generator=g), torch.randn(1, 2, 64, 32, generator=g)
    quant = KVQuant(bits=bits, group_size=32, residual_length=32)
    qk, qv = kivi.quantize_keys(keys, quant), kivi.quantize_values(values, quant)
    k_err = (kivi.dequantize_keys(qk, quant, torch.float32) - keys).abs().view(1, 2, 2, 32, 32)
    v_err = (kivi.dequantize_values(qv, quant, torch.float32) - values).abs().view(1, 2, 64, 1, 32)
    assert (k_err <= qk.scale.unsqueeze(3) / 2 + 1e-6).all()
    assert (v_err <= qv.scale.unsqueeze(4) / 2 + 1e-6).all()


def test_kivi_layer_bytes_through_prefill_and_decode():
    """H = 2 heads, d = 32, fp32 (e = 4 bytes), G = R = 32, 4 bits (a byte holds 2 codes); 100 kept tokens.

    Prefill: keys quantize 100 − 100 mod 32 = 96 tokens, values 100 − 32 = 68 (KIVI's residual rule).
      key codes 2·96·32/2 = 3072, key scale + zero 2·(96/32 groups)·32 channels·2·4 = 1536, key residual
      2·4·32·4 = 1024; value codes 2·68·32/2 = 2176, value scale + zero 2·68·(32/32)·2·4 = 1088, value
      residual 2·32·32·4 = 8192. Total 17088 (full precision: 2·2·100·32·4 = 51200).
    One decode token: 5 residual keys (no flush); values 33 > R -> the oldest is quantized (69):
      3072 + 1536 + 1280 + 2·69·16 (2208) + 2·69·2·4 (1104) + 8192 = 17392.
    27 more: the key residual reaches 32 and is quantized (128 keys), values 96 quantized:
      2·128·16 (4096) + 2·(128/32)·32·2·4 (2048) + 0 + 2·96·16 (3072) + 2·96·2·4 (1536) + 8192 = 18944.
    """
    g = torch.Generator().manual_seed(0)
    keys, values = torch.randn(1, 2, 100, 32, generator=g), torch.randn(1, 2, 100, 32, generator=g)
    quant = KVQuant(bits=4, group_size=32, residual_length=32)
    layer = KIVILayer(keys, values, quant)
    assert kivi_split(100, quant) == (96, 68)
    assert (layer.nbytes(), kivi_bytes(2, 100, 32, 4, quant), layer.get_seq_length()) == (17088, 17088, 100)
    assert (layer.keys.shape[-2], layer.values.shape[-2]) == (4, 32)
    k, v = layer.update(torch.randn(1, 2, 1, 32, generator=g), torch.randn(1, 2, 1, 32, generator=g))
    assert (layer.nbytes(), layer.get_seq_length(), tuple(k.shape), tuple(v.shape)) == (17392, 101, (1, 2, 101, 32),
                                                                                         (1, 2, 101, 32))
    torch.testing.assert_close(v[..., 69:100, :], values[..., 69:, :], rtol=0, atol=0)  # the residual is exact
    for _ in range(27):
        layer.update(torch.randn(1, 2, 1, 32, generator=g), torch.randn(1, 2, 1, 32, generator=g))
    assert (layer.nbytes(), kivi_bytes(2, 128, 32, 4, quant), layer.keys.shape[-2]) == (18944, 18944, 0)


def test_kivi_without_residual_keeps_only_the_last_incomplete_key_group():
    # R = 0, G = 32, 70 tokens: keys 64 quantized + 6 residual (70 mod 32), values all 70 quantized
    assert kivi_split(70, KVQuant(bits=8, group_size=32, residual_length=0)) == (64, 70)


def test_query_head_gather_takes_each_row_from_its_kv_head():
    """keys[kv, t] = 10·kv + t, H_kv = 2, G = 2 (H = 4). Head h reads KV head h // 2 at its own indices."""
    keys = (10 * torch.arange(2).view(2, 1) + torch.arange(4)).float().view(1, 2, 4, 1)
    idx = torch.tensor([[0, 1], [2, 3], [1, 3], [0, 2]])
    k, v = _gather_query_heads(keys, -keys, idx, groups=2)
    assert k.view(4, 2).tolist() == [[0, 1], [2, 3], [11, 13], [10, 12]]
    assert v.view(4, 2).tolist() == [[0, -1], [-2, -3], [-11, -13], [-10, -12]]
    shared, _ = _gather_query_heads(keys, keys, torch.tensor([[3], [0]]), groups=2)  # one set per KV head
    assert shared.view(4).tolist() == [3, 3, 10, 10]


def test_query_head_layer_repeats_decode_tokens_to_the_group():
    layer = QueryHeadLayer(torch.zeros(1, 4, 2, 1), torch.zeros(1, 4, 2, 1), groups=2)
    keys, _ = layer.update(torch.tensor([1.0, 2.0]).view(1, 2, 1, 1), torch.tensor([1.0, 2.0]).view(1, 2, 1, 1))
    assert keys[0, :, -1, 0].tolist() == [1.0, 1.0, 2.0, 2.0] and layer.get_seq_length() == 3


def test_storage_tags_and_parsing():
    assert KVStorage().tag == "" and KVStorage().default
    assert KVStorage(layout="per_query_head", quant=KVQuant(bits=2)).tag == "+pqh+int2"
    assert split_storage_tag("snapkv+pqh+int4") == ("snapkv", "+pqh+int4")
    assert split_storage_tag("my+label") == ("my+label", "")
    with pytest.raises(ValueError, match="bits: 3 is not supported"):
        KVQuant(bits=3)
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['scale'\]"):
        KVQuant.from_dict({"bits": 4, "scale": 1})
    with pytest.raises(ValueError, match="kv_layout: compressor 'full' does not support per_query_head"):
        starkv.build("full").stored_as(KVStorage(layout="per_query_head"))


# ------------------------------------------------------------------ on the tiny model


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return tiny_with_prompt(tiny_model_dir)


def _generate(tiny, compressor, budget):
    loaded, inputs, layout = tiny
    with torch.inference_mode(), starkv.attach(loaded.model, compressor, budget, layout) as att:
        loaded.model.model.rope_deltas = None
        out = loaded.model.generate(**inputs, max_new_tokens=4, do_sample=False, return_dict_in_generate=True,
                                    output_logits=True)
    return att, out


def test_per_query_head_starkv_decodes_exactly_as_its_gqa_cache(tiny):
    """STaR-KV keeps one index set for every head, so its repeated cache holds the same K/V as the GQA one:
    the decode (attention told there is nothing to repeat) gives the same logits, with G = 2 times the bytes."""
    loaded, inputs, _ = tiny
    base_att, base = _generate(tiny, starkv.build("starkv"), 20)
    att, out = _generate(tiny, starkv.build("starkv").stored_as(KVStorage(layout="per_query_head")), 20)
    heads = loaded.model.config.text_config.num_attention_heads
    assert all(type(layer) is QueryHeadLayer and layer.keys.shape[1] == heads for layer in out.past_key_values.layers)
    assert torch.equal(out.sequences, base.sequences)
    for a, b in zip(out.logits, base.logits):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    assert att.kv_bytes == 2 * base_att.kv_bytes and att.kv_bytes_full == base_att.kv_bytes_full


@pytest.mark.parametrize("name", ["snapkv", "guikv"])
def test_per_query_head_selection_bytes_and_full_budget(tiny, name):
    """Per query head at 20 %: H = 4 rows of C = int(L/5) tokens (L = prompt length, d = 32, fp32, 3 layers):
    3·2·4·C·32·4 bytes. At 100 % nothing is evicted and the repeated cache decodes as the full cache."""
    loaded, inputs, _ = tiny
    length = inputs["input_ids"].shape[1]
    att, out = _generate(tiny, starkv.build(name).stored_as(KVStorage(layout="per_query_head")), 20)
    assert att.kv_bytes == 3 * 2 * 4 * int(length * 20 / 100) * 32 * 4
    assert att.kv_bytes_full == 3 * 2 * 2 * length * 32 * 4
    _, full = _generate(tiny, starkv.build("full"), 100)
    _, whole = _generate(tiny, starkv.build(name).stored_as(KVStorage(layout="per_query_head")), 100)
    assert torch.equal(whole.sequences, full.sequences)
    for a, b in zip(whole.logits, full.logits):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_kv_quant_bytes_on_the_tiny_model(tiny):
    """SnapKV at 50 % then int4, G = R = 32: C = int(L/2) tokens per layer of H_kv = 2 heads, d = 32, fp32.
    Keys quantize n_k = C − C mod 32 tokens, values n_v = C − 32; bytes per head and layer:
    n_k·32/2 + 2·(n_k/32)·32·4 + n_v·32/2 + 2·n_v·1·4 + (2C − n_k − n_v)·32·4."""
    loaded, inputs, _ = tiny
    length = inputs["input_ids"].shape[1]
    c = int(length * 50 / 100)
    n_k, n_v = c - c % 32, c - 32
    per_head = n_k * 16 + 2 * (n_k // 32) * 32 * 4 + n_v * 16 + 2 * n_v * 4 + (2 * c - n_k - n_v) * 32 * 4
    att, out = _generate(tiny, starkv.build("snapkv").stored_as(KVStorage(quant=KVQuant(bits=4, residual_length=32))),
                         50)
    assert att.kv_bytes == 3 * 2 * per_head and att.kept_tokens == c
    assert all(type(layer) is KIVILayer and layer.get_seq_length() == c + 3 for layer in out.past_key_values.layers)
    _, base = _generate(tiny, starkv.build("snapkv"), 50)
    assert out.sequences.shape == base.sequences.shape  # decoded to the end through the quantized layers


def test_kv_quant_8_bits_on_per_query_head_rows(tiny):
    """Both options together: the KIVI layer holds H = 4 rows and repeats decode tokens to them."""
    att, out = _generate(tiny, starkv.build("guikv").stored_as(KVStorage("per_query_head", KVQuant(bits=8))), 50)
    layer = out.past_key_values.layers[0]
    assert type(layer) is KIVILayer and layer.keys.shape[1] == 4 and layer.groups == 2
    assert att.stats[0].bytes_after == kivi_bytes(4, att.stats[0].kept_length, 32, 4, KVQuant(bits=8))


# ------------------------------------------------------------------ UI-TARS-1.5-7B dimensions, fake tensors


def test_per_query_head_at_20_percent_holds_1_4_times_the_gqa_full_cache():
    """UI-TARS-1.5-7B: 28 layers, 28 query heads, 4 KV heads, head_dim 128, bf16 (2 bytes). An 84x56
    screenshot gives a 475-token prompt (divisible by 5), so C = int(475·0.2) = 95 tokens per row.
    Per query head: 28 layers · 2 (K, V) · 28 heads · 95 · 128 · 2 = 38,133,760 bytes; the GQA full cache
    28 · 2 · 4 · 475 · 128 · 2 = 27,238,400 bytes; ratio 0.2 · 7 = 1.4. Per KV head it is 0.2."""
    from pipeline.bench.memory import load_facts, simulate
    from pipeline.bench.memory import prompt_inputs as uitars_prompt

    facts = load_facts("ui-tars-1.5-7b")
    inputs, layout = uitars_prompt(facts.processor, 1, (84, 56))
    assert inputs["input_ids"].shape[1] == 475
    pqh = simulate(facts, inputs, layout, starkv.build("snapkv").stored_as(KVStorage(layout="per_query_head")), 20,
                   "sdpa", 2, torch.bfloat16)
    assert (pqh["kv_bytes"], pqh["kv_bytes_full"], pqh["kept_tokens"]) == (38_133_760, 27_238_400, 95)
    assert pqh["kv_bytes"] * 10 == pqh["kv_bytes_full"] * 14
    default = simulate(facts, inputs, layout, starkv.build("snapkv"), 20, "sdpa", 2, torch.bfloat16)
    assert default["kv_bytes"] * 5 == default["kv_bytes_full"]  # 95 / 475 = 0.2: the default is unchanged
