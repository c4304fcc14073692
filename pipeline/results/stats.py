"""Uncertainty of per-unit figures: intervals over episodes, paired differences, exact McNemar tests.

Steps of one episode share their history, so they are not independent draws: every interval here
resamples whole episodes (a cluster bootstrap), seeded so a run's summary is reproducible. When every
episode is a single step (grounding benchmarks), the steps are independent and a mean of 0/1 outcomes
gets the Wilson score interval instead (exact enough, no resampling).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: two-sided confidence level of every interval
LEVEL = 0.95
#: bootstrap resamples (the interval's ends move by well under 0.01 between seeds at this count)
RESAMPLES = 2000
SEED = 0
Z95 = 1.959963984540054


@dataclass(frozen=True)
class Interval:
    """A point estimate with its two-sided ``LEVEL`` interval and how it was made.

    Parameters
    ----------
    value : float
        The estimate on all the data.
    low, high : float
        The interval's ends.
    method : str
        ``wilson`` (independent 0/1 steps), ``cluster_bootstrap`` (resampled episodes) or ``none``
        (one episode: nothing to resample).
    """

    value: float
    low: float
    high: float
    method: str

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


def step_correct(row: dict[str, Any]) -> float:
    """A step's outcome as the accuracy counts it: right and without an error."""
    return 1.0 if row.get("correct") and not row.get("error") else 0.0


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (``(0, 1)`` when there is no observation)."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _groups(rows: Sequence[dict[str, Any]], key: str) -> list[list[dict[str, Any]]]:
    groups: dict[Any, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r[key], []).append(r)
    return [groups[k] for k in sorted(groups, key=str)]


def _resample_indices(n_clusters: int, resamples: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n_clusters, size=(resamples, n_clusters))


def _percentiles(values: np.ndarray) -> tuple[float, float]:
    tail = (1 - LEVEL) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def mean_interval(rows: Sequence[dict[str, Any]], value: Callable[[dict[str, Any]], float],
                  cluster: str = "episode_id", resamples: int = RESAMPLES, seed: int = SEED) -> Interval:
    """Interval of the mean of ``value(row)`` over ``rows``; episodes (``cluster``) are resampled whole.

    The statistic of a resample is the mean over all its steps (an episode drawn twice counts twice),
    the same estimator as on the data. Single-step episodes with 0/1 values: the Wilson interval.
    """
    if not rows:
        return Interval(0.0, 0.0, 0.0, "none")
    groups = _groups(rows, cluster)
    sums = np.array([sum(float(value(r)) for r in g) for g in groups])
    counts = np.array([len(g) for g in groups], dtype=float)
    estimate = float(sums.sum() / counts.sum())
    if all(c == 1 for c in counts) and set(np.unique(sums)) <= {0.0, 1.0}:
        low, high = wilson(int(sums.sum()), len(groups))
        return Interval(estimate, low, high, "wilson")
    if len(groups) < 2:
        return Interval(estimate, estimate, estimate, "none")
    idx = _resample_indices(len(groups), resamples, seed)
    stats = sums[idx].sum(axis=1) / counts[idx].sum(axis=1)
    low, high = _percentiles(stats)
    return Interval(estimate, low, high, "cluster_bootstrap")


def statistic_interval(rows: Sequence[dict[str, Any]], statistic: Callable[[list[dict[str, Any]]], float],
                       cluster: str = "episode_id", resamples: int = RESAMPLES, seed: int = SEED) -> Interval:
    """Interval of any statistic of the rows (e.g. a benchmark's own macro average): the statistic is
    recomputed on resampled episodes (slower than ``mean_interval``; used when the figure is not a mean)."""
    if not rows:
        return Interval(0.0, 0.0, 0.0, "none")
    groups = _groups(rows, cluster)
    estimate = float(statistic(list(rows)))
    if len(groups) < 2:
        return Interval(estimate, estimate, estimate, "none")
    idx = _resample_indices(len(groups), resamples, seed)
    stats = np.array([statistic([r for i in draw for r in groups[i]]) for draw in idx])
    low, high = _percentiles(stats)
    return Interval(estimate, low, high, "cluster_bootstrap")


def statistics_intervals(rows: Sequence[dict[str, Any]], statistics: Callable[[list[dict[str, Any]]], dict[str, float]],
                         names: Sequence[str], cluster: str = "episode_id", resamples: int = RESAMPLES,
                         seed: int = SEED) -> dict[str, Interval]:
    """``statistic_interval`` for several figures of one aggregate (a benchmark's ``aggregate``): each resample
    computes it once and reads every name (a resample whose aggregate lacks a name, e.g. a rare step kind not
    drawn, is left out of that name's percentiles)."""
    if not rows or not names:
        return {}
    groups = _groups(rows, cluster)
    estimate = statistics(list(rows))
    if len(groups) < 2:
        return {n: Interval(*(float(estimate.get(n, 0.0)),) * 3, "none") for n in names}
    idx = _resample_indices(len(groups), resamples, seed)
    drawn = [statistics([r for i in draw for r in groups[i]]) for draw in idx]
    out = {}
    for n in names:
        values = np.array([float(d[n]) for d in drawn if n in d])
        low, high = _percentiles(values) if len(values) else (float("nan"),) * 2
        out[n] = Interval(float(estimate.get(n, 0.0)), low, high, "cluster_bootstrap")
    return out


@dataclass(frozen=True)
class PairedDifference:
    """A unit against a baseline on the same steps.

    Parameters
    ----------
    difference : Interval
        Mean of (unit - baseline) per step, with a paired cluster-bootstrap interval over episodes.
    better, worse : int
        Discordant steps: the unit right and the baseline wrong (``better``), and the reverse.
    p_value : float
        Exact two-sided McNemar p-value on the discordant steps.
    steps : int
        Steps in common.
    """

    difference: Interval
    better: int
    worse: int
    p_value: float
    steps: int

    @property
    def significant(self) -> bool:
        """The interval excludes 0 and McNemar rejects equality at the interval's level."""
        d = self.difference
        return (d.low > 0 or d.high < 0) and self.p_value < 1 - LEVEL


def mcnemar_exact(better: int, worse: int) -> float:
    """Two-sided exact McNemar p-value: under equality each discordant step is a fair coin."""
    n = better + worse
    if n == 0:
        return 1.0
    k = min(better, worse)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def paired_difference(unit: Sequence[dict[str, Any]], baseline: Sequence[dict[str, Any]],
                      value: Callable[[dict[str, Any]], float] = lambda r: float(bool(r["correct"])),
                      cluster: str = "episode_id", resamples: int = RESAMPLES, seed: int = SEED) -> PairedDifference:
    """``unit`` against ``baseline`` on the steps both have (paired by episode and step index)."""
    base = {(r[cluster], r["step_index"]): r for r in baseline}
    pairs = [(r, base[(r[cluster], r["step_index"])]) for r in unit if (r[cluster], r["step_index"]) in base]
    diffs = [{cluster: a[cluster], "d": value(a) - value(b)} for a, b in pairs]
    better = sum(1 for a, b in pairs if value(a) > value(b))
    worse = sum(1 for a, b in pairs if value(a) < value(b))
    interval = mean_interval(diffs, lambda r: r["d"], cluster=cluster, resamples=resamples, seed=seed)
    if interval.method == "wilson":  # differences are not 0/1 proportions; single-step episodes resample too
        interval = statistic_interval(diffs, lambda rs: sum(r["d"] for r in rs) / len(rs), cluster=cluster,
                                      resamples=resamples, seed=seed)
    return PairedDifference(interval, better, worse, mcnemar_exact(better, worse), len(pairs))


def unpaired_difference(current: Sequence[dict[str, Any]], baseline: Sequence[dict[str, Any]],
                        value: Callable[[dict[str, Any]], float], cluster: str = "episode_id",
                        resamples: int = RESAMPLES, seed: int = SEED) -> Interval:
    """Mean of ``current`` minus mean of ``baseline`` when their steps differ: each side's episodes are
    resampled independently (two cluster bootstraps), the difference of the resampled means taken."""
    sides = []
    for offset, rows in enumerate((current, baseline)):
        groups = _groups(rows, cluster)
        sums = np.array([sum(float(value(r)) for r in g) for g in groups])
        counts = np.array([len(g) for g in groups], dtype=float)
        idx = _resample_indices(len(groups), resamples, seed + offset)
        sides.append((float(sums.sum() / counts.sum()), sums[idx].sum(axis=1) / counts[idx].sum(axis=1)))
    (cur, cur_stats), (base, base_stats) = sides
    low, high = _percentiles(cur_stats - base_stats)
    return Interval(cur - base, low, high, "unpaired_bootstrap")
