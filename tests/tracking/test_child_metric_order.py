"""A child run's metrics table reads in human units first: the table columns, then MiB / ms / % / counts, the
raw ``*_bytes`` and ``*_s`` values last."""

from __future__ import annotations

from pipeline.results.summary import UnitSummary
from pipeline.tracking.view import child_metrics

MIB = 1024 * 1024


def test_human_units_first_raw_values_last():
    unit = UnitSummary("snapkv", 20.0, {"accuracy": 0.1, "max_peak_mem_bytes": 500 * MIB, "mean_prefill_s": 0.25,
                                        "kv_ratio": 0.2, "max_own_peak_above_weights_bytes": 6 * MIB,
                                        "steps": 251.0, "steps_per_s": 2.0})
    keys = list(child_metrics(unit))
    assert keys[:4] == ["accuracy", "kv_ratio_pct", "max_own_peak_above_weights_mib", "mean_prefill_ms"]
    assert keys[-3:] == ["max_peak_mem_bytes", "mean_prefill_s", "max_own_peak_above_weights_bytes"]
    assert {"steps", "steps_per_s", "max_peak_mem_mib", "budget_pct", "kv_ratio"} == set(keys[4:-3])
    values = child_metrics(unit)
    assert values["mean_prefill_ms"] == 250.0 and values["max_own_peak_above_weights_mib"] == 6.0
