"""Per (compressor, budget) aggregates from the step rows (accuracy, memory, throughput), as the metric registry
(``pipeline.metrics.registry``) declares them, and the terminal table of them."""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from pipeline.benchmarks.common.base import Benchmark
from pipeline.metrics.registry import AGGREGATIONS, BENCHMARK_FIRST, Derived, summary_sources, table_columns
from pipeline.metrics.units import unit_label
from pipeline.results.stats import mean_interval, statistics_intervals, step_correct


@dataclass
class UnitSummary:
    compressor: str
    budget: float
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return unit_label(self.compressor, self.budget)


def _unit_metrics(ok: list[dict[str, Any]], items: list[dict[str, Any]]) -> dict[str, float]:
    """Every registered summary metric of one unit's rows, in the registry's summary order.

    A column missing from a row (rows written before the column existed) or null counts as 0.
    """
    out: dict[str, float] = {}
    for name, source in summary_sources():
        if isinstance(source, Derived):
            out[name] = float(source.compute(ok, items))
            continue
        how = source.summary[name]
        values = [r.get(source.name) or 0 for r in (items if how == "mean_all" else ok)]
        out[name] = AGGREGATIONS[how](values)
    return out


def summarize(table: pa.Table, benchmark: Benchmark) -> list[UnitSummary]:
    """One summary per unit, in (compressor, budget) order: the benchmark's aggregate() first (its
    ``num_steps`` as ``bench_num_steps``), then every summary metric of the registry
    (``pipeline.metrics.registry``); a benchmark's own figure wins for ``BENCHMARK_FIRST`` (accuracy)."""
    if table.num_rows == 0:
        return []
    rows = table.to_pylist()
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["compressor"], float(r["budget"])), []).append(r)
    out = []
    for (comp, budget), items in sorted(groups.items()):
        for r in items:
            r["meta"] = json.loads(r.get("meta_json") or "{}")
        ok = [r for r in items if not r.get("error")]
        metrics = {f"bench_{k}" if k == "num_steps" else k: float(v) for k, v in benchmark.aggregate(items).items()}
        for name, value in _unit_metrics(ok, items).items():
            if name in BENCHMARK_FIRST:
                metrics.setdefault(name, value)
            else:
                metrics[name] = value
        metrics.update(_intervals(items, metrics, benchmark))
        out.append(UnitSummary(comp, budget, metrics))
    return out


def _intervals(items: list[dict[str, Any]], metrics: dict[str, float], benchmark: Benchmark) -> dict[str, float]:
    """``<name>_ci_low`` / ``<name>_ci_high`` for each of the benchmark's interval metrics
    (``Benchmark.interval_metrics``: names or patterns such as ``accuracy_*``, matched against the summary's
    names): accuracy as a plain mean of correct steps gets ``stats.mean_interval`` (Wilson for single-step
    episodes, else a cluster bootstrap over episodes); the benchmark's other figures (per-kind means, macro
    averages) are recomputed by its ``aggregate`` on the same resampled episodes, one aggregate per resample."""
    out: dict[str, float] = {}
    step_mean = sum(step_correct(r) for r in items) / len(items)
    patterns = getattr(benchmark, "interval_metrics", ("accuracy",))
    names = [n for n in metrics if any(fnmatch.fnmatchcase(n, p) for p in patterns)
             and not n.endswith(("_ci_low", "_ci_high"))]
    intervals = {}
    if "accuracy" in names and abs(metrics["accuracy"] - step_mean) < 1e-12:
        intervals["accuracy"] = mean_interval(items, step_correct)
    rest = [n for n in names if n not in intervals]
    intervals.update(statistics_intervals(items, lambda rs: {k: float(v) for k, v in benchmark.aggregate(rs).items()},
                                          rest, resamples=STATISTIC_RESAMPLES))
    for name in names:
        interval = intervals[name]
        if interval.method != "none":  # one episode: its steps' spread says nothing of another run's
            out[f"{name}_ci_low"], out[f"{name}_ci_high"] = interval.low, interval.high
    return out


#: resamples of a benchmark's own aggregate (each recomputes it over a unit's rows)
STATISTIC_RESAMPLES = 1000


#: widths of the table's two identity columns; a metric column is as wide as its title plus two
COMPRESSOR_WIDTH, BUDGET_WIDTH = 14, 8


def _width(column) -> int:
    return max(len(column.title) + 2, column.width)


def _cell(metrics: dict[str, float], column) -> str:
    """A table cell: the scaled value, or for an interval column ``[low, high]`` of the summary's interval
    (``-`` when the unit has none)."""
    if not column.interval:
        return f"{metrics.get(column.summary, 0) * column.scale:{column.fmt}}"
    low, high = metrics.get(f"{column.summary}_ci_low"), metrics.get(f"{column.summary}_ci_high")
    if low is None or high is None:
        return "-"
    return f"[{low * column.scale:{column.fmt}}, {high * column.scale:{column.fmt}}]"


def format_table(summaries: list[UnitSummary], mem_device: str = "") -> str:
    """A small fixed-width table for the terminal and the MLflow artifact: a column per registered
    ``TableColumn`` (``pipeline.metrics.registry``), by its ``order``."""
    columns = table_columns()
    head = f"{'compressor':<{COMPRESSOR_WIDTH}}{'budget%':>{BUDGET_WIDTH}}" + "".join(
        f"{c.title:>{_width(c)}}" for c in columns)
    lines = [head, "-" * len(head)]
    for s in summaries:
        cells = "".join(f"{_cell(s.metrics, c):>{_width(c)}}" for c in columns)
        lines.append(f"{s.compressor:<{COMPRESSOR_WIDTH}}{s.budget:>{BUDGET_WIDTH}g}" + cells)
    lines.append("(peak>W: exact live tensor bytes above the weights, prefill or decode; own peak>W: the unit's "
                 "own, as it runs alone; RSS: process RSS high-water mark, "
                 + (mem_device or "device-level figure") + "; 95% CI: over episodes)")
    if any(s.metrics.get("shared_prefill_steps", 0) > 0 for s in summaries):
        lines.append(SHARED_PEAK_NOTE)
    return "\n".join(lines)


SHARED_PEAK_NOTE = ("(shared prefill: one prefill holds every layer's full cache for all units, so peak>W is "
                    "the sweep's, the same for every unit; own peak>W replays each unit alone on the last step "
                    "of every episode)")
