"""Opt-in approximate prefill (``model.prefill_mode: chunked_compress``): the cache never holds the whole prompt.

The prompt is prefilled in chunks cut after each history screenshot (``<|vision_end|>`` included); after
every chunk the attached compressor cuts the cache (the kept tokens of earlier chunks plus this chunk) to
the capacity of the prompt so far, ``int(prefix · budget / 100)`` tokens per layer. The last chunk (current
screenshot and instruction) is prefilled and compressed to the whole prompt's capacity, as a normal
prefill is, then greedy decoding continues on that cache.

Why it is an approximation: a history token is judged with the queries of the chunk that ends it, not
with the instruction's; kept tokens of earlier chunks take part in later selections as plain tokens (their
screenshot membership differs per KV head after a cut, so the layout marks only this chunk's screenshots);
stateful methods (STaR-KV's temporal/MI state) advance once per chunk. What stays exact: every token's
M-RoPE position is that of the whole prompt (``get_rope_index`` once, sliced per chunk; cached keys keep
their rotary positions), and each chunk attends to everything cached before it plus itself causally:
transformers (5.23) sizes the causal mask from the cache's own length (layer 0's), which is why every layer
is cut to the same length between chunks; ``cache_position`` is passed too and counts the cache, not the
prompt. With a budget that drops nothing the generated tokens equal the normal path's, and a chunk on a
cut cache gives the logits of its tokens fed one at a time (tested).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch

from starkv.hook import Attachment, ChunkState
from starkv.layout import PromptLayout


@dataclass
class ChunkTrace:
    """What one chunk left in the cache: prompt tokens so far and each layer's cache length after the cut."""

    prefix_length: int
    cache_lengths: list[int] = field(default_factory=list)


def chunk_bounds(layout: PromptLayout) -> list[int]:
    """End offsets of the chunks: after each history screenshot's ``<|vision_end|>``, then the prompt end."""
    ends = [end + 1 for _, end in layout.image_spans[:-1] if end + 1 < layout.prompt_length]
    return [*ends, layout.prompt_length]


def _cache_layout(layout: PromptLayout, kept: int, start: int, end: int) -> PromptLayout:
    """The layout of a cache holding ``kept`` earlier tokens (as plain tokens) then prompt tokens [start, end)."""
    spans = tuple((s - start + kept, e - start + kept) for s, e in layout.image_spans if s >= start and e <= end)
    return PromptLayout(image_spans=spans, prompt_length=kept + end - start)


def _chunk_inputs(inputs: dict[str, Any], pixel_rows: list[int], layout: PromptLayout, start: int, end: int):
    """input_ids and the pixel rows / grids of the screenshots that lie inside [start, end)."""
    ids = inputs["input_ids"][:, start:end]
    images = [i for i, (s, e) in enumerate(layout.image_spans) if s >= start and e <= end]
    out: dict[str, Any] = {"input_ids": ids}
    if images and inputs.get("pixel_values") is not None:
        first = sum(pixel_rows[:images[0]])
        rows = sum(pixel_rows[images[0]:images[-1] + 1])
        out["pixel_values"] = inputs["pixel_values"][first:first + rows]
        out["image_grid_thw"] = inputs["image_grid_thw"][images[0]:images[-1] + 1]
    return out


def _cache_len(cache) -> int:
    return int(cache.layers[0].keys.shape[-2]) if cache.layers and cache.layers[0].keys is not None else 0


def _eos_ids(model, eos_token_id) -> set[int]:
    eos = eos_token_id if eos_token_id is not None else getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        return set()
    return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}


def chunked_generate(model, inputs: dict[str, Any], attachment: Attachment, layout: PromptLayout,
                     max_new_tokens: int, eos_token_id=None,
                     trace: list[ChunkTrace] | None = None) -> torch.Tensor:
    """Greedy generation after a chunked, compressing prefill; returns prompt + new ids like ``generate``.

    ``attachment`` is the live ``starkv.attach`` of the model (its hook does the cuts); ``trace`` (optional)
    receives the cache length of every layer after each chunk.
    """
    from transformers import DynamicCache

    input_ids = inputs["input_ids"]
    if input_ids.shape[0] != 1:
        raise ValueError(f"chunked prefill runs one prompt at a time, got a batch of {input_ids.shape[0]}")
    length = int(input_ids.shape[1])
    if layout.prompt_length != length:
        raise ValueError(f"prompt layout is for {layout.prompt_length} tokens but the prompt has {length}")
    inner = model.model
    rope_kwargs = {k: inputs[k] for k in ("mm_token_type_ids", "image_grid_thw", "attention_mask") if k in inputs}
    positions, rope_deltas = inner.get_rope_index(input_ids, **rope_kwargs)  # (3, 1, L), the whole prompt's
    grid = inputs.get("image_grid_thw")
    pixel_rows = [int(r) for r in grid.prod(-1).tolist()] if grid is not None else []
    cache = DynamicCache(config=model.config)
    bounds = chunk_bounds(layout)
    start, logits = 0, None
    try:
        for i, end in enumerate(bounds):
            kept = _cache_len(cache)
            final = i == len(bounds) - 1
            attachment.layout = _cache_layout(layout, kept, start, end)
            attachment.chunk = ChunkState(prefix_length=end, final=final)
            chunk = _chunk_inputs(inputs, pixel_rows, layout, start, end)
            kwargs = dict(position_ids=positions[:, :, start:end], past_key_values=cache, use_cache=True,
                          cache_position=torch.arange(kept, kept + end - start, device=input_ids.device), **chunk)
            if final:  # through the full model: its forward ends the prefill phase for the memory accounting
                logits = model(**kwargs, logits_to_keep=1).logits[:, -1]
            else:  # the decoder only: no logits needed before the last chunk
                inner(**kwargs)
            if trace is not None:
                trace.append(ChunkTrace(end, [int(layer.keys.shape[-2]) for layer in cache.layers]))
            start = end
    finally:
        attachment.chunk = None
        attachment.layout = layout
    _relabel_full(attachment, cache, length)
    return _greedy(model, cache, input_ids, logits, positions, max_new_tokens, _eos_ids(model, eos_token_id))


def _relabel_full(attachment: Attachment, cache, length: int) -> None:
    """Per-layer stats as for the whole prompt (``kv_bytes_full``: what the full cache would have held)."""
    stats = []
    for stat in attachment.stats:
        layer = cache.layers[stat.layer_idx]
        per_token = 2 * layer.keys[..., :1, :].numel() * layer.keys.element_size()
        stats.append(replace(stat, original_length=length, bytes_before=per_token * length))
    attachment.stats[:] = stats


def _greedy(model, cache, input_ids, logits, positions, max_new_tokens: int, eos: set[int]) -> torch.Tensor:
    """Argmax decoding on the compressed cache; text positions continue after the prompt's largest."""
    next_pos = positions.max() + 1
    new: list[torch.Tensor] = []
    for step in range(max_new_tokens):
        token = logits.argmax(dim=-1, keepdim=True)  # (1, 1)
        new.append(token)
        if eos and int(token) in eos or step == max_new_tokens - 1:
            break
        kept = _cache_len(cache)
        pos = (next_pos + step).view(1, 1, 1).expand(3, 1, 1)
        logits = model(input_ids=token, position_ids=pos, past_key_values=cache, use_cache=True,
                       cache_position=torch.arange(kept, kept + 1, device=input_ids.device),
                       logits_to_keep=1).logits[:, -1]
    return torch.cat([input_ids, *new], dim=1) if new else input_ids
