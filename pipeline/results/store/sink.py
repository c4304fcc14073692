"""The Ray Data datasink that streams step rows to the store as the actors finish episodes."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ray.data import Datasink
from ray.data.block import BlockAccessor

from pipeline.results.store.fs import Store
from pipeline.results.store.rowfiles import write_episode_files


class EpisodeRowSink(Datasink[int]):
    """Writes each incoming block's rows as one file per (unit, episode) (see ``rowfiles``).

    Runs in Ray workers, block by block, so rows reach storage while the rest of the run is still going;
    a retried write task rewrites the same names with the same rows.
    """

    def __init__(self, store: Store, rows_rel: str) -> None:
        self.store, self.rows_rel = store, rows_rel

    def get_name(self) -> str:
        return "EpisodeRows"

    def write(self, blocks: Iterable[Any], ctx: Any) -> int:
        files = 0
        for block in blocks:
            table = BlockAccessor.for_block(block).to_arrow()
            files += len(write_episode_files(self.store, self.rows_rel, table))
        return files
