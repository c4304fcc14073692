"""``starkv-eval report``: PNG plots of a run folder, attached to the job's parent MLflow run."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.cli import main
from tests.helpers_runs import MIB, step_row, write_run_folder

COMPRESSORS = ("full", "snapkv")
BUDGETS = (20.0, 50.0)


pytestmark = pytest.mark.usefixtures("isolated_mlflow")


def fake_run(output: Path, run_id: str) -> Path:
    """A finished run as `starkv-eval run` leaves it: config.json, Parquet rows, MLflow parent + children."""
    from pipeline.config import make_benchmark, parse_config
    from pipeline.results.parquet import read_rows
    from pipeline.results.summary import summarize
    from pipeline.tracking.mlflow_runs import Tracker, default_tracking_uri

    config = {"name": "rep", "model": {"path": "tiny"},
              "benchmark": {"name": "synthetic", "options": {"num_episodes": 4, "seed": 0}},
              "compressors": [{"name": c} for c in COMPRESSORS], "budgets": list(BUDGETS),
              "tracking": {"experiment": "report-test"}}
    cfg = parse_config(config)
    rows = []
    for comp in COMPRESSORS:
        for budget in BUDGETS:
            keep = 1.0 if comp == "full" else budget / 100
            for step in range(4):
                rows.append(step_row(run_id, comp, budget, step, correct=step < (4 if comp == "full" else budget // 20),
                                     prompt_tokens=1000, kept_tokens=int(1000 * keep), kv_bytes=int(8 * MIB * keep),
                                     kv_bytes_full=8 * MIB, peak_mem_bytes=int((600 + 10 * keep) * MIB)))
    run_dir = write_run_folder(output, run_id, cfg.to_dict(), rows)
    summaries = summarize(read_rows(run_dir / "rows"), make_benchmark(cfg))
    tracker = Tracker(default_tracking_uri(output), "report-test")
    assert tracker.log_job(run_id=run_id, job={**cfg.to_dict(), "run_id": run_id}, summaries=summaries, tags={},
                           table_text="")
    return run_dir


def test_report_cli_writes_pngs_and_logs_them(tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    output = tmp_path / "out"
    run_dir = fake_run(output, "rep-1")
    assert main(["report", str(output)]) == 0
    out = capsys.readouterr().out
    names = ["accuracy_vs_budget.png", "kv_memory_vs_budget.png", "overview.png", "peak_memory_vs_budget.png"]
    for name in names:
        png = run_dir / "report" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
        assert str(png) in out

    client = MlflowClient(tracking_uri=f"sqlite:///{output.resolve() / 'mlflow.db'}")
    exp = client.get_experiment_by_name("report-test")
    parent = client.search_runs([exp.experiment_id], filter_string="tags.`starkv.kind` = 'job'")[0]
    assert parent.data.tags["starkv.run_id"] == "rep-1" and parent.info.run_id in out
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "report")} == {f"report/{n}" for n in names}

    # by run id, into a chosen folder; the same parent run receives the files again (overwritten)
    assert main(["report", "rep-1", "--tracking-uri", f"sqlite:///{output.resolve() / 'mlflow.db'}",
                 "--out", str(tmp_path / "plots")]) == 0
    assert sorted(p.name for p in (tmp_path / "plots").glob("*.png")) == names
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "report")} == {f"report/{n}" for n in names}


def test_report_bad_input(tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert main(["report", "no-such-run", "--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}"]) == 2
    assert "no MLflow store" in capsys.readouterr().err


def test_plot_series_per_compressor(tmp_path):
    from pipeline.results.plots import _series, write_report_plots
    from pipeline.results.summary import UnitSummary

    units = [UnitSummary("snapkv", 50, {"accuracy": 0.5}), UnitSummary("snapkv", 20, {"accuracy": 0.25}),
             UnitSummary("full", 20, {"accuracy": 0.75})]
    assert _series(units, "accuracy") == {"full": [(20.0, 0.75)], "snapkv": [(20.0, 0.25), (50.0, 0.5)]}
    # only the metrics present are drawn
    assert [p.name for p in write_report_plots(units, tmp_path)] == ["accuracy_vs_budget.png"]
