"""The benchmark interface: episodes in, per-step scores out, the official aggregate at the end."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from pipeline.agent.actions import ParsedAction

BENCHMARKS: dict[str, type[Benchmark]] = {}
# Scoring protocols: ``official`` = the dataset authors' evaluation (default); ``reference`` = the rules of
# the STaR-KV / GUI-KV evaluation drivers behind the published tables (docs/benchmarks/parity.md).
PROTOCOLS = ("official", "reference")


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


def check_protocol(cls: type[Benchmark], value: Any) -> str:
    """The ``protocol`` option of ``cls`` (default ``official``); ValueError naming the option otherwise."""
    if value is None:
        return "official"
    if not isinstance(value, str) or value not in cls.protocols:
        raise ValueError(f"{cls.name}: option protocol must be one of {', '.join(cls.protocols)}, not {value!r}")
    return value


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


def row_meta(row: dict[str, Any]) -> dict[str, Any]:
    """The Step.meta of a result row: ``meta`` (a dict) or, in Parquet rows, ``meta_json``."""
    return row_dict(row, "meta")


def row_fields(row: dict[str, Any]) -> dict[str, Any]:
    """The StepScore.fields of a result row: ``meta_json["score_fields"]`` (how ``pipeline.step.engine``
    stores them), else ``fields`` / ``fields_json``, else the row itself (fields flattened into it)."""
    fields = row_meta(row).get("score_fields")
    if isinstance(fields, dict):
        return fields
    fields = row_dict(row, "fields")
    return fields if fields else row


def row_dict(row: dict[str, Any], name: str) -> dict[str, Any]:
    """A dict column of a result row: ``name`` as a dict, or ``<name>_json`` text as stored in Parquet."""
    value = row.get(name)
    if isinstance(value, dict):
        return value
    text = row.get(f"{name}_json")
    if isinstance(text, str) and text:
        try:
            value = json.loads(text)
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}
    return {}


def row_value(row: dict[str, Any], key: str) -> Any:
    """A value from a result row, wherever the runner put it: the row itself, ``fields`` /
    ``fields_json`` (StepScore.fields), ``meta`` / ``meta_json`` and its ``score_fields`` entry."""
    if key in row:
        return row[key]
    for name in ("fields", "meta"):
        d = row_dict(row, name)
        nested = d.get("score_fields")
        if isinstance(nested, dict) and key in nested:
            return nested[key]
        if key in d:
            return d[key]
    return None


class Benchmark(ABC):
    """A GUI benchmark: load episodes from its real on-disk format, score actions, aggregate officially.

    ``prompt_kind`` selects the UI-TARS template (a kind of ``pipeline.agent.prompts.KINDS``). The
    ``default_*`` attributes are the agent protocol the reference drivers use on this benchmark; they fill
    every ``agent`` field a job leaves unset (``AgentConfig.resolved``): ``default_prompt_family``
    (``box`` | ``point``; GUI-KV / STaR-KV use ``point`` with UI-TARS-1.5-7B), ``default_history_source``
    (``ground_truth`` = teacher-forced texts, ``model`` = the model's own earlier outputs),
    ``default_image_slots`` (screenshots per prompt, current included). ``history_header`` is how a past
    step's text is written in its assistant turn (``step``: ``"Step k:\n<text>"``; ``gui_kv``: GUI-KV's
    AgentNetBench double header ``"# Step k:\nStep k:\n<text>"``); ``system_prompt`` the system turn.
    ``protocols`` lists the scoring protocols option ``protocol`` may name (``PROTOCOLS``); ``self.protocol``
    is the chosen one.
    """

    name: ClassVar[str] = "base"
    prompt_kind: ClassVar[str] = "grounding"
    default_prompt_family: ClassVar[str] = "box"
    default_history_source: ClassVar[str] = "ground_truth"
    default_image_slots: ClassVar[int] = 5
    history_header: ClassVar[str] = "step"
    #: aggregate() figures that are means over steps and get a 95 % interval in the summary
    interval_metrics: ClassVar[tuple[str, ...]] = ("accuracy",)
    system_prompt: ClassVar[str | None] = "You are a helpful assistant."
    protocols: ClassVar[tuple[str, ...]] = ("official",)  # the values option ``protocol`` accepts

    def __init__(self, path: str, **options: Any) -> None:
        self.path = path
        self.options = options
        self.protocol = check_protocol(type(self), options.get("protocol"))

    @abstractmethod
    def load(self) -> Iterable[Episode]:
        """Episodes in a stable order; raise ``BenchmarkDataError`` if the path holds no such benchmark."""

    @abstractmethod
    def score(self, step: Step, action: ParsedAction, image_size: tuple[int, int]) -> StepScore:
        """Score one action against the step's ground truth; never raises on a bad action."""

    @classmethod
    def prompt_goal(cls, episode: Episode, step: Step) -> str | None:
        """The episode goal a step's prompt shows beside its instruction (None: the template has no such
        slot, or the instruction is the goal)."""
        return None

    def aggregate(self, rows: list[dict[str, Any]]) -> dict[str, float]:
        """Official summary metrics from per-step rows (default: accuracy over all rows, errors count wrong)."""
        if not rows:
            return {"accuracy": 0.0, "num_steps": 0.0}
        acc = sum(1.0 for r in rows if r.get("correct") and not r.get("error")) / len(rows)
        return {"accuracy": acc, "num_steps": float(len(rows))}


# The GUI-KV / STaR-KV drivers' system turn (trailing space included) where they send one.
DRIVER_SYSTEM_PROMPT = "You are a helpful assistant. "


class DriverBenchmark(Benchmark):
    """A benchmark the STaR-KV / GUI-KV reference driver also runs: its point-family prompts by default
    (``*_DOUBAO``, what the driver sends UI-TARS-1.5-7B) and option ``protocol`` ``official`` |
    ``reference`` (the driver's own scoring rules, docs/benchmarks/parity.md)."""

    default_prompt_family = "point"
    protocols = PROTOCOLS
