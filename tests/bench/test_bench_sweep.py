"""``starkv-eval bench sweep --json``: the fields scripts read, rows equal between the two runs."""

from __future__ import annotations

import json

import pytest
import yaml

from pipeline.cli import main


def test_bench_sweep_json(tmp_path, capsys):
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({
        "name": "bench-sweep", "model": {"path": "tiny", "device": "cpu", "max_new_tokens": 2},
        "benchmark": {"name": "synthetic", "options": {"num_episodes": 1, "seed": 0, "min_steps": 2, "max_steps": 2}},
        "agent": {"image_slots": 1}, "compressors": [{"name": "snapkv"}, {"name": "streamingllm"}],
        "budgets": [20, 50]}))
    assert main(["bench", "sweep", "--job", str(job), "--json", "--no-accounting"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["units"] == 4 and out["episodes"] == 1 and out["steps"] == 2 and out["identical"] is True
    assert out["shared_s"] > 0 and out["per_unit_s"] > 0
    assert out["speedup"] == pytest.approx(out["per_unit_s"] / out["shared_s"])
    assert 0 < out["prefill_share"] < 1 and out["mean_prefill_s"] > 0 and out["mean_compress_s"] > 0


def test_bench_sweep_bad_job_names_it(tmp_path, capsys):
    assert main(["bench", "sweep", "--job", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err


def test_predicted_speedup_formula():
    from pipeline.bench.sweep import predicted_speedup

    assert predicted_speedup(1.0, 1.0, 1) == pytest.approx(1.0)  # one unit: nothing to share
    assert predicted_speedup(9.0, 1.0, 30) == pytest.approx(30 * 10 / 39)
    assert predicted_speedup(1.0, 0.0, 30) == pytest.approx(30.0)  # all prefill: K times
