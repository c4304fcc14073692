"""KeyDiff (Park et al., 2025, arXiv 2504.15364): keep the keys least similar to the layer's typical key.

Score of a past token = ``−cos(k_i, a)`` per KV head, where the anchor ``a`` is the mean of the
L2-normalised post-RoPE keys of that head over the whole prompt (all L tokens, the window included),
kvpress's anchor; distinctive keys score high. Query-agnostic: it needs neither queries nor
attention weights. Each KV head keeps its own top-(C − W) set plus the planned window.

Choice: the paper targets block-wise prompt processing, evicting against the anchor of the cache so
far; the prefill here sees the whole prompt at once, so one anchor over all of it is used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from starkv.compressor import ScorerCompressor, register
from starkv.context import LayerContext


def key_dissimilarity(keys: torch.Tensor) -> torch.Tensor:
    """``−cos(k_i, mean_j k_j/‖k_j‖)`` for every token, (H_kv, L) fp32 from keys (1, H_kv, L, d)."""
    unit = F.normalize(keys[0].float(), dim=-1)  # (H_kv, L, d)
    anchor = F.normalize(unit.mean(dim=1), dim=-1)  # (H_kv, d); its norm does not change the cosine
    return -torch.matmul(unit, anchor.unsqueeze(-1)).squeeze(-1)


@register("keydiff")
@dataclass
class KeyDiff(ScorerCompressor):
    """Dissimilarity of each key to the mean normalised key of its KV head: query-agnostic.

    Paper: https://arxiv.org/abs/2504.15364

    Parameters
    ----------
    window_size : int
        Planned window W (8), always kept; its keys count in the anchor.
    """

    hidden_states_needed: ClassVar[str] = "none"  # what a shared prefill keeps for it

    def score(self, ctx: LayerContext) -> torch.Tensor:
        return key_dissimilarity(ctx.keys)[:, : ctx.plan.past]
