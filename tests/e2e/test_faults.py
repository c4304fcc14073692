"""Fault tolerance on real Ray, Parquet and MLflow.

A killed driver resumes without losing or repeating a step; a killed actor is restarted by Ray Data and
its episode rerun; an unreachable MLflow is a warning, filled later by ``starkv-eval sync``; a step that
raises (or runs out of GPU memory) becomes an error row. Faults are injected with ``pipeline/step/faults.py``.

Every run uses the same small job (tiny model, 3 synthetic episodes = 15 steps, one unit, one actor) and is
compared on its deterministic columns with one uninterrupted reference run (the MLflow-unreachable run).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.cli import main as cli_main
from pipeline.config import parse_config
from pipeline.results.parquet import finished_units, read_rows, run_metadata
from pipeline.run.job import run_job
from pipeline.tracking.mlflow_runs import Tracker
from tests.helpers_mlflow import free_port, start_mlflow_server, stop_mlflow_server
from tests.helpers_procs import session_procs, wait_session_gone
from tests.helpers_runs import RAY_CHATTER, small_synthetic_job

BIN = Path(sys.executable).parent
JOB = small_synthetic_job("faults")
EPISODES, STEPS = 3, 15  # synthetic seed 0: ep0000 6 steps, ep0001 3, ep0002 6
UNIT = "snapkv@50"
# columns that a rerun must reproduce exactly (timings, memory and pids may differ)
DETERMINISTIC = ["step_key", "episode_id", "step_index", "prompt_tokens", "kept_tokens", "kv_bytes", "kv_bytes_full",
                 "generated_tokens", "raw_output", "prediction", "correct", "score", "error"]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STARKV_FAULT_") and k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", HF_HUB_OFFLINE="1",
               PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", **extra)
    return env


def _cli(args: list[str], cwd: Path, timeout: float = 240, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "starkv-eval"), *args], cwd=cwd, env=_env(**env), capture_output=True,
                          text=True, timeout=timeout)


def _readable(rows: Path) -> list[Path]:
    """Parquet files with a complete footer (a file being written, or cut by a kill, has none)."""
    found = []
    for path in sorted(rows.glob("*.parquet")) if rows.exists() else []:
        try:
            pq.read_metadata(path)
            found.append(path)
        except Exception:
            pass
    return found


def _deterministic(table) -> list[dict]:
    return sorted(table.select(DETERMINISTIC).to_pylist(), key=lambda r: r["step_key"])


def _job_file(folder: Path, **overrides) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump({**JOB, **overrides}))
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted CLI run whose MLflow server is unreachable (closed port on loopback)."""
    work = tmp_path_factory.mktemp("reference")
    job = _job_file(work)
    uri = f"http://127.0.0.1:{free_port()}"
    t0 = time.time()
    proc = _cli(["run", str(job), "--output", str(work / "out"), "--tracking-uri", uri], cwd=work)
    seconds = time.time() - t0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_id = parse_config(JOB).resolved_run_id()
    rows = read_rows(work / "out" / run_id / "rows")
    return {"work": work, "job": job, "out": work / "out", "run_id": run_id, "proc": proc, "uri": uri,
            "seconds": seconds, "rows": rows}


@pytest.mark.slow
def test_cli_run_shows_progress_not_ray_scheduler_logs(reference):
    """stdout is a pipe here, as in CI or `ray job logs`: one progress display, none of Ray's own logs."""
    out = reference["proc"].stdout + reference["proc"].stderr
    progress = [line for line in out.splitlines() if line.startswith("[starkv-eval] progress:")]
    assert progress and progress[-1].startswith(f"[starkv-eval] progress: episodes {EPISODES}/{EPISODES} · "
                                                f"steps {STEPS}/{STEPS} ·")
    assert "steps/s" in progress[-1] and "ETA" in progress[-1]
    assert not [c for c in RAY_CHATTER if c in out], out[-3000:]


@pytest.mark.slow
def test_mlflow_unreachable_warns_then_sync_fills_it(reference, monkeypatch, capsys):
    proc, out, work = reference["proc"], reference["out"], reference["work"]
    # the run finished with exit code 0, complete Parquet and a clear warning naming the fix
    assert reference["rows"].num_rows == STEPS
    assert "WARNING: MLflow not updated" in proc.stdout and f"starkv-eval sync {out}" in proc.stdout
    assert "Connection refused" in proc.stdout
    assert "unreachable or failing" in proc.stderr  # the Python warning, on stderr
    assert not (out / "mlflow.db").exists()

    # the unreachable server costs seconds, not minutes: the tracker caps MLflow's HTTP retries (1) and
    # request timeout (10 s) before its first request (checked as settings, not as a wall-clock time)
    for var in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.delenv(var, raising=False)
    tracker = Tracker(reference["uri"], "faults")
    with pytest.warns(UserWarning, match="unreachable or failing"):
        assert tracker.log_job(run_id="x", job={}, summaries=[], tags={}, table_text="") is None
    assert not tracker.ok
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "1" and os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "10"

    store = work / "server"
    store.mkdir()
    server, uri = start_mlflow_server(f"sqlite:///{store / 'mlflow.db'}", store, "--artifacts-destination",
                                      str(store / "art"), env=_env(), log=store / "server.log")
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        seen = []
        for _ in range(2):  # sync is idempotent: the second pass updates the same runs
            assert cli_main(["sync", str(out), "--tracking-uri", uri]) == 0
            assert f"synced {reference['run_id']}: 1 units" in capsys.readouterr().out
            exp = client.get_experiment_by_name(JOB["tracking"]["experiment"])
            runs = client.search_runs([exp.experiment_id])
            parents = [r for r in runs if r.data.tags.get("starkv.kind") == "job"]
            children = [r for r in runs if r.data.tags.get("starkv.kind") == "unit"]
            assert len(parents) == 1 and len(children) == 1, [r.info.run_name for r in runs]
            assert children[0].data.tags["mlflow.parentRunId"] == parents[0].info.run_id
            assert children[0].data.tags["starkv.unit"] == UNIT
            # tagged with the commit that produced the rows (Parquet metadata), not whatever HEAD is at sync
            assert parents[0].data.tags["git_commit"] == run_metadata(out / reference["run_id"] / "rows")["git_commit"]
            metrics = children[0].data.metrics
            assert metrics["steps"] == STEPS and metrics["accuracy"] == 0.0
            assert metrics["mean_kv_bytes"] == pytest.approx(
                sum(reference["rows"].column("kv_bytes").to_pylist()) / STEPS)
            seen.append(sorted(r.info.run_id for r in runs))
        assert seen[0] == seen[1]
    finally:
        stop_mlflow_server(server)
    assert not session_procs(server.pid)


@pytest.mark.slow
def test_killed_driver_resumes_without_losing_or_repeating_steps(reference, tmp_path):
    job, out = _job_file(tmp_path), tmp_path / "out"
    rows = out / reference["run_id"] / "rows"
    log = open(tmp_path / "killed.log", "w")
    # its own local Ray cluster, in its own session so the kill takes the whole tree; slow steps widen the window
    driver = subprocess.Popen([str(BIN / "starkv-eval"), "run", str(job), "--output", str(out)], cwd=tmp_path,
                              env=_env(STARKV_FAULT_STEP_DELAY_S="0.5"), stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        deadline = time.time() + 150
        while not _readable(rows):
            assert driver.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
            assert time.time() < deadline, "no Parquet rows appeared"
            time.sleep(0.2)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    left = wait_session_gone(driver.pid, 30)
    assert not left, f"Ray processes of the killed driver outlived it: {left}"

    readable = _readable(rows)
    done = {r["episode_id"] for f in readable for r in pq.read_table(f, columns=["episode_id"]).to_pylist()}
    assert 1 <= len(done) < EPISODES, done
    # a writer killed mid-file leaves a truncated Parquet file: the rerun must drop it, not trip over it
    (rows / "partial-killed-writer.parquet").write_bytes(readable[0].read_bytes()[: readable[0].stat().st_size // 2])

    resumed = _cli(["run", str(job), "--output", str(out)], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    header = re.search(r"(\d+) episode-units already done, (\d+) partial files removed", resumed.stdout)
    assert header and int(header[1]) == len(done) and int(header[2]) >= 1, resumed.stdout[:500]
    assert f"{EPISODES - len(done)} episode-units evaluated" in resumed.stdout
    assert finished_units(rows) == {(UNIT, e) for e in ("ep0000", "ep0001", "ep0002")}
    table = read_rows(rows)  # raises if any step was written twice
    assert table.num_rows == STEPS
    assert _deterministic(table) == _deterministic(reference["rows"])
    assert (out / reference["run_id"] / "summary.json").is_file()


@pytest.mark.slow
def test_killed_actor_is_restarted_and_its_episode_rerun(ray_local, reference, tmp_path, monkeypatch):
    victim = f"{UNIT}/ep0000/2"  # mid-episode: steps 0 and 1 were done and are lost with the actor
    monkeypatch.setenv("STARKV_FAULT_KILL_ACTOR_ONCE", victim)
    monkeypatch.setenv("STARKV_FAULT_DIR", str(tmp_path / "markers"))
    result = run_job(parse_config(JOB), output=str(tmp_path / "out"), echo=lambda _: None)

    marker = next((tmp_path / "markers").iterdir())  # the fault fired (once), in a process that died
    killed_pid = int(marker.read_text())
    table = read_rows(result.rows_dir)  # raises if any step was written twice
    assert table.num_rows == STEPS
    assert _deterministic(table) == _deterministic(reference["rows"])
    episode = [r for r in table.to_pylist() if r["episode_id"] == "ep0000"]
    assert len(episode) == 6 and killed_pid not in {r["actor_pid"] for r in episode}
    assert all(r["error"] is None for r in table.to_pylist())


@pytest.mark.slow
def test_raising_and_oom_steps_become_error_rows(ray_local, reference, tmp_path, monkeypatch):
    raising, oom = f"{UNIT}/ep0001/1", f"{UNIT}/ep0002/3"
    monkeypatch.setenv("STARKV_FAULT_RAISE", raising)
    monkeypatch.setenv("STARKV_FAULT_OOM", oom)
    result = run_job(parse_config(JOB), output=str(tmp_path / "out"), echo=lambda _: None)

    table = read_rows(result.rows_dir)
    assert table.num_rows == STEPS
    errors = {r["step_key"]: r["error"] for r in table.to_pylist() if r["error"]}
    assert set(errors) == {raising, oom}
    assert errors[raising].startswith(f"RuntimeError: injected fault at {raising}")
    assert errors[oom].startswith("out of memory in generate: CUDA out of memory")
    # the other steps (also the later ones of the same episodes) are exactly what an unbroken run gives
    clean = [r for r in _deterministic(table) if r["step_key"] not in errors]
    assert clean == [r for r in _deterministic(reference["rows"]) if r["step_key"] not in errors]
    (summary,) = result.summaries
    assert summary.metrics["errors"] == 2 and summary.metrics["steps"] == STEPS


def test_fault_injection_is_inert_without_env_and_fires_once(tmp_path, monkeypatch):
    from pipeline.step import faults

    for var in list(os.environ):
        if var.startswith("STARKV_FAULT_"):
            monkeypatch.delenv(var)
    assert faults.fault_env() == {}
    faults.inject(f"{UNIT}/ep0000/0")  # nothing set: nothing happens

    monkeypatch.setenv("STARKV_FAULT_RAISE", f"{UNIT}/ep0000/1, {UNIT}/ep0000/2")
    faults.inject(f"{UNIT}/ep0000/0")
    with pytest.raises(RuntimeError, match="injected fault"):
        faults.inject(f"{UNIT}/ep0000/2")
    monkeypatch.setenv("STARKV_FAULT_OOM", f"{UNIT}/ep0000/3")
    import torch

    with pytest.raises(torch.cuda.OutOfMemoryError):
        faults.inject(f"{UNIT}/ep0000/3")
    assert set(faults.fault_env()) == {"STARKV_FAULT_RAISE", "STARKV_FAULT_OOM"}

    # kill-once: a child process dies at the step the first time, passes the second time
    monkeypatch.setenv("STARKV_FAULT_KILL_ACTOR_ONCE", f"{UNIT}/ep0000/4")
    monkeypatch.setenv("STARKV_FAULT_DIR", str(tmp_path))
    code = f"from pipeline.step.faults import inject; inject('{UNIT}/ep0000/4'); print('passed')"
    first = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ))
    second = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ))
    assert first.returncode == 1 and "passed" not in first.stdout
    assert second.returncode == 0 and "passed" in second.stdout
    assert int(faults.marker_path(f"{UNIT}/ep0000/4").read_text()) > 0


def test_hold_fault_lets_n_steps_pass_then_waits_for_its_file(tmp_path, monkeypatch):
    import threading

    from pipeline.step import faults

    for var in list(os.environ):
        if var.startswith("STARKV_FAULT_"):
            monkeypatch.delenv(var)
    release = tmp_path / "release"
    monkeypatch.setenv("STARKV_FAULT_HOLD_UNTIL_FILE", str(release))
    monkeypatch.setenv("STARKV_FAULT_HOLD_AFTER_STEPS", "2")
    monkeypatch.setattr(faults, "_steps_seen", 0)
    faults.inject(f"{UNIT}/ep0000/0")
    faults.inject(f"{UNIT}/ep0000/1")  # the first two steps of the process pass at once
    passed = threading.Event()
    worker = threading.Thread(target=lambda: (faults.inject(f"{UNIT}/ep0000/2"), passed.set()), daemon=True)
    worker.start()
    assert not passed.wait(0.5)  # the third holds while the file is missing
    release.touch()
    assert passed.wait(10)
