"""One writer per run, exactly once, on a local folder and on a real S3-compatible server (moto, loopback).

Real CLI runs (real Ray, tiny model, 3 synthetic episodes = 15 steps, one unit): two runs of one job into
one output, one of them waiting for the other; a driver killed mid-run on S3 and resumed; stores seeded with
identical duplicates; unreachable and unauthorised object stores.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.config import parse_config
from pipeline.results.parquet import read_rows, read_store
from pipeline.results.store.lease import LeaseInfo
from pipeline.results.store.rowfiles import row_file_name
from tests.helpers_procs import wait_session_gone
from tests.helpers_runs import small_synthetic_job

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]
JOB = small_synthetic_job("store")
EPISODES, STEPS, UNIT = ("ep0000", "ep0001", "ep0002"), 15, "snapkv@50"
RUN_ID = parse_config(JOB).resolved_run_id()
DETERMINISTIC = ["step_key", "prompt_tokens", "kept_tokens", "kv_bytes", "raw_output", "prediction", "correct",
                 "error"]
S3 = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("STARKV_FAULT_", "AWS_")) and k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT),
               PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", **extra)
    return env


def _start(args: list[str], cwd: Path, log: Path, **env: str) -> subprocess.Popen:
    """A CLI run in its own session (so a kill takes its whole Ray tree)."""
    return subprocess.Popen([str(BIN / "starkv-eval"), *args], cwd=cwd, env=_env(**env), stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def _cli(args: list[str], cwd: Path, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "starkv-eval"), *args], cwd=cwd, env=_env(**env), capture_output=True, text=True,
                          timeout=timeout)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not wait_session_gone(proc.pid, 30)


def _wait_for(cond, proc: subprocess.Popen, log: Path, what: str, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while not cond():
        assert proc.poll() is None, f"run ended before {what}: " + log.read_text()[-3000:]
        assert time.time() < deadline, f"no {what} after {timeout} s: " + log.read_text()[-3000:]
        time.sleep(0.2)


def _deterministic(table) -> list[dict]:
    return sorted(table.select(DETERMINISTIC).to_pylist(), key=lambda r: r["step_key"])


def _job(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "job.yaml").write_text(yaml.safe_dump(JOB))
    return folder / "job.yaml"


@pytest.fixture(scope="module")
def local_runs(tmp_path_factory):
    """Run A does the work; B (same job, same output) fails fast; C (``--wait``) waits for A, finds nothing."""
    work = tmp_path_factory.mktemp("local")
    job, out = _job(work), work / "out"
    lease = out / RUN_ID / "lease.json"
    release = work / "release-a"  # A's steps hold until this exists: B and C meet A mid-run on any machine
    a = _start(["run", str(job), "--output", str(out)], work, work / "a.log", STARKV_FAULT_HOLD_UNTIL_FILE=str(release))
    try:
        _wait_for(lease.exists, a, work / "a.log", "lease")
        b = _cli(["run", str(job), "--output", str(out)], work)
        b_returned_while_a_ran = a.poll() is None  # A is held: B came back without waiting for it
        c = _start(["run", str(job), "--output", str(out), "--wait"], work, work / "c.log")
        _wait_for(lambda: "waiting for it" in (work / "c.log").read_text(), c, work / "c.log", "waiting line")
        release.touch()
        assert a.wait(300) == 0, (work / "a.log").read_text()[-3000:]
        assert c.wait(120) == 0, (work / "c.log").read_text()[-3000:]
    finally:
        _stop(a)
    d = _cli(["run", str(job), "--output", str(out)], work)
    return {"work": work, "out": out, "a": a, "b": b, "b_returned_while_a_ran": b_returned_while_a_ran, "c": (work / "c.log").read_text(),
            "d": d, "rows": read_rows(out / RUN_ID / "rows")}


@pytest.mark.slow
def test_concurrent_runs_one_writer_each_step_once(local_runs):
    a_log = (local_runs["work"] / "a.log").read_text()
    assert "0 episode-units already done" in a_log and "3 episode-units evaluated" in a_log
    b = local_runs["b"]
    assert b.returncode == 3 and local_runs["b_returned_while_a_ran"]
    assert re.search(rf"^starkv-eval: run {RUN_ID} is being written by pid {local_runs['a'].pid} on "
                     rf"{re.escape(socket.gethostname())} since \d\d:\d\d:\d\d UTC", b.stderr), b.stderr
    assert "Traceback" not in b.stderr and "episode-units" not in b.stdout  # no work started
    c = local_runs["c"]
    assert f"being written by pid {local_runs['a'].pid}" in c and "waiting for it" in c
    assert "3 episode-units already done" in c and "evaluated" not in c
    d = local_runs["d"]
    assert d.returncode == 0 and "3 episode-units already done" in d.stdout and "evaluated" not in d.stdout
    rows = local_runs["out"] / RUN_ID / "rows"
    assert sorted(p.name for p in rows.iterdir()) == sorted(row_file_name(UNIT, e) for e in EPISODES)
    assert local_runs["rows"].num_rows == STEPS
    assert len(set(local_runs["rows"].column("step_key").to_pylist())) == STEPS
    assert not (local_runs["out"] / RUN_ID / "lease.json").exists()  # released by the last run


@pytest.mark.slow
def test_store_seeded_with_identical_duplicates_is_read_once_then_healed(local_runs, tmp_path):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(local_runs["out"] / RUN_ID, out / RUN_ID)
    rows = out / RUN_ID / "rows"
    first = rows / row_file_name(UNIT, "ep0000")
    table = pq.read_table(first)  # a copy from an older version: its own name, other timings
    table = table.set_column(table.column_names.index("prefill_s"), "prefill_s", pa.array([9.9] * table.num_rows))
    pq.write_table(table, rows / "0_000000_0.parquet")
    with pytest.warns(UserWarning, match="6 steps were stored more than once with identical results"):
        read = read_store(rows)
    assert read.table.num_rows == STEPS and _deterministic(read.table) == _deterministic(local_runs["rows"])
    job = _job(tmp_path)
    healed = _cli(["run", str(job), "--output", str(out)], tmp_path)
    assert healed.returncode == 0, healed.stdout[-3000:] + healed.stderr[-3000:]
    assert "6 steps were stored more than once with identical results" in healed.stdout
    assert "rewrote the rows as one file per episode" in healed.stdout and "3 episode-units already done" in healed.stdout
    assert sorted(p.name for p in rows.iterdir()) == sorted(row_file_name(UNIT, e) for e in EPISODES)


# ------------------------------------------------------------------------------------------------- S3 (moto)

def _moto(work: Path, **env: str) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    server = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], cwd=work,
                              env=_env(**env), stdout=open(work / f"moto-{port}.log", "w"), stderr=subprocess.STDOUT,
                              start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            urllib.request.urlopen(f"{url}/moto-api/", timeout=2)
            return server, url
        except OSError:
            assert server.poll() is None and time.time() < deadline, (work / f"moto-{port}.log").read_text()[-2000:]
            time.sleep(0.2)


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on loopback with bucket ``results``; yields (endpoint, env for clients, s3fs)."""
    work = tmp_path_factory.mktemp("moto")
    server, endpoint = _moto(work)
    env = {**S3, "AWS_ENDPOINT_URL": endpoint}
    import s3fs

    fs = s3fs.S3FileSystem(key="testing", secret="testing", endpoint_url=endpoint, skip_instance_cache=True)
    fs.mkdir("results")
    try:
        yield endpoint, env, fs
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(15)


@pytest.mark.slow
def test_s3_killed_driver_resumes_exactly_once_with_lease(s3, local_runs, tmp_path, monkeypatch, capsys):
    endpoint, env, fs = s3
    job, out = _job(tmp_path), "s3://results/nightly"
    rows = f"results/nightly/{RUN_ID}/rows"

    def stored() -> list[str]:
        fs.invalidate_cache()
        return fs.find(rows) if fs.exists(rows) else []

    # one actor runs episodes of 6, 3 and 6 steps: after its first 6 steps exactly one episode is stored
    # whatever the order, and the next step holds (never released) until the driver is killed
    a = _start(["run", str(job), "--output", out], tmp_path, tmp_path / "a.log", **env,
               STARKV_FAULT_HOLD_UNTIL_FILE=str(tmp_path / "never"), STARKV_FAULT_HOLD_AFTER_STEPS="6")
    try:
        _wait_for(lambda: fs.exists(f"results/nightly/{RUN_ID}/lease.json"), a, tmp_path / "a.log", "lease")
        b = _cli(["run", str(job), "--output", out], tmp_path, **env)
        assert b.returncode == 3 and f"is being written by pid {a.pid} on {socket.gethostname()}" in b.stderr, b.stderr
        assert f"lease s3://results/nightly/{RUN_ID}/lease.json" in b.stderr
        _wait_for(lambda: bool(stored()), a, tmp_path / "a.log", "row objects on S3")
    finally:
        _stop(a)  # the driver dies mid-run: its lease stays behind
    done = [f.rsplit("/", 1)[-1] for f in stored()]
    assert len(done) == 1 and set(done) <= {row_file_name(UNIT, e) for e in EPISODES}
    holder = LeaseInfo.parse(fs.cat_file(f"results/nightly/{RUN_ID}/lease.json"), "lease")
    assert holder.pid == a.pid

    resumed = _cli(["run", str(job), "--output", out], tmp_path, **env)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"took over the lease of run {RUN_ID}" in resumed.stdout and f"pid {a.pid}" in resumed.stdout
    assert f"{len(done)} episode-units already done" in resumed.stdout
    assert f"{len(EPISODES) - len(done)} episode-units evaluated" in resumed.stdout
    assert sorted(f.rsplit("/", 1)[-1] for f in stored()) == sorted(row_file_name(UNIT, e) for e in EPISODES)
    assert not fs.exists(f"results/nightly/{RUN_ID}/lease.json")
    for name in ("config.json", "summary.json", "summary_table.txt"):
        assert fs.exists(f"results/nightly/{RUN_ID}/{name}")

    again = _cli(["run", str(job), "--output", out], tmp_path, **env)
    assert again.returncode == 0 and "3 episode-units already done" in again.stdout and "evaluated" not in again.stdout

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    table = read_rows(f"s3://{rows}")
    assert table.num_rows == STEPS and _deterministic(table) == _deterministic(local_runs["rows"])

    # an identical duplicate object (a copied prefix) is read as one copy by sync, regress and report
    fs.copy(f"{rows}/{row_file_name(UNIT, 'ep0001')}", f"{rows}/copied-part.parquet")
    monkeypatch.chdir(tmp_path)
    from pipeline.cli import main as cli_main

    uri = f"sqlite:///{tmp_path / 'sync.db'}"
    with pytest.warns(UserWarning, match="3 steps were stored more than once with identical results"):
        assert cli_main(["sync", out, "--tracking-uri", uri]) == 0
    assert f"synced {RUN_ID}: 1 units" in capsys.readouterr().out
    # the deterministic checks only: two runs' wall clock and RSS on a shared machine are not what this tests
    tolerances = tmp_path / "tolerances.yaml"
    tolerances.write_text("throughput: null\npeak_memory: null\n")
    with pytest.warns(UserWarning, match="stored more than once"):
        assert cli_main(["regress", "--baseline", str(local_runs["out"]), "--current", out,
                         "--tracking-uri", uri, "--tolerances", str(tolerances)]) == 0
    capsys.readouterr()
    with pytest.warns(UserWarning, match="stored more than once"):
        assert cli_main(["report", f"{out}/{RUN_ID}", "--tracking-uri", uri]) == 0
    assert list((tmp_path / "reports" / RUN_ID).glob("*.png"))


@pytest.mark.slow
def test_unreachable_or_unauthorised_store_fails_before_any_work(s3, tmp_path):
    endpoint, env, fs = s3
    job = _job(tmp_path)
    closed = {**env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{_free_port()}"}
    down = _cli(["run", str(job), "--output", "s3://results/x"], tmp_path, **closed)
    assert down.returncode == 2
    assert down.stderr.count("\n") == 1 and "s3://results/x: cannot reach the result store" in down.stderr, down.stderr
    assert "episode-units" not in down.stdout and "Traceback" not in down.stderr

    missing = _cli(["run", str(job), "--output", "s3://no-such-bucket/x"], tmp_path, **env)
    assert missing.returncode == 2 and "s3://no-such-bucket/x: cannot reach" in missing.stderr
    assert "bucket does not exist" in missing.stderr

    auth_server, auth_endpoint = _moto(tmp_path, INITIAL_NO_AUTH_ACTION_COUNT="0")  # checks credentials
    try:
        denied = _cli(["run", str(job), "--output", "s3://results/x"], tmp_path,
                      **{**env, "AWS_ENDPOINT_URL": auth_endpoint, "AWS_SECRET_ACCESS_KEY": "wrong"})
    finally:
        os.killpg(auth_server.pid, signal.SIGTERM)
        auth_server.wait(15)
    assert denied.returncode == 2 and denied.stderr.count("\n") == 1, denied.stderr
    assert "s3://results/x: cannot reach the result store" in denied.stderr and "episode-units" not in denied.stdout
    for cmd in (["sync", "s3://results/x"], ["report", "s3://results/x"]):
        res = _cli(cmd, tmp_path, **closed)
        assert res.returncode == 2 and "s3://results/x" in res.stderr and "Traceback" not in res.stderr, res.stderr
