"""``starkv-eval regress``: golden statuses of the comparison, input forms, exit codes, and an end-to-end
gate over two real Ray runs, one with an injected regression."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from pipeline.cli import main
from pipeline.results.regression import (
    CHECK_BY_NAME,
    DEFAULT_TOLERANCES,
    IMPROVED,
    MISSING,
    NEW,
    OK,
    REGRESSION,
    SKIPPED,
    RegressionInputError,
    compare,
    judge,
    parse_tolerances,
    resolve_tolerances,
)
from pipeline.results.summary import UnitSummary
from pipeline.tracking.sources import load_expected, resolve_run
from tests.helpers_runs import MIB, step_row, write_run_folder

ROOT = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("isolated_mlflow")


def unit(comp: str, budget: float, acc: float, peak_mib: float, kv_mib: float, sps: float, errors: float = 0):
    return UnitSummary(comp, budget, {"accuracy": acc, "max_peak_mem_bytes": peak_mib * MIB,
                                      "mean_kv_bytes": kv_mib * MIB, "steps_per_s": sps, "errors": errors})


def statuses(rows) -> dict[tuple[str, str], str]:
    return {(r.unit, r.check): r.status for r in rows}


# ------------------------------------------------------------------------------------- comparison logic

def test_compare_golden_statuses():
    tol = {"accuracy": 0.02, "peak_memory": 0.10, "kv_bytes": 0.02, "throughput": 0.30, "errors": 0}
    baseline = [unit("snapkv", 20, 0.50, 1000, 10.0, 4.0), unit("full", 20, 0.60, 1000, 50.0, 4.0),
                unit("starkv", 20, 0.55, 1000, 10.0, 4.0)]
    current = [
        # accuracy -0.03 (> 0.02) REGRESSION; peak +9% OK; kv -10% IMPROVED; throughput -50% REGRESSION; errors +1
        unit("snapkv", 20, 0.47, 1090, 9.0, 2.0, errors=1),
        # accuracy -0.02 exactly at the tolerance: OK (float rounding must not flip it); peak +11% REGRESSION;
        # kv +2% exactly: OK; throughput +40% IMPROVED
        unit("full", 20, 0.58, 1110, 51.0, 5.6),
        unit("snapkv", 50, 0.5, 1000, 25.0, 4.0),  # not in the baseline
    ]
    rows = compare(baseline, current, tol)
    got = statuses(rows)
    assert got == {
        ("full@20", "accuracy"): OK, ("full@20", "peak_memory"): REGRESSION, ("full@20", "kv_bytes"): OK,
        ("full@20", "throughput"): IMPROVED, ("full@20", "errors"): OK,
        ("snapkv@20", "accuracy"): REGRESSION, ("snapkv@20", "peak_memory"): OK,
        ("snapkv@20", "kv_bytes"): IMPROVED, ("snapkv@20", "throughput"): REGRESSION,
        ("snapkv@20", "errors"): REGRESSION,
        ("snapkv@50", "unit"): NEW, ("starkv@20", "unit"): MISSING,
    }
    by = {(r.unit, r.check): r for r in rows}
    assert by[("snapkv@20", "accuracy")].delta == pytest.approx(-0.03)
    assert by[("snapkv@20", "kv_bytes")].delta == pytest.approx(-0.10)
    assert by[("snapkv@20", "throughput")].delta == pytest.approx(-0.50)
    assert by[("full@20", "peak_memory")].delta == pytest.approx(0.11)
    assert [r.unit for r in rows][0] == "full@20"  # sorted by (compressor, budget)


def test_report_counts_and_table():
    from pipeline.results.regression import RegressionReport

    rows = compare([unit("snapkv", 20, 0.5, 100, 10, 4)], [unit("snapkv", 20, 0.4, 100, 10, 4)], {})
    report = RegressionReport("base", "cur", resolve_tolerances(None, None), rows)
    assert [(r.unit, r.check) for r in report.regressions] == [("snapkv@20", "accuracy")]
    table = report.format_table()
    line = next(x for x in table.splitlines() if x.startswith("snapkv@20") and "accuracy" in x)
    assert line.split() == ["snapkv@20", "accuracy", "0.500", "0.400", "-0.100", "0.02", "REGRESSION"]
    kv = next(x for x in table.splitlines() if "kv_bytes" in x)
    assert "10.000 MiB" in kv and "+0.0%" in kv and "2%" in kv and kv.endswith("OK")
    assert "1 regression(s)" in table and "snapkv@20 accuracy" in table
    assert json.loads(json.dumps(report.to_dict()))["regressions"] == 1


def test_judge_edges():
    kv = CHECK_BY_NAME["kv_bytes"]
    assert judge(kv, 0.0, 0.0, 0.02) == (0.0, OK)
    delta, status = judge(kv, 0.0, 5.0, 0.02)  # from nothing kept to something: infinitely more
    assert math.isinf(delta) and status == REGRESSION
    assert judge(kv, 100.0, 300.0, None) == (2.0, SKIPPED)  # disabled check: reported, never counted
    thr = CHECK_BY_NAME["throughput"]
    assert judge(thr, 10.0, 7.0, 0.30) == (pytest.approx(-0.30), OK)
    assert judge(thr, 10.0, 6.9, 0.30)[1] == REGRESSION
    acc = CHECK_BY_NAME["accuracy"]
    assert judge(acc, 0.7, 0.68, 0.02)[1] == OK and judge(acc, 0.7, 0.6799, 0.02)[1] == REGRESSION


def test_disabled_and_partial_baseline():
    # An expected-values baseline naming only accuracy compares only accuracy; a null tolerance skips.
    base = [UnitSummary("snapkv", 30, {"accuracy": 0.9})]
    cur = [unit("snapkv", 30, 0.1, 900, 5, 1)]
    rows = compare(base, cur, {"accuracy": None})
    assert statuses(rows) == {("snapkv@30", "accuracy"): SKIPPED}
    rows = compare(base, cur, {})
    assert statuses(rows) == {("snapkv@30", "accuracy"): REGRESSION}


def test_size_mismatch_note():
    from pipeline.results.regression import size_mismatches

    base = [UnitSummary("snapkv", 20, {"steps": 12.0}), UnitSummary("full", 20, {"steps": 12.0})]
    cur = [UnitSummary("snapkv", 20, {"steps": 9.0}), UnitSummary("full", 20, {"steps": 12.0})]
    assert size_mismatches(base, cur) == ["snapkv@20: 9 steps in the current run vs 12 in the baseline "
                                          "(partial run or different data?)"]


def test_tolerances_parse_and_precedence(tmp_path):
    assert parse_tolerances({"accuracy": 0.05, "throughput": None, "peak_memory": "off"}) == \
        {"accuracy": 0.05, "throughput": None, "peak_memory": None}
    with pytest.raises(RegressionInputError, match="unknown check 'acc'"):
        parse_tolerances({"acc": 0.1})
    with pytest.raises(RegressionInputError, match="kv_bytes"):
        parse_tolerances({"kv_bytes": -1})
    with pytest.raises(RegressionInputError):
        parse_tolerances({"kv_bytes": "lots"})
    # a job YAML is accepted: its regression section is used
    assert parse_tolerances(yaml.safe_load((ROOT / "jobs" / "nightly.yaml").read_text()))["kv_bytes"] == 0
    # --tolerances beats the config section; either is merged over the defaults
    merged = resolve_tolerances({"accuracy": 0.1}, {"accuracy": 0.5, "kv_bytes": None})
    assert merged == {**DEFAULT_TOLERANCES, "accuracy": 0.1}
    assert resolve_tolerances(None, {"kv_bytes": None}) == {**DEFAULT_TOLERANCES, "kv_bytes": None}
    assert resolve_tolerances(None, None) == DEFAULT_TOLERANCES


def test_nightly_job_config():
    import starkv
    from pipeline.config import load_config

    cfg = load_config(ROOT / "jobs" / "nightly.yaml")
    names = [c.name for c in cfg.compressors]
    assert names[:2] == ["full", "snapkv"] and ("starkv" in names) == ("starkv" in starkv.available())
    assert cfg.budgets == [20, 50] and cfg.benchmark.options["num_episodes"] == 6
    assert cfg.model.path == "micro" and cfg.benchmark.name == "launcher"  # accuracy responds to compression
    tol = parse_tolerances(cfg.regression)
    assert set(tol) == {"accuracy", "peak_memory", "peak_above_weights", "kv_bytes", "throughput", "errors"}
    assert tol["peak_above_weights"] == 0 and tol["kv_bytes"] == 0  # exact memory figures: compared exactly


# ------------------------------------------------------------------------------------- inputs

def write_yaml(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_expected_values_yaml(tmp_path):
    path = write_yaml(tmp_path / "expected.yaml", {"units": [
        {"compressor": "snapkv", "budget": 30, "accuracy": 0.9, "kv_bytes": 1000},
        {"compressor": "full", "budget": 30, "throughput": 2.5, "peak_memory": None}]})
    run = load_expected(path)
    assert run.kind == "expected"
    assert [(u.compressor, u.budget, u.metrics) for u in run.units] == [
        ("snapkv", 30.0, {"accuracy": 0.9, "mean_kv_bytes": 1000.0}), ("full", 30.0, {"steps_per_s": 2.5})]
    for bad, msg in [({"units": []}, "non-empty"), ({"units": [{"compressor": "x"}]}, "budget"),
                     ({"units": [{"compressor": "x", "budget": 1, "accuracy": "high"}]}, "accuracy"),
                     ({"name": "j", "compressors": ["full"], "budgets": [1]}, "job config")]:
        with pytest.raises(RegressionInputError, match=msg):
            load_expected(write_yaml(tmp_path / "bad.yaml", bad))


def test_cli_with_expected_values(tmp_path, capsys, monkeypatch):
    base = write_yaml(tmp_path / "base.yaml", {"units": [
        {"compressor": "snapkv", "budget": 30, "accuracy": 0.5, "mean_kv_bytes": 1000.0}]})
    good = write_yaml(tmp_path / "good.yaml", {"units": [
        {"compressor": "snapkv", "budget": 30, "accuracy": 0.49, "mean_kv_bytes": 1010.0}]})
    bad = write_yaml(tmp_path / "bad.yaml", {"units": [
        {"compressor": "snapkv", "budget": 30, "accuracy": 0.5, "mean_kv_bytes": 1100.0}]})
    assert main(["regress", "--baseline", str(base), "--current", str(good)]) == 0
    assert main(["regress", "--baseline", str(base), "--current", str(base)]) == 0
    capsys.readouterr()
    assert main(["regress", "--baseline", str(base), "--current", str(bad)]) == 1
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if "kv_bytes" in x and x.startswith("snapkv@30"))
    assert line.split()[-1] == "REGRESSION" and "+10.0%" in line
    # tolerances from a file: 20 % allowed -> passes; JSON output
    tol = write_yaml(tmp_path / "tol.yaml", {"kv_bytes": 0.2})
    assert main(["regress", "--baseline", str(base), "--current", str(bad), "--tolerances", str(tol), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["regressions"] == 0 and data["tolerances"]["kv_bytes"] == 0.2
    # bad input -> 2
    assert main(["regress", "--baseline", str(tmp_path / "nope"), "--current", str(bad)]) == 2
    assert main(["regress", "--baseline", str(base), "--current", str(bad), "--tolerances",
                 str(write_yaml(tmp_path / "t2.yaml", {"speed": 1}))]) == 2
    assert main(["regress", "--baseline", "no-such-run", "--current", str(bad),
                 "--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}"]) == 2
    assert "unknown check 'speed'" in capsys.readouterr().err


def test_cli_fails_when_a_baseline_unit_is_missing(tmp_path, capsys):
    """Exit 1 when the current run lacks a unit of the baseline, even with every shared metric equal."""
    both = write_yaml(tmp_path / "both.yaml", {"units": [
        {"compressor": "snapkv", "budget": 30, "accuracy": 0.5}, {"compressor": "full", "budget": 30, "accuracy": 0.6}]})
    one = write_yaml(tmp_path / "one.yaml", {"units": [{"compressor": "snapkv", "budget": 30, "accuracy": 0.5}]})
    assert main(["regress", "--baseline", str(both), "--current", str(one)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert next(x for x in lines if x.startswith("full@30")).split() == ["full@30", "unit", "-", "-", "-", "-",
                                                                        "MISSING"]
    assert any(x.startswith("1 regression(s)") and x.endswith(": full@30 unit") for x in lines)
    assert main(["regress", "--baseline", str(both), "--current", str(one), "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["regressions"] == 1
    # the other way round the extra unit is only NEW: not a failure
    assert main(["regress", "--baseline", str(one), "--current", str(both)]) == 0
    assert next(x for x in capsys.readouterr().out.splitlines() if x.startswith("full@30")).split()[-1] == "NEW"


def write_fake_run(output: Path, run_id: str, units: dict[tuple[str, float], tuple[bool, int]]) -> Path:
    """A run folder as `starkv-eval run` leaves it: config.json + Parquet rows (2 steps per unit)."""
    config = {"name": "fake", "model": {"path": "tiny"}, "benchmark": {"name": "synthetic",
              "options": {"num_episodes": 4, "seed": 0}}, "compressors": sorted({c for c, _ in units}),
              "budgets": sorted({b for _, b in units}), "tracking": {"experiment": "fake-exp"},
              "regression": {"throughput": None}}
    rows = [step_row(run_id, comp, budget, step, correct=correct and step == 0, kv_bytes=kv)
            for (comp, budget), (correct, kv) in units.items() for step in range(2)]
    return write_run_folder(output, run_id, config, rows)


def test_run_folder_inputs(tmp_path, capsys):
    out = tmp_path / "out"
    run_dir = write_fake_run(out, "fake-a", {("snapkv", 20.0): (True, 1000), ("full", 20.0): (False, 4000)})
    for spec in (run_dir, run_dir / "rows", run_dir / "rows" / "part-0.parquet", out):
        run = resolve_run(str(spec))
        assert run.kind == "run" and run.run_id == "fake-a" and run.mem_device == "cpu_rss_hwm"
        got = {(u.compressor, u.budget): u.metrics for u in run.units}
        assert got[("snapkv", 20.0)]["accuracy"] == 0.5 and got[("full", 20.0)]["accuracy"] == 0.0
        assert got[("snapkv", 20.0)]["mean_kv_bytes"] == 1000 and got[("snapkv", 20.0)]["steps_per_s"] == \
            pytest.approx(2 / 0.5)
        assert run.regression_section == {"throughput": None}
        assert run.tracking_uri == f"sqlite:///{out.resolve() / 'mlflow.db'}"
    # several runs in one output folder: the newest, with a note
    import os
    import time

    newer = write_fake_run(out, "fake-b", {("snapkv", 20.0): (True, 3000), ("full", 20.0): (False, 4000)})
    later = time.time() + 5
    for f in newer.rglob("*"):
        os.utime(f, (later, later))
    run = resolve_run(str(out))
    assert run.run_id == "fake-b" and "newest: fake-b" in run.notes[0]
    # the gate over folders: kv bytes tripled in snapkv@20 -> exit 1 naming unit and metric
    assert main(["regress", "--baseline", str(run_dir), "--current", str(newer)]) == 1
    text = capsys.readouterr().out
    assert any(x.startswith("snapkv@20") and "kv_bytes" in x and "REGRESSION" in x for x in text.splitlines())
    assert any(x.startswith("snapkv@20") and "throughput" in x and "SKIPPED" in x for x in text.splitlines())
    assert main(["regress", "--baseline", str(newer), "--current", str(newer)]) == 0
    # the comparison was logged to the current run's store as a regression run
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=run.tracking_uri)
    exp = client.get_experiment_by_name("fake-exp")
    logged = client.search_runs([exp.experiment_id], filter_string="tags.`starkv.kind` = 'regression'",
                                order_by=["attributes.start_time ASC"])
    assert [r.data.metrics["regressions"] for r in logged] == [1.0, 0.0]
    assert {a.path for a in client.list_artifacts(logged[0].info.run_id)} >= {"regression_table.txt",
                                                                               "regression.json"}


def test_mlflow_run_id_input(tmp_path):
    from pipeline.tracking.mlflow_runs import Tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    job = {"model": {"path": "tiny"}, "benchmark": {"name": "synthetic"}, "compressors": [{"name": "snapkv"}],
           "regression": {"kv_bytes": 0.05, "throughput": None}}
    units = [unit("snapkv", 20, 0.25, 100, 2, 3)]
    pid = Tracker(uri, "exp-x").log_job(run_id="job-123", job=job, summaries=units, tags={}, table_text="t")
    assert pid
    for ref in ("job-123", pid):
        run = resolve_run(ref, tracking_uri=uri)
        assert run.kind == "mlflow" and run.run_id == "job-123" and run.mlflow_parent_id == pid
        assert [(u.compressor, u.budget) for u in run.units] == [("snapkv", 20.0)]
        assert run.units[0].metrics["accuracy"] == 0.25 and run.units[0].metrics["mean_kv_bytes"] == 2 * MIB
        assert run.regression_section == {"kv_bytes": 0.05, "throughput": None}
    with pytest.raises(RegressionInputError, match="no job run"):
        resolve_run("job-999", tracking_uri=uri)


# ------------------------------------------------------------------------------------- end to end

def small_job(name: str, compressor: dict) -> dict:
    return {"name": name, "model": {"path": "tiny", "max_new_tokens": 4},
            "benchmark": {"name": "synthetic", "options": {"num_episodes": 2, "seed": 0}},
            "compressors": [compressor], "budgets": [30],
            "ray": {"num_actors": 1, "num_cpus_per_actor": 1},
            "tracking": {"experiment": "regress-e2e"},
            # CPU peak RSS and throughput are too noisy on a shared 2-core machine to gate on
            "regression": {"peak_memory": None, "throughput": None}}


@pytest.mark.slow
def test_regress_end_to_end(ray_local, tmp_path, monkeypatch, capsys):
    """Two real runs through Ray; the second keeps the least attended tokens at twice the budget."""
    import starkv
    from baselines.scorers.snapkv import SnapKV
    from pipeline.config import parse_config
    from pipeline.run import job as run_mod
    from starkv.compressor import COMPRESSORS

    @starkv.register("snapkv_wrong_tokens")
    @dataclass
    class WrongTokensSnapKV(SnapKV):
        """SnapKV that keeps the least attended tokens, and ``budget_scale`` times as many as allowed."""

        budget_scale: float = 1.0

        def score(self, ctx):
            return -super().score(ctx)

        def layer_capacity(self, prompt_length, cap, layer_idx, num_layers):
            return min(prompt_length, int(cap * self.budget_scale))

    class Actor(run_mod.EpisodeActor):
        """The pipeline's actor, registering the test compressor in the worker first (the local classes
        travel to the worker by value, so no test module needs to be importable there)."""

        def __init__(self, *args, **kwargs):
            from starkv import compressor as registry  # the worker's own registry, not a pickled copy

            if "snapkv_wrong_tokens" not in registry.COMPRESSORS:
                registry.register("snapkv_wrong_tokens")(WrongTokensSnapKV)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(run_mod, "EpisodeActor", Actor)
    try:
        base = run_mod.run_job(parse_config(small_job("e2e", {"name": "snapkv"})), output=str(tmp_path / "base"),
                               echo=lambda _: None)
        cur = run_mod.run_job(parse_config(small_job("e2e", {"name": "snapkv_wrong_tokens", "label": "snapkv",
                                                             "params": {"budget_scale": 2.0}})),
                              output=str(tmp_path / "cur"), echo=lambda _: None)
    finally:
        COMPRESSORS.pop("snapkv_wrong_tokens", None)
    assert [s.key for s in base.summaries] == [s.key for s in cur.summaries] == ["snapkv@30"]
    assert base.summaries[0].metrics["errors"] == 0 and cur.summaries[0].metrics["errors"] == 0
    capsys.readouterr()

    # a run against itself: no regression
    assert main(["regress", "--baseline", str(tmp_path / "base"), "--current", str(tmp_path / "base")]) == 0
    assert "0 regression(s)" in capsys.readouterr().out

    # the injected run: kept KV bytes about doubled -> exit 1 naming unit and metric
    assert main(["regress", "--baseline", str(tmp_path / "base"), "--current", str(tmp_path / "cur"), "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    bad = [(r["unit"], r["check"]) for r in data["rows"] if r["status"] == REGRESSION]
    assert ("snapkv@30", "kv_bytes") in bad
    kv = next(r for r in data["rows"] if r["check"] == "kv_bytes")
    assert 0.5 < kv["delta"] < 1.2, kv

    # baseline by MLflow run id (looked up in the baseline's store), table output
    assert main(["regress", "--baseline", base.run_id, "--current", str(tmp_path / "cur"),
                 "--tracking-uri", base.tracking_uri]) == 1
    out = capsys.readouterr().out
    assert any(x.startswith("snapkv@30") and "kv_bytes" in x and x.endswith("REGRESSION") for x in out.splitlines())

    # expected values the run cannot meet (the tiny random model scores ~0)
    expected = write_yaml(tmp_path / "expected.yaml", {"units": [
        {"compressor": "snapkv", "budget": 30, "accuracy": 0.9,
         "mean_kv_bytes": base.summaries[0].metrics["mean_kv_bytes"]}]})
    assert main(["regress", "--baseline", str(expected), "--current", str(tmp_path / "cur")]) == 1
    out = capsys.readouterr().out
    assert any(x.startswith("snapkv@30") and "accuracy" in x and x.endswith("REGRESSION") for x in out.splitlines())
    assert main(["regress", "--baseline", str(expected), "--current", str(tmp_path / "base"),
                 "--tolerances", str(write_yaml(tmp_path / "t.yaml", {"accuracy": 1.0}))]) == 0

    # the regression runs are in the current run's MLflow store, tagged and counted
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=cur.tracking_uri)
    exp = client.get_experiment_by_name("regress-e2e")
    logged = client.search_runs([exp.experiment_id], filter_string="tags.`starkv.kind` = 'regression'")
    assert logged and all(r.data.metrics["regressions"] >= 1 for r in logged)

    # and the report of the real baseline run
    capsys.readouterr()
    assert main(["report", str(tmp_path / "base")]) == 0
    pngs = sorted(p.name for p in (base.output_dir / base.run_id / "report").glob("*.png"))
    assert pngs == ["accuracy_vs_budget.png", "kv_memory_vs_budget.png", "overview.png", "peak_memory_vs_budget.png"]
    arts = {a.path for a in MlflowClient(tracking_uri=base.tracking_uri).list_artifacts(base.mlflow_parent_id,
                                                                                           "report")}
    assert arts == {f"report/{p}" for p in pngs}
