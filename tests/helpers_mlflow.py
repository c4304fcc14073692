"""A real ``mlflow server`` on loopback for a test, and the bits of its REST API the tests read."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import signal
import socket
import string
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
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


#: The basic-auth config template the cluster deploys (infra/mlflow/basic_auth.ini, Python string.Template).
AUTH_CONFIG_TEMPLATE = Path(__file__).resolve().parents[1] / "infra" / "mlflow" / "basic_auth.ini"


@dataclass(frozen=True)
class BasicAuth:
    """``mlflow server --app-name basic-auth`` settings for a test server.

    Parameters
    ----------
    admin_username, admin_password : str
        The admin MLflow creates on first start (MLFLOW_AUTH_ADMIN_USERNAME/PASSWORD); at least 12 characters.
    template : Path
        The ``basic_auth.ini`` to render; its ``${MLFLOW_AUTH_DATABASE_URI}`` becomes an sqlite file in the workdir.
    """

    admin_username: str = "admin"
    admin_password: str = "admin-password-0123"
    template: Path = AUTH_CONFIG_TEMPLATE

    def write_config(self, workdir: Path) -> Path:
        """The rendered ``basic_auth.ini`` in ``workdir``, users and permissions in ``workdir/auth.db``."""
        text = string.Template(self.template.read_text()).substitute(
            MLFLOW_AUTH_DATABASE_URI=f"sqlite:///{(workdir / 'auth.db').resolve()}")
        path = workdir / "basic_auth.ini"
        path.write_text(text)
        return path

    def env(self, workdir: Path) -> dict[str, str]:
        return {"MLFLOW_AUTH_CONFIG_PATH": str(self.write_config(workdir)),
                "MLFLOW_AUTH_ADMIN_USERNAME": self.admin_username, "MLFLOW_AUTH_ADMIN_PASSWORD": self.admin_password,
                "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16)}


def start_mlflow_server(backend_uri: str, workdir: Path, *extra_args: str, env: dict[str, str] | None = None,
                        log: Path | None = None, auth: BasicAuth | None = None) -> tuple[subprocess.Popen, str]:
    """``mlflow server`` on a free 127.0.0.1 port in its own session (cwd ``workdir``, output to ``log``,
    default ``<workdir>/mlflow-server.log``), once healthy: ``(process, base URL)``. ``env`` defaults to
    this process's without MLflow's tracking and auth variables; with ``auth`` it runs MLflow's basic-auth
    app (``--app-name basic-auth``): every request but /health needs a user, starting with ``auth``'s admin."""
    port = free_port()
    log = log or workdir / "mlflow-server.log"
    env = env if env is not None else {k: v for k, v in os.environ.items()
                                       if not k.startswith(("MLFLOW_TRACKING_", "MLFLOW_AUTH_"))}
    cmd = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", backend_uri, *extra_args]
    if auth is not None:
        cmd[2:2] = ["--app-name", "basic-auth"]
        env = {**env, **auth.env(workdir)}
    server = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        wait_healthy(server, port, log, timeout=120 if auth is None else 300)  # the auth app imports more
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
def mlflow_server(backend_uri: str, workdir: Path, auth: BasicAuth | None = None):
    """``mlflow server`` on 127.0.0.1 in its own session (cwd ``workdir``); yields its base URL."""
    server, base = start_mlflow_server(backend_uri, workdir, auth=auth)
    try:
        yield base
    finally:
        stop_mlflow_server(server)


class Rest:
    """GET/POST JSON against MLflow's REST API (``/api/2.0/mlflow/...``) and raw artifact downloads.

    ``user``/``password`` go along as HTTP basic auth (a ``--app-name basic-auth`` server).
    """

    def __init__(self, base: str, user: str | None = None, password: str | None = None) -> None:
        self.base = base
        self.headers = {}
        if user is not None:
            token = base64.b64encode(f"{user}:{password or ''}".encode()).decode()
            self.headers["Authorization"] = f"Basic {token}"

    def _open(self, req: urllib.request.Request | str):
        if isinstance(req, str):
            req = urllib.request.Request(req)
        for k, v in self.headers.items():
            req.add_header(k, v)
        return urllib.request.urlopen(req, timeout=60)

    def get(self, endpoint: str, *, api: str = "2.0", **query) -> dict:
        url = f"{self.base}/api/{api}/mlflow/{endpoint}?{urllib.parse.urlencode(query)}"
        return json.loads(self._open(url).read())

    def post(self, endpoint: str, body: dict, *, api: str = "2.0") -> dict:
        req = urllib.request.Request(f"{self.base}/api/{api}/mlflow/{endpoint}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        return json.loads(self._open(req).read())

    def artifact(self, run_id: str, path: str) -> bytes:
        """The bytes the UI's artifact viewer fetches (``/get-artifact``); raises HTTPError on 404."""
        query = urllib.parse.urlencode({"path": path, "run_uuid": run_id})
        return self._open(f"{self.base}/get-artifact?{query}").read()

    def runs(self, experiment_id: str) -> list[dict]:
        return self.post("runs/search", {"experiment_ids": [experiment_id], "max_results": 1000}).get("runs", [])


def kv(items: list[dict] | None) -> dict[str, str]:
    """MLflow's REST ``[{key, value}, ...]`` lists as a dict."""
    return {i["key"]: i["value"] for i in items or []}
