"""Expected Attention golden tests: future-query mean and covariance, RoPE-rotated, times the value norm."""

from __future__ import annotations

import math
import types

import torch

import starkv
from baselines.scorers.expected_attention import expected_logits, layer_rope_theta, mean_rotation
from starkv.layout import PromptLayout
from tests.baselines.hand_context import hand_context, kept

C1, S1 = math.cos(1.0), math.sin(1.0)
# d = 2: one rotary frequency, 1 rad per position (θ^0 = 1 for any base). R(δ)(x, y) = (x cosδ − y sinδ,
# y cosδ + x sinδ). With n_future_positions = 1 the only future position is L, one step after the last
# prompt token, so R̄ = R(1). u = R(1)(0, 1) = (−sin 1, cos 1), u⊥ = R(1)(1, 0) = (cos 1, sin 1).
U = (-S1, C1)
U_PERP = (C1, S1)


def along(c: float, p: float = 0.0) -> list[float]:
    """c·u⊥ + p·u (mean test) as a key."""
    return [c * U_PERP[0] + p * U[0], c * U_PERP[1] + p * U[1]]


def test_mean_query_is_rotated_to_the_future_position():
    # one query row q = (√2, 0) at the last position: μ = R(1)q = √2·u⊥, so μ·k/√2 = c_j for k = c_j·u⊥ + p_j·u.
    # c over tokens 0..7: -5 3 1 2 -1 4 0.5 2.5; n_sink = 1 keeps token 0 (score +inf); top 2 of tokens 1..7
    # by c: token 5 (4), token 1 (3). Token 6 has p = -10: no effect here (u ⊥ μ), but an unrotated mean
    # (√2, 0) would give it 0.5·cos 1 + 10·sin 1 = 8.7 and keep it; a mean rotated backwards (R(−1)) gives
    # c_j·cos 2 < 0 for c > 0 and reverses the order.
    c = [-5, 3, 1, 2, -1, 4, 0.5, 2.5, 0, 0]
    keys = [along(cj, -10.0 if j == 6 else 0.0) for j, cj in enumerate(c)]
    ctx = hand_context([keys], queries=[[[math.sqrt(2), 0.0]]])
    comp = starkv.build("expected_attention", window_size=2, n_future_positions=1, n_sink=1)
    assert kept(comp.select(ctx)) == [[0, 1, 5, 8, 9]]


def test_covariance_of_the_window_queries():
    # two rows, at positions L-2 and L-1: q0 = R(−1)(0, 2) = 2(sin 1, cos 1) is rotated forward by 1 to (0, 2);
    # q1 = (0, −2). μ̂ = 0, Σ̂ = diag(0, 4) (biased), so μ = 0 and Σ = R(1)Σ̂R(1)ᵀ = 4·u uᵀ:
    # logit_j = kᵀΣk / (2d) = 4 (u·k)² / 4 = (u·k)². Keys k = p_j·u + c_j·u⊥ with p over tokens 0..7:
    # 0 0.1 -3 0.5 2 -0.2 1 0 -> top 3 by p²: tokens 2 (9), 4 (4), 6 (1). Token 7 = 5·u⊥ scores 0 here; with
    # an unrotated Σ̂ = diag(0, 4) its logit would be ((0, 1)·5u⊥)² = (5 sin 1)² = 17.7, and it would be kept.
    p = [0, 0.1, -3, 0.5, 2, -0.2, 1, 0, 0, 0]
    keys = [along(5.0 if j == 7 else 0.0, pj) for j, pj in enumerate(p)]
    rows = [[2 * S1, 2 * C1], [0.0, -2.0]]
    ctx = hand_context([keys], queries=[rows])
    comp = starkv.build("expected_attention", window_size=2, n_future_positions=1, n_sink=0)
    assert kept(comp.select(ctx)) == [[2, 4, 6, 8, 9]]


def test_value_norm_decides_under_uniform_expected_attention():
    # zero queries: μ = 0, Σ = 0, every logit 0, softmax uniform over the non-sink keys -> score = ‖v_j‖/8.
    # n_sink = 2 keeps tokens 0, 1; value norms of tokens 2..7: 3 1 5 2 4 0.5 -> top 1: token 4
    norms = [0.1, 0.2, 3, 1, 5, 2, 4, 0.5, 1, 1]
    values = [[[0.0, n] for n in norms]]
    ctx = hand_context([[[1.0, 0.0]] * 10], values=values)
    comp = starkv.build("expected_attention", window_size=2, n_sink=2)
    assert kept(comp.select(ctx)) == [[0, 1, 4, 8, 9]]


def test_logits_match_explicit_rotation_matrices():
    """Independent check with d × d RoPE matrices, the full covariance and kᵀΣk, at d = 4, base 100."""
    gen = torch.Generator().manual_seed(3)
    heads, kv, rows, length, dim, theta, n_future = 4, 2, 3, 9, 4, 100.0, 5
    q = torch.randn(1, heads, rows, dim, generator=gen, dtype=torch.float64)
    k = torch.randn(1, kv, length, dim, generator=gen, dtype=torch.float64)
    freqs = [theta ** (-2 * i / dim) for i in range(dim // 2)]

    def rot(delta: float) -> torch.Tensor:  # pairs (i, i + d/2), the rotate_half layout
        m = torch.zeros(dim, dim, dtype=torch.float64)
        for i, f in enumerate(freqs):
            c, s = math.cos(delta * f), math.sin(delta * f)
            m[i, i], m[i, i + dim // 2], m[i + dim // 2, i], m[i + dim // 2, i + dim // 2] = c, -s, s, c
        return m

    r_bar = sum(rot(j) for j in range(1, n_future + 1)) / n_future
    want = torch.zeros(heads, length, dtype=torch.float64)
    for h in range(heads):
        shifted = torch.stack([rot(rows - 1 - i) @ q[0, h, i] for i in range(rows)])
        mu_hat = shifted.mean(dim=0)
        cov_hat = sum(torch.outer(s - mu_hat, s - mu_hat) for s in shifted) / rows
        mu, cov = r_bar @ mu_hat, r_bar @ cov_hat @ r_bar.T
        for j in range(length):
            key = k[0, h // 2, j]
            want[h, j] = mu @ key / math.sqrt(dim) + key @ cov @ key / (2 * dim)
    got = expected_logits(q.float(), k.float(), theta, n_future, use_covariance=True)
    torch.testing.assert_close(got, want.float(), rtol=1e-4, atol=1e-5)


def test_mean_rotation_averages_the_future_offsets():
    # d = 2, offsets 1, 2, 3: R̄(1, 0) = ((cos1 + cos2 + cos3) / 3, (sin1 + sin2 + sin3) / 3)
    got = mean_rotation(torch.tensor([[1.0, 0.0]]), 1, 3, torch.tensor([1.0]))
    want = [(math.cos(1) + math.cos(2) + math.cos(3)) / 3, (math.sin(1) + math.sin(2) + math.sin(3)) / 3]
    torch.testing.assert_close(got[0], torch.tensor(want))


def test_query_rows_and_rope_base():
    comp = starkv.build("expected_attention")  # n_queries 16, window 8
    assert comp.query_window(PromptLayout(((10, 88),), 100), 100) == 12  # the 12 text tokens after the image
    assert comp.query_window(PromptLayout(((10, 80),), 100), 100) == 16  # at most n_queries
    assert comp.query_window(PromptLayout(((10, 97),), 100), 100) == 8  # at least the window
    assert comp.query_window(PromptLayout((), 100), 100) == 16
    assert layer_rope_theta(types.SimpleNamespace(rope_parameters={"rope_theta": 1e4}), 1e6) == 1e4
    assert layer_rope_theta(None, 1e6) == 1e6
    assert comp.query_aware and comp.hidden_needs() == "none"
