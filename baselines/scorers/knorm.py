"""KNorm (Devoto et al., 2024, arXiv 2406.11430): keys with a small L2 norm draw the most attention.

The paper observes a strong negative correlation between a cached key's L2 norm and the attention it
later receives, so the score of a past token is ``−‖k‖₂`` (fp32) of its post-RoPE key, per KV head:
no queries, no attention weights, hence query-agnostic and compatible with any attention kernel. RoPE is
a rotation, so pre- and post-RoPE keys have the same norm. Each KV head keeps its own top-(C − W) set
plus the planned window.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from starkv.compressor import ScorerCompressor, register
from starkv.context import LayerContext


@register("knorm")
@dataclass
class KNorm(ScorerCompressor):
    """Inverse key L2 norm per KV head: query-agnostic.

    Paper: https://arxiv.org/abs/2406.11430

    Parameters
    ----------
    window_size : int
        Planned window W (8), always kept; it plays no part in the score.
    """

    hidden_states_needed: ClassVar[str] = "none"  # what a shared prefill keeps for it

    def score(self, ctx: LayerContext) -> torch.Tensor:
        return -ctx.keys[0, :, : ctx.plan.past].float().norm(dim=-1)
