"""Exact memory accounting of one model step: bytes of the live tensor storages, on any device.

PyTorch has ``torch.distributed._tools.mem_tracker.MemTracker`` (a ``TorchDispatchMode`` that follows
storages with weak references, made for training: parameters, gradients, optimizer states, snapshots per
module). A step of ``generate`` needs less and something else: the peak above the weights split into
prefill and decode, and which part of the model held it. This tracker uses the same mechanism, leanly:

* every op output whose schema says it is a fresh tensor (no alias annotation) and whose storage is not
  known yet is counted with its ``nbytes``, under the *part* of the model running at that moment (a few
  module hooks keep that label);
* a weak reference on the storage takes the bytes off again when the storage dies (views keep it alive,
  exactly as in the allocator);
* the peak is taken right after each allocation, so it is the allocator's peak minus what kernels
  allocate internally and free before returning (invisible to dispatch; documented in the README).

The weights and the step's inputs exist before the step and are reported apart. The cyclic garbage
collector is paused during the step: a cycle freed at a moment that depends on the process history would
make two runs differ; with it paused every figure is a pure function of the job (deterministic on CPU).

It works the same on fake tensors (``FakeTensorMode``), which is how ``bench memory`` simulates a 7B
model without weights or a GPU.
"""

from __future__ import annotations

import gc
import json
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from starkv.hook import text_model

#: The parts a live byte can belong to. ``kv_cache``: storages held by the cache after a decoder layer;
#: ``inputs``: the step's input tensors; ``sweep_record``: a shared prefill's records (``starkv.shared``),
#: held for every unit of a sweep; the others: where the storage was allocated.
PARTS = ("inputs", "kv_cache", "vision", "embed", "attention", "mlp", "decoder", "logits", "other", "sweep_record")
_INDEX = {p: i for i, p in enumerate(PARTS)}
_OTHER = _INDEX["other"]


@dataclass
class PhasePeak:
    """Peak live bytes (above the weights) of one phase, with what was live at that moment."""

    bytes: int = 0
    part: str = ""
    breakdown: dict[str, int] = field(default_factory=dict)


@dataclass
class MemoryAccount:
    """One step's exact figures; every byte count excludes the weights (given apart).

    The peaks are settled when first read, after the ``with`` block has fully ended: only then is it
    known which storages the step handed on (see :meth:`StorageTracker.finish`).
    """

    weights_bytes: int = 0
    input_bytes: int = 0
    held_bytes: int = 0  # storages someone else held through the block (a sweep's records), in every peak
    tracked: Any = None  # the live track_step while its block runs (to call keep())
    _phases: dict[str, PhasePeak] | None = None
    settle: Any = None

    def _get(self, phase: str) -> PhasePeak:
        if self._phases is None:
            self._phases = self.settle() if self.settle is not None else {}
            self.settle = None
        return self._phases.get(phase) or PhasePeak()

    @property
    def prefill(self) -> PhasePeak:
        return self._get("prefill")

    @property
    def decode(self) -> PhasePeak:
        return self._get("decode")

    @property
    def peak_above_weights_bytes(self) -> int:
        return max(self.prefill.bytes, self.decode.bytes)

    @property
    def peak(self) -> PhasePeak:
        return self.decode if self.decode.bytes > self.prefill.bytes else self.prefill

    def with_prefill_of(self, shared: MemoryAccount) -> MemoryAccount:
        """This unit's account with the shared prefill's peak as its prefill when that is higher.

        A unit of a shared sweep did not run the prefill but its cache came out of it: the step's peak is
        the higher of the shared prefill (full cache of every layer plus the records) and the unit's own
        selection and decode (with the records held).
        """
        own = self.prefill
        phases = {"prefill": shared.prefill if shared.prefill.bytes > own.bytes else own, "decode": self.decode}
        return MemoryAccount(self.weights_bytes, self.input_bytes, self.held_bytes, _phases=phases)

    def row_fields(self) -> dict[str, Any]:
        """The Parquet columns of a step row."""
        peak = self.peak
        return {
            "weights_bytes": self.weights_bytes,
            "peak_above_weights_bytes": self.peak_above_weights_bytes,
            "peak_prefill_bytes": self.prefill.bytes,
            "peak_decode_bytes": self.decode.bytes,
            "peak_phase": ("decode" if peak is self.decode else "prefill") if peak.bytes else "",
            "peak_part": peak.part,
            "peak_breakdown_json": json.dumps({k: v for k, v in peak.breakdown.items() if v}, sort_keys=True),
        }


def storage_bytes(tensors) -> int:
    """Bytes of the distinct storages behind ``tensors`` (shared storages counted once)."""
    seen: dict[int, int] = {}
    for t in tensors:
        if isinstance(t, torch.Tensor):
            st = t.untyped_storage()
            seen[id(st)] = st.nbytes()
    return sum(seen.values())


def weights_bytes(model: torch.nn.Module) -> int:
    return storage_bytes([*model.parameters(), *model.buffers()])


#: what an op's outputs are to the accounting: new allocations, views of an input, or either (``_op_kind``)
FRESH, VIEW, MAY_COPY = 0, 1, 2


def _op_kind(func) -> int:
    """``FRESH`` when no return of the op aliases an input; else ``MAY_COPY`` for an op with no kernel of its
    own (``to``, ``contiguous``, ``reshape``, ``flatten``: it returns its input or a copy), ``VIEW`` for an op
    with its own kernel and an aliasing return (``view``, ``transpose``, ``slice`` …), which never allocates."""
    if all(r.alias_info is None for r in func._schema.returns):  # noqa: SLF001 - torch op schemas have no public accessor
        return FRESH
    composite = torch._C._dispatch_has_kernel_for_dispatch_key(func.name(), "CompositeImplicitAutograd")  # noqa: SLF001 - no public query of an op's kernels
    return MAY_COPY if composite else VIEW


class _PartStack:
    """Which part of the model runs now, kept by pre/post forward hooks on a handful of modules."""

    def __init__(self) -> None:
        self.stack: list[int] = []

    def current(self) -> int:
        return self.stack[-1] if self.stack else _OTHER


class StorageTracker(TorchDispatchMode):
    """Counts live tensor-storage bytes during a block; use :func:`track_step` rather than this directly."""

    def __init__(self, parts: _PartStack, external: set[int]) -> None:
        super().__init__()
        self.parts = parts
        self.external = external  # ids of storages that existed before (weights, inputs)
        self.live: dict[int, list] = {}  # storage id -> [nbytes, part index, weakref, allocation number]
        self.allocations = 0
        self._peak_seq: dict[str, int] = {}
        self.by_part = [0] * len(PARTS)
        self.total = 0
        self.phase = "prefill"
        self.peaks = {"prefill": PhasePeak(), "decode": PhasePeak()}
        self._peak = self.peaks["prefill"]  # the current phase's (read on every allocation)
        self._peak_counts: dict[str, list[int]] = {}
        self._peak_part: dict[str, int] = {}
        self.active = True
        self._kinds: dict[Any, int] = {}  # per op: ``_op_kind``
        self._probe: list | None = None  # [entry total, entry counts, max total, counts at max, part at max]

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # torch would wrap __torch_dispatch__ in a dynamo-disabling shim, a cost on every op of every step;
        # nothing runs compiled under this mode, so the plain method is used
        return False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        kind = self._kinds.get(func)
        if kind is None:
            kind = self._kinds[func] = _op_kind(func)
        if kind == VIEW:
            return out
        outs = out if isinstance(out, (tuple, list)) else (out,)
        for t in outs:
            if isinstance(t, torch.Tensor):
                if kind == FRESH:
                    self._add(t)
                else:  # ``to``, ``contiguous``, ``reshape``: a copy it made is still a new allocation
                    self._add_if_copy(t, args, kwargs)
        return out

    def _add_if_copy(self, tensor: torch.Tensor, args, kwargs) -> None:
        """Count ``tensor`` when an op that may return an alias returned a storage none of its inputs has."""
        key = id(tensor.untyped_storage())
        if key in self.live or key in self.external:
            return
        inputs = {id(a.untyped_storage()) for a in pytree.tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)}
        if key not in inputs:
            self._add(tensor)

    def _add(self, tensor: torch.Tensor) -> None:
        st = tensor.untyped_storage()
        key = id(st)
        live = self.live
        if key in live or key in self.external:
            return
        nbytes = st.nbytes()
        stack = self.parts.stack
        part = stack[-1] if stack else _OTHER
        self.allocations += 1
        live[key] = [nbytes, part, weakref.ref(st, self._freed_callback(key)), self.allocations]
        self.by_part[part] += nbytes
        total = self.total = self.total + nbytes
        if self._probe is not None and total > self._probe[2]:
            self._probe[2], self._probe[3], self._probe[4] = total, list(self.by_part), part
        peak = self._peak
        if total > peak.bytes:
            peak.bytes = total
            phase = self.phase
            self._peak_counts[phase] = list(self.by_part)
            self._peak_part[phase] = part
            self._peak_seq[phase] = self.allocations

    def _freed_callback(self, key: int):
        def freed(_ref) -> None:
            entry = self.live.pop(key, None)
            if entry is not None and self.active:
                self.by_part[entry[1]] -= entry[0]
                self.total -= entry[0]
        return freed

    def begin_probe(self) -> None:
        """Start recording the highest point of a stretch of the step, relative to its start."""
        self._probe = [self.total, list(self.by_part), self.total, list(self.by_part), self.parts.current()]

    def end_probe(self) -> tuple[int, list[int], int]:
        """(peak above the start, bytes per part added at that peak, the part running then)."""
        start, counts, top, top_counts, part = self._probe
        self._probe = None
        return top - start, [b - a for a, b in zip(counts, top_counts)], part

    def replay_probe(self, rise: int, counts: list[int], part: int) -> None:
        """Account for a stretch recorded by a probe in an identical state without running it again."""
        top = self.total + rise
        peak = self.peaks[self.phase]
        if top > peak.bytes:
            peak.bytes = top
            self._peak_counts[self.phase] = [a + d for a, d in zip(self.by_part, counts)]
            self._peak_part[self.phase] = part
            self._peak_seq[self.phase] = self.allocations

    def relabel(self, tensors, part: str) -> None:
        """Move the bytes of already counted storages to ``part`` (the KV cache after each layer)."""
        index = _INDEX[part]
        for t in tensors:
            if not isinstance(t, torch.Tensor):
                continue
            entry = self.live.get(id(t.untyped_storage()))
            if entry is not None and entry[1] != index:
                self.by_part[entry[1]] -= entry[0]
                self.by_part[index] += entry[0]
                entry[1] = index

    def start_decode(self) -> None:
        """Prefill is over: from now on peaks count for decode (its peak starts from what is live now)."""
        if self.phase == "decode":
            return
        self.phase = "decode"
        peak = self._peak = self.peaks["decode"]
        peak.bytes = self.total
        self._peak_counts["decode"] = list(self.by_part)
        self._peak_part["decode"] = self.parts.current()
        self._peak_seq["decode"] = self.allocations

    def finish(self, base: int, keep: set[int] = frozenset(), held: int = 0) -> dict[str, PhasePeak]:
        """Peaks with ``base`` (the inputs' bytes) added; stops counting frees.

        Storages still alive after the step (other than ``keep``: its results) were kept by someone
        else -- a process-wide cache (``functools.lru_cache``) or state a method carries to its next
        step. Whether a cache is filled in this step or was filled earlier depends on the process's
        history (which Ray actor ran what before), so such bytes are taken out of every peak they were
        part of: like the weights, they are not the step's memory, and the figures stay reproducible.
        """
        self.active = False
        survivors = [e for k, e in self.live.items() if k not in keep]
        out = {}
        for phase, peak in self.peaks.items():
            counts = self._peak_counts.get(phase)
            if counts is None:
                out[phase] = PhasePeak()
                continue
            counts = list(counts)
            for nbytes, part, _, seq in survivors:
                if seq <= self._peak_seq.get(phase, 0):  # allocated before that peak, alive after it
                    peak.bytes -= nbytes
                    counts[part] -= nbytes
            breakdown = {PARTS[i]: c for i, c in enumerate(counts)}
            breakdown["inputs"] += base
            breakdown["sweep_record"] += held
            out[phase] = PhasePeak(peak.bytes + base + held, PARTS[self._peak_part[phase]], breakdown)
        self.live.clear()
        return out


def _part_modules(model: torch.nn.Module) -> list[tuple[torch.nn.Module, str]]:
    """The modules whose forward defines a part (Qwen2.5-VL / Qwen2 layout; unknown models: none)."""
    inner = getattr(model, "model", model)
    language_model = text_model(model)
    out: list[tuple[torch.nn.Module, str]] = []
    visual = getattr(inner, "visual", None)
    if visual is not None:
        out.append((visual, "vision"))
    embed = getattr(language_model, "embed_tokens", None)
    if embed is not None:
        out.append((embed, "embed"))
    for layer in getattr(language_model, "layers", []):
        out.append((layer, "decoder"))
        for name, part in (("self_attn", "attention"), ("mlp", "mlp")):
            sub = getattr(layer, name, None)
            if sub is not None:
                out.append((sub, part))
    head = getattr(model, "lm_head", None)
    if head is not None:
        out.append((head, "logits"))
    return out


class track_step:  # noqa: N801 - used like a function in a with statement
    """``with track_step(model, inputs) as account:`` exact memory of everything the block runs.

    The first forward of ``model`` is the prefill; everything after it (``generate``'s decode steps and
    its logits processing) is decode. The KV cache is recognised after each decoder layer from its
    ``past_key_values`` argument. ``account`` (a :class:`MemoryAccount`) is filled on exit.

    ``held``: tensors alive through the block that someone else holds (a sweep's prefill records), counted
    in every peak as ``sweep_record``. :meth:`keep` names results the block hands on (a sweep's records):
    they are the step's memory, not a process-wide cache, and stay in its peaks.
    """

    def __init__(self, model: torch.nn.Module, inputs: dict[str, Any] | None = None,
                 held: list[torch.Tensor] | None = None) -> None:
        self.model = model
        self.inputs = [v for v in (inputs or {}).values() if isinstance(v, torch.Tensor)]
        self.held = list(held or [])
        self.kept: list[torch.Tensor] = []
        self.account = MemoryAccount()

    def keep(self, tensors: list[torch.Tensor]) -> None:
        """Storages the step hands on (call inside the block, before it ends)."""
        self.kept.extend(tensors)

    def start_decode(self) -> None:
        """From now on peaks count for decode, for a block whose decode does not start with a prefill forward
        (a batched decode after the units' own selections)."""
        self.tracker.start_decode()

    def __enter__(self) -> MemoryAccount:
        self.account.tracked = self  # so the block can call keep() through the account
        model = self.model
        weights = [*model.parameters(), *model.buffers()]
        external = {id(t.untyped_storage()) for t in weights + self.inputs + self.held}
        self.account.weights_bytes = storage_bytes(weights)
        self.account.input_bytes = storage_bytes(self.inputs)
        self.account.held_bytes = storage_bytes(self.held)
        self.parts = parts = _PartStack()
        self.tracker = tracker = StorageTracker(parts, external)
        self.handles = []
        for module, part in _part_modules(model):
            index = _INDEX[part]
            self.handles.append(module.register_forward_pre_hook(lambda *_a, i=index: parts.stack.append(i)))
            self.handles.append(module.register_forward_hook(lambda *_a: parts.stack.pop() and None))
        layers = [m for m, p in _part_modules(model) if p == "decoder"]
        self.wrapped_caches: list[Any] = []
        for idx, layer in enumerate(layers):
            self.handles.append(layer.register_forward_pre_hook(self._wrap_cache, with_kwargs=True))
            self.handles.append(layer.register_forward_hook(self._cache_hook(idx), with_kwargs=True))
            attn = getattr(layer, "self_attn", None)
            if attn is not None:  # after a compressor's hook (attached earlier): the gathered cache is KV
                self.handles.append(attn.register_forward_hook(self._cache_hook(idx), with_kwargs=True))
        self.handles.append(model.register_forward_hook(lambda *_a: tracker.start_decode()))
        self.gc_was_enabled = gc.isenabled()
        gc.disable()
        tracker.__enter__()
        return self.account

    def _wrap_cache(self, module, args, kwargs) -> None:
        """Label what the cache's ``update`` allocates (the grown K/V) as KV cache from the start.

        The cache object is made by ``generate``; the wrapper lives on that instance for this step only.
        """
        cache = kwargs.get("past_key_values")
        if cache is None or not hasattr(cache, "update") or "update" in vars(cache):
            return
        inner, stack, index = cache.update, self.parts.stack, _INDEX["kv_cache"]

        def update(*a, **kw):
            stack.append(index)
            try:
                return inner(*a, **kw)
            finally:
                stack.pop()

        cache.update = update
        self.wrapped_caches.append(cache)

    def _cache_hook(self, idx: int):
        tracker = self.tracker

        def hook(module, args, kwargs, output) -> None:
            cache = kwargs.get("past_key_values")
            layers = getattr(cache, "layers", None)
            if layers is not None and idx < len(layers):
                layer = layers[idx]
                stored = getattr(layer, "stored_tensors", None)  # a unit's storage form (starkv.storage.layers)
                tracker.relabel(stored() if stored is not None else [getattr(layer, "keys", None),
                                                                      getattr(layer, "values", None)], "kv_cache")

        return hook

    def __exit__(self, *exc) -> None:
        try:
            self.tracker.__exit__(*exc)
        finally:
            for h in self.handles:
                h.remove()
            for cache in self.wrapped_caches:
                vars(cache).pop("update", None)
            self.wrapped_caches.clear()
            # cyclic garbage of the step (nothing was collected while it ran) goes now, so only what
            # someone really keeps survives the step (see StorageTracker.finish)
            gc.collect(0)
            if self.gc_was_enabled:
                gc.enable()
        tracker, base, held = self.tracker, self.account.input_bytes, self.account.held_bytes
        keep = {id(t.untyped_storage()) for t in self.kept}
        self.kept = []
        self.account.tracked = None
        self.account.settle = lambda: tracker.finish(base, keep, held)
