"""The budget rule shared by every compressor: ``C = int(L·b/100)`` tokens per layer, the window inside C."""

from __future__ import annotations

from dataclasses import dataclass


def capacity(prompt_length: int, budget_percent: float) -> int:
    """Tokens a layer may keep: ``int(L · b / 100)`` (the STaR-KV / GUI-KV rule)."""
    if not 0 < budget_percent <= 100:
        raise ValueError(f"budget must be in (0, 100] percent, got {budget_percent}")
    return int(prompt_length * budget_percent / 100)


@dataclass(frozen=True)
class SelectionPlan:
    """How a layer of ``length`` tokens is cut: keep ``keep_past`` of ``[0, past)`` plus the last ``window``."""

    length: int
    window: int
    past: int
    keep_past: int

    @property
    def kept(self) -> int:
        return self.keep_past + self.window

    @property
    def compresses(self) -> bool:
        return self.kept < self.length


def plan_selection(length: int, cap: int, window_size: int) -> SelectionPlan:
    """Split a capacity into window and top-k part exactly as the reference code does.

    ``W' = max(1, min(W, C - 2))``, ``P = L - W'``, ``k = max(1, min(C - W', P))``; a capacity at or above
    L keeps everything. The result keeps ``C`` tokens whenever ``C >= 2`` (a layer never drops below 2).
    """
    if length <= 0:
        return SelectionPlan(length=0, window=0, past=0, keep_past=0)
    if cap >= length:
        return SelectionPlan(length=length, window=0, past=length, keep_past=length)
    window = max(1, min(window_size, cap - 2))
    window = min(window, length)
    past = length - window
    keep_past = max(1, min(cap - window, past)) if past > 0 else 0
    return SelectionPlan(length=length, window=window, past=past, keep_past=keep_past)


def kept_length(prompt_length: int, budget_percent: float, window_size: int = 8) -> int:
    """Cache length per layer after prefill compression at a uniform budget."""
    return plan_selection(prompt_length, capacity(prompt_length, budget_percent), window_size).kept
