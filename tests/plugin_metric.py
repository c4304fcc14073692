"""A user metric living outside the project, registered by importing this module (a job's ``plugins:``).

The example to copy: one ``register_metric(Metric(...))`` call is the whole of a new per-step metric. It adds
the column to the Parquet row schema (``pipeline.metrics.rows.row_schema``), its summary to every unit
(``summarize``, so ``summary.json`` and the unit's MLflow child run), a column to the terminal table
(``TableColumn``), a budget plot (``PlotSpec``, a PNG in the report folder) and a check to the regression gate
(``Check``: its tolerance key, direction, relative or absolute, default tolerance). The step code fills the
column in the row (``row["thinking_tokens"] = ...``); a row without it counts as the declared default.
"""

from __future__ import annotations

from pipeline.metrics.registry import Check, Metric, PlotSpec, TableColumn, register_metric

METRIC = register_metric(Metric(
    "thinking_tokens", "int64", 0, "tokens", "tokens the model spent reasoning before its action",
    summary={"mean_thinking_tokens": "mean", "max_thinking_tokens": "max"},
    check=Check("thinking_tokens", "mean_thinking_tokens", higher_is_better=False, relative=True, tolerance=0.05,
                display="count"),
    plot=PlotSpec("mean_thinking_tokens", "thinking_tokens_vs_budget.png", "Thinking tokens vs KV budget",
                  "thinking tokens per step, mean"),
    columns=(TableColumn("mean_thinking_tokens", "think tok", 1.0, ".1f", 95),),
))
