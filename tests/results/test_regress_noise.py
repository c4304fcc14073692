"""The nightly gate knows noise: a drop counts only when it is significant (paired on the same steps,
unpaired otherwise) and beyond the tolerance; a sample too small to see the tolerance says so."""

from __future__ import annotations

import pytest

from pipeline.results.regression import OK, REGRESSION, TOO_SMALL, RegressionReport, compare
from pipeline.results.summary import UnitSummary


def unit_rows(n_episodes: int, wrong: set[tuple[int, int]], steps: int = 5, prefix: str = "ep") -> list[dict]:
    return [{"episode_id": f"{prefix}{e:03d}", "step_index": s, "compressor": "snapkv", "budget": 20.0,
             "correct": (e, s) not in wrong, "error": None} for e in range(n_episodes) for s in range(steps)]


def summary(rows: list[dict]) -> UnitSummary:
    acc = sum(1.0 for r in rows if r["correct"]) / len(rows)
    return UnitSummary("snapkv", 20.0, {"accuracy": acc})


def accuracy_row(base_rows, cur_rows, tolerance=0.02):
    rows = compare([summary(base_rows)], [summary(cur_rows)], {"accuracy": tolerance},
                   samples={"snapkv@20": (base_rows, cur_rows)})
    return next(r for r in rows if r.check == "accuracy")


def test_identical_runs_never_flag():
    rows = unit_rows(25, {(3, 1), (7, 4)})
    r = accuracy_row(rows, [dict(x) for x in rows])
    assert r.status == OK and (r.ci_low, r.ci_high) == (0.0, 0.0) and r.test == "paired" and r.p_value == 1.0


def test_a_significant_drop_beyond_the_tolerance_is_a_regression():
    # one step lost in 21 of 25 episodes: the paired interval is [-24/125, -17/125] (binomial quantiles of
    # X ~ Bin(25, 0.84), worked out in tests/results/test_stats_compare.py), McNemar p = 2 / 2**21
    base = unit_rows(25, set())
    cur = unit_rows(25, {(e, 2) for e in range(21)})
    r = accuracy_row(base, cur)
    assert r.status == REGRESSION and r.delta == pytest.approx(-21 / 125)
    assert (r.ci_low, r.ci_high) == pytest.approx((-24 / 125, -17 / 125))
    assert r.p_value == pytest.approx(2 / 2 ** 21)


def test_ten_steps_are_too_small_to_see_the_tolerance():
    # 2 episodes of 5 steps, one step lost in the first: a resample holds the first episode 0, 1 or 2 times,
    # so the mean difference is 0, -0.1 or -0.2 (probabilities 1/4, 1/2, 1/4): interval [-0.2, 0], half-width
    # 0.1 > 0.02; McNemar on one discordant step: p = 1 (not significant)
    base = unit_rows(2, set())
    cur = unit_rows(2, {(0, 0)})
    r = accuracy_row(base, cur)
    assert r.delta == pytest.approx(-0.1) and (r.ci_low, r.ci_high) == pytest.approx((-0.2, 0.0))
    assert r.status == TOO_SMALL
    report = RegressionReport("b", "c", {"accuracy": 0.02}, rows=[r])
    text = report.format_table()
    assert "TOO_SMALL" in text and "cannot be told from noise" in text and not report.regressions


def test_different_steps_are_compared_unpaired():
    base = unit_rows(25, set(), prefix="a")
    cur = unit_rows(25, {(e, 2) for e in range(21)}, prefix="b")
    r = accuracy_row(base, cur)
    # the baseline side has no variance (all right), so the difference's interval is the current side's own
    # cluster-bootstrap interval minus 1: the same binomial quantiles, [-24/125, -17/125]
    assert r.test == "unpaired" and r.status == REGRESSION
    assert (r.ci_low, r.ci_high) == pytest.approx((-24 / 125, -17 / 125))


def test_without_samples_the_gate_uses_the_tolerance_alone():
    base, cur = unit_rows(2, set()), unit_rows(2, {(0, 0)})
    rows = compare([summary(base)], [summary(cur)], {"accuracy": 0.02})
    r = next(x for x in rows if x.check == "accuracy")
    assert r.status == REGRESSION and r.ci_low is None
