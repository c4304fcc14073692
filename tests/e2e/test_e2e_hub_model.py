"""End to end, offline: a job whose ``model.path`` is a Hugging Face repo id, found in a hub cache laid out as
``huggingface_hub`` writes it (tests/helpers_hub.py), through real local Ray, Parquet and MLflow.

The same job with ``model.path: tiny`` (the folder the cache was written from) gives the same rows, the
resolved commit reaches the Parquet metadata and MLflow, and nothing is written into the cache.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.config import parse_config
from pipeline.models.tiny import ensure_tiny_model
from pipeline.run.job import fetch_model_on_nodes, run_job
from tests.helpers_hub import write_hub_snapshot
from tests.tools.same_rows import differences, rows_of

SHA = "5d0c2a9e1f3b4c6d7e8f90a1b2c3d4e5f6a7b8c9"
REPO = "starkv-test/tiny-qwen2.5-vl"


def _job(path: str) -> dict:
    return {"name": "hub-e2e", "run_id": "hub-e2e", "model": {"path": path, "max_new_tokens": 8},
            "benchmark": {"name": "synthetic", "options": {"num_episodes": 2, "min_steps": 2, "max_steps": 2}},
            "compressors": ["full", {"name": "snapkv", "params": {"window_size": 4}}], "budgets": [50],
            "ray": {"num_actors": 1, "num_cpus_per_actor": 1}, "tracking": {"experiment": "hub-e2e"}}


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.slow
def test_a_repo_id_runs_a_whole_job_offline_from_the_hub_cache(ray_local, tmp_path, monkeypatch):
    cache = tmp_path / "hf" / "hub"
    snapshot = write_hub_snapshot(ensure_tiny_model(), cache, REPO, SHA, refs=("main",))
    assert snapshot == cache / "models--starkv-test--tiny-qwen2.5-vl" / "snapshots" / SHA
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = _listing(cache)

    lines: list[str] = []
    result = run_job(parse_config(_job(REPO)), output=str(tmp_path / "hub-out"), echo=lines.append)
    assert f"[starkv-eval] model {REPO}@main = commit {SHA}: {snapshot}" in lines
    assert _listing(cache) == before  # resolved from the cache: nothing downloaded, no lock or ref added

    # the same rows as the job that names the tiny folder itself
    tiny = run_job(parse_config(_job("tiny")), output=str(tmp_path / "tiny-out"), echo=lambda _: None)
    hub_rows, tiny_rows = rows_of(result.rows_dir), rows_of(tiny.rows_dir)
    assert len(hub_rows) == 2 * 2 * 2  # episodes x steps x units
    assert differences(hub_rows, tiny_rows) == []
    assert all(r["error"] is None for r in hub_rows.values())

    # the Parquet files name the repo and the commit the name resolved to
    files = sorted(Path(result.rows_dir).glob("*.parquet"))
    assert files
    for file in files:
        meta = {k.decode(): v.decode() for k, v in pq.read_schema(file).metadata.items()}
        assert meta["model_repo"] == REPO and meta["model_revision"] == SHA
        assert json.loads(meta["config"])["model"]["path"] == REPO
    for file in Path(tiny.rows_dir).glob("*.parquet"):
        assert b"model_revision" not in pq.read_schema(file).metadata

    # and so does MLflow: a tag and a param on the parent and on every child
    from mlflow.tracking import MlflowClient

    assert result.mlflow_ok
    client = MlflowClient(tracking_uri=result.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("hub-e2e").experiment_id],
                              filter_string="tags.`starkv.kind` != 'compressor'")  # the job and its units
    assert len(runs) == 1 + 2
    for run in runs:
        assert run.data.tags["model_revision"] == SHA and run.data.params["model_revision"] == SHA
        assert run.data.tags["model"] == REPO

    # a cluster of several nodes first makes every node hold the commit (here: the one local node)
    assert fetch_model_on_nodes(REPO, SHA, str(cache), download=False) == {ray_local.get_runtime_context().get_node_id(): str(snapshot)}
    assert _listing(cache) == before

    # `starkv-eval sync` into a fresh store takes the commit from the Parquet metadata
    from pipeline.cli import main as cli_main

    fresh = f"sqlite:///{tmp_path / 'synced.db'}"
    assert cli_main(["sync", str(tmp_path / "hub-out"), "--tracking-uri", fresh]) == 0
    client = MlflowClient(tracking_uri=fresh)
    synced = client.search_runs([client.get_experiment_by_name("hub-e2e").experiment_id],
                                filter_string="tags.`starkv.kind` != 'compressor'")
    assert len(synced) == 1 + 2
    assert all(r.data.tags["model_revision"] == SHA and r.data.params["model_revision"] == SHA for r in synced)
