"""H2O (Zhang et al., 2023, arXiv 2306.14048): heavy hitters by attention accumulated over the prompt.

Score of a past token = attention it receives from every prompt query (causal, fp32 softmax per query
row over the keys it sees), summed over the queries, then averaged over the G query heads of each KV
group; each KV head keeps its own top-(C − W) set plus the planned window.

Memory and speed: the hook captures every post-RoPE prompt query row (``query_window`` = the prompt
length); the column sums run over chunks of ``chunk_size`` query rows, each against only the keys its
rows can see, so no L × L matrix is ever built (peak (H, chunk, L) fp32) and the prefill keeps its own
attention implementation (sdpa or flash), unlike an ``output_attentions`` read that needs eager.

Normalisation (a documented choice): H2O sums the attention; a key at position j is seen by L − j
queries, so the plain sum favours early tokens by construction. kvpress's ObservedAttention divides each
key's sum by the number of queries that see it (the mean attention it receives); ``normalize=True`` (the
default) does that, ``normalize=False`` is the paper's plain sum. With fewer captured rows than the
prompt (a chunked prefill's later chunk) the count is ``min(Wq, L − j)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from starkv.compressor import ScorerCompressor, register
from starkv.context import LayerContext
from starkv.layout import PromptLayout
from starkv.scoring import group_mean


def accumulated_attention(queries: torch.Tensor, keys: torch.Tensor, chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal attention summed over all captured query rows, per query head, and the rows seeing each key.

    ``queries`` (1, H, Wq, d) are the last Wq prompt rows (row i sits at position L − Wq + i); ``keys``
    (1, H_kv, L, d). Returns the (H, L) fp32 column sums and the (L,) count of rows that see each key.
    """
    q, k = queries[0], keys[0].float()
    num_heads, rows, head_dim = q.shape
    num_kv, length, _ = k.shape
    group = num_heads // num_kv
    offset = length - rows
    scale = 1.0 / math.sqrt(head_dim)
    sums = torch.zeros(num_kv, group, length, dtype=torch.float32, device=k.device)
    for a in range(0, rows, max(1, chunk_size)):
        b = min(a + max(1, chunk_size), rows)
        n, end = b - a, offset + b  # this chunk's rows see keys [0, end)
        qc = q[:, a:b].float().reshape(num_kv, group * n, head_dim)
        logits = torch.matmul(qc, k[:, :end].transpose(-1, -2)).mul_(scale).view(num_kv, group, n, end)
        # only the last n columns hold keys some row of the chunk may not see: a causal triangle there
        hidden = torch.ones(n, n, dtype=torch.bool, device=k.device).triu(1)
        logits[..., end - n :].masked_fill_(hidden, float("-inf"))
        sums[..., :end] += logits.softmax(dim=-1).sum(dim=2)
    counts = (length - torch.arange(length, device=k.device)).clamp(max=rows).float()
    return sums.view(num_heads, length), counts


@register("h2o")
@dataclass
class H2O(ScorerCompressor):
    """Attention accumulated over all prompt queries (observed attention), one index set per KV head.

    Paper: https://arxiv.org/abs/2306.14048

    Parameters
    ----------
    window_size : int
        Planned window W (8), always kept; every prompt query scores, the window's included.
    normalize : bool
        Divide each key's accumulated attention by the number of queries that see it (kvpress's
        observed attention; True), or keep the paper's plain sum (False).
    chunk_size : int
        Query rows per chunk of the accumulation (256): bounds the scoring memory at (H, chunk, L) fp32.
    """

    hidden_states_needed: ClassVar[str] = "none"  # what a shared prefill keeps for it
    query_aware: ClassVar[bool] = True

    normalize: bool = True
    chunk_size: int = 256

    def __post_init__(self) -> None:
        if self.chunk_size < 1:
            raise ValueError(f"h2o: chunk_size must be >= 1, got {self.chunk_size}")

    def query_window(self, layout: PromptLayout, prompt_length: int) -> int:
        """Every prompt query row (the hook clips to the rows the forward has)."""
        return max(self.window_size, prompt_length)

    def score(self, ctx: LayerContext) -> torch.Tensor:
        sums, counts = accumulated_attention(ctx.queries, ctx.keys, self.chunk_size)
        head = sums / counts if self.normalize else sums
        return group_mean(head[:, : ctx.plan.past], ctx.num_kv_heads)
