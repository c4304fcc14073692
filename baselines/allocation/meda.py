"""MEDA (Wan et al., NAACL 2025, arXiv 2502.17599): layer budgets from cross-modal attention entropy.

MEDA sizes each layer's cache by how spread its attention is: a layer whose queries spread attention over
many keys (high entropy) needs more of them kept. The paper computes per layer the text→visual and
visual→text attention entropies ``E_TV``, ``E_VT`` (mean over queries of ``−Σ_j A log A``),
``E_CM = E_TV + E_VT``, and the layer size ``S_l = α_l · S`` with ``α_l`` the exponential of ``E_CM`` normalised
over the layers (a softmax); its selection and merging inside a layer are not used here.

This implementation, a wrapper over any scorer:

* entropy: the observation-window queries (the prompt's last ``window_size`` tokens, text) attending to
  the screenshot tokens (all image spans before the window), softmax over those keys only, as the paper's
  ``A_TV = softmax(Q_T K_V^T / √D)``; entropy averaged over window rows and query heads. ``E_VT`` needs
  image-token queries, which the hook does not capture (the window is the prompt's end), so only ``E_TV``
  is used. A prompt without images uses all causally visible keys.
* weight ``w_l = exp(E_l / temperature)`` (temperature 1 is the paper's softmax); the hook splits the total
  of the uniform capacities ``n_layers · C`` in proportion to the weights (``allocate_layer_capacities``:
  each layer in [2, L], the exact total), which is ``S_l = n · softmax(E)_l · C``. The window stays as
  planned; only the top-k part of a layer grows or shrinks. The tokens kept in a layer are the inner
  scorer's top-k.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from starkv.compressor import register
from starkv.context import LayerContext
from starkv.wrapper import ScorerWrapper


def window_entropy(queries: torch.Tensor, keys: torch.Tensor, window: int,
                   spans: list[tuple[int, int]] | None = None) -> float:
    """Mean attention entropy (nats) of the last ``window`` queries, over query heads and window rows.

    ``queries`` (1, H, Wq, d), ``keys`` (1, H_kv, L, d). With ``spans`` the softmax runs over the keys in
    those token spans only (they must lie before the window); without, over all keys, causal in the window.
    """
    q = queries[0, :, -window:, :].float()
    k = keys[0].float()
    num_heads, _, head_dim = q.shape
    num_kv, length, _ = k.shape
    group = num_heads // num_kv
    if spans:
        k = torch.cat([k[:, s:e] for s, e in spans], dim=1)
    logits = torch.matmul(q.reshape(num_kv, group * window, head_dim), k.transpose(-1, -2)) / math.sqrt(head_dim)
    logits = logits.view(num_kv, group, window, k.shape[1])
    if not spans:
        causal = torch.ones(window, window, dtype=torch.bool, device=q.device).tril()
        block = logits[..., length - window :]
        logits[..., length - window :] = block.masked_fill(~causal, float("-inf"))
    logp = torch.log_softmax(logits, dim=-1)
    entropy = -(logp.exp() * logp.nan_to_num(neginf=0.0)).sum(-1)  # 0·log 0 = 0 for masked keys
    return float(entropy.mean())


@register("meda")
@dataclass
class MEDA(ScorerWrapper):
    """Layer budgets ∝ exp(attention entropy of the window queries on the screenshot tokens), any scorer.

    Paper: https://arxiv.org/abs/2502.17599

    Parameters
    ----------
    window_size : int
        Observation window W (8): its queries give the entropy, and every layer keeps it.
    scorer : str
        Registered scorer whose top-k fills each layer's budget (``snapkv``).
    scorer_params : dict
        Fields of that scorer (``{}``: its defaults).
    temperature : float
        τ of the layer weight ``exp(E_l / τ)`` (1.0, the paper's softmax); larger flattens the split.
    cross_modal : bool
        Entropy over the screenshot keys only (True, the paper's text→visual attention); False: over all keys.
    """

    layer_adaptive: ClassVar[bool] = True

    temperature: float = 1.0
    cross_modal: bool = True

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"compressor 'meda': temperature must be > 0, got {self.temperature}")
        super().__post_init__()

    def layer_weight(self, ctx: LayerContext, scores: torch.Tensor) -> float:
        spans = ctx.layout.clipped_spans(ctx.plan.past) if self.cross_modal else []
        entropy = window_entropy(ctx.queries, ctx.keys, ctx.plan.window, spans or None)
        return math.exp(entropy / self.temperature)
