"""A new benchmark is one package under pipeline/benchmarks/: found, registered, configured and run as is."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

import pipeline.benchmarks as benchmarks
from pipeline.benchmarks.common.base import BENCHMARKS
from pipeline.config import make_benchmark, parse_config

EXAMPLE = Path(__file__).resolve().parents[1] / "plugin_benchmark.py"


@pytest.fixture
def plugin_package(tmp_path, monkeypatch):
    """tests/plugin_benchmark.py copied into a new package of the benchmarks folder (a second search path)."""
    package = tmp_path / "benchmarks" / "centre"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text('"""Click the centre of the screen (an example benchmark)."""\n')
    shutil.copy(EXAMPLE, package / "benchmark.py")
    monkeypatch.setattr(benchmarks, "__path__", [*benchmarks.__path__, str(package.parent)])
    benchmarks._register_builtin()
    yield "plugin_centre"
    BENCHMARKS.pop("plugin_centre", None)
    import sys

    for name in [m for m in sys.modules if m.startswith("pipeline.benchmarks.centre")]:
        del sys.modules[name]


def test_a_package_is_all_a_benchmark_needs(plugin_package, tmp_path, tiny_model_dir):
    import starkv
    from pipeline.metrics.units import Unit
    from pipeline.models.loader import ModelSpec, load_model
    from pipeline.step.engine import EpisodeRunner

    data = tmp_path / "screens"
    data.mkdir()
    for i in range(2):
        Image.new("RGB", (112, 84), (40 * i, 90, 160)).save(data / f"s{i}.png")
    cfg = parse_config({"name": "plugin", "model": {"path": str(tiny_model_dir), "max_new_tokens": 4},
                        "benchmark": {"name": plugin_package, "path": str(data)},
                        "compressors": [{"name": "snapkv"}], "budgets": [50]})
    bench = make_benchmark(cfg)
    episodes = list(bench.load())
    assert [len(e.steps) for e in episodes] == [1, 1]

    loaded = load_model(ModelSpec(path=str(tiny_model_dir), device="cpu", dtype="float32"))
    runner = EpisodeRunner(loaded, bench, cfg.agent, max_new_tokens=4)
    rows = runner.run(episodes[0], starkv.build("snapkv"), Unit("r", "snapkv", 50.0, "tiny"))
    assert len(rows) == 1 and rows[0]["error"] is None, rows[0]["error"]
    assert rows[0]["benchmark"] == "plugin_centre" and rows[0]["kept_tokens"] > 0
