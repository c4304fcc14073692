"""H2O golden test: attention accumulated over every prompt query, plain sum or per-query mean."""

from __future__ import annotations

import math

import pytest
import torch

import starkv
from baselines.scorers.h2o import accumulated_attention
from starkv.layout import PromptLayout
from tests.baselines.hand_context import hand_context, kept

# L = 8, d = 1, budget 50 %, window 2: C = 4, the top 2 of tokens 0..5 plus tokens 6, 7.
# Query head a: every row q = 1, keys k_j = ln w_j with w = 1 1 1 1 1 5 1 1, so row i gives key j ≤ i the
# weight w_j / S_i, S = 1 2 3 4 5 10 11 12. Query head b: zero queries, row i gives 1/(i+1) to each key ≤ i.
W = [1, 1, 1, 1, 1, 5, 1, 1]
KEYS = [[[math.log(w)] for w in W]]
QUERIES = [[[1.0]] * 8, [[0.0]] * 8]


def test_h2o_plain_sum_favours_early_tokens():
    # head a sums: key j < 5: Σ_{i≥j} 1/S_i; tail from i = 5: 1/10 + 1/11 + 1/12 = 0.2742
    #   key 0: 1 + 1/2 + 1/3 + 1/4 + 1/5 + 0.2742 = 2.5576, key 1: 1.5576, key 2: 1.0576, key 5: 5 · 0.2742 = 1.3712
    # head b sums: Σ_{i≥j} 1/(i+1): key 0: 2.7179, key 1: 1.7179, key 2: 1.2179, key 5: 1/6 + 1/7 + 1/8 = 0.4345
    # group mean: key 0: 2.638, key 1: 1.638, key 2: 1.138, key 5: 0.903  ->  top 2: tokens 0, 1
    ctx = hand_context(KEYS, queries=QUERIES, num_heads=2, budget=50)
    assert kept(starkv.build("h2o", window_size=2, normalize=False).select(ctx)) == [[0, 1, 6, 7]]


@pytest.mark.parametrize("chunk", [1, 3, 256])
def test_h2o_mean_over_the_queries_seeing_each_key(chunk):
    # each sum divided by the L − j queries that see key j (8, 7, 6, 5, 4, 3 for tokens 0..5):
    #   key 0: (2.5576 + 2.7179) / 2 / 8 = 0.330, key 1: 1.638 / 7 = 0.234, key 2: 1.138 / 6 = 0.190,
    #   key 5: 0.903 / 3 = 0.301  ->  top 2: tokens 0, 5 (the same at every chunk size)
    ctx = hand_context(KEYS, queries=QUERIES, num_heads=2, budget=50)
    assert kept(starkv.build("h2o", window_size=2, chunk_size=chunk).select(ctx)) == [[0, 5, 6, 7]]


def test_accumulation_matches_a_row_by_row_loop():
    """Independent loop: each captured row's causal softmax, summed; fewer rows than keys (a later chunk)."""
    gen = torch.Generator().manual_seed(0)
    heads, kv, rows, length, dim = 4, 2, 7, 11, 3
    q = torch.randn(1, heads, rows, dim, generator=gen)
    k = torch.randn(1, kv, length, dim, generator=gen)
    want = torch.zeros(heads, length)
    for h in range(heads):
        for i in range(rows):
            pos = length - rows + i
            logits = [float(q[0, h, i] @ k[0, h // 2, j]) / math.sqrt(dim) for j in range(pos + 1)]
            top = max(logits)
            exps = [math.exp(x - top) for x in logits]
            for j in range(pos + 1):
                want[h, j] += exps[j] / sum(exps)
    for chunk in (1, 2, 5, 7, 64):
        sums, counts = accumulated_attention(q, k, chunk)
        torch.testing.assert_close(sums, want, rtol=1e-5, atol=1e-6)
    # rows at positions 4..10: keys 0..4 are seen by all 7 rows, key 4 + m by 7 − m
    assert counts.tolist() == [7, 7, 7, 7, 7, 6, 5, 4, 3, 2, 1]


def test_h2o_captures_every_prompt_row():
    comp = starkv.build("h2o")
    assert comp.query_window(PromptLayout(prompt_length=900), 900) == 900
    assert comp.query_aware and comp.hidden_needs() == "none"
    with pytest.raises(ValueError, match="chunk_size"):
        starkv.build("h2o", chunk_size=0)
