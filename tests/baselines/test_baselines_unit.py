"""Unit tests of the baseline compressors on hand-built layer contexts (tensors only, no model)."""

from __future__ import annotations

import types

import pytest
import torch

import starkv
from baselines.allocation.pyramidkv import PyramidKV, pyramid_past_budgets
from baselines.multimodal.guikv import GUIKV, key_residuals
from baselines.multimodal.vlcache import VLCache
from baselines.reference.random_keep import RandomKeep
from baselines.scorers.streamingllm import StreamingLLM
from starkv.budget import capacity, plan_selection
from starkv.context import LayerContext
from starkv.hook import Attachment, _LayerHook, allocate_layer_capacities
from starkv.layout import PromptLayout
from starkv.methods.starkv import StarKV

H, H_KV, D = 8, 2, 16
SPANS = {1: ((10, 60),), 2: ((10, 50), (60, 100)), 3: ((5, 35), (40, 70), (80, 110))}


def make_ctx(comp, length=128, budget=20.0, spans=((10, 60),), layer_idx=0, num_layers=4, seed=0,
             head_dim=D, keys=None, queries=None) -> LayerContext:
    gen = torch.Generator().manual_seed(seed)
    layout = PromptLayout(image_spans=tuple(spans), prompt_length=length)
    rows = min(length, comp.query_window(layout, length))
    # the compressor's input, built as the hook builds it; expected values below never come from it
    cap = comp.layer_capacity(length, capacity(length, budget), layer_idx, num_layers)
    return LayerContext(
        layer_idx=layer_idx, num_layers=num_layers,
        queries=torch.randn(1, H, rows, head_dim, generator=gen) if queries is None else queries,
        keys=torch.randn(1, H_KV, length, head_dim, generator=gen) if keys is None else keys,
        values=torch.randn(1, H_KV, length, head_dim, generator=gen),
        hidden_states=torch.randn(1, length, 32, generator=gen), layout=layout, budget=budget,
        plan=plan_selection(length, cap, comp.window_size),
    )


ALL = [GUIKV, PyramidKV, StreamingLLM, VLCache, RandomKeep]


@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize("budget", [1, 20])
@pytest.mark.parametrize("n_images", [1, 2, 3])
def test_shapes_sorted_window_kept(cls, budget, n_images):
    comp = cls()
    ctx = make_ctx(comp, budget=budget, spans=SPANS[n_images], layer_idx=1)
    idx = comp.select(ctx)
    assert torch.all(idx[:, 1:] > idx[:, :-1])  # ascending, no duplicates
    assert idx.min() >= 0 and idx.max() < 128
    # the budget rule C = int(128·b/100): 1 % -> 1, below the floor of 2 (window 1 + one past token);
    # 20 % -> 25 = the last 8 positions + 17 chosen ones. PyramidKV's per-layer sizes are checked below.
    kept, window = {1: (2, 1), 20: (25, 8)}[budget]
    if cls is not PyramidKV:
        assert idx.shape == (H_KV, kept)
    last = torch.arange(128 - window, 128)
    for row in idx:
        assert torch.isin(last, row).all()


@pytest.mark.parametrize("cls", [*ALL, StarKV])
@pytest.mark.parametrize("n_images", [1, 2, 3])
def test_budget_100_keeps_every_token_through_the_hook(cls, n_images):
    """b = 100 goes through the hook's prefill step for every layer and leaves each cache untouched."""
    comp = cls()
    att = Attachment(model=None, compressor=comp, budget=100.0, layout=None)
    caches = []
    for layer in range(4):
        ctx = make_ctx(comp, budget=100, spans=SPANS[n_images], layer_idx=layer, num_layers=4, seed=layer)
        att.layout = ctx.layout
        cache = types.SimpleNamespace(keys=ctx.keys.clone(), values=ctx.values.clone())
        _LayerHook(att, layer, 4).compress(None, ctx.hidden_states, cache, ctx.length, ctx.queries)
        caches.append((cache, ctx))
    assert [s.kept_length for s in att.stats] == [128] * 4
    for cache, ctx in caches:
        assert torch.equal(cache.keys, ctx.keys) and torch.equal(cache.values, ctx.values)


def test_registered_names():
    assert {"guikv", "pyramidkv", "streamingllm", "vlcache", "random"} <= set(starkv.available())
    assert isinstance(starkv.build("random", seed=3), RandomKeep)


# --- GUI-KV ---------------------------------------------------------------------------------------------

def redundant_setup(length=160, budget=20.0, head_dim=64):
    """Two screenshots: prev (10, 40), current (50, 130); some prev keys lie in the span of the current
    image's first 32 keys (r = 32 < d = 64), the rest are generic."""
    comp = GUIKV()
    prev, cur = (10, 40), (50, 130)
    n_prev = prev[1] - prev[0]
    n_zero = int((1 - int(length * budget / 100) / length) * n_prev)  # n_z = (1 - C/L)·n, C = int(L·b/100)
    gen = torch.Generator().manual_seed(1)
    keys = torch.randn(1, H_KV, length, head_dim, generator=gen)
    redundant = torch.arange(prev[0], prev[0] + n_zero)
    first = keys[0, :, cur[0] : cur[0] + 32, :]  # (H_kv, 32, d)
    mix = torch.randn(H_KV, n_zero, 32, generator=gen)
    keys[0, :, redundant, :] = mix @ first
    ctx = make_ctx(comp, length=length, budget=budget, spans=(prev, cur), head_dim=head_dim, keys=keys)
    return comp, ctx, redundant, n_zero


def test_guikv_residuals_vanish_in_span():
    comp, ctx, redundant, n_zero = redundant_setup()
    positions = torch.arange(10, 40)
    res = key_residuals(ctx.keys[0], (50, 130), positions, comp.rank)
    assert res.shape == (H_KV, 30)
    assert res[:, :n_zero].max() < 1e-3 < res[:, n_zero:].min()


def test_guikv_zeroes_exactly_n_z_redundant_tokens():
    comp, ctx, redundant, n_zero = redundant_setup()
    assert 0 < n_zero < 30
    scores = comp.score(ctx)
    base = GUIKV(temporal=False).score(ctx)
    assert (base > 0).all()
    zeroed = scores == 0
    assert int(zeroed.sum(dim=1)[0]) == n_zero and int(zeroed.sum(dim=1)[1]) == n_zero
    assert zeroed[:, redundant].all()
    assert torch.equal(scores[~zeroed], base[~zeroed])
    # single screenshot: no temporal step
    one = make_ctx(comp, length=160, spans=((50, 130),), head_dim=64, keys=ctx.keys)
    assert (comp.score(one) > 0).all()


def test_guikv_never_prefers_redundant_over_higher_scored_token():
    comp, ctx, redundant, _ = redundant_setup(budget=40.0)
    base = GUIKV(temporal=False).score(ctx)
    idx = comp.select(ctx)
    is_red = torch.zeros(ctx.plan.past, dtype=torch.bool)
    is_red[redundant] = True
    for h in range(H_KV):
        kept = torch.zeros(ctx.plan.past, dtype=torch.bool)
        kept[idx[h][idx[h] < ctx.plan.past]] = True
        for j in torch.nonzero(kept & is_red).flatten():
            higher = (~is_red) & (base[h] > base[h, j])
            assert kept[higher].all()
        assert not (kept & is_red).any()  # plenty of non-redundant tokens at this budget


def test_guikv_spatial_boost_only_on_current_image():
    ctx = make_ctx(GUIKV(), spans=SPANS[2])
    diff = GUIKV(temporal=False).score(ctx) - GUIKV(temporal=False, alpha=0.0).score(ctx)
    assert torch.allclose(diff[:, 60:100].sum(dim=1), torch.full((H_KV,), 2.0), atol=1e-4)
    assert diff[:, :60].abs().max() == 0 and diff[:, 100:].abs().max() == 0


# --- PyramidKV ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("length,budget,layers", [(1000, 20, 28), (1000, 5, 28), (300, 10, 4), (5000, 1, 28),
                                                  (128, 40, 4), (1000, 45, 28), (100, 56, 3)])
def test_pyramid_total_equals_uniform_and_decreases(length, budget, layers):
    comp = PyramidKV()
    cap = capacity(length, budget)
    kept = [plan_selection(length, comp.layer_capacity(length, cap, i, layers), comp.window_size).kept
            for i in range(layers)]
    assert sum(kept) == layers * int(length * budget / 100)  # the total of the uniform budget rule
    assert all(a >= b for a, b in zip(kept, kept[1:]))
    assert kept[0] > kept[-1]


def test_pyramid_endpoints_hand_computed():
    # L 1000, b 20 %: C 200, W 8, C' 192, min 192 // 20 = 9, max 384 - 9 = 375 (< L - W = 992)
    budgets = pyramid_past_budgets(1000, 192, 8, 28, 20)
    assert budgets[0] == 375 and budgets[-1] == 9 and sum(budgets) == 28 * 192
    # clipped branch: L 100, C' 48 -> max 96 - 2 = 94 >= 92 -> max 92, min 4
    budgets = pyramid_past_budgets(100, 48, 8, 3, 20)
    assert budgets == [92, 48, 4]


def test_pyramid_falls_back_to_uniform_for_short_prompts():
    comp = PyramidKV()
    assert [comp.layer_capacity(100, 80, i, 4) for i in range(4)] == [80] * 4  # C 80, C' = 72, L < 2C'


# --- StreamingLLM ---------------------------------------------------------------------------------------

def test_streamingllm_keeps_sinks_and_recent():
    comp = StreamingLLM()
    ctx = make_ctx(comp, length=128, budget=20)  # C 25
    idx = comp.select(ctx)
    expected = torch.cat([torch.arange(4), torch.arange(128 - 21, 128)])
    assert torch.equal(idx, expected.expand(H_KV, -1))


# --- VL-Cache -------------------------------------------------------------------------------------------

def test_vlcache_query_window_is_post_vision():
    comp = VLCache()
    layout = PromptLayout(image_spans=((10, 60),), prompt_length=128)
    assert comp.query_window(layout, 128) == 68
    assert comp.query_window(PromptLayout(image_spans=((10, 125),), prompt_length=128), 128) == 8
    assert comp.query_window(PromptLayout(prompt_length=128), 128) == 8


def test_vlcache_denser_layer_gets_more_and_total_is_uniform():
    comp = VLCache()
    length, layers = 64, 4
    gen = torch.Generator().manual_seed(2)
    keys = torch.randn(1, H_KV, length, D, generator=gen)
    weights, uniform = [], []
    for i, scale in enumerate([0.0, 1.0, 8.0, 30.0]):  # 0: uniform attention (1/L > 0.01) -> dense
        ctx = make_ctx(comp, length=length, budget=20, spans=((5, 30),), layer_idx=i, num_layers=layers, keys=keys)
        ctx.queries = ctx.queries * scale
        scores = comp.score(ctx)
        assert scores.shape == (H_KV, ctx.plan.past)
        weights.append(comp.layer_weight(ctx, scores))
        uniform.append(12)  # int(64 · 20 / 100)
    assert weights[0] == pytest.approx(1.0)
    assert weights[0] > weights[2] > weights[3]
    caps = allocate_layer_capacities(weights, uniform, length)
    assert sum(caps) == sum(uniform)
    assert caps[0] > uniform[0] > caps[3]


def test_vlcache_sparsity_hand_computed():
    # one head, two rows over L = 3 keys, causal: row 0 sees keys 0-1, row 1 sees all three
    from baselines.multimodal.vlcache import post_vision_attention

    q = torch.zeros(1, 1, 2, 4)
    q[0, 0, 0, 0] = 100.0  # row 0 puts all mass on key 0 -> key 1 weight ~0 (sparse)
    k = torch.zeros(1, 1, 3, 4)
    k[0, 0, 0, 0] = 1.0
    attn, sparsity = post_vision_attention(q, k, 0.01)
    assert sparsity == pytest.approx(1 / 5)  # 1 sparse entry of 5 visible ones
    assert torch.allclose(attn[0], torch.tensor([1 + 1 / 3, 1 / 3, 1 / 3]), atol=1e-6)


# --- Random ---------------------------------------------------------------------------------------------

def test_random_reproducible_and_seed_dependent():
    def run(seed, steps=2):
        comp = RandomKeep(seed=seed)
        out = []
        for _ in range(steps):
            for layer in range(2):
                out.append(comp.select(make_ctx(comp, layer_idx=layer, num_layers=2)))
        return comp, out

    comp, a = run(0)
    _, b = run(0)
    _, c = run(1)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))
    assert not torch.equal(a[0], a[1]) and not torch.equal(a[0], a[2])  # layers and prefills differ
    comp.reset()
    assert torch.equal(comp.select(make_ctx(comp, layer_idx=0, num_layers=2)), a[0])
    assert "_prefills" not in comp.params()
