"""The terminal of a run: one progress display (episodes, steps, steps/s, ETA), Ray's logs only with -v."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline.run.progress import Progress, ProgressMonitor, line_interval_s
from tests.helpers_runs import RAY_CHATTER

BIN = Path(sys.executable).parent
JOB = {
    "name": "progress",
    "model": {"path": "tiny", "device": "cpu", "max_new_tokens": 4},
    "benchmark": {"name": "synthetic", "options": {"num_episodes": 2, "seed": 0}},
    "agent": {"image_slots": 1},
    "compressors": [{"name": "snapkv"}],
    "budgets": [50],
    "ray": {"num_actors": 1, "num_cpus_per_actor": 1},
    "tracking": {"experiment": "progress"},
}
STEPS = 9  # synthetic seed 0: ep0000 6 steps, ep0001 3


def test_progress_text_has_counts_rate_and_eta():
    p = Progress(episodes=3, total_episodes=12, steps=20, total_steps=80, elapsed_s=10.0)
    assert p.steps_per_s == 2.0 and p.eta_s == 30.0
    assert p.text() == "episodes 3/12 · steps 20/80 · 2.00 steps/s · elapsed 0m10s · ETA 0m30s"
    assert p.bar().startswith("[######..................]  25% episodes 3/12")
    assert Progress(0, 4, 0, 10, 5.0).text().endswith("ETA ?")


def test_non_tty_lines_come_at_a_bounded_rate():
    start = time.monotonic()
    lines: list[str] = []

    def snapshot() -> tuple[int, int]:  # one step every 0.05 s, like a fast run
        steps = min(40, int((time.monotonic() - start) / 0.05))
        return steps // 4, steps

    with ProgressMonitor(snapshot, 10, 40, echo=lines.append, tty=False, interval_s=0.5, poll_s=0.05):
        time.sleep(2.2)
    assert 4 <= len(lines) <= 6, lines  # ~every 0.5 s plus the final line, not one per poll
    assert lines[-1].startswith("[starkv-eval] progress: episodes 10/10 · steps 40/40 ·")


def test_tty_redraws_one_line_in_place(capsys):
    with ProgressMonitor(lambda: (1, 5), 2, 10, echo=print, tty=True, poll_s=0.05):
        time.sleep(0.3)
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.endswith("\n") and out.count("\r") >= 2
    assert out.rsplit("\r", 1)[1].startswith("[############............]  50% episodes 1/2 · steps 5/10")


def test_bad_interval_names_the_variable(monkeypatch):
    monkeypatch.setenv("STARKV_PROGRESS_INTERVAL_S", "soon")
    with pytest.raises(ValueError, match="STARKV_PROGRESS_INTERVAL_S='soon'"):
        line_interval_s()


def _run(tmp_path: Path, *extra: str) -> str:
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(JOB))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", HF_HUB_OFFLINE="1",
               STARKV_PROGRESS_INTERVAL_S="5")
    proc = subprocess.run([str(BIN / "starkv-eval"), "run", str(job), "--output", str(tmp_path / "out"), *extra],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


@pytest.mark.slow
def test_verbose_cli_run_shows_progress_and_ray_logs(tmp_path):
    """With --verbose Ray's own logs are back beside the progress lines. (A plain run's terminal -- progress
    lines, none of Ray's -- is checked on test_faults' reference CLI run, which pipes stdout as CI does.)"""
    verbose = _run(tmp_path, "--verbose")
    progress = [line for line in verbose.splitlines() if line.startswith("[starkv-eval] progress:")]
    assert progress and progress[-1].startswith(f"[starkv-eval] progress: episodes 2/2 · steps {STEPS}/{STEPS} ·")
    assert [c for c in RAY_CHATTER if c in verbose], verbose[-3000:]
