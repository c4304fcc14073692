"""Ragged per-KV-head cache storage: each head of a layer keeps its own number of tokens, and only those.

A head-adaptive compressor (AdaKV) keeps a different token set *size* per KV head. A (1, H_kv, C, d) cache
tensor cannot hold that without padding (or, as kvpress does, keeping the full cache and masking evicted
entries, which saves no memory). :class:`RaggedLayer` is a transformers cache layer that stores one
(1, 1, C_h, d) key and value tensor per KV head, appends each decoded token to every head, and hands the
attention call a :class:`RaggedHeads` pair instead of dense tensors. The attention wrapper
(``starkv.hook.install_attention_wrapper``) recognises the pair and runs :func:`ragged_attention`: the
model's own attention function once per KV head, on that head's G query heads and its own K/V, which is
exact (no entry is padded or masked). Only batch size 1 is supported (as everywhere in the hook).

Cache length: transformers sizes masks and the M-RoPE bookkeeping from ``get_seq_length()``. A ragged layer
reports the mean kept length over heads (floor), which equals the uniform capacity for AdaKV (the layer's
total is ``H_kv · C``). Decoding passes explicit M-RoPE positions (see ``starkv.hook``), the decode mask
of a one-token query is all-visible at batch size 1, and :func:`ragged_attention` ignores the mask for
one-token queries and builds its own causal mask per head for longer ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from transformers.cache_utils import CacheLayerMixin


@dataclass(frozen=True)
class RaggedHeads:
    """What a ragged layer's ``update`` returns in place of a dense key (or value) tensor: one per KV head."""

    tensors: tuple[torch.Tensor, ...]


def gather_heads(keys: torch.Tensor, values: torch.Tensor,
                 idx: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-head gathers of (1, H_kv, L, d) ``keys``/``values``: head h keeps tokens ``idx[h]`` (ascending)."""
    if len(idx) != keys.shape[1]:
        raise ValueError(f"{len(idx)} index rows for {keys.shape[1]} KV heads")
    ks, vs = [], []
    for h, rows in enumerate(idx):
        rows = rows.to(keys.device)
        ks.append(keys[:, h : h + 1].index_select(2, rows).contiguous())
        vs.append(values[:, h : h + 1].index_select(2, rows).contiguous())
    return ks, vs


class RaggedLayer(CacheLayerMixin):
    """A decoder layer's cache as per-KV-head tensors of different lengths (``head_keys``/``head_values``).

    ``keys``/``values`` stay None: nothing dense exists. Beam search, cropping and batch reshuffles are not
    supported (the pipeline decodes greedily at batch size 1) and raise.
    """

    is_sliding = False
    is_compileable = False
    is_croppable = False
    supports_early_init = False

    def __init__(self, head_keys: list[torch.Tensor], head_values: list[torch.Tensor]) -> None:
        super().__init__()
        if not head_keys or len(head_keys) != len(head_values):
            raise ValueError("a ragged layer needs one key and one value tensor per KV head")
        self.head_keys = list(head_keys)
        self.head_values = list(head_values)
        self.dtype, self.device = head_keys[0].dtype, head_keys[0].device
        self.is_initialized = True

    @classmethod
    def gather(cls, keys: torch.Tensor, values: torch.Tensor, idx: list[torch.Tensor]) -> RaggedLayer:
        return cls(*gather_heads(keys, values, idx))

    @property
    def num_heads(self) -> int:
        return len(self.head_keys)

    @property
    def lengths(self) -> tuple[int, ...]:
        """Tokens stored per KV head."""
        return tuple(int(k.shape[-2]) for k in self.head_keys)

    def nbytes(self) -> int:
        """Bytes of the stored key and value tensors (what the layer really holds)."""
        return sum(t.numel() * t.element_size() for t in (*self.head_keys, *self.head_values))

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Nothing to do: a ragged layer is built initialised, from a compressed prefill."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[RaggedHeads, RaggedHeads]:
        """Append the new tokens (1, H_kv, q, d) to every head; return the per-head K/V for attention."""
        if key_states.shape[0] != 1 or key_states.shape[1] != self.num_heads:
            raise ValueError(f"ragged cache: expected (1, {self.num_heads}, q, d) new states, got "
                             f"{tuple(key_states.shape)}")
        for h in range(self.num_heads):
            self.head_keys[h] = torch.cat([self.head_keys[h], key_states[:, h : h + 1]], dim=-2)
            self.head_values[h] = torch.cat([self.head_values[h], value_states[:, h : h + 1]], dim=-2)
        return RaggedHeads(tuple(self.head_keys)), RaggedHeads(tuple(self.head_values))

    def get_seq_length(self) -> int:
        """Mean stored length over heads (floor): the uniform-equivalent length transformers sizes masks by."""
        return sum(self.lengths) // self.num_heads

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def get_max_length(self) -> int:
        return -1

    def offload(self) -> None:
        self.head_keys = [k.to("cpu", non_blocking=True) for k in self.head_keys]
        self.head_values = [v.to("cpu", non_blocking=True) for v in self.head_values]

    def prefetch(self) -> None:
        self.head_keys = [k.to(self.device, non_blocking=True) for k in self.head_keys]
        self.head_values = [v.to(self.device, non_blocking=True) for v in self.head_values]

    def reset(self) -> None:
        raise NotImplementedError("a ragged cache layer cannot be reset; start generation with a fresh cache")

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        raise NotImplementedError("a ragged (head-adaptive) cache does not support beam search")

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("a ragged (head-adaptive) cache cannot be cropped")

    def batch_repeat_interleave(self, repeats: int) -> None:
        raise NotImplementedError("a ragged (head-adaptive) cache holds batch size 1 only")

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        raise NotImplementedError("a ragged (head-adaptive) cache holds batch size 1 only")


def _tail_causal_mask(query: torch.Tensor, kv_length: int) -> torch.Tensor:
    """Additive (1, 1, q, kv) mask: query row i (the i-th of the last q tokens) sees keys ``< kv − q + i + 1``."""
    q = query.shape[-2]
    rows = torch.arange(q, device=query.device).unsqueeze(1)
    cols = torch.arange(kv_length, device=query.device).unsqueeze(0)
    visible = cols <= kv_length - q + rows
    mask = torch.zeros(q, kv_length, dtype=query.dtype, device=query.device)
    return mask.masked_fill(~visible, torch.finfo(query.dtype).min).view(1, 1, q, kv_length)


def ragged_attention(inner: Callable, module, query: torch.Tensor, keys: RaggedHeads, values: RaggedHeads,
                     **kwargs: Any) -> tuple[torch.Tensor, None]:
    """The model's attention function ``inner`` once per KV head on that head's own K/V.

    ``query`` (1, H, q, d); KV head h serves query heads ``[h·G, (h+1)·G)`` (transformers' GQA order), so
    each call sees a one-KV-head cache that ``inner`` repeats to its G query heads as usual. The stored
    tokens are all in the past of every query except the last q (the new ones), hence no mask for q = 1 and
    a tail-causal mask otherwise. Returns (1, q, H, d) as the attention functions do.
    """
    heads = len(keys.tensors)
    group = query.shape[1] // heads
    outs = []
    for h, (k, v) in enumerate(zip(keys.tensors, values.tensors)):
        mask = None if query.shape[-2] == 1 else _tail_causal_mask(query, k.shape[-2])
        out, _ = inner(module, query[:, h * group : (h + 1) * group], k, v, mask, **kwargs)
        outs.append(out)
    return torch.cat(outs, dim=2), None
