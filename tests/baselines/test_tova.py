"""TOVA golden test: only the last query's attention ranks the past tokens."""

from __future__ import annotations

import math

import starkv
from starkv.layout import PromptLayout
from tests.baselines.hand_context import hand_context, kept

R2 = math.sqrt(2)
# d = 2, so logits are q·k / √2. Keys (x_j, y_j) of tokens 0..9:
X = [0, 3, 1, 2, -1, 4, 0.5, 2.5, 0, 0]
Y = [5, 0, 0, 0, 6, 0, 7, 0, 0, 0]
KEYS = [[x, y] for x, y in zip(X, Y)]
# query head a: two earlier rows along +y (they would prefer tokens 6, 4, 0), the last row q = (√2, 0),
# whose logits are exactly x_j; query head b: zero query, uniform 1/10 on every key (a constant).
HEAD_A = [[0, 10 * R2], [0, 10 * R2], [R2, 0]]
HEAD_B = [[0, 10 * R2], [0, 10 * R2], [0, 0]]


def test_tova_ranks_by_the_last_query_only():
    # group mean = (e^{x_j} / Σ e^{x} + 1/10) / 2: increasing in x_j -> top 3 of x over tokens 0..7:
    # token 5 (4), token 1 (3), token 7 (2.5)
    ctx = hand_context([KEYS], queries=[HEAD_A, HEAD_B], num_heads=2)
    assert kept(starkv.build("tova", window_size=2).select(ctx)) == [[1, 5, 7, 8, 9]]


def test_tova_shared_heads_keeps_one_set_for_every_kv_head():
    # KV head 1 has all-zero keys: its query heads give 1/10 everywhere, so the mean over all four
    # query heads still ranks by x_j of KV head 0, and both KV heads keep tokens 1, 5, 7
    zeros = [[0, 0]] * 10
    ctx = hand_context([KEYS, zeros], queries=[HEAD_A, HEAD_B, HEAD_A, HEAD_B], num_heads=4)
    assert kept(starkv.build("tova", window_size=2, shared_heads=True).select(ctx)) == [[1, 5, 7, 8, 9]] * 2


def test_tova_captures_one_query_row():
    comp = starkv.build("tova")
    assert comp.query_window(PromptLayout(prompt_length=500), 500) == 1
    assert comp.query_aware and comp.hidden_needs() == "none"
