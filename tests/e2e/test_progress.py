"""The terminal of a run: one progress display (episodes, steps, steps/s, ETA), Ray's logs only with -v."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline.run.progress import (
    Progress,
    ProgressMonitor,
    StderrLineFilter,
    line_interval_s,
    ray_actor_args_notice,
)
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


# the line every run printed before it was filtered (copied from a Ray 2.60 run's terminal)
NOTICE = ("[2026-12-07 18:13:15,335 E 4733 4733] core_worker.cc:2465: Actor with class name: "
          "'MapWorker(MapBatches(EpisodeActor))' and ID: '9eaf1c6520e2d778759609af01000000' has constructor "
          "arguments in the object store and max_restarts > 0. If the arguments in the object store go out of "
          "scope or are lost, the actor restart will fail. See https://github.com/ray-project/ray/issues/53727 "
          "for more details.")
#: an error-level line of Ray's C++ core: ``[<date> <time> E <pid> <tid>] <file>.cc:<line>: ...``
RAY_ERROR_LINE = re.compile(r"\[\d{4}-\d\d-\d\d [\d:,]+ E \d+ \d+\]")


def test_actor_args_notice_pattern_is_that_one_line():
    pattern = ray_actor_args_notice("EpisodeActor")
    assert pattern.search(NOTICE) and RAY_ERROR_LINE.search(NOTICE)
    fused = NOTICE.replace("MapWorker(MapBatches(EpisodeActor))", "MapWorker(ReadItems->MapBatches(EpisodeActor))")
    assert pattern.search(fused)
    for other in (NOTICE.replace("EpisodeActor", "OtherActor"),  # another class's actors: not ours to hide
                  NOTICE.replace("has constructor arguments", "has other arguments"),
                  "[2026-12-07 18:13:15,335 E 4733 4733] core_worker.cc:2465: Failed to register actor."):
        assert not pattern.search(other), other


def test_stderr_filter_drops_only_the_matching_line(capfd):
    """Writes to file descriptor 2 as Ray's C++ core does, bypassing sys.stderr."""
    pattern = ray_actor_args_notice("EpisodeActor")
    with StderrLineFilter(pattern, once=False) as f:
        os.write(2, b"before\n" + NOTICE.encode() + b"\nafter\n")
        os.write(2, b"[12:00] partial without newline")
        time.sleep(3 * StderrLineFilter.HOLD_S)  # a partial line goes on after HOLD_S, it is not held back
        os.write(2, b" ... ended\n")
        os.write(2, NOTICE.encode() + b"\n")
        os.write(2, "the last line, unicode \u00b7 kept\n".encode())
    assert f.dropped == 2
    assert capfd.readouterr().err == ("before\nafter\n[12:00] partial without newline ... ended\n"
                                      "the last line, unicode \u00b7 kept\n")
    os.write(2, b"back to the real stderr\n")
    assert capfd.readouterr().err == "back to the real stderr\n"


def test_stderr_filter_once_gives_fd_2_back_after_the_line(capfd):
    with StderrLineFilter(ray_actor_args_notice("EpisodeActor")) as f:
        os.write(2, NOTICE.encode() + b"\n")
        deadline = time.monotonic() + 5
        while f.dropped == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)
        os.write(2, NOTICE.encode() + b"\n")  # once: Ray never repeats it, so a second one is shown
    assert f.dropped == 1
    assert capfd.readouterr().err == NOTICE + "\n"


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
    """With --verbose Ray's own logs are back beside the progress lines, but no error-level line of Ray's core:
    a clean run has none, and the actor-arguments false alarm is dropped in every mode. (A plain run's
    terminal -- progress lines, none of Ray's -- is checked on test_faults' reference CLI run, which pipes
    stdout as CI does.)"""
    verbose = _run(tmp_path, "--verbose")
    progress = [line for line in verbose.splitlines() if line.startswith("[starkv-eval] progress:")]
    assert progress and progress[-1].startswith(f"[starkv-eval] progress: episodes 2/2 · steps {STEPS}/{STEPS} ·")
    assert [c for c in RAY_CHATTER if c in verbose], verbose[-3000:]
    errors = [line for line in verbose.splitlines() if "core_worker.cc" in line or RAY_ERROR_LINE.search(line)]
    assert not errors, errors
