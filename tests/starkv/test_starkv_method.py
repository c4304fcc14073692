"""STaR-KV compressor: parity with the loop-based float64 reference, state handling, entropy modes."""

from __future__ import annotations

import types

import pytest
import torch

import starkv
from starkv.budget import capacity, plan_selection
from starkv.compressor import topk_with_window
from starkv.context import LayerContext
from starkv.hook import Attachment, _LayerHook, allocate_layer_capacities
from starkv.layout import PromptLayout
from starkv.methods import mi as mi_mod
from starkv.methods.starkv import StarKV, best_group
from tests.starkv.reference_starkv import ReferenceStarKV, reference_plan

H, N_KV, HEAD_DIM, HIDDEN = 8, 4, 8, 16


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: intra-op threads only add spin-wait overhead on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_ctx(seed: int, layer_idx: int, num_images: int, image_tokens: int = 42, budget: float = 20.0,
             num_layers: int = 2, dtype=torch.float64) -> LayerContext:
    """Random prompt: text, then ``num_images`` screenshots with text between, then trailing text."""
    gen = torch.Generator().manual_seed(seed)
    gaps = torch.randint(5, 20, (num_images + 1,), generator=gen).tolist()
    gaps[-1] += 12  # the window sits in the trailing instruction text
    spans, pos = [], 0
    for f in range(num_images):
        pos += gaps[f]
        spans.append((pos, pos + image_tokens))
        pos += image_tokens
    length = pos + gaps[-1]
    layout = PromptLayout(image_spans=tuple(spans), prompt_length=length)
    keys = 1.5 * torch.randn(1, N_KV, length, HEAD_DIM, generator=gen, dtype=dtype)
    queries = 1.5 * torch.randn(1, H, 8, HEAD_DIM, generator=gen, dtype=dtype)
    scale = torch.rand(1, length, 1, generator=gen, dtype=dtype) + 0.5
    hidden = scale * torch.randn(1, length, HIDDEN, generator=gen, dtype=dtype)
    plan = plan_selection(length, capacity(length, budget), 8)  # the fast path's input, as the hook builds it
    return LayerContext(layer_idx=layer_idx, num_layers=num_layers, queries=queries, keys=keys,
                        values=keys.clone(), hidden_states=hidden, layout=layout, budget=budget, plan=plan)


def episode(seed: int, max_images: int, steps: int, layers: int = 1, image_tokens: int = 42):
    """Per step, the contexts of every layer; the history grows by one screenshot per step up to the cap."""
    return [[make_ctx(seed * 1000 + 10 * t + li, li, min(t + 1, max_images), image_tokens, num_layers=layers)
             for li in range(layers)] for t in range(steps)]


def assert_same_selection(fast: torch.Tensor, ref_scores: list[float], ref_idx: list[int], ctx: LayerContext) -> None:
    """Scores equal up to fp32 rounding; kept indices identical except for true near-ties at the cut.

    The sizes come from the spec's rule (``reference_plan``), not from the plan the fast path was given.
    """
    expected = reference_plan(ctx.length, ctx.budget)
    assert len(ref_scores) == expected.past and len(ref_idx) == expected.kept == int(ctx.length * ctx.budget / 100)
    assert ref_idx[-expected.window:] == list(range(ctx.length - 8, ctx.length))  # the last 8 positions
    ref = torch.tensor(ref_scores, dtype=torch.float64)
    torch.testing.assert_close(fast[0].double(), ref, rtol=2e-4, atol=1e-9)
    idx = topk_with_window(fast, ctx.plan, N_KV)
    assert idx.shape == (N_KV, expected.kept) and bool((idx == idx[0]).all())
    got = idx[0].tolist()
    if got != ref_idx:
        kth = ref.sort(descending=True).values[expected.keep_past - 1]
        for j in set(got) ^ set(ref_idx):
            assert abs(float(ref[j] - kth)) <= 1e-5 * float(kth), f"index {j} differs beyond a near-tie"


STRONG = dict(mi_grid=4, mi_bins=8, mi_profile_steps=2, mi_ramp_steps=2, mi_lambda=0.9, mi_tau=0.5, temporal_delta=0.5,
              temporal_eps=0.2, temporal_min=0.1, temporal_warmup=1, entropy_smooth=0.5)
CONFIGS = {
    "all": {},
    "no_spatial": dict(spatial_boost=False),
    "no_mi": dict(mi_prior=False),
    "no_temporal": dict(temporal=False),
    "no_entropy": dict(entropy=False),
    "none": dict(spatial_boost=False, mi_prior=False, temporal=False, entropy=False),
    "strong": STRONG,
}


IMAGE_TOKENS = {1: 200, 2: 150, 5: 42}


@pytest.mark.parametrize("max_images", [1, 2, 5])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_matches_reference_over_an_episode(config, max_images):
    params = CONFIGS[config]
    fast, ref = StarKV(**params), ReferenceStarKV(**params)
    # > 144 tokens so the default 12x12 grid shares cells (at ≤ 144 every token has its own cell and the
    # MI is the same for every group); the 5-image case relies on the strong config's 4x4 grid for that
    tokens = IMAGE_TOKENS[max_images]
    for step in episode(seed=max_images, max_images=max_images, steps=8, image_tokens=tokens):
        for ctx in step:
            ref_scores, ref_idx = ref.run(ctx)
            assert_same_selection(fast.score(ctx), ref_scores, ref_idx, ctx)
    st, rs = fast.state(0), ref.states[0]
    assert st.temporal_steps == rs.u == 8
    if fast.mi_prior:
        assert st.mi_steps == rs.t == 8
        torch.testing.assert_close(st.mi_ema, torch.tensor(rs.E, dtype=torch.float64), rtol=1e-4, atol=1e-9)
        if tokens > 144 or fast.mi_grid <= 6:  # the groups' MI really differ, so the prior is exercised
            assert float(st.mi_ema.max() - st.mi_ema.min()) > 1e-3


def test_two_layers_keep_separate_state_and_match_reference():
    fast, ref = StarKV(**STRONG), ReferenceStarKV(**STRONG)
    for step in episode(seed=7, max_images=3, steps=8, layers=2):
        for ctx in step:
            ref_scores, ref_idx = ref.run(ctx)
            assert_same_selection(fast.score(ctx), ref_scores, ref_idx, ctx)
    assert not torch.equal(fast.state(0).mi_ema, fast.state(1).mi_ema)
    assert fast.select(episode(seed=8, max_images=3, steps=1)[0][0]).shape[0] == N_KV


def test_modules_change_scores_on_a_multi_image_episode():
    """Sanity that each switch is wired: on the strong settings every module alters the final scores."""
    steps = episode(seed=3, max_images=5, steps=8)
    full = StarKV(**STRONG)
    final = [full.score(s[0]) for s in steps][-1]
    for switch in ("spatial_boost", "mi_prior", "temporal", "entropy"):
        comp = StarKV(**{**STRONG, switch: False})
        other = [comp.score(s[0]) for s in steps][-1]
        assert not torch.allclose(final, other), switch


def test_mi_prior_inactive_during_profiling_steps():
    steps = episode(seed=4, max_images=2, steps=5)
    on, off = StarKV(temporal=False), StarKV(temporal=False, mi_prior=False)
    for s in steps:  # t <= N = 5: λ_eff = 0, factor exactly 1
        assert torch.equal(on.score(s[0]), off.score(s[0]))
    assert on.state(0).mi_steps == 5 and on.state(0).mi_ema is not None


def test_reset_equals_fresh_instance():
    a_steps, b_steps = episode(seed=11, max_images=5, steps=8), episode(seed=12, max_images=5, steps=2)
    used = StarKV(**STRONG)
    for s in a_steps:
        used.score(s[0])
    used.reset()
    fresh = StarKV(**STRONG)
    for s in b_steps:
        assert torch.equal(used.score(s[0]), fresh.score(s[0]))


def test_instances_do_not_share_state():
    a_steps, b_steps = episode(seed=21, max_images=5, steps=8), episode(seed=22, max_images=2, steps=8)
    alone_a, alone_b = StarKV(**STRONG), StarKV(**STRONG)
    expect_a = [alone_a.score(s[0]) for s in a_steps]
    expect_b = [alone_b.score(s[0]) for s in b_steps]
    x, y = StarKV(**STRONG), StarKV(**STRONG)
    for t in range(8):
        assert torch.equal(x.score(a_steps[t][0]), expect_a[t])
        assert torch.equal(y.score(b_steps[t][0]), expect_b[t])


def test_entropy_power_never_changes_the_kept_set():
    steps = episode(seed=31, max_images=5, steps=9)
    with_t, without = StarKV(**STRONG), StarKV(**{**STRONG, "entropy": False})
    for s in steps:
        ctx = s[0]
        a, b = with_t.score(ctx), without.score(ctx)
        assert not torch.allclose(a, b)
        assert torch.equal(topk_with_window(a, ctx.plan, N_KV), topk_with_window(b, ctx.plan, N_KV))


def _crafted_layers() -> list[LayerContext]:
    """Layer 0: every window query points at one key (low entropy); layer 1: zero queries (flat attention)."""
    peaked = make_ctx(41, 0, 2, image_tokens=150, num_layers=2, dtype=torch.float32)
    flat = make_ctx(41, 1, 2, image_tokens=150, num_layers=2, dtype=torch.float32)
    target = peaked.keys[0, :, 5, :]  # (n_kv, d)
    q = 20 * target.repeat_interleave(H // N_KV, dim=0)  # (H, d)
    peaked.queries = q[None, :, None, :].expand(1, H, 8, HEAD_DIM).contiguous()
    flat.queries = torch.zeros_like(flat.queries)
    return [peaked, flat]


def test_entropy_adaptive_budget_redistributes_the_same_total():
    assert StarKV().layer_adaptive is False
    comp = StarKV(entropy_adaptive_budget=True, spatial_boost=False)
    assert comp.layer_adaptive is True and type(comp).layer_adaptive is not True
    layers = _crafted_layers()
    weights = []
    for ctx in layers:
        scores = comp.score(ctx)
        weights.append(comp.layer_weight(ctx, scores))
    # T from the normalised entropy: flat attention -> ≈ 1.25; one attended key (spread by the 5-pooling)
    assert weights[1] > 1.2 and weights[1] - weights[0] > 0.2
    uniform = [int(ctx.length * 20 / 100) for ctx in layers]  # the budget rule at b = 20 %
    caps = allocate_layer_capacities(weights, uniform, layers[0].length)
    assert sum(caps) == sum(uniform) and caps != uniform and caps[1] > caps[0]

    # the real hook path: it reads ``layer_adaptive`` on the instance and defers to the last layer
    comp.reset()
    att = Attachment(model=None, compressor=comp, budget=20.0, layout=layers[0].layout)
    for i, ctx in enumerate(layers):
        cache = types.SimpleNamespace(keys=ctx.keys.clone(), values=ctx.values.clone())
        _LayerHook(att, i, len(layers)).compress(None, ctx.hidden_states, cache, ctx.length, ctx.queries)
    kept = [s.kept_length for s in att.stats]
    assert sum(kept) == sum(uniform) and kept == caps


def test_mi_estimator_hand_case_and_ties():
    # 4 tokens, grid 2x2 guess, cells with grid 2: one token per cell; 2 value bins
    scores = torch.tensor([[1.0, 1.0, 3.0, 3.0], [2.0, 2.0, 2.0, 2.0]])
    mi = mi_mod.spatial_mi(scores, grid=2, bins=2)
    # group 0: bins (0,0,1,1) vs 4 distinct cells -> MI = H(a) = ln 2; group 1: ties broken by position,
    # ranks 0..3 -> same bins -> ln 2 as well
    torch.testing.assert_close(mi, torch.full((2,), torch.log(torch.tensor(2.0)).item(), dtype=torch.float64))
    assert mi_mod.spatial_mi(torch.zeros(3, 10)).tolist() == [0.0, 0.0, 0.0]
    assert mi_mod.rank_bins(torch.tensor([[5.0, 5.0, 5.0, 1.0]]), bins=4).tolist() == [[1, 2, 3, 0]]
    assert mi_mod.square_grid(2691) == (52, 52) and mi_mod.square_grid(40) == (6, 7)
    assert mi_mod.ramp_lambda(5, 0.5, 5, 10) == 0.0 and mi_mod.ramp_lambda(6, 0.5, 5, 10) == pytest.approx(0.05)
    assert mi_mod.ramp_lambda(15, 0.5, 5, 10) == 0.5


def test_packed_key_ranks_equal_stable_argsort():
    """The fast rank path (packed int64 keys, one 1-D sort) equals a stable argsort, ties and -0.0 included."""
    gen = torch.Generator().manual_seed(5)
    x = torch.rand(4, 301, generator=gen).clamp_min(0.3) - 0.3  # many exact zeros (ties)
    x[1, ::7] = x[1, 3]  # more ties
    x[2, 10] = -0.0
    slow = mi_mod.stable_ranks(x.double())
    assert torch.equal(mi_mod.stable_ranks(x, nonnegative=True), slow)
    for grid, bins in ((12, 16), (4, 8)):
        fast_joint = mi_mod.joint_histogram(x, grid, bins)
        slow_joint = mi_mod.joint_histogram(x.double(), grid, bins)
        assert torch.equal(fast_joint, slow_joint) and int(fast_joint.sum()) == x.numel()
        torch.testing.assert_close(mi_mod.spatial_mi(x, grid, bins), mi_mod.spatial_mi(x.double(), grid, bins))


def test_best_group_takes_the_first_maximum():
    groups = torch.tensor([[1.0, 2.0, 0.5], [1.0, 3.0, 0.5], [0.0, 3.0, 0.5]])
    assert best_group(groups).tolist() == [0, 1, 0]


def test_registered_and_built_by_name():
    comp = starkv.build("starkv", mi_prior=False)
    assert isinstance(comp, StarKV) and comp.params()["mi_prior"] is False
    assert "_states" not in comp.params()
