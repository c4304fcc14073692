"""KNorm golden test: the smallest key norms are kept, per KV head."""

from __future__ import annotations

import starkv
from tests.baselines.hand_context import hand_context, kept


def test_knorm_keeps_the_smallest_key_norms_per_head():
    # head 0 norms of tokens 0..7: 5 1 4 2 8 3 7 6 -> smallest three: tokens 1 (1), 3 (2), 5 (3)
    # head 1: the same norms reversed over tokens 0..7 -> tokens 6, 4, 2
    # keys point in mixed directions: only the norm counts (3-4-5 triangles have norm 5, etc.)
    head0 = [[3, 4], [0, 1], [0, -4], [2, 0], [0, 8], [-3, 0], [7, 0], [0, 6], [9, 9], [9, 9]]
    head1 = [head0[7 - j] for j in range(8)] + [[9, 9], [9, 9]]
    ctx = hand_context([head0, head1])
    assert kept(starkv.build("knorm", window_size=2).select(ctx)) == [[1, 3, 5, 8, 9], [2, 4, 6, 8, 9]]


def test_knorm_is_query_agnostic():
    comp = starkv.build("knorm")
    assert not comp.query_aware and comp.hidden_needs() == "none" and comp.family == "eviction"
