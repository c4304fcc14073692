"""``starkv-eval wait-head``: block until a Ray head takes job submissions.

``ray start --head`` returns before the head's dashboard agent has registered; on a busy machine that
takes longer than the 10 s a submission waits for it, and ``ray job submit`` then fails with "No
available agent to submit job". This waits for exactly what the submission needs: the head node's id
and its agent's address in the GCS (the keys Ray's job head reads), with a line of progress every few
seconds and a clear error after ``--timeout-s``.
"""

from __future__ import annotations

import argparse
import os
import socket
import time
from collections.abc import Callable

DEFAULT_GCS = "127.0.0.1:6379"


def _gcs_address(arg: str | None) -> str:
    """``--address``, else ``RAY_ADDRESS`` when it names a GCS (not a dashboard URL), else the default port."""
    if arg:
        return arg
    env = os.environ.get("RAY_ADDRESS", "")
    return env if env and "://" not in env and env != "auto" else DEFAULT_GCS


def head_agent_state(gcs_address: str, rpc_timeout_s: float = 5.0) -> str | None:
    """None once the head's job agent is registered, else why a submission would still be refused."""
    from ray._private import ray_constants
    from ray._raylet import GcsClient
    from ray.dashboard.consts import DASHBOARD_AGENT_ADDR_NODE_ID_PREFIX

    host, _, port = gcs_address.rpartition(":")
    try:  # a plain connect first: Ray's client blocks ~35 s (and logs warnings) on a port nobody serves
        socket.create_connection((host, int(port)), timeout=rpc_timeout_s).close()
    except (OSError, ValueError):
        return f"no GCS answering at {gcs_address}"
    try:
        gcs = GcsClient(address=gcs_address)
        head = gcs.internal_kv_get(ray_constants.KV_HEAD_NODE_ID_KEY, namespace=ray_constants.KV_NAMESPACE_JOB,
                                   timeout=rpc_timeout_s)
        if not head:
            return "the head node has not registered yet"
        key = f"{DASHBOARD_AGENT_ADDR_NODE_ID_PREFIX}{head.decode()}".encode()
        agent = gcs.internal_kv_get(key, namespace=ray_constants.KV_NAMESPACE_DASHBOARD, timeout=rpc_timeout_s)
    except Exception as exc:  # the GCS not up yet (or gone): Ray raises RpcError / ConnectionError
        return f"no GCS answering at {gcs_address} ({type(exc).__name__})"
    return None if agent else "its job agent has not registered yet"


def wait_for_head(gcs_address: str, timeout_s: float, *, poll_s: float = 1.0, report_every_s: float = 5.0,
                  state: Callable[[str], str | None] = head_agent_state, log: Callable[[str], None] = print) -> bool:
    """Poll ``state`` until the head takes jobs (True) or ``timeout_s`` passes (False); progress via ``log``."""
    start = time.monotonic()
    last_report = start
    while True:
        why = state(gcs_address)
        waited = time.monotonic() - start
        if why is None:
            log(f"[wait-head] the Ray head at {gcs_address} takes jobs (after {waited:.0f} s)")
            return True
        if waited >= timeout_s:
            log(f"[wait-head] gave up after {waited:.0f} s: {why}. Is the head running (`ray status`)? "
                "Its agent's log is dashboard_agent.log in the session's logs folder "
                "(<RAY_TMPDIR or /tmp/ray>/session_latest/logs).")
            return False
        if time.monotonic() - last_report >= report_every_s:
            log(f"[wait-head] waiting for the Ray head at {gcs_address}: {why} ({waited:.0f} s)")
            last_report = time.monotonic()
        time.sleep(poll_s)


def _cmd(args: argparse.Namespace) -> int:
    if args.timeout_s <= 0:
        raise SystemExit("starkv-eval wait-head: --timeout-s must be > 0")
    ok = wait_for_head(_gcs_address(args.address), args.timeout_s, log=lambda line: print(line, flush=True))
    return 0 if ok else 1


def add_parser(sub) -> None:
    p = sub.add_parser("wait-head", help="wait until a (just started) Ray head takes `ray job submit`")
    p.add_argument("--address", help=f"the head's GCS address (default: RAY_ADDRESS if it is one, else {DEFAULT_GCS})")
    p.add_argument("--timeout-s", type=float, default=300.0, help="give up (exit 1) after this long (default 300)")
    p.set_defaults(func=_cmd)

