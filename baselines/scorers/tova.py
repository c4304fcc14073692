"""TOVA (Oren et al., 2024, arXiv 2401.06104): the last query's attention decides what stays.

TOVA ("Token Omission Via Attention") treats the cache as a bounded multi-state RNN and, at every step,
drops the token the current (last) query attends to least. At prefill this is one scoring pass: the
attention the last prompt query puts on every past token (fp32 softmax over all L keys; the last query
sees every key, so no mask is needed), averaged over the G query heads of each KV group so each KV head
keeps its own top-(C − W) set, plus the planned window (kept for every method).

Choice: the paper averages over all heads of a layer and keeps one set per layer; ``shared_heads=True``
does that (one index set for every KV head), the default follows the project's per-KV-head rule.
Only the last query row is captured (``query_window`` = 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from starkv.compressor import ScorerCompressor, register
from starkv.context import LayerContext
from starkv.layout import PromptLayout
from starkv.scoring import group_mean, window_attention


@register("tova")
@dataclass
class TOVA(ScorerCompressor):
    """Attention of the last prompt query, averaged over each KV group's query heads.

    Paper: https://arxiv.org/abs/2401.06104

    Parameters
    ----------
    window_size : int
        Planned window W (8): the last W prompt tokens are always kept; only the last one scores.
    shared_heads : bool
        Average over all query heads of the layer and keep one index set for every KV head, as in the
        paper (False: one set per KV head from its own group's mean).
    """

    hidden_states_needed: ClassVar[str] = "none"  # what a shared prefill keeps for it
    query_aware: ClassVar[bool] = True

    shared_heads: bool = False

    def query_window(self, layout: PromptLayout, prompt_length: int) -> int:
        """Only the last prompt query scores."""
        return 1

    def score(self, ctx: LayerContext) -> torch.Tensor:
        attn = window_attention(ctx.queries, ctx.keys, 1)[:, : ctx.plan.past]  # (H, P), last query only
        if self.shared_heads:
            return attn.mean(dim=0, keepdim=True)
        return group_mean(attn, ctx.num_kv_heads)
