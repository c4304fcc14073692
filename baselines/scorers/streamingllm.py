"""StreamingLLM (Xiao et al., 2023, arXiv 2309.17453): attention sinks plus the most recent tokens.

Model-free lower anchor: no scores, so it validates the cache plumbing on its own. At a capacity C the
layer keeps the first ``n_sink`` tokens and the last ``C − n_sink`` tokens (the planned window is part of
the recent run, so the window is always kept).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from starkv.compressor import Compressor, register
from starkv.context import LayerContext


@register("streamingllm")
@dataclass
class StreamingLLM(Compressor):
    """Keep ``n_sink`` attention-sink tokens and the most recent ones; the same set for every KV head.

    Paper: https://arxiv.org/abs/2309.17453

    Parameters
    ----------
    window_size : int
        Observation window W (8); only fixes the plan's window, which lies inside the recent run.
    n_sink : int
        Number of leading tokens always kept (4). When the top-k part of the plan is smaller than
        ``n_sink`` only that many sinks fit.
    """

    hidden_states_needed: ClassVar[str] = "none"  # what a shared prefill keeps for it

    n_sink: int = 4

    def select(self, ctx: LayerContext) -> torch.Tensor:
        plan = ctx.plan
        sinks = min(self.n_sink, plan.keep_past)
        recent = plan.keep_past - sinks  # past tokens just before the window
        idx = torch.cat([
            torch.arange(sinks),
            torch.arange(plan.past - recent, plan.past),
            torch.arange(plan.past, plan.length),
        ]).to(ctx.keys.device)
        return idx.expand(ctx.num_kv_heads, -1)
