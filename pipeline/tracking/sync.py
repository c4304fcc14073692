"""Fill MLflow later from the Parquet results (after a run that could not reach its tracking server)."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.config import parse_config
from pipeline.results.parquet import read_rows, run_metadata
from pipeline.results.plots import write_job_figures
from pipeline.results.store import Store, StoreError, open_store
from pipeline.results.summary import format_table, summarize
from pipeline.tracking.mlflow_runs import (
    Tracker,
    git_commit,
    job_tags,
    local_artifact_location,
    resolve_tracking_uri,
)
from pipeline.tracking.preflight import check_tracking_access
from pipeline.tracking.view import runs_page


def run_dirs(output: str | Path) -> list[Store]:
    """Run folders (``<output>/<run_id>/`` holding config.json and rows/) under an output folder or URL."""
    root = open_store(output if isinstance(output, str) else str(output))
    root.check()
    if root.exists("config.json"):
        return [root]
    return [root.sub(rel) for rel in root.list_dirs_with("config.json")]


def _config(run: Store) -> dict:
    try:
        return json.loads(run.read_bytes("config.json") or b"")
    except ValueError as err:
        raise StoreError(f"{run.where('config.json')}: not a job config ({err}); restore it from the Parquet "
                         "metadata or rerun the job") from None


def _figures(summaries, run_dir: Path, subtitle: str, mem_device: str, echo) -> list[Path]:
    if not summaries:
        return []
    try:
        return write_job_figures(summaries, run_dir / "report", subtitle, mem_device)
    except Exception as err:  # noqa: BLE001 - figures are a view of the rows, never a reason to fail
        echo(f"[starkv-eval] WARNING: plots not drawn ({type(err).__name__}: {err})")
        return []


def sync_output(output: str | Path, tracking_uri: str | None = None, echo=print) -> int:
    """Log every run found under ``output`` to MLflow (idempotent); returns how many runs were synced."""
    from pipeline.config import make_benchmark

    runs = run_dirs(output)
    if not runs:
        raise FileNotFoundError(f"no run folders (with config.json) under {output}")
    synced = 0
    for run in runs:
        cfg = parse_config(_config(run))
        run_id = run.root.rstrip("/").rsplit("/", 1)[-1]
        home = Path(run.root).parent if run.local else run.mlflow_home()
        uri = resolve_tracking_uri(tracking_uri, cfg.tracking.uri, home)
        check_tracking_access(uri, cfg.tracking.experiment)  # refused credentials: one line, before the work
        rows = run.location("rows")
        table = read_rows(rows)
        benchmark = make_benchmark(cfg)
        summaries = summarize(table, benchmark)
        devices = sorted(set(table.column("mem_device").to_pylist())) if table.num_rows else []
        mem_device = ", ".join(d for d in devices if d)
        text = format_table(summaries, mem_device)
        # the figures are a view of the rows: drawn again, so a store rebuilt elsewhere is complete; a run on
        # object storage gets them in ./reports/<run id> (as `report` does)
        run_dir = Path(run.root) if run.local else Path("reports") / run_id
        figures = _figures(summaries, run_dir, f"run {run_id} · {cfg.benchmark.name} · model {cfg.model.path}",
                           mem_device, echo)
        extra = [p for p in (run_dir / "summary.json",) if p.is_file()]
        tracker = Tracker(uri, cfg.tracking.experiment)
        meta = run_metadata(rows)
        commit = meta.get("git_commit") or git_commit()  # the code that ran
        revision = meta.get("model_revision")  # the commit a hub model.path resolved to
        tags = job_tags(cfg, commit, model_revision=revision)
        job = {**cfg.to_dict(), "run_id": run_id, **({"_model_commit": revision} if revision else {})}
        parent = tracker.log_job(run_id=run_id, job=job, summaries=summaries,
                                 tags=tags, table_text=text, artifacts=[*extra, *figures], rows=table)
        for old in tracker.relocated:
            echo(f"[starkv-eval] store moved: artifact URIs {old} -> {local_artifact_location(uri)}")
        if tracker.ok:
            synced += 1
            echo(f"[starkv-eval] synced {run_id}: {len(summaries)} units -> {uri} (parent {parent}); in "
                 f"`mlflow ui` open {runs_page(tracker.experiment_id, run_id)}")
        else:
            echo(f"[starkv-eval] could not sync {run_id}: {tracker.error}")
    return synced
