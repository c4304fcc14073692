"""The Parquet result store: one row per step, keyed so a rerun can skip finished work.

A rows folder is a local path or a URL (``s3://...``); the files, their names and the healing of
duplicates are ``pipeline.results.store``'s job. Every function here raises ``StoreError`` (one line) on a store
problem.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import pyarrow as pa

from pipeline.results.store import Store, is_url, open_store
from pipeline.results.store.rowfiles import StoreRead, drop_unreadable_files, read_store_rows

log = logging.getLogger(__name__)


def rows_dir(output_dir: str | Path, run_id: str) -> Path | str:
    """``<output>/<run_id>/rows`` (a ``Path`` for a local output, a URL string for object storage)."""
    if is_url(output_dir) and not str(output_dir).startswith("file://"):
        return f"{str(output_dir).rstrip('/')}/{run_id}/rows"
    return Path(str(output_dir)[len("file://"):] if is_url(output_dir) else output_dir) / run_id / "rows"


def _store(directory: str | os.PathLike) -> Store:
    return open_store(directory if isinstance(directory, str) else str(directory))


def drop_unreadable(directory: str | Path) -> list[str]:
    """Remove Parquet files a killed writer of an older version left truncated (their episodes rerun)."""
    removed = drop_unreadable_files(_store(directory), "")
    for path in removed:
        log.warning("removed unreadable partial result file %s", path)
    return removed


def read_store(directory: str | Path, columns: list[str] | None = None) -> StoreRead:
    """All rows written so far with one copy per step, and a note if identical duplicates were dropped."""
    store = _store(directory)
    read = read_store_rows(store, "", columns)
    note = read.heal_note(store.where())
    if note:
        log.warning("%s", note)
        warnings.warn(note, UserWarning, stacklevel=3)
    return read


def read_rows(directory: str | Path, columns: list[str] | None = None) -> pa.Table:
    """All rows written so far (empty table if none); conflicting copies of a step raise ``StoreError``."""
    return read_store(directory, columns).table


def run_metadata(directory: str | Path) -> dict[str, str]:
    """The run's Parquet metadata (run id, git commit, config) as the actors wrote it; {} if no rows yet."""
    store = _store(directory)
    for rel in store.list_files("", ".parquet"):
        import pyarrow.parquet as pq

        data = store.read_bytes(rel)
        if data is None:
            continue
        try:
            meta = pq.read_schema(pa.BufferReader(data)).metadata or {}
        except Exception:  # noqa: BLE001 - a truncated file has no schema; try the next one
            continue
        return {k.decode(): v.decode() for k, v in meta.items() if not k.startswith(b"ARROW")}
    return {}


def finished_units(directory: str | Path) -> set[tuple[str, str]]:
    """(unit_key, episode_id) pairs whose rows are already stored."""
    table = read_rows(directory, columns=["unit_key", "episode_id"])
    if table.num_rows == 0:
        return set()
    return set(zip(table.column("unit_key").to_pylist(), table.column("episode_id").to_pylist()))
