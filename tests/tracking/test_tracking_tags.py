"""The MLflow tags the README filters on (``job``, ``benchmark``, ``model``, ``compressor``, ``budget``)."""

from __future__ import annotations

import pytest

from pipeline.config import parse_config
from pipeline.results.summary import UnitSummary
from pipeline.tracking.mlflow_runs import Tracker, job_tags

pytestmark = pytest.mark.usefixtures("isolated_mlflow")

UNITS = ("full@20%", "full@50%", "snapkv@20%", "snapkv@50%")  # child run names show the budget as a percent


def test_readme_filter_tags_on_parent_and_child_runs(tmp_path):
    """Logged the way ``starkv-eval run`` logs a job: ``job_tags`` of the config, then ``Tracker.log_job``."""
    from mlflow.tracking import MlflowClient

    cfg = parse_config({"name": "tagjob", "model": {"path": "tiny"},
                        "benchmark": {"name": "synthetic", "options": {"num_episodes": 2, "seed": 0}},
                        "compressors": [{"name": "full"}, {"name": "snapkv"}], "budgets": [20, 50],
                        "tracking": {"experiment": "tags-test"}})
    summaries = [UnitSummary(c, b, {"accuracy": 0.5}) for c in ("full", "snapkv") for b in (20.0, 50.0)]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    pid = Tracker(uri, "tags-test").log_job(run_id="tagjob-1", job={**cfg.to_dict(), "run_id": "tagjob-1"},
                                            summaries=summaries, tags=job_tags(cfg, "abc123"), table_text="")
    assert pid
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("tags-test")

    def names(filter_string: str) -> set[str]:
        return {r.info.run_name for r in client.search_runs([exp.experiment_id], filter_string=filter_string)}

    # the parent (named by the run id), one child per unit and one run per compressor (its lines over the budget)
    everything = {"tagjob-1", *UNITS, "full (by budget)", "snapkv (by budget)"}
    assert names("tags.job = 'tagjob'") == everything
    assert names("tags.benchmark = 'synthetic'") == everything
    assert names("tags.model = 'tiny'") == everything
    assert names("tags.git_commit = 'abc123'") == everything
    # the README's examples: children by compressor and by budget
    assert names("tags.compressor = 'snapkv'") == {"snapkv@20%", "snapkv@50%"}
    assert names("tags.budget = '20'") == {"full@20%", "snapkv@20%"}
    assert names("tags.compressor = 'full' and tags.budget = '50'") == {"full@50%"}
    children = client.search_runs([exp.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{pid}'")
    assert {r.info.run_name for r in children} == set(UNITS)
