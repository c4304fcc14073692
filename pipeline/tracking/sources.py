"""Where the results of an evaluation come from: a run folder, its Parquet rows, an output folder (local
or a storage URL such as ``s3://bucket/prefix``), a YAML of expected values, or an MLflow run — each reduced
to per (compressor, budget) ``UnitSummary`` objects.

Used by ``starkv-eval regress`` (both sides of a comparison) and ``starkv-eval report``.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.results.regression import ALIASES, RegressionInputError
from pipeline.results.store import Store, StoreError, is_url, open_store
from pipeline.results.summary import UnitSummary
from pipeline.tracking.client import mlflow_client

MIB = 1024 * 1024


@dataclass
class ResolvedRun:
    """One side of a comparison (or the subject of a report), reduced to unit summaries."""

    source: str
    kind: str  # "expected" | "run" | "mlflow"
    units: list[UnitSummary]
    run_id: str | None = None
    run_dir: Path | str | None = None  # a local Path, or the run folder's URL on object storage
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

    @property
    def rows_dir(self) -> Path | str | None:
        """The run's Parquet rows folder (a local Path or a URL), None for expected values or MLflow runs."""
        if self.kind != "run" or self.run_dir is None:
            return None
        return self.run_dir / "rows" if isinstance(self.run_dir, Path) else f"{self.run_dir}/rows"

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
    if is_url(spec):
        try:
            return _resolve_url(spec, tracking_uri)
        except StoreError as err:
            raise RegressionInputError(str(err)) from None
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


def _resolve_url(spec: str, tracking_uri: str | None) -> ResolvedRun:
    """The same forms as a local path (Parquet file, rows folder, run folder, output folder), on a store."""
    store = open_store(spec)
    store.check()
    if spec.endswith(".parquet"):
        return _load_rows(spec, spec.rsplit("/", 1)[0], tracking_uri)
    if store.exists("config.json"):
        return _load_rows(spec, store.where("rows"), tracking_uri)
    runs = store.list_dirs_with("config.json")
    if not runs:
        if store.list_files("", ".parquet"):
            return _load_rows(spec, store.where(), tracking_uri)
        raise RegressionInputError(f"{spec}: no run folder (<run_id>/config.json) and no Parquet rows in it")
    newest, note = runs[0], ""
    if len(runs) > 1:
        newest = max(runs, key=lambda rel: _modified(store, f"{rel}/config.json"))
        note = f"{spec} holds {len(runs)} runs ({', '.join(runs)}); using the newest: {newest}"
    run = _load_rows(spec, store.where(f"{newest}/rows"), tracking_uri)
    if note:
        run.notes.append(note)
    return run


def _modified(store: Store, rel: str) -> float:
    try:
        return store.fs.modified(store.path(rel)).timestamp()
    except Exception:  # noqa: BLE001 - a backend without modification times: keep the name order
        return 0.0


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


def _parquet_config(run: Store, rows_rel: str) -> dict[str, Any] | None:
    """The job config the actors stored in the Parquet schema metadata (when ``config.json`` is gone)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for rel in run.list_files(rows_rel, ".parquet"):
        try:
            meta = pq.read_schema(pa.BufferReader(run.read_bytes(rel) or b"")).metadata or {}
        except Exception:  # noqa: BLE001 - a truncated file has no schema; try the next one
            continue
        if b"config" in meta:
            return json.loads(meta[b"config"])
    return None


def _load_rows(source: str, rows: Path | str, tracking_uri: str | None) -> ResolvedRun:
    """A run from its rows folder (a local path or a URL); the run folder is the rows folder's parent."""
    from pipeline.results.parquet import read_rows
    from pipeline.tracking.mlflow_runs import resolve_tracking_uri

    rows = rows if is_url(rows) else os.path.abspath(rows)
    parent, _, rows_rel = str(rows).rstrip("/").rpartition("/")
    try:
        run = open_store(parent or "/")
        raw = run.read_bytes("config.json")
        config = json.loads(raw) if raw is not None else _parquet_config(run, rows_rel)
        table = read_rows(rows)
    except StoreError as err:
        raise RegressionInputError(str(err)) from None
    except Exception as err:  # noqa: BLE001 - unreadable config or Parquet: bad input
        raise RegressionInputError(f"{run.where()}: cannot read the run ({type(err).__name__}: {err})") from None
    run_dir = run.location()
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
        summary = run.read_bytes("summary.json")
        if summary is None:
            raise RegressionInputError(f"{rows}: cannot summarise the rows ({type(err).__name__}: {err}) "
                                       "and there is no summary.json") from None
        units = _expected(summary.decode(), run.where("summary.json")).units
        notes.append(f"{run_id}: rows not re-summarised ({type(err).__name__}: {err}); used "
                     f"{run.where('summary.json')}")
    tracking = (config or {}).get("tracking") or {}
    uri = resolve_tracking_uri(tracking_uri, tracking.get("uri"), run_dir.parent if run.local else run.mlflow_home())
    return ResolvedRun(source=source, kind="run", units=units, run_id=run_id, run_dir=run_dir, config=config,
                       tracking_uri=uri, mem_device=", ".join(devices), notes=notes)


def _summarize(table, config: dict[str, Any]) -> list[UnitSummary]:
    from pipeline.config import make_benchmark, parse_config
    from pipeline.results.summary import summarize

    cfg = parse_config(config)
    return summarize(table, make_benchmark(cfg))


def load_expected(path: str | os.PathLike) -> ResolvedRun:
    """A file of expected values ``{units: [{compressor, budget, <metric>: value, ...}]}`` (YAML or JSON)."""
    return _expected(Path(path).read_text(), path)


def _expected(text: str, path: str | os.PathLike) -> ResolvedRun:
    try:
        data = yaml.safe_load(text)
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


