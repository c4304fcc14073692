"""The Parquet result store: one row per step, keyed so a rerun can skip finished work."""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger(__name__)


def rows_dir(output_dir: str | Path, run_id: str) -> Path:
    return Path(output_dir) / run_id / "rows"


def _parquet_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*.parquet") if p.is_file()) if directory.exists() else []


def drop_unreadable(directory: Path) -> list[Path]:
    """Remove Parquet files a killed writer left truncated, so their episodes are simply run again."""
    removed = []
    for path in _parquet_files(directory):
        try:
            pq.read_metadata(path)
        except Exception:  # truncated or empty file
            log.warning("removing unreadable partial result file %s", path)
            path.unlink()
            removed.append(path)
    return removed


def read_rows(directory: str | Path, columns: list[str] | None = None) -> pa.Table:
    """All rows written so far (empty table if none); raises if a step was written twice."""
    files = _parquet_files(Path(directory))
    if not files:
        return pa.table({})
    tables = [pq.read_table(f, columns=columns) for f in files]
    table = pa.concat_tables(tables, promote_options="permissive")
    if "step_key" in table.column_names:
        keys = table.column("step_key").to_pylist()
        if len(keys) != len(set(keys)):
            dup = sorted({k for k in keys if keys.count(k) > 1})[:5]
            raise RuntimeError(f"result store {directory} holds duplicate steps, e.g. {dup}")
    return table


def run_metadata(directory: str | Path) -> dict[str, str]:
    """The run's Parquet metadata (run id, git commit, config) as the actors wrote it; {} if no rows yet."""
    for path in _parquet_files(Path(directory)):
        meta = pq.read_schema(path).metadata or {}
        return {k.decode(): v.decode() for k, v in meta.items() if not k.startswith(b"ARROW")}
    return {}


def finished_units(directory: str | Path) -> set[tuple[str, str]]:
    """(unit_key, episode_id) pairs whose rows are already on disk."""
    table = read_rows(directory, columns=["unit_key", "episode_id"])
    if table.num_rows == 0:
        return set()
    return set(zip(table.column("unit_key").to_pylist(), table.column("episode_id").to_pylist()))
