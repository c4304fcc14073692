"""The result store without Ray: deterministic atomic row files, healing duplicates, the run lease, errors."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.cli import main as cli_main
from pipeline.metrics.rows import rows_to_table
from pipeline.results.parquet import finished_units, read_rows, read_store
from pipeline.results.store import LeaseCorrupt, LeaseHeld, StoreError, open_store
from pipeline.results.store.lease import LEASE_FILE, LeaseInfo, RunLease
from pipeline.results.store.rowfiles import heal_files, row_file_name, write_episode_files
from tests.helpers_runs import step_row, write_run_folder

CONFIG = {"name": "t", "model": {"path": "tiny"}, "benchmark": {"name": "synthetic"},
          "compressors": [{"name": "snapkv"}], "budgets": [50]}


def _rows(episode: str, n: int, **values) -> list[dict]:
    rows = [step_row("r1", "snapkv", 50.0, i, **values) for i in range(n)]
    for r in rows:
        r["episode_id"], r["step_key"] = episode, f"snapkv@50/{episode}/{r['step_index']}"
    return rows


def test_row_files_are_named_by_unit_and_episode_and_rewrites_replace(tmp_path):
    store = open_store(tmp_path)
    table = rows_to_table(_rows("ep/0 a", 3) + _rows("ep1", 2), {"run_id": "r1"})
    names = write_episode_files(store, "rows", table)
    assert names == [row_file_name("snapkv@50", "ep/0 a"), row_file_name("snapkv@50", "ep1")]
    assert names[0] == "snapkv@50+ep%2F0%20a.parquet"
    # a retried task (or a second writer) writes the same names: still one copy of each step
    write_episode_files(store, "rows", rows_to_table(_rows("ep1", 2, prefill_s=9.0), {"run_id": "r1"}))
    files = sorted(p.name for p in (tmp_path / "rows").iterdir())
    assert files == sorted(names)  # no temp file left behind
    table = read_rows(tmp_path / "rows")
    assert table.num_rows == 5 and finished_units(tmp_path / "rows") == {("snapkv@50", "ep/0 a"), ("snapkv@50", "ep1")}
    assert pq.read_schema(tmp_path / "rows" / names[0]).metadata[b"run_id"] == b"r1"
    long_name = row_file_name("snapkv@50", "x" * 500)
    assert len(long_name) < 200 and long_name != row_file_name("snapkv@50", "x" * 499)


def test_identical_duplicates_read_once_and_are_healed_under_the_lease(tmp_path):
    run_dir = write_run_folder(tmp_path, "r1", CONFIG, _rows("ep0", 4))
    rows = run_dir / "rows"
    # a copied folder / a second writer of an older version: same results, other timings and pid
    pq.write_table(rows_to_table(_rows("ep0", 4, prefill_s=3.0, actor_pid=99)), rows / "part-0 (copy).parquet")
    with pytest.warns(UserWarning, match=r"4 steps were stored more than once with identical results"):
        read = read_store(rows)
    assert read.table.num_rows == 4 and read.duplicates == 4
    assert sorted(read.table.column("step_key").to_pylist()) == [f"snapkv@50/ep0/{i}" for i in range(4)]
    note = read.heal_note(str(rows))
    assert "part-0.parquet" in note and "part-0 (copy).parquet" in note

    heal_files(open_store(run_dir), "rows")
    assert [p.name for p in rows.iterdir()] == [row_file_name("snapkv@50", "ep0")]
    again = read_store(rows)
    assert again.duplicates == 0 and again.table.num_rows == 4


def test_conflicting_copies_fail_naming_both_files(tmp_path, capsys):
    run_dir = write_run_folder(tmp_path, "r1", CONFIG, _rows("ep0", 2))
    pq.write_table(rows_to_table(_rows("ep0", 2, prediction="click(1,2)")), run_dir / "rows" / "other.parquet")
    with pytest.raises(StoreError, match=r"step snapkv@50/ep0/0 has conflicting copies in .*other.parquet and "
                                         r".*part-0.parquet \(prediction: 'click\(1,2\)' vs None\)"):
        read_rows(run_dir / "rows")
    # every command that reads the store says it in one line, no traceback
    assert cli_main(["sync", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "conflicting copies" in err and "Traceback" not in err
    assert cli_main(["report", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "other.parquet" in err
    assert cli_main(["regress", "--baseline", str(run_dir), "--current", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "conflicting copies" in err


def test_truncated_file_is_reported_by_readers(tmp_path, capsys):
    run_dir = write_run_folder(tmp_path, "r1", CONFIG, _rows("ep0", 2))
    (run_dir / "rows" / "cut.parquet").write_bytes((run_dir / "rows" / "part-0.parquet").read_bytes()[:100])
    with pytest.raises(StoreError, match=r"cut.parquet is not a readable Parquet file"):
        read_rows(run_dir / "rows")
    assert cli_main(["sync", str(tmp_path)]) == 2
    assert "cut.parquet" in capsys.readouterr().err


def _holder(lease_dir: Path, run_id: str) -> subprocess.Popen:
    """Another process holding the lease until its stdin closes."""
    code = ("import sys; from pipeline.results.store import open_store; from pipeline.results.store.lease import RunLease\n"
            f"lease = RunLease(open_store({str(lease_dir)!r}), 'lease.json', {run_id!r}, timeout_s=60).acquire()\n"
            "print('held', flush=True); sys.stdin.read(); lease.release()\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_writer_fails_fast_naming_the_holder_or_waits(tmp_path):
    store = open_store(tmp_path)
    holder = _holder(tmp_path, "r1")
    try:
        t0 = time.time()
        with pytest.raises(LeaseHeld, match=rf"run r1 is being written by pid {holder.pid} on "
                                            rf"{socket.gethostname()} since \d\d:\d\d:\d\d UTC"):
            RunLease(store, LEASE_FILE, "r1").acquire()
        assert time.time() - t0 < 5
        info = LeaseInfo.parse((tmp_path / LEASE_FILE).read_bytes(), "x")
        assert info.pid == holder.pid and info.heartbeat >= info.started
        lines: list[str] = []
        waiter = RunLease(store, LEASE_FILE, "r1", wait=True, echo=lines.append, poll_s=0.2)
        thread = threading.Thread(target=waiter.acquire)
        thread.start()
        deadline = time.time() + 10
        while not lines and time.time() < deadline:
            time.sleep(0.05)
        assert lines and f"being written by pid {holder.pid}" in lines[0] and "waiting for it" in lines[0]
        assert thread.is_alive()  # still waiting while the holder lives
        holder.stdin.write("done")
        holder.stdin.close()
        thread.join(10)
        assert not thread.is_alive() and holder.wait(10) == 0
        assert LeaseInfo.parse((tmp_path / LEASE_FILE).read_bytes(), "x").pid == os.getpid()
        waiter.release()
        assert not (tmp_path / LEASE_FILE).exists()
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()


def test_dead_or_silent_holder_is_taken_over_and_said_so(tmp_path):
    store = open_store(tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    info = LeaseInfo.mine("r1", 60)
    info.pid = int(dead.stdout)
    (tmp_path / LEASE_FILE).write_bytes(info.to_bytes())
    lines: list[str] = []
    lease = RunLease(store, LEASE_FILE, "r1", echo=lines.append).acquire()
    assert lease.taken_over == f"pid {info.pid} on {socket.gethostname()} is gone"
    assert "took over the lease of run r1" in lines[0]
    lease.release()

    # same host name, other container (pid namespace): its pids are not ours to look up
    info = LeaseInfo.mine("r1", 60)
    info.pid, info.pidns = int(dead.stdout), "pid:[1]"
    (tmp_path / LEASE_FILE).write_bytes(info.to_bytes())
    with pytest.raises(LeaseHeld, match=f"pid {info.pid} on {socket.gethostname()}"):
        RunLease(store, LEASE_FILE, "r1").acquire()

    # another host we cannot look into: only the heartbeat tells (its own timeout, 5 s here)
    info = LeaseInfo("r1", "node-elsewhere", 123, time.time() - 100, time.time() - 2, 5, "tok")
    (tmp_path / LEASE_FILE).write_bytes(info.to_bytes())
    with pytest.raises(LeaseHeld, match="pid 123 on node-elsewhere"):
        RunLease(store, LEASE_FILE, "r1").acquire()
    info.heartbeat = time.time() - 6
    (tmp_path / LEASE_FILE).write_bytes(info.to_bytes())
    lease = RunLease(store, LEASE_FILE, "r1", echo=lines.append).acquire()
    assert lease.taken_over.startswith("no heartbeat from pid 123 on node-elsewhere for 6 s")
    lease.release()


def test_heartbeat_refreshes_the_lease(tmp_path):
    lease = RunLease(open_store(tmp_path), LEASE_FILE, "r1", timeout_s=0.4).acquire()
    try:
        first = LeaseInfo.parse((tmp_path / LEASE_FILE).read_bytes(), "x")
        time.sleep(0.5)
        later = LeaseInfo.parse((tmp_path / LEASE_FILE).read_bytes(), "x")
        assert later.token == first.token and later.heartbeat > first.heartbeat
    finally:
        lease.release()


@pytest.mark.parametrize("content", [b"", b"{not json", json.dumps({"pid": 1}).encode(), b"[1, 2]"])
def test_corrupt_lease_is_reported_with_its_path_and_kept(tmp_path, content):
    (tmp_path / LEASE_FILE).write_bytes(content)
    with pytest.raises(LeaseCorrupt, match=rf"{tmp_path / LEASE_FILE} is not a starkv-eval run lease"):
        RunLease(open_store(tmp_path), LEASE_FILE, "r1", wait=True).acquire()
    assert (tmp_path / LEASE_FILE).read_bytes() == content


def test_bad_store_urls_fail_in_one_line():
    with pytest.raises(StoreError, match=r"nosuch://x/y: not a usable storage URL"):
        open_store("nosuch://x/y")
    with pytest.raises(StoreError, match=r"memory://x: memory:// lives in one process"):
        open_store("memory://x")


def test_store_error_raised_in_a_worker_is_found_behind_the_wrapping():
    from pipeline.run.job import _store_error

    inner = StoreError("s3://b/x/rows/a.parquet: cannot write (PermissionError: denied); check ...")
    try:
        try:
            raise inner
        except StoreError as err:
            raise RuntimeError("task failed") from err
    except RuntimeError as wrapped:
        assert _store_error(wrapped) is inner
    assert _store_error(RuntimeError("no store problem")) is None
