"""Regression gate: compare two evaluations unit by unit against per-metric tolerances.

Each side is reduced to per (compressor, budget) metrics (``UnitSummary``), whatever it was given as:

* a **run folder** ``<output>/<run_id>/`` (``config.json`` + ``rows/``), its ``rows/`` folder or one of its
  Parquet files: the rows are summarised again with the benchmark's own ``aggregate()`` (the benchmark
  is rebuilt from ``config.json``, else from the Parquet metadata); when that is impossible (e.g. the
  dataset is not mounted here) the run's ``summary.json`` is used instead, with a warning;
* an **output folder** holding run folders: the only one, or with several the **newest** (latest
  modification time of its rows, ``summary.json`` or ``config.json``), which is printed;
* a **YAML (or JSON) file of expected values** ``{units: [{compressor, budget, accuracy, ...}]}``; metric
  keys are summary metric names (``accuracy``, ``mean_kv_bytes``, ``max_peak_mem_bytes``,
  ``steps_per_s``, ``errors``) or the check names below; a run's ``summary.json`` has this shape too;
* an **MLflow run**: the starkv run id (tag ``starkv.run_id``) or the MLflow id of the job's parent run;
  metrics are read from its child runs (one per unit).

Checks (tolerance keys, in a job's ``regression:`` section or a ``--tolerances`` file; ``null`` turns a
check off, e.g. CPU peak RSS and throughput, which are noisy on shared machines):

=============  ======================  =========================================================
key            summary metric          regression when
=============  ======================  =========================================================
accuracy       accuracy                current < baseline - tol (absolute, accuracy in [0, 1])
peak_memory    max_peak_mem_bytes      current > baseline * (1 + tol) (relative increase)
kv_bytes       mean_kv_bytes           current > baseline * (1 + tol) (relative increase)
throughput     steps_per_s             current < baseline * (1 - tol) (relative drop)
errors         errors                  current > baseline + tol (absolute count of failed steps)
=============  ======================  =========================================================

A change beyond the tolerance in the good direction is reported as ``IMPROVED``. A unit of the baseline
missing from the current run is a regression (``MISSING``); a unit only in the current run is ``NEW``.
A metric absent from the baseline (e.g. an expected-values file giving only accuracy) is not compared.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.summary import UnitSummary

MIB = 1024 * 1024
EPS = 1e-9  # a change exactly at the tolerance is OK despite float rounding


class RegressionInputError(ValueError):
    """An input that cannot be compared (missing path, unreadable run, bad tolerances): exit code 2."""


@dataclass(frozen=True)
class Check:
    name: str
    metric: str
    higher_is_better: bool
    relative: bool
    unit: str  # how values are shown: "fraction", "bytes", "per_s", "count"


CHECKS: tuple[Check, ...] = (
    Check("accuracy", "accuracy", True, False, "fraction"),
    Check("peak_memory", "max_peak_mem_bytes", False, True, "bytes"),
    Check("kv_bytes", "mean_kv_bytes", False, True, "bytes"),
    Check("throughput", "steps_per_s", True, True, "per_s"),
    Check("errors", "errors", False, False, "count"),
)
CHECK_BY_NAME = {c.name: c for c in CHECKS}
#: Defaults when neither ``--tolerances`` nor the job's ``regression:`` section sets a check.
DEFAULT_TOLERANCES: dict[str, float | None] = {
    "accuracy": 0.02, "peak_memory": 0.10, "kv_bytes": 0.02, "throughput": 0.30, "errors": 0,
}
#: Metric names accepted in expected-values files besides the summary metric names.
ALIASES = {c.name: c.metric for c in CHECKS}

OK, REGRESSION, IMPROVED, SKIPPED, MISSING, NEW = "OK", "REGRESSION", "IMPROVED", "SKIPPED", "MISSING", "NEW"
FAILING = (REGRESSION, MISSING)


# ----------------------------------------------------------------------------------------- tolerances

def parse_tolerances(data: Any, where: str = "tolerances") -> dict[str, float | None]:
    """Validate a tolerance mapping (also accepts a whole job YAML: its ``regression:`` section is used)."""
    if data is None:
        return {}
    if isinstance(data, dict) and ("regression" in data or "tolerances" in data):
        data = data.get("regression", data.get("tolerances")) or {}
    if not isinstance(data, dict):
        raise RegressionInputError(f"{where}: expected a mapping of check -> tolerance, got {type(data).__name__}")
    out: dict[str, float | None] = {}
    for key, value in data.items():
        if key not in CHECK_BY_NAME:
            raise RegressionInputError(f"{where}: unknown check {key!r}; known: {', '.join(CHECK_BY_NAME)}")
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", "off")):
            out[key] = None
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or math.isnan(value):
            raise RegressionInputError(f"{where}.{key}: expected a number >= 0 or null, got {value!r}")
        out[key] = float(value)
    return out


def resolve_tolerances(override: dict[str, float | None] | None,
                       config_section: dict[str, Any] | None) -> dict[str, float | None]:
    """``--tolerances`` if given, else the current run's ``regression:`` section, each over the defaults."""
    chosen = override if override is not None else parse_tolerances(config_section or {}, "regression")
    return {**DEFAULT_TOLERANCES, **chosen}


def load_tolerances(path: str | os.PathLike) -> dict[str, float | None]:
    path = Path(path)
    if not path.is_file():
        raise RegressionInputError(f"tolerances file not found: {path}")
    try:
        return parse_tolerances(yaml.safe_load(path.read_text()), str(path))
    except yaml.YAMLError as err:
        raise RegressionInputError(f"{path}: not valid YAML: {err}") from None


# ----------------------------------------------------------------------------------------- comparison

@dataclass
class Comparison:
    """One line of the regression table."""

    unit: str
    check: str
    metric: str
    baseline: float | None
    current: float | None
    delta: float | None  # current - baseline; relative (fraction of baseline) for relative checks
    tolerance: float | None
    status: str
    relative: bool = False


def judge(check: Check, baseline: float, current: float, tolerance: float | None) -> tuple[float, str]:
    """Delta (relative or absolute, as the check is defined) and the status for one metric of one unit."""
    change = current - baseline
    if check.relative:
        if baseline != 0:
            delta = change / abs(baseline)
        else:
            delta = 0.0 if change == 0 else math.copysign(math.inf, change)
    else:
        delta = change
    if tolerance is None:
        return delta, SKIPPED
    gain = delta if check.higher_is_better else -delta
    if gain < -tolerance - EPS:
        return delta, REGRESSION
    if gain > tolerance + EPS:
        return delta, IMPROVED
    return delta, OK


def compare(baseline: list[UnitSummary], current: list[UnitSummary],
            tolerances: dict[str, float | None]) -> list[Comparison]:
    """Every check of every unit, units in (compressor, budget) order; see the module docstring."""
    tol = {**DEFAULT_TOLERANCES, **tolerances}
    base = {(s.compressor, float(s.budget)): s for s in baseline}
    cur = {(s.compressor, float(s.budget)): s for s in current}
    rows: list[Comparison] = []
    for key in sorted(set(base) | set(cur)):
        label = f"{key[0]}@{key[1]:g}"
        if key not in cur:
            rows.append(Comparison(label, "unit", "", None, None, None, None, MISSING))
            continue
        if key not in base:
            rows.append(Comparison(label, "unit", "", None, None, None, None, NEW))
            continue
        for check in CHECKS:
            b = base[key].metrics.get(check.metric)
            if b is None:
                continue  # the baseline does not state this metric: nothing to hold the run to
            c = cur[key].metrics.get(check.metric)
            t = tol.get(check.name)
            if c is None:
                status = SKIPPED if t is None else MISSING
                rows.append(Comparison(label, check.name, check.metric, float(b), None, None, t, status, check.relative))
                continue
            delta, status = judge(check, float(b), float(c), t)
            rows.append(Comparison(label, check.name, check.metric, float(b), float(c), delta, t, status,
                                   check.relative))
    return rows


def size_mismatches(baseline: list[UnitSummary], current: list[UnitSummary]) -> list[str]:
    """Units whose step counts differ (a partial or differently sized run is not like for like)."""
    cur = {s.key: s for s in current}
    out = []
    for b in baseline:
        c = cur.get(b.key)
        nb, nc = b.metrics.get("steps"), c.metrics.get("steps") if c else None
        if nb is not None and nc is not None and nb != nc:
            out.append(f"{b.key}: {nc:g} steps in the current run vs {nb:g} in the baseline (partial run or "
                       "different data?)")
    return out


@dataclass
class RegressionReport:
    baseline: str
    current: str
    tolerances: dict[str, float | None]
    rows: list[Comparison] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def regressions(self) -> list[Comparison]:
        return [r for r in self.rows if r.status in FAILING]

    @property
    def improvements(self) -> list[Comparison]:
        return [r for r in self.rows if r.status == IMPROVED]

    def to_dict(self) -> dict[str, Any]:
        return {"baseline": self.baseline, "current": self.current, "tolerances": self.tolerances,
                "regressions": len(self.regressions), "improvements": len(self.improvements),
                "notes": self.notes, "rows": [_jsonable(asdict(r)) for r in self.rows]}

    def format_table(self) -> str:
        head = ("unit", "metric", "baseline", "current", "delta", "tolerance", "status")
        body = [(r.unit, r.check, _value(r.check, r.baseline), _value(r.check, r.current),
                 _delta(r), _tolerance(r), r.status) for r in self.rows]
        widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
        fmt = "  ".join(f"{{:<{w}}}" if i < 2 or i == 6 else f"{{:>{w}}}" for i, w in enumerate(widths))
        lines = [f"baseline: {self.baseline}", f"current:  {self.current}", "",
                 fmt.format(*head).rstrip(), "  ".join("-" * w for w in widths)]
        lines += [fmt.format(*row).rstrip() for row in body]
        lines.append("")
        lines += [f"note: {n}" for n in self.notes]
        n = len(self.regressions)
        lines.append(f"{n} regression(s), {len(self.improvements)} improvement(s) in {len(self.rows)} comparisons"
                     + (": " + ", ".join(f"{r.unit} {r.check}" for r in self.regressions) if n else ""))
        return "\n".join(lines)


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def _value(check: str, v: float | None) -> str:
    if v is None:
        return "-"
    kind = CHECK_BY_NAME[check].unit if check in CHECK_BY_NAME else ""
    if kind == "bytes":
        return f"{v / MIB:.3f} MiB"
    if kind == "per_s":
        return f"{v:.3f}/s"
    if kind == "count":
        return f"{v:g}"
    return f"{v:.3f}"


def _delta(r: Comparison) -> str:
    if r.delta is None:
        return "-"
    if r.relative:
        return f"{r.delta * 100:+.1f}%" if math.isfinite(r.delta) else ("+inf" if r.delta > 0 else "-inf")
    return f"{r.delta:+g}" if r.check == "errors" else f"{r.delta:+.3f}"


def _tolerance(r: Comparison) -> str:
    if r.check == "unit":
        return "-"
    if r.tolerance is None:
        return "off"
    return f"{r.tolerance * 100:g}%" if r.relative else f"{r.tolerance:g}"


# ----------------------------------------------------------------------------------------- inputs

@dataclass
class ResolvedRun:
    """One side of a comparison (or the subject of a report), reduced to unit summaries."""

    source: str
    kind: str  # "expected" | "run" | "mlflow"
    units: list[UnitSummary]
    run_id: str | None = None
    run_dir: Path | None = None
    config: dict[str, Any] | None = None  # the job config mapping (config.json, Parquet metadata)
    tracking_uri: str | None = None  # where this run's MLflow runs live (or were read from)
    mlflow_parent_id: str | None = None
    mem_device: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def regression_section(self) -> dict[str, Any] | None:
        return (self.config or {}).get("regression")

    @property
    def experiment(self) -> str:
        return ((self.config or {}).get("tracking") or {}).get("experiment") or "starkv-eval"

    def describe(self) -> str:
        what = {"expected": "expected values", "run": "run", "mlflow": "MLflow run"}[self.kind]
        ident = self.run_id or ""
        where = str(self.run_dir or (self.tracking_uri if self.kind == "mlflow" else self.source))
        return f"{what} {ident} ({where})".replace("  ", " ").replace(" ()", "")


def resolve_run(spec: str, tracking_uri: str | None = None, default_uri: str | None = None) -> ResolvedRun:
    """Turn a CLI argument (path or run id) into unit summaries; raises ``RegressionInputError``.

    ``tracking_uri`` is the explicit ``--tracking-uri``; ``default_uri`` is used for a run id when neither
    it nor ``MLFLOW_TRACKING_URI`` is set (regress passes the other side's store).
    """
    path = Path(spec).expanduser()
    if path.exists():
        if path.is_file():
            if path.suffix == ".parquet":
                return _load_rows(spec, path.parent, tracking_uri)
            if path.suffix in (".yaml", ".yml", ".json"):
                return load_expected(path)
            raise RegressionInputError(f"{path}: expected a run/output folder, a Parquet file or a YAML of expected "
                                       "values")
        if (path / "config.json").is_file():
            return _load_rows(spec, path / "rows", tracking_uri)
        if any(path.glob("*.parquet")) or path.name == "rows":
            return _load_rows(spec, path, tracking_uri)
        run_dir, note = _pick_run_dir(path)
        run = _load_rows(spec, run_dir / "rows", tracking_uri)
        if note:
            run.notes.append(note)
        return run
    if "/" in spec or os.sep in spec or Path(spec).suffix in (".yaml", ".yml", ".json", ".parquet"):
        raise RegressionInputError(f"{spec}: no such file or folder")
    return load_mlflow(spec, tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_uri
                       or f"sqlite:///{Path.cwd() / 'mlflow.db'}")


def _pick_run_dir(output: Path) -> tuple[Path, str]:
    """The only run folder under an output folder, or the newest of several (with a note saying so)."""
    runs = sorted(p.parent for p in output.glob("*/config.json"))
    if not runs:
        raise RegressionInputError(f"{output}: no run folder (<run_id>/config.json) and no Parquet rows in it")
    if len(runs) == 1:
        return runs[0], ""
    newest = max(runs, key=_last_modified)
    return newest, (f"{output} holds {len(runs)} runs ({', '.join(r.name for r in runs)}); "
                    f"using the newest: {newest.name}")


def _last_modified(run_dir: Path) -> float:
    files = [run_dir / "config.json", run_dir / "summary.json", *(run_dir / "rows").rglob("*.parquet")]
    return max((f.stat().st_mtime for f in files if f.is_file()), default=0.0)


def _parquet_config(rows: Path) -> dict[str, Any] | None:
    """The job config the actors stored in the Parquet schema metadata (when ``config.json`` is gone)."""
    import pyarrow.parquet as pq

    for f in sorted(rows.rglob("*.parquet")):
        try:
            meta = pq.read_schema(f).metadata or {}
        except Exception:  # noqa: BLE001 - a truncated file has no schema; try the next one
            continue
        if b"config" in meta:
            return json.loads(meta[b"config"])
    return None


def _load_rows(source: str, rows: Path, tracking_uri: str | None) -> ResolvedRun:
    from pipeline.results import read_rows
    from pipeline.tracking import resolve_tracking_uri

    run_dir = rows.parent
    config_file = run_dir / "config.json"
    try:
        config = json.loads(config_file.read_text()) if config_file.is_file() else _parquet_config(rows)
        table = read_rows(rows)
    except Exception as err:  # noqa: BLE001 - unreadable config or Parquet (e.g. duplicate steps): bad input
        raise RegressionInputError(f"{run_dir}: cannot read the run ({type(err).__name__}: {err})") from None
    if table.num_rows == 0:
        raise RegressionInputError(f"{rows}: no result rows")
    run_ids = sorted(set(table.column("run_id").to_pylist())) if "run_id" in table.column_names else []
    run_id = run_ids[0] if len(run_ids) == 1 else run_dir.name
    devices = sorted({d for d in table.column("mem_device").to_pylist() if d}) if "mem_device" in \
        table.column_names else []
    notes: list[str] = []
    try:
        if config is None:
            raise RegressionInputError("no config.json and no config in the Parquet metadata")
        units = _summarize(table, config)
    except Exception as err:  # noqa: BLE001 - any failure to rebuild the benchmark: fall back to summary.json
        summary = run_dir / "summary.json"
        if not summary.is_file():
            raise RegressionInputError(f"{rows}: cannot summarise the rows ({type(err).__name__}: {err}) "
                                       "and there is no summary.json") from None
        units = load_expected(summary).units
        notes.append(f"{run_id}: rows not re-summarised ({type(err).__name__}: {err}); used {summary}")
    tracking = (config or {}).get("tracking") or {}
    uri = resolve_tracking_uri(tracking_uri, tracking.get("uri"), run_dir.parent)
    return ResolvedRun(source=source, kind="run", units=units, run_id=run_id, run_dir=run_dir, config=config,
                       tracking_uri=uri, mem_device=", ".join(devices), notes=notes)


def _summarize(table, config: dict[str, Any]) -> list[UnitSummary]:
    from pipeline.config import parse_config
    from pipeline.run import make_benchmark
    from pipeline.summary import summarize

    cfg = parse_config(config)
    return summarize(table, make_benchmark(cfg))


def load_expected(path: str | os.PathLike) -> ResolvedRun:
    """A file of expected values ``{units: [{compressor, budget, <metric>: value, ...}]}`` (YAML or JSON)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise RegressionInputError(f"{path}: not valid YAML: {err}") from None
    if isinstance(data, dict) and "compressors" in data and "units" not in data:
        raise RegressionInputError(f"{path} is a job config, not expected values; pass the run's output "
                                   "folder instead, or a file {units: [{compressor, budget, accuracy, ...}]}")
    if not isinstance(data, dict) or not isinstance(data.get("units"), list) or not data["units"]:
        raise RegressionInputError(f"{path}: expected a mapping with a non-empty 'units' list")
    units = []
    for i, item in enumerate(data["units"]):
        where = f"{path}: units[{i}]"
        if not isinstance(item, dict) or "compressor" not in item or "budget" not in item:
            raise RegressionInputError(f"{where}: needs 'compressor' and 'budget'")
        metrics = {}
        for key, value in item.items():
            if key in ("compressor", "budget"):
                continue
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise RegressionInputError(f"{where}.{key}: expected a number, got {value!r}")
            metrics[ALIASES.get(key, key)] = float(value)
        try:
            budget = float(item["budget"])
        except (TypeError, ValueError):
            raise RegressionInputError(f"{where}.budget: expected a number, got {item['budget']!r}") from None
        units.append(UnitSummary(str(item["compressor"]), budget, metrics))
    keys = [(u.compressor, u.budget) for u in units]
    if len(keys) != len(set(keys)):
        raise RegressionInputError(f"{path}: a (compressor, budget) unit is listed twice")
    return ResolvedRun(source=str(path), kind="expected", units=units, run_id=data.get("run_id"))


# ----------------------------------------------------------------------------------------- MLflow

def mlflow_client(uri: str):
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def sqlite_missing(uri: str) -> bool:
    return uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file()


def find_parent_run(client, run_ref: str, experiment: str | None = None):
    """The job's parent run: by MLflow run id, else by tag ``starkv.run_id`` (newest first); None if absent."""
    if re.fullmatch(r"[0-9a-f]{32}", run_ref):
        try:
            run = client.get_run(run_ref)
            if run.data.tags.get("starkv.kind") == "job":
                return run
        except Exception:  # noqa: BLE001 - not an MLflow id of this store: try it as a starkv run id
            pass
    if experiment:
        exp = client.get_experiment_by_name(experiment)
        ids = [exp.experiment_id] if exp else []
    else:
        ids = [e.experiment_id for e in client.search_experiments()]
    if not ids:
        return None
    runs = client.search_runs(ids, filter_string=f"tags.`starkv.run_id` = '{run_ref}' and tags.`starkv.kind` = 'job'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def load_mlflow(run_ref: str, uri: str) -> ResolvedRun:
    """Unit metrics from the child runs of a job's parent run in the MLflow store at ``uri``."""
    if sqlite_missing(uri):
        raise RegressionInputError(f"{run_ref}: not a path, and no MLflow store at {uri} to look it up "
                                   "(pass --tracking-uri or set MLFLOW_TRACKING_URI)")
    try:
        client = mlflow_client(uri)
        parent = find_parent_run(client, run_ref)
        if parent is None:
            raise RegressionInputError(f"{run_ref}: not a path, and no job run with that id in MLflow at {uri}")
        run_id = parent.data.tags.get("starkv.run_id", run_ref)
        children = client.search_runs(
            [parent.info.experiment_id],
            filter_string=f"tags.`starkv.run_id` = '{run_id}' and tags.`starkv.kind` = 'unit'", max_results=10000)
    except RegressionInputError:
        raise
    except Exception as err:  # noqa: BLE001 - unreachable server, bad URI, ...
        raise RegressionInputError(f"cannot read run {run_ref} from MLflow at {uri}: {type(err).__name__}: {err}") \
            from None
    units = []
    for child in children:
        tags = child.data.tags
        try:
            units.append(UnitSummary(tags["compressor"], float(tags["budget"]), dict(child.data.metrics)))
        except (KeyError, ValueError):
            continue
    if not units:
        raise RegressionInputError(f"{run_ref}: MLflow job run {parent.info.run_id} has no unit child runs")
    units.sort(key=lambda u: (u.compressor, u.budget))
    config = _config_from_params(parent.data.params)
    return ResolvedRun(source=run_ref, kind="mlflow", units=units, run_id=run_id, config=config, tracking_uri=uri,
                       mlflow_parent_id=parent.info.run_id)


def _config_from_params(params: dict[str, str]) -> dict[str, Any]:
    """The parts of the job config a comparison needs, from the flattened params of the parent run."""
    config: dict[str, Any] = {}
    for key, raw in params.items():
        parts = key.split(".")
        if parts[0] not in ("regression", "tracking", "name"):
            continue
        value: Any = None if raw == "None" else raw
        if value is not None:
            try:
                value = yaml.safe_load(raw)
            except yaml.YAMLError:
                pass
        node = config
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return config


def log_regression(report: RegressionReport, uri: str, experiment: str,
                   tags: dict[str, str] | None = None) -> str | None:
    """Log the comparison as a run tagged ``starkv.kind=regression``; on any failure warn and return None."""
    if not uri:
        return None
    try:
        from mlflow.entities import Metric, Param, RunTag

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
