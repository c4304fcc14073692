"""Intervals, paired differences and McNemar tests, against values worked out by hand.

The constructed runs: ``n`` episodes of 5 steps; the baseline is right on every step, the unit is the same
except one wrong step in each of ``k`` episodes. A resample of episodes then holds X bad episodes with
X ~ Binomial(n, k/n), and its mean difference is -X / (5 n): the interval's ends are binomial quantiles
(read from the binomial CDF below, chosen where no quantile sits near a block edge).
"""

from __future__ import annotations

import math

import pytest

from pipeline.results.compare import compare_units, format_comparison
from pipeline.results.stats import mcnemar_exact, mean_interval, paired_difference, wilson


def run_rows(n_episodes: int, bad_episodes: int, steps: int = 5) -> list[dict]:
    rows = []
    for e in range(n_episodes):
        for s in range(steps):
            base = {"episode_id": f"ep{e:03d}", "step_index": s, "budget": 20.0, "error": None}
            rows.append({**base, "compressor": "full", "correct": True})
            rows.append({**base, "compressor": "snapkv", "correct": not (e < bad_episodes and s == 2)})
    return rows


def test_wilson_matches_the_formula_by_hand():
    # 7 of 10, z = 1.96: centre (0.7 + 0.19208) / 1.38416 = 0.64453, half 1.96 * sqrt(0.021 + 0.009604) / 1.38416
    low, high = wilson(7, 10)
    assert low == pytest.approx(0.39678, abs=1e-4) and high == pytest.approx(0.89221, abs=1e-4)
    assert wilson(0, 0) == (0.0, 1.0)
    assert wilson(0, 20)[0] == 0.0 and wilson(20, 20)[1] == 1.0


def test_mcnemar_exact_by_hand():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(0, 5) == pytest.approx(2 / 32)
    assert mcnemar_exact(2, 8) == pytest.approx(2 * (1 + 10 + 45) / 1024)
    assert mcnemar_exact(3, 3) == 1.0


def test_single_step_episodes_get_wilson():
    rows = [{"episode_id": f"e{i}", "correct": i < 7} for i in range(10)]
    interval = mean_interval(rows, lambda r: float(r["correct"]))
    assert interval.method == "wilson" and interval.value == pytest.approx(0.7)
    assert (interval.low, interval.high) == pytest.approx(wilson(7, 10))


def test_identical_units_but_two_steps_are_not_significant():
    # 20 episodes, 2 bad: X ~ Bin(20, 0.1); CDF(4) = 0.957, CDF(5) = 0.989 -> 97.5 % quantile 5; P(X = 0) = 0.12
    rows = run_rows(20, 2)
    unit = [r for r in rows if r["compressor"] == "snapkv"]
    base = [r for r in rows if r["compressor"] == "full"]
    paired = paired_difference(unit, base)
    assert paired.steps == 100 and (paired.better, paired.worse) == (0, 2)
    assert paired.difference.value == pytest.approx(-0.02)
    assert paired.difference.low == pytest.approx(-5 / 100) and paired.difference.high == pytest.approx(0.0)
    assert paired.p_value == pytest.approx(0.5) and not paired.significant


def test_many_lost_steps_are_significant_and_the_table_says_so():
    # 25 episodes, 21 bad: X ~ Bin(25, 0.84); CDF(16) = 0.013, CDF(17) = 0.046 -> 2.5 % quantile 17;
    # CDF(23) = 0.91, CDF(24) = 0.987 -> 97.5 % quantile 24; McNemar p = 2 / 2**21
    comparisons = compare_units(run_rows(25, 21), baseline="full")
    assert len(comparisons) == 1
    c = comparisons[0]
    assert (c.unit, c.baseline, c.paired.steps) == ("snapkv@20", "full@20", 125)
    assert c.accuracy == pytest.approx(104 / 125) and c.baseline_accuracy == 1.0
    assert c.paired.difference.low == pytest.approx(-24 / 125) and c.paired.difference.high == pytest.approx(-17 / 125)
    assert c.paired.p_value == pytest.approx(2 / 2 ** 21) and c.paired.significant
    text = format_comparison(comparisons)
    assert "significant" in text and "[-0.192, -0.136]" in text


def test_binomial_quantiles_used_above():
    """The CDF values quoted in the tests above (an independent check of the hand figures)."""
    def cdf(n, p, k):
        return sum(math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(k + 1))

    assert cdf(20, 0.1, 4) < 0.975 < cdf(20, 0.1, 5) and cdf(20, 0.1, 0) > 0.025
    assert cdf(25, 0.84, 16) < 0.025 < cdf(25, 0.84, 17) and cdf(25, 0.84, 23) < 0.975 < cdf(25, 0.84, 24)


def test_unknown_baseline_names_what_the_run_has():
    from pipeline.results.compare import CompareInputError

    with pytest.raises(CompareInputError, match="'guikv' is not a compressor of this run.*full, snapkv"):
        compare_units(run_rows(3, 1), baseline="guikv")


def test_per_kind_means_get_intervals_from_one_bootstrap(tmp_path):
    """The launcher benchmark declares ``accuracy_*``: every step kind gets an interval. Each of 4 episodes
    has one current-screen step right and one wrong (every resample: 0.5 exactly) and one recall step, right
    in episodes 0 and 1 only: a resample's recall accuracy is X/4 with X ~ Binomial(4, 1/2), so its 2.5 %
    and 97.5 % percentiles are 0 and 1 (P(X = 0) = P(X = 4) = 1/16 > 2.5 %)."""
    from pipeline.benchmarks.common.base import get_benchmark
    from pipeline.metrics.rows import rows_to_table
    from pipeline.results.summary import summarize
    from tests.helpers_runs import step_row

    rows = []
    for e in range(4):
        for s, (kind, ok) in enumerate((("icon", True), ("icon", False), ("recalled_icon", e < 2))):
            rows.append(step_row("r", "full", 100.0, s, episode_id=f"ep{e}", step_key=f"full@100/ep{e}/{s}",
                                 correct=ok, meta_json=f'{{"element_type": "{kind}"}}'))
    (unit,) = summarize(rows_to_table(rows), get_benchmark("launcher")(str(tmp_path)))
    m = unit.metrics
    assert m["accuracy_icon"] == 0.5 and (m["accuracy_icon_ci_low"], m["accuracy_icon_ci_high"]) == (0.5, 0.5)
    assert m["accuracy_recalled_icon"] == 0.5
    assert (m["accuracy_recalled_icon_ci_low"], m["accuracy_recalled_icon_ci_high"]) == (0.0, 1.0)
    assert m["accuracy"] == pytest.approx(6 / 12) and m["accuracy_ci_low"] < 0.5 < m["accuracy_ci_high"]
