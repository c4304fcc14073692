"""The row of one step: its Arrow schema and a fresh row, both built from the metric registry."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

from pipeline.metrics.registry import COLUMNS
from pipeline.metrics.units import Unit

if TYPE_CHECKING:
    import pyarrow as pa

    from pipeline.benchmarks.common.base import Episode, Step


def row_schema() -> pa.Schema:
    """The Arrow schema of a step row: every registered column, in registration order."""
    import pyarrow as pa

    types = {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64(), "bool": pa.bool_()}
    return pa.schema([(m.name, types[m.dtype]) for m in COLUMNS])


def new_row(episode: Episode, step: Step, unit: Unit, mode: str) -> dict[str, Any]:
    """A step's row before it runs: identity columns set, every measure at its declared default."""
    row = {m.name: m.default for m in COLUMNS}
    row.update(
        run_id=unit.run_id, benchmark=episode.benchmark, episode_id=episode.episode_id,
        step_index=int(step.step_index), compressor=unit.compressor, budget=float(unit.budget), model=unit.model,
        unit_key=unit.key, step_key=f"{unit.key}/{episode.episode_id}/{step.step_index}",
        meta_json=json.dumps(step.meta, default=str), actor_pid=os.getpid(), mode=mode,
    )
    return row


def rows_to_table(rows: list[dict[str, Any]], metadata: dict[str, str] | None = None) -> pa.Table:
    """Rows -> an Arrow table with one fixed schema (so every Parquet file of a run agrees)."""
    import pyarrow as pa

    schema = row_schema()
    table = pa.Table.from_pylist(rows, schema=schema) if rows else schema.empty_table()
    return table.replace_schema_metadata({**(metadata or {})}) if metadata else table
