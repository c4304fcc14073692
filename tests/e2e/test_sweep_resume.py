"""A shared-prefill sweep on real Ray: same rows as per-unit work items, and exact resume per unit.

One job (tiny model, 2 synthetic episodes, 3 units) runs once with ``ray.shared_prefill: false`` (one work
item per unit and episode, today's path) as the reference. The shared run then resumes a run folder in
which one (unit, episode) is already finished and has its actor killed in the middle of a sweep: the
restarted item reruns only the pending units of that episode, every step is written exactly once, and
every deterministic column equals the reference.
"""

from __future__ import annotations

import copy

import pyarrow as pa
import pytest

from pipeline.config import parse_config
from pipeline.results.parquet import finished_units, read_rows
from pipeline.results.store import open_store
from pipeline.results.store.rowfiles import write_episode_files
from pipeline.run.job import run_job
from tests.helpers_runs import small_synthetic_job

DETERMINISTIC = ["step_key", "episode_id", "step_index", "prompt_tokens", "kept_tokens", "kv_bytes", "kv_bytes_full",
                 "generated_tokens", "raw_output", "prediction", "correct", "score", "error"]


def _job(shared: bool) -> dict:
    job = copy.deepcopy(small_synthetic_job("sweep-resume"))
    job["benchmark"]["options"] = {"num_episodes": 2, "seed": 0}  # ep0000 6 steps, ep0001 3
    job["model"]["max_new_tokens"] = 4
    job["agent"]["image_slots"] = 2
    job["compressors"] = [{"name": "snapkv"}, {"name": "starkv", "params": {"mi_profile_steps": 1}}]
    job["budgets"] = [20, 60]
    job["ray"]["shared_prefill"] = shared
    return job


def _rows(table) -> list[dict]:
    return sorted(table.select(DETERMINISTIC).to_pylist(), key=lambda r: r["step_key"])


@pytest.mark.slow
def test_shared_sweep_resumes_exactly_after_a_killed_actor(ray_local, tmp_path, monkeypatch):
    ref_cfg, cfg = parse_config(_job(False)), parse_config(_job(True))
    assert ref_cfg.resolved_run_id() == cfg.resolved_run_id()  # the switch does not change the results
    reference = read_rows(run_job(ref_cfg, output=str(tmp_path / "ref"), echo=lambda _: None).rows_dir)
    assert not any(reference.column("prefill_shared").to_pylist())
    units = {f"{c}@{b}" for c in ("snapkv", "starkv") for b in (20, 60)}
    assert reference.num_rows == 9 * len(units)

    # a finished (unit, episode) from an earlier run, and a kill in the middle of the ep0000 sweep
    out = tmp_path / "out"
    done = reference.filter(pa.array([k.startswith("starkv@60/ep0000/") for k in reference["step_key"].to_pylist()]))
    write_episode_files(open_store(str(out)).sub(cfg.resolved_run_id()), "rows", done)
    monkeypatch.setenv("STARKV_FAULT_KILL_ACTOR_ONCE", "snapkv@60/ep0000/3")
    monkeypatch.setenv("STARKV_FAULT_DIR", str(tmp_path / "markers"))
    lines: list[str] = []
    result = run_job(cfg, output=str(out), echo=lines.append)

    assert any(p.name.startswith("killed-") for p in (tmp_path / "markers").iterdir())  # the kill fired
    assert result.skipped_units == 1 and result.ran_units == 2 * len(units) - 1
    table = read_rows(result.rows_dir)  # raises if any step was written twice
    assert table.num_rows == reference.num_rows
    assert _rows(table) == _rows(reference)
    assert finished_units(result.rows_dir) == {(u, e) for u in units for e in ("ep0000", "ep0001")}
    shared = dict(zip(table["step_key"].to_pylist(), table["prefill_shared"].to_pylist()))
    assert not any(v for k, v in shared.items() if k.startswith("starkv@60/ep0000/"))  # the earlier run's rows
    assert all(v for k, v in shared.items() if not k.startswith("starkv@60/ep0000/"))
