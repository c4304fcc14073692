"""One progress display for a run: episodes and steps done / total, steps/s and ETA.

Actors report each finished episode to a small counter actor; the driver polls it from a thread and
either redraws one line in place (a terminal) or prints a plain line at a bounded rate (CI, ``ray job
logs``), so a log never fills with pages of progress. Ray's own scheduler output is quieted unless
``--verbose`` (``quiet_ray``).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

#: seconds between two progress lines when stdout is not a terminal (override: STARKV_PROGRESS_INTERVAL_S)
DEFAULT_LINE_INTERVAL_S = 30.0
BAR_WIDTH = 24


class ProgressCounter:
    """Ray actor (no CPU) counting finished episodes and steps; actors call ``add`` fire-and-forget."""

    def __init__(self) -> None:
        self.episodes = 0
        self.steps = 0

    def add(self, episodes: int, steps: int) -> None:
        self.episodes += episodes
        self.steps += steps

    def snapshot(self) -> tuple[int, int]:
        return self.episodes, self.steps


@dataclass
class Progress:
    """A moment of the run: what is done, out of what, since when."""

    episodes: int
    total_episodes: int
    steps: int
    total_steps: int
    elapsed_s: float

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        rate = self.steps_per_s
        return (self.total_steps - self.steps) / rate if rate > 0 else None

    def text(self) -> str:
        eta = "?" if self.eta_s is None else _duration(self.eta_s)
        return (f"episodes {self.episodes}/{self.total_episodes} · steps {self.steps}/{self.total_steps} · "
                f"{self.steps_per_s:.2f} steps/s · elapsed {_duration(self.elapsed_s)} · ETA {eta}")

    def bar(self) -> str:
        frac = min(1.0, self.steps / self.total_steps) if self.total_steps else 1.0
        filled = int(round(frac * BAR_WIDTH))
        return f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {100 * frac:3.0f}% {self.text()}"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def line_interval_s() -> float:
    raw = os.environ.get("STARKV_PROGRESS_INTERVAL_S")
    if raw is None:
        return DEFAULT_LINE_INTERVAL_S
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"STARKV_PROGRESS_INTERVAL_S={raw!r}: expected seconds (a number)") from None
    if value <= 0:
        raise ValueError(f"STARKV_PROGRESS_INTERVAL_S={raw!r}: must be > 0")
    return value


class ProgressMonitor:
    """Polls ``snapshot()`` from a thread and shows it: a bar redrawn in place, or a line every interval."""

    def __init__(self, snapshot: Callable[[], tuple[int, int]], total_episodes: int, total_steps: int,
                 echo: Callable[[str], object] = print, tty: bool | None = None,
                 interval_s: float | None = None, poll_s: float = 0.5) -> None:
        self.snapshot = snapshot
        self.total_episodes = total_episodes
        self.total_steps = total_steps
        self.echo = echo
        self.tty = sys.stdout.isatty() if tty is None else tty
        self.interval_s = line_interval_s() if interval_s is None else interval_s
        self.poll_s = poll_s
        self.lines = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = 0.0
        self._last: tuple[int, int] = (0, 0)
        self._emitted: tuple[int, int] | None = None

    def current(self) -> Progress:
        episodes, steps = self._last
        return Progress(episodes, self.total_episodes, steps, self.total_steps, time.monotonic() - self._t0)

    def _poll(self) -> None:
        try:
            episodes, steps = self.snapshot()
            self._last = (int(episodes), int(steps))
        except Exception:  # noqa: BLE001 - progress is a view; a failed poll only skips a frame
            pass

    def _loop(self) -> None:
        next_line = time.monotonic() + self.interval_s
        while not self._stop.wait(self.poll_s if self.tty else min(self.poll_s * 4, self.interval_s)):
            self._poll()
            if self.tty:
                sys.stdout.write("\r" + self.current().bar())
                sys.stdout.flush()
            elif time.monotonic() >= next_line:
                self._emit()
                next_line = time.monotonic() + self.interval_s

    def _emit(self) -> None:
        self.echo(f"[starkv-eval] progress: {self.current().text()}")
        self.lines += 1
        self._emitted = self._last

    def __enter__(self) -> ProgressMonitor:
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name="starkv-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._poll()
        if self.tty:
            sys.stdout.write("\r" + self.current().bar() + "\n")
            sys.stdout.flush()
        elif self._emitted != self._last:  # the final count, unless the last line already said it
            self._emit()


def quiet_mlflow(verbose: bool) -> None:
    """MLflow's INFO lines (creating the sqlite tables) only with ``--verbose``."""
    if not verbose:
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
        logging.getLogger("alembic").setLevel(logging.WARNING)


def quiet_ray(verbose: bool) -> None:
    """Ray Data's own progress bars and scheduler lines off, its INFO logs hidden; warnings still shown."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    if verbose:
        return
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    # its one notice that progress bars are off is about the bars we replace, not a problem
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
