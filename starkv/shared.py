"""One prefill for many compressors: record once what each needs, then compress and decode per unit.

Compression only changes what a layer *stores* after its attention ran on the full cache, so a step's
hidden states, last-position logits and first generated token are the same for every compressor and
budget. :func:`record_prefill` runs one prefill with the full cache and keeps, per layer, the full
keys/values and what the compressors declared they read: the post-RoPE window queries at each row count
they ask for, and the attention-input hidden states they need (``Compressor.hidden_states_needed``).
:func:`compress_record` runs one compressor's selection on those records with the hook's own code (same
contexts, same gathers), and :func:`replay_prefill` makes the next ``generate`` take the recorded prefill
output with that compressed cache instead of computing the prefill again. Everything after (decode,
logits processing, stopping) is ``generate`` itself, so the generated tokens are those of a normal run.

A pruning compressor (FastV) changes the prefill itself after its selecting layer K, but not before: layers
1 … K are the shared prefill's. The record also keeps what decoder layer K + 1 was handed (its input hidden
states and the text model's keyword inputs, ``LayerInputs``); :func:`compress_record` selects at layer K from
the record and resumes the prefill from there on the kept tokens only (:func:`resume_pruned`), with the same
slicing the pruning hook applies (``starkv.pruning``), so the unit's cache, first-token logits and prefill
flops are those of its own run.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from starkv.budget import capacity
from starkv.compressor import HIDDEN_NEEDS, Compressor
from starkv.flops import FlopMeter, region_flops
from starkv.hook import (
    Attachment,
    QueryCapture,
    check_decodable,
    decoder_layers,
    detach_capture,
    install_attention_wrapper,
    layer_compressor,
    prune_layer_index,
    remove_attention_wrapper,
    text_model,
)
from starkv.layout import PromptLayout
from starkv.pruning import PruneState, ResumedPrefill


@dataclass
class LayerRecord:
    """One decoder layer after the shared prefill: full K/V, the kept hidden rows, window queries by rows."""

    module: Any
    keys: torch.Tensor
    values: torch.Tensor
    hidden: torch.Tensor  # (1, n, D): tokens hidden_offset .. hidden_offset + n of the attention input
    hidden_offset: int
    queries: dict[int, torch.Tensor] = field(default_factory=dict)
    hidden_norms: torch.Tensor | None = None  # fp32 norms of tokens hidden_offset ... (current_image_norms)


@dataclass
class LayerInputs:
    """What the shared prefill handed one decoder layer: the hidden states and the text model's keyword inputs."""

    hidden: torch.Tensor  # (1, L, D): the previous layer's output on the whole prompt
    kwargs: dict[str, Any]  # position embeddings, masks, positions (without the cache)
    flops_before: int | None = None  # the prefill's flops up to this layer (None: not counted)

    def tensors(self) -> list[torch.Tensor]:
        out = [self.hidden]
        for value in self.kwargs.values():
            out += [v for v in (value if isinstance(value, tuple) else (value,)) if isinstance(v, torch.Tensor)]
        return out


@dataclass
class PrefillRecord:
    """What one shared prefill leaves for the units of a sweep (hold it only while they run)."""

    layout: PromptLayout
    layers: list[LayerRecord] = field(default_factory=list)
    output: Any = None  # the prefill forward's output, without its cache
    #: decoder layer index -> its inputs, for the layers a pruning compressor resumes from (K + 1, 0-based K)
    layer_inputs: dict[int, LayerInputs] = field(default_factory=dict)

    @property
    def length(self) -> int:
        return self.layout.prompt_length

    def tensors(self) -> list[torch.Tensor]:
        out: list[torch.Tensor] = []
        for lr in self.layers:
            out += [lr.keys, lr.values, lr.hidden, *lr.queries.values()]
            out += [lr.hidden_norms] if lr.hidden_norms is not None else []
        for inputs in self.layer_inputs.values():
            out += inputs.tensors()
        if self.output is not None:
            out += [v for v in self.output.values() if isinstance(v, torch.Tensor)]
        return out

    def nbytes(self) -> int:
        """Bytes of the distinct storages the record holds (full K/V, kept hidden rows, queries, logits)."""
        seen: dict[int, int] = {}
        for t in self.tensors():
            st = t.untyped_storage()
            seen[id(st)] = st.nbytes()
        return sum(seen.values())


@dataclass
class _Holder:
    """Stand-in for a cache layer: ``compress`` gathers into it as it would into the live cache."""

    keys: torch.Tensor
    values: torch.Tensor


def query_rows(compressor: Compressor, layout: PromptLayout) -> int:
    """Window query rows ``compressor`` reads for this prompt (the hook's own rule)."""
    length = layout.prompt_length
    return min(length, max(1, compressor.query_window(layout, length))) if length > 1 else 0


def hidden_need(compressors: Sequence[Compressor]) -> str:
    """The widest hidden-state need of ``compressors`` (``all`` > ``current_image`` > its norms > ``none``)."""
    needs = {c.hidden_needs() for c in compressors}
    return next(n for n in HIDDEN_NEEDS if n in needs or n == "none")


def resume_layers(compressors: Sequence[Compressor], num_layers: int) -> list[int]:
    """Decoder layers a pruning compressor of ``compressors`` resumes the prefill from (after its layer K)."""
    starts = {prune_layer_index(c, num_layers) + 1 for c in compressors if c.pruning}
    return sorted(i for i in starts if i < num_layers)


@contextlib.contextmanager
def record_prefill(model, compressors: Sequence[Compressor], layout: PromptLayout,
                   flop_meter: FlopMeter | None = None) -> Iterator[PrefillRecord]:
    """Inside the block, the first prefill of ``model`` (full cache, nothing compressed) fills the record.

    Run ``generate(..., max_new_tokens=1)`` in the block: its one forward is the shared prefill.
    ``flop_meter``: the meter counting that prefill, read where a pruning compressor's own layers begin.
    """
    layers = decoder_layers(model)
    impl = layers[0].self_attn.config._attn_implementation or "eager"  # noqa: SLF001 - transformers keeps the attention backend only here
    rows = sorted({query_rows(c, layout) for c in compressors})
    need = hidden_need(compressors)
    record = PrefillRecord(layout=layout)
    length = layout.prompt_length
    handles = []
    install_attention_wrapper(impl)
    try:
        for i, layer in enumerate(layers):
            slot = QueryCapture()
            layer.self_attn.starkv_capture = slot
            handles.append(layer.self_attn.register_forward_pre_hook(_rows_setter(slot, max(rows)), with_kwargs=True))
            handles.append(layer.self_attn.register_forward_hook(_recorder(record, i, slot, rows, need),
                                                                 with_kwargs=True))
        for i in resume_layers(compressors, len(layers)):
            handles.append(layers[i].register_forward_pre_hook(_input_recorder(record, i, flop_meter),
                                                               with_kwargs=True))
        handles.append(model.register_forward_hook(_output_recorder(record)))
        yield record
    finally:
        detach_capture(layers, handles, impl)
    if len(record.layers) != len(layers) or record.output is None:
        raise RuntimeError(f"shared prefill recorded {len(record.layers)} of {len(layers)} layers; was the "
                           f"block's prefill a full {length}-token prompt?")


def _rows_setter(slot: QueryCapture, rows: int):
    def pre_hook(module, args, kwargs):
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        slot.rows = rows if hidden is not None and hidden.shape[1] > 1 else 0
        slot.queries = None

    return pre_hook


def _recorder(record: PrefillRecord, layer_idx: int, slot: QueryCapture, rows: list[int], need: str):
    def hook(module, args, kwargs, output):
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        cache = kwargs.get("past_key_values")
        queries, slot.queries = slot.queries, None
        if cache is None or hidden is None or len(record.layers) != layer_idx:
            return output
        layer = cache.layers[layer_idx]
        length = layer.keys.shape[-2]
        if hidden.shape[1] != length or length != record.length or queries is None:
            return output  # not the shared prefill (a decode step, or another prompt)
        norms, current = None, record.layout.current_image
        if need == "all":
            kept, offset = hidden, 0
        elif need == "current_image" and current is not None:
            offset, end = current
            kept = hidden[:, offset:end].clone()
        else:
            kept, offset = hidden[:, :0].clone(), 0
            if need == "current_image_norms" and current is not None:
                offset = current[0]
                norms = hidden[0, current[0]:current[1]].float().norm(dim=-1)  # what the spatial boost reads
        # each row count as its own copy: the same strides the hook's view has, nothing else kept alive
        by_rows = {r: queries[..., -r:, :].clone() for r in rows if r}
        record.layers.append(LayerRecord(module=module, keys=layer.keys, values=layer.values, hidden=kept,
                                         hidden_offset=offset, queries=by_rows, hidden_norms=norms))
        return output

    return hook


def _input_recorder(record: PrefillRecord, layer_idx: int, meter: FlopMeter | None):
    def pre_hook(module, args, kwargs):
        hidden = args[0] if args else kwargs.get("hidden_states")
        if layer_idx in record.layer_inputs or hidden is None or hidden.shape[1] != record.length:
            return None  # not the shared prefill (a decode step), or already recorded
        rest = {k: v for k, v in kwargs.items() if k not in ("hidden_states", "past_key_values")}
        flops = meter.total if meter is not None and meter.counting else None
        record.layer_inputs[layer_idx] = LayerInputs(hidden=hidden, kwargs=rest, flops_before=flops)
        return None

    return pre_hook


def _output_recorder(record: PrefillRecord):
    def hook(module, args, output):
        if record.output is None:
            fields = {k: v for k, v in output.items() if k != "past_key_values"}
            record.output = type(output)(**fields)
        return output

    return hook


def compress_record(model, record: PrefillRecord, compressor: Compressor, budget: float,
                    flop_meter: FlopMeter | None = None) -> tuple[Attachment, list]:
    """Run ``compressor`` at ``budget`` on the record, layer by layer as the hook would at prefill.

    Returns the attachment (stats: kept tokens, KV bytes; ``compress_s``; ``compress_flops``, counted by
    ``flop_meter`` when given) and the per-layer compressed K/V: ``keys``/``values`` holders, a
    ``starkv.storage.ragged.RaggedLayer`` for a layer a head-adaptive compressor stored per KV head, or for a unit
    with storage options (``Compressor.storage``) the cache layers that hold them
    (``starkv.storage.layers``). The compressor's episode state advances exactly as in a run with the hook.
    """
    capacity(1, budget)
    check_decodable(model, compressor)
    num_layers = len(record.layers)
    att = Attachment(model=model, compressor=compressor, budget=budget, layout=record.layout)
    if compressor.pruning:
        att.prune = PruneState(layer=prune_layer_index(compressor, num_layers))
    rows = query_rows(compressor, record.layout)
    holders = []
    t0 = time.perf_counter()
    with region_flops(flop_meter) as tally:
        for i, lr in enumerate(record.layers):
            if att.prune is not None and att.prune.pruned(i):  # the unit's own prefill from here on
                holders += resume_pruned(model, record, att, flop_meter)
                break
            holder = _Holder(lr.keys, lr.values)
            holders.append(holder)
            stored = layer_compressor(att, i, num_layers).compress(
                lr.module, lr.hidden, holder, record.length, lr.queries[rows], hidden_offset=lr.hidden_offset,
                hidden_norms=lr.hidden_norms)
            holders[-1] = stored  # the holder, or the layer's per-head storage
    for i in sorted(att.stored):  # a non-default storage: the cache layer itself (starkv.storage.layers)
        holders[i] = att.stored.pop(i)
    resumed = att.resumed
    att.compress_s = time.perf_counter() - t0 - (resumed.seconds if resumed is not None else 0.0)
    att.compress_flops = tally.flops - (resumed.flops if resumed is not None else 0)
    return att, holders


def resume_pruned(model, record: PrefillRecord, att: Attachment, flop_meter: FlopMeter | None = None) -> list:
    """A pruning unit's own prefill after its selecting layer K: layers K + 1 … on the kept tokens only.

    Layers 0 … K are already selected and cut (``att.prune.kept``). Runs the later decoder layers from the
    inputs the record kept for layer K + 1, sliced as the pruning hook slices them, into a scratch cache;
    returns their K/V holders (stats written as the hook writes them). ``att.resumed`` gets the unit's
    prefill output (its own first-token logits) and the seconds and flops of the resumed part.
    """
    state = att.prune
    layers = decoder_layers(model)
    start = state.layer + 1
    inputs = record.layer_inputs.get(start)
    if inputs is None:
        raise RuntimeError(f"the shared prefill recorded no inputs of decoder layer {start}; pass the pruning "
                           "compressors to record_prefill")
    from transformers import DynamicCache

    t0 = time.perf_counter()
    cache = DynamicCache()
    with region_flops(flop_meter) as tally:
        (hidden,), kwargs = state.slice_inputs((inputs.hidden,), {**inputs.kwargs, "past_key_values": cache})
        for i in range(start, len(layers)):
            hidden = layers[i](hidden, **kwargs)
            hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        logits = output_logits(model, hidden)
    later = []
    for i in range(start, len(layers)):
        holder = _Holder(cache.layers[i].keys, cache.layers[i].values)
        stored = layer_compressor(att, i, len(layers)).write_pruned(holder, layers[i].self_attn)
        later.append(stored)
    del cache
    output = type(record.output)(**{**dict(record.output.items()), "logits": logits})
    att.resumed = ResumedPrefill(output=output, flops=tally.flops, seconds=time.perf_counter() - t0,
                                 flops_before=inputs.flops_before)
    return later


def output_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """The last position's logits from the last decoder layer's output (the text model's norm, then the head)."""
    return model.lm_head(text_model(model).norm(hidden)[:, -1:, :])


@contextlib.contextmanager
def replay_prefill(model, record: PrefillRecord, holders: list, output: Any = None) -> Iterator[None]:
    """The block's first forward of ``model`` returns the recorded prefill output with ``holders`` as cache.

    Pass ``generate`` the same inputs as the shared prefill minus the pixels (nothing reads them: the
    vision tower ran in the shared prefill, and positions come from the token ids and image grids). Ragged
    (per-KV-head) layers go into the cache as they are, and the attention wrapper that decodes them is
    installed for the block. ``output``: the unit's own prefill output in place of the record's (a pruning
    unit's, ``Attachment.resumed``).
    """
    from starkv.storage.ragged import RaggedLayer

    output = record.output if output is None else output
    ragged = any(isinstance(h, RaggedLayer) for h in holders)
    inner = model.forward
    done = [False]

    @functools.wraps(inner)
    def forward(*args, **kwargs):
        if done[0]:
            return inner(*args, **kwargs)
        done[0] = True
        cache = kwargs.get("past_key_values")
        if cache is None:
            raise RuntimeError("replay_prefill: generate passed no cache to fill")
        for i, holder in enumerate(holders):
            if isinstance(holder, _Holder):
                cache.update(holder.keys, holder.values, i)
            elif i < len(cache.layers):  # per-head or stored layers take the layer's place
                cache.layers[i] = holder
            else:
                cache.layers.append(holder)
        out = type(output)(**dict(output.items()))
        out["past_key_values"] = cache
        return out

    had = "forward" in vars(model)
    model.forward = forward
    impl = decoder_layers(model)[0].self_attn.config._attn_implementation or "eager"  # noqa: SLF001 - transformers keeps the attention backend only here
    if ragged:
        install_attention_wrapper(impl)
    try:
        yield
    finally:
        if ragged:
            remove_attention_wrapper(impl)
        if had:
            model.forward = inner
        else:
            del model.forward
