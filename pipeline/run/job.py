"""The Ray pipeline: episodes × (compressor, budget) units sharded over a pool of model actors.

Ray Data reads the work items, ``map_batches`` runs them on actors that load the model once each, and a
datasink streams the step rows to the result store (a local folder or object storage, ``pipeline.results.store``)
as episodes finish, one file per (unit, episode). The run holds the run folder's lease while it writes. The
driver never holds all rows while running; it reads the (small) result columns back at the end for the
summary and MLflow.

A model named by a Hugging Face repo id is resolved once, in the driver, before any work (downloaded into
the hub cache when missing and allowed); the actors get the snapshot folder and the commit, never the
name to resolve again. On a cluster of several nodes one small Ray task per node makes sure that node's
cache holds the same commit before the actors start (docs/cluster.md).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.benchmarks.common.base import Benchmark, Episode
from pipeline.config import ConfigError, JobConfig, PrefillMode, make_benchmark, parse_config
from pipeline.metrics.units import unit_label
from pipeline.results.parquet import drop_unreadable, read_rows
from pipeline.results.store import StoreError, open_store
from pipeline.results.store.lease import DEFAULT_TIMEOUT_S, LEASE_FILE, RunLease
from pipeline.results.store.rowfiles import heal_files
from pipeline.results.summary import UnitSummary, format_table, summarize
from pipeline.run.progress import (
    ProgressCounter,
    ProgressMonitor,
    StderrLineFilter,
    quiet_mlflow,
    quiet_ray,
    ray_actor_args_notice,
)
from pipeline.step.faults import fault_env
from pipeline.tracking.mlflow_runs import Tracker, git_commit, job_tags, resolve_tracking_uri
from pipeline.tracking.preflight import check_tracking_access
from pipeline.tracking.view import runs_page

if TYPE_CHECKING:
    from pipeline.models.hub import ResolvedModel

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    run_id: str
    output_dir: Path | str  # a Path for a local output, the URL for object storage
    rows_dir: Path | str
    tracking_uri: str
    summaries: list[UnitSummary] = field(default_factory=list)
    table: str = ""
    mlflow_ok: bool = True
    mlflow_parent_id: str | None = None
    skipped_units: int = 0
    ran_units: int = 0


def load_episodes(cfg: JobConfig, benchmark: Benchmark) -> list[Episode]:
    episodes = list(benchmark.load())
    if cfg.benchmark.max_episodes:
        episodes = episodes[: cfg.benchmark.max_episodes]
    ids = [e.episode_id for e in episodes]
    if len(ids) != len(set(ids)):
        raise ValueError(f"benchmark {cfg.benchmark.name} yields duplicate episode ids")
    return episodes


def resolve_job_model(cfg: JobConfig, echo=print) -> ResolvedModel | None:
    """The job's hub model resolved once, in the driver (``None`` for a folder, tiny or micro).

    Downloads into the hub cache when the snapshot is missing and ``HF_HUB_OFFLINE`` allows; a missing repo
    or revision is a ``ConfigError`` naming the repo id, the revision and the cache folder.
    """
    from pipeline.models.hub import HubModelError, is_repo_id, resolve_repo

    if not is_repo_id(cfg.model.path):
        return None
    try:
        resolved = resolve_repo(cfg.model.path, cfg.model.revision)
    except HubModelError as err:
        raise ConfigError(f"model.path: {err}") from None
    echo(f"[starkv-eval] model {resolved.repo_id}@{resolved.revision} = commit {resolved.commit}: {resolved.folder}")
    return resolved


def node_model_folder(job: dict[str, Any]) -> str | None:
    """This node's snapshot folder of the job's hub model (None: not a hub model).

    The driver's folder when this node sees it (one node, or a shared cache), else the same commit in the
    driver's cache path on this node, which the per-node task filled before the actors started; a cache
    lookup, no download.
    """
    folder = job.get("_model_folder")
    if not folder:
        return None
    if Path(folder).is_dir():
        return folder
    from pipeline.models.hub import resolve_repo

    return str(resolve_repo(job["_model_repo"], job["_model_commit"], download=False,
                            cache_dir=job.get("_model_cache")).folder)


def _fetch_on_node(repo_id: str, commit: str, cache_dir: str, download: bool) -> tuple[str, str]:
    """One node's copy of ``repo_id`` at ``commit`` in ``cache_dir`` (downloaded there when missing and allowed)."""
    import ray

    from pipeline.models.hub import resolve_repo

    folder = resolve_repo(repo_id, commit, download=download, cache_dir=cache_dir).folder
    return ray.get_runtime_context().get_node_id(), str(folder)


def fetch_model_on_nodes(repo_id: str, commit: str, cache_dir: str, download: bool = True) -> dict[str, str]:
    """Every alive node's snapshot folder of ``repo_id`` at ``commit``: one task pinned to each node, so a
    node without a shared cache downloads once (not once per actor) and all nodes load the same weights.

    The cache path and whether to download are the driver's (arguments, not each worker's environment, which
    Ray fixed when the node started); tokens stay each node's own (``HF_TOKEN``), never shipped.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=0)(_fetch_on_node)
    nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive")]
    refs = [task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))
            .remote(repo_id, commit, cache_dir, download) for node in nodes]
    return dict(ray.get(refs))


class EpisodeActor:
    """Ray Data callable class: loads model, processor and benchmark once per actor, runs work items."""

    def __init__(self, job: dict[str, Any], benchmark_path: str, torch_threads: int, progress=None) -> None:
        import torch

        from pipeline.models.loader import ModelSpec, load_model
        from pipeline.step.engine import EpisodeRunner

        torch.set_num_threads(max(1, torch_threads))
        torch.manual_seed(job.get("seed", 0))
        config = {k: v for k, v in job.items() if not k.startswith("_")}
        folder = node_model_folder(job)  # a hub model: the driver resolved it; never resolved again here
        local = config if folder is None else {**config, "model": {**config["model"], "path": folder, "revision": None}}
        self.cfg = parse_config(local)
        m = self.cfg.model
        self.loaded = load_model(ModelSpec(path=m.path, dtype=m.dtype, attn_implementation=m.attn_implementation,
                                           device=m.device, min_pixels=m.min_pixels, max_pixels=m.max_pixels))
        self.benchmark = make_benchmark(self.cfg, benchmark_path)
        self.runner = EpisodeRunner(self.loaded, self.benchmark, self.cfg.agent, m.max_new_tokens,
                                    mlp_chunk_tokens=m.mlp_chunk_tokens, vision_per_image=m.vision_per_image,
                                    prefill_mode=m.prefill_mode, measure_flops=self.cfg.measure_flops)
        self.compressors = {}
        self.progress = progress  # a ProgressCounter actor handle (None: nobody is watching)
        self.metadata = {"run_id": job.get("run_id") or "", "git_commit": job.get("_git_commit", "unknown"),
                         "config": json.dumps(config, default=str)}
        if job.get("_model_commit"):  # the weights a hub name resolved to, beside the configured name
            self.metadata.update(model_repo=job["_model_repo"], model_revision=job["_model_commit"])

    def _compressor(self, label: str):
        """The actor's one instance per label, for per-unit episodes (``run`` resets it per episode)."""
        if label not in self.compressors:
            self.compressors[label] = self._fresh_compressor(label)
        return self.compressors[label]

    def _fresh_compressor(self, label: str):
        """A new instance for one unit of a sweep (each unit keeps its own episode state)."""

        spec = next(c for c in self.cfg.compressors if c.display == label)
        return spec.build()

    def __call__(self, batch: dict[str, Any]):
        from pipeline.metrics.rows import rows_to_table
        from pipeline.metrics.units import Unit
        from pipeline.step.sweep import run_sweep

        rows: list[dict[str, Any]] = []
        for i in range(len(batch["episode_json"])):
            episode = Episode.from_row({"episode_json": batch["episode_json"][i]})
            units = [Unit(run_id=str(batch["run_id"][i]), compressor=str(label), budget=float(budget),
                          model=self.loaded.name) for label, budget in json.loads(batch["units_json"][i])]
            if len(units) == 1:  # one unit: today's per-unit episode
                done = [self.runner.run(episode, self._compressor(units[0].compressor), units[0])]
            else:  # every pending unit of the episode in lockstep, one prefill per step (pipeline.step.sweep)
                done = run_sweep(self.runner, episode, [(self._fresh_compressor(u.compressor), u) for u in units])
            for episode_rows in done:
                rows.extend(episode_rows)
            if self.progress is not None:
                self.progress.add.remote(len(units), sum(len(r) for r in done))
        return rows_to_table(rows, self.metadata)


def _init_ray(cfg: JobConfig, verbose: bool = False) -> None:
    import ray

    if ray.is_initialized():
        return
    level = logging.INFO if verbose else logging.WARNING  # Ray's start-up chatter only with --verbose
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True, logging_level=level)
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    cpus = max(1, int(cfg.ray.num_actors * cfg.ray.num_cpus_per_actor))
    ray.init(num_cpus=max(cpus, os.cpu_count() or 1), object_store_memory=cfg.ray.object_store_memory,
             include_dashboard=False, log_to_driver=True, logging_level=level)


def _gpus_per_actor(cfg: JobConfig) -> float:
    import ray

    if cfg.ray.num_gpus_per_actor != "auto":
        return float(cfg.ray.num_gpus_per_actor)
    return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0


def _store_error(err: BaseException) -> StoreError | None:
    """The ``StoreError`` behind an exception a Ray task raised (Ray wraps it), if any."""
    seen = 0
    while err is not None and seen < 10:
        if isinstance(err, StoreError):
            return err
        err = getattr(err, "cause", None) or err.__cause__ or err.__context__
        seen += 1
    return None


def _draw_plots(result: RunResult, cfg: JobConfig, mem_device: str, echo, folder: Path) -> list[Path]:
    """Accuracy/memory-vs-budget PNGs beside the rows (and into MLflow); a plotting failure only warns."""
    try:
        from pipeline.results.plots import write_job_figures

        subtitle = f"run {result.run_id} · {cfg.benchmark.name} · model {cfg.model.path}"
        files = write_job_figures(result.summaries, folder / "report", subtitle=subtitle,
                                   mem_device=mem_device)
    except Exception as err:  # noqa: BLE001 - plots are a view of the results, never a reason to fail
        echo(f"[starkv-eval] WARNING: plots not drawn ({type(err).__name__}: {err})")
        return []
    if files:
        echo(f"[starkv-eval] plots: {files[0].parent}")
    return files


def run_job(cfg: JobConfig, output: str | None = None, tracking_uri: str | None = None,
            echo=print, wait: bool = False, lease_timeout_s: float = DEFAULT_TIMEOUT_S,
            verbose: bool = False) -> RunResult:
    """Run (or resume) a job: skip finished units, stream new rows to the store, summarise, log to MLflow.

    The run folder's lease is held from before the first write to the end; ``wait`` waits for a live
    holder instead of failing. Store problems raise ``StoreError`` (one line naming the location); an MLflow
    server that refuses the credentials raises ``TrackingAuthError`` before any work. The
    terminal shows one progress display; Ray's scheduler logs only with ``verbose``.
    """
    out = open_store(output or cfg.output)
    out.check()  # an unreachable or unauthorised store fails here, before any work
    run_id = cfg.resolved_run_id()
    run_store = out.sub(run_id)
    rdir = run_store.location("rows")
    uri = resolve_tracking_uri(tracking_uri, cfg.tracking.uri, out.mlflow_home())
    result = RunResult(run_id=run_id, output_dir=out.location(), rows_dir=rdir, tracking_uri=uri)
    check_tracking_access(uri, cfg.tracking.experiment)  # refused credentials fail here; unreachable passes

    model = resolve_job_model(cfg, echo)  # once, here, before any work: actors get the folder
    benchmark = make_benchmark(cfg)
    episodes = load_episodes(cfg, benchmark)  # bad data fails here, before anything is written or started
    lease = RunLease(run_store, LEASE_FILE, run_id, timeout_s=lease_timeout_s, wait=wait, echo=echo).acquire()
    try:
        with tempfile.TemporaryDirectory(prefix="starkv-run-") as staging:
            # local files for plots and MLflow artifacts: the run folder itself, or a copy uploaded after
            folder = Path(run_store.root) if run_store.local else Path(staging)
            _run_leased(cfg, result, run_store, benchmark, episodes, folder, echo, verbose, model)
    finally:
        lease.release()
    if lease.lost:
        echo(f"[starkv-eval] WARNING: another run took this run's lease during the run ({lease.lost}); the rows "
             "are still each step once (writes are idempotent)")
    return result


def _work_items(cfg: JobConfig, run_id: str, episodes: list[Episode], done: set, result: RunResult) -> list[dict]:
    """The work still to do: with ``ray.shared_prefill`` one item per episode listing its pending units (they
    run in lockstep on one actor, sharing prefills), else one item per (unit, episode). Finished
    (unit, episode) pairs are skipped either way, so a resumed sweep reruns only the missing units."""
    items: list[dict] = []
    for ep in episodes:
        pending = []
        for comp, budget in cfg.units():
            if (unit_label(comp.display, budget), ep.episode_id) in done:
                result.skipped_units += 1
            else:
                pending.append([comp.display, float(budget)])
        share = cfg.ray.shared_prefill and PrefillMode.parse(cfg.model.prefill_mode).shares_prefill
        groups = [pending] if share else [[u] for u in pending]
        for units in (g for g in groups if g):
            items.append({"run_id": run_id, "units": units, "steps": len(ep.steps), "episode_id": ep.episode_id,
                          "episode_json": ep.to_row()["episode_json"]})
    return items


def _run_leased(cfg: JobConfig, result: RunResult, run_store, benchmark: Benchmark, episodes: list[Episode],
                folder: Path, echo, verbose: bool, model: ResolvedModel | None = None) -> None:
    run_id, rdir, uri, out_dir = result.run_id, result.rows_dir, result.tracking_uri, result.output_dir
    commit = git_commit()
    job = {**cfg.to_dict(), "run_id": run_id, "_git_commit": commit}
    if model is not None:
        job.update(_model_folder=str(model.folder), _model_repo=model.repo_id, _model_commit=model.commit,
                   _model_cache=str(model.cache))
    run_store.write_atomic("config.json", json.dumps(cfg.to_dict(), indent=2, default=str).encode())

    removed = drop_unreadable(rdir)
    before = heal_files(run_store, "rows")  # we hold the lease: rewrite identical duplicates once, for good
    if before.duplicates:
        echo(f"[starkv-eval] {before.heal_note(str(rdir))}; rewrote the rows as one file per episode")
    done = set(zip(before.table.column("unit_key").to_pylist(), before.table.column("episode_id").to_pylist())) \
        if before.table.num_rows else set()
    items = _work_items(cfg, run_id, episodes, done, result)
    steps_to_run = sum(len(it["units"]) * it["steps"] for it in items)
    result.ran_units = sum(len(it["units"]) for it in items)
    total_steps = sum(len(e.steps) for e in episodes) * len(cfg.units())
    echo(f"[starkv-eval] run {run_id}: {len(episodes)} episodes x {len(cfg.units())} units "
         f"({total_steps} steps); {result.skipped_units} episode-units already done"
         + (f", {len(removed)} partial files removed" if removed else ""))

    if items:
        import ray

        _init_ray(cfg, verbose)
        quiet_ray(verbose)
        if model is not None and len([n for n in ray.nodes() if n.get("Alive")]) > 1:
            from pipeline.models.hub import hub_offline

            # once per node, before any actor loads it
            fetch_model_on_nodes(model.repo_id, model.commit, job["_model_cache"], download=not hub_offline())
        counter = ray.remote(num_cpus=0)(ProgressCounter).remote()
        t0 = time.time()
        items = [{**{k: v for k, v in it.items() if k not in ("units", "steps")},
                  "units_json": json.dumps(it["units"])} for it in items]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        # Ray Data hands every pool actor its own ``ray.put`` refs (context, map transformer carrying these
        # constructor kwargs) with max_restarts=-1, so Ray's core logs an error line about restarts
        # (ray-project/ray#53727) however small the kwargs are; max_restarts=0 would silence it but end the
        # actor restarts that fault tolerance needs. The line is a false alarm here and is dropped below
        # (pipeline.run.progress.ray_actor_args_notice says why).
        ds = ds.map_batches(
            EpisodeActor,
            fn_constructor_kwargs={"job": job, "benchmark_path": benchmark.path, "progress": counter,
                                   "torch_threads": cfg.ray.torch_threads or max(1, int(cfg.ray.num_cpus_per_actor))},
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=cfg.ray.num_actors),
            num_cpus=cfg.ray.num_cpus_per_actor,
            num_gpus=_gpus_per_actor(cfg),
            # test-only fault injection (pipeline/step/faults.py) reaches actors of an already running cluster;
            # the model loader's per-actor weight-loading bars only with --verbose
            runtime_env={"env_vars": {**fault_env(), **({} if verbose else {"HF_HUB_DISABLE_PROGRESS_BARS": "1"})}},
        )
        from pipeline.results.store.sink import EpisodeRowSink

        try:
            with StderrLineFilter(ray_actor_args_notice(EpisodeActor.__name__)), \
                    ProgressMonitor(lambda: ray.get(counter.snapshot.remote(), timeout=10), result.ran_units,
                                    steps_to_run, echo=echo, tty=echo is print and sys.stdout.isatty()):
                ds.write_datasink(EpisodeRowSink(run_store, "rows"))
        except Exception as err:
            cause = _store_error(err)
            if cause is None:
                raise
            raise StoreError(str(cause)) from None
        finally:
            ray.kill(counter)
        echo(f"[starkv-eval] {result.ran_units} episode-units evaluated in {time.time() - t0:.1f} s")

    table = read_rows(rdir)
    result.summaries = summarize(table, benchmark)
    devices = sorted(set(table.column("mem_device").to_pylist())) if table.num_rows else []
    result.table = format_table(result.summaries, ", ".join(d for d in devices if d))
    summary_path = folder / "summary.json"
    summary = json.dumps({"run_id": run_id, "units": [
        {"compressor": s.compressor, "budget": s.budget, **s.metrics} for s in result.summaries]}, indent=2)
    run_store.write_atomic("summary.json", summary.encode())
    run_store.write_atomic("summary_table.txt", (result.table + "\n").encode())
    if not run_store.local:
        summary_path.write_text(summary)

    plots = _draw_plots(result, cfg, ", ".join(d for d in devices if d), echo, folder)
    if not run_store.local:
        for png in plots:
            run_store.write_atomic(f"report/{png.name}", png.read_bytes())
    tags = job_tags(cfg, commit, model_revision=model.commit if model is not None else None)
    quiet_mlflow(verbose)
    tracker = Tracker(uri, cfg.tracking.experiment)
    result.mlflow_parent_id = tracker.log_job(run_id=run_id, job=job, summaries=result.summaries, tags=tags,
                                              table_text=result.table, artifacts=[summary_path, *plots], rows=table)
    result.mlflow_ok = tracker.ok
    echo(result.table)
    echo(f"[starkv-eval] Parquet rows: {rdir}")
    if tracker.ok:
        echo(f"[starkv-eval] MLflow: {uri} (experiment '{cfg.tracking.experiment}', parent run "
             f"{result.mlflow_parent_id}); browse with: mlflow ui --backend-store-uri {uri}")
        echo(f"[starkv-eval] then open {runs_page(tracker.experiment_id, run_id)}")
    else:
        echo(f"[starkv-eval] WARNING: MLflow not updated ({tracker.error}); run `starkv-eval sync {out_dir}` later")
