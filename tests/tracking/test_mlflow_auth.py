"""A run against an MLflow server with basic auth on (``mlflow server --app-name basic-auth``, as infra/ deploys it).

Right credentials log as usual; refused credentials (HTTP 401) or access (HTTP 403) stop the run before any
work, with one line naming the server and the credentials' source, and exit code 2. An unreachable server
stays non-fatal (the run warns at its end and ``starkv-eval sync`` fills MLflow later).

The server is real: MLflow 3.17 on loopback, users in an sqlite auth database, its config rendered from
the template the cluster uses (infra/mlflow/basic_auth.ini).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.cli import main
from pipeline.tracking.preflight import TrackingAuthError, check_tracking_access, probe
from tests.helpers_mlflow import BasicAuth, Rest, free_port, kv, mlflow_server
from tests.helpers_runs import small_synthetic_job, step_row, write_run_folder

ROOT = Path(__file__).resolve().parents[2]
AUTH = BasicAuth(admin_username="admin", admin_password="admin-password-0123")
RUNNER, RUNNER_PASSWORD = "starkv-runner", "runner-password-4567"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One basic-auth server for the module (its start takes a while), with a second, non-admin user
    created through the auth REST API the way an operator would."""
    workdir = tmp_path_factory.mktemp("mlflow-auth")
    with mlflow_server(f"sqlite:///{workdir / 'mlflow.db'}", workdir, auth=AUTH) as base:
        admin = Rest(base, AUTH.admin_username, AUTH.admin_password)
        admin.post("users/create", {"username": RUNNER, "password": RUNNER_PASSWORD})
        yield base


@pytest.fixture
def clean_env(tmp_path, monkeypatch):
    """No ambient MLflow URI or credentials (nor a ~/.mlflow/credentials file); cwd in tmp. A generous
    request timeout: a basic-auth server hashes the password on every request, slow on a busy test machine,
    and a timed-out probe counts as "unreachable", which is not what these tests are about."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in list(os.environ):
        if name.startswith(("MLFLOW_TRACKING_", "MLFLOW_AUTH_", "MLFLOW_HTTP_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "120")


def login(monkeypatch, user: str, password: str) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)


def refused_line(base: str, user: str) -> str:
    return (f"starkv-eval: MLflow server {base} refused the username '{user}' and password from "
            "MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD (HTTP 401 Unauthorized); "
            "fix the credentials before running")


def write_job(folder: Path, name: str) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(small_synthetic_job(name)))
    return path


def experiment_missing(base: str, name: str) -> bool:
    admin = Rest(base, AUTH.admin_username, AUTH.admin_password)
    try:
        admin.get("experiments/get-by-name", experiment_name=name)
    except urllib.error.HTTPError as err:
        return err.code == 404
    return False


# ---------------------------------------------------------------- refused: before any work, exit 2


@pytest.mark.slow
def test_wrong_password_stops_the_run_before_any_work(server, tmp_path, clean_env):
    """`starkv-eval run` as a user types it: one line on stderr, exit 2, no output folder, no Ray, no run."""
    job = write_job(tmp_path, "auth-refused")
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(PYTHONPATH=str(ROOT), RAY_AUTH_MODE="disabled", MLFLOW_TRACKING_USERNAME=RUNNER,
               MLFLOW_TRACKING_PASSWORD="not-the-password", MLFLOW_HTTP_REQUEST_TIMEOUT="120")
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", str(job), "--output", str(out),
                           "--tracking-uri", server], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines() == [refused_line(server, RUNNER)]
    assert "[starkv-eval] run" not in proc.stdout  # the run never started: no episodes counted, no Ray
    assert not out.exists()  # nothing written
    assert experiment_missing(server, "auth-refused")


@pytest.mark.slow
def test_no_credentials_are_named_as_such(server, clean_env):
    with pytest.raises(TrackingAuthError) as err:
        check_tracking_access(server, "anything")
    assert str(err.value) == (f"MLflow server {server} refused no credentials (set MLFLOW_TRACKING_USERNAME and "
                              "MLFLOW_TRACKING_PASSWORD) (HTTP 401 Unauthorized); fix the credentials before running")


@pytest.mark.slow
def test_a_user_without_access_to_the_experiment_is_refused(server, clean_env, monkeypatch):
    """HTTP 403: the server knows the user, who may not read the job's experiment (an explicit DENY grant)."""
    admin = Rest(server, AUTH.admin_username, AUTH.admin_password)
    exp_id = admin.post("experiments/create", {"name": "auth-locked"})["experiment_id"]
    admin.post("users/permissions/grant", {"username": RUNNER, "resource_type": "experiment", "resource_id": exp_id,
                                           "permission": "DENY"}, api="3.0")
    login(monkeypatch, RUNNER, RUNNER_PASSWORD)
    assert probe(server, "auth-locked").status == 403
    with pytest.raises(TrackingAuthError) as err:
        check_tracking_access(server, "auth-locked")
    assert str(err.value) == (f"MLflow server {server} denied user '{RUNNER}' access to experiment 'auth-locked' "
                              "(HTTP 403: Permission denied); grant the user READ/EDIT on it or use another account")


@pytest.mark.slow
def test_sync_with_a_wrong_password_fails_the_same_way(server, tmp_path, clean_env, monkeypatch, capsys):
    out = tmp_path / "out"
    write_run_folder(out, "sync-refused", {**small_synthetic_job("sync-refused"), "budgets": [50]},
                     [step_row("sync-refused", "snapkv", 50.0, 0)])
    login(monkeypatch, RUNNER, "not-the-password")
    assert main(["sync", str(out), "--tracking-uri", server]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [refused_line(server, RUNNER)]
    assert not (out / "sync-refused" / "report").exists()  # refused before the figures were drawn


# ---------------------------------------------------------------- accepted: logs as usual


@pytest.mark.slow
def test_right_credentials_sync_a_run_into_the_server(server, tmp_path, clean_env, monkeypatch):
    """The tracking layer end to end (CLI `sync`, no model): parent and child land, readable by the user."""
    out = tmp_path / "out"
    config = {**small_synthetic_job("auth-sync"), "budgets": [50]}
    rows = [step_row("auth-sync", "snapkv", 50.0, s, correct=s < 2) for s in range(4)]  # 2 of 4 right
    write_run_folder(out, "auth-sync", config, rows)
    login(monkeypatch, RUNNER, RUNNER_PASSWORD)
    assert main(["sync", str(out), "--tracking-uri", server]) == 0
    rest = Rest(server, RUNNER, RUNNER_PASSWORD)
    exp = rest.get("experiments/get-by-name", experiment_name="auth-sync")["experiment"]
    runs = rest.runs(exp["experiment_id"])
    kinds = sorted(kv(r["data"].get("tags")).get("starkv.kind") for r in runs)
    assert kinds == ["compressor", "job", "unit"]  # the per-compressor budget-axis run beside job and unit
    child = next(r for r in runs if kv(r["data"]["tags"]).get("starkv.kind") == "unit")
    assert kv(child["data"]["tags"])["starkv.unit"] == "snapkv@50"
    metrics = {m["key"]: m["value"] for m in child["data"]["metrics"]}
    assert metrics["accuracy"] == pytest.approx(0.5)
    # whoever creates the experiment manages it: the runner's own permission, not the admin's grant
    perm = Rest(server, AUTH.admin_username, AUTH.admin_password).get(
        "users/permissions/get", api="3.0", username=RUNNER, resource_type="experiment",
        resource_id=exp["experiment_id"])
    assert perm["permission"] == "MANAGE"


@pytest.mark.slow
def test_right_credentials_run_a_job_and_log_it(server, tmp_path, clean_env, monkeypatch, ray_local, capsys):
    """A real (small) `starkv-eval run` with the tiny model: the preflight passes and the runs are logged."""
    job = write_job(tmp_path, "auth-run")
    out = tmp_path / "out"
    login(monkeypatch, RUNNER, RUNNER_PASSWORD)
    assert main(["run", str(job), "--output", str(out), "--tracking-uri", server]) == 0
    printed = capsys.readouterr().out
    assert f"[starkv-eval] MLflow: {server}" in printed and "MLflow not updated" not in printed
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    steps = pq.read_table(run_dir / "rows").num_rows
    assert steps == 15  # synthetic seed 0: 6 + 3 + 6 steps, one unit
    rest = Rest(server, RUNNER, RUNNER_PASSWORD)
    exp = rest.get("experiments/get-by-name", experiment_name="auth-run")["experiment"]
    runs = rest.runs(exp["experiment_id"])
    tags = [kv(r["data"]["tags"]) for r in runs]
    assert sorted(t["starkv.kind"] for t in tags) == ["compressor", "job", "unit"]
    assert {t["starkv.run_id"] for t in tags} == {run_dir.name}
    summary = json.loads((run_dir / "summary.json").read_text())
    child = next(r for r, t in zip(runs, tags) if t["starkv.kind"] == "unit")
    metrics = {m["key"]: m["value"] for m in child["data"]["metrics"]}
    assert metrics["accuracy"] == pytest.approx(summary["units"][0]["accuracy"])


# ---------------------------------------------------------------- unreachable or local: no preflight failure


def test_an_unreachable_server_does_not_stop_the_run(clean_env, monkeypatch):
    """Tracking stays non-fatal when nobody answers: the probe reports no status and raises nothing."""
    login(monkeypatch, RUNNER, "whatever")
    result = check_tracking_access(f"http://127.0.0.1:{free_port()}", "anything")
    assert result is not None and result.status is None and result.detail


def test_local_stores_are_not_probed(tmp_path, clean_env):
    assert check_tracking_access(f"sqlite:///{tmp_path / 'mlflow.db'}", "anything") is None
    assert not (tmp_path / "mlflow.db").exists()


@pytest.fixture
def stub_server():
    """A loopback HTTP server that answers every request with a set status and body (stdlib, no MLflow):
    for the answers a basic-auth server does not give on its own, such as the Host-header guard's 403."""
    import http.server
    import threading

    answer = {"status": 200, "body": b"{}"}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the stdlib's name
            self.send_response(answer["status"])
            self.end_headers()
            self.wfile.write(answer["body"])

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield answer, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    "status, body, message",
    [
        (403, b"Invalid Host header - possible DNS rebinding attack detected",
         "MLflow server {uri} rejected the host name (HTTP 403: Invalid Host header - possible DNS rebinding attack "
         "detected); add '{netloc}' to the server's --allowed-hosts"),
        (401, b"You are not authenticated.",
         "MLflow server {uri} refused the username 'someone' and password from "
         "MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD (HTTP 401 Unauthorized); fix the credentials before running"),
        (200, b"{}", None),
        (404, b'{"error_code": "RESOURCE_DOES_NOT_EXIST"}', None),  # no such experiment yet: credentials accepted
        # a failing server stays non-fatal, like an unreachable one: MLflow's client gives up on a 500
        # (a status it retries) with an exception, so there is no status, only what went wrong
        (500, b"Internal Server Error", None),
    ],
    ids=["host-guard", "401", "200", "404", "500"],
)
def test_answers_map_to_one_line_or_go_on(stub_server, clean_env, monkeypatch, status, body, message):
    answer, uri = stub_server
    answer.update(status=status, body=body)
    login(monkeypatch, "someone", "secret-password")
    if message is None:
        result = check_tracking_access(uri, "exp")
        if status == 500:
            assert result.status is None and "500 error responses" in result.detail
        else:
            assert result.status == status
        return
    with pytest.raises(TrackingAuthError) as err:
        check_tracking_access(uri, "exp")
    assert str(err.value) == message.format(uri=uri, netloc=uri.removeprefix("http://"))
