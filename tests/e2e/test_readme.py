"""The README's shell blocks, run exactly as printed on a fresh copy of the repository, ``PATH`` untouched.

The copy holds the working tree's files (what a checkout has) plus a ``.venv`` link to the venv the tests
run in (what ``make demo`` leaves). Ray's temp dir is private (``RAY_TMPDIR``) so the head neither joins
nor disturbs other clusters on the machine; it is stopped by signalling, by pid, the processes that carry
that private ``RAY_TMPDIR`` — never ``ray stop``, which would stop every Ray process on the machine.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(sys.prefix)


def shell_blocks(markdown: str) -> dict[str, list[str]]:
    """``bash`` code blocks of a markdown file, by the ``##``/``###`` heading they sit under."""
    blocks: dict[str, list[str]] = {}
    heading = ""
    for part in re.split(r"(^#{2,3} [^\n]*$|^```bash\n.*?^```$)", markdown, flags=re.M | re.S):
        if part.startswith("#"):
            heading = part.lstrip("#").strip()
        elif part.startswith("```bash"):
            blocks.setdefault(heading, []).append(part[len("```bash\n"):-3])
    return blocks


def fresh_checkout(dest: Path) -> Path:
    """The repository's tracked and new (not ignored) files, as a git repo of one commit, plus ``.venv``."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "checkout"]):
        subprocess.run([*git, *cmd], cwd=dest, check=True, capture_output=True)
    (dest / ".venv").symlink_to(VENV)
    return dest


def user_env(ray_tmp: Path) -> dict[str, str]:
    """The caller's environment with no venv on PATH (the block must bring its own), Ray kept private."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "VIRTUAL_ENV", "MLFLOW_TRACKING_URI") and not k.startswith("STARKV_")}
    path = [p for p in env.get("PATH", "").split(os.pathsep)
            if p and not (Path(p) / "starkv-eval").exists() and not (Path(p) / "ray").exists()]
    env.update(PATH=os.pathsep.join(path) or "/usr/bin:/bin", RAY_TMPDIR=str(ray_tmp), HF_HUB_OFFLINE="1",
               RAY_USAGE_STATS_ENABLED="0")
    return env


def _procs_with_env(key: str, value: str) -> list[int]:
    """Pids whose environment holds ``key=value`` exactly (only what this test started has it)."""
    needle = f"{key}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def stop_private_ray(ray_tmp: Path) -> list[int]:
    """SIGTERM, then SIGKILL, every process carrying this test's RAY_TMPDIR; returns what outlived both."""
    left = _procs_with_env("RAY_TMPDIR", str(ray_tmp))
    for sig, wait_s in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):  # Ray's daemons may ignore or drain on SIGTERM
        for pid in left:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + wait_s
        while (left := _procs_with_env("RAY_TMPDIR", str(ray_tmp))) and time.time() < deadline:
            time.sleep(0.5)
    return left


def _port_busy(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_readme_shell_blocks_are_found():
    blocks = shell_blocks((ROOT / "README.md").read_text())
    assert "make demo" in blocks["Two commands (fresh machine)"][0]
    (cluster,) = blocks["Cluster: submit to Ray (`ray job submit`)"]
    assert cluster.startswith("source .venv/bin/activate") and "ray job submit" in cluster
    (ui,) = blocks["Look at it in the MLflow UI"]
    assert "mlflow ui" in ui


@pytest.mark.slow
def test_readme_cluster_block_runs_verbatim_then_the_ui_block_serves_it(tmp_path):
    for port in (6379, 8265, 5000):  # the block uses Ray's and MLflow's default ports, as a user would
        if _port_busy(port):
            pytest.skip(f"port {port} is in use on this machine; the README block needs it free")
    blocks = shell_blocks((ROOT / "README.md").read_text())
    (cluster,) = blocks["Cluster: submit to Ray (`ray job submit`)"]
    (ui,) = blocks["Look at it in the MLflow UI"]
    checkout = fresh_checkout(tmp_path / "starkv-eval")
    ray_tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's socket paths must stay < 108 chars
    env = user_env(ray_tmp)
    assert subprocess.run(["bash", "-c", "command -v starkv-eval"], env=env, capture_output=True).returncode != 0
    t0 = time.time()
    try:
        run = subprocess.run(["bash", "-e", "-c", cluster], cwd=checkout, env=env, capture_output=True, text=True,
                             timeout=480)
        seconds = time.time() - t0
        assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
        assert "succeeded" in run.stdout + run.stderr and "[starkv-eval] Parquet rows:" in run.stdout
        assert (checkout / "outputs" / "smoke" / "mlflow.db").is_file()
        print(f"cluster block: {seconds:.1f} s to a finished job")
        # what was uploaded: the code, not the venv, outputs or git history
        (package,) = {p.resolve() for p in ray_tmp.glob("**/session_*/runtime_resources/working_dir_files/_ray_pkg_*")
                      if p.is_dir()}  # under RAY_TMPDIR/ray; session_latest links to the one session
        uploaded = {p.name for p in package.iterdir()}
        assert {"pipeline", "starkv", "pyproject.toml"} <= uploaded
        assert not uploaded & {".venv", ".git", "outputs", "starkv_eval.egg-info"}, uploaded
    finally:
        left = stop_private_ray(ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert not left, f"Ray processes of the head outlived SIGKILL: {left}"
    _check_submitted_smoke_job(checkout)

    # the UI block as printed, a server in its own session; stopped by its pid once it answered
    ui_proc = subprocess.Popen(["bash", "-e", "-c", ui], cwd=checkout, env=env, stdout=open(tmp_path / "ui.log", "w"),
                               stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 120
        while True:
            try:
                if urllib.request.urlopen("http://127.0.0.1:5000/health", timeout=2).read().strip() == b"OK":
                    break
            except OSError:
                pass
            assert ui_proc.poll() is None and time.time() < deadline, (tmp_path / "ui.log").read_text()[-3000:]
            time.sleep(0.5)
        body = urllib.request.urlopen(
            "http://127.0.0.1:5000/api/2.0/mlflow/experiments/get-by-name?experiment_name=starkv-eval-smoke",
            timeout=10).read().decode()
        assert "custom_model_development" in body
    finally:
        os.killpg(ui_proc.pid, signal.SIGTERM)
        try:
            ui_proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(ui_proc.pid, signal.SIGKILL)
            ui_proc.wait()


def _check_submitted_smoke_job(checkout: Path) -> None:
    """Every row of the submitted job once and error-free; MLflow's parent, children and git commit right."""
    from mlflow.tracking import MlflowClient

    from pipeline.config import load_config, make_benchmark
    from pipeline.results.parquet import read_rows
    from pipeline.run.job import load_episodes

    out = checkout / "outputs" / "smoke"
    cfg = load_config(checkout / "jobs" / "smoke.yaml")
    steps = sum(len(e.steps) for e in load_episodes(cfg, make_benchmark(cfg)))
    units = len(cfg.units())
    table = read_rows(out / cfg.resolved_run_id() / "rows")
    assert table.num_rows == steps * units and all(e is None for e in table.column("error").to_pylist())
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name(cfg.tracking.experiment).experiment_id])
    parents = [r for r in runs if r.data.tags.get("starkv.kind") == "job"]
    children = [r for r in runs if r.data.tags.get("starkv.kind") == "unit"]
    assert len(parents) == 1 and len(children) == units
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=checkout, capture_output=True, text=True,
                            check=True).stdout.strip()
    assert parents[0].data.tags["git_commit"] == commit  # no .git in the upload: the block passes it in the env
    assert all(c.data.metrics["steps"] == steps for c in children)
