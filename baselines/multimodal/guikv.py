"""GUI-KV (Huang et al., 2025, arXiv 2510.00536): window attention + screenshot saliency + temporal redundancy.

Score of a past token, per query head: SnapKV window attention (avg-pooled), plus the spatial boost
``α·softmax(z(‖x_j‖)/τ)`` on the current (last) screenshot. With at least two screenshots, the tokens of
earlier screenshots whose keys are best explained by the current screenshot's keys get score 0: per head,
an orthonormal basis Q of the first ``r = min(rank, n_v, d)`` current-image keys (reduced QR of Kcᵀ in
fp32, Gram–Schmidt order), residual ``ρ_j = ‖k_j − QQᵀk_j‖`` for every earlier-screenshot token, and the
``n_z = int((1 − C/L)·N_prev)`` smallest residuals are zeroed.

GQA reduction rule: the reference repeats keys to every query head, so the G query heads of a group see
identical keys, identical residuals and hence zero the same tokens. We therefore compute the redundancy
once per KV head with that head's keys (batched QR over the H_kv heads) and zero it on the group mean of
the G heads' boosted scores, which equals the group mean of the reference's zeroed per-head scores. Only
the final top-k is per KV head instead of per query head (the same rule as our SnapKV). C is the layer's
planned capacity (``plan.kept``, = ``int(L·b/100)`` whenever that is at least 2).

With the unit option ``kv_layout: per_query_head`` (the drivers' storage) the top-k is per query head on
its own boosted scores, with the redundancy of its KV head zeroed in each of the group's G heads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from starkv.compressor import ScorerCompressor, register
from starkv.context import LayerContext
from starkv.scoring import add_spatial_boost, selection_scores, window_scores


def key_residuals(keys: torch.Tensor, current: tuple[int, int], positions: torch.Tensor, rank: int) -> torch.Tensor:
    """Residual norms (H_kv, len(positions)) of keys at ``positions`` against the current image's key basis.

    ``keys`` (H_kv, L, d); the basis is the first ``min(rank, n_v, d)`` columns of the reduced QR of the
    current image's keys transposed, computed in fp32 for all heads at once.
    """
    start, end = current
    kc = keys[:, start:end, :].float().transpose(1, 2)  # (H_kv, d, n_v)
    r = min(rank, kc.shape[-1], kc.shape[-2])
    basis = torch.linalg.qr(kc, mode="reduced").Q[..., :r]  # (H_kv, d, r)
    kp = keys[:, positions, :].float()  # (H_kv, N_prev, d)
    return (kp - (kp @ basis) @ basis.transpose(1, 2)).norm(dim=-1)


@register("guikv")
@dataclass
class GUIKV(ScorerCompressor):
    """GUI-KV scores at KV-head granularity (see the module docstring for the GQA rule).

    Paper: https://arxiv.org/abs/2510.00536

    Parameters
    ----------
    window_size : int
        Observation window W (8), always kept.
    kernel_size : int
        Average-pool kernel of the window scores (5).
    alpha : float
        Weight α of the spatial saliency boost on the current screenshot (2.0; 0 disables it).
    tau : float
        Softmax temperature τ of the saliency, dividing the standardised norms (3.5).
    rank : int
        Maximum basis size r of the temporal-redundancy projection (32).
    temporal : bool
        Zero redundant earlier-screenshot tokens (True); False keeps only window + spatial scores.
    """

    hidden_states_needed: ClassVar[str] = "current_image_norms"  # what a shared prefill keeps for it
    query_aware: ClassVar[bool] = True
    per_query_head_layout: ClassVar[bool] = True

    kernel_size: int = 5
    alpha: float = 2.0
    tau: float = 3.5
    rank: int = 32
    temporal: bool = True

    def score(self, ctx: LayerContext) -> torch.Tensor:
        plan = ctx.plan
        head = window_scores(ctx.queries, ctx.keys, plan.window, plan.past, self.kernel_size)
        head = add_spatial_boost(head, ctx, self.alpha, self.tau)
        scores = selection_scores(head, ctx)
        if self.temporal and ctx.layout.num_images >= 2:
            scores = self._zero_redundant(scores, ctx)
        return scores

    def _zero_redundant(self, scores: torch.Tensor, ctx: LayerContext) -> torch.Tensor:
        previous = ctx.layout.clipped_spans(ctx.plan.past)
        previous = [span for span in previous if span[0] < ctx.layout.current_image[0]]
        if not previous:
            return scores
        positions = torch.cat([torch.arange(s, e) for s, e in previous]).to(scores.device)
        n_zero = int((1 - ctx.plan.kept / ctx.length) * positions.numel())
        if n_zero <= 0:
            return scores
        residual = key_residuals(ctx.keys[0], ctx.layout.current_image, positions, self.rank)
        redundant = residual.topk(n_zero, dim=-1, largest=False).indices  # (H_kv, n_zero)
        if scores.shape[0] != redundant.shape[0]:  # per query head: the G heads of a group see the same keys
            redundant = redundant.repeat_interleave(scores.shape[0] // redundant.shape[0], dim=0)
        return scores.scatter(1, positions[redundant], 0.0)
