"""SnapKV (Li et al., 2024, arXiv 2404.14469) with GUI-KV parity settings, at KV-head granularity.

Score = attention the last ``window_size`` queries put on each past token (summed over the window,
fp32 softmax, causal inside the window), average-pooled with ``kernel_size``; the G query heads of a
KV group are averaged so each KV head keeps its own top-(C − W) set (the GQA reduction rule), plus the
window. Budget ``C = int(L·b/100)`` with the window inside C. With the unit option
``kv_layout: per_query_head`` (the drivers' storage) each query head keeps its own top-(C − W) set instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from starkv.compressor import ScorerCompressor, register
from starkv.context import LayerContext
from starkv.scoring import selection_scores, window_scores


@register("snapkv")
@dataclass
class SnapKV(ScorerCompressor):
    """Observation-window attention, pooled, one index set per KV head.

    Paper: https://arxiv.org/abs/2404.14469

    Parameters
    ----------
    window_size : int
        Observation window W (8): its queries vote for the past tokens, and it is always kept.
    kernel_size : int
        Average-pool kernel of the window scores (5), so neighbours of a salient token are kept as a cluster.
    """

    hidden_states_needed: ClassVar[str] = "none"  # what a shared prefill keeps for it
    query_aware: ClassVar[bool] = True
    per_query_head_layout: ClassVar[bool] = True

    kernel_size: int = 5

    def score(self, ctx: LayerContext) -> torch.Tensor:
        head = window_scores(ctx.queries, ctx.keys, ctx.plan.window, ctx.plan.past, self.kernel_size)
        return selection_scores(head, ctx)
