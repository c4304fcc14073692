"""``starkv.flops``: torch's flop counter on small ops whose counts are worked out by hand (2 flops per
multiply-add: an (m, k) @ (k, n) product is 2·m·n·k), the CPU attention kernel it adds, the meter's stop and
regions, and the selection's share the prefill hook counts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import starkv
from starkv.flops import FlopMeter, count_flops, region_flops


def test_matmuls():
    a, b = torch.ones(3, 4), torch.ones(4, 5)
    with count_flops() as t:
        a @ b
    assert t.flops == 2 * 3 * 5 * 4  # 120
    with count_flops() as t:
        torch.ones(2, 3, 4) @ torch.ones(2, 4, 5)
    assert t.flops == 2 * (2 * 3 * 5 * 4)  # 240: two (3, 4) @ (4, 5) products


def test_linear_under_inference_mode_is_counted():
    # inference_mode hands aten.linear over whole; it is decomposed into its (6, 4) @ (4, 5) product + bias
    x, w, bias = torch.ones(1, 6, 4), torch.ones(5, 4), torch.ones(5)
    with torch.inference_mode(), count_flops() as t:
        F.linear(x, w, bias)
    assert t.flops == 2 * 6 * 5 * 4  # 240; the bias add counts 0


def test_cpu_fused_attention_with_grouped_heads():
    # 4 query heads over 2 KV heads, 10 queries, 12 keys, head dim 8: per query head QKᵀ is (10, 8) @ (8, 12)
    # and AV is (10, 12) @ (12, 8), 2·10·12·8 flops each, the full 10 × 12 scores (no causal saving)
    q, k, v = torch.ones(1, 4, 10, 8), torch.ones(1, 2, 12, 8), torch.ones(1, 2, 12, 8)
    with torch.inference_mode(), count_flops() as t:
        F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    assert t.flops == 4 * 2 * (2 * 10 * 12 * 8)  # 15,360
    with torch.inference_mode(), count_flops() as t:
        F.scaled_dot_product_attention(q[:, :2], k, v, is_causal=True)
    assert t.flops == 2 * 2 * (2 * 10 * 12 * 8)  # 7,680


def test_what_counts_zero():
    x = torch.rand(6, 7)
    with count_flops() as t:
        (x * 2 + 1).softmax(-1).topk(3, dim=-1).indices.sort(-1)
        x.gather(1, torch.zeros(6, 2, dtype=torch.long))
        F.avg_pool1d(x.unsqueeze(0), 3, stride=1, padding=1)
    assert t.flops == 0
    with count_flops(enabled=False) as t:
        x @ x.T
    assert t.flops == 0


def test_meter_stops_and_regions_take_differences():
    a, b = torch.ones(3, 4), torch.ones(4, 5)
    with FlopMeter() as meter:
        a @ b                                   # 120
        with region_flops(meter) as region:
            a @ b
            a @ b                               # 240 in the region
        meter.stop()
        a @ b                                   # not counted
        assert not meter.counting
    assert meter.total == 3 * 120 and region.flops == 240
    with region_flops(None) as none:
        a @ b
    assert none.flops == 0


def test_meters_nest():
    a, b = torch.ones(3, 4), torch.ones(4, 5)
    with count_flops() as outer:
        with count_flops() as inner:
            a @ b
        a @ b
    assert (outer.flops, inner.flops) == (240, 120)


def test_hook_counts_the_selection_of_every_layer(tiny_model):
    """SnapKV's only counted op is the observation-window product per layer, one (G·W, d) @ (d, L) per KV
    head: 2·H·W·d·L flops for H query heads of head dim d; pooling, softmax, top-k and gathers count 0."""
    model, processor = tiny_model
    cfg = model.config.text_config
    heads, head_dim, layers = cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads, cfg.num_hidden_layers
    inputs = processor(text=["a small prompt of text only, long enough to compress" * 3], return_tensors="pt")
    length = inputs["input_ids"].shape[1]
    window = 8
    with torch.inference_mode(), FlopMeter() as meter, \
            starkv.attach(model, starkv.build("snapkv", window_size=window), 50, flop_meter=meter) as att:
        model.generate(**inputs, max_new_tokens=2, do_sample=False)
    assert att.compress_flops == layers * 2 * heads * window * head_dim * length
    assert meter.total > att.compress_flops  # the model's own matmuls, decode included (never stopped)
    with torch.inference_mode(), starkv.attach(model, starkv.build("snapkv"), 50) as att:
        model.generate(**inputs, max_new_tokens=2, do_sample=False)
    assert att.compress_flops == 0  # no meter: nothing counted


@pytest.mark.parametrize("name", ["full", "streamingllm", "random"])
def test_selections_without_products_count_zero(tiny_model, name):
    model, processor = tiny_model
    inputs = processor(text=["a small prompt of text only, long enough to compress" * 3], return_tensors="pt")
    with torch.inference_mode(), FlopMeter() as meter, \
            starkv.attach(model, starkv.build(name), 50, flop_meter=meter) as att:
        model.generate(**inputs, max_new_tokens=1, do_sample=False)
    assert att.compress_flops == 0 and meter.total > 0
