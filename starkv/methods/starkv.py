"""STaR-KV (arXiv 2606.01790): one shared, spatially and temporally re-weighted token score per layer.

Pipeline per decoder layer at prefill (spec §1.1–1.10), all tensors on the cache's device:

1. observation-window attention of the last W' queries, summed, avg-pooled (kernel 5), per query head;
2. + hidden-state-norm spatial boost ``α·softmax(z(‖x‖)/τ_s)`` on the current (last) screenshot;
3. per-KV-group means ``S[g]`` and the head-mean base score;
4. online spatial-MI prior: the MI of each group's attention vs a 12×12 cell grid of the current
   screenshot, EMA over the steps of an episode, turned into group weights ``w``; the token factor
   ``(1 − λ_eff) + λ_eff·n_kv·w_{g*(j)}`` with ``g* = argmax_g S[g, j]`` and λ_eff ramping in after N calls;
5. temporal discount of older screenshots by frame age and group-pattern stability;
6. entropy temperature power ``score^(1/T)``;
7. one index set shared by all KV heads: top-(C − W') plus the window (base class).

State (MI counter/EMA, temporal counter/pattern EMA, last temperature) is kept per layer on the instance
and persists across the ``generate`` calls of one episode until ``reset()``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from starkv.compressor import ScorerCompressor, register
from starkv.context import LayerContext
from starkv.methods import mi as mi_mod
from starkv.methods import temporal as temporal_mod
from starkv.scoring import add_spatial_boost, group_mean, window_scores


@dataclass
class LayerState:
    """Per-layer episode state (spec §1.11)."""

    mi_steps: int = 0  # t: MI calls since reset
    mi_ema: torch.Tensor | None = None  # E: (n_kv,) float64
    temporal_steps: int = 0  # u: calls since reset
    pattern_ema: torch.Tensor | None = None  # M: (n_kv, n_v of the current screenshot)
    temperature: torch.Tensor | None = None  # T: 0-d tensor


def entropy_temperature(base: torch.Tensor, t_min: float, t_max: float) -> torch.Tensor:
    """``T = T_min + (T_max − T_min)·H_n`` with H_n the normalised entropy of the head-mean scores (0-d)."""
    past = base.shape[-1]
    p = base / base.sum().clamp_min(1e-8)
    h = -(p * torch.log(p + 1e-8)).sum() / (math.log(past) + 1e-8)
    return t_min + (t_max - t_min) * h


def best_group(groups: torch.Tensor) -> torch.Tensor:
    """g*(j) = argmax_g S[g, j], the first group on ties; (P,) int64.

    ``max(dim=0).indices`` (documented first-max) is ~10x faster on CPU than ``argmax(dim=0)`` here.
    """
    return groups.max(dim=0).indices


@register("starkv")
@dataclass
class StarKV(ScorerCompressor):
    """STaR-KV with the reference (repro-script) settings; each module can be switched off for ablations.

    Paper: https://arxiv.org/abs/2606.01790

    Parameters
    ----------
    window_size : int
        Observation window W (8): its queries score the past tokens, and it is always kept.
    kernel_size : int
        Average-pool kernel of the window scores (5), so neighbours of a salient token are kept together.
    alpha : float
        Weight α of the hidden-state-norm spatial boost on the current screenshot (2.0).
    spatial_tau : float
        Softmax temperature τ_s of the spatial boost, dividing the standardised norms (3.5).
    mi_grid : int
        Cells per side of the grid laid over the current screenshot for the spatial MI (12).
    mi_bins : int
        Equal-frequency value bins of a group's attention in the MI estimate (16).
    mi_decay : float
        EMA decay of each group's MI over the steps of an episode (0.9), smoothing the group weights.
    mi_lambda : float
        Final strength λ of the MI prior (0.5).
    mi_profile_steps : int
        Calls N that only profile the MI before the prior acts (5); ≤ 0 makes the prior a no-op.
    mi_ramp_steps : int
        Calls R over which λ_eff ramps linearly up to ``mi_lambda`` after the profiling (10; ≤ 0 uses N).
    mi_tau : float
        Softmax temperature τ_MI turning the normalised MI EMA into group weights (1.0).
    temporal_rho : float
        EMA decay ρ of each group's attention pattern over the current screenshot (0.9), the reference
        its stability is measured against.
    temporal_delta : float
        Discount rate δ per frame of age (0.1): how fast older screenshots lose score.
    temporal_eps : float
        Floor ε of the stability factor φ (0), so that unstable groups may still discount history.
    temporal_min : float
        Floor d_min of the discount factor (0), so that old screenshots keep at least that share of their score.
    temporal_warmup : int
        Calls per layer without discount (0), letting the pattern EMA settle first.
    entropy_min : float
        Temperature T at zero normalised attention entropy (0.75).
    entropy_max : float
        Temperature T at maximal normalised attention entropy (1.25).
    entropy_smooth : float
        EMA weight of the previous step's temperature (0 = no smoothing).
    spatial_boost : bool
        Apply the spatial boost (True); False switches the module off for ablations.
    mi_prior : bool
        Apply the spatial-MI prior (True); False switches the module off for ablations.
    temporal : bool
        Apply the temporal discount (True); False switches the module off for ablations.
    entropy : bool
        Apply the entropy temperature ``score^(1/T)`` (True); kept for fidelity only (see Notes).
    entropy_adaptive_budget : bool
        Extension (False): split the layers' total budget in proportion to each layer's temperature,
        which makes the compressor layer-adaptive (see :meth:`layer_weight`).

    Notes
    -----
    Unlike the reference, 0 for λ, decay or τ_MI is taken literally (the reference silently replaces 0 by
    its default).

    Entropy: the faithful mode applies ``score^(1/T)``, a strictly increasing map of non-negative scores
    with k fixed, so it **cannot change the kept set** (spec §1.9); it is kept for fidelity only.
    The extension ``entropy_adaptive_budget=True`` makes the compressor layer-adaptive: the hook splits
    the same total of kept tokens over layers in proportion to each layer's temperature T ∈
    [entropy_min, entropy_max] (higher attention entropy → more tokens), see :meth:`layer_weight`.

    Counters: the spec increments the temporal counter u at every call, also when a layer is not
    compressed, and the MI counter t only when it is. Our hook calls ``score`` only when the plan
    compresses, which for budgets ≤ 100 % differs only when nothing is ever evicted; both counters are
    therefore advanced in ``score``. A hook that wants exact parity calls :meth:`observe_uncompressed`
    for layers it does not compress.
    """

    hidden_states_needed: ClassVar[str] = "current_image_norms"  # what a shared prefill keeps for it
    query_aware: ClassVar[bool] = True
    #: ``kv_layout: per_query_head`` stores the one shared index set in all H query-head rows (the driver's cache)
    per_query_head_layout: ClassVar[bool] = True

    kernel_size: int = 5
    alpha: float = 2.0
    spatial_tau: float = 3.5
    mi_grid: int = 12
    mi_bins: int = 16
    mi_decay: float = 0.9
    mi_lambda: float = 0.5
    mi_profile_steps: int = 5
    mi_ramp_steps: int = 10
    mi_tau: float = 1.0
    temporal_rho: float = 0.9
    temporal_delta: float = 0.1
    temporal_eps: float = 0.0
    temporal_min: float = 0.0
    temporal_warmup: int = 0
    entropy_min: float = 0.75
    entropy_max: float = 1.25
    entropy_smooth: float = 0.0
    spatial_boost: bool = True
    mi_prior: bool = True
    temporal: bool = True
    entropy: bool = True
    entropy_adaptive_budget: bool = False

    def __post_init__(self) -> None:
        self._states: dict[int, LayerState] = {}  # not a field: stays out of params() and equality

    @property
    def layer_adaptive(self) -> bool:  # type: ignore[override]
        """Layer-adaptive budgets only with the entropy extension (the hook reads this on the instance)."""
        return self.entropy_adaptive_budget

    def reset(self) -> None:
        """Forget every layer's state (the reference keeps the last T across resets; harmless at smooth 0)."""
        self._states.clear()

    def state(self, layer_idx: int) -> LayerState:
        """The episode state of one layer (created on first use)."""
        st = self._states.get(layer_idx)
        if st is None:
            st = self._states[layer_idx] = LayerState()
        return st

    def observe_uncompressed(self, layer_idx: int) -> None:
        """Count a call that did not compress (the reference's early exit advances only the temporal counter)."""
        self.state(layer_idx).temporal_steps += 1

    def on_uncompressed(self, ctx: LayerContext) -> None:
        self.observe_uncompressed(ctx.layer_idx)

    def mi_step(self, layer_idx: int, image_scores: torch.Tensor) -> tuple[float, torch.Tensor]:
        """One online-MI update of a layer: returns ``(λ_eff, w)`` with w the (n_kv,) group weights.

        ``image_scores`` (n_kv, n_v): group scores on the current screenshot (n_v may be 0). Advances t
        and the EMA E even while λ_eff = 0, as the reference does.
        """
        st = self.state(layer_idx)
        st.mi_steps += 1
        mi = mi_mod.spatial_mi(image_scores, self.mi_grid, self.mi_bins)
        if st.mi_ema is None or st.mi_ema.shape != mi.shape:
            st.mi_ema = mi
        else:
            st.mi_ema = self.mi_decay * st.mi_ema.to(mi.device) + (1 - self.mi_decay) * mi
        lam = mi_mod.ramp_lambda(st.mi_steps, self.mi_lambda, self.mi_profile_steps, self.mi_ramp_steps)
        weights = mi_mod.group_weights(st.mi_ema, self.mi_tau)
        return lam, weights

    def score(self, ctx: LayerContext) -> torch.Tensor:
        """(1, P) scores shared by every KV head of the layer; advances this layer's episode state."""
        st = self.state(ctx.layer_idx)
        st.temporal_steps += 1
        past = ctx.plan.past
        head = window_scores(ctx.queries, ctx.keys, ctx.plan.window, past, self.kernel_size)
        if self.spatial_boost:
            head = add_spatial_boost(head, ctx, self.alpha, self.spatial_tau)
        base = head.mean(dim=0)
        temperature = None
        if self.entropy or self.entropy_adaptive_budget:
            temperature = entropy_temperature(base, self.entropy_min, self.entropy_max)
            if self.entropy_smooth > 0 and st.temperature is not None:
                temperature = self.entropy_smooth * st.temperature + (1 - self.entropy_smooth) * temperature
            st.temperature = temperature
        groups = group_mean(head, ctx.num_kv_heads)  # (n_kv, P)
        start, end = ctx.layout.current_image or (0, 0)
        end = min(end, past)
        image = groups[:, start:end] if end > start else groups[:, :0]

        m = base
        gstar = None  # g*(j), computed once when a module needs it
        if self.mi_prior and self.mi_profile_steps > 0:
            lam, weights = self.mi_step(ctx.layer_idx, image)
            if lam > 0:
                gstar = best_group(groups)
                factor = (1 - lam) + lam * ctx.num_kv_heads * weights.to(m.dtype)
                m = m * factor[gstar]
        if self.temporal and end > start and len(ctx.layout.clipped_spans(past)) >= 2:
            pattern = temporal_mod.attention_pattern(image)
            st.pattern_ema = temporal_mod.update_pattern_ema(st.pattern_ema, pattern, self.temporal_rho)
            if st.temporal_steps > self.temporal_warmup:
                stab = temporal_mod.group_stability(pattern, st.pattern_ema)
                if gstar is None:
                    gstar = best_group(groups)
                ages = temporal_mod.frame_ages(ctx.layout, past, m.device)
                m = m * temporal_mod.temporal_discount(ages, stab[gstar], self.temporal_delta,
                                                       self.temporal_eps, self.temporal_min)
        if self.entropy and temperature is not None:
            exponent = torch.where(temperature > 0, 1.0 / temperature, torch.ones_like(temperature))
            m = m.clamp_min(0).pow(exponent)
        return m.unsqueeze(0)

    def layer_weight_range(self) -> tuple[float, float] | None:
        """T lies between entropy_min and entropy_max (smoothing mixes two such values); 1 for a layer kept whole."""
        if not 0 <= self.entropy_smooth <= 1:
            return None
        lo, hi = sorted((self.entropy_min, self.entropy_max))
        return (min(lo, 1.0), max(hi, 1.0)) if lo > 0 else None

    def layer_weight(self, ctx: LayerContext, scores: torch.Tensor) -> float:
        """Share of the total budget (extension): this layer's entropy temperature T from its last ``score``."""
        st = self._states.get(ctx.layer_idx)
        if st is None or st.temperature is None:
            return 1.0
        return float(st.temperature)
