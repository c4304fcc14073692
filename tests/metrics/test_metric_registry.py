"""One declaration is a whole metric: ``tests/plugin_metric.py`` registers ``thinking_tokens`` (summary, check,
plot, table column) and it reaches the row schema, ``summarize``, the terminal table, a unit's MLflow child
run, the plots and the regression gate, with nothing else changed."""

from __future__ import annotations

import importlib
import sys

import pyarrow as pa
import pytest

from pipeline.metrics import registry
from pipeline.metrics.rows import row_schema, rows_to_table
from pipeline.results.summary import summarize
from tests.helpers_runs import MIB, step_row

PLUGIN = "tests.plugin_metric"


@pytest.fixture
def plugin_metric():
    """Import the plugin (registering its metric), then take the declaration out again."""
    sys.modules.pop(PLUGIN, None)
    module = importlib.import_module(PLUGIN)
    try:
        yield module.METRIC
    finally:
        registry.COLUMNS[:] = [m for m in registry.COLUMNS if m.name != module.METRIC.name]
        sys.modules.pop(PLUGIN, None)


class _Bench:
    def aggregate(self, rows):
        return {}


def _units(rows=None):
    """snapkv@20: thinking 10, 30 and a failed step (100, not counted); full@100: 50 and a row without the
    column (null: counts as 0)."""
    rows = rows or [
        step_row("r", "snapkv", 20.0, 0, thinking_tokens=10),
        step_row("r", "snapkv", 20.0, 1, thinking_tokens=30),
        step_row("r", "snapkv", 20.0, 2, thinking_tokens=100, error="boom"),
        step_row("r", "full", 100.0, 0, thinking_tokens=50),
        step_row("r", "full", 100.0, 1),
    ]
    return summarize(rows_to_table(rows), _Bench())


def test_schema(plugin_metric):
    schema = row_schema()
    assert schema.names[-1] == "thinking_tokens" and schema.field("thinking_tokens").type == pa.int64()


def test_summarize(plugin_metric):
    full, snapkv = _units()
    assert snapkv.metrics["mean_thinking_tokens"] == (10 + 30) / 2 and snapkv.metrics["max_thinking_tokens"] == 30.0
    assert full.metrics["mean_thinking_tokens"] == (50 + 0) / 2 and full.metrics["max_thinking_tokens"] == 50.0
    # after every built-in metric's summary, which keep their order; the derived figures follow the metrics
    assert list(snapkv.metrics)[-7:] == ["accuracy", "max_own_peak_above_weights_bytes", "mean_prefill_flops",
                                         "mean_compress_flops", "mean_thinking_tokens", "max_thinking_tokens",
                                         "compress_flops_ratio"]


def test_terminal_table(plugin_metric):
    from pipeline.results.summary import format_table

    lines = format_table(_units(), "cpu_rss_hwm").splitlines()
    # order 95: after "decode ms"; as wide as its title plus two
    assert lines[0].endswith("  decode ms  think tok") and len(lines[1]) == len(lines[0])
    assert lines[2].startswith("full") and lines[2].endswith("       25.0")
    assert lines[3].startswith("snapkv") and lines[3].endswith("       20.0")


def test_mlflow_child_run_metrics(plugin_metric):
    from pipeline.tracking.view import child_metrics

    logged = child_metrics(_units()[1])
    assert logged["mean_thinking_tokens"] == 20.0 and logged["max_thinking_tokens"] == 30.0
    assert not any(k.startswith(("mean_thinking", "max_thinking")) and k.endswith("_mib") for k in logged)


def test_plots(plugin_metric, tmp_path):
    from pipeline.results.plots import _series, write_job_figures, write_report_plots

    units = _units()
    assert _series(units, "mean_thinking_tokens") == {"full": [(100.0, 25.0)], "snapkv": [(20.0, 20.0)]}
    files = write_report_plots(units, tmp_path / "report", "sub", "cpu_rss_hwm")
    assert [p.name for p in files] == ["accuracy_vs_budget.png", "kv_memory_vs_budget.png",
                                       "peak_memory_vs_budget.png", "thinking_tokens_vs_budget.png"]
    assert files[-1].read_bytes().startswith(b"\x89PNG")
    # the job's figures: the same plus the three-panel overview
    assert [p.name for p in write_job_figures(units, tmp_path / "job")][-2:] == \
        ["thinking_tokens_vs_budget.png", "overview.png"]


def test_regression_gate(plugin_metric):
    from pipeline.results.regression import (
        ALIASES,
        CHECK_BY_NAME,
        CHECKS,
        DEFAULT_TOLERANCES,
        REGRESSION,
        Check,
        RegressionReport,
        compare,
        parse_tolerances,
        resolve_tolerances,
    )

    assert CHECKS[-1] == Check("thinking_tokens", "mean_thinking_tokens", False, True, "count")
    assert [c.name for c in CHECKS][:6] == ["accuracy", "peak_memory", "peak_above_weights", "kv_bytes",
                                            "throughput", "errors"]
    assert DEFAULT_TOLERANCES["thinking_tokens"] == 0.05 and "thinking_tokens" in CHECK_BY_NAME
    assert ALIASES["thinking_tokens"] == "mean_thinking_tokens"
    assert parse_tolerances({"thinking_tokens": 0.2}) == {"thinking_tokens": 0.2}

    base = _units()
    cur = _units()
    cur[1].metrics["mean_thinking_tokens"] = 22.0  # +10 % against a 5 % default tolerance
    rows = compare(base, cur, {})
    by = {(r.unit, r.check): r for r in rows}
    assert by[("snapkv@20", "thinking_tokens")].status == REGRESSION
    assert by[("snapkv@20", "thinking_tokens")].delta == pytest.approx(0.10)
    assert by[("full@100", "thinking_tokens")].delta == 0.0
    table = RegressionReport("b", "c", resolve_tolerances(None, None), rows).format_table()
    line = next(x for x in table.splitlines() if x.startswith("snapkv@20") and "thinking_tokens" in x)
    assert line.split() == ["snapkv@20", "thinking_tokens", "20", "22", "+10.0%", "5%", "REGRESSION"]
    # a job may loosen it like any check
    assert compare(base, cur, {"thinking_tokens": 0.2})[-1].status == "OK"


def test_readable_twin_of_a_byte_summary_named_otherwise():
    from pipeline.tracking.view import readable_metrics

    scratch = registry.register_metric(registry.Metric("scratch_bytes", "int64", 0, "bytes", "scratch memory",
                                                       summary={"mean_scratch": "mean"}))
    try:
        assert readable_metrics({"mean_scratch": 3 * MIB})["mean_scratch_mib"] == 3.0
    finally:
        registry.COLUMNS.remove(scratch)


def test_the_registry_is_as_before_without_the_plugin():
    from pipeline.results.regression import DEFAULT_TOLERANCES

    assert "thinking_tokens" not in row_schema().names and "thinking_tokens" not in DEFAULT_TOLERANCES
    assert "mean_thinking_tokens" not in _units([step_row("r", "full", 100.0, 0)])[0].metrics
