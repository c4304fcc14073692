"""Exact peak-memory reductions of a step (the kept sets and generated tokens do not change).

``chunked_mlp``: the decoder MLP is per token, so running it over slices of the sequence and writing
each slice into one output gives the same numbers while its intermediate activations (gate, up and their
product: 3 x intermediate_size per token, the largest prefill tensors of a 7B model) only exist for one
slice at a time. Row slices of a matrix product are computed by the same kernels on CPU (bit-identical,
tested on the tiny model); on GPU a BLAS library may pick another kernel for another row count, so check
generated tokens there before relying on bitwise identity.

``vision_per_image``: the vision tower attends within a screenshot only (windows and full-attention
blocks are cut at image borders), so running it one screenshot at a time and concatenating gives the same
features while its activations exist for one screenshot instead of all of them (the largest prefill
tensors of the tiny model, and a large share at 7B). Same caveat on kernels as above. It returns only
the merged features (``pooler_output``), the one thing the language model reads: the unmerged last
hidden states (4 x as many rows) would otherwise stay alive in ``generate`` for the whole step.

``pixels_in_model_dtype``: the vision tower casts ``pixel_values`` to its dtype first thing; casting
before ``generate`` is the same operation, and the float32 copy the processor made is not held beside
the cast one for the whole step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def _chunked(forward, chunk_tokens: int):
    def run(hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        length = hidden_states.shape[-2]
        if length <= chunk_tokens:
            return forward(hidden_states, *args, **kwargs)
        out = torch.empty_like(hidden_states)
        for start in range(0, length, chunk_tokens):
            piece = hidden_states[..., start:start + chunk_tokens, :]
            out[..., start:start + chunk_tokens, :] = forward(piece, *args, **kwargs)
        return out

    return run


@contextlib.contextmanager
def chunked_mlp(model, chunk_tokens: int) -> Iterator[None]:
    """Inside the block, every decoder MLP sees at most ``chunk_tokens`` positions at once (0: off)."""
    if chunk_tokens < 0:
        raise ValueError(f"chunk_tokens must be >= 0 (0 turns chunking off), got {chunk_tokens}")
    if chunk_tokens == 0:
        yield
        return
    from starkv.hook import decoder_layers

    mlps = [layer.mlp for layer in decoder_layers(model)]
    for mlp in mlps:
        mlp.forward = _chunked(mlp.forward, chunk_tokens)
    try:
        yield
    finally:
        for mlp in mlps:
            del mlp.forward


@contextlib.contextmanager
def vision_per_image(model, enabled: bool = True) -> Iterator[None]:
    """Inside the block, the vision tower encodes one screenshot at a time (off: unchanged)."""
    inner_model = getattr(model, "model", model)
    visual = getattr(inner_model, "visual", None)
    if not enabled or visual is None:
        yield
        return
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    inner = visual.forward

    def forward(hidden_states: torch.Tensor, grid_thw: torch.Tensor, **kwargs):
        merged, start = [], 0
        for i, patches in enumerate(grid_thw.prod(-1).tolist()):
            out = inner(hidden_states[start:start + patches], grid_thw=grid_thw[i:i + 1], **kwargs)
            merged.append(out.pooler_output)
            del out  # the unmerged hidden states of this screenshot die here
            start += patches
        # windows are numbered image after image, so the concatenation is the whole-batch tensor
        return BaseModelOutputWithPooling(last_hidden_state=None,
                                          pooler_output=merged[0] if len(merged) == 1 else torch.cat(merged))

    visual.forward = forward
    try:
        yield
    finally:
        del visual.forward


def pixels_in_model_dtype(inputs: dict, model) -> dict:
    """``inputs`` with ``pixel_values`` already in the vision tower's dtype (what it casts them to)."""
    visual = getattr(getattr(model, "model", model), "visual", None)
    pixels = inputs.get("pixel_values")
    if visual is None or not isinstance(pixels, torch.Tensor) or pixels.dtype == visual.dtype:
        return inputs
    return {**inputs, "pixel_values": pixels.to(visual.dtype)}
