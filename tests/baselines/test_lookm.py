"""LOOK-M: text-prior kept sets and the three merges on hand-made tensors, and the merge through the hook.

The golden case (10 tokens, one KV head of two query heads, head_dim 2, window W = 2):

- tokens 2..5 are one screenshot, the rest text; the window is tokens 8, 9;
- both window queries are (1, 0), so every logit is the key's first component and each query's softmax is
  increasing in it: the past tokens rank by ``x`` (no softmax needs working out);
- keys (x, y): 0 (0.1, 0), 1 (0.5, 0.5), 2 (3.0, 3.1), 3 (0.2, 0), 4 (2.0, −2.0), 5 (0.3, 0.29),
  6 (0.4, −0.4), 7 (0.05, 5.0), 8 (0, 1), 9 (0, −1); values ``v_j = (j, 1)``.

C = 5: window 2, 3 past tokens. Text past tokens by x: 1 (0.5), 6 (0.4), 0 (0.1), 7 (0.05); the image
tokens 2 (3.0) and 4 (2.0) attract more attention but rank after every text token: kept {0, 1, 6, 8, 9}
(SnapKV's order would keep 2, 4, 1). C = 7: 5 past tokens: the 4 text tokens + the best image token 2.

Matches of the evicted tokens by key direction (cosine): 2 (45.95°) → 1 (45°); 3 (0°) → 0 (0°);
4 (−45°) → 6 (−45°); 5 (44.0°) → 1; 7 (89.4°) → 8 (90°).
"""

from __future__ import annotations

import math

import pytest
import torch

import starkv
from baselines.multimodal.lookm import LookM, merge_evicted
from starkv.budget import plan_selection
from starkv.context import LayerContext
from starkv.layout import PromptLayout

KEYS = [(0.1, 0.0), (0.5, 0.5), (3.0, 3.1), (0.2, 0.0), (2.0, -2.0), (0.3, 0.29), (0.4, -0.4), (0.05, 5.0),
        (0.0, 1.0), (0.0, -1.0)]
LAYOUT = PromptLayout(image_spans=((2, 6),), prompt_length=10)


def _ctx(cap: int) -> LayerContext:
    keys = torch.tensor(KEYS).view(1, 1, 10, 2)
    values = torch.tensor([(float(j), 1.0) for j in range(10)]).view(1, 1, 10, 2)
    queries = torch.tensor([1.0, 0.0]).expand(1, 2, 2, 2).clone()  # 2 query heads x 2 window rows
    return LayerContext(layer_idx=0, num_layers=1, queries=queries, keys=keys, values=values,
                        hidden_states=torch.zeros(1, 10, 4), layout=LAYOUT, budget=50.0,
                        plan=plan_selection(10, cap, 2))


@pytest.mark.parametrize(("cap", "expected"), [(5, [0, 1, 6, 8, 9]), (7, [0, 1, 2, 6, 7, 8, 9])])
def test_text_prior_kept_set(cap, expected):
    assert LookM(window_size=2).select(_ctx(cap)).tolist() == [expected]


def test_average_merge_by_hand():
    ctx = _ctx(5)
    keys, values = LookM(window_size=2).merge(ctx, torch.tensor([[0, 1, 6, 8, 9]]))
    # kept 0 absorbs 3, kept 1 absorbs 2 and 5, kept 6 absorbs 4, kept 8 absorbs 7, kept 9 nothing
    expected_keys = [((0.1 + 0.2) / 2, 0.0), ((0.5 + 3.0 + 0.3) / 3, (0.5 + 3.1 + 0.29) / 3),
                     ((0.4 + 2.0) / 2, (-0.4 - 2.0) / 2), ((0.0 + 0.05) / 2, (1.0 + 5.0) / 2), (0.0, -1.0)]
    expected_values = [((0 + 3) / 2, 1.0), ((1 + 2 + 5) / 3, 1.0), ((6 + 4) / 2, 1.0), ((8 + 7) / 2, 1.0), (9.0, 1.0)]
    torch.testing.assert_close(keys[0, 0], torch.tensor(expected_keys))
    torch.testing.assert_close(values[0, 0], torch.tensor(expected_values))


def test_pivotal_and_weighted_merges_by_hand():
    ctx = _ctx(5)
    kept = torch.tensor([[0, 1, 6, 8, 9]])
    _, pivotal = merge_evicted(ctx.keys, ctx.values, kept, "pivotal")
    # each evicted value is first averaged with its pivot: 3 -> (3 + 0)/2, 2 -> (2 + 1)/2, 5 -> (5 + 1)/2, ...
    expected = [(0 + 1.5) / 2, (1 + 1.5 + 3) / 3, (6 + 5) / 2, (8 + 7.5) / 2, 9.0]
    torch.testing.assert_close(pivotal[0, 0, :, 0], torch.tensor(expected))
    torch.testing.assert_close(pivotal[0, 0, :, 1], torch.ones(5))  # (1 + (1 + 1)/2)/2 = 1 everywhere
    _, weighted = merge_evicted(ctx.keys, ctx.values, kept, "weighted")
    # weights: the cosine of each match; 3 and 4 point exactly like 0 and 6 (cosine 1)
    cos = {2: (3.0 * 0.5 + 3.1 * 0.5) / (math.hypot(3.0, 3.1) * math.hypot(0.5, 0.5)),
           5: (0.3 * 0.5 + 0.29 * 0.5) / (math.hypot(0.3, 0.29) * math.hypot(0.5, 0.5)),
           7: 5.0 / math.hypot(0.05, 5.0)}
    expected = [(0 + 3) / 2, (1 + cos[2] * 2 + cos[5] * 5) / 3, (6 + 4) / 2, (8 + cos[7] * 7) / 2, 9.0]
    torch.testing.assert_close(weighted[0, 0, :, 0], torch.tensor(expected))


def test_nothing_evicted_means_no_merge():
    ctx = _ctx(10)
    assert LookM(window_size=2).merge(ctx, torch.arange(10).view(1, 10)) is None


def test_other_methods_do_not_merge():
    assert starkv.build("snapkv").merge(_ctx(5), torch.tensor([[0, 1, 6, 8, 9]])) is None
    assert not starkv.build("snapkv").merging and starkv.build("lookm").merging


def test_unknown_strategy_is_refused():
    with pytest.raises(ValueError, match="strategy"):
        starkv.build("lookm", strategy="max")


def test_hook_writes_the_merged_cache(tiny_model):
    """Through the real hook: every layer's cache is the merge of its full cache at the selected tokens."""
    from tests.helpers_model import prompt_inputs

    model, processor = tiny_model
    inputs, layout = prompt_inputs(processor, num_images=2)
    with torch.inference_mode():
        model.model.rope_deltas = None
        ref = model.generate(**inputs, max_new_tokens=1, do_sample=False, return_dict_in_generate=True)
    comp = starkv.build("lookm")
    kept: list[torch.Tensor] = []
    select = comp.select
    comp.select = lambda ctx: kept.append(select(ctx)) or kept[-1]
    with torch.inference_mode(), starkv.attach(model, comp, 20, layout):
        model.model.rope_deltas = None
        out = model.generate(**inputs, max_new_tokens=1, do_sample=False, return_dict_in_generate=True)
    assert len(kept) == len(out.past_key_values.layers)
    for idx, full, layer in zip(kept, ref.past_key_values.layers, out.past_key_values.layers):
        keys, values = merge_evicted(full.keys, full.values, idx, "average")
        torch.testing.assert_close(layer.keys, keys, rtol=0, atol=0)
        torch.testing.assert_close(layer.values, values, rtol=0, atol=0)
        plain = full.values.gather(2, idx.view(1, *idx.shape, 1).expand(1, -1, -1, full.values.shape[-1]))
        assert not torch.equal(layer.values, plain)  # something was merged
