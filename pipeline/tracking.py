"""MLflow tracking: one parent run per job, one child per (compressor, budget); never fatal to a run.

Runs are found again by tags (``starkv.run_id``, ``starkv.unit``), so a resumed job or a later
``starkv-eval sync`` updates the same runs instead of creating duplicates.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
import warnings
from pathlib import Path
from typing import Any

from pipeline.summary import UnitSummary

log = logging.getLogger(__name__)


def default_tracking_uri(output_dir: str | Path) -> str:
    """A local sqlite store inside the output folder (absolute, so Ray workers and jobs agree)."""
    path = Path(output_dir).resolve() / "mlflow.db"
    return f"sqlite:///{path}"


def resolve_tracking_uri(cli_uri: str | None, config_uri: str | None, output_dir: str | Path) -> str:
    return cli_uri or config_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(output_dir)


def local_artifact_location(uri: str) -> str | None:
    """Artifacts of a local sqlite store live beside it (``<folder>/mlartifacts``), not in the process cwd.

    MLflow's default is ``<cwd>/mlruns``, which for a ``ray job submit`` run is the job's temporary working
    directory: the artifacts would vanish with it. For a tracking server the server decides (None).
    """
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri[len("sqlite:///"):]).resolve().parent / "mlartifacts").as_uri()


def job_tags(cfg, commit: str) -> dict[str, str]:
    """Tags every run of a job carries, to filter and compare in the MLflow UI."""
    return {"job": cfg.name, "git_commit": commit, "benchmark": cfg.benchmark.name, "model": cfg.model.path,
            **cfg.tracking.tags}


def git_commit() -> str:
    """The code version: ``git rev-parse HEAD``, else ``STARKV_GIT_COMMIT`` (set at image build time)."""
    if os.environ.get("STARKV_GIT_COMMIT"):
        return os.environ["STARKV_GIT_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def _flatten(prefix: str, data: dict[str, Any]) -> dict[str, str]:
    out = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(_flatten(key, v))
        else:
            out[key] = str(v)[:500]
    return out


class Tracker:
    """Thin wrapper over the MLflow client; every failure becomes a warning and ``ok`` turns False."""

    def __init__(self, uri: str, experiment: str) -> None:
        self.uri = uri
        self.experiment = experiment
        self.ok = True
        self.error = ""
        self._client = None
        self._experiment_id = None

    def _fail(self, err: Exception) -> None:
        self.ok = False
        self.error = f"{type(err).__name__}: {err}"
        warnings.warn(f"MLflow at {self.uri} unreachable or failing ({self.error}); results are safe in "
                      f"Parquet, fill MLflow later with `starkv-eval sync <output>`", stacklevel=3)

    def _ensure(self):
        if self._client is None:
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
            from mlflow.tracking import MlflowClient

            client = MlflowClient(tracking_uri=self.uri)
            exp = client.get_experiment_by_name(self.experiment)
            self._experiment_id = exp.experiment_id if exp else client.create_experiment(
                self.experiment, artifact_location=local_artifact_location(self.uri))
            self._client = client
        return self._client

    def _find(self, filter_string: str):
        client = self._ensure()
        runs = client.search_runs([self._experiment_id], filter_string=filter_string, max_results=5)
        return runs[0] if runs else None

    def log_job(self, *, run_id: str, job: dict[str, Any], summaries: list[UnitSummary],
                tags: dict[str, str], table_text: str, artifacts: list[Path] = ()) -> str | None:
        """Create or update the parent and child runs; returns the parent MLflow run id (None on failure)."""
        if not self.ok:
            return None
        try:
            client = self._ensure()
            parent = self._find(f"tags.`starkv.run_id` = '{run_id}' and tags.`starkv.kind` = 'job'")
            if parent is None:
                parent = client.create_run(self._experiment_id, run_name=run_id,
                                           tags={**tags, "starkv.run_id": run_id, "starkv.kind": "job"})
            pid = parent.info.run_id
            existing_params = set(parent.data.params) if hasattr(parent, "data") else set()
            params = {k: v for k, v in _flatten("", job).items() if k not in existing_params}
            for chunk in _chunks(params, 90):
                client.log_batch(pid, params=[_param(k, v) for k, v in chunk.items()])
            for s in summaries:
                self._log_child(pid, run_id, job, s, tags)
            client.log_text(pid, table_text, "summary_table.txt")
            for path in artifacts:
                client.log_artifact(pid, str(path))
            client.set_terminated(pid, "FINISHED")
            return pid
        except Exception as err:  # noqa: BLE001 - tracking must never kill a run
            self._fail(err)
            return None

    def _log_child(self, parent_id: str, run_id: str, job: dict[str, Any], s: UnitSummary,
                   tags: dict[str, str]) -> None:
        client = self._client
        child = self._find(f"tags.`starkv.run_id` = '{run_id}' and tags.`starkv.unit` = '{s.key}'")
        if child is None:
            child_tags = {**tags, "mlflow.parentRunId": parent_id, "starkv.run_id": run_id, "starkv.kind": "unit",
                          "starkv.unit": s.key, "compressor": s.compressor, "budget": f"{s.budget:g}"}
            child = client.create_run(self._experiment_id, run_name=s.key, tags=child_tags)
            params = {"budget": f"{s.budget:g}", "compressor": s.compressor}
            params.update(compressor_params(job, s.compressor))
            params.update({"model": job["model"]["path"], "benchmark": job["benchmark"]["name"],
                           "git_commit": tags.get("git_commit", "unknown")})
            client.log_batch(child.info.run_id, params=[_param(k, v) for k, v in params.items()])
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, 0) for k, v in s.metrics.items()]
        for chunk in _chunks(dict(enumerate(metrics)), 500):
            client.log_batch(child.info.run_id, metrics=list(chunk.values()))
        client.set_terminated(child.info.run_id, "FINISHED")


def compressor_params(job: dict[str, Any], label: str) -> dict[str, str]:
    """Every field of the configured compressor, defaults included (so ablations show in MLflow)."""
    import starkv

    spec = next((c for c in job["compressors"] if (c.get("label") or c["name"]) == label), None)
    if spec is None:
        return {}
    params = starkv.build(spec["name"], **spec.get("params", {})).params()
    params["method"] = params.pop("compressor")
    return {k: str(v) for k, v in params.items()}


def _param(key: str, value: str):
    from mlflow.entities import Param

    return Param(key[:250], value)


def _chunks(items: dict, size: int):
    keys = list(items)
    for i in range(0, len(keys), size):
        yield {k: items[k] for k in keys[i:i + size]}
