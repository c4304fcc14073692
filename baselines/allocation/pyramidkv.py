"""PyramidKV (Cai et al., 2024, arXiv 2406.02069): SnapKV scores, capacity decreasing linearly with depth.

The layer budget follows the reference ``PyramidKVCluster`` with ``C' = C − W'`` past tokens per layer at
the uniform budget (W' the planned window): ``min = C' // β``, ``max = 2C' − min``; if ``max ≥ L − W'``
then ``max = L − W'`` and ``min = 2C' − max``; prompts with ``L < 2C'`` fall back to uniform.

Rounding rule (documented deviation): the reference steps down by ``(max − min) // (n − 1)`` per layer,
whose floor overspends the uniform total by a few percent (L 1000, b 20 %, 28 layers: +210 of 5376
tokens). We interpolate exactly, ``v_ℓ = max − ℓ·(max − min)/(n − 1)`` (whose sum is exactly ``n·C'``
because ``max + min = 2C'``), take ``floor(v_ℓ)`` and give the ``n·C' − Σ floor`` leftover tokens (lost
only by the interior layers, so fewer than n − 2) one each to the interior layers 1, 2, …. The result
keeps both endpoints, never increases with depth and spends exactly the uniform total. Layers whose
capacity drops below ``W + 2`` get a shorter window from the shared plan rule (``W' = min(W, C_ℓ − 2)``),
which keeps their total ``C_ℓ``. When the top layer's capacity would fall below 2 tokens (only for
C ≤ 3) the uniform budget is used, since a layer never keeps fewer than 2.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from baselines.scorers.snapkv import SnapKV
from starkv.budget import plan_selection
from starkv.compressor import register


def pyramid_past_budgets(length: int, past_budget: int, window: int, num_layers: int, beta: int) -> list[int] | None:
    """Past tokens kept per layer (bottom first), or None when PyramidKV falls back to uniform."""
    if num_layers < 2 or length < 2 * past_budget:
        return None
    low = past_budget // beta
    high = 2 * past_budget - low
    if high >= length - window:
        high = length - window
        low = 2 * past_budget - high
    if low + window < 2:
        return None
    span, steps = high - low, num_layers - 1
    floors = [high - (layer * span + steps - 1) // steps for layer in range(num_layers)]  # floor(v_l)
    leftover = num_layers * past_budget - sum(floors)
    return [f + (1 if 1 <= layer <= leftover else 0) for layer, f in enumerate(floors)]  # endpoints are exact


@register("pyramidkv")
@dataclass
class PyramidKV(SnapKV):
    """SnapKV scoring with a pyramid of layer capacities and the same total as the uniform budget.

    Paper: https://arxiv.org/abs/2406.02069

    Parameters
    ----------
    window_size : int
        Observation window W (8), kept in every layer.
    kernel_size : int
        Average-pool kernel of the SnapKV scores (5).
    beta : int
        Pyramid steepness β (20): the top layer keeps ``C' // β`` past tokens.
    """

    hidden_states_needed: ClassVar[str] = "none"  # what a shared prefill keeps for it
    query_aware: ClassVar[bool] = True

    beta: int = 20

    def layer_capacity(self, prompt_length: int, cap: int, layer_idx: int, num_layers: int) -> int:
        plan = plan_selection(prompt_length, cap, self.window_size)
        if not plan.compresses:
            return cap
        budgets = pyramid_past_budgets(prompt_length, plan.keep_past, plan.window, num_layers, self.beta)
        return cap if budgets is None else budgets[layer_idx] + plan.window
