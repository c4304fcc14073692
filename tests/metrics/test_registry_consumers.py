"""The consumers of the metric registry print and store exactly what they did when they named the metrics
themselves: ``summarize`` (keys, order, values), ``format_table``, the regression gate's checks and
tolerances, the plots written and what a unit's MLflow child run logs. Expected values are worked out by
hand from the rows below."""

from __future__ import annotations

import pyarrow as pa
import pytest

from pipeline.metrics.rows import rows_to_table
from pipeline.results.summary import SHARED_PEAK_NOTE, UnitSummary, format_table, summarize
from tests.helpers_runs import MIB, step_row


class _Bench:
    """A benchmark whose aggregate() is given (summarize reads nothing else of it)."""

    def __init__(self, figures: dict[str, float]) -> None:
        self.figures = figures

    def aggregate(self, rows):
        return dict(self.figures)


def _rows() -> list[dict]:
    """snapkv@20: 4 steps over 2 episodes, the last failed, the first two in a shared prefill, flops counted;
    full@100: 2 steps of 1 episode without the exact-accounting and flop columns (null in the table)."""
    steps = [
        dict(correct=True, kv_bytes=1000, peak_mem_bytes=10 * MIB, prefill_s=0.25, decode_s=0.25, prompt_tokens=100,
             kept_tokens=50, peak_above_weights_bytes=MIB, peak_prefill_bytes=1000, peak_decode_bytes=700,
             prefill_shared=True, prefill_flops=2 * 10**9, compress_flops=2 * 10**6),
        dict(correct=False, kv_bytes=2000, peak_mem_bytes=12 * MIB, prefill_s=0.5, decode_s=0.25, prompt_tokens=200,
             kept_tokens=70, peak_above_weights_bytes=2 * MIB, peak_prefill_bytes=3000, peak_decode_bytes=500,
             prefill_shared=True, prefill_flops=4 * 10**9, compress_flops=3 * 10**6),
        dict(correct=True, kv_bytes=3000, peak_mem_bytes=11 * MIB, prefill_s=0.25, decode_s=0.5, prompt_tokens=300,
             kept_tokens=90, peak_above_weights_bytes=3 * MIB, peak_prefill_bytes=2000, peak_decode_bytes=900,
             prefill_flops=6 * 10**9, compress_flops=7 * 10**6),
        dict(correct=False, error="boom", kv_bytes=0, kv_bytes_full=0, peak_mem_bytes=0, prefill_s=0.0, decode_s=0.0,
             prefill_flops=10**12, compress_flops=10**9),
    ]
    rows = [step_row("r", "snapkv", 20.0, i, episode_id=f"ep{i // 2}", weights_bytes=5 * MIB, **v)
            for i, v in enumerate(steps)]
    rows += [step_row("r", "full", 100.0, i, correct=True, kv_bytes=4000, peak_mem_bytes=20 * MIB, prefill_s=0.5,
                      decode_s=0.5, kept_tokens=100) for i in range(2)]
    return rows


# ok steps of snapkv: the first three; failed steps count only in steps, errors, episodes and accuracy
SNAPKV = {
    "steps": 4.0, "errors": 1.0, "episodes": 2.0,
    "mean_peak_mem_bytes": 11.0 * MIB, "max_peak_mem_bytes": 12.0 * MIB,
    "max_peak_above_weights_bytes": 3.0 * MIB, "mean_peak_above_weights_bytes": 2.0 * MIB,
    "max_peak_prefill_bytes": 3000.0, "max_peak_decode_bytes": 900.0, "weights_bytes": 5.0 * MIB,
    "mean_kv_bytes": 2000.0, "mean_kv_bytes_full": 4000.0, "kv_ratio": 6000 / 12000,
    "mean_prompt_tokens": 200.0, "mean_kept_tokens": 70.0, "mean_prefill_s": 1.0 / 3, "mean_decode_s": 1.0 / 3,
    "steps_per_s": 3 / 2.0, "shared_prefill_steps": 2.0, "accuracy": 2 / 4, "max_own_peak_above_weights_bytes": 0.0,
    # the three ok steps: (2 + 4 + 6) / 3 GFLOP, (2 + 3 + 7) / 3 MFLOP; the ratio of the sums 12e6 / 12e9
    "mean_prefill_flops": 4e9, "mean_compress_flops": 4e6, "compress_flops_ratio": 1e-3,
    # both episodes have one right step of two: every resample of episodes gives 0.5
    "accuracy_ci_low": 0.5, "accuracy_ci_high": 0.5,
}
FULL = {
    "steps": 2.0, "errors": 0.0, "episodes": 1.0,
    "mean_peak_mem_bytes": 20.0 * MIB, "max_peak_mem_bytes": 20.0 * MIB,
    "max_peak_above_weights_bytes": 0.0, "mean_peak_above_weights_bytes": 0.0,
    "max_peak_prefill_bytes": 0.0, "max_peak_decode_bytes": 0.0, "weights_bytes": 0.0,
    "mean_kv_bytes": 4000.0, "mean_kv_bytes_full": 4000.0, "kv_ratio": 1.0,
    "mean_prompt_tokens": 100.0, "mean_kept_tokens": 100.0, "mean_prefill_s": 0.5, "mean_decode_s": 0.5,
    "steps_per_s": 2 / 2.0, "shared_prefill_steps": 0.0, "accuracy": 1.0, "max_own_peak_above_weights_bytes": 0.0,
    "mean_prefill_flops": 0.0, "mean_compress_flops": 0.0, "compress_flops_ratio": 0.0,  # not counted
}
TABLE = """\
compressor     budget%  steps  err  accuracy         95% CI  KV kept MiB  KV full MiB  peak>W MiB  own peak>W MiB  RSS MiB  prefill ms  decode ms
-------------------------------------------------------------------------------------------------------------------------------------------------
full               100      2    0     1.000              -        0.004        0.004        0.00            0.00     20.0       500.0      500.0
snapkv              20      4    1     0.500   [0.50, 0.50]        0.002        0.004        3.00            0.00     12.0       333.3      333.3
(peak>W: exact live tensor bytes above the weights, prefill or decode; own peak>W: the unit's own, as it runs alone; RSS: process RSS high-water mark, cpu_rss_hwm; 95% CI: over episodes)
""" + SHARED_PEAK_NOTE


def _units(figures: dict[str, float] | None = None) -> list[UnitSummary]:
    return summarize(rows_to_table(_rows()), _Bench(figures or {}))


def test_summarize_keys_order_and_values():
    units = _units()
    assert [(u.compressor, u.budget) for u in units] == [("full", 100.0), ("snapkv", 20.0)]
    # same keys in the same order (summary.json keeps it), same values
    assert list(units[0].metrics.items()) == list(FULL.items())
    assert list(units[1].metrics.items()) == list(SNAPKV.items())


def test_summarize_benchmark_figures_first():
    # the benchmark's own accuracy wins (setdefault) and keeps its place; num_steps is bench_num_steps;
    # a benchmark figure with a registry name (steps) is overwritten in place by the registry's
    units = _units({"accuracy": 0.25, "num_steps": 4.0, "steps": 99.0, "f1": 0.5})
    m = units[1].metrics
    assert list(m)[:4] == ["accuracy", "bench_num_steps", "steps", "f1"]
    assert m["accuracy"] == 0.25 and m["bench_num_steps"] == 4.0 and m["steps"] == 4.0 and m["f1"] == 0.5
    assert list(m)[4:] == [k for k in SNAPKV if k not in ("accuracy", "steps")]


def test_summarize_old_rows_missing_columns_count_as_zero():
    old_cols = ("peak_above_weights_bytes", "weights_bytes", "peak_prefill_bytes", "peak_decode_bytes",
                "prefill_shared", "prefill_flops", "compress_flops")
    rows = [{k: v for k, v in r.items() if k not in old_cols} | {"error": r.get("error")} for r in _rows()]
    m = summarize(pa.Table.from_pylist(rows), _Bench({}))[1].metrics
    assert list(m) == list(SNAPKV)
    assert {k: m[k] for k in ("max_peak_above_weights_bytes", "mean_peak_above_weights_bytes", "weights_bytes",
                              "max_peak_prefill_bytes", "max_peak_decode_bytes", "shared_prefill_steps")} == \
        dict.fromkeys(("max_peak_above_weights_bytes", "mean_peak_above_weights_bytes", "weights_bytes",
                       "max_peak_prefill_bytes", "max_peak_decode_bytes", "shared_prefill_steps"), 0.0)
    assert m["mean_kv_bytes"] == 2000.0 and m["accuracy"] == 0.5
    assert m["mean_prefill_flops"] == m["mean_compress_flops"] == m["compress_flops_ratio"] == 0.0


def test_format_table_text():
    assert format_table(_units(), "cpu_rss_hwm") == TABLE
    own = format_table([_units()[0]])
    assert own.splitlines()[-1] == ("(peak>W: exact live tensor bytes above the weights, prefill or decode; "
                                    "own peak>W: the unit's own, as it runs alone; RSS: process RSS high-water "
                                    "mark, device-level figure; 95% CI: over episodes)")


def test_regression_checks_and_tolerances():
    from pipeline.results.regression import ALIASES, CHECK_BY_NAME, CHECKS, DEFAULT_TOLERANCES, Check

    assert tuple(CHECKS) == (
        Check("accuracy", "accuracy", True, False, "fraction"),
        Check("peak_memory", "max_peak_mem_bytes", False, True, "bytes"),
        Check("peak_above_weights", "max_peak_above_weights_bytes", False, True, "bytes"),
        Check("kv_bytes", "mean_kv_bytes", False, True, "bytes"),
        Check("throughput", "steps_per_s", True, True, "per_s"),
        Check("errors", "errors", False, False, "count"),
    )
    assert list(DEFAULT_TOLERANCES.items()) == [("accuracy", 0.02), ("peak_memory", 0.10),
                                                ("peak_above_weights", 0.0), ("kv_bytes", 0.02),
                                                ("throughput", 0.30), ("errors", 0)]
    assert list(CHECK_BY_NAME) == [c.name for c in CHECKS]
    assert dict(ALIASES) == {c.name: c.metric for c in CHECKS}


def test_regression_table_text():
    from pipeline.results.regression import RegressionReport, compare, resolve_tolerances

    base = _units()
    cur = _units()
    cur[1].metrics.update(max_peak_mem_bytes=18.0 * MIB, errors=2.0, accuracy=0.25)
    del cur[0].metrics["steps_per_s"]
    for u in (*base, *cur):  # the tolerance-only table (no interval: tests/results/test_regress_noise.py)
        u.metrics.pop("accuracy_ci_low", None), u.metrics.pop("accuracy_ci_high", None)
    report = RegressionReport("b", "c", resolve_tolerances(None, {"throughput": None}),
                              compare(base, cur, {"throughput": None}))
    assert report.format_table() == """\
baseline: b
current:  c

unit       metric                baseline     current   delta  tolerance  status
---------  ------------------  ----------  ----------  ------  ---------  ----------
full@100   accuracy                 1.000       1.000  +0.000       0.02  OK
full@100   peak_memory         20.000 MiB  20.000 MiB   +0.0%        10%  OK
full@100   peak_above_weights   0.000 MiB   0.000 MiB   +0.0%         0%  OK
full@100   kv_bytes             0.004 MiB   0.004 MiB   +0.0%         2%  OK
full@100   throughput             1.000/s           -       -        off  SKIPPED
full@100   errors                       0           0      +0          0  OK
snapkv@20  accuracy                 0.500       0.250  -0.250       0.02  REGRESSION
snapkv@20  peak_memory         12.000 MiB  18.000 MiB  +50.0%        10%  REGRESSION
snapkv@20  peak_above_weights   3.000 MiB   3.000 MiB   +0.0%         0%  OK
snapkv@20  kv_bytes             0.002 MiB   0.002 MiB   +0.0%         2%  OK
snapkv@20  throughput             1.500/s     1.500/s   +0.0%        off  SKIPPED
snapkv@20  errors                       1           2      +1          0  REGRESSION

3 regression(s), 0 improvement(s) in 12 comparisons: snapkv@20 accuracy, snapkv@20 peak_memory, snapkv@20 errors"""
    assert report.to_dict()["tolerances"] == {"accuracy": 0.02, "peak_memory": 0.10, "peak_above_weights": 0.0,
                                              "kv_bytes": 0.02, "throughput": None, "errors": 0}


@pytest.mark.parametrize("exact", [True, False])
def test_plots_written(tmp_path, exact):
    from pipeline.results.plots import _specs, write_job_figures

    units = _units()
    if not exact:
        for u in units:
            u.metrics["max_peak_above_weights_bytes"] = 0.0
    files = write_job_figures(units, tmp_path, "sub", "cpu_rss_hwm")
    assert [p.name for p in files] == ["accuracy_vs_budget.png", "kv_memory_vs_budget.png",
                                       "peak_memory_vs_budget.png", "overview.png"]
    specs = _specs(units, "cpu_rss_hwm")
    assert [(s.filename, s.metric, s.ylabel) for s in specs] == [
        ("accuracy_vs_budget.png", "accuracy", "accuracy (fraction of steps correct)"),
        ("kv_memory_vs_budget.png", "mean_kv_bytes", "kept KV cache per step, mean (MiB)"),
        ("peak_memory_vs_budget.png", "max_peak_above_weights_bytes" if exact else "max_peak_mem_bytes",
         "peak above weights per step, max over steps (MiB)" if exact else
         "peak memory per step, max over steps (MiB)"),
    ]
    assert [s.title for s in specs[:2]] == ["Accuracy vs KV budget", "Kept KV-cache memory vs KV budget"]
    assert specs[1].scale(2.0 * MIB) == 2.0 and specs[2].scale(3.0 * MIB) == 3.0


def test_child_run_metrics():
    from pipeline.tracking.view import child_metrics

    m = child_metrics(_units()[1])
    # the Runs-table columns first, then the figures in human units, the raw bytes / seconds / flops last
    assert list(m) == ["accuracy", "accuracy_ci_low", "accuracy_ci_high", "kv_ratio_pct",
                       "max_own_peak_above_weights_mib", "mean_prefill_ms", "mean_decode_ms",
                       "steps", "errors", "episodes", "kv_ratio", "mean_prompt_tokens", "mean_kept_tokens",
                       "steps_per_s", "shared_prefill_steps", "compress_flops_ratio",
                       "mean_peak_mem_mib", "max_peak_mem_mib", "max_peak_above_weights_mib",
                       "mean_peak_above_weights_mib", "max_peak_prefill_mib", "max_peak_decode_mib", "weights_mib",
                       "mean_kv_mib", "mean_kv_full_mib", "mean_prefill_gflop", "mean_compress_gflop", "budget_pct",
                       "mean_peak_mem_bytes", "max_peak_mem_bytes", "max_peak_above_weights_bytes",
                       "mean_peak_above_weights_bytes", "max_peak_prefill_bytes", "max_peak_decode_bytes",
                       "weights_bytes", "mean_kv_bytes", "mean_kv_bytes_full", "mean_prefill_s", "mean_decode_s",
                       "max_own_peak_above_weights_bytes", "mean_prefill_flops", "mean_compress_flops"]
    assert m["max_peak_above_weights_mib"] == 3.0 and m["weights_mib"] == 5.0 and m["kv_ratio_pct"] == 50.0
    assert m["mean_prefill_gflop"] == 4.0 and m["mean_compress_gflop"] == 0.004
    assert m["budget_pct"] == 20.0
