"""A real ``mlflow server`` on loopback for a test, and the bits of its REST API the tests read."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

from tests.helpers_procs import wait_session_gone

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(server: subprocess.Popen, port: int, log: Path, timeout: float = 120) -> None:
    """Until the ``mlflow server`` on ``port`` answers /health; fails with its log if it dies or times out."""
    deadline = time.time() + timeout
    while True:
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read().strip() == b"OK":
                return
        except OSError:
            pass
        assert server.poll() is None and time.time() < deadline, log.read_text()[-3000:]
        time.sleep(0.5)


def start_mlflow_server(backend_uri: str, workdir: Path, *extra_args: str, env: dict[str, str] | None = None,
                        log: Path | None = None) -> tuple[subprocess.Popen, str]:
    """``mlflow server`` on a free 127.0.0.1 port in its own session (cwd ``workdir``, output to ``log``,
    default ``<workdir>/mlflow-server.log``), once healthy: ``(process, base URL)``. ``env`` defaults to
    this process's without ``MLFLOW_TRACKING_URI``."""
    port = free_port()
    log = log or workdir / "mlflow-server.log"
    env = env if env is not None else {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    server = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", backend_uri, *extra_args], cwd=workdir, env=env, stdout=open(log, "w"),
        stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_healthy(server, port, log)
    except BaseException:
        stop_mlflow_server(server)
        raise
    return server, f"http://127.0.0.1:{port}"


def stop_mlflow_server(server: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL, the server's process group; then wait until its session is empty."""
    os.killpg(server.pid, signal.SIGTERM)  # the server and its uvicorn worker share its process group
    try:
        server.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
    wait_session_gone(server.pid, 10)


@contextlib.contextmanager
def mlflow_server(backend_uri: str, workdir: Path):
    """``mlflow server`` on 127.0.0.1 in its own session (cwd ``workdir``); yields its base URL."""
    server, base = start_mlflow_server(backend_uri, workdir)
    try:
        yield base
    finally:
        stop_mlflow_server(server)


class Rest:
    """GET/POST JSON against MLflow's REST API (``/api/2.0/mlflow/...``) and raw artifact downloads."""

    def __init__(self, base: str) -> None:
        self.base = base

    def get(self, endpoint: str, **query) -> dict:
        url = f"{self.base}/api/2.0/mlflow/{endpoint}?{urllib.parse.urlencode(query)}"
        return json.loads(urllib.request.urlopen(url, timeout=30).read())

    def post(self, endpoint: str, body: dict) -> dict:
        req = urllib.request.Request(f"{self.base}/api/2.0/mlflow/{endpoint}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        return json.loads(urllib.request.urlopen(req, timeout=30).read())

    def artifact(self, run_id: str, path: str) -> bytes:
        """The bytes the UI's artifact viewer fetches (``/get-artifact``); raises HTTPError on 404."""
        query = urllib.parse.urlencode({"path": path, "run_uuid": run_id})
        return urllib.request.urlopen(f"{self.base}/get-artifact?{query}", timeout=30).read()

    def runs(self, experiment_id: str) -> list[dict]:
        return self.post("runs/search", {"experiment_ids": [experiment_id], "max_results": 1000}).get("runs", [])


def kv(items: list[dict] | None) -> dict[str, str]:
    """MLflow's REST ``[{key, value}, ...]`` lists as a dict."""
    return {i["key"]: i["value"] for i in items or []}
