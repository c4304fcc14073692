"""FastV (Chen et al., ECCV 2024, arXiv 2403.06764): drop the least-attended image tokens inside the prefill.

After decoder layer K (counted from 1 as in the paper; 0-based index K − 1) the attention the last prompt
query puts on every token, averaged over all query heads, ranks the image tokens; the lowest-ranked leave
the prefill, so layers K + 1 … (0-based K …) compute on fewer tokens and the prefill itself gets cheaper.
The caches of layers 1 … K, computed on the whole prompt, are cut to the same tokens, so every layer keeps
one token set and one length (eager attention can decode it). Kept tokens keep their original M-RoPE
positions (``starkv.pruning``). In a shared sweep the layers up to K are the shared prefill's and the unit
runs only its own later layers on the kept tokens (``starkv.shared.resume_pruned``).

Budget and ratio: each layer keeps ``C = int(L·b/100)`` tokens as for every method (the window of the last
W tokens inside C, ``starkv.budget``). With ``ratio`` unset (the default) the budget alone sets how many
tokens leave: image tokens go first, lowest attention first; only when the budget is below the text length
do the lowest-attended text tokens outside the window go too (the paper never drops text; it only prunes a
share R ≤ 100 % of the image tokens). Budget 100 is the full prompt and changes nothing. With ``ratio``
R set, at least ``floor(R · n_img)`` image tokens leave as in the paper, and the budget still caps what is
kept: kept = ``min(C, L − floor(R · n_img))``. The paper's setting K = 2, R = 50 % is
``{layer: 2, ratio: 0.5}`` at budget 100.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from starkv.budget import plan_selection
from starkv.compressor import Compressor, register, topk_with_window
from starkv.context import LayerContext
from starkv.modality import image_token_mask, text_prior
from starkv.scoring import window_attention


def last_query_attention(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """(L,) fp32: the attention of the last captured query row on every key, averaged over all query heads."""
    return window_attention(queries, keys, 1).mean(dim=0)


@register("fastv")
@dataclass
class FastV(Compressor):
    """Image tokens the last query attends least to at layer K leave the prefill; later layers run on the rest.

    Paper: https://arxiv.org/abs/2403.06764

    Parameters
    ----------
    window_size : int
        Window W (8): the last W prompt tokens are always kept (they hold the question and the generation
        prompt, which FastV never drops).
    layer : int
        FastV's K (2), counted from 1: layers 1 … K see the whole prompt and layer K's attention selects;
        layers K + 1 … run on the kept tokens. Must be at least 1 and at most the number of layers.
    ratio : float | None
        FastV's R: the share of image tokens that at least leaves the prefill (0.5 in the paper). None (the
        default): the budget alone sets how many tokens leave, image tokens first.
    """

    hidden_states_needed: ClassVar[str] = "none"
    family: ClassVar[str] = "pruning"
    query_aware: ClassVar[bool] = True
    pruning: ClassVar[bool] = True

    layer: int = 2
    ratio: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.layer, bool) or not isinstance(self.layer, int) or self.layer < 1:
            raise ValueError(f"fastv: layer (K) must be an integer >= 1, got {self.layer!r}")
        if self.ratio is not None and not 0 <= float(self.ratio) <= 1:
            raise ValueError(f"fastv: ratio must be in [0, 1] or null, got {self.ratio!r}")

    def prune_layer(self, num_layers: int) -> int:
        if self.layer > num_layers:
            raise ValueError(f"fastv: layer {self.layer} is beyond the model's {num_layers} decoder layers")
        return self.layer - 1

    def query_window(self, layout, prompt_length: int) -> int:
        return 1  # only the last query scores

    def select(self, ctx: LayerContext) -> torch.Tensor:
        length = ctx.length
        image = image_token_mask(ctx.layout, length, device=ctx.keys.device)
        drop = math.floor(float(self.ratio) * int(image.sum())) if self.ratio is not None else 0
        plan = plan_selection(length, min(ctx.plan.kept, length - drop), self.window_size)
        if not plan.compresses:
            return torch.arange(length, device=ctx.keys.device).expand(ctx.num_kv_heads, -1)
        score = last_query_attention(ctx.queries, ctx.keys)[: plan.past]
        return topk_with_window(text_prior(score.unsqueeze(0), image[: plan.past]), plan, ctx.num_kv_heads)
