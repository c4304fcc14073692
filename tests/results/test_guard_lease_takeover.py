"""A writer whose lease was taken over never deletes the new holder's lease when it releases its own."""

from __future__ import annotations

import socket
import time

from pipeline.results.store import open_store
from pipeline.results.store.lease import LEASE_FILE, LeaseInfo, RunLease


def _on_disk(path) -> LeaseInfo:
    return LeaseInfo.parse(path.read_bytes(), str(path))


def test_release_after_takeover_keeps_the_new_holders_lease(tmp_path):
    store = open_store(tmp_path)
    lease_file = tmp_path / LEASE_FILE
    # writer A: its lease names another host and has been silent for 100 s (a stalled machine); its
    # heartbeat thread beats every 15 s, so it does not refresh the lease within this test
    old = RunLease(store, LEASE_FILE, "r1", timeout_s=60)
    old.info.host, old.info.timeout_s, old.info.heartbeat = "node-stalled", 5.0, time.time() - 100
    old.acquire()
    assert _on_disk(lease_file).token == old.info.token

    # writer B takes the lease over through the ordinary path (no heartbeat for longer than A's timeout)
    lines: list[str] = []
    new = RunLease(store, LEASE_FILE, "r1", timeout_s=60, echo=lines.append).acquire()
    try:
        assert new.taken_over is not None and new.taken_over.startswith("no heartbeat from pid")
        assert "took over the lease of run r1" in lines[0]
        assert new.info.token != old.info.token
        held = _on_disk(lease_file)
        assert (held.token, held.host) == (new.info.token, socket.gethostname())

        # A finally ends and releases: the lease file is B's now, so it must stay exactly as it is
        before = lease_file.read_bytes()
        old.release()
        assert lease_file.exists(), "the old holder's release deleted the new holder's lease"
        assert lease_file.read_bytes() == before
        after = _on_disk(lease_file)
        assert (after.token, after.host, after.run_id) == (new.info.token, socket.gethostname(), "r1")
    finally:
        new.release()
    # B's own release does remove it (it is B's lease)
    assert not lease_file.exists()


def test_release_after_the_lease_was_replaced_by_another_machine_keeps_it(tmp_path):
    """The same when the new holder is a process elsewhere that wrote its lease in A's place."""
    store = open_store(tmp_path)
    lease_file = tmp_path / LEASE_FILE
    mine = RunLease(store, LEASE_FILE, "r1", timeout_s=60).acquire()
    other = LeaseInfo("r1", "node-other", 4242, time.time(), time.time(), 60.0, "other-token")
    lease_file.write_bytes(other.to_bytes())
    mine.release()
    assert lease_file.exists()
    held = _on_disk(lease_file)
    assert (held.token, held.host, held.pid) == ("other-token", "node-other", 4242)
