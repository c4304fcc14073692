"""Full cache: the uncompressed reference every budget is compared against."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from starkv.compressor import Compressor, register
from starkv.context import LayerContext


@register("full")
@dataclass
class FullCache(Compressor):
    """Keeps every token whatever the budget (the no-op compressor).

    No paper: the uncompressed reference point every budget is compared against.

    Parameters
    ----------
    window_size : int
        Observation window W (8); it never changes the kept cache here and is inherited so the full
        cache accepts the same config fields as every other method.
    """

    hidden_states_needed: ClassVar[str] = "none"  # what a shared prefill keeps for it
    budget_free: ClassVar[bool] = True  # every budget keeps everything: a sweep decodes it once per step
    family: ClassVar[str] = "reference"

    @property
    def uniform_layers(self) -> bool:
        return True

    def layer_capacity(self, prompt_length: int, cap: int, layer_idx: int, num_layers: int) -> int:
        return prompt_length

    def select(self, ctx: LayerContext) -> torch.Tensor:  # pragma: no cover - never compresses
        return torch.arange(ctx.length).expand(ctx.num_kv_heads, -1)
