"""Test helpers for subprocess-based end-to-end tests (a CLI run or a Ray head in its own session)."""

from __future__ import annotations

import os
import signal
import subprocess
import time


def session_procs(sid: int) -> list[tuple[int, str]]:
    """Live processes of a session (a child started with ``start_new_session`` and all it spawned)."""
    out = subprocess.run(["ps", "-eo", "pid=,sid=,stat=,args="], capture_output=True, text=True).stdout
    procs = []
    for line in out.splitlines():
        pid, psid, stat, *cmd = line.split(None, 3)
        if int(psid) == sid and not stat.startswith("Z"):
            procs.append((int(pid), " ".join(cmd)[:120]))
    return procs


def wait_session_gone(sid: int, timeout: float) -> list[tuple[int, str]]:
    """Wait for a session to empty; SIGKILL (by pid) what is left after ``timeout``; returns the leftovers."""
    deadline = time.time() + timeout
    while (left := session_procs(sid)) and time.time() < deadline:
        time.sleep(0.5)
    for pid, _ in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left
