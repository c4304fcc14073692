"""LOOK-M (Wan et al., EMNLP 2024 Findings, arXiv 2406.18139): text-prior eviction, evicted KV merged into kept KV.

Eviction: the observation window's attention (the last W queries, summed over the window, fp32 softmax,
causal inside the window; no pooling) scores every past token, the G query heads of a KV group are averaged
and each KV head keeps its own top-(C − W) set plus the window. Text prior: every text token ranks above
every image token (``starkv.modality.text_prior``), so image tokens are evicted first, the least attended
first; text tokens leave only when the budget is below the text length.

Merging, per KV head: each evicted entry is matched to the kept entry (window included) whose key is the
most cosine-similar to its key, and folded into it. The paper has three strategies, all here (``strategy``):

- ``average`` (default): ``x_c ← mean(x_c, x_e for every e matched to c)``;
- ``pivotal``: each evicted entry is first averaged with its pivot, ``x_e' = (x_e + x_c) / 2``, then
  ``x_c ← mean(x_c, x_e' …)``;
- ``weighted``: ``x_c ← mean(x_c, s_e·x_e …)`` with ``s_e`` the cosine similarity of the match.

``x`` stands for the key and for the value (the reference code merges both). Choices where the paper and
its code leave room: scores come from the observation window (the project's shared query set) rather than
attention accumulated over every prompt query; every evicted entry is merged (the reference's similarity
filter, applied only in some variants, is left out); similarities and means run in fp32 and are cast back.
Under ``model.prefill_mode: chunked_compress`` each chunk's compression merges again into the kept entries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from starkv.compressor import ScorerCompressor, register
from starkv.context import LayerContext
from starkv.modality import image_token_mask, text_prior
from starkv.scoring import group_mean, window_attention

STRATEGIES = ("average", "pivotal", "weighted")


def evicted_indices(kept: torch.Tensor, length: int) -> torch.Tensor:
    """(H, L − C) ascending indices of the tokens each row of ``kept`` (H, C) leaves out."""
    kept_mark = torch.zeros(kept.shape[0], length, dtype=torch.int8, device=kept.device)
    kept_mark.scatter_(1, kept, 1)
    # a stable sort puts the unmarked (evicted) positions first, in order; their count L − C is known from
    # the shapes, so no data-dependent shape arises (the memory simulation runs this on fake tensors)
    return kept_mark.argsort(dim=1, stable=True)[:, : length - kept.shape[1]]


def merge_evicted(keys: torch.Tensor, values: torch.Tensor, kept: torch.Tensor,
                  strategy: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Kept (1, H, C, d) keys and values with every evicted entry folded into its most key-similar kept entry."""
    k, v = keys[0], values[0]
    heads, length, dim = k.shape
    kept = kept.to(k.device)
    gone = evicted_indices(kept, length)

    def take(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return x.gather(1, idx.unsqueeze(-1).expand(-1, -1, dim)).float()

    sim = F.normalize(take(k, gone), dim=-1) @ F.normalize(take(k, kept), dim=-1).transpose(1, 2)  # (H, E, C)
    best_sim, best = sim.max(dim=-1)  # ties: the first (lowest-position) kept entry
    target = best.unsqueeze(-1).expand(-1, -1, dim)
    out = []
    for x in (k, v):
        x_kept, x_gone = take(x, kept), take(x, gone)
        if strategy == "pivotal":
            src = (x_gone + x_kept.gather(1, target)) / 2
        elif strategy == "weighted":
            src = best_sim.unsqueeze(-1) * x_gone
        else:
            src = x_gone
        merged = x_kept.scatter_reduce(1, target, src, reduce="mean", include_self=True)
        out.append(merged.to(x.dtype).unsqueeze(0).contiguous())
    return out[0], out[1]


@register("lookm")
@dataclass
class LookM(ScorerCompressor):
    """Text-prior eviction by observation-window attention; evicted entries merged into the most similar kept.

    Paper: https://arxiv.org/abs/2406.18139

    Parameters
    ----------
    window_size : int
        Observation window W (8): its queries score the past tokens, and it is always kept (and may absorb
        evicted entries).
    strategy : str
        How an evicted entry is folded into its match: ``average`` (default), ``pivotal`` or ``weighted``.
    """

    hidden_states_needed: ClassVar[str] = "none"
    family: ClassVar[str] = "merging"
    query_aware: ClassVar[bool] = True
    merging: ClassVar[bool] = True

    strategy: str = "average"

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"lookm: strategy must be one of {STRATEGIES}, got {self.strategy!r}")

    def score(self, ctx: LayerContext) -> torch.Tensor:
        past = ctx.plan.past
        head = window_attention(ctx.queries, ctx.keys, ctx.plan.window)[:, :past]
        image = image_token_mask(ctx.layout, past, device=head.device)
        return text_prior(group_mean(head, ctx.num_kv_heads), image)

    def merge(self, ctx: LayerContext, kept: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        if kept.shape[-1] >= ctx.length:
            return None
        return merge_evicted(ctx.keys, ctx.values, kept, self.strategy)
