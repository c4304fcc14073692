"""VL-Cache (Tu et al., ICLR 2025, arXiv 2410.23317): post-vision attention scores, sparsity-adaptive layer budgets.

Every prompt token after the last screenshot ("post-vision" queries) scores the past tokens by the
attention it puts on them (summed over those queries, fp32 softmax, causal; no pooling). A layer's share
of the total budget follows its attention density ``1 − γ_ℓ``, where ``γ_ℓ`` is the mean over query heads
of the fraction of post-vision attention weights ``≤ threshold`` (0.01). Only causally visible entries
count: masked future keys are not attention weights. The hook (``allocate_layer_capacities``) splits the
uniform total ``n_layers·C`` in proportion to the weights, so the total over layers is unchanged.

Differences to the reference, by design of the shared hook: the protected window is the hook's planned
window W' (the last ``window_size`` tokens), not every post-vision token; the post-vision queries only
score. The reference clamps the normalised shares to [0.001, 1]; a layer only sees itself here, so the
weight is floored at ``min_weight`` before the hook normalises (the upper clamp never binds).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from starkv.compressor import ScorerCompressor, register
from starkv.context import LayerContext
from starkv.layout import PromptLayout
from starkv.scoring import avg_pool, group_mean

_DENSITY = "vlcache_density"


def post_vision_attention(queries: torch.Tensor, keys: torch.Tensor, threshold: float) -> tuple[torch.Tensor, float]:
    """Summed attention (H, L) of all captured query rows and their mean sparsity over heads.

    ``queries`` (1, H, Wq, d) are the last Wq prompt rows; ``keys`` (1, H_kv, L, d). Loops over KV heads
    to bound memory at (G, Wq, L) fp32.
    """
    q, k = queries[0].float(), keys[0].float()
    num_heads, rows, head_dim = q.shape
    num_kv, length, _ = k.shape
    group = num_heads // num_kv
    pos = torch.arange(length, device=q.device)
    visible = pos.unsqueeze(0) <= (length - rows + torch.arange(rows, device=q.device)).unsqueeze(1)  # (Wq, L)
    # visible entries: row r (0-based) of the last Wq sees L − Wq + r + 1 keys; counted from the shapes
    seen = rows * (length - rows) + rows * (rows + 1) // 2
    sums, sparse = [], 0.0
    for h in range(num_kv):
        logits = q[h * group : (h + 1) * group] @ k[h].T / math.sqrt(head_dim)  # (G, Wq, L)
        attn = logits.masked_fill(~visible, float("-inf")).softmax(dim=-1)
        sums.append(attn.sum(dim=1))
        sparse += float(((attn <= threshold) & visible).sum()) / seen
    return torch.cat(sums, dim=0), sparse / num_heads


@register("vlcache")
@dataclass
class VLCache(ScorerCompressor):
    """Post-vision attention scores per KV head (group mean) with density-proportional layer budgets.

    Paper: https://arxiv.org/abs/2410.23317

    Parameters
    ----------
    window_size : int
        Protected window W (8) and the minimum number of scoring queries.
    kernel_size : int
        Average-pool kernel of the scores (1 = off, as in the paper).
    threshold : float
        Attention weight at or below which an entry counts as sparse (0.01).
    min_weight : float
        Floor of a layer's weight ``1 − γ_ℓ`` so a fully sparse layer still gets a share (0.001).
    """

    hidden_states_needed: ClassVar[str] = "none"  # what a shared prefill keeps for it
    query_aware: ClassVar[bool] = True

    kernel_size: int = 1
    threshold: float = 0.01
    min_weight: float = 0.001

    layer_adaptive: ClassVar[bool] = True

    def query_window(self, layout: PromptLayout, prompt_length: int) -> int:
        """All tokens after the last screenshot's span (its end marker included), at least ``window_size``."""
        if layout.current_image is None:
            return self.window_size
        return max(self.window_size, prompt_length - layout.current_image[1])

    def score(self, ctx: LayerContext) -> torch.Tensor:
        attn, sparsity = post_vision_attention(ctx.queries, ctx.keys, self.threshold)
        ctx.extras[_DENSITY] = 1.0 - sparsity
        head = avg_pool(attn[:, : ctx.plan.past], self.kernel_size)
        return group_mean(head, ctx.num_kv_heads)

    def layer_weight_range(self) -> tuple[float, float] | None:
        """Weights are clamped to [min_weight, 1]; sound, but with the default floor no useful bound follows."""
        return (self.min_weight, 1.0) if 0 < self.min_weight <= 1 else None

    def layer_weight(self, ctx: LayerContext, scores: torch.Tensor) -> float:
        if _DENSITY not in ctx.extras:
            self.score(ctx)
        return max(self.min_weight, min(1.0, ctx.extras[_DENSITY]))
