"""``starkv-eval wait-head``: the wait for a fresh Ray head's job agent (on a real head: the README block, tests/e2e/test_readme.py)."""

from __future__ import annotations

import socket
import time

from pipeline.cli import main
from pipeline.commands.wait_head import _gcs_address, head_agent_state, wait_for_head


def test_waits_until_the_agent_registers_and_reports_progress():
    answers = iter(["no GCS answering at h:1", "its job agent has not registered yet", None])
    lines: list[str] = []
    assert wait_for_head("h:1", 60, poll_s=0, report_every_s=0, state=lambda _a: next(answers), log=lines.append)
    assert [line.split(":")[0] for line in lines] == ["[wait-head] waiting for the Ray head at h"] * 2 + [
        "[wait-head] the Ray head at h"]
    assert "no GCS answering" in lines[0] and "agent has not registered" in lines[1] and "takes jobs" in lines[2]


def test_gives_up_after_the_timeout_naming_what_is_missing():
    lines: list[str] = []
    start = time.monotonic()
    ok = wait_for_head("h:1", 0.2, poll_s=0.05, state=lambda _a: "its job agent has not registered yet",
                       log=lines.append)
    assert not ok and time.monotonic() - start >= 0.2
    assert "gave up" in lines[-1] and "its job agent has not registered yet" in lines[-1]
    assert "dashboard_agent.log" in lines[-1]


def test_a_port_nobody_serves_is_reported_without_rays_client(monkeypatch):
    import ray._raylet

    def refuse(*_a, **_k):
        raise AssertionError("Ray's GCS client (which blocks ~35 s on a dead port) was built")

    monkeypatch.setattr(ray._raylet, "GcsClient", refuse)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again before the probe: nothing listens there
    assert head_agent_state(f"127.0.0.1:{port}") == f"no GCS answering at 127.0.0.1:{port}"


def test_address_comes_from_the_flag_then_ray_address_then_the_default(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6380")
    assert _gcs_address("1.2.3.4:7000") == "1.2.3.4:7000"
    assert _gcs_address(None) == "10.0.0.5:6380"
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")  # a dashboard URL is not a GCS address
    assert _gcs_address(None) == "127.0.0.1:6379"


def test_cli_exits_1_when_no_head_comes(capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["wait-head", "--address", f"127.0.0.1:{port}", "--timeout-s", "0.5"]) == 1
    assert "gave up" in capsys.readouterr().out
