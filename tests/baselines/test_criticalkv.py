"""CriticalKV golden tests: inner scores times ‖W_o v‖, the two-stage pick, and the wrapper's build checks."""

from __future__ import annotations

import math
import types

import pytest
import torch

import starkv
from baselines.allocation.criticalkv import projected_value_norms
from starkv.layout import PromptLayout
from tests.baselines.hand_context import hand_context, kept

# One KV head, two query heads, d = 2, model width D = 2. o_proj.weight (D, H·d) = [W_0 | W_1] with
# W_0 = I and W_1 = diag(2, 0): for v = (x, y), ‖W_0 v‖₁ = |x| + |y|, ‖W_1 v‖₁ = 2|x|, mean (3|x| + |y|) / 2;
# in L2: (√(x² + y²) + 2|x|) / 2; without a module: ‖v‖₂ = √(x² + y²).
O_PROJ = types.SimpleNamespace(o_proj=types.SimpleNamespace(weight=torch.tensor([[1.0, 0, 2, 0], [0, 1, 0, 0]])))
#            token:   0       1       2       3       4         5         6           7         8       9
VALUES = [[[0, 5], [1, 0], [2, 0], [0, 1], [1, 2.2], [0, 3.4], [1.4, 1.4], [0.5, 0], [1, 0], [1, 0]]]
# L1 mean:   2.5     1.5     3       0.5     2.6       1.7       2.8         0.75  -> top 3: 2, 6, 4
# L2 mean:   2.5     1.5     3       0.5     2.208     1.7       2.390       0.75  -> top 3: 2, 0, 6
# ‖v‖₂:      5       1       2       1       2.417     3.4       1.980       0.5   -> top 3: 0, 5, 4
ZERO_KEYS = [[[0.0, 0.0]] * 10]


def uniform_ctx(module=O_PROJ):
    """Inner TOVA with zero keys: every past token gets 1/10 from both heads, so only the norms rank."""
    return hand_context(ZERO_KEYS, queries=[[[1.0, 0.0]], [[1.0, 0.0]]], values=VALUES, num_heads=2, module=module)


@pytest.mark.parametrize(("norm", "module", "want"), [
    ("l1", O_PROJ, [2, 4, 6]),
    ("l2", O_PROJ, [0, 2, 6]),
    ("l1", None, [0, 4, 5]),  # no layer module (benchmarks): the value norm
])
def test_rescaled_by_the_projected_value_norm(norm, module, want):
    comp = starkv.build("criticalkv", window_size=2, scorer="tova", norm=norm, first_stage_ratio=0.0)
    assert kept(comp.select(uniform_ctx(module))) == [want + [8, 9]]


def test_first_stage_keeps_the_inner_favourite():
    # last-query logits q·k/√2 with q = (√2, 0): key 7 = (ln 2, 0) gets ln 2, the others 0 -> TOVA gives
    # token 7 the weight 2/11 and every other token 1/11. Rescaled (ε = 0): token 7: 2/11 · 0.75 = 0.136;
    # token 2: 3/11 = 0.273, 6: 2.8/11 = 0.255, 4: 2.6/11 = 0.236, 0: 2.5/11 = 0.227.
    # first_stage_ratio 0: top 3 rescaled = 2, 4, 6. Ratio 0.34: ⌊3 · 0.34⌋ = 1 token by TOVA alone
    # (token 7), then the top 2 rescaled: 2, 6.
    keys = [[[0.0, 0.0]] * 7 + [[math.log(2), 0.0]] + [[0.0, 0.0]] * 2]
    ctx = hand_context(keys, queries=[[[math.sqrt(2), 0.0]]] * 2, values=VALUES, num_heads=2, module=O_PROJ)

    def pick(ratio):
        return kept(starkv.build("criticalkv", window_size=2, scorer="tova", epsilon=0.0,
                                 first_stage_ratio=ratio).select(ctx))

    assert pick(0.0) == [[2, 4, 6, 8, 9]]
    assert pick(0.34) == [[2, 6, 7, 8, 9]]


def test_projected_norms_match_a_loop_over_heads():
    """Independent loop over query heads: W_o slice times v, L1 and L2, averaged over the group (GQA 2 of 4)."""
    gen = torch.Generator().manual_seed(0)
    kv, heads, n, d, width = 2, 4, 5, 3, 7
    values = torch.randn(kv, n, d, generator=gen)
    weight = torch.randn(width, heads * d, generator=gen)
    for norm, p in (("l1", 1), ("l2", 2)):
        want = torch.zeros(kv, n)
        for h in range(heads):
            w_h = weight[:, h * d:(h + 1) * d]
            for j in range(n):
                want[h // 2, j] += torch.linalg.vector_norm(w_h @ values[h // 2, j], ord=p) / 2
        for chunk in (1, 2, 64):
            torch.testing.assert_close(projected_value_norms(values, weight, heads, norm, chunk), want,
                                       rtol=1e-5, atol=1e-5)


def test_delegates_to_the_inner_scorer():
    layout = PromptLayout(((10, 80),), 100)
    assert starkv.build("criticalkv", scorer="h2o").query_window(layout, 100) == 100
    assert starkv.build("criticalkv", scorer="vlcache").query_window(layout, 100) == 20
    assert starkv.build("criticalkv").hidden_needs() == "none"
    assert starkv.build("criticalkv", scorer="starkv").hidden_needs() == "current_image_norms"
    pyramid = starkv.build("criticalkv", scorer="pyramidkv", scorer_params={"beta": 4})
    assert not pyramid.uniform_layers
    assert pyramid.layer_capacity(1000, 200, 0, 4) == starkv.build("pyramidkv", beta=4).layer_capacity(1000, 200, 0, 4)
    assert starkv.build("criticalkv").uniform_layers
    assert starkv.build("criticalkv", scorer="vlcache").layer_adaptive
    assert starkv.build("criticalkv").params()["scorer_params"] == {}


@pytest.mark.parametrize(("params", "message"), [
    ({"scorer": "nope"}, "scorer 'nope' is not a registered compressor"),
    ({"scorer": "streamingllm"}, "scorer 'streamingllm' selects without a per-token score"),
    ({"scorer": "full"}, "scorer 'full' selects without a per-token score"),
    ({"scorer": "criticalkv"}, "scorer must be another method"),
    ({"scorer_params": {"beta": 3}}, "scorer_params do not fit scorer 'snapkv'"),
    ({"scorer_params": {"window_size": 4}}, "scorer_params must not set window_size"),
    ({"norm": "l3"}, "norm must be one of"),
    ({"first_stage_ratio": 1.5}, "first_stage_ratio must be in"),
])
def test_bad_inner_scorer_fails_at_build(params, message):
    with pytest.raises(ValueError, match=message):
        starkv.build("criticalkv", **params)
