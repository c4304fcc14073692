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
    A shared prefill (``starkv.shared``) may hand over only what a compressor declared it needs: then row
    ``i`` of ``hidden_states`` (or of ``hidden_norms``, their fp32 L2 norms, when only those were kept) is
    token ``hidden_offset + i``; read them with :meth:`hidden_rows` / :meth:`hidden_norms_of`.
    ``per_query_head``: the unit stores one row per query head (``kv_layout: per_query_head``), so a
    selection may keep ``selection_rows`` = H index sets instead of H_kv.
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
    hidden_offset: int = 0
    hidden_norms: torch.Tensor | None = None
    per_query_head: bool = False

    def hidden_rows(self, start: int, end: int) -> torch.Tensor:
        """Hidden states of tokens ``[start, end)`` as (end - start, D), whatever rows this context holds."""
        lo, hi = start - self.hidden_offset, end - self.hidden_offset
        if lo < 0 or hi > self.hidden_states.shape[1]:
            raise ValueError(f"hidden states of tokens [{start}, {end}) were not kept for this layer (kept: "
                             f"[{self.hidden_offset}, {self.hidden_offset + self.hidden_states.shape[1]}))")
        return self.hidden_states[0, lo:hi]

    def hidden_norms_of(self, start: int, end: int) -> torch.Tensor:
        """fp32 L2 norms (end - start,) of the hidden states of tokens ``[start, end)``."""
        if self.hidden_norms is None:
            return self.hidden_rows(start, end).float().norm(dim=-1)
        lo, hi = start - self.hidden_offset, end - self.hidden_offset
        if lo < 0 or hi > self.hidden_norms.shape[0]:
            raise ValueError(f"hidden-state norms of tokens [{start}, {end}) were not kept for this layer")
        return self.hidden_norms[lo:hi]

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
    def selection_rows(self) -> int:
        """Index sets a selection returns: H for the per-query-head layout, else H_kv."""
        return self.num_heads if self.per_query_head else self.num_kv_heads

    @property
    def group_size(self) -> int:
        return self.num_heads // self.num_kv_heads

    @property
    def head_dim(self) -> int:
        return self.keys.shape[-1]


def has_values(t: torch.Tensor) -> bool:
    """False for a fake tensor (``pipeline.memory.simulate``: a 7B model's step on shapes only).

    A method whose output *shape* depends on score values (AdaKV's split of a layer's budget over its heads)
    asks this to take a stated neutral choice when there are none; it never changes a real run.
    """
    from torch._subclasses.fake_tensor import FakeTensor

    return not isinstance(t, FakeTensor)
