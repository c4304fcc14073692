"""CriticalKV (Feng et al., 2025, arXiv 2502.03805): attention scores rescaled by the projected value norm.

Evicting token j perturbs the attention output of query head h by at most ``a_hj·‖W_o^h v_j‖`` (W_o^h the
columns of ``o_proj`` that head h's output goes through), so attention weight alone is not what matters:
this wrapper takes any scorer's score ``s_j`` (per KV head) and rescales it by
``n_j = mean_g ‖W_o^g v_j‖`` over the G query heads of the KV group:

    score_j = (s_j + ε) · n_j

The paper's two-stage selection is kept: the top ``⌊first_stage_ratio · k⌋`` past tokens by the inner
score alone are kept first (score set to +inf), the rest of the top-k comes from the rescaled score
(k = the layer's top-k budget, ``ctx.plan.keep_past``).

Norm (a documented choice): the paper and kvpress use the L1 norm (``norm="l1"``, the default), which
costs a ``(P, d) × (d, G·D)`` product per KV head — as much as ``o_proj`` over the prompt; it runs over
token chunks of ``chunk_size``. ``norm="l2"`` gives the same bound in L2 at a fraction of the cost, exactly,
through the per-head Gram matrices ``W_o^hᵀW_o^h`` (d × d). Without a layer module (the selection-cost
benchmark, hand-built contexts) there is no ``o_proj``: ``n_j`` falls back to ``‖v_j‖₂``.

Inner scorer: any registered ``ScorerCompressor`` by name (``scorer``) with its fields (``scorer_params``);
its window is this wrapper's ``window_size``. Its query rows, hidden-state need, layer budgets and episode
state are delegated, so e.g. ``pyramidkv`` or ``starkv`` can be wrapped. Under ``expected_attention`` set
``use_vnorm: false``, as kvpress advises (the value norm would count twice). With a layer-varying inner
scorer the first stage is sized from the uniform top-k budget (scores are computed before the layer
capacities are split).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from starkv.compressor import ScorerCompressor, build, register
from starkv.context import LayerContext
from starkv.layout import PromptLayout

NORMS = ("l1", "l2")


def projected_value_norms(values: torch.Tensor, weight: torch.Tensor | None, num_heads: int, norm: str,
                          chunk_size: int) -> torch.Tensor:
    """``mean_g ‖W_o^g v_j‖`` per KV head and token, (H_kv, n) fp32 from ``values`` (H_kv, n, d).

    ``weight`` is ``o_proj.weight`` (D, H·d); None gives ``‖v_j‖₂`` (no module to read it from).
    """
    v = values.float()
    if weight is None:
        return v.norm(dim=-1)
    num_kv, count, head_dim = v.shape
    group = num_heads // num_kv
    w = weight.to(v.device).float().view(weight.shape[0], num_kv, group, head_dim)  # (D, H_kv, G, d)
    if norm == "l2":
        gram = torch.einsum("okgd,okge->kgde", w, w)  # W_o^hᵀ W_o^h, (H_kv, G, d, d)
        quad = (torch.matmul(v.unsqueeze(1), gram) * v.unsqueeze(1)).sum(dim=-1)  # vᵀ G v, (H_kv, G, n)
        return quad.clamp_min(0).sqrt().mean(dim=1)
    wt = w.permute(1, 3, 2, 0).reshape(num_kv, head_dim, group * weight.shape[0])  # (H_kv, d, G·D)
    out = torch.empty(num_kv, count, device=v.device)
    for a in range(0, count, max(1, chunk_size)):
        b = min(a + max(1, chunk_size), count)
        proj = torch.matmul(v[:, a:b], wt).view(num_kv, b - a, group, weight.shape[0])
        out[:, a:b] = proj.abs().sum(dim=-1).mean(dim=-1)
    return out


@register("criticalkv")
@dataclass
class CriticalKV(ScorerCompressor):
    """Any scorer's scores times the norm of the output-projected values, two-stage top-k.

    Paper: https://arxiv.org/abs/2502.03805

    Parameters
    ----------
    window_size : int
        Planned window W (8), always kept; also the inner scorer's window.
    scorer : str
        Registered name of the inner scorer (``snapkv``); it must be a score-based compressor.
    scorer_params : dict
        Fields of the inner scorer ({}); ``window_size`` is set on the wrapper, not here.
    first_stage_ratio : float
        Share of the top-k budget filled by the inner score alone before the rescaled score (0.5, the
        paper's); 0 rescales every pick.
    epsilon : float
        Added to the inner score before the rescaling (1e-4, kvpress's), so zero scores still rank by norm.
    norm : str
        ``l1`` (the paper's) or ``l2`` (same bound in L2, much cheaper) norm of ``W_o v``.
    chunk_size : int
        Tokens per chunk of the L1 projection (1024): bounds its memory at (H_kv, chunk, G·D) fp32.
    """

    hidden_states_needed: ClassVar[str] = "none"  # its own need; the inner scorer's is added (hidden_needs)
    query_aware: ClassVar[bool] = True

    scorer: str = "snapkv"
    scorer_params: dict[str, Any] = field(default_factory=dict)
    first_stage_ratio: float = 0.5
    epsilon: float = 1e-4
    norm: str = "l1"
    chunk_size: int = 1024

    def __post_init__(self) -> None:
        if not isinstance(self.scorer_params, dict):
            raise TypeError(f"criticalkv: scorer_params must be a mapping, got {type(self.scorer_params).__name__}")
        if "window_size" in self.scorer_params:
            raise ValueError("criticalkv: scorer_params must not set window_size; set window_size on criticalkv")
        if self.scorer == "criticalkv":
            raise ValueError("criticalkv: scorer must be another method, not 'criticalkv' itself")
        try:
            inner = build(self.scorer, window_size=self.window_size, **self.scorer_params)
        except KeyError as err:
            raise ValueError(f"criticalkv: scorer {self.scorer!r} is not a registered compressor: {err.args[0]}") from None
        except TypeError as err:
            raise ValueError(f"criticalkv: scorer_params do not fit scorer {self.scorer!r}: {err}") from None
        if not isinstance(inner, ScorerCompressor):
            raise ValueError(f"criticalkv: scorer {self.scorer!r} selects without a per-token score; choose a "
                             "score-based method (e.g. snapkv, tova, h2o, expected_attention)")
        if self.norm not in NORMS:
            raise ValueError(f"criticalkv: norm must be one of {NORMS}, got {self.norm!r}")
        if not 0 <= self.first_stage_ratio <= 1:
            raise ValueError(f"criticalkv: first_stage_ratio must be in [0, 1], got {self.first_stage_ratio}")
        if self.chunk_size < 1:
            raise ValueError(f"criticalkv: chunk_size must be >= 1, got {self.chunk_size}")
        self._inner: ScorerCompressor = inner  # not a field: stays out of params() and equality

    @property
    def inner(self) -> ScorerCompressor:
        return self._inner

    # --- delegated to the inner scorer: its query rows, hidden states, layer budgets and episode state ---
    @property
    def layer_adaptive(self) -> bool:  # type: ignore[override]
        return bool(self._inner.layer_adaptive)

    @property
    def shares_prefill(self) -> bool:  # type: ignore[override]
        return self._inner.shares_prefill

    @property
    def uniform_layers(self) -> bool:
        return self._inner.uniform_layers

    def hidden_needs(self) -> str:
        """The inner scorer's need (this class itself reads no hidden states)."""
        super().hidden_needs()  # validates this class's own declaration
        return self._inner.hidden_needs()

    def query_window(self, layout: PromptLayout, prompt_length: int) -> int:
        return self._inner.query_window(layout, prompt_length)

    def layer_capacity(self, prompt_length: int, cap: int, layer_idx: int, num_layers: int) -> int:
        return self._inner.layer_capacity(prompt_length, cap, layer_idx, num_layers)

    def layer_weight(self, ctx: LayerContext, scores: torch.Tensor) -> float:
        return self._inner.layer_weight(ctx, scores)

    def layer_weight_range(self) -> tuple[float, float] | None:
        return self._inner.layer_weight_range()

    def reset(self) -> None:
        self._inner.reset()

    def on_uncompressed(self, ctx: LayerContext) -> None:
        self._inner.on_uncompressed(ctx)

    # --- the score ---
    def score(self, ctx: LayerContext) -> torch.Tensor:
        inner = self._inner.score(ctx).float()  # (H_kv, P) or (1, P)
        past = ctx.plan.past
        weight = getattr(getattr(ctx.module, "o_proj", None), "weight", None)
        norms = projected_value_norms(ctx.values[0, :, :past], weight, ctx.num_heads, self.norm, self.chunk_size)
        scores = (inner + self.epsilon) * norms  # (H_kv, P)
        first = min(int(ctx.plan.keep_past * self.first_stage_ratio), past)
        if first > 0:
            top = inner.topk(first, dim=-1).indices.expand(scores.shape[0], -1)
            scores = scores.scatter(-1, top, float("inf"))
        return scores

