"""Step rows on a store: one Parquet file per (unit, episode) under a deterministic name, read back healed.

The name is a function of the rows' ``unit_key`` and ``episode_id`` only, so a retried task or a second
writer of the same episode replaces the file instead of adding a copy. Stores written before that (one file
per Ray write task) or folders copied into each other can still hold a step twice: reading keeps one copy
when the copies agree on every result column (timings, memory and pids are measurements and may differ)
and fails naming both files when they do not.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from urllib.parse import quote

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.results.store.errors import StoreError
from pipeline.results.store.fs import Store

# what the agent did and how it was scored: two copies of a step must agree on these to be "identical"
RESULT_COLUMNS = ("run_id", "benchmark", "episode_id", "step_index", "compressor", "budget", "model", "unit_key",
                  "step_key", "prediction", "action_type", "raw_output", "correct", "score", "reason",
                  "prompt_tokens", "kept_tokens", "generated_tokens", "num_images", "kv_bytes", "kv_bytes_full",
                  "error")
MAX_NAME = 180


def row_file_name(unit_key: str, episode_id: str) -> str:
    """``<unit>+<episode>.parquet`` with both parts %-escaped (long episode ids shortened by a hash)."""
    unit, episode = quote(unit_key, safe="@=.-_,"), quote(str(episode_id), safe="@=.-_,")
    name = f"{unit}+{episode}.parquet"
    if len(name) > MAX_NAME:
        name = f"{unit[:80]}+{episode[:60]}-{hashlib.sha1(str(episode_id).encode()).hexdigest()[:16]}.parquet"
    return name


def parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def write_episode_files(store: Store, rows_rel: str, table: pa.Table) -> list[str]:
    """Write ``table``'s rows as one file per (unit, episode), each atomically; returns the names written."""
    if table.num_rows == 0:
        return []
    units, episodes = table.column("unit_key").to_pylist(), table.column("episode_id").to_pylist()
    groups: dict[tuple[str, str], list[int]] = {}
    for i, key in enumerate(zip(units, episodes)):
        groups.setdefault(key, []).append(i)
    written = []
    for (unit, episode), idx in groups.items():
        part = table.take(pa.array(idx))
        part = part.sort_by([("step_index", "ascending")]) if "step_index" in part.column_names else part
        name = row_file_name(unit, episode)
        store.write_atomic(f"{rows_rel}/{name}", parquet_bytes(part))
        written.append(name)
    return written


@dataclass
class StoreRead:
    """The rows of a store with one copy per step, and what reading had to heal."""

    table: pa.Table
    files: list[str] = field(default_factory=list)
    duplicates: int = 0  # steps found more than once (identical copies, one kept)
    duplicate_files: list[str] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)  # first file's schema metadata

    def heal_note(self, where: str) -> str:
        if not self.duplicates:
            return ""
        shown = ", ".join(self.duplicate_files[:4]) + (" ..." if len(self.duplicate_files) > 4 else "")
        return (f"result store {where}: {self.duplicates} steps were stored more than once with identical results "
                f"(in {shown}); kept one copy of each")


def _canonical(rel: str, table: pa.Table) -> bool:
    """Whether the file is named after its own (unit, episode) rows (files of this writer come first)."""
    if table.num_rows == 0 or "unit_key" not in table.column_names:
        return False
    return rel.rsplit("/", 1)[-1] == row_file_name(table.column("unit_key")[0].as_py(),
                                                  table.column("episode_id")[0].as_py())


def read_store_rows(store: Store, rows_rel: str, columns: list[str] | None = None) -> StoreRead:
    """Every step once; identical duplicates dropped (counted), conflicting ones a ``StoreError``."""
    files = store.list_files(rows_rel, ".parquet")
    if not files:
        return StoreRead(pa.table({}))
    blobs = store.read_many(files)
    tables: list[tuple[str, pa.Table]] = []
    for rel in files:
        try:
            tables.append((rel, pq.read_table(pa.BufferReader(blobs[rel]))))
        except Exception as err:  # noqa: BLE001 - truncated or foreign file
            raise StoreError(f"{store.where(rel)} is not a readable Parquet file ({type(err).__name__}: {err}); "
                             "delete it (its episodes are run again by `starkv-eval run`)") from None
    tables.sort(key=lambda ft: (not _canonical(*ft), ft[0]))
    meta = {k.decode(): v.decode() for k, v in (tables[0][1].schema.metadata or {}).items()
            if not k.startswith(b"ARROW")}
    result = StoreRead(pa.table({}), files=files, metadata=meta)
    kept_parts: list[pa.Table] = []
    seen: dict[str, tuple[str, dict]] = {}
    dup_files: set[str] = set()
    for rel, table in tables:
        if "step_key" not in table.column_names:
            kept_parts.append(table)
            continue
        check = [c for c in RESULT_COLUMNS if c in table.column_names]
        values = table.select(check).to_pylist()
        keep = []
        for row in values:
            key = row["step_key"]
            if key not in seen:
                seen[key] = (rel, row)
                keep.append(True)
                continue
            first_rel, first = seen[key]
            diff = next((c for c in check if c in first and first[c] != row[c]), None)
            if diff is not None:
                raise StoreError(
                    f"result store {store.where(rows_rel)}: step {key} has conflicting copies in "
                    f"{store.where(first_rel)} and {store.where(rel)} ({diff}: {first[diff]!r} vs {row[diff]!r}); "
                    "keep the file of the run you trust and delete the other")
            result.duplicates += 1
            dup_files.update((first_rel, rel))
            keep.append(False)
        kept_parts.append(table.filter(pa.array(keep, pa.bool_())) if not all(keep) else table)
    result.duplicate_files = [store.where(r) for r in sorted(dup_files)]
    table = pa.concat_tables([t.replace_schema_metadata(None) for t in kept_parts], promote_options="permissive")
    if columns is not None:
        table = table.select([c for c in columns if c in table.column_names])
    result.table = table
    return result


def drop_unreadable_files(store: Store, rows_rel: str) -> list[str]:
    """Remove Parquet files without a complete footer (left by writers of older versions killed mid-file).

    Files of this writer never appear half-written (temp + rename, or one PUT); its leftover temp files
    are removed too. On object storage an object exists whole or not at all, so nothing is read there.
    """
    removed = store.remove_temp_files(rows_rel)
    if not store.local:
        return removed
    files = store.list_files(rows_rel, ".parquet")
    for rel, data in store.read_many(files).items():
        try:
            pq.read_metadata(pa.BufferReader(data))
        except Exception:  # noqa: BLE001 - truncated or empty file
            store.delete(rel)
            removed.append(store.where(rel))
    return removed


def heal_files(store: Store, rows_rel: str) -> StoreRead:
    """Rewrite a store that holds identical duplicates as one file per (unit, episode); the caller holds the lease.

    New files are written before any old one is deleted, so a crash half way leaves identical duplicates
    (read as one copy), never a lost step. Returns what was read (``duplicates`` > 0 if anything was healed).
    """
    read = read_store_rows(store, rows_rel)
    if not read.duplicates:
        return read
    meta = {k.encode(): v.encode() for k, v in read.metadata.items()}
    written = set(write_episode_files(store, rows_rel, read.table.replace_schema_metadata(meta or None)))
    for rel in read.files:
        if (rel[len(rows_rel) + 1:] if rows_rel else rel) not in written:
            store.delete(rel)
    return read
