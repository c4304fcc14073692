"""Scoring primitives shared by STaR-KV and the baselines (observation-window attention, pooling, boosts)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def window_attention(queries: torch.Tensor, keys: torch.Tensor, window: int) -> torch.Tensor:
    """Per-query-head attention mass the last ``window`` queries put on every key, summed over the window.

    ``queries`` (1, H, Wq, d) post-RoPE with ``Wq >= window``; ``keys`` (1, H_kv, L, d) at KV-head
    granularity (never repeated: each group of G = H / H_kv query heads is matched to its KV head by a
    reshape). The softmax runs in fp32 over all L keys with a causal mask inside the window block.
    Returns (H, L) fp32; callers slice ``[:, :P]`` to drop the window keys.
    """
    q = queries[0, :, -window:, :].float()
    k = keys[0].float()
    num_heads, _, head_dim = q.shape
    num_kv, length, _ = k.shape
    group = num_heads // num_kv
    # (H_kv, G·W, d) @ (H_kv, d, L): one batched matmul per KV head, no broadcast copy of the keys
    logits = torch.matmul(q.reshape(num_kv, group * window, head_dim), k.transpose(-1, -2))
    logits = logits.view(num_kv, group, window, length) / math.sqrt(head_dim)
    causal = torch.ones(window, window, dtype=torch.bool, device=q.device).tril()
    block = logits[..., length - window :]
    logits[..., length - window :] = block.masked_fill(~causal, torch.finfo(logits.dtype).min)
    attn = logits.softmax(dim=-1)
    return attn.sum(dim=2).reshape(num_heads, length)


def avg_pool(scores: torch.Tensor, kernel: int) -> torch.Tensor:
    """1-D average pooling along tokens, stride 1, zero padding counted in the mean (keeps the length)."""
    if kernel <= 1 or scores.shape[-1] == 0:
        return scores
    return F.avg_pool1d(scores.unsqueeze(0), kernel, stride=1, padding=kernel // 2).squeeze(0)


def window_scores(queries: torch.Tensor, keys: torch.Tensor, window: int, past: int, kernel: int) -> torch.Tensor:
    """SnapKV-style per-query-head scores of the ``past`` evictable tokens: window attention, then pooling."""
    return avg_pool(window_attention(queries, keys, window)[:, :past], kernel)


def group_mean(head_scores: torch.Tensor, num_kv_heads: int) -> torch.Tensor:
    """(H, P) per-query-head scores -> (H_kv, P) by averaging the G query heads of each KV group."""
    num_heads, past = head_scores.shape
    return head_scores.view(num_kv_heads, num_heads // num_kv_heads, past).mean(dim=1)


def selection_scores(head_scores: torch.Tensor, ctx) -> torch.Tensor:
    """The rows a selection ranks: (H, P) as they are for the per-query-head layout (the drivers' rule, each
    query head its own scores), else the group mean (H_kv, P)."""
    return head_scores if ctx.per_query_head else group_mean(head_scores, ctx.num_kv_heads)


def spatial_boost(hidden_states: torch.Tensor | None, span: tuple[int, int], alpha: float, tau: float,
                  norms: torch.Tensor | None = None) -> torch.Tensor:
    """GUI-KV / STaR-KV saliency of the current screenshot: ``α · softmax(z(‖x_j‖) / τ)`` over its tokens.

    ``z`` standardises the hidden-state L2 norms with the unbiased std. Returns (end - start,) fp32.
    ``norms`` (end - start,), when given, are the span's fp32 norms already computed.
    """
    start, end = span
    if norms is None:
        norms = hidden_states[0, start:end].float().norm(dim=-1)
    if norms.numel() < 2:
        return torch.full_like(norms, alpha)
    z = (norms - norms.mean()) / (norms.std(unbiased=True) + 1e-8)
    return alpha * torch.softmax(z / tau, dim=0)


def add_spatial_boost(head_scores: torch.Tensor, ctx, alpha: float, tau: float) -> torch.Tensor:
    """Add the spatial boost of the last screenshot (clipped to the past tokens) to every head's scores."""
    past = head_scores.shape[-1]
    spans = ctx.layout.clipped_spans(past)
    if alpha <= 0 or not spans or ctx.layout.current_image is None:
        return head_scores
    start, end = ctx.layout.current_image
    end = min(end, past)
    if end <= start:
        return head_scores
    boosted = head_scores.clone()
    boosted[:, start:end] += spatial_boost(None, (start, end), alpha, tau, norms=ctx.hidden_norms_of(start, end))
    return boosted
