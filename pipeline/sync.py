"""Fill MLflow later from the Parquet results (after a run that could not reach its tracking server)."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.config import parse_config
from pipeline.results import read_rows, run_metadata
from pipeline.summary import format_table, summarize
from pipeline.tracking import Tracker, git_commit, job_tags, resolve_tracking_uri


def run_dirs(output: str | Path) -> list[Path]:
    """Run folders (``<output>/<run_id>/`` holding config.json and rows/) under an output folder."""
    root = Path(output)
    if (root / "config.json").is_file():
        return [root]
    return sorted(p.parent for p in root.glob("*/config.json"))


def sync_output(output: str | Path, tracking_uri: str | None = None, echo=print) -> int:
    """Log every run found under ``output`` to MLflow (idempotent); returns how many runs were synced."""
    from pipeline.run import make_benchmark

    dirs = run_dirs(output)
    if not dirs:
        raise FileNotFoundError(f"no run folders (with config.json) under {output}")
    synced = 0
    for run_dir in dirs:
        cfg = parse_config(json.loads((run_dir / "config.json").read_text()))
        run_id = run_dir.name
        table = read_rows(run_dir / "rows")
        benchmark = make_benchmark(cfg)
        summaries = summarize(table, benchmark)
        text = format_table(summaries)
        uri = resolve_tracking_uri(tracking_uri, cfg.tracking.uri, run_dir.parent)
        tracker = Tracker(uri, cfg.tracking.experiment)
        commit = run_metadata(run_dir / "rows").get("git_commit") or git_commit()  # the code that ran
        tags = job_tags(cfg, commit)
        parent = tracker.log_job(run_id=run_id, job={**cfg.to_dict(), "run_id": run_id}, summaries=summaries,
                                 tags=tags, table_text=text)
        if tracker.ok:
            synced += 1
            echo(f"[starkv-eval] synced {run_id}: {len(summaries)} units -> {uri} (parent {parent})")
        else:
            echo(f"[starkv-eval] could not sync {run_id}: {tracker.error}")
    return synced
