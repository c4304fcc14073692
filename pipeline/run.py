"""The Ray pipeline: episodes × (compressor, budget) units sharded over a pool of model actors.

Ray Data reads the work items, ``map_batches`` runs them on actors that load the model once each, and
``write_parquet`` streams the step rows to disk as units finish. The driver never holds all rows while
running; it reads the (small) result columns back at the end for the summary and MLflow.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.benchmarks.base import Benchmark, Episode, get_benchmark
from pipeline.config import JobConfig, parse_config
from pipeline.faults import fault_env
from pipeline.results import drop_unreadable, finished_units, read_rows, rows_dir
from pipeline.summary import UnitSummary, format_table, summarize
from pipeline.tracking import Tracker, git_commit, job_tags, resolve_tracking_uri

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    run_id: str
    output_dir: Path
    rows_dir: Path
    tracking_uri: str
    summaries: list[UnitSummary] = field(default_factory=list)
    table: str = ""
    mlflow_ok: bool = True
    mlflow_parent_id: str | None = None
    skipped_units: int = 0
    ran_units: int = 0


SYNTHETIC_GENERATOR_OPTIONS = ("num_episodes", "seed", "min_steps", "max_steps")


def make_benchmark(cfg: JobConfig, path: str | None = None) -> Benchmark:
    """The configured benchmark at ``path`` (default: the config's).

    The synthetic benchmark's generator options are not loader options; without a path it is generated
    into a cache folder from them.
    """
    cls = get_benchmark(cfg.benchmark.name)
    options = dict(cfg.benchmark.options)
    path = path or cfg.benchmark.path
    if cfg.benchmark.name == "synthetic":
        gen = {k: options.pop(k) for k in SYNTHETIC_GENERATOR_OPTIONS if k in options}
        if path is None:
            from pipeline.benchmarks.synthetic import ensure_synthetic_dataset

            path = str(ensure_synthetic_dataset(**gen))
    return cls(path, **options)


def load_episodes(cfg: JobConfig, benchmark: Benchmark) -> list[Episode]:
    episodes = list(benchmark.load())
    if cfg.benchmark.max_episodes:
        episodes = episodes[: cfg.benchmark.max_episodes]
    ids = [e.episode_id for e in episodes]
    if len(ids) != len(set(ids)):
        raise ValueError(f"benchmark {cfg.benchmark.name} yields duplicate episode ids")
    return episodes


class EpisodeActor:
    """Ray Data callable class: loads model, processor and benchmark once per actor, runs work items."""

    def __init__(self, job: dict[str, Any], benchmark_path: str, torch_threads: int) -> None:
        import torch

        from pipeline.evaluate import EpisodeRunner
        from pipeline.models.loader import ModelSpec, load_model

        torch.set_num_threads(max(1, torch_threads))
        torch.manual_seed(job.get("seed", 0))
        config = {k: v for k, v in job.items() if not k.startswith("_")}
        self.cfg = parse_config(config)
        m = self.cfg.model
        self.loaded = load_model(ModelSpec(path=m.path, dtype=m.dtype, attn_implementation=m.attn_implementation,
                                           device=m.device, min_pixels=m.min_pixels, max_pixels=m.max_pixels))
        self.benchmark = make_benchmark(self.cfg, benchmark_path)
        self.runner = EpisodeRunner(self.loaded, self.benchmark, self.cfg.agent, m.max_new_tokens,
                                    mlp_chunk_tokens=m.mlp_chunk_tokens, vision_per_image=m.vision_per_image)
        self.compressors = {}
        self.metadata = {"run_id": job.get("run_id") or "", "git_commit": job.get("_git_commit", "unknown"),
                         "config": json.dumps(config, default=str)}

    def _compressor(self, label: str):
        import starkv

        if label not in self.compressors:
            spec = next(c for c in self.cfg.compressors if c.display == label)
            self.compressors[label] = starkv.build(spec.name, **spec.params)
        return self.compressors[label]

    def __call__(self, batch: dict[str, Any]):
        from pipeline.evaluate import Unit, rows_to_table

        rows: list[dict[str, Any]] = []
        for i in range(len(batch["episode_json"])):
            episode = Episode.from_row({"episode_json": batch["episode_json"][i]})
            unit = Unit(run_id=str(batch["run_id"][i]), compressor=str(batch["compressor"][i]),
                        budget=float(batch["budget"][i]), model=self.loaded.name)
            rows.extend(self.runner.run(episode, self._compressor(unit.compressor), unit))
        return rows_to_table(rows, self.metadata)


def _init_ray(cfg: JobConfig) -> None:
    import ray

    if ray.is_initialized():
        return
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    cpus = max(1, int(cfg.ray.num_actors * cfg.ray.num_cpus_per_actor))
    ray.init(num_cpus=max(cpus, os.cpu_count() or 1), object_store_memory=cfg.ray.object_store_memory,
             include_dashboard=False, log_to_driver=True)


def _gpus_per_actor(cfg: JobConfig) -> float:
    import ray

    if cfg.ray.num_gpus_per_actor != "auto":
        return float(cfg.ray.num_gpus_per_actor)
    return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0


def _draw_plots(result: RunResult, cfg: JobConfig, mem_device: str, echo) -> list[Path]:
    """Accuracy/memory-vs-budget PNGs beside the rows (and into MLflow); a plotting failure only warns."""
    try:
        from pipeline.plots import write_report_plots

        subtitle = f"run {result.run_id} · {cfg.benchmark.name} · model {cfg.model.path}"
        files = write_report_plots(result.summaries, result.rows_dir.parent / "report", subtitle=subtitle,
                                   mem_device=mem_device)
    except Exception as err:  # noqa: BLE001 - plots are a view of the results, never a reason to fail
        echo(f"[starkv-eval] WARNING: plots not drawn ({type(err).__name__}: {err})")
        return []
    if files:
        echo(f"[starkv-eval] plots: {files[0].parent}")
    return files


def run_job(cfg: JobConfig, output: str | None = None, tracking_uri: str | None = None,
            echo=print) -> RunResult:
    """Run (or resume) a job: skip finished units, stream new rows to Parquet, summarise, log to MLflow."""
    out_dir = Path(output or cfg.output).resolve()
    run_id = cfg.resolved_run_id()
    rdir = rows_dir(out_dir, run_id)
    uri = resolve_tracking_uri(tracking_uri, cfg.tracking.uri, out_dir)
    result = RunResult(run_id=run_id, output_dir=out_dir, rows_dir=rdir, tracking_uri=uri)

    benchmark = make_benchmark(cfg)
    episodes = load_episodes(cfg, benchmark)  # bad data fails here, before anything is written or started
    rdir.mkdir(parents=True, exist_ok=True)
    commit = git_commit()
    job = {**cfg.to_dict(), "run_id": run_id, "_git_commit": commit}
    (rdir.parent / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2, default=str))

    removed = drop_unreadable(rdir)
    done = finished_units(rdir)
    items = []
    for comp, budget in cfg.units():
        key = f"{comp.display}@{float(budget):g}"
        for ep in episodes:
            if (key, ep.episode_id) in done:
                result.skipped_units += 1
                continue
            items.append({"run_id": run_id, "compressor": comp.display, "budget": float(budget),
                          "episode_id": ep.episode_id, "episode_json": ep.to_row()["episode_json"]})
    result.ran_units = len(items)
    total_steps = sum(len(e.steps) for e in episodes) * len(cfg.units())
    echo(f"[starkv-eval] run {run_id}: {len(episodes)} episodes x {len(cfg.units())} units "
         f"({total_steps} steps); {result.skipped_units} episode-units already done"
         + (f", {len(removed)} partial files removed" if removed else ""))

    if items:
        import ray

        _init_ray(cfg)
        t0 = time.time()
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        ds = ds.map_batches(
            EpisodeActor,
            fn_constructor_kwargs={"job": job, "benchmark_path": benchmark.path,
                                   "torch_threads": cfg.ray.torch_threads or max(1, int(cfg.ray.num_cpus_per_actor))},
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=cfg.ray.num_actors),
            num_cpus=cfg.ray.num_cpus_per_actor,
            num_gpus=_gpus_per_actor(cfg),
            # test-only fault injection (pipeline/faults.py) reaches actors of an already running cluster
            **({"runtime_env": {"env_vars": fault_env()}} if fault_env() else {}),
        )
        ds.write_parquet(str(rdir))
        echo(f"[starkv-eval] {len(items)} episode-units evaluated in {time.time() - t0:.1f} s")

    table = read_rows(rdir)
    result.summaries = summarize(table, benchmark)
    devices = sorted(set(table.column("mem_device").to_pylist())) if table.num_rows else []
    result.table = format_table(result.summaries, ", ".join(d for d in devices if d))
    summary_path = rdir.parent / "summary.json"
    summary_path.write_text(json.dumps({"run_id": run_id, "units": [
        {"compressor": s.compressor, "budget": s.budget, **s.metrics} for s in result.summaries]}, indent=2))
    (rdir.parent / "summary_table.txt").write_text(result.table + "\n")

    plots = _draw_plots(result, cfg, ", ".join(d for d in devices if d), echo)
    tags = job_tags(cfg, commit)
    tracker = Tracker(uri, cfg.tracking.experiment)
    result.mlflow_parent_id = tracker.log_job(run_id=run_id, job=job, summaries=result.summaries, tags=tags,
                                              table_text=result.table, artifacts=[summary_path, *plots])
    result.mlflow_ok = tracker.ok
    echo(result.table)
    echo(f"[starkv-eval] Parquet rows: {rdir}")
    if tracker.ok:
        echo(f"[starkv-eval] MLflow: {uri} (experiment '{cfg.tracking.experiment}', parent run "
             f"{result.mlflow_parent_id}); browse with: mlflow ui --backend-store-uri {uri}")
    else:
        echo(f"[starkv-eval] WARNING: MLflow not updated ({tracker.error}); run `starkv-eval sync {out_dir}` later")
    return result
