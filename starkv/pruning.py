"""Token pruning inside the prefill (``Compressor.pruning``, e.g. FastV): later layers run on fewer tokens.

The hook (``starkv.hook``) lets the layers up to the compressor's ``prune_layer`` run on the whole prompt.
After that layer's attention the compressor selects the tokens that go on; the caches of that layer and of
the layers before it are cut to them, and a forward pre-hook on every later decoder layer slices what the
text model hands each layer for the whole prompt: the hidden states (once, at the first pruned layer), the
M-RoPE ``position_embeddings`` (cos, sin of shape (B, L, d), computed once per forward from the full
``position_ids``), the attention mask (B, 1, L, L) when there is one (sdpa may pass None: plain causal
attention, which stays right because the kept tokens stay in order) and the text ``position_ids``. The kept
tokens therefore keep their original positions; decoding continues from the positions ``generate`` carries
for the full prompt, whatever the cache length.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class ResumedPrefill:
    """A pruning unit's prefill after its selecting layer, run from a shared prefill's record (``starkv.shared``)."""

    output: Any  # the prefill forward's output with the unit's own first-token logits
    flops: int  # flops of the resumed layers and the head (0: not counted)
    seconds: float
    flops_before: int | None  # the shared prefill's flops up to the resumed layer (None: not counted)

    @property
    def prefill_flops(self) -> int | None:
        """The unit's whole prefill: the shared part it used plus its own layers (None: not counted)."""
        return None if self.flops_before is None else self.flops_before + self.flops


@dataclass
class PruneState:
    """One prefill's pruning: the selecting layer, then the kept prompt positions until the prefill ends."""

    layer: int
    length: int = 0
    #: (C,) ascending positions of the kept prompt tokens; None until selected, or when nothing is dropped
    kept: torch.Tensor | None = None
    #: (layer context, cache layer, bytes before) of the layers before ``layer``, cut once it has selected
    waiting: list[tuple[Any, Any, int]] = field(default_factory=list)
    #: full-length tensor id -> its slice, so every later layer reuses one slice of the shared inputs
    _slices: dict[int, torch.Tensor] = field(default_factory=dict)

    def start(self, length: int) -> None:
        """A new prefill of ``length`` tokens begins (called at layer 0)."""
        self.length, self.kept = length, None
        self.waiting.clear()
        self._slices.clear()

    def select(self, kept: torch.Tensor | None) -> None:
        self.kept = None if kept is None else kept.to(torch.long)
        self._slices.clear()

    def finish(self) -> None:
        """The prefill's last layer ran: stop slicing (decode steps pass through)."""
        self.kept = None
        self._slices.clear()

    def pruned(self, layer_idx: int) -> bool:
        """Whether layer ``layer_idx`` of the prefill in progress runs on the kept tokens only."""
        return self.kept is not None and layer_idx > self.layer

    def _slice(self, t: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
        if any(t.shape[d] != self.length for d in dims):
            return t
        key = id(t)
        if key not in self._slices:
            out = t
            kept = self.kept.to(t.device)
            for d in dims:
                out = out.index_select(d, kept)
            self._slices[key] = out
        return self._slices[key]

    def slice_inputs(self, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """A decoder layer's inputs restricted to the kept tokens (what is already short is left alone)."""
        kwargs = dict(kwargs)
        if args:
            hidden = args[0]
            if hidden.shape[1] == self.length:
                args = (hidden.index_select(1, self.kept.to(hidden.device)), *args[1:])
        elif kwargs.get("hidden_states") is not None and kwargs["hidden_states"].shape[1] == self.length:
            kwargs["hidden_states"] = kwargs["hidden_states"].index_select(1, self.kept.to(kwargs["hidden_states"].device))
        pe = kwargs.get("position_embeddings")
        if pe is not None:
            kwargs["position_embeddings"] = tuple(self._slice(t, (t.ndim - 2,)) for t in pe)
        mask = kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.ndim == 4:
            kwargs["attention_mask"] = self._slice(mask, (2, 3))
        elif isinstance(mask, torch.Tensor) and mask.ndim == 2:
            kwargs["attention_mask"] = self._slice(mask, (1,))
        elif mask is not None and not isinstance(mask, torch.Tensor):
            raise TypeError(f"starkv pruning: cannot slice an attention mask of type {type(mask).__name__}; "
                            "use attn_implementation sdpa or eager")
        pos = kwargs.get("position_ids")
        if isinstance(pos, torch.Tensor):
            kwargs["position_ids"] = self._slice(pos, (pos.ndim - 1,))
        return args, kwargs


def install_pruning(state: PruneState, layers: list) -> list:
    """Pre-hooks on the decoder layers after ``state.layer`` that slice their inputs while a prefill prunes."""

    def pre_hook(module, args, kwargs):
        if state.kept is None:
            return None
        return state.slice_inputs(args, kwargs)

    return [layer.register_forward_pre_hook(pre_hook, with_kwargs=True) for layer in layers[state.layer + 1:]]
