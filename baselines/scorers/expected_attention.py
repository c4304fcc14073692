"""Expected Attention (Devoto et al., 2025, arXiv 2510.00636; kvpress ``ExpectedAttentionPress``).

A past token is scored by the attention the *future* (decoding) queries are expected to pay it. Queries
are modelled as a Gaussian ``q ~ N(μ, Σ)``; for a key k, ``E[exp(q·k/√d)] = exp(μ·k/√d + kᵀΣk/(2d))``.
The per-query-head logits ``μ·k/√d + kᵀΣk/(2d)`` are normalised by a softmax over the keys, averaged over
the G query heads of each KV group and multiplied by ``‖v‖₂`` (``(a + ε)·‖v‖``, kvpress's rescaling):

    score_j = (mean_g softmax_j(μ_g·k_j/√d + k_jᵀΣ_g k_j/(2d)) + ε) · ‖v_j‖

Statistics (choices where this project differs from kvpress, which projects the hidden states of the whole
prompt with ``W_q``): here the hook's captured post-RoPE queries are used, so no hidden states are kept
(``hidden_states_needed = "none"``). The last ``n_queries`` prompt rows are captured, clipped to the text
after the last screenshot (at least ``window_size``), because text positions advance by one per token
under M-RoPE (for text, its three position components are equal, so it is plain RoPE with the layer's
``rope_theta``). Each row i of Wq is rotated forward to the last prompt position (by ``Wq − 1 − i``), then
the mean μ̂ and the full biased covariance Σ̂ are taken over the rows. As in kvpress, the statistics are
moved to the future positions ``L … L + n_future_positions − 1`` with the *average* RoPE rotation R̄ over
those offsets: ``μ = R̄μ̂``, ``Σ = R̄Σ̂R̄ᵀ``. Rows inside a screenshot span (only when the text tail is
shorter than ``window_size``) get the one-per-token offset, an approximation.

Exact low-rank evaluation: ``Σ = (1/N)·Σ_i c_i c_iᵀ`` with ``c_i = R̄(q̂_i − μ̂)``, so
``kᵀΣk = (1/N)·Σ_i (c_i·k)²`` — one matmul of N + 1 rows per query head against the keys, never a d × d
matrix per head. The first ``n_sink`` tokens are kept (score +inf; kvpress gives them the maximum score)
and left out of the softmax.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from starkv.compressor import ScorerCompressor, register
from starkv.context import LayerContext
from starkv.layout import PromptLayout


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """The RoPE partner of every coordinate (Qwen / Llama layout: halves, not interleaved pairs)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def inverse_frequencies(head_dim: int, theta: float, device=None) -> torch.Tensor:
    """RoPE angular frequencies ``θ^(−2i/d)``, (d/2,) fp32."""
    return 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim)


def rope_shift(x: torch.Tensor, offsets: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Rotate post-RoPE vectors ``x`` (..., n, d) forward by ``offsets`` (n,) positions: ``R(p + δ) = R(δ)R(p)``."""
    angles = offsets.float().unsqueeze(-1) * inv_freq  # (n, d/2)
    angles = torch.cat([angles, angles], dim=-1)
    return x * angles.cos() + rotate_half(x) * angles.sin()


def mean_rotation(x: torch.Tensor, first: int, count: int, inv_freq: torch.Tensor) -> torch.Tensor:
    """``R̄x`` with ``R̄ = mean_{δ = first … first + count − 1} R(δ)`` (elementwise: ``C̄x + S̄·rotate_half(x)``)."""
    deltas = torch.arange(first, first + count, dtype=torch.float32, device=x.device)
    angles = deltas.unsqueeze(-1) * inv_freq  # (count, d/2)
    cos, sin = angles.cos().mean(dim=0), angles.sin().mean(dim=0)
    return x * torch.cat([cos, cos]) + rotate_half(x) * torch.cat([sin, sin])


def layer_rope_theta(module: Any, default: float) -> float:
    """The layer's RoPE base from its attention module (transformers 5: ``rope_parameters``), else ``default``."""
    for params in (getattr(module, "rope_parameters", None),
                   getattr(getattr(module, "config", None), "rope_parameters", None)):
        if isinstance(params, dict) and params.get("rope_theta"):
            return float(params["rope_theta"])
    return default


def expected_logits(queries: torch.Tensor, keys: torch.Tensor, theta: float, n_future: int,
                    use_covariance: bool) -> torch.Tensor:
    """``μ·k/√d + kᵀΣk/(2d)`` per query head and key, (H, L) fp32, from the captured rows (see the module)."""
    q = queries[0].float()
    num_heads, rows, head_dim = q.shape
    k = keys[0].float()
    num_kv, length, _ = k.shape
    group = num_heads // num_kv
    inv_freq = inverse_frequencies(head_dim, theta, q.device)
    q_ref = rope_shift(q, torch.arange(rows - 1, -1, -1, device=q.device), inv_freq)  # all at position L − 1
    mu_hat = q_ref.mean(dim=1, keepdim=True)  # (H, 1, d)
    parts = [mean_rotation(mu_hat, 1, n_future, inv_freq)]
    if use_covariance:
        parts.append(mean_rotation(q_ref - mu_hat, 1, n_future, inv_freq) / math.sqrt(rows))
    stats = torch.cat(parts, dim=1)  # (H, 1 [+ N], d)
    width = stats.shape[1]
    proj = torch.matmul(stats.reshape(num_kv, group * width, head_dim), k.transpose(-1, -2))
    proj = proj.view(num_kv, group, width, length)
    logits = proj[:, :, 0] / math.sqrt(head_dim)
    if use_covariance:
        logits = logits + proj[:, :, 1:].square().sum(dim=2) / (2 * head_dim)
    return logits.reshape(num_heads, length)


@register("expected_attention")
@dataclass
class ExpectedAttention(ScorerCompressor):
    """Attention expected from the statistics of future queries, times the value norm; per KV head.

    Paper: https://arxiv.org/abs/2510.00636

    Parameters
    ----------
    window_size : int
        Planned window W (8), always kept; also the fewest query rows the statistics use.
    n_queries : int
        Most prompt query rows the mean and covariance are estimated from (16), clipped to the text
        after the last screenshot; more rows cost more (N + 1 rows per head are scored against the keys).
    n_future_positions : int
        Future positions the statistics are rotated to and averaged over (512, kvpress's default).
    n_sink : int
        Leading tokens always kept and left out of the softmax (4, as kvpress).
    use_covariance : bool
        Add the covariance term ``kᵀΣk/(2d)`` (True); False uses the mean query only.
    use_vnorm : bool
        Multiply by the value L2 norm (True); turn it off under ``criticalkv``, which rescales by
        ``‖W_o v‖`` itself.
    epsilon : float
        Added to the expected attention before the value-norm rescaling (0.0).
    rope_theta : float
        RoPE base used when the layer's attention module gives none (1e6, Qwen2.5-VL's).
    """

    hidden_states_needed: ClassVar[str] = "none"  # what a shared prefill keeps for it
    query_aware: ClassVar[bool] = True

    n_queries: int = 16
    n_future_positions: int = 512
    n_sink: int = 4
    use_covariance: bool = True
    use_vnorm: bool = True
    epsilon: float = 0.0
    rope_theta: float = 1_000_000.0

    def __post_init__(self) -> None:
        if self.n_queries < 1 or self.n_future_positions < 1 or self.n_sink < 0:
            raise ValueError("expected_attention: n_queries and n_future_positions must be >= 1, n_sink >= 0 "
                             f"(got {self.n_queries}, {self.n_future_positions}, {self.n_sink})")

    def query_window(self, layout: PromptLayout, prompt_length: int) -> int:
        """Up to ``n_queries`` rows of the text after the last screenshot, at least ``window_size``."""
        tail = prompt_length - layout.current_image[1] if layout.current_image is not None else prompt_length
        return max(self.window_size, min(self.n_queries, tail))

    def score(self, ctx: LayerContext) -> torch.Tensor:
        theta = layer_rope_theta(ctx.module, self.rope_theta)
        logits = expected_logits(ctx.queries, ctx.keys, theta, self.n_future_positions, self.use_covariance)
        past, sink = ctx.plan.past, min(self.n_sink, ctx.plan.past)
        group = ctx.group_size
        attn = logits[:, sink:].softmax(dim=-1)  # over the non-sink keys, as kvpress
        attn = attn.view(ctx.num_kv_heads, group, -1).mean(dim=1)  # (H_kv, L − sink)
        if self.use_vnorm:
            attn = (attn + self.epsilon) * ctx.values[0, :, sink:].float().norm(dim=-1)
        sinks = attn.new_full((ctx.num_kv_heads, sink), float("inf"))
        return torch.cat([sinks, attn], dim=-1)[:, :past]
