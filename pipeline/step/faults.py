"""Test-only fault injection, so the fault-tolerance tests can break a real run at a chosen step.

Nothing here does anything unless one of these environment variables is set; never set them in real
runs. A step is named by its ``step_key`` (``"<compressor>@<budget>/<episode_id>/<step_index>"``, the
column of the same name in the Parquet rows); each variable takes one key or a comma-separated list.

``STARKV_FAULT_KILL_ACTOR_ONCE``
    The process hard-exits (``os._exit(1)``, like a segfault or the OOM killer) the first time it
    reaches the step. A marker file in ``STARKV_FAULT_DIR`` (required) records that it fired, so the
    restarted actor that reruns the episode gets past it; the marker holds the killed process id.
``STARKV_FAULT_RAISE``
    Raises ``RuntimeError("injected fault at <key>")`` inside the step (every time).
``STARKV_FAULT_OOM``
    Raises ``torch.cuda.OutOfMemoryError`` inside the step (every time), as a full GPU would.
``STARKV_FAULT_STEP_DELAY_S``
    Sleeps this many seconds at the start of every step (before timing starts), which widens the
    window in which a test can kill the driver mid-run.
``STARKV_FAULT_HOLD_UNTIL_FILE``
    Every step waits (up to 10 min) until this file exists, so a test can keep a run busy exactly as
    long as it needs (e.g. until a second run reports that it waits), however slow the machine is.
``STARKV_FAULT_HOLD_AFTER_STEPS``
    With the hold file: the first N steps of each process run freely, the hold starts at step N + 1
    (so a test can let some episodes finish and keep the rest in flight until it kills the run).

The driver forwards these variables to the Ray actors (``fault_env``), so they also work on a cluster
that was started before they were set.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

PREFIX = "STARKV_FAULT_"
KILL_ONCE = "STARKV_FAULT_KILL_ACTOR_ONCE"
RAISE = "STARKV_FAULT_RAISE"
OOM = "STARKV_FAULT_OOM"
DELAY = "STARKV_FAULT_STEP_DELAY_S"
HOLD = "STARKV_FAULT_HOLD_UNTIL_FILE"
HOLD_AFTER = "STARKV_FAULT_HOLD_AFTER_STEPS"
HOLD_LIMIT_S = 600.0
_steps_seen = 0  # steps this process has started (for HOLD_AFTER)
MARKER_DIR = "STARKV_FAULT_DIR"


def fault_env() -> dict[str, str]:
    """The fault variables set in this process (empty in real runs), to forward to Ray workers."""
    return {k: v for k, v in os.environ.items() if k.startswith(PREFIX) and v}


def _named(var: str, step_key: str) -> bool:
    value = os.environ.get(var)
    return bool(value) and step_key in {k.strip() for k in value.split(",")}


def marker_path(step_key: str) -> Path:
    """Where the kill-once marker for ``step_key`` lives (needs ``STARKV_FAULT_DIR``)."""
    folder = os.environ.get(MARKER_DIR)
    if not folder:
        raise RuntimeError(f"{KILL_ONCE} needs {MARKER_DIR} (a folder shared by all actors)")
    return Path(folder) / ("killed-" + re.sub(r"[^A-Za-z0-9._-]", "_", step_key))


def _kill_once(step_key: str) -> None:
    path = marker_path(step_key)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return  # already fired: this is the rerun
    os.write(fd, str(os.getpid()).encode())
    os.fsync(fd)
    os.close(fd)
    os._exit(1)


def inject(step_key: str) -> None:
    """Apply whatever fault the environment names for this step (no-op when none is set)."""
    delay = os.environ.get(DELAY)
    if delay:
        time.sleep(float(delay))
    global _steps_seen
    _steps_seen += 1
    hold = os.environ.get(HOLD)
    if hold and _steps_seen > int(os.environ.get(HOLD_AFTER) or 0):
        deadline = time.monotonic() + HOLD_LIMIT_S
        while not Path(hold).exists() and time.monotonic() < deadline:
            time.sleep(0.1)
    if _named(KILL_ONCE, step_key):
        _kill_once(step_key)
    if _named(OOM, step_key):
        import torch

        raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (injected fault at {step_key})")
    if _named(RAISE, step_key):
        raise RuntimeError(f"injected fault at {step_key}")
