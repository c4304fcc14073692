"""``ray job submit`` of a starkv-eval job to a real Ray head on loopback, as the README documents it.

The head runs in its own temp dir and session with free ports, so it neither clashes with the in-process
``ray_local`` cluster of other tests (``ray.init()`` only auto-connects to a head recorded in the default
temp dir) nor with other clusters on the machine. It is stopped by signalling its own ``ray start --block``
process — never ``ray stop``, which would kill every Ray process on the machine.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.results import read_rows
from pipeline.run import load_episodes, make_benchmark
from tests.helpers_procs import wait_session_gone

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# What the README tells users to pass (Ray 2.60 already skips .git/.venv and honours .gitignore; being
# explicit keeps it safe where those defaults are overridden).
RUNTIME_ENV = {"excludes": [".git", ".venv", "outputs", "mlruns"]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STARKV_FAULT_") and k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", HF_HUB_OFFLINE="1",
               RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",  # SIGTERM stops the head at once (default drains 30 s)
               PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    return env


def _stop_head(head: subprocess.Popen) -> list[tuple[int, str]]:
    """SIGTERM ``ray start --block`` (it stops its processes), then SIGKILL by pid whatever is left."""
    if head.poll() is None:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(30)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()
    return wait_session_gone(head.pid, 15)


@pytest.mark.slow
def test_ray_job_submit_runs_a_job_on_a_head(tmp_path):
    """Exactly the README's command: submit ``starkv-eval run jobs/smoke.yaml`` to a fresh head on loopback."""
    out = tmp_path / "out"
    temp_dir = Path(tempfile.mkdtemp(prefix="rh", dir="/tmp"))  # short: Ray's socket paths must stay < 108 chars
    dashboard, gcs_port = _free_port(), _free_port()
    env = _env()
    head_cmd = [str(BIN / "ray"), "start", "--head", "--block", "--num-cpus=2", "--object-store-memory=268435456",
                "--disable-usage-stats", "--node-ip-address=127.0.0.1", f"--port={gcs_port}",
                "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
                f"--ray-client-server-port={_free_port()}", f"--dashboard-agent-listen-port={_free_port()}",
                f"--dashboard-agent-grpc-port={_free_port()}", f"--runtime-env-agent-port={_free_port()}",
                f"--metrics-export-port={_free_port()}", f"--temp-dir={temp_dir}"]
    timings: dict[str, float] = {}
    t0 = time.time()
    head = subprocess.Popen(head_cmd, cwd=tmp_path, env=env, stdout=open(tmp_path / "head.log", "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 90
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{dashboard}/api/version", timeout=2).read()
                break
            except OSError:
                pass
            assert head.poll() is None and time.time() < deadline, (tmp_path / "head.log").read_text()[-3000:]
            time.sleep(0.5)
        # the README's next line: the dashboard answering is not enough, a submission needs the head's agent
        wait = subprocess.run([str(BIN / "starkv-eval"), "wait-head", "--address", f"127.0.0.1:{gcs_port}",
                               "--timeout-s", "180"], env=env, capture_output=True, text=True, timeout=240)
        assert wait.returncode == 0 and "takes jobs" in wait.stdout, wait.stdout[-2000:] + wait.stderr[-2000:]
        timings["head_start_s"] = time.time() - t0

        commit = "0123456789abcdef0123456789abcdef01234567"
        runtime_env = {**RUNTIME_ENV, "env_vars": {"STARKV_GIT_COMMIT": commit}}
        t1 = time.time()
        submit = subprocess.run(
            [str(BIN / "ray"), "job", "submit", "--address", f"http://127.0.0.1:{dashboard}", "--working-dir", ".",
             "--runtime-env-json", json.dumps(runtime_env), "--",
             "starkv-eval", "run", "jobs/smoke.yaml", "--output", str(out)],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        timings["job_s"] = time.time() - t1
        assert submit.returncode == 0, submit.stdout[-4000:] + submit.stderr[-4000:]
        assert "succeeded" in submit.stdout + submit.stderr
        assert "[starkv-eval] Parquet rows:" in submit.stdout  # the job's own output is streamed back

        # what was uploaded: the code, not the venv, outputs or git history
        (package,) = {p.resolve() for p in temp_dir.glob("session_*/runtime_resources/working_dir_files/_ray_pkg_*")
                      if p.is_dir()}  # session_latest links to the one session
        uploaded = {p.name for p in package.iterdir()}
        assert {"pipeline", "starkv", "pyproject.toml"} <= uploaded
        assert not uploaded & {".venv", ".git", "outputs", "starkv_eval.egg-info"}, uploaded
    finally:
        t2 = time.time()
        left = _stop_head(head)
        timings["head_stop_s"] = time.time() - t2
        shutil.rmtree(temp_dir, ignore_errors=True)
        print(f"timings: {timings}")
    assert not left, f"processes of the head outlived it: {left}"

    cfg = load_config(ROOT / "jobs" / "smoke.yaml")
    steps = sum(len(e.steps) for e in load_episodes(cfg, make_benchmark(cfg)))
    units = len(cfg.units())
    table = read_rows(out / cfg.resolved_run_id() / "rows")
    assert table.num_rows == steps * units and all(e is None for e in table.column("error").to_pylist())

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("starkv.kind") == "job"]
    children = [r for r in runs if r.data.tags.get("starkv.kind") == "unit"]
    assert len(parents) == 1 and len(children) == units
    assert parents[0].data.tags["git_commit"] == commit  # no .git in the upload: the commit comes from the env
    assert all(c.data.metrics["steps"] == steps for c in children)
