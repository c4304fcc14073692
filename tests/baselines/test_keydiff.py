"""KeyDiff golden test: keys least similar (cosine) to the mean normalised key are kept."""

from __future__ import annotations

import starkv
from tests.baselines.hand_context import hand_context, kept


def test_keydiff_keeps_the_keys_least_like_the_anchor():
    # head 0, tokens 0..9: seven keys along +x (norms 3, 1, 2, 5, 1, 4, 2: norms do not matter), token 2
    # along +y, token 5 along -x, token 6 along -y. Normalised: seven (1, 0), (0, 1), (-1, 0), (0, -1).
    # anchor = ((7 - 1) / 10, (1 - 1) / 10) = (0.6, 0)  ->  -cos = -1 for +x, 0 for ±y, +1 for -x.
    # top 3 of tokens 0..7: token 5 (1), tokens 2 and 6 (0)  ->  kept 2, 5, 6 + window 8, 9
    head0 = [[3, 0], [1, 0], [0, 2], [2, 0], [5, 0], [-4, 0], [0, -3], [1, 0], [4, 0], [2, 0]]
    # head 1: tokens 0..7 reversed (token j -> 7 - j): kept 1, 2, 5
    head1 = [head0[7 - j] for j in range(8)] + head0[8:]
    ctx = hand_context([head0, head1])
    assert kept(starkv.build("keydiff", window_size=2).select(ctx)) == [[2, 5, 6, 8, 9], [1, 2, 5, 8, 9]]


def test_keydiff_anchor_spans_the_whole_prompt():
    # unit keys: tokens 1, 3, 4, 6 along -y; token 2 along +y; tokens 0, 7 along +x; token 5 and the
    # window tokens 8, 9 along -x. anchor = ((2 - 1 - 2) / 10, (1 - 4) / 10) = (-0.1, -0.3), norm 0.316
    # -cos: +y (token 2) 0.949; +x (tokens 0, 7) 0.316; -x (token 5) -0.316; -y (1, 3, 4, 6) -0.949
    # top 3 of tokens 0..7: 2, 0, 7. An anchor over tokens 0..7 only would be (1/8, -3/8) and keep 5 instead
    head = [[1, 0], [0, -1], [0, 2], [0, -1], [0, -1], [-4, 0], [0, -3], [1, 0], [-4, 0], [-2, 0]]
    ctx = hand_context([head])
    assert kept(starkv.build("keydiff", window_size=2).select(ctx)) == [[0, 2, 7, 8, 9]]
