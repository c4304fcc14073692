"""The nightly gate's verdict as an MLflow run (``starkv.kind=regression``), beside the runs it compared."""

from __future__ import annotations

import warnings

from pipeline.results.regression import RegressionReport


def log_regression(report: RegressionReport, uri: str, experiment: str,
                   tags: dict[str, str] | None = None) -> str | None:
    """Log the comparison as a run tagged ``starkv.kind=regression``; on any failure warn and return None."""
    if not uri:
        return None
    try:
        from mlflow.entities import Metric, Param, RunTag

        from pipeline.tracking.client import mlflow_client

        client = mlflow_client(uri)
        exp = client.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
        run = client.create_run(exp_id, run_name=f"regress {report.current}"[:250],
                                tags={"starkv.kind": "regression", **(tags or {})})
        rid = run.info.run_id
        import time

        now = int(time.time() * 1000)
        metrics = {"regressions": len(report.regressions), "improvements": len(report.improvements),
                   "comparisons": len(report.rows)}
        params = {"baseline": report.baseline, "current": report.current,
                  **{f"tolerance.{k}": str(v) for k, v in report.tolerances.items()}}
        client.log_batch(rid, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
                         params=[Param(k[:250], str(v)[:500]) for k, v in params.items()],
                         tags=[RunTag("starkv.regression_status", "REGRESSION" if report.regressions else "OK")])
        client.log_text(rid, report.format_table() + "\n", "regression_table.txt")
        client.log_dict(rid, report.to_dict(), "regression.json")
        client.set_terminated(rid, "FINISHED" if not report.regressions else "FAILED")
        return rid
    except Exception as err:  # noqa: BLE001 - MLflow is a record, never the gate itself
        warnings.warn(f"MLflow at {uri} unreachable or failing ({type(err).__name__}: {err}); "
                      "the regression result above stands", stacklevel=2)
        return None
