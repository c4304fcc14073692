"""Shared pytest fixtures (keep minimal; add new fixtures below)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """Folder with the tiny random Qwen2.5-VL (seed 0), built once per test session."""
    from pipeline.models.tiny import ensure_tiny_model

    return ensure_tiny_model(tmp_path_factory.mktemp("tiny-qwen2.5-vl") / "seed0", seed=0)


@pytest.fixture
def tiny_model(tiny_model_dir):
    """``(model, processor)`` of the tiny model, loaded fresh on CPU in float32 through the loader."""
    from pipeline.models.loader import ModelSpec, load_model

    loaded = load_model(ModelSpec(path=str(tiny_model_dir), device="cpu", dtype="float32"))
    return loaded.model, loaded.processor


@pytest.fixture(scope="session")
def ray_local():
    """One real local Ray cluster for the end-to-end tests of a session (started once, ~5 s)."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, object_store_memory=256 * 1024 * 1024, include_dashboard=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def isolated_mlflow(tmp_path, monkeypatch):
    """Run in tmp_path with no ambient MLFLOW_TRACKING_URI, so no store or artifact lands in the checkout."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture
def memory_copy():
    """Copies local folders into fsspec's memory filesystem (a stand-in for remote storage); cleans up after."""
    import fsspec

    fs = fsspec.filesystem("memory")
    made: list[str] = []

    def copy(local, name: str) -> str:
        fs.put(str(local), f"/{name}", recursive=True)
        made.append(f"/{name}")
        return f"memory://{name}"

    yield copy
    for path in made:
        if fs.exists(path):
            fs.rm(path, recursive=True)


#: fixtures that start a real service (a Ray cluster, an MLflow store or server): their tests are `slow`
SERVICE_FIXTURES = {"ray_local", "isolated_mlflow", "mlflow_server"}
#: modules whose tests run models over whole episodes or train (seconds to a minute each): `slow` too
MODEL_RUN_MODULES = {
    "test_shared_sweep.py", "test_row_decode.py", "test_chunked_prefill.py", "test_episode_state.py",
    "test_guard_sweep_peak.py", "test_agent_protocol.py", "test_bench_sweep.py", "test_bench_memory.py",
    "test_bench_command.py", "test_lowmem.py", "test_memory_accounting.py", "test_mind2web_blocks.py",
    "test_androidcontrol_context.py", "test_micro_agent.py", "test_plugin_benchmark.py", "test_own_peak.py",
}


def pytest_collection_modifyitems(config, items):
    """``make test-fast`` deselects ``slow``: every end-to-end test (tests/e2e/), every test that starts a
    service through a fixture and every test of a model-run module is slow, besides those marked by hand."""
    for item in items:
        in_e2e = "e2e" in item.path.parts
        if in_e2e or item.path.name in MODEL_RUN_MODULES or SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
