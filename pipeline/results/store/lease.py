"""One writer per run folder: a lease file with the holder's host, pid, start time and heartbeat.

The lease is created atomically (no other writer can create it at the same time), refreshed by a
heartbeat thread and deleted when the run ends. A second run of the same run id fails at once naming the
holder, or waits for it (``wait=True``). A lease whose holder is gone (its pid no longer runs on this host,
or no heartbeat for ``timeout_s``) is taken over, and the run says so. A file at the lease's place that is
not a starkv-eval lease is reported with its path and never overwritten.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

from pipeline.results.store.errors import LeaseCorrupt, LeaseHeld, StoreError
from pipeline.results.store.fs import Store

log = logging.getLogger(__name__)

LEASE_FILE = "lease.json"
KIND = "starkv-eval run lease"
DEFAULT_TIMEOUT_S = 120.0


def _pid_namespace() -> str:
    """This process's pid namespace (two containers can share a host name but not their pids)."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _clock(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%H:%M:%S UTC")


@dataclass
class LeaseInfo:
    """What the lease file says about its holder (times are epoch seconds of the holder's clock)."""

    run_id: str
    host: str
    pid: int
    started: float
    heartbeat: float
    timeout_s: float
    token: str
    pidns: str = ""
    kind: str = KIND

    @classmethod
    def mine(cls, run_id: str, timeout_s: float) -> LeaseInfo:
        now = time.time()
        return cls(run_id, socket.gethostname(), os.getpid(), now, now, timeout_s, uuid.uuid4().hex, _pid_namespace())

    def to_bytes(self) -> bytes:
        data = asdict(self)
        data["started_utc"] = datetime.fromtimestamp(self.started, timezone.utc).isoformat()
        data["heartbeat_utc"] = datetime.fromtimestamp(self.heartbeat, timezone.utc).isoformat()
        return json.dumps(data, indent=2).encode()

    @classmethod
    def parse(cls, data: bytes, where: str) -> LeaseInfo:
        try:
            raw = json.loads(data)
            if not isinstance(raw, dict) or raw.get("kind") != KIND:
                raise ValueError(f"no \"kind\": \"{KIND}\"")
            return cls(run_id=str(raw["run_id"]), host=str(raw["host"]), pid=int(raw["pid"]),
                       started=float(raw["started"]), heartbeat=float(raw["heartbeat"]),
                       timeout_s=float(raw["timeout_s"]), token=str(raw["token"]), pidns=str(raw.get("pidns", "")))
        except Exception as err:  # noqa: BLE001 - any malformed content
            raise LeaseCorrupt(f"{where} is not a starkv-eval run lease ({type(err).__name__}: {err}); it was left "
                               "as it is: if no run is writing this folder, delete the file and run again") from None

    def describe(self) -> str:
        return (f"pid {self.pid} on {self.host} since {_clock(self.started)} "
                f"(last heartbeat {max(0.0, time.time() - self.heartbeat):.0f} s ago)")

    def gone(self) -> str | None:
        """Why the holder is known to be dead (None: it may still be running)."""
        if self.host == socket.gethostname() and self.pidns == _pid_namespace():
            import psutil

            try:
                if psutil.Process(self.pid).create_time() > self.started + 1:
                    return f"pid {self.pid} on {self.host} is gone (the pid now belongs to another process)"
            except psutil.NoSuchProcess:
                return f"pid {self.pid} on {self.host} is gone"
            except psutil.Error:
                pass
        silent = time.time() - self.heartbeat
        if silent > self.timeout_s:
            return f"no heartbeat from pid {self.pid} on {self.host} for {silent:.0f} s (timeout {self.timeout_s:g} s)"
        return None


class RunLease:
    """``with RunLease(store, "run-id/lease.json", run_id): ...`` holds the run folder for this process."""

    def __init__(self, store: Store, rel: str, run_id: str, timeout_s: float = DEFAULT_TIMEOUT_S,
                 wait: bool = False, echo=print, poll_s: float | None = None) -> None:
        if timeout_s <= 0:
            raise StoreError(f"lease timeout must be > 0 seconds, got {timeout_s:g}")
        self.store, self.rel, self.run_id, self.wait, self.echo = store, rel, run_id, wait, echo
        self.timeout_s = float(timeout_s)
        self.poll_s = poll_s if poll_s is not None else min(5.0, self.timeout_s / 4)
        self.info = LeaseInfo.mine(run_id, self.timeout_s)
        self.lost: str | None = None  # set when another writer took the lease away from us
        self.taken_over: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def where(self) -> str:
        return self.store.where(self.rel)

    def _current(self) -> tuple[bytes, LeaseInfo] | None:
        data = self.store.read_bytes(self.rel)
        return None if data is None else (data, LeaseInfo.parse(data, self.where))

    def acquire(self) -> RunLease:
        announced = False
        while True:
            if self.store.create(self.rel, self.info.to_bytes()):
                break
            current = self._current()
            if current is None:
                continue  # released between our attempt and the read: try again
            data, holder = current
            reason = holder.gone()
            if reason:
                again = self.store.read_bytes(self.rel)
                if again == data:  # still the dead holder's lease (not a newer taker's): replace it
                    self.store.delete(self.rel)
                    if self.store.create(self.rel, self.info.to_bytes()):
                        self.taken_over = reason
                        self.echo(f"[starkv-eval] took over the lease of run {self.run_id} ({self.where}): {reason}")
                        break
                continue
            if not self.wait:
                raise LeaseHeld(f"run {self.run_id} is being written by {holder.describe()}; lease {self.where}. "
                                "Wait for it (`starkv-eval run ... --wait`), or if that process is dead, rerun once "
                                f"its lease expires ({holder.timeout_s:g} s without heartbeat)")
            if not announced:
                self.echo(f"[starkv-eval] run {self.run_id} is being written by {holder.describe()}; waiting for it "
                          f"(lease {self.where})")
                announced = True
            time.sleep(self.poll_s)
        self._thread = threading.Thread(target=self._beat, name="starkv-lease-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        interval = self.timeout_s / 4
        while not self._stop.wait(interval):
            try:
                current = self._current()
                if current is None or current[1].token != self.info.token:
                    self.lost = current[1].describe() if current else "nobody (the lease file was deleted)"
                    log.warning("run %s lost its lease %s to %s", self.run_id, self.where, self.lost)
                    return
                self.info.heartbeat = time.time()
                self.store.write_atomic(self.rel, self.info.to_bytes())
            except StoreError as err:  # a transient store hiccup: try again at the next beat
                log.warning("lease heartbeat failed: %s", err)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        try:
            current = self._current()
        except StoreError:
            return
        if current is not None and current[1].token == self.info.token:
            self.store.delete(self.rel)

    def __enter__(self) -> RunLease:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
