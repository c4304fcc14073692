"""The Parquet result store: rows of several files read as one table; identical copies of a step are read
once, conflicting copies are refused naming both files."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.metrics.rows import rows_to_table
from pipeline.results.parquet import read_rows
from tests.helpers_runs import step_row


def write_part(rows_dir: Path, name: str, steps: list[int]) -> None:
    rows_dir.mkdir(parents=True, exist_ok=True)
    pq.write_table(rows_to_table([step_row("run-1", "snapkv", 20.0, s) for s in steps], {}), rows_dir / name)


def test_rows_of_several_files_are_read_once_each(tmp_path):
    rows_dir = tmp_path / "rows"
    write_part(rows_dir, "part-0.parquet", [0, 1])
    write_part(rows_dir, "part-1.parquet", [2])
    table = read_rows(rows_dir)
    assert sorted(table.column("step_key").to_pylist()) == ["snapkv@20/ep0/0", "snapkv@20/ep0/1", "snapkv@20/ep0/2"]
    assert read_rows(tmp_path / "nothing-here").num_rows == 0


def test_identical_copies_of_a_step_are_read_once(tmp_path):
    from pipeline.results.parquet import read_store

    rows_dir = tmp_path / "rows"
    write_part(rows_dir, "part-0.parquet", [0, 1])
    write_part(rows_dir, "part-1.parquet", [1])  # e.g. an episode run again by a second writer
    read = read_store(rows_dir)
    assert sorted(read.table.column("step_key").to_pylist()) == ["snapkv@20/ep0/0", "snapkv@20/ep0/1"]
    assert read.duplicates == 1


def test_conflicting_copies_of_a_step_are_refused_naming_both_files(tmp_path):
    from pipeline.results.store.errors import StoreError

    rows_dir = tmp_path / "rows"
    write_part(rows_dir, "part-0.parquet", [0, 1])
    rows_dir.mkdir(parents=True, exist_ok=True)
    pq.write_table(rows_to_table([step_row("run-1", "snapkv", 20.0, 1, correct=True)], {}), rows_dir / "part-1.parquet")
    with pytest.raises(StoreError, match="conflicting copies") as err:
        read_rows(rows_dir)
    message = str(err.value)
    assert "snapkv@20/ep0/1" in message and "part-0.parquet" in message and "part-1.parquet" in message
    assert "snapkv@20/ep0/0" not in message
