"""Run a real model step on fake tensors: full-size architecture, no weights, no GPU, exact shapes.

``FakeTensorMode`` gives every tensor its shape, dtype and storage size but no data, so a 7B model's
``generate`` runs in seconds and :mod:`pipeline.memory.accounting` counts its memory exactly as on real
tensors. What fake tensors cannot do is read values. Two kinds of values matter:

* the *prompt metadata* (token ids, attention mask, ``image_grid_thw``, M-RoPE positions, the vision
  tower's window indices): small integer tensors whose values decide shapes. :class:`ShadowMode` keeps a
  real copy ("shadow") of every small tensor computed only from known values and answers
  ``.item()``/``.tolist()`` and data-dependent shapes (``nonzero``, boolean indexing, ``repeat_interleave``)
  from it, so these come out exactly as in a real run;
* values computed from the (absent) weights: generated tokens, attention scores. Shapes never depend on
  them in the pipeline (compressors keep a budgeted count; MI histograms are fixed-size); where Python
  reads one (a layer weight of a layer-adaptive compressor) it gets 0 and the read is counted in
  ``unknown_reads`` so a report can say so.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch._subclasses.fake_tensor import (
    DataDependentOutputException,
    DynamicOutputShapeException,
    FakeTensor,
    FakeTensorMode,
)
from torch.utils import _pytree as pytree
from torch.utils._mode_utils import no_dispatch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.weak import WeakIdKeyDictionary

#: Tensors with more elements than this never get a real shadow (only metadata-sized ones do).
SHADOW_NUMEL_LIMIT = 1 << 20
_SCALAR = torch.ops.aten._local_scalar_dense.default  # noqa: SLF001 - the aten op has no public alias
#: ``Tensor.item`` and ``bool(tensor)`` reach this mode whole when no mode above decomposes them (no flop
#: counter in the stack)
_READS = (_SCALAR, torch.ops.aten.item.default, torch.ops.aten.is_nonzero.default)


def _writes(func) -> list[int]:
    """Positions of the arguments an op writes to (in-place / out=)."""
    return [i for i, a in enumerate(func._schema.arguments) if a.alias_info is not None and a.alias_info.is_write]  # noqa: SLF001 - torch op schemas have no public accessor


class ShadowMode(TorchDispatchMode):
    """Keeps real values of small tensors derived from known data; sits above a ``FakeTensorMode``."""

    def __init__(self, fake_mode: FakeTensorMode) -> None:
        super().__init__()
        self.fake_mode = fake_mode
        self.shadows: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self.unknown_reads = 0

    def fake(self, real: torch.Tensor) -> torch.Tensor:
        """A fake copy of a real tensor; small ones keep the real one as their shadow."""
        out = self.fake_mode.from_tensor(real)
        if real.numel() <= SHADOW_NUMEL_LIMIT:
            with no_dispatch():
                self.shadows[out] = real.clone()
        return out

    def _real(self, t: torch.Tensor) -> torch.Tensor | None:
        if not isinstance(t, FakeTensor):
            return t
        return self.shadows.get(t)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        flat, spec = pytree.tree_flatten((args, kwargs))
        reals = [self._real(x) if isinstance(x, torch.Tensor) else x for x in flat]
        known = all(r is not None for r, x in zip(reals, flat) if isinstance(x, torch.Tensor))
        if func in _READS:
            real = reals[0]
            if real is not None:
                with no_dispatch():  # the shadow's own value, below every mode (a flop counter above may decompose)
                    return real.item()
            self.unknown_reads += 1
            return False if args[0].dtype == torch.bool else (0 if not args[0].is_floating_point() else 0.0)
        random = torch.Tag.nondeterministic_seeded in func.tags
        try:
            out = func(*args, **kwargs)
        except (DynamicOutputShapeException, DataDependentOutputException):
            if not known or random:
                raise
            real_out = self._run_real(func, reals, spec)
            return pytree.tree_map_only(torch.Tensor, self.fake, real_out)
        if not known or random:
            for i in _writes(func):  # unknown data written into a tensor: its shadow is stale
                if i < len(args) and isinstance(args[i], torch.Tensor):
                    self.shadows.pop(args[i], None)
            return out
        outs = [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
        if outs and all(t.numel() <= SHADOW_NUMEL_LIMIT for t in outs):
            real_out = self._run_real(func, reals, spec)
            for f, r in zip(outs, [t for t in pytree.tree_leaves(real_out) if isinstance(t, torch.Tensor)]):
                if isinstance(f, FakeTensor):
                    self.shadows[f] = r
        return out

    @staticmethod
    def _run_real(func, reals: list[Any], spec):
        args, kwargs = pytree.tree_unflatten(reals, spec)
        with no_dispatch():
            return func(*args, **kwargs)


#: what a selection raises when its output shape or a Python branch needs values fake tensors lack
VALUE_ERRORS = (DataDependentOutputException, DynamicOutputShapeException)


def unsimulated(err: BaseException) -> str | None:
    """Why a step cannot run on fake tensors, when ``err`` says it read values they lack; None otherwise.

    ``bench memory`` and ``plan`` apply this one rule: such a unit is named with this reason, never stood in
    by another method (another method's peak is not its peak: VL-Cache holds every layer's full cache).
    """
    if isinstance(err, VALUE_ERRORS):
        op = getattr(err, "func", None)
        return (f"its selection reads values fake tensors do not carry ({op if op is not None else type(err).__name__}); "
                "a method whose shapes follow from the budget alone simulates")
    return None


@dataclass
class FakeSession:
    """The modes of one simulation: ``fake_mode`` (no data) under ``shadows`` (prompt metadata)."""

    fake_mode: FakeTensorMode
    shadows: ShadowMode

    def to_fake(self, inputs: dict[str, Any]) -> dict[str, Any]:
        return {k: self.shadows.fake(v) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}


@contextlib.contextmanager
def fake_session() -> Iterator[FakeSession]:
    """Inside the block, new tensors are fake and small metadata tensors carry real shadows."""
    fake_mode = FakeTensorMode(allow_non_fake_inputs=True)  # cached real constants (lru_cache) may meet fakes
    shadows = ShadowMode(fake_mode)
    with fake_mode, shadows:
        yield FakeSession(fake_mode, shadows)


def build_fake_model(config, dtype: torch.dtype, attn_implementation: str):
    """A Qwen2.5-VL of ``config`` with fake weights (call inside :func:`fake_session`)."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    with torch.device("cpu"):  # built in its dtype: no .to() (it cannot swap fake parameters)
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype,  # noqa: SLF001 - transformers builds an unweighted model only through this
                                                                attn_implementation=attn_implementation)
    return model.eval()


@contextlib.contextmanager
def real_rope_index(model, session: FakeSession) -> Iterator[None]:
    """Compute the M-RoPE positions on the shadows (real values), for this model instance only.

    ``get_rope_index`` builds a tensor from a list of 0-d tensors (``torch.tensor(list)``), which reads
    their data directly, below the dispatcher; running it on the real prompt metadata gives the exact
    positions a real run uses.
    """
    inner_model = getattr(model, "model", model)
    inner = inner_model.get_rope_index
    shadows = session.shadows

    def real(value):  # tensors without a shadow (pixel values, embeddings) are no position metadata
        return shadows._real(value) if isinstance(value, torch.Tensor) else value  # noqa: SLF001 - FakeTensor shadows expose the real tensor only here

    def get_rope_index(*args, **kwargs):
        args, kwargs = pytree.tree_map(real, (args, kwargs))
        with no_dispatch():
            out = inner(*args, **kwargs)
        return pytree.tree_map_only(torch.Tensor, shadows.fake, out)

    inner_model.get_rope_index = get_rope_index
    try:
        yield
    finally:
        del inner_model.get_rope_index
