"""What a researcher sees in MLflow, read back through the REST API of a real ``mlflow server`` on loopback.

The experiment opens on the Runs table (its kind), every run explains itself (note), compressors keep one
colour, params and metrics are readable, each child carries its own rows and figure, and a store whose
output folder was moved still serves its artifacts.
"""

from __future__ import annotations

import io
import re
import shutil
import sqlite3
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.cli import main
from tests.helpers_mlflow import Rest, kv, mlflow_server
from tests.helpers_runs import MIB, step_row, write_run_folder

COMPRESSORS = ({"name": "full"}, {"name": "snapkv", "params": {"window_size": 8, "kernel_size": 5}},
               {"name": "starkv"})
BUDGETS = (20.0, 50.0)
EXPERIMENT = "dashboard-test"
PNG = b"\x89PNG\r\n\x1a\n"

pytestmark = pytest.mark.usefixtures("isolated_mlflow")


def fake_output(output: Path, run_id: str = "dash-1") -> Path:
    """A finished run folder (config + Parquet rows of 2 episodes x 3 steps per unit), no model needed."""
    config = {"name": "dash", "model": {"path": "tiny"},
              "benchmark": {"name": "synthetic", "options": {"num_episodes": 2, "seed": 0}},
              "compressors": list(COMPRESSORS), "budgets": list(BUDGETS), "tracking": {"experiment": EXPERIMENT}}
    rows = []
    for c in COMPRESSORS:
        for budget in BUDGETS:
            keep = 1.0 if c["name"] == "full" else budget / 100
            for ep in ("ep0", "ep1"):
                for step in range(3):
                    key = f"{c['name']}@{budget:g}"
                    rows.append(step_row(run_id, c["name"], budget, step, episode_id=ep, step_key=f"{key}/{ep}/{step}",
                                         correct=step < 2, kv_bytes=int(8 * MIB * keep), kv_bytes_full=8 * MIB,
                                         peak_mem_bytes=int((700 + 50 * keep) * MIB),
                                         own_peak_above_weights_bytes=int((2 + 4 * keep) * MIB)))
    return write_run_folder(output, run_id, config, rows)


def test_moved_output_folder_serves_everything_through_the_rest_api(tmp_path, capsys):
    first, moved = tmp_path / "a" / "out", tmp_path / "b" / "out"
    fake_output(first)
    assert main(["sync", str(first)]) == 0
    moved.parent.mkdir()
    shutil.move(first, moved)
    shutil.rmtree(tmp_path / "a")
    with sqlite3.connect(moved / "mlflow.db") as con:  # the store still names the old folder
        (location,) = con.execute("select artifact_location from experiments where name = ?", (EXPERIMENT,)).fetchone()
    assert location == (first / "mlartifacts").as_uri()

    capsys.readouterr()
    assert main(["sync", str(moved)]) == 0  # re-points the artifact URIs at the folder's new place
    out = capsys.readouterr().out
    assert f"store moved: artifact URIs {(first / 'mlartifacts').as_uri()}" in out
    (link,) = re.findall(r"open (http://\S+)", out)  # the Runs table in MLflow's model-training layout

    with mlflow_server(f"sqlite:///{moved / 'mlflow.db'}", tmp_path) as base:
        rest = Rest(base)
        exp = rest.get("experiments/get-by-name", experiment_name=EXPERIMENT)["experiment"]
        assert kv(exp.get("tags"))["mlflow.experimentKind"] == "custom_model_development"
        assert link == (f"http://127.0.0.1:5000/#/experiments/{exp['experiment_id']}/runs?workflowType=machine_learning"
                        "&viewStateShareKey=starkv-dash-1")
        assert urllib.request.urlopen(base, timeout=30).status == 200  # the UI itself is served
        assert exp["artifact_location"] == (moved / "mlartifacts").as_uri()
        runs = rest.runs(exp["experiment_id"])
        parents = [r for r in runs if kv(r["data"].get("tags")).get("starkv.kind") == "job"]
        children = [r for r in runs if kv(r["data"].get("tags")).get("starkv.kind") == "unit"]
        assert len(parents) == 1 and len(children) == len(COMPRESSORS) * len(BUDGETS)
        parent = parents[0]
        _check_parent(rest, parent, children)
        colours: dict[str, set[str]] = {}
        for child in children:
            comp, colour = _check_child(rest, child, parent["info"]["run_id"])
            colours.setdefault(comp, set()).add(colour)
        # one colour per compressor (every budget), a different one for each compressor
        assert set(colours) == {c["name"] for c in COMPRESSORS} and all(len(v) == 1 for v in colours.values())
        assert len(set.union(*colours.values())) == len(COMPRESSORS)


def _check_parent(rest: Rest, parent: dict, children: list[dict]) -> None:
    tags, params = kv(parent["data"]["tags"]), kv(parent["data"]["params"])
    metrics = {m["key"]: m["value"] for m in parent["data"]["metrics"]}
    note = tags["mlflow.note.content"]
    assert note.startswith("### dash:") and "benchmark **synthetic**" in note and "| compressor | budget |" in note
    assert "| snapkv | 20% |" in note and "| starkv | 50% |" in note
    # one readable param per compressor entry, budgets in percent, no Python-list strings anywhere
    assert params["compressor.snapkv"] == "snapkv (window_size=8, kernel_size=5)"
    assert params["compressor.full"] == "full" and params["budgets"] == "20%, 50%"
    assert not [k for k, v in params.items() if v.startswith(("[{", "{'"))]
    # headline numbers per unit on the parent, equal to the child's own
    for child in children:
        ctags = kv(child["data"]["tags"])
        slug = f"{ctags['compressor']}_{ctags['budget']}pct"
        cm = {m["key"]: m["value"] for m in child["data"]["metrics"]}
        for metric in ("accuracy", "max_own_peak_above_weights_mib", "max_peak_mem_mib", "mean_kv_mib",
                       "kv_ratio_pct", "steps_per_s"):
            assert metrics[f"{metric}/{slug}"] == pytest.approx(cm[metric]), (metric, slug)
    files = {f["path"] for f in rest.get("artifacts/list", run_id=parent["info"]["run_id"])["files"]}
    assert {"overview.png", "accuracy_vs_budget.png", "summary_table.txt"} <= files
    assert rest.artifact(parent["info"]["run_id"], "overview.png")[:8] == PNG


def _check_child(rest: Rest, child: dict, parent_id: str) -> tuple[str, str]:
    tags, params = kv(child["data"]["tags"]), kv(child["data"]["params"])
    metrics = {m["key"]: m["value"] for m in child["data"]["metrics"]}
    comp, budget = tags["compressor"], tags["budget"]
    assert tags["mlflow.parentRunId"] == parent_id
    assert child["info"]["run_name"] == f"{comp}@{budget}%"
    assert re.fullmatch(r"#[0-9a-f]{6}", tags["mlflow.runColor"])
    assert tags["mlflow.note.content"].startswith(f"### {comp} at {budget}% KV budget")
    assert params["budget"] == f"{budget}%" and params["compressor"] == comp
    # readable twins beside the exact values
    assert metrics["max_peak_mem_mib"] == pytest.approx(metrics["max_peak_mem_bytes"] / MIB)
    assert metrics["mean_kv_mib"] == pytest.approx(metrics["mean_kv_bytes"] / MIB)
    assert metrics["kv_ratio_pct"] == pytest.approx(100 * metrics["kv_ratio"])
    assert metrics["kv_ratio_pct"] == pytest.approx(100.0 if comp == "full" else float(budget))
    assert metrics["budget_pct"] == float(budget) and metrics["steps_per_s"] > 0
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    # its own artifacts: the unit's rows (only its rows) and its per-step figure
    run_id = child["info"]["run_id"]
    files = {f["path"] for f in rest.get("artifacts/list", run_id=run_id)["files"]}
    assert {"rows", "unit.png"} <= files
    parquet = [f["path"] for f in rest.get("artifacts/list", run_id=run_id, path="rows")["files"]]
    assert parquet == [f"rows/{comp}_{budget}pct.parquet"]
    table = pq.read_table(io.BytesIO(rest.artifact(run_id, parquet[0])))
    assert table.num_rows == 6 and set(table.column("compressor").to_pylist()) == {comp}
    assert set(table.column("budget").to_pylist()) == {float(budget)}
    assert rest.artifact(run_id, "unit.png")[:8] == PNG
    return comp, tags["mlflow.runColor"]


def test_sync_rebuilds_a_complete_store_elsewhere(tmp_path):
    from mlflow.tracking import MlflowClient

    output = tmp_path / "out"
    fake_output(output)
    store = tmp_path / "elsewhere"
    store.mkdir()
    uri = f"sqlite:///{store / 'mlflow.db'}"
    assert main(["sync", str(output), "--tracking-uri", uri]) == 0
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    assert exp.artifact_location == (store / "mlartifacts").as_uri()
    for run in client.search_runs([exp.experiment_id]):
        names = {a.path for a in client.list_artifacts(run.info.run_id)}
        expected = {"job": {"overview.png", "summary_table.txt"}, "unit": {"rows", "unit.png"},
                    "compressor": set()}[run.data.tags["starkv.kind"]]
        assert expected <= names, (run.info.run_name, names)
    assert len(list((store / "mlartifacts").rglob("*.parquet"))) == len(COMPRESSORS) * len(BUDGETS)
    assert not (output / "mlflow.db").exists()


def test_compressor_colours_are_fixed_and_distinct():
    from pipeline.results.colours import BUILTIN_COLOURS, compressor_colour
    from starkv.compressor import COMPRESSORS

    # the compressors this project ships (plugins registered by other tests are not built-ins)
    builtins = [n for n, cls in COMPRESSORS.items() if cls.__module__.startswith(("starkv.", "baselines."))]
    colours = [compressor_colour(name) for name in builtins]
    assert set(builtins) <= set(BUILTIN_COLOURS) and len(set(colours)) == len(colours)
    # a label outside the built-ins gets a stable colour (a hash of the label, not of the process)
    assert compressor_colour("starkv-noprior") == compressor_colour("starkv-noprior")
    assert compressor_colour("starkv-noprior") not in colours


def test_every_byte_metric_gets_a_mib_twin():
    from pipeline.tracking.view import readable_metrics

    out = readable_metrics({"peak_above_weights_bytes": 3 * MIB, "mean_kv_bytes_full": MIB / 2, "kv_ratio": 0.2})
    assert out["peak_above_weights_mib"] == 3.0 and out["mean_kv_full_mib"] == 0.5
    assert out["kv_ratio_pct"] == pytest.approx(20.0) and out["peak_above_weights_bytes"] == 3 * MIB


def test_relocate_leaves_a_store_in_place_alone(tmp_path):
    from pipeline.tracking.artifact_move import relocate_local_store

    output = tmp_path / "out"
    fake_output(output)
    assert main(["sync", str(output)]) == 0
    assert relocate_local_store(f"sqlite:///{output / 'mlflow.db'}") == []
    assert relocate_local_store(f"sqlite:///{tmp_path / 'missing.db'}") == []


def test_compressor_runs_draw_each_metric_over_the_budget_once(tmp_path):
    """One top-level run per compressor, ``accuracy`` and the memory logged at step = budget; a second sync adds
    no point, and the job's view (columns, filter, budget charts) is the experiment tag the link names."""
    import json

    from mlflow.tracking import MlflowClient

    output = tmp_path / "out"
    fake_output(output)
    assert main(["sync", str(output)]) == 0
    assert main(["sync", str(output)]) == 0
    client = MlflowClient(tracking_uri=f"sqlite:///{output / 'mlflow.db'}")
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([exp.experiment_id], "tags.`starkv.kind` = 'compressor'")
    (parent,) = client.search_runs([exp.experiment_id], "tags.`starkv.kind` = 'job'")
    assert sorted(r.info.run_name for r in runs) == ["full (by budget)", "snapkv (by budget)", "starkv (by budget)"]
    for run in runs:
        assert "mlflow.parentRunId" not in run.data.tags  # a row of its own, so the charts draw it
        assert run.data.tags["starkv.parent_run"] == parent.info.run_id
        full = run.data.tags["starkv.compressor"] == "full"
        # 4 of 6 steps right at every budget (fake_output); the kept KV is the budget, all of it for full
        history = {k: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, k)]
                   for k in ("accuracy", "kv_ratio_pct", "budget_pct", "max_own_peak_above_weights_mib")}
        assert history["accuracy"] == [(20, pytest.approx(4 / 6)), (50, pytest.approx(4 / 6))]
        assert history["kv_ratio_pct"] == ([(20, pytest.approx(100.0)), (50, pytest.approx(100.0))] if full
                                           else [(20, pytest.approx(20.0)), (50, pytest.approx(50.0))])
        assert history["budget_pct"] == [(20, 20.0), (50, 50.0)]
        keep = [1.0, 1.0] if full else [0.2, 0.5]
        # peak memory is the unit's own exact peak above the weights, never the process RSS
        assert [v for _, v in history["max_own_peak_above_weights_mib"]] == [pytest.approx(2 + 4 * k) for k in keep]
        assert client.get_metric_history(run.info.run_id, "max_peak_mem_mib") == []
    state = json.loads(exp.tags["mlflow.sharedViewState.starkv-dash-1"])
    assert state["searchFilter"] == "tags.`starkv.run_id` = 'dash-1'"
    assert state["selectedColumns"][:3] == ["metrics.`accuracy`", "metrics.`accuracy_ci_low`",
                                            "metrics.`accuracy_ci_high`"]
    charts = {c["metricKey"]: c for c in state["compareRunCharts"]}
    assert charts["accuracy"]["type"] == "LINE" and charts["accuracy"]["selectedXAxisMetricKey"] == "budget_pct"
    assert "max_own_peak_above_weights_mib" in charts and "max_peak_mem_mib" not in charts


def test_a_changed_value_replaces_the_compressor_run(tmp_path):
    """MLflow cannot overwrite a point: a re-log with another value at a budget logs the run anew (the old one
    deleted), so the line never holds two values at one budget."""
    from mlflow.tracking import MlflowClient

    from pipeline.results.summary import UnitSummary
    from pipeline.tracking.mlflow_runs import Tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    job = {"name": "j", "model": {"path": "tiny"}, "benchmark": {"name": "synthetic"}, "compressors": [],
           "budgets": [20, 50]}

    def log(accuracy_at_50: float) -> tuple[str, list]:
        summaries = [UnitSummary("snapkv", 20.0, {"accuracy": 0.25, "kv_ratio": 0.2}),
                     UnitSummary("snapkv", 50.0, {"accuracy": accuracy_at_50, "kv_ratio": 0.5})]
        tracker = Tracker(uri, "replace-test")
        assert tracker.log_job(run_id="j-1", job=job, summaries=summaries, tags={}, table_text="") is not None
        client = MlflowClient(tracking_uri=uri)
        (run,) = client.search_runs([tracker.experiment_id], "tags.`starkv.kind` = 'compressor'")
        return run.info.run_id, [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "accuracy")]

    first, points = log(0.5)
    assert points == [(20, 0.25), (50, 0.5)]
    same, points = log(0.5)
    assert same == first and points == [(20, 0.25), (50, 0.5)]
    other, points = log(0.75)
    assert other != first and points == [(20, 0.25), (50, 0.75)]
