"""The Parquet result store: rows of several files read as one table; a step written twice is refused."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.evaluate import rows_to_table
from pipeline.results import read_rows
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


def test_a_step_written_twice_is_refused_naming_store_and_step(tmp_path):
    rows_dir = tmp_path / "rows"
    write_part(rows_dir, "part-0.parquet", [0, 1])
    write_part(rows_dir, "part-1.parquet", [1])  # e.g. an episode run again by a second writer
    with pytest.raises(RuntimeError, match="duplicate steps") as err:
        read_rows(rows_dir)
    assert str(rows_dir) in str(err.value) and "snapkv@20/ep0/1" in str(err.value)
    assert "snapkv@20/ep0/0" not in str(err.value)
