"""Regression gate: compare two evaluations unit by unit against per-metric tolerances.

Each side is reduced to per (compressor, budget) metrics (``UnitSummary``), whatever it was given as:

* a **run folder** ``<output>/<run_id>/`` (``config.json`` + ``rows/``), its ``rows/`` folder or one of its
  Parquet files: the rows are summarised again with the benchmark's own ``aggregate()`` (the benchmark
  is rebuilt from ``config.json``, else from the Parquet metadata); when that is impossible (e.g. the
  dataset is not mounted here) the run's ``summary.json`` is used instead, with a warning;
* an **output folder** holding run folders: the only one, or with several the **newest** (latest
  modification time of its rows, ``summary.json`` or ``config.json``), which is printed;
* a **YAML (or JSON) file of expected values** ``{units: [{compressor, budget, accuracy, ...}]}``; metric
  keys are summary metric names (``accuracy``, ``mean_kv_bytes``, ``max_peak_mem_bytes``,
  ``steps_per_s``, ``errors``) or the check names below; a run's ``summary.json`` has this shape too;
* an **MLflow run**: the starkv run id (tag ``starkv.run_id``) or the MLflow id of the job's parent run;
  metrics are read from its child runs (one per unit).

Checks (tolerance keys, in a job's ``regression:`` section or a ``--tolerances`` file; ``null`` turns a
check off, e.g. CPU peak RSS and throughput, which are noisy on shared machines). Each is declared with
its metric in ``pipeline.metrics.registry`` (``Check``: direction, relative or absolute, default
tolerance, display); a metric registered with a check joins the gate. The built-in ones:

=============  ======================  =========================================================
key            summary metric          regression when
=============  ======================  =========================================================
accuracy       accuracy                current < baseline - tol (absolute, accuracy in [0, 1])
peak_memory    max_peak_mem_bytes      current > baseline * (1 + tol) (relative increase)
peak_above_    max_peak_above_weights_ current > baseline * (1 + tol); exact live tensor bytes above the
weights        bytes                   weights (deterministic on CPU, so tolerance 0 works there)
kv_bytes       mean_kv_bytes           current > baseline * (1 + tol) (relative increase)
throughput     steps_per_s             current < baseline * (1 - tol) (relative drop)
errors         errors                  current > baseline + tol (absolute count of failed steps)
=============  ======================  =========================================================

A change beyond the tolerance in the good direction is reported as ``IMPROVED``. A unit of the baseline
missing from the current run is a regression (``MISSING``); a unit only in the current run is ``NEW``.
A metric absent from the baseline (e.g. an expected-values file giving only accuracy) is not compared.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.metrics import registry
from pipeline.metrics.units import unit_label
from pipeline.results.summary import UnitSummary

MIB = 1024 * 1024
EPS = 1e-9  # a change exactly at the tolerance is OK despite float rounding


class RegressionInputError(ValueError):
    """An input that cannot be compared (missing path, unreadable run, bad tolerances): exit code 2."""


@dataclass(frozen=True)
class Check:
    name: str
    metric: str
    higher_is_better: bool
    relative: bool
    unit: str  # how values are shown: "fraction", "bytes", "per_s", "count"


def _checks() -> tuple[Check, ...]:
    return tuple(Check(c.name, c.summary, c.higher_is_better, c.relative, c.display) for c in registry.checks())


class _Live(Mapping):
    """A read-only mapping recomputed from the metric registry on every use, so a metric registered after
    this module was imported (a plugin) takes part in the gate."""

    def __init__(self, build: Callable[[], dict[str, Any]]) -> None:
        self._build = build

    def __getitem__(self, key: str) -> Any:
        return self._build()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._build())

    def __len__(self) -> int:
        return len(self._build())

    def __repr__(self) -> str:
        return repr(self._build())


class _LiveChecks(Sequence):
    """The registry's checks as a sequence recomputed on every use (see ``_Live``)."""

    def __getitem__(self, index):
        return _checks()[index]

    def __iter__(self) -> Iterator[Check]:
        return iter(_checks())

    def __len__(self) -> int:
        return len(_checks())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and tuple(self) == tuple(other)

    __hash__ = None

    def __repr__(self) -> str:
        return repr(_checks())


#: Every check the metric registry declares (``Metric.check`` / ``Derived.check``), in the gate's order.
CHECKS: Sequence[Check] = _LiveChecks()
CHECK_BY_NAME: Mapping[str, Check] = _Live(lambda: {c.name: c for c in _checks()})
#: Defaults when neither ``--tolerances`` nor the job's ``regression:`` section sets a check: each declared
#: check's ``tolerance``.
DEFAULT_TOLERANCES: Mapping[str, float | None] = _Live(lambda: {c.name: c.tolerance for c in registry.checks()})
#: Metric names accepted in expected-values files besides the summary metric names.
ALIASES: Mapping[str, str] = _Live(lambda: {c.name: c.metric for c in _checks()})

OK, REGRESSION, IMPROVED, SKIPPED, MISSING, NEW = "OK", "REGRESSION", "IMPROVED", "SKIPPED", "MISSING", "NEW"
#: the sample cannot tell a change as large as the tolerance from noise (its interval is wider): reported,
#: never passed silently, not failing the gate by itself
TOO_SMALL = "TOO_SMALL"
FAILING = (REGRESSION, MISSING)


# ----------------------------------------------------------------------------------------- tolerances

def parse_tolerances(data: Any, where: str = "tolerances") -> dict[str, float | None]:
    """Validate a tolerance mapping (also accepts a whole job YAML: its ``regression:`` section is used)."""
    if data is None:
        return {}
    if isinstance(data, dict) and ("regression" in data or "tolerances" in data):
        data = data.get("regression", data.get("tolerances")) or {}
    if not isinstance(data, dict):
        raise RegressionInputError(f"{where}: expected a mapping of check -> tolerance, got {type(data).__name__}")
    out: dict[str, float | None] = {}
    for key, value in data.items():
        if key not in CHECK_BY_NAME:
            raise RegressionInputError(f"{where}: unknown check {key!r}; known: {', '.join(CHECK_BY_NAME)}")
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", "off")):
            out[key] = None
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or math.isnan(value):
            raise RegressionInputError(f"{where}.{key}: expected a number >= 0 or null, got {value!r}")
        out[key] = float(value)
    return out


def resolve_tolerances(override: dict[str, float | None] | None,
                       config_section: dict[str, Any] | None) -> dict[str, float | None]:
    """``--tolerances`` if given, else the current run's ``regression:`` section, each over the defaults."""
    chosen = override if override is not None else parse_tolerances(config_section or {}, "regression")
    return {**DEFAULT_TOLERANCES, **chosen}


def load_tolerances(path: str | os.PathLike) -> dict[str, float | None]:
    path = Path(path)
    if not path.is_file():
        raise RegressionInputError(f"tolerances file not found: {path}")
    try:
        return parse_tolerances(yaml.safe_load(path.read_text()), str(path))
    except yaml.YAMLError as err:
        raise RegressionInputError(f"{path}: not valid YAML: {err}") from None


# ----------------------------------------------------------------------------------------- comparison

@dataclass
class Comparison:
    """One line of the regression table."""

    unit: str
    check: str
    metric: str
    baseline: float | None
    current: float | None
    delta: float | None  # current - baseline; relative (fraction of baseline) for relative checks
    tolerance: float | None
    status: str
    relative: bool = False
    #: the change's 95 % interval (current - baseline) and how it was tested, where the check has samples
    ci_low: float | None = None
    ci_high: float | None = None
    p_value: float | None = None
    test: str = ""


def judge(check: Check, baseline: float, current: float, tolerance: float | None) -> tuple[float, str]:
    """Delta (relative or absolute, as the check is defined) and the status for one metric of one unit."""
    change = current - baseline
    if check.relative:
        if baseline != 0:
            delta = change / abs(baseline)
        else:
            delta = 0.0 if change == 0 else math.copysign(math.inf, change)
    else:
        delta = change
    if tolerance is None:
        return delta, SKIPPED
    gain = delta if check.higher_is_better else -delta
    if gain < -tolerance - EPS:
        return delta, REGRESSION
    if gain > tolerance + EPS:
        return delta, IMPROVED
    return delta, OK


def judge_noise(check: Check, delta: float, interval: tuple[float, float], tolerance: float | None,
                significant: bool) -> str:
    """The status of an absolute check with an interval for its change: a change beyond the tolerance counts
    only when it is significant; an interval wider than the tolerance (half-width) cannot show a change of
    that size, and says so."""
    if tolerance is None:
        return SKIPPED
    gain = delta if check.higher_is_better else -delta
    if significant and gain < -tolerance - EPS:
        return REGRESSION
    if significant and gain > tolerance + EPS:
        return IMPROVED
    if (interval[1] - interval[0]) / 2 > tolerance + EPS:
        return TOO_SMALL
    return OK


#: per unit label: (baseline rows, current rows) of its steps, for the checks that test noise
Samples = dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]]


def _noise_test(check: Check, base_s: UnitSummary, cur_s: UnitSummary, sample: tuple | None):
    """(interval, p-value or None, test name, significant) of ``check``'s change, or None when it has no
    interval: paired on the same steps, unpaired on different steps, or from the summaries' intervals."""
    from pipeline.results.stats import paired_difference, step_correct, unpaired_difference

    if check.metric != "accuracy" or check.relative:
        return None
    if sample is not None and sample[0] and sample[1]:
        base_rows, cur_rows = sample
        key = lambda r: (r["episode_id"], r["step_index"])  # noqa: E731
        if len({r["episode_id"] for r in (*base_rows, *cur_rows)}) < 2:  # one episode: nothing to resample
            return (-math.inf, math.inf), None, "one episode", False
        if {key(r) for r in base_rows} == {key(r) for r in cur_rows}:
            paired = paired_difference(cur_rows, base_rows, value=step_correct)
            d = paired.difference
            return (d.low, d.high), paired.p_value, "paired", paired.significant
        d = unpaired_difference(cur_rows, base_rows, value=step_correct)
        return (d.low, d.high), None, "unpaired", d.low > 0 or d.high < 0
    lows = [s.metrics.get(f"{check.metric}_ci_low") for s in (base_s, cur_s)]
    highs = [s.metrics.get(f"{check.metric}_ci_high") for s in (base_s, cur_s)]
    if None in lows or None in highs:
        return None
    half = math.sqrt(sum(((h - lo) / 2) ** 2 for lo, h in zip(lows, highs)))
    delta = cur_s.metrics[check.metric] - base_s.metrics[check.metric]
    return (delta - half, delta + half), None, "intervals", abs(delta) > half


def compare(baseline: list[UnitSummary], current: list[UnitSummary],
            tolerances: dict[str, float | None], samples: Samples | None = None) -> list[Comparison]:
    """Every check of every unit, units in (compressor, budget) order; see the module docstring.

    With ``samples`` (or summaries carrying intervals) the accuracy check knows noise: a drop beyond the
    tolerance is a regression only when it is significant (``judge_noise``)."""
    tol = {**DEFAULT_TOLERANCES, **tolerances}
    checks = _checks()
    base = {(s.compressor, float(s.budget)): s for s in baseline}
    cur = {(s.compressor, float(s.budget)): s for s in current}
    rows: list[Comparison] = []
    for key in sorted(set(base) | set(cur)):
        label = unit_label(*key)
        if key not in cur:
            rows.append(Comparison(label, "unit", "", None, None, None, None, MISSING))
            continue
        if key not in base:
            rows.append(Comparison(label, "unit", "", None, None, None, None, NEW))
            continue
        for check in checks:
            b = base[key].metrics.get(check.metric)
            if b is None:
                continue  # the baseline does not state this metric: nothing to hold the run to
            c = cur[key].metrics.get(check.metric)
            t = tol.get(check.name)
            if c is None:
                status = SKIPPED if t is None else MISSING
                rows.append(Comparison(label, check.name, check.metric, float(b), None, None, t, status, check.relative))
                continue
            delta, status = judge(check, float(b), float(c), t)
            noise = _noise_test(check, base[key], cur[key], (samples or {}).get(label))
            if noise is None:
                rows.append(Comparison(label, check.name, check.metric, float(b), float(c), delta, t, status,
                                       check.relative))
                continue
            interval, p_value, test, significant = noise
            status = judge_noise(check, delta, interval, t, significant)
            rows.append(Comparison(label, check.name, check.metric, float(b), float(c), delta, t, status,
                                   check.relative, interval[0], interval[1], p_value, test))
    return rows


def size_mismatches(baseline: list[UnitSummary], current: list[UnitSummary]) -> list[str]:
    """Units whose step counts differ (a partial or differently sized run is not like for like)."""
    cur = {s.key: s for s in current}
    out = []
    for b in baseline:
        c = cur.get(b.key)
        nb, nc = b.metrics.get("steps"), c.metrics.get("steps") if c else None
        if nb is not None and nc is not None and nb != nc:
            out.append(f"{b.key}: {nc:g} steps in the current run vs {nb:g} in the baseline (partial run or "
                       "different data?)")
    return out


@dataclass
class RegressionReport:
    baseline: str
    current: str
    tolerances: dict[str, float | None]
    rows: list[Comparison] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def regressions(self) -> list[Comparison]:
        return [r for r in self.rows if r.status in FAILING]

    @property
    def improvements(self) -> list[Comparison]:
        return [r for r in self.rows if r.status == IMPROVED]

    def to_dict(self) -> dict[str, Any]:
        return {"baseline": self.baseline, "current": self.current, "tolerances": self.tolerances,
                "regressions": len(self.regressions), "improvements": len(self.improvements),
                "notes": self.notes, "rows": [_jsonable(asdict(r)) for r in self.rows]}

    def format_table(self) -> str:
        noise = any(r.ci_low is not None for r in self.rows)
        head = ("unit", "metric", "baseline", "current", "delta", "tolerance", *(("95% CI", "test") if noise else ()),
                "status")
        body = [(r.unit, r.check, _value(r.check, r.baseline), _value(r.check, r.current), _delta(r), _tolerance(r),
                 *((_interval(r), _test(r)) if noise else ()), r.status) for r in self.rows]
        widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
        last = len(head) - 1
        fmt = "  ".join(f"{{:<{w}}}" if i < 2 or i == last or (noise and i == last - 1) else f"{{:>{w}}}"
                        for i, w in enumerate(widths))
        lines = [f"baseline: {self.baseline}", f"current:  {self.current}", "",
                 fmt.format(*head).rstrip(), "  ".join("-" * w for w in widths)]
        lines += [fmt.format(*row).rstrip() for row in body]
        lines.append("")
        lines += [f"note: {n}" for n in self.notes]
        small = [r for r in self.rows if r.status == TOO_SMALL]
        if small:
            lines.append(f"note: {len(small)} check(s) TOO_SMALL: the sample's 95% interval is wider than the "
                         "tolerance, so a change of that size cannot be told from noise (more episodes needed): "
                         + ", ".join(f"{r.unit} {r.check}" for r in small))
        n = len(self.regressions)
        lines.append(f"{n} regression(s), {len(self.improvements)} improvement(s) in {len(self.rows)} comparisons"
                     + (": " + ", ".join(f"{r.unit} {r.check}" for r in self.regressions) if n else ""))
        return "\n".join(lines)


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def _value(check: str, v: float | None) -> str:
    if v is None:
        return "-"
    kind = CHECK_BY_NAME[check].unit if check in CHECK_BY_NAME else ""
    if kind == "bytes":
        return f"{v / MIB:.3f} MiB"
    if kind == "per_s":
        return f"{v:.3f}/s"
    if kind == "count":
        return f"{v:g}"
    return f"{v:.3f}"


def _delta(r: Comparison) -> str:
    if r.delta is None:
        return "-"
    if r.relative:
        return f"{r.delta * 100:+.1f}%" if math.isfinite(r.delta) else ("+inf" if r.delta > 0 else "-inf")
    counted = r.check in CHECK_BY_NAME and CHECK_BY_NAME[r.check].unit == "count"
    return f"{r.delta:+g}" if counted else f"{r.delta:+.3f}"


def _interval(r: Comparison) -> str:
    if r.ci_low is None:
        return "-"
    return "unknown" if not math.isfinite(r.ci_high - r.ci_low) else f"[{r.ci_low:+.3f}, {r.ci_high:+.3f}]"


def _test(r: Comparison) -> str:
    if not r.test:
        return "-"
    return f"{r.test} p={r.p_value:.2g}" if r.p_value is not None else r.test


def _tolerance(r: Comparison) -> str:
    if r.check == "unit":
        return "-"
    if r.tolerance is None:
        return "off"
    return f"{r.tolerance * 100:g}%" if r.relative else f"{r.tolerance:g}"
