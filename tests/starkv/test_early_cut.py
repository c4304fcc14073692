"""Layer-adaptive compressors cut each layer at once to a bound (starkv.early_cut): same kept sets, less held."""

from __future__ import annotations

import random

import pytest
import torch

import starkv
from starkv.early_cut import capacity_bound, positions_in, superset
from starkv.hook import allocate_layer_capacities
from tests.helpers_model import tiny_with_prompt


@pytest.mark.parametrize("seed", range(200))
def test_bound_holds_for_every_allocation(seed):
    rng = random.Random(seed)
    n = rng.choice([2, 4, 28, 36])
    length = rng.randint(50, 20_000)
    kept = rng.randint(2, length // 2)
    floor, ceil = rng.choice([(0.75, 1.25), (0.5, 1.0), (0.001, 1.0), (0.9, 1.1)])
    weights = [rng.choice([floor, ceil, 1.0, rng.uniform(floor, ceil)]) for _ in range(n)]
    caps = allocate_layer_capacities(weights, [kept] * n, length)
    for w, cap in zip(weights, caps):
        bound = capacity_bound(w, (floor, ceil), n, n * kept, length)
        if bound is not None:
            assert cap <= bound < length


def test_no_bound_without_a_weight_floor_or_when_a_layer_could_take_everything():
    assert capacity_bound(1.0, None, 28, 28 * 100, 1000) is None
    assert capacity_bound(1.0, (0.0, 1.0), 28, 28 * 100, 1000) is None
    # VL-Cache's default floor 0.001: one dense layer could take almost the whole total
    assert capacity_bound(1.0, (0.001, 1.0), 28, 28 * 200, 1000) is None
    assert capacity_bound(1.0, (0.75, 1.25), 28, 28 * 200, 1000) < 1000


def test_superset_keeps_ties_and_positions_map_back():
    scores = torch.tensor([[0.1, 0.5, 0.5, 0.5, 0.2, 0.9]])
    kept = superset(scores, keep_past=2, past=6, length=8, num_kv_heads=2)
    # the 2nd best score (0.5) is tied three times: all three stay
    assert kept.tolist() == [[1, 2, 3, 5, 6, 7]] * 2
    idx = torch.tensor([[3, 5, 6, 7], [1, 5, 6, 7]])
    assert positions_in(kept, idx).tolist() == [[2, 3, 4, 5], [0, 3, 4, 5]]
    with pytest.raises(RuntimeError, match="cut early"):
        positions_in(kept, torch.tensor([[0, 5, 6, 7]] * 2))


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    loaded, inputs, layout = tiny_with_prompt(tiny_model_dir)
    return loaded, dict(inputs), layout


class _NoBound:
    """Mixin: the compressor gives no weight range, so the hook holds every full cache to the last layer."""

    def layer_weight_range(self):
        return None


def _prefill(loaded, inputs, layout, comp, budget):
    """Cache after the prefill, and layer 0's cache length seen while layer 1 runs (what is held meanwhile)."""
    from pipeline.memory.accounting import track_step
    from pipeline.memory.lowmem import vision_per_image

    seen = []
    attn1 = starkv.hook.decoder_layers(loaded.model)[1].self_attn
    handle = attn1.register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw["past_key_values"].layers[0].keys.shape[-2]), with_kwargs=True)
    loaded.model.model.rope_deltas = None
    try:
        with torch.inference_mode(), starkv.attach(loaded.model, comp, budget, layout) as att, \
                vision_per_image(loaded.model), track_step(loaded.model, inputs) as account:
            out = loaded.model(**inputs, use_cache=True)
    finally:
        handle.remove()
    return out.past_key_values, att, seen[0], account


@pytest.mark.parametrize("name,params", [("starkv", {"entropy_adaptive_budget": True}),
                                         ("vlcache", {"min_weight": 0.5})])
def test_same_kept_sets_with_and_without_the_early_cut(tiny, name, params):
    loaded, inputs, layout = tiny
    comp = starkv.build(name, **params)
    plain = type(f"NoBound{type(comp).__name__}", (_NoBound, type(comp)), {})(**params)
    budget = 20
    cache, att, held, account = _prefill(loaded, inputs, layout, comp, budget)
    ref_cache, ref_att, ref_held, ref_account = _prefill(loaded, inputs, layout, plain, budget)
    assert ref_held == layout.prompt_length and held < layout.prompt_length  # cut at once, not at the end
    for a, b in zip(cache.layers, ref_cache.layers):
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
    assert [vars(s) for s in att.stats] == [vars(s) for s in ref_att.stats]
    assert account.prefill.bytes < ref_account.prefill.bytes


def test_generated_tokens_unchanged(tiny):
    loaded, inputs, layout = tiny
    params = {"entropy_adaptive_budget": True}
    outs = []
    for comp in (starkv.build("starkv", **params), type("P", (_NoBound, type(starkv.build("starkv"))), {})(**params)):
        loaded.model.model.rope_deltas = None
        with torch.inference_mode(), starkv.attach(loaded.model, comp, 20, layout):
            outs.append(loaded.model.generate(**inputs, max_new_tokens=6, do_sample=False))
    assert torch.equal(outs[0], outs[1])
