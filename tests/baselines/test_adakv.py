"""AdaKV golden values: the cross-head top-k, the per-head floor and the optional normalisation, by hand."""

from __future__ import annotations

import pytest
import torch

import starkv
from baselines.allocation.adakv import head_adaptive_topk
from starkv.budget import SelectionPlan


def _kept(idx: list[torch.Tensor]) -> list[list[int]]:
    return [row.tolist() for row in idx]


# 2 KV heads, 6 past tokens + a 2-token window (L = 8), k = 3 past tokens per head: the layer keeps 2·3 = 6
PLAN = SelectionPlan(length=8, window=2, past=6, keep_past=3)
SCORES = torch.tensor([[0.9, 0.8, 0.7, 0.1, 0.05, 0.06],     # head 0: every score above head 1's best
                       [0.03, 0.01, 0.02, 0.015, 0.04, 0.0]])


def test_one_topk_across_heads_without_floor():
    # the 6 largest of the 12 scores are all head 0's (0.9 0.8 0.7 0.1 0.06 0.05 > 0.04): head 1 keeps its window only
    assert _kept(head_adaptive_topk(SCORES, PLAN, alpha=0.0)) == [[0, 1, 2, 3, 4, 5, 6, 7], [6, 7]]


def test_the_floor_keeps_each_heads_best():
    # floor = int(0.34 · 3) = 1: head 0 token 0 (0.9) and head 1 token 4 (0.04) first; then the 4 best of the
    # rest: head 0's 0.8 (1), 0.7 (2), 0.1 (3), 0.06 (5) -- head 0's 0.05 (4) falls out
    assert _kept(head_adaptive_topk(SCORES, PLAN, alpha=0.34)) == [[0, 1, 2, 3, 5, 6, 7], [4, 6, 7]]
    # alpha 1: floor = k, every head keeps its own top 3 (uniform SnapKV): head 1's 0.04 (4), 0.03 (0), 0.02 (2)
    assert _kept(head_adaptive_topk(SCORES, PLAN, alpha=1.0)) == [[0, 1, 2, 6, 7], [0, 2, 4, 6, 7]]


def test_normalize_weights_heads_by_their_top_k_mass():
    plan = SelectionPlan(length=5, window=1, past=4, keep_past=2)
    scores = torch.tensor([[4.0, 3.0, 2.6, 1.0], [2.5, 2.4, 0.05, 0.05]])
    # raw: the 4 largest are 4, 3, 2.6 (head 0) and 2.5 (head 1)
    assert _kept(head_adaptive_topk(scores, plan, alpha=0.0)) == [[0, 1, 2, 4], [0, 4]]
    # head 0 × 7/10.6 = [2.642, 1.981, 1.717, 0.660]; head 1 × 4.9/5.0 = [2.45, 2.352, 0.049, 0.049]
    # the 4 largest: 2.642 (h0 0), 2.45 (h1 0), 2.352 (h1 1), 1.981 (h0 1)
    assert _kept(head_adaptive_topk(scores, plan, alpha=0.0, normalize=True)) == [[0, 1, 4], [0, 1, 4]]


def test_the_inner_must_be_a_plain_scorer():
    assert type(starkv.build("adakv", scorer="guikv").inner).__name__ == "GUIKV"
    for bad, match in [("full", "field 'scorer'"), ("vlcache", "field 'scorer'"), ("meda", "field 'scorer'"),
                       ("nope", "field 'scorer'")]:
        with pytest.raises(TypeError, match=match):
            starkv.build("adakv", scorer=bad)
    with pytest.raises(TypeError, match="window_size"):
        starkv.build("adakv", scorer_params={"window_size": 4})
    with pytest.raises(ValueError, match="alpha_safeguard"):
        starkv.build("adakv", alpha_safeguard=1.5)


def test_traits_and_pyramid_capacities():
    cls = starkv.COMPRESSORS["adakv"]
    assert cls.family == "allocation" and cls.head_adaptive
    ada = starkv.build("adakv", scorer="pyramidkv")  # Ada-PyramidKV: the pyramid's layer capacities
    pyramid = starkv.build("pyramidkv")
    assert [ada.layer_capacity(1000, 200, i, 4) for i in range(4)] == \
        [pyramid.layer_capacity(1000, 200, i, 4) for i in range(4)]
    assert not ada.uniform_layers and starkv.build("adakv").uniform_layers
