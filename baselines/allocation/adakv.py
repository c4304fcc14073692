"""AdaKV (Feng et al., 2024, arXiv 2407.11550): one top-k across all KV heads of a layer, ragged storage.

Any scorer's per-KV-head scores of the P past tokens (H_kv, P) are pooled into one ranking per layer; the
layer keeps its total budget ``H_kv · k`` past tokens (k = ``plan.keep_past``, the uniform top-k part), so
heads whose attention is concentrated give budget to heads whose attention is spread. Every head also keeps
the observation window, and at least ``floor = int(alpha_safeguard · k)`` past tokens of its own (the
safeguard of the reference code, ``floor_capacity = int((C − W) · floor_alpha)``, α = 0.2): each head's top
``floor`` scores are raised to +inf before the cross-head top-k, as kvpress does. The layer's kept bytes are
those of the uniform budget exactly; the cache stores each head's own tokens (``starkv.storage.ragged``).
On fake tensors (``bench memory`` at 7B scale) the split over heads, which only score values decide, is
taken even (every head its own top k): the layer's total and its storage form are the same for any split.

Normalisation: neither the reference nor kvpress rescales the inner scores -- SnapKV's are softmax
attention probabilities (each window query's row sums to 1), so heads share one scale. ``normalize`` adds the
reference code's optional weighting: each head's scores times the share of its score mass inside its own
top-k (a concentrated head's scores count more).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from starkv.budget import SelectionPlan
from starkv.compressor import register
from starkv.context import LayerContext, has_values
from starkv.wrapper import ScorerWrapper


def head_adaptive_topk(scores: torch.Tensor, plan: SelectionPlan, alpha: float,
                       normalize: bool = False) -> list[torch.Tensor]:
    """Kept token indices per KV head: the cross-head top ``H · keep_past`` with a per-head floor, + window.

    ``scores`` (H, P) over the past tokens. Returns H ascending index tensors of different lengths.
    """
    heads, past = scores.shape
    k = plan.keep_past
    s = scores.float().clone()
    if normalize:
        mass = s.clamp_min(0)
        s = s * (mass.topk(k, dim=-1).values.sum(-1, keepdim=True) / mass.sum(-1, keepdim=True).clamp_min(1e-30))
    floor = min(k, int(alpha * k))
    if floor > 0:
        s.scatter_(-1, s.topk(floor, dim=-1).indices, float("inf"))
    chosen = torch.zeros(heads * past, dtype=torch.bool, device=s.device)
    chosen[s.reshape(-1).topk(heads * k).indices] = True
    chosen = chosen.view(heads, past)
    window = torch.arange(past, plan.length, device=s.device)
    if not has_values(chosen):  # fake tensors (the memory simulation): the split is data, the total is not
        float(chosen.sum())  # the split's one read of unknown values: the simulated row counts it (unknown_reads)
        even = s.topk(k, dim=-1).indices.sort(dim=-1).values
        return [torch.cat([even[h], window]) for h in range(heads)]
    return [torch.cat([chosen[h].nonzero().squeeze(1), window]) for h in range(heads)]


@register("adakv")
@dataclass
class AdaKV(ScorerWrapper):
    """Head-adaptive budgets: one top-k over all KV heads' scores per layer, with a per-head floor.

    Paper: https://arxiv.org/abs/2407.11550

    Parameters
    ----------
    window_size : int
        Observation window W (8): every head keeps it on top of its share of the top-k.
    scorer : str
        Registered scorer whose per-KV-head scores are ranked across heads (``snapkv``: Ada-SnapKV).
    scorer_params : dict
        Fields of that scorer (``{}``: its defaults).
    alpha_safeguard : float
        Floor α (0.2): each head keeps at least ``int(α · k)`` of its own best past tokens, k the uniform
        top-k size.
    normalize : bool
        Weight each head's scores by the share of its score mass in its own top-k (False, as in kvpress).
    """

    head_adaptive: ClassVar[bool] = True

    alpha_safeguard: float = 0.2
    normalize: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.alpha_safeguard <= 1:
            raise ValueError(f"compressor 'adakv': alpha_safeguard must be in [0, 1], got {self.alpha_safeguard}")
        super().__post_init__()

    def layer_capacity(self, prompt_length: int, cap: int, layer_idx: int, num_layers: int) -> int:
        """The inner scorer's layer capacity (a pyramid for ``pyramidkv``: Ada-PyramidKV)."""
        return self.inner.layer_capacity(prompt_length, cap, layer_idx, num_layers)

    @property
    def uniform_layers(self) -> bool:
        return self.inner.uniform_layers

    def select(self, ctx: LayerContext) -> list[torch.Tensor]:  # type: ignore[override]
        scores = self.score(ctx)
        if scores.shape[-1] != ctx.plan.past:
            raise ValueError(f"scores cover {scores.shape[-1]} tokens, expected the {ctx.plan.past} past tokens")
        scores = scores.expand(ctx.num_kv_heads, -1) if scores.shape[0] == 1 else scores
        return head_adaptive_topk(scores, ctx.plan, self.alpha_safeguard, self.normalize)
