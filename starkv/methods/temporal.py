"""STaR-KV's temporal stability discount of older screenshots (spec §1.8), batched over KV groups.

Each group's attention pattern over the current screenshot is compared (cosine) with its running EMA
across the steps of an episode. A group whose pattern is stable discounts history fully,
``D = d_min + (1 − d_min)·exp(−δ·age·φ)``; a group whose pattern just changed discounts less. Text tokens
and the newest screenshot have age 0 and are never discounted.
"""

from __future__ import annotations

import torch

from starkv.layout import PromptLayout


def attention_pattern(image_scores: torch.Tensor) -> torch.Tensor:
    """(n_kv, n_v) group scores on the current image -> per-group distribution ``max(S, 0) / max(Σ, 1e-8)``."""
    x = image_scores.clamp_min(0)
    return x / x.sum(dim=-1, keepdim=True).clamp_min(1e-8)


def update_pattern_ema(previous: torch.Tensor | None, pattern: torch.Tensor, rho: float) -> torch.Tensor:
    """``ρ·M + (1 − ρ)·A``, or ``A`` when there is no previous EMA of the same shape (new image size)."""
    if previous is None or previous.shape != pattern.shape:
        return pattern.clone()
    return rho * previous.to(pattern.dtype) + (1 - rho) * pattern


def group_stability(pattern: torch.Tensor, ema: torch.Tensor) -> torch.Tensor:
    """Per-group cosine between the current pattern and its EMA, clamped to [0, 1] (0 for a zero pattern)."""
    dot = (pattern * ema).sum(dim=-1)
    norms = pattern.norm(dim=-1) * ema.norm(dim=-1)
    return (dot / norms.clamp_min(1e-8)).clamp(0, 1)


def frame_ages(layout: PromptLayout, past: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Age ``F − 1 − f`` of every past position inside screenshot f (0 = oldest), 0 elsewhere; (past,) fp32."""
    ages = torch.zeros(past, dtype=torch.float32, device=device)
    last = layout.num_images - 1
    for f, (start, end) in enumerate(layout.image_spans):  # at most a handful of screenshots
        start, end = min(start, past), min(end, past)
        if end > start:
            ages[start:end] = float(last - f)
    return ages


def temporal_discount(ages: torch.Tensor, token_stability: torch.Tensor, delta: float, eps: float,
                      d_min: float) -> torch.Tensor:
    """``D(j) = d_min + (1 − d_min)·exp(−δ·Δ(j)·φ(j))`` with ``φ = ε + (1 − ε)·stab_{g*(j)}``."""
    phi = eps + (1 - eps) * token_stability
    return d_min + (1 - d_min) * torch.exp(-delta * ages * phi)
