"""Cut a layer-adaptive compressor's cache at each layer, before the last layer fixes every budget.

A layer-adaptive compressor (VL-Cache, STaR-KV's entropy-adaptive extension) splits the uniform total
``T = n·C`` over the n layers by weights (``starkv.hook.allocate_layer_capacities``), so a layer's
capacity is known only after the last layer's prefill, and until then every layer held its full cache.
When the compressor bounds its weights, ``w ∈ [f, c]`` with ``f > 0``, a layer's capacity has a bound
known at once from its own weight ``w``: the other n-1 weights are at least f, so its raw share is at
most ``U = T·w / (w + (n-1)·f)``. If no layer can reach the ceiling L (``T·c / (c + (n-1)·f) < L - 1``),
the allocation floors each raw share (at least 2) and then hands out fewer than n leftover tokens, one
per layer, so ``cap ≤ max(2, ⌊U⌋) + 1``. The layer keeps every token scoring at least the k-th best
past score (k = that bound minus the window) plus the window: whatever ties the final top-k breaks, the
tokens it picks score at least its own k-th best, hence lie in that set, and the final cut takes them
from it (same kept set, same order). No bound (an unbounded weight, or one that reaches L): the layer
keeps its full cache until the end, as before.
"""

from __future__ import annotations

import math

import torch

from starkv.context import has_values

#: Relative slack for float rounding of the weights and of the float64 shares.
_SLACK = 1e-6


def capacity_bound(weight: float, weight_range: tuple[float, float] | None, num_layers: int, total: int,
                   length: int) -> int | None:
    """An upper bound of this layer's final capacity, or None when none below the prompt length is sound."""
    if weight_range is None or num_layers < 2:
        return None
    floor, ceil = weight_range
    if not (0 < floor <= weight <= ceil) or not math.isfinite(ceil):
        return None
    floor *= 1 - _SLACK
    others = (num_layers - 1) * floor
    if total * ceil / (ceil + others) * (1 + _SLACK) >= length - 1:
        return None  # a layer could be clamped at L, and the allocation would then hand out more than one extra
    bound = max(2, math.floor(total * weight / (weight + others) * (1 + _SLACK))) + 1
    return bound if bound < length else None


def superset(scores: torch.Tensor, keep_past: int, past: int, length: int, num_kv_heads: int) -> torch.Tensor | None:
    """(H_kv, M) ascending indices: every past token scoring at least the ``keep_past``-th best, then the window.

    None when it would keep every past token or the scores hold NaN (no order to rely on).
    """
    if not 0 < keep_past < past:
        return None
    s = scores.float()
    if bool(torch.isnan(s).any()):
        return None
    threshold = s.topk(keep_past, dim=-1).values[:, -1:]
    count = int((s >= threshold).sum(dim=-1).max())  # ties at the threshold stay in
    if count >= past:
        return None
    top = s.topk(count, dim=-1).indices.sort(dim=-1).values
    window = torch.arange(past, length, device=s.device).expand(top.shape[0], -1)
    idx = torch.cat([top, window], dim=-1)
    return idx.expand(num_kv_heads, -1) if idx.shape[0] == 1 else idx


def positions_in(kept: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Where each original index of ``idx`` (H_kv, K) sits in the cut cache whose indices are ``kept``."""
    pos = torch.searchsorted(kept.contiguous(), idx.contiguous()).clamp_max(kept.shape[-1] - 1)
    if has_values(idx) and not torch.equal(kept.gather(-1, pos), idx):  # fake tensors (simulation): no values
        raise RuntimeError("starkv: a token the final selection keeps was cut early (the capacity bound failed)")
    return pos
