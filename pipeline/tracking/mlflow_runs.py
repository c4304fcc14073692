"""MLflow tracking: one parent run per job, one child per (compressor, budget) and one per compressor (its
metrics over the budgets, step = budget); never fatal to a run.

Runs are found again by tags (``starkv.run_id``, ``starkv.unit``), so a resumed job or a later
``starkv-eval sync`` updates the same runs instead of creating duplicates.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.results.colours import compressor_colour
from pipeline.results.summary import UnitSummary
from pipeline.tracking.artifact_move import relocate_local_store
from pipeline.tracking.view import (
    COLOUR_TAG,
    COMPRESSOR_KIND,
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    NOTE_TAG,
    budget_text,
    child_metrics,
    child_note,
    compressor_note,
    compressor_points,
    job_params,
    parent_metrics,
    parent_note,
    run_mode,
    unit_slug,
    view_state,
    view_tag,
)
from starkv.storage import split_storage_tag

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


def job_tags(cfg, commit: str, model_revision: str | None = None) -> dict[str, str]:
    """Tags every run of a job carries, to filter and compare in the MLflow UI; ``model_revision`` is the
    commit sha a hub ``model.path`` resolved to (which weights ran, whatever branch was asked for)."""
    tags = {"job": cfg.name, "git_commit": commit, "benchmark": cfg.benchmark.name, "model": cfg.model.path}
    if model_revision:
        tags["model_revision"] = model_revision
    return {**tags, **cfg.tracking.tags}


def model_revision_params(job: dict[str, Any]) -> dict[str, str]:
    """``model_revision``: the resolved commit of a hub model (the driver puts it in the job as ``_model_commit``)."""
    return {"model_revision": str(job["_model_commit"])} if job.get("_model_commit") else {}


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


class Tracker:
    """Thin wrapper over the MLflow client; every failure becomes a warning and ``ok`` turns False."""

    def __init__(self, uri: str, experiment: str) -> None:
        self.uri = uri
        self.experiment = experiment
        self.ok = True
        self.error = ""
        self.relocated: list[str] = []
        self._client = None
        self._experiment_id = None

    @property
    def experiment_id(self) -> str | None:
        return self._experiment_id

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

            self.relocated = relocate_local_store(self.uri)  # a moved output folder: artifacts found again
            client = MlflowClient(tracking_uri=self.uri)
            exp = client.get_experiment_by_name(self.experiment)
            kind = {EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
            if exp is None:
                self._experiment_id = client.create_experiment(
                    self.experiment, artifact_location=local_artifact_location(self.uri), tags=kind)
            else:
                self._experiment_id = exp.experiment_id
                if EXPERIMENT_KIND_TAG not in exp.tags:  # a kind someone chose by hand stays
                    client.set_experiment_tag(self._experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
            self._client = client
        return self._client

    def _find(self, filter_string: str):
        client = self._ensure()
        runs = client.search_runs([self._experiment_id], filter_string=filter_string, max_results=5)
        return runs[0] if runs else None

    def log_job(self, *, run_id: str, job: dict[str, Any], summaries: list[UnitSummary],
                tags: dict[str, str], table_text: str, artifacts: list[Path] = (),
                rows: pa.Table | None = None) -> str | None:
        """Create or update the parent and child runs; returns the parent MLflow run id (None on failure).

        ``rows`` (the job's step rows) gives every child its own rows and figure as artifacts.
        """
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
            params = {k: v for k, v in {**job_params(job), **model_revision_params(job)}.items()
                      if k not in existing_params}
            for chunk in _chunks(params, 90):
                client.log_batch(pid, params=[_param(k, v) for k, v in chunk.items()])
            comparison = paired_comparison(rows)
            client.set_tag(pid, NOTE_TAG, parent_note(job, summaries, tags.get("git_commit", "unknown"), comparison))
            if comparison:
                client.log_text(pid, comparison, "paired_comparison.txt")
            _log_metrics(client, pid, parent_metrics(summaries))
            with tempfile.TemporaryDirectory(prefix="starkv-mlflow-") as tmp:
                for s in summaries:
                    self._log_child(pid, run_id, job, s, tags, rows, Path(tmp))
            for label, points in compressor_points(summaries).items():
                self._log_compressor(pid, run_id, job, label, points, tags)
            client.set_experiment_tag(self._experiment_id, view_tag(run_id),
                                      json.dumps(view_state(run_id), separators=(",", ":")))
            client.log_text(pid, table_text, "summary_table.txt")
            for path in artifacts:
                client.log_artifact(pid, str(path))
            if parent.info.status != "FINISHED":  # a re-sync keeps the run's first end time (its duration)
                client.set_terminated(pid, "FINISHED")
            return pid
        except Exception as err:  # noqa: BLE001 - tracking must never kill a run
            self._fail(err)
            return None

    def _log_child(self, parent_id: str, run_id: str, job: dict[str, Any], s: UnitSummary,
                   tags: dict[str, str], rows: pa.Table | None, tmp: Path) -> None:
        client = self._client
        settings = compressor_params(job, s.compressor)
        child = self._find(f"tags.`starkv.run_id` = '{run_id}' and tags.`starkv.unit` = '{s.key}'")
        if child is None:
            child_tags = {**tags, "mlflow.parentRunId": parent_id, "starkv.run_id": run_id, "starkv.kind": "unit",
                          "starkv.unit": s.key, "compressor": s.compressor, "budget": f"{s.budget:g}"}
            name, tag = split_storage_tag(s.compressor)  # snapkv@20%+int4, as the unit label orders them
            child = client.create_run(self._experiment_id, run_name=f"{name}@{budget_text(s.budget)}{tag}",
                                      tags=child_tags)
            params = {"budget": budget_text(s.budget), "compressor": s.compressor}
            params.update(settings)
            params.update({"model": job["model"]["path"], "benchmark": job["benchmark"]["name"],
                           "git_commit": tags.get("git_commit", "unknown"), "mode": run_mode(job),
                           **model_revision_params(job)})
            client.log_batch(child.info.run_id, params=[_param(k, v) for k, v in params.items()])
        cid = child.info.run_id
        client.set_tag(cid, COLOUR_TAG, compressor_colour(s.compressor))
        client.set_tag(cid, NOTE_TAG, child_note(job, s, settings))
        _log_metrics(client, cid, child_metrics(s))
        if rows is not None:
            for path in unit_artifacts(rows, s, tmp / s.key.replace("/", "_")):
                client.log_artifact(cid, str(path), "rows" if path.suffix == ".parquet" else None)
        if child.info.status != "FINISHED":
            client.set_terminated(cid, "FINISHED")


    def _log_compressor(self, parent_id: str, run_id: str, job: dict[str, Any], label: str,
                        points: dict[str, dict[int, float]], tags: dict[str, str]) -> None:
        """One run per compressor whose metrics have one point per budget (step = budget %).

        A top-level run (tag ``starkv.parent_run`` names the job's parent): MLflow's charts draw only the runs
        shown as table rows, and runs nested under a parent stay folded in a link's view.

        A re-log adds only the points the run lacks; a point whose value changed (a resumed job with more rows)
        cannot be overwritten in MLflow, so the run is then deleted and logged anew.
        """
        client = self._client
        found = f"tags.`starkv.run_id` = '{run_id}' and tags.`starkv.kind` = '{COMPRESSOR_KIND}'"
        run = self._find(f"{found} and tags.`starkv.compressor` = '{label}'")
        missing = points
        if run is not None:
            missing = _missing_points(client, run.info.run_id, points)
            if missing is None:
                client.delete_run(run.info.run_id)
                run, missing = None, points
        if run is None:
            run = client.create_run(self._experiment_id, run_name=f"{label} (by budget)", tags={
                **tags, "starkv.parent_run": parent_id, "starkv.run_id": run_id, "starkv.kind": COMPRESSOR_KIND,
                "starkv.compressor": label})
            client.log_batch(run.info.run_id, params=[_param("compressor", label)])
        rid = run.info.run_id
        client.set_tag(rid, COLOUR_TAG, compressor_colour(label))
        client.set_tag(rid, NOTE_TAG, compressor_note(label, job, points))
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, per in missing.items() for step, v in sorted(per.items())]
        for i in range(0, len(metrics), 500):
            client.log_batch(rid, metrics=metrics[i:i + 500])
        if run.info.status != "FINISHED":
            client.set_terminated(rid, "FINISHED")


def _missing_points(client, run_id: str, points: dict[str, dict[int, float]]) -> dict[str, dict[int, float]] | None:
    """The points of ``points`` the run's metric history lacks; None when the history holds a point that is not
    in ``points`` (another value at a step, or a step no longer there)."""
    missing: dict[str, dict[int, float]] = {}
    for key, per in points.items():
        have: dict[int, set[float]] = {}
        for m in client.get_metric_history(run_id, key):
            have.setdefault(m.step, set()).add(m.value)
        if any(step not in per or not all(_same(v, per[step]) for v in values) for step, values in have.items()):
            return None
        if rest := {step: v for step, v in per.items() if step not in have}:
            missing[key] = rest
    return missing


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def paired_comparison(rows: pa.Table | None, baseline: str = "full") -> str:
    """The run's paired comparison against ``baseline`` (``pipeline.results.compare``), or "" without rows
    or without that compressor."""
    from pipeline.results.compare import CompareInputError, compare_units, format_comparison

    if rows is None or rows.num_rows == 0:
        return ""
    try:
        comparisons = compare_units(rows.select(["compressor", "budget", "episode_id", "step_index", "correct",
                                                 "error"]).to_pylist(), baseline)
    except CompareInputError:
        return ""
    return format_comparison(comparisons) if comparisons else ""


def unit_artifacts(rows: pa.Table, s: UnitSummary, folder: Path) -> list[Path]:
    """The unit's own step rows (Parquet) and its per-step figure, written into ``folder``."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from pipeline.results.unit_plot import plot_unit

    mask = pc.and_(pc.equal(rows["compressor"], s.compressor), pc.equal(rows["budget"], float(s.budget)))
    mine = rows.filter(mask)
    folder.mkdir(parents=True, exist_ok=True)
    parquet = folder / f"{unit_slug(s)}.parquet"
    pq.write_table(mine, parquet)
    out = [parquet]
    try:
        figure = plot_unit(mine, s.compressor, s.budget, folder / "unit.png")
        if figure is not None:
            out.append(figure)
    except Exception as err:  # noqa: BLE001 - a figure is a view; the rows are what matters
        log.warning("unit figure of %s not drawn: %s: %s", s.key, type(err).__name__, err)
    return out


def _log_metrics(client, run_id: str, values: dict[str, float]) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(k, float(v), now, 0) for k, v in values.items()]
    for i in range(0, len(metrics), 500):
        client.log_batch(run_id, metrics=metrics[i:i + 500])


def compressor_params(job: dict[str, Any], label: str) -> dict[str, str]:
    """Every field of the configured compressor, defaults included (so ablations show in MLflow)."""
    from pipeline.config import CompressorConfig

    specs = [CompressorConfig(**c) for c in job["compressors"]]
    spec = next((c for c in specs if c.display == label), None)
    if spec is None:
        return {}
    compressor = spec.build()
    params = compressor.params()
    params["method"] = params.pop("compressor")
    params.update(compressor.storage.params())  # kv_layout / kv_quant.*, only when set
    return {k: str(v) for k, v in params.items()}


def _param(key: str, value: str):
    from mlflow.entities import Param

    return Param(key[:250], value)


def _chunks(items: dict, size: int):
    keys = list(items)
    for i in range(0, len(keys), size):
        yield {k: items[k] for k in keys[i:i + size]}
