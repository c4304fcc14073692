"""A local MLflow store that survives a move: re-point its artifact URIs at the folder it now sits in.

MLflow records artifact locations as absolute URIs. The embedded default keeps them beside the sqlite file
(``<output>/mlartifacts``); after the output folder is moved or copied to another machine those URIs name
the old place and the UI answers 404. ``relocate_local_store`` rewrites the recorded prefix to the store's
current folder (only for locations this project chose, i.e. ending in ``/mlartifacts``); ``starkv-eval
sync <output>`` and every ``starkv-eval run`` call it before touching the store.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

# (table, column) pairs of MLflow's sqlite schema that hold artifact URIs
_URI_COLUMNS = (("experiments", "artifact_location"), ("runs", "artifact_uri"), ("logged_models", "artifact_location"))


def artifact_root(db_path: Path) -> str:
    return (db_path.resolve().parent / "mlartifacts").as_uri()


def relocate_local_store(uri: str) -> list[str]:
    """Rewrite stale ``.../mlartifacts`` prefixes of a sqlite store to its folder; returns the old prefixes."""
    if not uri.startswith("sqlite:///"):
        return []
    db = Path(uri[len("sqlite:///"):])
    if not db.is_file():
        return []
    new = artifact_root(db)
    with sqlite3.connect(db) as con:
        tables = {r[0] for r in con.execute("select name from sqlite_master where type='table'")}
        if "experiments" not in tables:
            return []
        old = sorted({loc for (loc,) in con.execute("select artifact_location from experiments")
                      if loc and loc.startswith("file://") and loc.rstrip("/").endswith("/mlartifacts")
                      and loc.rstrip("/") != new})
        for prefix in (p.rstrip("/") for p in old):
            n = len(prefix)
            for table, column in _URI_COLUMNS:
                if table in tables:  # the prefix itself, or the prefix followed by a path
                    con.execute(f"update {table} set {column} = ? || substr({column}, ?) "  # noqa: S608
                                f"where substr({column}, 1, ?) = ? and "
                                f"(length({column}) = ? or substr({column}, ?, 1) = '/')",
                                (new, n + 1, n, prefix, n, n + 1))
    return old
