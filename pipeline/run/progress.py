"""One progress display for a run: episodes and steps done / total, steps/s and ETA.

Actors report each finished episode to a small counter actor; the driver polls it from a thread and
either redraws one line in place (a terminal) or prints a plain line at a bounded rate (CI, ``ray job
logs``), so a log never fills with pages of progress. Ray's own scheduler output is quieted unless
``--verbose`` (``quiet_ray``), and one false-alarm error line of Ray's C++ core is dropped
(``StderrLineFilter``).
"""

from __future__ import annotations

import logging
import os
import re
import select
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


class StderrLineFilter:
    """While open, the process's file descriptor 2 goes through a pipe and whole lines matching ``pattern``
    are dropped; everything else reaches the original stderr unchanged (partial lines within 0.2 s).

    Ray's C++ core writes its error-level lines straight to fd 2, past Python's ``sys.stderr`` and
    ``logging``, so only the descriptor can filter them. With ``once`` the original descriptor comes back
    as soon as one line was dropped (for a message Ray logs once per process). Not POSIX, or no fd 2: a
    no-op. ``dropped`` counts the dropped lines.
    """

    HOLD_S = 0.2  # how long an unfinished line may wait for its end before it is passed on as it is

    def __init__(self, pattern: re.Pattern[str], once: bool = True) -> None:
        self.pattern = pattern
        self.once = once
        self.dropped = 0
        self._saved: int | None = None
        self._read: int | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._restored = False

    def __enter__(self) -> StderrLineFilter:
        if os.name != "posix":
            return self
        _flush_stderr()
        try:
            saved = os.dup(2)
        except OSError:
            return self
        read, write = os.pipe()
        os.dup2(write, 2)
        os.close(write)
        self._saved, self._read = saved, read
        self._thread = threading.Thread(target=self._pump, name="starkv-stderr-filter", daemon=True)
        self._thread.start()
        return self

    def _restore(self) -> None:
        # no flush in here: the pump thread calls this, and a flush into the pipe would wait for the pump
        with self._lock:
            if self._saved is None or self._restored:
                return
            os.dup2(self._saved, 2)  # the pipe's last write end closes: the pump reads what is left, then EOF
            self._restored = True

    def _out(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self._saved, view):]
            except OSError:
                return  # the original stderr is gone; nothing left to show it on

    def _pump(self) -> None:
        pending = b""
        while True:
            ready, _, _ = select.select([self._read], [], [], self.HOLD_S)
            if not ready:
                if pending:
                    self._out(pending)
                    pending = b""
                continue
            chunk = os.read(self._read, 65536)
            if not chunk:
                break
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                if self.pattern.search(line.decode("utf-8", "replace")):
                    self.dropped += 1
                    if self.once:
                        self._restore()
                else:
                    self._out(line + b"\n")
        if pending:
            self._out(pending)

    def __exit__(self, *exc) -> None:
        if self._saved is None or self._thread is None:
            return
        _flush_stderr()
        self._restore()
        self._thread.join(timeout=5)
        if not self._thread.is_alive():  # else a child process still holds the pipe: leave its fds be
            os.close(self._read)
            os.close(self._saved)


def _flush_stderr() -> None:
    try:
        sys.stderr.flush()
    except (AttributeError, OSError, ValueError):
        pass


def ray_actor_args_notice(class_name: str) -> re.Pattern[str]:
    """Ray's error line (``core_worker.cc``, once per process) that an actor of Ray Data's pool for
    ``class_name`` (alone or fused after other operators) "has constructor arguments in the object store and
    max_restarts > 0" (ray-project/ray#53727).

    Ray 2.60 logs it whenever an actor with ``max_restarts != 0`` gets an argument by reference. Ray Data's
    actor pool always does: ``ActorPoolMapOperator._start_actor`` passes its own ``DataContext`` and map
    transformer as ``ray.put`` refs (``map_batches(fn_constructor_kwargs=...)`` travel inside the
    transformer), and it defaults to ``max_restarts=-1``. Even a map_batches with no constructor arguments
    prints it; only ``max_restarts=0`` avoids it, which would end the actor restarts this pipeline's fault
    tolerance relies on (docs/results-store.md). The refs are held by the operator while the dataset runs,
    pinned on the driver's node, so a restarted actor finds them: the line is a false alarm here.
    """
    return re.compile(r"\] core_worker\.cc:\d+: Actor with class name: 'MapWorker\((?:[^']*->)?MapBatches\("
                      + re.escape(class_name) + r"\)\)' and ID: '[0-9a-f]+' has constructor arguments in the "
                      r"object store and max_restarts > 0\.")
