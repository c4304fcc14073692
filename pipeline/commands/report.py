"""``starkv-eval report``: budget-sweep plots of one run, written as PNG and attached to its MLflow job run.

Plots: accuracy vs budget, kept KV bytes vs budget, peak memory vs budget, one line per compressor, and
``overview.png`` with the three side by side.
Files go to ``--out`` (default ``<run folder>/report``, or ``./reports/<run id>`` for a run given by id) and
are logged under ``report/`` to the job's parent run (found by tag ``starkv.run_id``); a missing or
unreachable MLflow only warns.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

from pipeline.results.plots import write_job_figures
from pipeline.results.regression import RegressionInputError
from pipeline.tracking.client import mlflow_client
from pipeline.tracking.sources import ResolvedRun, find_parent_run, resolve_run, sqlite_missing


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "report", help="accuracy/memory vs budget plots of a run, as PNG files and MLflow artifacts",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run folder, output folder (its only run, or the newest) or run id")
    p.add_argument("--tracking-uri", help="MLflow URI (default: the run's store, as `starkv-eval run` chose it)")
    p.add_argument("--out", help="folder for the PNG files (default: <run folder>/report)")
    p.set_defaults(func=run)


def attach_to_mlflow(run: ResolvedRun, files: list[Path], uri: str) -> str | None:
    """Log ``files`` under ``report/`` to the job's parent run; returns its MLflow id (None: warned)."""
    if sqlite_missing(uri):
        warnings.warn(f"no MLflow store at {uri}; plots not attached (run `starkv-eval sync <output>` first)",
                      stacklevel=2)
        return None
    try:
        client = mlflow_client(uri)
        parent = None
        if run.mlflow_parent_id:
            parent = client.get_run(run.mlflow_parent_id)
        elif run.run_id:
            parent = find_parent_run(client, run.run_id, run.experiment) or find_parent_run(client, run.run_id)
        if parent is None:
            warnings.warn(f"no MLflow job run tagged starkv.run_id={run.run_id} at {uri}; plots not attached "
                          "(run `starkv-eval sync <output>` first)", stacklevel=2)
            return None
        for f in files:
            client.log_artifact(parent.info.run_id, str(f), "report")
        return parent.info.run_id
    except Exception as err:  # noqa: BLE001 - the PNG files are the result; MLflow is a copy
        warnings.warn(f"MLflow at {uri} unreachable or failing ({type(err).__name__}: {err}); plots not attached",
                      stacklevel=2)
        return None


def run(args: argparse.Namespace) -> int:
    try:
        target = resolve_run(args.run, args.tracking_uri)
    except RegressionInputError as err:
        print(f"starkv-eval report: {err}", file=sys.stderr)
        return 2
    if target.kind == "expected":
        print(f"starkv-eval report: {args.run} is a file of expected values, not a run", file=sys.stderr)
        return 2
    for note in target.notes:
        print(f"[starkv-eval] note: {note}")
    if args.out:
        out = Path(args.out)
    elif isinstance(target.run_dir, Path):
        out = target.run_dir / "report"
    else:
        out = Path.cwd() / "reports" / str(target.run_id)
    config = target.config or {}
    model = (config.get("model") or {}).get("path", "")
    bench = (config.get("benchmark") or {}).get("name", "")
    subtitle = " · ".join(x for x in (f"run {target.run_id}", bench, f"model {model}" if model else "") if x)
    files = write_job_figures(target.units, out, subtitle=subtitle, mem_device=target.mem_device)
    if not files:
        print(f"starkv-eval report: {args.run}: no unit has the plotted metrics", file=sys.stderr)
        return 2
    for f in files:
        print(f"[starkv-eval] wrote {f}")
    uri = args.tracking_uri or target.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    parent = attach_to_mlflow(target, files, uri) if uri else None
    if parent:
        print(f"[starkv-eval] attached to MLflow run {parent} under report/ ({uri})")
    return 0
