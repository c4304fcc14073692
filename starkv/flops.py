"""Floating-point operations of a block of torch code, counted with ``torch.utils.flop_counter``.

``FlopCounterMode`` is a ``TorchDispatchMode``: it sees every aten op and adds the op's formula for the
ops it knows (``mm``, ``addmm``, ``bmm``, ``baddbmm``, convolutions and the fused attention kernels),
2 flops per multiply-add, from shapes only, so fake tensors count exactly like real ones. Everything else
(elementwise ops, softmax, norms, pooling, sorting, top-k, gathers) counts 0, and fused attention counts the
full ``L_q × L_k`` score matrix even when causal (torch's convention). One kernel is added to torch's
table here: CPU's fused attention (``_scaled_dot_product_flash_attention_for_cpu``), which ``sdpa`` runs
on CPU and torch's table leaves at 0; it takes torch's own attention formula.

A :class:`FlopMeter` is that counter as a running total that can stop counting without leaving the mode
stack, so it can sit below other dispatch modes (the exact memory accounting) and still stop at the end of
a prefill. Below them it changes none of their figures: the composite ops it decomposes to count them
(``linear`` into ``addmm``, as ``inference_mode`` hands them over whole) are decomposed beneath those modes,
as the kernels themselves would. Regions of a meter's block are counted by differences of ``total``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode, _FlopCounterMode, sdpa_flop_count


def _cpu_attention_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """Torch's fused-attention formula (QKᵀ and AV, 2 flops per multiply-add, no causal saving)."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


#: kernels torch's flop table lacks, with the formula torch uses for their CUDA twins
EXTRA_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flop}  # noqa: SLF001 - the CPU attention kernel has no public alias


def flop_counter() -> FlopCounterMode:
    """A silent ``FlopCounterMode`` that also knows CPU fused attention."""
    return FlopCounterMode(display=False, custom_mapping=EXTRA_FORMULAS)


class _GatedMode(_FlopCounterMode):
    """``FlopCounterMode``'s dispatch mode while ``counting``; a plain pass-through after."""

    def __init__(self, counter: FlopCounterMode) -> None:
        super().__init__(counter)
        self.counting = True

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self.counting:
            return func(*args, **(kwargs or {}))
        return super().__torch_dispatch__(func, types, args, kwargs)


class FlopMeter:
    """A running flop count over its ``with`` block (torch's ``FlopCounterMode`` table and dispatch, without
    its per-module breakdown); :meth:`stop` ends the counting and keeps the total, the mode stays in place."""

    def __init__(self) -> None:
        self.counter = flop_counter()
        self.mode: _GatedMode | None = None

    @property
    def total(self) -> int:
        """Flops counted so far."""
        return self.counter.get_total_flops()

    @property
    def counting(self) -> bool:
        return self.mode is not None and self.mode.counting

    def stop(self) -> None:
        """Count nothing more (the ops of the rest of the block pass through)."""
        if self.mode is not None:
            self.mode.counting = False

    def __enter__(self) -> FlopMeter:
        self.counter.flop_counts.clear()
        self.mode = _GatedMode(self.counter)
        self.mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        mode, self.mode = self.mode, None
        if mode is not None:
            mode.__exit__(*exc)


@dataclass
class FlopTally:
    """Flops counted by one :func:`count_flops` block (0 until the block ends, or when counting is off)."""

    flops: int = 0


@contextlib.contextmanager
def count_flops(enabled: bool = True) -> Iterator[FlopTally]:
    """Count the flops of the block into the yielded tally; a no-op (tally 0) when ``enabled`` is False."""
    tally = FlopTally()
    if not enabled:
        yield tally
        return
    meter = FlopMeter()
    try:
        with meter:
            yield tally
    finally:
        tally.flops = meter.total


@contextlib.contextmanager
def region_flops(meter: FlopMeter | None) -> Iterator[FlopTally]:
    """Flops ``meter`` counts inside the block (0 without a meter): the difference of its totals."""
    tally = FlopTally()
    before = meter.total if meter is not None else 0
    try:
        yield tally
    finally:
        tally.flops = meter.total - before if meter is not None else 0
