"""Test helpers for subprocess-based end-to-end tests (a CLI run or a Ray head in its own session)."""

from __future__ import annotations

import subprocess


def session_procs(sid: int) -> list[tuple[int, str]]:
    """Live processes of a session (a child started with ``start_new_session`` and all it spawned)."""
    out = subprocess.run(["ps", "-eo", "pid=,sid=,stat=,args="], capture_output=True, text=True).stdout
    procs = []
    for line in out.splitlines():
        pid, psid, stat, *cmd = line.split(None, 3)
        if int(psid) == sid and not stat.startswith("Z"):
            procs.append((int(pid), " ".join(cmd)[:120]))
    return procs
