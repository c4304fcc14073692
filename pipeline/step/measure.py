"""Where a step's time and memory are measured: one context for every model call, one row fill.

Every path of a step (a per-unit call, a sweep's shared prefill, a unit's decode from it, a batch of
units' decodes) opens its measurement here, in one nesting order: inference mode, the device peak, the
contexts the caller needs around the model (a compressor attachment, the low-memory switches), the flop
count when asked for (below the accounting, which then sees the ops of a step without it), the exact
accounting (after those, so a compressor's own scratch counts under attention), the phase timer.
"""

from __future__ import annotations

import contextlib
import os
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import torch

from pipeline.memory.accounting import MemoryAccount, track_step
from pipeline.memory.measured import PeakReading, peak_memory
from starkv.flops import FlopMeter


class PhaseTimer:
    """Times generate's first forward (prefill) apart from the rest (decode) with a model forward hook."""

    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        self.model, self.device = model, device
        self.first_end: float | None = None
        self.start = 0.0
        self.end = 0.0

    def __enter__(self) -> PhaseTimer:
        self._sync()
        self.start = time.perf_counter()
        self.handle = self.model.register_forward_hook(self._on_forward)
        return self

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _on_forward(self, module, args, output) -> None:
        if self.first_end is None:
            self._sync()
            self.first_end = time.perf_counter()

    def __exit__(self, *exc) -> None:
        self._sync()
        self.end = time.perf_counter()
        self.handle.remove()

    @property
    def prefill_s(self) -> float:
        return (self.first_end or self.end) - self.start

    @property
    def decode_s(self) -> float:
        return self.end - (self.first_end or self.end)

    @property
    def total_s(self) -> float:
        return self.prefill_s + self.decode_s


class PrefillFlops:
    """Counts the flops of generate's prefill with ``meter`` (``starkv.flops``): everything from the block's
    start to the end of the model's first forward (the chunks of a chunked prefill included); then the meter
    stops counting, so the decode runs without the counter's per-op cost. ``flops`` includes a compressor's
    selection inside that forward (``Attachment.compress_flops``, counted by the same meter).
    """

    def __init__(self, model: torch.nn.Module, meter: FlopMeter) -> None:
        self.model, self.meter = model, meter
        self.flops = 0

    def __enter__(self) -> PrefillFlops:
        self.meter.__enter__()
        self.handle = self.model.register_forward_hook(self._on_forward)
        return self

    def _stop(self) -> None:
        if self.meter.counting:
            self.meter.stop()
            self.flops = self.meter.total

    def _on_forward(self, module, args, output) -> None:
        self._stop()

    def __exit__(self, *exc) -> None:
        self.handle.remove()
        self._stop()
        self.meter.__exit__(*exc)


@dataclass
class Measurement:
    """What one measured block yields: the device peak, the exact account (None when accounting is off),
    the phase timer (None when not timed), the values of the caller's contexts, in order, and the prefill's
    flop count (None when not counted)."""

    peak: PeakReading
    account: MemoryAccount | None
    timer: PhaseTimer | None
    entered: list[Any] = field(default_factory=list)
    flops: PrefillFlops | None = None


@contextlib.contextmanager
def measured(model: torch.nn.Module, device: torch.device, inputs: dict[str, Any], *, accounting: bool,
             around: tuple[AbstractContextManager, ...] = (), held: list[torch.Tensor] | None = None,
             timed: bool = True, flops: FlopMeter | None = None) -> Iterator[Measurement]:
    """Measure a block of model work (see the module docstring for the nesting order).

    Parameters
    ----------
    model, device
        The model whose forwards are timed and accounted, and the device whose peak is read.
    inputs : dict
        The processor inputs the block runs on (counted as the step's inputs by the accounting).
    accounting : bool
        Exact accounting of live tensors (off only to measure what it costs).
    around : tuple of context managers
        Entered after the device peak and before the accounting, in order (their values land in
        ``Measurement.entered``).
    held : list of tensors, optional
        Tensors someone else holds through the block (a sweep's prefill records), counted in every peak.
    timed : bool
        Whether to open a phase timer.
    flops : FlopMeter, optional
        Counts the prefill's flops (``PrefillFlops``); entered before the accounting, so the accounting's
        figures are those of a step without it. Pass the same meter to ``attach`` for the selection's share.
    """
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.inference_mode())
        peak = stack.enter_context(peak_memory(device))
        entered = [stack.enter_context(c) for c in around]
        counted = stack.enter_context(PrefillFlops(model, flops)) if flops is not None else None
        account = None
        if accounting:
            tracker = track_step(model, inputs) if held is None else track_step(model, inputs, held=held)
            account = stack.enter_context(tracker)
        timer = stack.enter_context(PhaseTimer(model, device)) if timed else None
        yield Measurement(peak=peak, account=account, timer=timer, entered=entered, flops=counted)


def fill_measures(row: dict[str, Any], att: Any, account: MemoryAccount | None, *, peak_bytes: int,
                  mem_device: str, prefill_s: float, decode_s: float, prefill_flops: int = 0, **flags: Any) -> None:
    """A step's measured columns, whichever path ran it: the compressor's figures (``att``: kept tokens,
    KV bytes, selection time and flops), the exact account's columns, the device peak, the phase times and
    the model's prefill flops (0: not counted)."""
    if account is not None:
        row.update(account.row_fields())
    row.update(kept_tokens=att.kept_tokens, kv_bytes=att.kv_bytes, kv_bytes_full=att.kv_bytes_full,
               peak_mem_bytes=peak_bytes, mem_device=mem_device, prefill_s=prefill_s, compress_s=att.compress_s,
               decode_s=decode_s, compress_flops=att.compress_flops, prefill_flops=prefill_flops, **flags)
    if account is not None and not flags.get("prefill_shared"):  # a step the unit ran alone: its own peak
        row["own_peak_above_weights_bytes"] = row["peak_above_weights_bytes"]


def step_error(err: BaseException) -> str:
    """The ``error`` column for a step that raised (an out-of-memory reads as such)."""
    if isinstance(err, torch.cuda.OutOfMemoryError):  # type: ignore[attr-defined]
        torch.cuda.empty_cache()
        return f"out of memory in generate: {str(err).splitlines()[0]}"
    tb = traceback.extract_tb(err.__traceback__)[-1]
    return f"{type(err).__name__}: {err} (at {os.path.basename(tb.filename)}:{tb.lineno})"


def guarded(work: Callable[[], str], row: dict[str, Any]) -> str:
    """Run a step's work; an exception becomes the row's ``error`` (a failing step is data, not a crash)."""
    try:
        return work()
    except Exception as err:
        row["error"] = step_error(err)
        return ""
