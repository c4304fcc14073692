"""Cache layers that hold a compressed prefill in a unit's storage form (``starkv.storage.KVStorage``).

After eviction the hook (or a shared prefill's replay) swaps the layer's ``DynamicLayer`` for one of these;
decoding then appends to it through the cache's own ``update``:

* :class:`QueryHeadLayer` - full precision, H query-head rows; each decode token's K/V (computed for the
  H_kv KV heads) is repeated to the G = H / H_kv heads of its group, as ``repeat_kv`` orders them.
* :class:`KIVILayer` - KIVI storage (``starkv.storage.kivi``): quantized keys (whole groups of G tokens) and values
  plus a full-precision residual; ``keys``/``values`` are the residual, ``update`` returns the dequantized
  whole for the attention call (one layer's full-precision copy lives only during that call). It repeats
  decode tokens like :class:`QueryHeadLayer` when it holds query-head rows.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer

from starkv.storage import KVQuant, KVStorage, kivi


def repeat_heads(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(B, H_kv, n, d) -> (B, H_kv·groups, n, d): KV head g becomes heads g·G … g·G + G − 1."""
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


def tensor_bytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


class QueryHeadLayer(DynamicLayer):
    """Full-precision K/V with one row per query head (the drivers' layout)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, groups: int) -> None:
        super().__init__()
        self.lazy_initialization(keys, values)
        self.keys, self.values = keys, values
        self.groups = groups

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        return super().update(repeat_heads(key_states, self.groups), repeat_heads(value_states, self.groups))

    def stored_tensors(self) -> list[torch.Tensor]:
        """Every tensor the layer holds (memory accounting labels them KV cache)."""
        return [self.keys, self.values]

    def nbytes(self) -> int:
        return tensor_bytes(*self.stored_tensors())


class KIVILayer(DynamicLayer):
    """KIVI storage of one layer: quantized keys/values and the full-precision residual (``keys``/``values``)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, quant: KVQuant, groups: int = 1) -> None:
        super().__init__()
        self.lazy_initialization(keys, values)
        self.quant, self.groups = quant, groups
        self.qkeys: kivi.Quantized | None = None
        self.qvalues: kivi.Quantized | None = None
        self.keys, self.values = keys[..., :0, :], values[..., :0, :]
        self._append(keys, values)

    def _append(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Add tokens to the residual, then quantize what KIVI moves out of it (whole key groups, old values)."""
        q = self.quant
        res_k = torch.cat([self.keys, keys], dim=-2)
        res_v = torch.cat([self.values, values], dim=-2)
        n_k = res_k.shape[-2] - res_k.shape[-2] % q.key_flush
        if n_k:
            self.qkeys = kivi.concat(self.qkeys, kivi.quantize_keys(res_k[..., :n_k, :], q))
        n_v = max(0, res_v.shape[-2] - q.residual_length)
        if n_v:
            self.qvalues = kivi.concat(self.qvalues, kivi.quantize_values(res_v[..., :n_v, :], q))
        # a slice would keep the quantized tokens' full-precision storage alive: copy what stays
        self.keys = res_k[..., n_k:, :].clone() if n_k else res_k
        self.values = res_v[..., n_v:, :].clone() if n_v else res_v

    def _quantized_tokens(self) -> int:
        return 0 if self.qkeys is None else self.qkeys.codes.shape[-2]

    def dequantized(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole layer in the model dtype (quantized part dequantized, then the residual)."""
        keys, values = [self.keys], [self.values]
        if self.qkeys is not None:
            keys.insert(0, kivi.dequantize_keys(self.qkeys, self.quant, self.dtype))
        if self.qvalues is not None:
            values.insert(0, kivi.dequantize_values(self.qvalues, self.quant, self.dtype))
        return torch.cat(keys, dim=-2), torch.cat(values, dim=-2)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        self._append(repeat_heads(key_states, self.groups), repeat_heads(value_states, self.groups))
        return self.dequantized()

    def get_seq_length(self) -> int:
        return self._quantized_tokens() + self.keys.shape[-2]

    def stored_tensors(self) -> list[torch.Tensor]:
        """Every tensor the layer holds: codes, scales and zero points of both parts, and the residual."""
        quantized = [t for q in (self.qkeys, self.qvalues) if q is not None for t in (q.codes, q.scale, q.zero)]
        return [*quantized, self.keys, self.values]

    def nbytes(self) -> int:
        return tensor_bytes(*self.stored_tensors())


def stored_layer(keys: torch.Tensor, values: torch.Tensor, storage: KVStorage, groups: int) -> DynamicLayer:
    """The cache layer holding kept K/V (already one row per query head when the layout says so)."""
    repeat = groups if storage.per_query_head else 1
    if storage.quant is not None:
        return KIVILayer(keys, values, storage.quant, repeat)
    return QueryHeadLayer(keys, values, repeat)
