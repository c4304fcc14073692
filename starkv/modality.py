"""Which prompt tokens are image tokens, and the text-prior ordering the VLM-specific methods share."""

from __future__ import annotations

import torch

from starkv.layout import PromptLayout


def image_token_mask(layout: PromptLayout, length: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(length,) bool: True on the ``<|image_pad|>`` tokens of every screenshot span (clipped to ``length``)."""
    mask = torch.zeros(length, dtype=torch.bool, device=device)
    for start, end in layout.clipped_spans(length):
        mask[start:end] = True
    return mask


def text_prior(scores: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Scores reordered so every text token ranks above every image token; within a modality the order holds.

    ``scores`` (R, P) are non-negative (attention mass); ``image`` (P,) marks the image tokens. Text tokens
    get ``max(scores) + 1`` added, which lifts the lowest text score above the highest image score without
    changing the order inside either group (LOOK-M's text-prior eviction; FastV drops only image tokens).
    """
    if scores.shape[-1] != image.shape[-1]:
        raise ValueError(f"scores cover {scores.shape[-1]} tokens, the image mask {image.shape[-1]}")
    scores = scores.float()
    if scores.numel() == 0:
        return scores
    lift = float(scores.max()) + 1.0
    return scores + (~image).to(scores.dtype) * lift
