"""Loop-based float64 reference of STaR-KV, written line by line from the spec (starkv.md §1.1–1.11).

Deliberately slow and plain: Python floats and lists, one loop per formula, its own per-layer state.
Only for tests on small inputs. Rank ties in the MI estimator are broken by position (stable order), the
same rule as the fast implementation.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field


@dataclass(frozen=True)
class RefPlan:
    """The cut of one layer as the spec states it (§1.1), independent of ``starkv.budget``."""

    window: int  # W'
    past: int  # P
    keep_past: int  # k

    @property
    def kept(self) -> int:
        return self.keep_past + self.window


def reference_plan(length: int, budget: float, window_size: int = 8) -> RefPlan:
    """``C = int(L·b/100)``; ``W' = max(1, min(W, C - 2))``, ``P = L - W'``, ``k = max(1, min(C - W', P))``;
    ``C >= L`` keeps everything (b = 100 evicts nothing)."""
    cap = int(length * budget / 100)
    if cap >= length:
        return RefPlan(window=0, past=length, keep_past=length)
    window = max(1, min(window_size, cap - 2))
    return RefPlan(window=window, past=length - window, keep_past=max(1, min(cap - window, length - window)))


@dataclass
class RefLayerState:
    t: int = 0  # MI counter
    E: list[float] | None = None  # MI EMA per group
    u: int = 0  # temporal counter
    M: list[list[float]] | None = None  # pattern EMA [n_kv][n_v]
    T: float | None = None  # last temperature


@dataclass
class ReferenceStarKV:
    window_size: int = 8
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
    states: dict[int, RefLayerState] = field(default_factory=dict)

    def reset(self) -> None:
        self.states = {}

    # ------------------------------------------------------------------ one layer, one call
    def run(self, ctx) -> tuple[list[float], list[int]]:
        """Final scores m(j) for j in [0, P) and the kept indices (sorted top-k, then the window)."""
        st = self.states.setdefault(ctx.layer_idx, RefLayerState())
        st.u += 1  # §1.1: temporal counter at the start of every call

        Q = ctx.queries[0].double().tolist()  # [H][Wq][d]
        K = ctx.keys[0].double().tolist()  # [n_kv][L][d]
        X = ctx.hidden_states[0].double().tolist()  # [L][D]
        H, n_kv = len(Q), len(K)
        G = H // n_kv
        L, d = len(K[0]), len(K[0][0])
        plan = reference_plan(L, ctx.budget, self.window_size)  # never the plan the fast path was given
        Wp, P, k = plan.window, plan.past, plan.keep_past
        Wq = len(Q[0])

        # §1.2 window attention (K repeated to H heads: head h uses KV head h // G)
        s = [[0.0] * P for _ in range(H)]
        for h in range(H):
            g = h // G
            for i in range(Wp):
                q = Q[h][Wq - Wp + i]
                qpos = L - Wp + i
                z = []
                for j in range(L):
                    if j > qpos:
                        z.append(-math.inf)
                    else:
                        z.append(sum(map(operator.mul, q, K[g][j])) / math.sqrt(d))  # <q, k_j> / sqrt(d)
                zmax = max(z)
                e = [math.exp(v - zmax) if v != -math.inf else 0.0 for v in z]
                tot = sum(e)
                for j in range(P):
                    s[h][j] += e[j] / tot

        # §1.3 avg pool, zero padding counted
        half = self.kernel_size // 2
        sh = [[0.0] * P for _ in range(H)]
        for h in range(H):
            for j in range(P):
                acc = 0.0
                for t in range(j - half, j + half + 1):
                    if 0 <= t < P:
                        acc += s[h][t]
                sh[h][j] = acc / self.kernel_size

        # last image span clipped to [0, P]
        spans = list(ctx.layout.image_spans)
        vs, ve = (spans[-1][0], min(spans[-1][1], P)) if spans else (0, 0)
        if ve < vs:
            ve = vs
        n_v = ve - vs

        # §1.4 spatial boost on the last image
        if self.spatial_boost and self.alpha > 0 and n_v > 0:
            norms = [math.sqrt(sum(v * v for v in X[j])) for j in range(vs, ve)]
            if n_v == 1:
                pi = [1.0]
            else:
                mean = sum(norms) / n_v
                std = math.sqrt(sum((v - mean) ** 2 for v in norms) / (n_v - 1))
                zs = [(v - mean) / (std + 1e-8) / self.spatial_tau for v in norms]
                zmax = max(zs)
                e = [math.exp(v - zmax) for v in zs]
                pi = [v / sum(e) for v in e]
            for h in range(H):
                for o in range(n_v):
                    sh[h][vs + o] += self.alpha * pi[o]

        # §1.6 group scores and head-mean base
        S = [[sum(sh[h][j] for h in range(g * G, g * G + G)) / G for j in range(P)] for g in range(n_kv)]
        base = [sum(sh[h][j] for h in range(H)) / H for j in range(P)]

        # §1.5 entropy temperature
        T = None
        if self.entropy:
            tot = max(sum(base), 1e-8)
            p = [v / tot for v in base]
            Hn = -sum(v * math.log(v + 1e-8) for v in p) / (math.log(P) + 1e-8)
            T = self.entropy_min + (self.entropy_max - self.entropy_min) * Hn
            if self.entropy_smooth > 0 and st.T is not None:
                T = self.entropy_smooth * st.T + (1 - self.entropy_smooth) * T
            st.T = T

        # g*(j): first group with the maximal score
        gstar = []
        for j in range(P):
            best = 0
            for g in range(1, n_kv):
                if S[g][j] > S[best][j]:
                    best = g
            gstar.append(best)

        # §1.6 online MI prior
        lam_eff = 0.0
        w = [1.0 / n_kv] * n_kv
        if self.mi_prior and self.mi_profile_steps > 0:
            st.t += 1
            MI = [self._mi([S[g][vs + o] for o in range(n_v)]) for g in range(n_kv)]
            if st.E is None or len(st.E) != n_kv:
                st.E = MI
            else:
                st.E = [self.mi_decay * st.E[g] + (1 - self.mi_decay) * MI[g] for g in range(n_kv)]
            N = self.mi_profile_steps
            R = max(1, self.mi_ramp_steps if self.mi_ramp_steps > 0 else N)
            lam_eff = 0.0 if st.t <= N else self.mi_lambda * min(1.0, (st.t - N) / R)
            lo, hi = min(st.E), max(st.E)
            sg = [0.5] * n_kv if hi - lo < 1e-12 else [(v - lo) / (hi - lo) for v in st.E]
            e = [math.exp(v / self.mi_tau) for v in sg]
            w = [v / sum(e) for v in e]
            w = [v / sum(w) for v in w]

        # §1.7 soft-global re-weighting
        m = [base[j] * ((1 - lam_eff) + lam_eff * n_kv * w[gstar[j]]) for j in range(P)]

        # §1.8 temporal discount
        inside = [(a, min(b, P)) for a, b in spans if min(b, P) > min(a, P)]
        if self.temporal and len(inside) >= 2 and n_v > 0:
            A = []
            for g in range(n_kv):
                row = [max(S[g][vs + o], 0.0) for o in range(n_v)]
                tot = max(sum(row), 1e-8)
                A.append([v / tot for v in row])
            if st.M is not None and len(st.M) == n_kv and len(st.M[0]) == n_v:
                st.M = [[self.temporal_rho * st.M[g][o] + (1 - self.temporal_rho) * A[g][o] for o in range(n_v)]
                        for g in range(n_kv)]
            else:
                st.M = [row[:] for row in A]
            stab = []
            for g in range(n_kv):
                dot = sum(A[g][o] * st.M[g][o] for o in range(n_v))
                na = math.sqrt(sum(v * v for v in A[g]))
                nm = math.sqrt(sum(v * v for v in st.M[g]))
                stab.append(min(1.0, max(0.0, dot / max(na * nm, 1e-8))))
            F = len(spans)
            age = [0] * P
            for f, (a, b) in enumerate(spans):
                for j in range(a, min(b, P)):
                    age[j] = F - 1 - f
            if st.u > self.temporal_warmup:
                for j in range(P):
                    phi = self.temporal_eps + (1 - self.temporal_eps) * stab[gstar[j]]
                    D = self.temporal_min + (1 - self.temporal_min) * math.exp(-self.temporal_delta * age[j] * phi)
                    m[j] *= D

        # §1.9 entropy sharpening
        if self.entropy and T is not None and T > 0:
            m = [max(v, 0.0) ** (1.0 / T) for v in m]

        # §1.10 top-k (ties by position), sorted, plus the window
        order = sorted(range(P), key=lambda j: (-m[j], j))
        idx = sorted(order[:k]) + list(range(P, L))
        return m, idx

    # ------------------------------------------------------------------ §1.6 MI estimator, one group
    def _mi(self, scores: list[float]) -> float:
        n = len(scores)
        if n == 0:
            return 0.0
        clipped = [max(v, 0.0) for v in scores]
        tot = sum(clipped)
        if tot <= 1e-12:
            return 0.0
        p = [v / tot for v in clipped]
        gh = max(1, round(math.sqrt(n)))
        gw = math.ceil(n / gh)
        grid, bins = self.mi_grid, self.mi_bins
        y = []
        for o in range(n):
            r, c = o // gw, o % gw
            rb = min(max(math.floor((r + 0.5) / gh * grid), 0), grid - 1)
            cb = min(max(math.floor((c + 0.5) / gw * grid), 0), grid - 1)
            y.append(rb * grid + cb)
        order = sorted(range(n), key=lambda o: (p[o], o))  # ascending, ties by position
        rank = [0] * n
        for r, o in enumerate(order):
            rank[o] = r
        a = [min(max(math.floor(rank[o] * bins / n), 0), bins - 1) for o in range(n)]
        if len(set(y)) == 1 or len(set(a)) == 1:
            return 0.0
        joint: dict[tuple[int, int], float] = {}
        for o in range(n):
            joint[(a[o], y[o])] = joint.get((a[o], y[o]), 0.0) + 1.0 / n
        pa = [0.0] * bins
        py = [0.0] * (grid * grid)
        for (ai, yi), v in joint.items():
            pa[ai] += v
            py[yi] += v
        total = 0.0
        for ai in range(bins):
            for yi in range(grid * grid):
                v = joint.get((ai, yi), 0.0)
                total += v * (math.log(v + 1e-12) - math.log(pa[ai] * py[yi] + 1e-12))
        return max(0.0, total)
