"""``starkv-eval regress``: the nightly gate, current run vs a baseline, per unit and metric.

Exit codes: 0 no regression, 1 at least one regression (or a baseline unit missing from the current run),
2 bad input (missing path, unknown run id, bad tolerances). The comparison rules are in
``pipeline.results.regression``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from pipeline.results.regression import (
    RegressionInputError,
    RegressionReport,
    compare,
    load_tolerances,
    resolve_tolerances,
    size_mismatches,
)
from pipeline.results.store import is_url
from pipeline.tracking.regression_log import log_regression
from pipeline.tracking.sources import ResolvedRun, resolve_run

INPUTS = ("run id (starkv run id or MLflow parent run id), Parquet rows folder or file, run folder, output folder "
          "(its only run, or the newest of several), or a YAML/JSON file of expected values "
          "{units: [{compressor, budget, accuracy, ...}]}")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "regress", help="compare a run with a baseline against per-metric tolerances (exit 1 on regression)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", required=True, help=f"the reference: {INPUTS}")
    p.add_argument("--current", required=True, help="the run to judge (same forms as --baseline)")
    p.add_argument("--tracking-uri", help="MLflow URI for run ids and for logging the comparison (default: "
                   "the current run's store as `starkv-eval run` chose it, else MLFLOW_TRACKING_URI)")
    p.add_argument("--tolerances", help="YAML of check -> tolerance (accuracy, peak_memory, kv_bytes, throughput, "
                   "errors; null disables), or a job YAML (its regression: section). Default: the current run's "
                   "regression: section, else built-in defaults")
    p.add_argument("--json", action="store_true", help="print the comparison as JSON instead of a table")
    p.set_defaults(func=run)


def _is_path(spec: str) -> bool:
    return is_url(spec) or Path(spec).expanduser().exists()


def resolve_sides(baseline: str, current: str, tracking_uri: str | None) -> tuple[ResolvedRun, ResolvedRun]:
    """Resolve the path side first so a run id on the other side is looked up in that run's MLflow store."""
    if _is_path(current) or not _is_path(baseline):
        cur = resolve_run(current, tracking_uri)
        base = resolve_run(baseline, tracking_uri, default_uri=cur.tracking_uri)
    else:
        base = resolve_run(baseline, tracking_uri)
        cur = resolve_run(current, tracking_uri, default_uri=base.tracking_uri)
    return base, cur


def _unit_rows(side: ResolvedRun) -> dict[str, list[dict]] | None:
    """A run's step rows by unit label, where the run has readable rows (a run folder); else None."""
    from pipeline.metrics.units import unit_label
    from pipeline.results.parquet import read_rows

    if side.rows_dir is None:
        return None
    try:
        rows = read_rows(side.rows_dir, columns=["compressor", "budget", "episode_id", "step_index", "correct", "error"])
    except Exception:  # noqa: BLE001 - no rows here (summary.json only): the gate uses tolerances alone
        return None
    out: dict[str, list[dict]] = {}
    for r in rows.to_pylist():
        out.setdefault(unit_label(r["compressor"], r["budget"]), []).append(r)
    return out


def _samples(base: ResolvedRun, cur: ResolvedRun) -> dict | None:
    """Both sides' rows per unit, for the accuracy check's noise test (paired on the same steps)."""
    b, c = _unit_rows(base), _unit_rows(cur)
    if b is None or c is None:
        return None
    return {unit: (b[unit], c[unit]) for unit in b.keys() & c.keys()}


def regress(baseline: str, current: str, tracking_uri: str | None = None,
            tolerances: str | None = None) -> tuple[RegressionReport, ResolvedRun]:
    """Compare without printing or logging (raises ``RegressionInputError`` on bad input)."""
    override = load_tolerances(tolerances) if tolerances else None
    base, cur = resolve_sides(baseline, current, tracking_uri)
    tol = resolve_tolerances(override, cur.regression_section)
    report = RegressionReport(baseline=base.describe(), current=cur.describe(), tolerances=tol,
                              rows=compare(base.units, cur.units, tol, samples=_samples(base, cur)),
                              notes=[*base.notes, *cur.notes, *size_mismatches(base.units, cur.units)])
    return report, cur


def run(args: argparse.Namespace) -> int:
    try:
        report, cur = regress(args.baseline, args.current, args.tracking_uri, args.tolerances)
    except RegressionInputError as err:
        print(f"starkv-eval regress: {err}", file=sys.stderr)
        return 2
    uri = args.tracking_uri or cur.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    tags = {"starkv.current": str(cur.run_id or args.current), "starkv.baseline": args.baseline}
    mlflow_id = log_regression(report, uri, cur.experiment, tags) if uri else None
    if args.json:
        print(json.dumps({**report.to_dict(), "mlflow_run_id": mlflow_id, "tracking_uri": uri}, indent=2))
    else:
        print(report.format_table())
        if mlflow_id:
            print(f"[starkv-eval] comparison logged to MLflow {uri} (experiment '{cur.experiment}', run {mlflow_id})")
    return 1 if report.regressions else 0
