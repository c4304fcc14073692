"""Random eviction: a seeded sanity floor every scoring method has to beat.

Each KV head keeps a uniformly random subset of the past tokens (plus the window). The generator is
re-seeded per call from ``(seed, layer, prefill counter)`` so a run is reproducible bit for bit while
different layers and successive prefills of an episode still draw different subsets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from starkv.compressor import ScorerCompressor, register
from starkv.context import LayerContext

_MASK63 = (1 << 63) - 1


@register("random")
@dataclass
class RandomKeep(ScorerCompressor):
    """Uniform random scores per KV head, reproducible from ``seed``.

    No paper: a sanity floor that every scoring method has to beat.

    Parameters
    ----------
    window_size : int
        Observation window W (8), always kept.
    seed : int
        Base seed (0). The per-call seed mixes it with the layer index and a prefill counter that
        advances at layer 0; ``reset()`` rewinds the counter, so an episode replays identically.
    """

    hidden_states_needed: ClassVar[str] = "none"  # what a shared prefill keeps for it
    family: ClassVar[str] = "reference"

    seed: int = 0

    def __post_init__(self) -> None:
        self._prefills = 0  # not a field: stays out of params()

    def reset(self) -> None:
        self._prefills = 0

    def _call_seed(self, layer_idx: int) -> int:
        return ((self.seed * 1_000_003 + self._prefills) * 10_007 + layer_idx) & _MASK63

    def score(self, ctx: LayerContext) -> torch.Tensor:
        if ctx.layer_idx == 0:
            self._prefills += 1
        gen = torch.Generator().manual_seed(self._call_seed(ctx.layer_idx))
        scores = torch.rand((ctx.num_kv_heads, ctx.plan.past), generator=gen)
        return scores.to(ctx.keys.device)
