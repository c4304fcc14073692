"""Do two runs of one job give the same rows? Compares every deterministic column, step by step.

    python tests/tools/same_rows.py OUTPUT_OR_RUN_DIR_A OUTPUT_OR_RUN_DIR_B
    python tests/tools/same_rows.py --golden OUTPUT_OR_RUN_DIR FILE.json   # fingerprints for a golden test

Deterministic columns are all but the wall-clock times, the process-level peak (RSS or CUDA allocator,
which depend on what else the process did) and the actor's pid. Exit 0 when the rows agree, 1 otherwise
(the first differences are printed).
"""

from __future__ import annotations

import sys
from pathlib import Path

#: columns that legitimately differ between two runs of the same job on the same commit
VOLATILE = ("prefill_s", "decode_s", "compress_s", "peak_mem_bytes", "actor_pid")


def rows_of(path: str | Path) -> dict[str, dict]:
    """Step rows of a run (its folder, its rows folder, or an output folder with one run) by ``step_key``."""
    from pipeline.results.parquet import read_rows

    path = Path(path)
    if (path / "rows").is_dir():
        path = path / "rows"
    elif not any(path.glob("*.parquet")):
        runs = [p / "rows" for p in path.iterdir() if (p / "rows").is_dir()]
        if len(runs) != 1:
            raise SystemExit(f"{path}: expected one run folder, found {len(runs)}")
        path = runs[0]
    return {r["step_key"]: r for r in read_rows(path).to_pylist()}


def differences(a: dict[str, dict], b: dict[str, dict]) -> list[str]:
    """Human-readable differences in the deterministic columns (empty when the runs agree)."""
    out = [f"step {k} only in the first run" for k in sorted(set(a) - set(b))]
    out += [f"step {k} only in the second run" for k in sorted(set(b) - set(a))]
    for key in sorted(set(a) & set(b)):
        for col in sorted(set(a[key]) | set(b[key])):
            if col in VOLATILE:
                continue
            if a[key].get(col) != b[key].get(col):
                out.append(f"{key} {col}: {a[key].get(col)!r} != {b[key].get(col)!r}")
    return out


def fingerprints(rows: dict[str, dict], columns: list[str] | None = None) -> dict[str, str]:
    """A digest of each step's deterministic columns (or of ``columns``: a golden file keeps the columns it
    was written with, so a column added later does not change it), by ``step_key``."""
    import hashlib
    import json

    out = {}
    for key, row in sorted(rows.items()):
        kept = {c: v for c, v in sorted(row.items())
                if c not in VOLATILE and c != "run_id" and (columns is None or c in columns)}
        out[key] = hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return out


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "--golden":  # write a golden file of a run's fingerprints
        import json

        rows = rows_of(argv[1])
        columns = sorted(c for c in next(iter(rows.values())) if c not in VOLATILE and c != "run_id")
        golden = {"columns": columns, "rows": fingerprints(rows, columns)}
        Path(argv[2]).write_text(json.dumps(golden, indent=0, sort_keys=True) + "\n")
        return 0
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    a, b = rows_of(argv[0]), rows_of(argv[1])
    diffs = differences(a, b)
    for line in diffs[:20]:
        print(line)
    print(f"{len(a)} and {len(b)} rows; {len(diffs)} differences in deterministic columns")
    return 0 if not diffs else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
