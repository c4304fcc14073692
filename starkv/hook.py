"""Attach a compressor to a Qwen2.5-VL decoder: compress each layer's KV cache once, at prefill.

Mechanics (transformers 5.2x): a forward hook on every ``language_model.layers[i].self_attn`` reads the
layer's freshly written cache after the attention call, asks the compressor which tokens to keep and
writes the shorter tensors back. The prefill attention itself runs on the full K/V (exact); decoding
appends to the compressed cache. Positions stay right because ``generate`` carries explicit M-RoPE
``position_ids`` (pass the processor's ``mm_token_type_ids``) instead of deriving them from cache length.

The post-RoPE window queries are captured from the attention call itself (a pass-through wrapper around
the model's attention function), never recomputed, so no M-RoPE bookkeeping is duplicated here.

A unit with storage options (``Compressor.storage``: one row per query head, KIVI quantization) gets its
gathered layer replaced by a ``starkv.storage.layers`` layer, whose bytes are what ``kv_bytes`` counts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from starkv.budget import capacity, plan_selection
from starkv.compressor import Compressor, ScorerCompressor, topk_with_window
from starkv.context import LayerContext
from starkv.early_cut import capacity_bound, positions_in, superset
from starkv.flops import FlopMeter, region_flops
from starkv.layout import PromptLayout
from starkv.pruning import PruneState, ResumedPrefill, install_pruning
from starkv.storage import KVStorage


@dataclass
class LayerStat:
    """What happened to one layer at prefill (measured from the cache tensors)."""

    layer_idx: int
    original_length: int
    kept_length: int
    bytes_before: int
    bytes_after: int
    #: tokens kept per KV head when they differ (head-adaptive, ``starkv.storage.ragged``); ``kept_length`` is then their mean
    head_lengths: tuple[int, ...] | None = None


@dataclass(frozen=True)
class ChunkState:
    """Set by a chunked prefill (``pipeline.step.chunked_prefill``) while one prompt chunk runs.

    The cache then holds the kept tokens of earlier chunks plus this chunk: the hook compresses all of it
    to the capacity of ``prefix_length`` prompt tokens (the prompt so far). Between chunks every layer
    gets the uniform capacity (the next chunk's attention mask is built from one layer's length); the
    ``final`` chunk uses the compressor's own per-layer capacities, as a normal prefill does.
    """

    prefix_length: int
    final: bool


@dataclass
class Attachment:
    """A compressor attached to a model; ``stats`` holds the last prefill's per-layer results."""

    model: Any
    compressor: Compressor
    budget: float
    layout: PromptLayout | None = None
    chunk: ChunkState | None = None
    stats: list[LayerStat] = field(default_factory=list)
    #: seconds spent selecting and gathering (inside the prefill), summed over the layers (and chunks) of the
    #: last prefill
    compress_s: float = 0.0
    #: a running flop count around the prefill (``starkv.flops``; None: no counting, the counter slows every op)
    flop_meter: FlopMeter | None = None
    #: flops of the same region as ``compress_s``, counted by ``flop_meter`` (0 without one)
    compress_flops: int = 0
    pending: list[tuple[LayerContext, torch.Tensor, float, Any, torch.Tensor | None, int]] = field(default_factory=list)
    #: the in-prefill token pruning of a ``pruning`` compressor (``starkv.pruning``); None for the others
    prune: PruneState | None = None
    #: a pruning unit's own prefill after its selecting layer, resumed from a shared one (``starkv.shared``)
    resumed: ResumedPrefill | None = None
    #: layers of the last prefill written in a non-default storage form (``starkv.storage.layers``), by index,
    #: until the hook (or ``starkv.shared.compress_record``) puts them in place of the gathered layer
    stored: dict[int, Any] = field(default_factory=dict)

    @property
    def storage(self) -> KVStorage:
        """How the compressor's unit stores the kept K/V (``Compressor.stored_as``)."""
        return self.compressor.storage

    @property
    def kv_bytes_full(self) -> int:
        return sum(s.bytes_before for s in self.stats)

    @property
    def kv_bytes(self) -> int:
        return sum(s.bytes_after for s in self.stats)

    @property
    def kept_tokens(self) -> int:
        """Tokens kept per layer, averaged over layers (equal for uniform budgets)."""
        return round(sum(s.kept_length for s in self.stats) / len(self.stats)) if self.stats else 0


class QueryCapture:
    """Per-module slot the attention wrapper fills with the last ``rows`` post-RoPE queries at prefill."""

    def __init__(self) -> None:
        self.rows = 0
        self.queries: torch.Tensor | None = None


_wrap_lock = threading.Lock()
_wrap_count: dict[str, int] = {}
_wrap_saved: dict[str, tuple[bool, Any]] = {}


def install_attention_wrapper(attn_implementation: str) -> None:
    """Wrap (counted: one wrapper per implementation) the attention function of the text decoder: it stashes
    queries for flagged modules at prefill, runs a batched decode's rows one by one (``starkv_rows``), and
    attends per KV head over a ragged layer's own K/V (``starkv.storage.ragged``)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import eager_attention_forward

    from starkv.storage.ragged import RaggedHeads, ragged_attention

    with _wrap_lock:
        count = _wrap_count.get(attn_implementation, 0)
        _wrap_count[attn_implementation] = count + 1
        if count:
            return
        mapping = AttentionInterface._global_mapping  # noqa: SLF001 - transformers' attention-function registry has no public setter
        had = attn_implementation in mapping
        _wrap_saved[attn_implementation] = (had, mapping.get(attn_implementation))
        inner = ALL_ATTENTION_FUNCTIONS.get_interface(attn_implementation, eager_attention_forward)

        def capturing_attention(module, query, key, value, attention_mask, **kwargs):
            rows = getattr(module, "starkv_rows", None)  # a batched decode of several units (pipeline.step.row_decode)
            if rows is not None:
                return rows.attend(inner, module, query, kwargs)
            if isinstance(key, RaggedHeads):  # a head-adaptive layer's per-head cache (starkv.storage.ragged)
                return ragged_attention(inner, module, query, key, value, **kwargs)
            slot = getattr(module, "starkv_capture", None)
            if slot is not None and slot.rows and query.shape[-2] > 1:
                slot.queries = query[..., -slot.rows :, :].detach()
            if key.shape[1] == query.shape[1] and getattr(module, "num_key_value_groups", 1) > 1:
                module = _Ungrouped(module)  # a per-query-head cache (kv_layout): nothing left to repeat
            return inner(module, query, key, value, attention_mask, **kwargs)

        mapping[attn_implementation] = capturing_attention


class _Ungrouped:
    """The attention module as the attention function sees it for a cache that already holds one K/V row
    per query head: ``num_key_value_groups`` 1 (no ``repeat_kv``), everything else the module's own."""

    num_key_value_groups = 1

    def __init__(self, module) -> None:
        self._module = module

    def __getattr__(self, name: str):
        return getattr(self._module, name)


def detach_capture(layers, handles: list, attn_implementation: str) -> None:
    """Undo an attach: remove the hooks, the layers' query slots and the capturing attention wrapper."""
    for h in handles:
        h.remove()
    for layer in layers:
        if hasattr(layer.self_attn, "starkv_capture"):
            del layer.self_attn.starkv_capture
    remove_attention_wrapper(attn_implementation)


def remove_attention_wrapper(attn_implementation: str) -> None:
    from transformers.modeling_utils import AttentionInterface

    with _wrap_lock:
        _wrap_count[attn_implementation] -= 1
        if _wrap_count[attn_implementation]:
            return
        had, fn = _wrap_saved.pop(attn_implementation)
        if had:
            AttentionInterface._global_mapping[attn_implementation] = fn  # noqa: SLF001 - transformers' attention-function registry has no public setter
        else:
            AttentionInterface._global_mapping.pop(attn_implementation, None)  # noqa: SLF001 - transformers' attention-function registry has no public setter


def text_model(model):
    """The language model of a Qwen2.5-VL (its ``model.language_model``), or a plain Qwen2's ``model``."""
    inner = getattr(model, "model", model)
    return getattr(inner, "language_model", inner)


def decoder_layers(model) -> list:
    """The language-model decoder layers of a Qwen2.5-VL (or plain Qwen2) model."""
    layers = getattr(text_model(model), "layers", None)
    if layers is None:
        raise TypeError(f"{type(model).__name__} has no language_model.layers to attach a compressor to")
    return list(layers)


def _cache_bytes(keys: torch.Tensor, values: torch.Tensor) -> int:
    return keys.numel() * keys.element_size() + values.numel() * values.element_size()


def _gather(keys: torch.Tensor, values: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather (1, H_kv, L, d) tensors along tokens with per-KV-head indices (H_kv, C)."""
    index = idx.to(keys.device).unsqueeze(0).unsqueeze(-1).expand(1, -1, -1, keys.shape[-1])
    return keys.gather(2, index).contiguous(), values.gather(2, index).contiguous()


def _gather_query_heads(keys: torch.Tensor, values: torch.Tensor, idx: torch.Tensor | None,
                        groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, H_kv, L, d) tensors -> (1, H, C, d), row h taken from KV head h // G at its own indices.

    ``idx`` (H, C), or (H_kv, C) used by every query head of the group, or None (every token). The
    repeated full cache is never built: each row is gathered from its KV head directly.
    """
    num_kv = keys.shape[1]
    heads = num_kv * groups
    if idx is None:
        idx = torch.arange(keys.shape[2], device=keys.device).expand(heads, -1)
    elif idx.shape[0] == num_kv:
        idx = idx.repeat_interleave(groups, dim=0)
    idx = idx.to(keys.device)
    kv = (torch.arange(heads, device=keys.device) // groups).unsqueeze(1)
    return keys[0][kv, idx].unsqueeze(0), values[0][kv, idx].unsqueeze(0)


class _LayerHook:
    def __init__(self, attachment: Attachment, layer_idx: int, num_layers: int) -> None:
        self.att = attachment
        self.layer_idx = layer_idx
        self.num_layers = num_layers

    def __call__(self, module, args, kwargs, output):
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        cache = kwargs.get("past_key_values")
        slot: QueryCapture = module.starkv_capture
        queries, slot.queries = slot.queries, None
        if cache is None or hidden is None:
            return output
        layer = cache.layers[self.layer_idx]
        from starkv.storage.ragged import RaggedLayer

        if isinstance(layer, RaggedLayer):
            return output  # a head-adaptive layer decoding: compressed once, at its prefill
        length = layer.keys.shape[-2]
        if hidden.shape[1] <= 1 or (self.att.chunk is None and hidden.shape[1] != length):
            return output  # not a prefill from an empty cache (decode step or continued generation)
        first = hidden.shape[1] == length  # a whole prefill, or the first chunk of a chunked one
        if hidden.shape[1] != length:  # a later prompt chunk: the kept tokens before it have no hidden states
            hidden = torch.cat([hidden.new_zeros(1, length - hidden.shape[1], hidden.shape[2]), hidden], dim=1)
        if queries is None:
            raise RuntimeError("starkv: window queries were not captured; is the attention wrapper active?")
        if self.layer_idx == 0 and first:  # a chunked prefill sums its chunks
            self.att.compress_s, self.att.compress_flops = 0.0, 0
        t0 = time.perf_counter()
        with region_flops(self.att.flop_meter) as tally:
            stored = self.compress(module, hidden, layer, length, queries)
        if stored is not layer:  # per-head storage replaces the dense cache layer
            cache.layers[self.layer_idx] = stored
        for i in sorted(self.att.stored):  # the unit's storage form replaces the gathered layer(s)
            cache.layers[i] = self.att.stored.pop(i)
        self.att.compress_s += time.perf_counter() - t0
        self.att.compress_flops += tally.flops
        return output

    def compress(self, module, hidden, layer, length: int, queries: torch.Tensor, hidden_offset: int = 0,
                 hidden_norms: torch.Tensor | None = None):
        """Select this layer's kept tokens and gather ``layer.keys``/``layer.values`` in place.

        ``layer`` is anything with ``keys``/``values`` (the live cache layer, or a shared prefill's record);
        ``hidden`` holds the hidden states of tokens ``hidden_offset ...`` (all of them from the hook), or
        ``hidden_norms`` their norms. Returns what now stores the layer: ``layer`` itself, or a
        ``starkv.storage.ragged.RaggedLayer`` when a head-adaptive compressor kept a different count per KV head.
        """
        att, comp = self.att, self.att.compressor
        if att.prune is not None and att.prune.pruned(self.layer_idx):  # this layer ran on the kept tokens only
            return self.write_pruned(layer, module)
        layout = att.layout or PromptLayout(prompt_length=length)
        if layout.prompt_length != length:
            raise ValueError(f"prompt layout is for {layout.prompt_length} tokens but the prefill has {length}")
        chunk = att.chunk
        if chunk is not None and comp.head_adaptive:
            raise ValueError(f"compressor {comp.name!r} keeps a different number of tokens per KV head, which a "
                             "chunked prefill cannot continue from; use prefill_mode full")
        if chunk is not None and not att.storage.default:
            raise ValueError("kv_quant / kv_layout need a full prefill (model.prefill_mode: full): a chunked "
                             "prefill compresses the stored cache again with every chunk")
        total = chunk.prefix_length if chunk is not None else length
        cap = capacity(total, att.budget)
        if chunk is None or chunk.final:
            cap = comp.layer_capacity(total, cap, self.layer_idx, self.num_layers)
        ctx = LayerContext(
            layer_idx=self.layer_idx, num_layers=self.num_layers, queries=queries, keys=layer.keys,
            values=layer.values, hidden_states=hidden, layout=layout, budget=att.budget,
            plan=plan_selection(length, cap, comp.window_size), module=module, hidden_offset=hidden_offset,
            hidden_norms=hidden_norms, per_query_head=att.storage.per_query_head,
        )
        if self.layer_idx == 0:
            att.stats.clear()
            att.pending.clear()
            att.stored.clear()
        if att.prune is not None:
            self._prune(ctx, layer)
            return layer
        if not ctx.plan.compresses:
            comp.on_uncompressed(ctx)
        if comp.layer_adaptive and isinstance(comp, ScorerCompressor) and (chunk is None or chunk.final):
            if comp.merging:
                raise ValueError(f"compressor {comp.name!r}: merging is not supported with layer-adaptive scores")
            scores = comp.score(ctx) if ctx.plan.compresses else None
            weight = comp.layer_weight(ctx, scores) if scores is not None else 1.0
            # keep only scores and cache refs until the last layer: not every layer's hidden states/queries
            # (shape-only keys/values: holding the cache tensors here would keep them alive after an early cut)
            shape_only = layer.keys.new_empty((*layer.keys.shape[:-1], 0))
            light = dataclasses.replace(ctx, queries=queries[..., :0, :], hidden_states=hidden[:, :0], module=None,
                                        hidden_norms=None, keys=shape_only, values=shape_only)
            before = _cache_bytes(layer.keys, layer.values)
            kept = self._cut_early(ctx, scores, weight, layer) if scores is not None else None
            att.pending.append((light, scores, weight, layer, kept, before))
            if self.layer_idx == self.num_layers - 1:
                self._finish_adaptive()
            return layer
        idx = comp.select(ctx) if ctx.plan.compresses else None
        return self._write(layer, ctx, idx)

    def _cut_early(self, ctx: LayerContext, scores: torch.Tensor, weight: float, layer) -> torch.Tensor | None:
        """Keep at once a superset of what this layer can keep once all weights are known (starkv.early_cut)."""
        comp = self.att.compressor
        if type(comp).layer_capacity is not Compressor.layer_capacity:
            return None  # the uniform total below assumes every layer plans the same capacity
        bound = capacity_bound(weight, comp.layer_weight_range(), self.num_layers,
                               self.num_layers * ctx.plan.kept, ctx.length)
        if bound is None:
            return None
        kept = superset(scores, max(1, bound - ctx.plan.window), ctx.plan.past, ctx.length, ctx.num_kv_heads)
        if kept is not None:
            layer.keys, layer.values = _gather(layer.keys, layer.values, kept)
        return kept

    def _write(self, layer, ctx: LayerContext, idx: torch.Tensor | list[torch.Tensor] | None,
               before: int | None = None):
        """Gather ``layer`` to ``idx`` and record its stat; ``idx`` a list (one row per KV head, of different
        lengths) stores the layer per head (``starkv.storage.ragged.RaggedLayer``), which is returned."""
        before = _cache_bytes(layer.keys, layer.values) if before is None else before
        if isinstance(idx, list):
            from starkv.storage.ragged import RaggedLayer

            ragged = RaggedLayer.gather(layer.keys, layer.values, idx)
            self.att.stats.append(LayerStat(ctx.layer_idx, ctx.length, ragged.get_seq_length(), before,
                                            ragged.nbytes(), head_lengths=ragged.lengths))
            return ragged
        storage = self.att.storage
        if storage.default:
            if idx is not None:
                comp = self.att.compressor
                merged = comp.merge(ctx, idx) if comp.merging else None
                layer.keys, layer.values = merged if merged is not None else _gather(layer.keys, layer.values, idx)
            self.att.stats.append(LayerStat(ctx.layer_idx, ctx.length, layer.keys.shape[-2], before,
                                            _cache_bytes(layer.keys, layer.values)))
            return layer
        return self._store(layer, ctx.layer_idx, ctx.length, ctx.group_size, idx, before)

    def _store(self, layer, layer_idx: int, length: int, groups: int, idx: torch.Tensor | None, before: int):
        """Gather ``layer`` to ``idx`` (None: every token) into the unit's storage form (``att.stored``, put in
        the layer's place by the caller) and record its stat from the stored bytes."""
        from starkv.storage.layers import stored_layer  # transformers' cache classes, only when needed

        storage = self.att.storage
        if storage.per_query_head:
            keys, values = _gather_query_heads(layer.keys, layer.values, idx, groups)
        elif idx is not None:
            keys, values = _gather(layer.keys, layer.values, idx)
        else:
            keys, values = layer.keys, layer.values
        stored = stored_layer(keys, values, storage, groups)
        del keys, values
        layer.keys, layer.values = stored.keys, stored.values  # the full-precision gather is not kept
        self.att.stored[layer_idx] = stored
        self.att.stats.append(LayerStat(layer_idx, length, stored.get_seq_length(), before, stored.nbytes()))
        return layer

    def _prune(self, ctx: LayerContext, layer) -> None:
        """A pruning compressor's layers up to its selecting layer: wait, then select once and cut them all."""
        state, comp = self.att.prune, self.att.compressor
        if self.att.chunk is not None:
            raise ValueError(f"compressor {comp.name!r} prunes tokens inside the prefill; it cannot run in a "
                             "chunked prefill (model.prefill_mode chunked_compress)")
        if self.layer_idx == 0:
            state.start(ctx.length)
        before = _cache_bytes(layer.keys, layer.values)
        if self.layer_idx < state.layer:
            light = dataclasses.replace(ctx, queries=ctx.queries[..., :0, :], hidden_states=ctx.hidden_states[:, :0],
                                        module=None, hidden_norms=None)
            state.waiting.append((light, layer, before))
            return
        idx = comp.select(ctx)
        idx = idx if idx.shape[-1] < ctx.length else None  # nothing dropped: every layer keeps the whole prompt
        for waiting_ctx, waiting_layer, waiting_before in state.waiting:
            self._write(waiting_layer, waiting_ctx, idx, waiting_before)
        state.waiting.clear()
        self._write(layer, ctx, idx, before)
        state.select(idx[0] if idx is not None else None)
        if self.layer_idx == self.num_layers - 1:
            state.finish()

    def write_pruned(self, layer, module):
        """A layer that ran on the kept tokens: its cache already holds only them. Records its stat and, for
        a unit with storage options, its storage form (``att.stored``, put in place by the caller)."""
        state = self.att.prune
        kept = layer.keys.shape[-2]
        before = _cache_bytes(layer.keys, layer.values) // kept * state.length
        if self.att.storage.default:
            self.att.stats.append(LayerStat(self.layer_idx, state.length, kept, before,
                                            _cache_bytes(layer.keys, layer.values)))
        else:
            groups = module.config.num_attention_heads // module.config.num_key_value_heads
            self._store(layer, self.layer_idx, state.length, groups, None, before)
        if self.layer_idx == self.num_layers - 1:
            state.finish()
        return layer

    def _finish_adaptive(self) -> None:
        """Split the total of the uniform capacities over layers by their weights, then gather each layer."""
        pending = self.att.pending
        length = pending[0][0].length
        caps = allocate_layer_capacities([p[2] for p in pending], [p[0].plan.kept for p in pending], length)
        for (ctx, scores, _, layer, kept, before), cap in zip(pending, caps):
            # the window stays as planned for the uniform budget, only the top-k part grows or shrinks
            keep_past = max(1, min(cap - ctx.plan.window, ctx.plan.past))
            plan = dataclasses.replace(ctx.plan, keep_past=keep_past)
            idx = topk_with_window(scores, plan, ctx.selection_rows) if scores is not None and plan.compresses else None
            if kept is not None:  # cut early to a superset: take the same tokens from it
                if idx is None:
                    raise RuntimeError("starkv: a layer cut early keeps its whole cache after all (bound failed)")
                idx = positions_in(kept, idx)
            self._write(layer, ctx, idx, before)
        pending.clear()


def allocate_layer_capacities(weights: list[float], uniform: list[int], length: int) -> list[int]:
    """Integer layer capacities proportional to ``weights`` with exactly the uniform total, each in [2, L]."""
    total = sum(uniform)
    n = len(weights)
    w = torch.tensor(weights, dtype=torch.float64).clamp_min(0)
    if float(w.sum()) <= 0:
        return list(uniform)
    lo, hi = min(2, length), length
    raw = (w / w.sum() * total).clamp(lo, hi)
    caps = raw.floor().long().clamp(lo, hi)
    # distribute the remainder by largest fractional part, never above L
    remainder = total - int(caps.sum())
    order = torch.argsort(raw - raw.floor(), descending=True).tolist()
    i = 0
    while remainder != 0 and i < 4 * n * max(1, abs(remainder)):
        j = order[i % n]
        if remainder > 0 and caps[j] < hi:
            caps[j] += 1
            remainder -= 1
        elif remainder < 0 and caps[j] > lo:
            caps[j] -= 1
            remainder += 1
        i += 1
    return [int(c) for c in caps]


def check_decodable(model, compressor: Compressor) -> str:
    """The decoder's attention implementation; raises when it cannot decode what ``compressor`` keeps."""
    impl = decoder_layers(model)[0].self_attn.config._attn_implementation or "eager"  # noqa: SLF001 - transformers keeps the attention backend only here
    if impl == "eager" and not compressor.uniform_layers:
        # transformers builds one decode mask sized from a single layer's cache; with eager attention that
        # mask no longer fits layers that kept a different number of tokens (sdpa / flash use no mask here)
        raise ValueError(f"compressor {compressor.name!r} keeps a different number of tokens per layer, which "
                         "eager attention cannot decode; load the model with attn_implementation sdpa or "
                         "flash_attention_2")
    return impl


def layer_compressor(attachment: Attachment, layer_idx: int, num_layers: int) -> _LayerHook:
    """The per-layer selection the hook runs, for callers that compress outside a forward (``starkv.shared``)."""
    return _LayerHook(attachment, layer_idx, num_layers)


@contextlib.contextmanager
def attach(model, compressor: Compressor, budget: float, layout: PromptLayout | None = None,
           flop_meter: FlopMeter | None = None) -> Iterator[Attachment]:
    """Compress the KV cache of every ``generate``/forward prefill inside the block.

    ``budget`` is a percent in (0, 100]; ``layout`` gives the screenshot spans of the prompt (update
    ``attachment.layout`` between steps when reusing one attachment); ``flop_meter``: a running flop count
    (entered around the prefill by the caller) whose share in the selection goes to ``compress_flops``.
    """
    capacity(1, budget)  # validates the budget before any hook is installed
    layers = decoder_layers(model)
    attachment = Attachment(model=model, compressor=compressor, budget=budget, layout=layout,
                            flop_meter=flop_meter)
    impl = check_decodable(model, compressor)
    install_attention_wrapper(impl)
    handles = []
    try:
        if compressor.pruning:
            attachment.prune = PruneState(layer=prune_layer_index(compressor, len(layers)))
            handles += install_pruning(attachment.prune, layers)
        for i, layer in enumerate(layers):
            attn = layer.self_attn
            slot = QueryCapture()
            attn.starkv_capture = slot
            handles.append(attn.register_forward_pre_hook(_make_row_setter(attachment, slot), with_kwargs=True))
            handles.append(attn.register_forward_hook(_LayerHook(attachment, i, len(layers)), with_kwargs=True))
        yield attachment
    finally:
        detach_capture(layers, handles, impl)


def prune_layer_index(compressor: Compressor, num_layers: int) -> int:
    """A pruning compressor's selecting layer (0-based), checked against the model's ``num_layers``."""
    layer = compressor.prune_layer(num_layers)
    if not 0 <= layer < num_layers:
        raise ValueError(f"compressor {compressor.name!r} prunes after layer index {layer}, but the model has "
                         f"{num_layers} decoder layers")
    return layer


def _make_row_setter(attachment: Attachment, slot: QueryCapture):
    """Before each attention call, tell the capture how many query rows this compressor needs."""

    def pre_hook(module, args, kwargs):
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        length = hidden.shape[1] if hidden is not None else 0
        layout = attachment.layout or PromptLayout(prompt_length=length)
        total = layout.prompt_length if attachment.chunk is not None else length  # the cache this chunk ends
        slot.rows = min(length, max(1, attachment.compressor.query_window(layout, total))) if length > 1 else 0
        slot.queries = None
        return None

    return pre_hook
