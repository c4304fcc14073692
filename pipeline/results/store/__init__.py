"""The result store: where a run's rows, config, summary and lease live, local or on object storage.

``open_store`` turns an ``output:`` location (a local path, ``file://``, ``s3://``, ``gs://`` or any other
fsspec URL) into a ``Store``; ``rowfiles`` writes one Parquet file per (unit, episode) under a deterministic
name and reads them back healing identical duplicates; ``sink`` is the Ray Data datasink that streams rows
there; ``lease`` keeps a run folder to one writer at a time.
"""

from pipeline.results.store.errors import LeaseCorrupt, LeaseHeld, StoreError
from pipeline.results.store.fs import Store, is_url, open_store

__all__ = ["LeaseCorrupt", "LeaseHeld", "Store", "StoreError", "is_url", "open_store"]
