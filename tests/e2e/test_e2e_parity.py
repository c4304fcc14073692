"""``protocol: reference`` end to end: a fixture in the reference driver's layout -> run_job on real local
Ray with the tiny model -> rows scored by the driver's rules and the driver's aggregate in MLflow."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.config import parse_config
from pipeline.results.parquet import read_rows
from pipeline.run.job import run_job
from tests.fixtures.episodes import default_agentnet_trajectories, write_agentnet
from tests.fixtures.reference import default_androidcontrol_steps, write_androidcontrol_steps

pytestmark = pytest.mark.slow

SMALL = (224, 336)


def _androidcontrol(root: Path) -> tuple[str, dict]:
    records = default_androidcontrol_steps()
    records[2] = dict(records[2], screenshot="501/gone.png")  # a record whose screenshot is missing
    write_androidcontrol_steps(root, records, sizes={"501": SMALL, "502": SMALL}, skip_images={"501/gone.png"})
    return str(root), {"protocol": "reference"}


def _agentnet(root: Path) -> tuple[str, dict]:
    write_agentnet(root, default_agentnet_trajectories()[:1], sizes={"s_fixture_a": (336, 224)},
                   skip_images={"s_fixture_a_2.png"})
    return str(root), {"protocol": "reference"}


CASES = {"androidcontrol": (_androidcontrol, "501/gone.png", "step_success_rate", 6),
         "agentnetbench": (_agentnet, "s_fixture_a_2.png", "num_skipped", 3)}


@pytest.mark.parametrize("bench", sorted(CASES))
def test_reference_protocol_end_to_end(bench, ray_local, tmp_path):
    write, missing, metric, n_steps = CASES[bench]
    path, options = write(tmp_path / "data")
    cfg = parse_config({
        "name": f"parity-{bench}", "model": {"path": "tiny", "max_new_tokens": 8},
        "benchmark": {"name": bench, "path": path, "options": options},
        "compressors": [{"name": "snapkv"}], "budgets": [50],
        "ray": {"num_actors": 1, "num_cpus_per_actor": 1}, "tracking": {"experiment": f"parity-{bench}"},
    })
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_job(cfg, output=str(tmp_path / "out"), tracking_uri=tracking, echo=lambda line: None)
    rows = read_rows(result.rows_dir).to_pylist()
    assert len(rows) == n_steps
    errors = [r for r in rows if r["error"]]
    assert len(errors) == 1 and missing in errors[0]["error"]
    scored = [json.loads(r["meta_json"]).get("score_fields", {}) for r in rows if not r["error"]]
    if bench == "androidcontrol":  # the driver's scorer ran: it records the size it scored in
        assert all(f.get("driver_size") == list(SMALL) for f in scored)
    else:
        assert all("has_prediction" in f for f in scored)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking)
    exp = client.get_experiment_by_name(f"parity-{bench}")
    [child] = [r for r in client.search_runs([exp.experiment_id])
               if r.data.tags.get("mlflow.parentRunId") == result.mlflow_parent_id]
    assert metric in child.data.metrics
    if bench == "agentnetbench":
        assert child.data.metrics["num_skipped"] == 1.0  # the missing screenshot is skipped, as the driver does
