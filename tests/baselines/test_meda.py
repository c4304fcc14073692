"""MEDA golden values: window attention entropy and the layer split it gives, worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

import starkv
from baselines.allocation.meda import window_entropy
from starkv.hook import allocate_layer_capacities


def test_entropy_of_uniform_attention_over_the_image_keys_is_log_n():
    # zero queries: every logit 0, the softmax over the 4 keys of span [1, 5) is uniform: entropy ln 4
    queries = torch.zeros(1, 2, 3, 4)
    keys = torch.randn(1, 1, 10, 4)
    assert window_entropy(queries, keys, 2, [(1, 5)]) == pytest.approx(math.log(4), abs=1e-6)


def test_entropy_without_spans_is_causal_in_the_window():
    # L = 3, window 2, zero queries: token 1 sees keys 0, 1 (ln 2), token 2 sees 0, 1, 2 (ln 3)
    assert window_entropy(torch.zeros(1, 1, 2, 4), torch.randn(1, 1, 3, 4), 2) == \
        pytest.approx((math.log(2) + math.log(3)) / 2, abs=1e-6)


def test_concentrated_attention_has_zero_entropy():
    # d = 4, scale 1/2: q·k/2 = 20 for key 1, −20 for the others: p ≈ 1 on one key, entropy ≈ 40·3·e^-40 ≈ 0
    queries = torch.tensor([20.0, 0, 0, 0]).view(1, 1, 1, 4)
    keys = torch.zeros(1, 1, 6, 4)
    keys[0, 0, 1:5, 0] = torch.tensor([2.0, -2.0, -2.0, -2.0])
    assert window_entropy(queries, keys, 1, [(1, 5)]) == pytest.approx(0.0, abs=1e-12)


def test_layer_weights_split_the_uniform_total():
    meda = starkv.build("meda")
    # entropies ln 4 and 0 give weights e^{ln 4} = 4 and e^0 = 1: the 2 · 10 = 20 tokens split 16 / 4
    weights = [math.exp(math.log(4) / meda.temperature), math.exp(0.0)]
    assert allocate_layer_capacities(weights, [10, 10], 100) == [16, 4]
    # temperature 2: weights 4^{1/2} = 2 and 1: 20 · 2/3 = 13.33 -> 13, 20 · 1/3 = 6.67 -> 7 (largest remainder)
    hot = starkv.build("meda", temperature=2.0)
    assert allocate_layer_capacities([math.exp(math.log(4) / hot.temperature), 1.0], [10, 10], 100) == [13, 7]


def test_layer_weight_reads_the_image_spans(tiny_layer_ctx):
    ctx = tiny_layer_ctx
    meda = starkv.build("meda")
    # zero queries: uniform over the 4 image tokens of span (1, 5): weight e^{ln 4} = 4
    assert meda.layer_weight(ctx, None) == pytest.approx(4.0, rel=1e-6)
    assert starkv.build("meda", temperature=2.0).layer_weight(ctx, None) == pytest.approx(2.0, rel=1e-6)
    # over all 12 keys instead, causal in the window of 2: its rows see 11 and 12 keys: (ln 11 + ln 12) / 2
    flat = starkv.build("meda", cross_modal=False).layer_weight(ctx, None)
    assert flat == pytest.approx(math.exp((math.log(11) + math.log(12)) / 2), rel=1e-6)


@pytest.fixture
def tiny_layer_ctx():
    from starkv.budget import plan_selection
    from starkv.context import LayerContext
    from starkv.layout import PromptLayout

    keys = torch.randn(1, 1, 12, 4)
    return LayerContext(layer_idx=0, num_layers=2, queries=torch.zeros(1, 2, 8, 4), keys=keys, values=keys,
                        hidden_states=torch.zeros(1, 12, 8), layout=PromptLayout(image_spans=((1, 5),),
                                                                                 prompt_length=12),
                        budget=50, plan=plan_selection(12, 6, 2))


def test_the_inner_must_be_a_plain_scorer():
    with pytest.raises(TypeError, match="field 'scorer'"):
        starkv.build("meda", scorer="adakv")
    with pytest.raises(ValueError, match="temperature"):
        starkv.build("meda", temperature=0)
