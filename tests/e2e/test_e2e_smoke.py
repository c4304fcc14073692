"""End to end: jobs/smoke.yaml through real local Ray, real Parquet and a real MLflow sqlite store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.config import load_config, make_benchmark
from pipeline.results.parquet import read_rows
from pipeline.run.job import load_episodes, run_job
from tests.tools.same_rows import fingerprints

ROOT = Path(__file__).resolve().parents[2]
REQUIRED = {"run_id", "benchmark", "episode_id", "step_index", "compressor", "budget", "model", "prediction",
            "correct", "score", "prompt_tokens", "kept_tokens", "kv_bytes", "kv_bytes_full", "peak_mem_bytes",
            "mem_device", "prefill_s", "decode_s", "error"}


@pytest.mark.slow
def test_smoke_job_end_to_end(ray_local, tmp_path):
    cfg = load_config(ROOT / "jobs" / "smoke.yaml")
    lines: list[str] = []
    result = run_job(cfg, output=str(tmp_path), echo=lines.append)

    steps = sum(len(e.steps) for e in load_episodes(cfg, make_benchmark(cfg)))
    table = read_rows(result.rows_dir)
    assert REQUIRED <= set(table.column_names)
    assert table.num_rows == steps * len(cfg.compressors) * len(cfg.budgets)
    keys = list(zip(table.column("compressor").to_pylist(), table.column("budget").to_pylist(),
                    table.column("episode_id").to_pylist(), table.column("step_index").to_pylist()))
    assert len(keys) == len(set(keys))
    rows = table.to_pylist()
    # the same rows as the golden run, in every deterministic column (tests/tools/same_rows.py); the golden
    # file must change only with results: it was rewritten when the micro agent's weights changed (recipe 2),
    # after the recipe-1 weights had reproduced the previous golden rows on the same code; and when the memory
    # accounting began to count copies made by ops that may alias (``to``: the decode's logits copy, +1,996
    # bytes in peak_decode_bytes, the only column that changed)
    golden = json.loads((ROOT / "tests" / "golden" / "smoke_rows.json").read_text())
    got = fingerprints({r["step_key"]: r for r in rows}, golden["columns"])
    assert got == golden["rows"], sorted(k for k in golden["rows"] if got.get(k) != golden["rows"][k])[:10]
    assert all(r["error"] is None for r in rows), [r["error"] for r in rows if r["error"]][:3]
    for r in rows:
        assert r["kv_bytes_full"] > 0 and r["prefill_s"] > 0 and r["mem_device"]
        if r["compressor"] == "full":
            assert r["kv_bytes"] == r["kv_bytes_full"] and r["kept_tokens"] == r["prompt_tokens"]
        else:
            assert r["kept_tokens"] == int(r["prompt_tokens"] * r["budget"] / 100)
            assert r["kv_bytes"] < r["kv_bytes_full"]
    assert {r["num_images"] for r in rows} >= {1, 5}  # history screenshots reach the prompt (4 past + current)

    # what `make demo` plots: per-unit steps (ray.shared_prefill: false), so each unit's exact peak above the
    # weights is its own and orders every lossy compressor by budget, all below the full cache
    assert not any(r["prefill_shared"] for r in rows)
    peak = {}
    for r in rows:
        key = (r["compressor"], r["budget"])
        peak[key] = max(peak.get(key, 0), r["peak_above_weights_bytes"])
    full = max(v for (c, _), v in peak.items() if c == "full")
    for comp in {c for c, _ in peak} - {"full"}:
        by_budget = [peak[(comp, b)] for b in sorted(cfg.budgets)]
        assert by_budget == sorted(set(by_budget)) and by_budget[-1] < full, (comp, by_budget, full)

    from mlflow.tracking import MlflowClient

    assert result.mlflow_ok and result.tracking_uri.startswith("sqlite:///")
    client = MlflowClient(tracking_uri=result.tracking_uri)
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("starkv.kind") == "job"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == result.mlflow_parent_id]
    assert len(parents) == 1
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert "| compressor | budget |" in parents[0].data.tags["mlflow.note.content"]
    assert len(children) == len(cfg.compressors) * len(cfg.budgets)
    for child in children:
        m, p = child.data.metrics, child.data.params
        for metric in ("accuracy", "mean_peak_mem_bytes", "max_peak_mem_bytes", "mean_kv_bytes", "mean_kv_bytes_full",
                       "steps_per_s", "mean_prefill_s", "mean_decode_s"):
            assert metric in m, metric
        assert m["steps"] == steps
        # readable at a glance: MiB twins, KV ratio in percent, a note and the compressor's colour
        assert m["max_peak_mem_mib"] == pytest.approx(m["max_peak_mem_bytes"] / 2**20) and "kv_ratio_pct" in m
        assert child.data.tags["mlflow.note.content"].startswith(f"### {child.data.tags['compressor']} at ")
        assert child.data.tags["mlflow.runColor"].startswith("#")
        assert {a.path for a in client.list_artifacts(child.info.run_id)} >= {"rows", "unit.png"}
        for param in ("budget", "compressor", "model", "benchmark", "git_commit", "window_size"):
            assert param in p, param
    assert any("summary_table" in a.path for a in client.list_artifacts(parents[0].info.run_id))
    # artifacts live beside the sqlite store, not in the process cwd (a submitted job's cwd is temporary)
    assert exp.artifact_location.startswith((tmp_path / "mlartifacts").as_uri())
    assert list((tmp_path / "mlartifacts").rglob("summary_table.txt"))
    pngs = sorted(p.name for p in (result.rows_dir.parent / "report").glob("*.png"))
    assert "accuracy_vs_budget.png" in pngs and "overview.png" in pngs and len(pngs) == 4
    assert {a.path for a in client.list_artifacts(parents[0].info.run_id)} >= set(pngs)
    assert any("Parquet rows" in line for line in lines) and any("MLflow" in line for line in lines)
