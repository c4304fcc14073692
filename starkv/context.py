"""What a compressor sees for one decoder layer at prefill."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from starkv.budget import SelectionPlan
from starkv.layout import PromptLayout


@dataclass
class LayerContext:
    """One layer's prefill state, at KV-head granularity.

    Shapes (batch is always 1): ``queries`` (1, H, Wq, d) are the last ``Wq`` query rows after rotary
    embedding, captured from the attention call; ``keys``/``values`` (1, H_kv, L, d) are the cache
    tensors (post-RoPE keys); ``hidden_states`` (1, L, D) is the attention input (after the input norm).
    """

    layer_idx: int
    num_layers: int
    queries: torch.Tensor
    keys: torch.Tensor
    values: torch.Tensor
    hidden_states: torch.Tensor
    layout: PromptLayout
    budget: float
    plan: SelectionPlan
    module: Any = None
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def length(self) -> int:
        return self.keys.shape[-2]

    @property
    def num_heads(self) -> int:
        return self.queries.shape[1]

    @property
    def num_kv_heads(self) -> int:
        return self.keys.shape[1]

    @property
    def group_size(self) -> int:
        return self.num_heads // self.num_kv_heads

    @property
    def head_dim(self) -> int:
        return self.keys.shape[-1]
