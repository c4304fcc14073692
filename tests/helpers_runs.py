"""Test helpers: run folders exactly as ``starkv-eval run`` leaves them, without running a model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MIB = 1024 * 1024
#: Ray's own start-up and scheduler log lines: a run shows them only with --verbose
RAY_CHATTER = ("Total Progress", "Running Dataset", "Starting execution", "Started a local Ray instance",
               "Execution plan", "Progress bars disabled")


def step_row(run_id: str, compressor: str, budget: float, step: int, **values: Any) -> dict[str, Any]:
    """One result row of episode ``ep0``; ``values`` override the defaults."""
    key = f"{compressor}@{budget:g}"
    row = {"run_id": run_id, "benchmark": "synthetic", "episode_id": "ep0", "step_index": step,
           "compressor": compressor, "budget": budget, "model": "tiny", "unit_key": key,
           "step_key": f"{key}/ep0/{step}", "correct": False, "prompt_tokens": 100, "kept_tokens": 50,
           "kv_bytes": 2000, "kv_bytes_full": 4000, "peak_mem_bytes": 10 * MIB, "mem_device": "cpu_rss_hwm",
           "prefill_s": 0.2, "decode_s": 0.05, "meta_json": "{}"}
    row.update(values)
    return row


def write_run_folder(output: Path, run_id: str, config: dict[str, Any], rows: list[dict[str, Any]]) -> Path:
    """``<output>/<run_id>/config.json`` + ``rows/part-0.parquet`` (config also in the Parquet metadata)."""
    import pyarrow.parquet as pq

    from pipeline.metrics.rows import rows_to_table

    run_dir = output / run_id
    (run_dir / "rows").mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps(config))
    pq.write_table(rows_to_table(rows, {"config": json.dumps(config)}), run_dir / "rows" / "part-0.parquet")
    return run_dir


def small_synthetic_job(name: str) -> dict[str, Any]:
    """A 15-step job (synthetic seed 0: ep0000 6 steps, ep0001 3, ep0002 6) with one SnapKV unit at 50 %,
    one screenshot per prompt and one Ray actor: the subprocess end-to-end tests' workload."""
    return {
        "name": name,
        "model": {"path": "tiny", "device": "cpu", "max_new_tokens": 8},
        "benchmark": {"name": "synthetic", "options": {"num_episodes": 3, "seed": 0}},
        "agent": {"image_slots": 1},
        "compressors": [{"name": "snapkv", "params": {"window_size": 8, "kernel_size": 5}}],
        "budgets": [50],
        "ray": {"num_actors": 1, "num_cpus_per_actor": 1},
        "tracking": {"experiment": name},
    }
