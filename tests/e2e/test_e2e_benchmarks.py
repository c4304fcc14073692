"""End to end per real benchmark: its tiny on-disk fixture -> run_job on real local Ray -> Parquet + MLflow.

One job per benchmark (snapkv at one budget, the tiny model, 8 new tokens, one actor), each dataset with
one deliberately bad item. Checks: one row per step and key, error rows exactly at the bad item, the
number of screenshots per step follows the benchmark's history protocol, and the MLflow unit run carries
the benchmark's official metric names. One Ray cluster (``ray_local``) and one MLflow store serve all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pipeline.config import make_benchmark, parse_config
from pipeline.results.parquet import read_rows
from pipeline.run.job import load_episodes, run_job
from tests.fixtures.benchmarks import (
    SSPRO_APPS,
    mind2web_rows,
    write_mind2web,
    write_screenspot_pro,
    write_screenspot_v2,
)
from tests.fixtures.episodes import (
    ACEpisode,
    default_agentnet_trajectories,
    write_agentnet,
    write_androidcontrol,
)

pytestmark = pytest.mark.slow

SMALL = (336, 224)  # 96 image tokens per screenshot for the tiny model


@dataclass
class Case:
    """A benchmark's fixture writer, the marker its bad item's error names, and what must be logged."""

    write: Callable[[Path], dict[str, Any]]  # -> benchmark options
    marker: str  # substring of the bad step's image path or error message
    image_slots: int  # screenshots per prompt under the benchmark's defaults
    metrics: tuple[str, ...]  # official metric names in the MLflow unit run


def _ssv2(root: Path) -> dict[str, Any]:
    write_screenspot_v2(root, per_cell=1, image_sizes={"mobile": (224, 336), "desktop": SMALL, "web": SMALL})
    (root / "screenspotv2_image" / "desktop_01.png").write_bytes(b"not a png")
    return {}


def _sspro(root: Path) -> dict[str, Any]:
    write_screenspot_pro(root, apps=SSPRO_APPS[:2], per_type=1, image_size=(448, 336))
    (root / "images" / "photoshop_windows" / "screenshot_1.png").unlink()
    return {}


def _androidcontrol(root: Path) -> dict[str, Any]:
    size = (224, 448)
    clicks = [{"action_type": "click", "x": 20 + 25 * i, "y": 60 + 50 * i} for i in range(4)]
    long_ep = ACEpisode(201, "Tap through the screens", [*clicks, {"action_type": "wait"}],
                        [f"Tap item {i + 1}" for i in range(4)] + ["Wait"], size=size)
    bad_ep = ACEpisode(202, "Type a note", [{"action_type": "click", "x": 100, "y": 100}, "not json {"],
                       ["Tap the note", "Broken step"], size=size)
    write_androidcontrol(root / "data", [long_ep, bad_ep], splits={"train": [], "validation": [], "test": [201, 202]},
                         num_shards=1)
    return {"split": "test", "cache_dir": str(root / "cache")}


def _agentnet(root: Path) -> dict[str, Any]:
    traj = default_agentnet_trajectories()[0]  # 3 steps; 3 more so the window of 5 screenshots fills up
    traj["steps"] = [*traj["steps"], *[{**s, "step_num": 10 + i, "image": f"extra_{i}.png"}
                                        for i, s in enumerate(traj["steps"])]]
    write_agentnet(root, [traj], sizes={"s_fixture_a": SMALL}, skip_images={"extra_2.png"})
    return {}


def _mind2web(root: Path) -> dict[str, Any]:
    rows = mind2web_rows()
    rows[1]["operation"] = "not json"
    write_mind2web(root, rows=rows)
    return {"cache_dir": str(root / "cache")}


CASES = {
    "screenspot_v2": Case(_ssv2, "desktop_01.png", 1, ("overall_macro", "micro_accuracy", "text_acc", "icon_acc")),
    "screenspot_pro": Case(_sspro, "photoshop_windows/screenshot_1.png", 1, ("micro_accuracy", "text_acc", "icon_acc")),
    "androidcontrol": Case(_androidcontrol, "actions[1]", 5,
                           ("step_success_rate", "grounding_accuracy", "type_accuracy")),
    "agentnetbench": Case(_agentnet, "extra_2.png", 5,
                          ("overall_score", "average_trajectory_score", "milestone_score")),
    "mind2web": Case(_mind2web, "operation", 1, ("step_sr", "ele_acc", "op_f1", "task_sr")),
}


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory):
    """One MLflow sqlite store for every job of this file (creating a store costs seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.mark.parametrize("bench", sorted(CASES))
def test_benchmark_end_to_end(bench, ray_local, tmp_path, tracking_uri):
    case = CASES[bench]
    data = tmp_path / "data"
    options = case.write(data)
    path = data / "data" if bench == "androidcontrol" else data
    cfg = parse_config({
        "name": f"e2e-{bench}", "model": {"path": "tiny", "max_new_tokens": 8},
        "benchmark": {"name": bench, "path": str(path), "options": options},
        "compressors": [{"name": "snapkv"}], "budgets": [50],
        "ray": {"num_actors": 1, "num_cpus_per_actor": 1}, "tracking": {"experiment": f"e2e-{bench}"},
    })
    result = run_job(cfg, output=str(tmp_path / "out"), tracking_uri=tracking_uri, echo=lambda line: None)

    episodes = load_episodes(cfg, make_benchmark(cfg))
    steps = {(e.episode_id, s.step_index): s for e in episodes for s in e.steps}
    bad = {key for key, s in steps.items() if s.error or case.marker in s.image_path}
    assert len(bad) == 1, bad

    rows = read_rows(result.rows_dir).to_pylist()
    keys = [(r["episode_id"], r["step_index"]) for r in rows]
    assert len(rows) == len(steps) and set(keys) == set(steps) and len(set(keys)) == len(keys)
    by_key = {(r["episode_id"], r["step_index"]): r for r in rows}
    assert {k for k, r in by_key.items() if r["error"]} == bad
    (bad_key,) = bad
    assert case.marker in by_key[bad_key]["error"]

    # screenshots per prompt: the current one plus earlier steps that ran, within the image slots
    for e in episodes:
        ran = 0
        for s in e.steps:
            row = by_key[(e.episode_id, s.step_index)]
            if row["error"]:
                assert row["num_images"] == 0
                continue
            assert row["num_images"] == min(ran + 1, case.image_slots), (e.episode_id, s.step_index)
            assert row["kept_tokens"] == int(row["prompt_tokens"] * 0.5) and row["kv_bytes"] < row["kv_bytes_full"]
            ran += 1
    assert max(r["num_images"] for r in rows) == case.image_slots

    from mlflow.tracking import MlflowClient

    assert result.mlflow_ok
    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(f"e2e-{bench}")
    children = [r for r in client.search_runs([exp.experiment_id])
                if r.data.tags.get("mlflow.parentRunId") == result.mlflow_parent_id]
    assert len(children) == 1
    metrics, params = children[0].data.metrics, children[0].data.params
    for name in case.metrics:
        assert name in metrics, (name, sorted(metrics))
    assert metrics["steps"] == len(steps)
    assert params["benchmark"] == bench and params["compressor"] == "snapkv"
