"""The benchmark interface: episodes in, per-step scores out, the official aggregate at the end."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from pipeline.agent.actions import ParsedAction

BENCHMARKS: dict[str, type[Benchmark]] = {}


def register_benchmark(name: str):
    def wrap(cls: type[Benchmark]) -> type[Benchmark]:
        cls.name = name
        BENCHMARKS[name] = cls
        return cls

    return wrap


def get_benchmark(name: str) -> type[Benchmark]:
    import pipeline.benchmarks  # noqa: F401  (registers the built-in benchmarks)

    if name not in BENCHMARKS:
        raise KeyError(f"unknown benchmark {name!r}; registered: {', '.join(sorted(BENCHMARKS))}")
    return BENCHMARKS[name]


class BenchmarkDataError(ValueError):
    """A benchmark path that does not exist or holds no recognisable data (fails before any work)."""


@dataclass
class Step:
    """One scored unit: a screenshot, what to do, and the ground truth.

    ``image_path`` is an absolute path or fsspec URL. ``target`` holds the benchmark's ground truth
    (e.g. ``{"bbox": [x1, y1, x2, y2]}`` in original pixels, or an action dict). ``history_text`` is the
    ground-truth description of this step used when later steps are teacher-forced. ``error`` is set by
    the loader when the annotation is unusable; the step is then reported as an error row, not run.
    """

    step_index: int
    image_path: str
    instruction: str = ""
    target: dict[str, Any] = field(default_factory=dict)
    history_text: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass
class Episode:
    """A sequence of steps that share agent history and compressor state (a single step for grounding)."""

    episode_id: str
    benchmark: str
    goal: str = ""
    steps: list[Step] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def to_row(self) -> dict[str, Any]:
        """A flat, Arrow-friendly row for a Ray Data dataset (the episode travels as JSON)."""
        return {"episode_id": self.episode_id, "benchmark": self.benchmark, "num_steps": len(self.steps),
                "episode_json": json.dumps(asdict(self))}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Episode:
        data = json.loads(row["episode_json"])
        data["steps"] = [Step(**s) for s in data["steps"]]
        return cls(**data)


@dataclass
class StepScore:
    """How one predicted action scored: ``correct`` (0/1 success), ``score`` (soft score), extra fields."""

    correct: bool
    score: float
    reason: str = ""
    fields: dict[str, Any] = field(default_factory=dict)


class Benchmark(ABC):
    """A GUI benchmark: load episodes from its real on-disk format, score actions, aggregate officially.

    ``prompt_kind`` selects the UI-TARS template (``grounding``, ``computer`` or ``mobile``).
    """

    name: ClassVar[str] = "base"
    prompt_kind: ClassVar[str] = "grounding"

    def __init__(self, path: str, **options: Any) -> None:
        self.path = path
        self.options = options

    @abstractmethod
    def load(self) -> Iterable[Episode]:
        """Episodes in a stable order; raise ``BenchmarkDataError`` if the path holds no such benchmark."""

    @abstractmethod
    def score(self, step: Step, action: ParsedAction, image_size: tuple[int, int]) -> StepScore:
        """Score one action against the step's ground truth; never raises on a bad action."""

    def aggregate(self, rows: list[dict[str, Any]]) -> dict[str, float]:
        """Official summary metrics from per-step rows (default: accuracy over rows without error)."""
        scored = [r for r in rows]
        if not scored:
            return {"accuracy": 0.0, "num_steps": 0.0}
        acc = sum(1.0 for r in scored if r.get("correct")) / len(scored)
        return {"accuracy": acc, "num_steps": float(len(scored))}
