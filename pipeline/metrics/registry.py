"""Every per-step column declared once: its type, unit and default, and how it is summarised and judged.

A row of the Parquet store is one step of one unit. Its columns are ``COLUMNS`` in order: identity and
output columns first, then the metrics. A metric's declaration is the only place that says how it is
aggregated per unit (``summary``), in which direction it is good and how much it may move before the
nightly gate calls it a regression (``check``), whether a budget plot draws it (``plot``) and how the
terminal table shows it (``column``). The schema, ``summarize``, ``format_table``, the MLflow logging and
the plots read these declarations; a new metric is one ``register_metric(Metric(...))`` call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: how a metric's per-step values become one number per unit (over the unit's steps without an error,
#: except ``mean_all`` which counts failed steps too, as 0)
AGGREGATIONS: dict[str, Callable[[list[float]], float]] = {
    "mean": lambda v: float(sum(v) / len(v)) if v else 0.0,
    "mean_all": lambda v: float(sum(v) / len(v)) if v else 0.0,
    "max": lambda v: float(max(v, default=0)),
    "sum": lambda v: float(sum(v)),
    "count_true": lambda v: float(sum(1 for x in v if x)),
}
DTYPES = ("string", "int64", "float64", "bool")


@dataclass(frozen=True)
class Check:
    """How the regression gate judges a summary metric against a baseline.

    Parameters
    ----------
    name : str
        The tolerance key of a job's ``regression:`` section and of ``--tolerances`` files.
    summary : str
        The summary metric it compares.
    higher_is_better : bool
        Direction: a drop (True) or a rise (False) beyond the tolerance is a regression.
    relative : bool
        Tolerance as a fraction of the baseline (True) or in the metric's own units (False).
    tolerance : float or None
        Default tolerance; None turns the check off unless a job sets it.
    display : str
        How values print: ``fraction``, ``bytes``, ``per_s`` or ``count``.
    """

    name: str
    summary: str
    higher_is_better: bool
    relative: bool
    tolerance: float | None
    display: str = "fraction"


@dataclass(frozen=True)
class PlotSpec:
    """A budget plot of a summary metric: one line per compressor against the KV budget.

    Parameters
    ----------
    summary : str
        The summary metric on the y axis.
    filename : str
        PNG file name in the run's report folder.
    title : str
        Plot title.
    ylabel : str
        Y-axis label.
    scale : float
        Divides the values (e.g. bytes to MiB).
    """

    summary: str
    filename: str
    title: str
    ylabel: str
    scale: float = 1.0


@dataclass(frozen=True)
class TableColumn:
    """A column of the terminal summary table.

    Parameters
    ----------
    summary : str
        The summary metric it shows.
    title : str
        Column heading.
    scale : float
        Multiplies the value before printing (e.g. 1e3 for seconds to ms, 1/2**20 for bytes to MiB).
    fmt : str
        Format spec of the value (after scaling).
    order : float
        Position among the table's columns (lower first); new metrics go last by default.
    interval : bool
        Show the summary metric's 95 % interval (``<summary>_ci_low`` / ``_ci_high``) as ``[low, high]``.
    width : int
        Minimum width (the title plus two otherwise).
    """

    summary: str
    title: str
    scale: float = 1.0
    fmt: str = ".3f"
    order: float = 100.0
    interval: bool = False
    width: int = 0


@dataclass(frozen=True)
class Metric:
    """One per-step column and what follows from it.

    Parameters
    ----------
    name : str
        Column name in the rows.
    dtype : str
        Arrow type: ``string``, ``int64``, ``float64`` or ``bool``.
    default : Any
        Value of a fresh row (and of a failed step).
    unit : str
        Unit of the values (``bytes``, ``s``, ``tokens``, ``flop``, ``fraction``; empty for none).
    doc : str
        What it measures, one sentence.
    summary : dict
        Summary metric name -> aggregation (a key of ``AGGREGATIONS``); empty: not summarised.
    check : Check or None
        The regression gate's check of one of its summary metrics.
    plot : PlotSpec or None
        A budget plot of one of its summary metrics.
    columns : tuple of TableColumn
        Terminal table columns of its summary metrics.
    """

    name: str
    dtype: str
    default: Any = None
    unit: str = ""
    doc: str = ""
    summary: dict[str, str] = field(default_factory=dict)
    check: Check | None = None
    plot: PlotSpec | None = None
    columns: tuple[TableColumn, ...] = ()

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"metric {self.name}: dtype must be one of {DTYPES}, got {self.dtype!r}")
        bad = sorted(set(self.summary.values()) - set(AGGREGATIONS))
        if bad:
            raise ValueError(f"metric {self.name}: unknown aggregation {bad[0]!r}; known: {', '.join(AGGREGATIONS)}")

    def __hash__(self) -> int:
        return hash(self.name)


@dataclass(frozen=True)
class Derived:
    """A per-unit figure computed from several columns (or from the rows themselves), not one column's
    aggregate; it takes part in checks, plots and the table like a metric's summary.

    Parameters
    ----------
    name : str
        Summary metric name.
    compute : callable
        ``compute(ok_rows, all_rows) -> float``.
    check, plot, columns
        As in ``Metric``.
    """

    name: str
    compute: Callable[[list[dict[str, Any]], list[dict[str, Any]]], float]
    check: Check | None = None
    plot: PlotSpec | None = None
    columns: tuple[TableColumn, ...] = ()


MIB = 1024 * 1024
COLUMNS: list[Metric] = []
DERIVED: list[Derived] = []


def register_metric(metric: Metric) -> Metric:
    """Add a per-step column (appended to the row schema); its name must be new."""
    if any(m.name == metric.name for m in COLUMNS):
        raise ValueError(f"metric {metric.name!r} is already registered")
    COLUMNS.append(metric)
    return metric


def register_derived(derived: Derived) -> Derived:
    """Add a per-unit figure computed from the rows (see ``Derived``)."""
    if any(d.name == derived.name for d in DERIVED):
        raise ValueError(f"derived metric {derived.name!r} is already registered")
    DERIVED.append(derived)
    return derived


def metric(name: str) -> Metric:
    """The declaration of column ``name``."""
    for m in COLUMNS:
        if m.name == name:
            return m
    raise KeyError(f"unknown metric {name!r}")


def _steps_per_s(ok: list[dict[str, Any]], _all: list[dict[str, Any]]) -> float:
    model_s = sum(r["prefill_s"] + r["decode_s"] for r in ok)
    return (len(ok) / model_s) if model_s > 0 else 0.0


def _compress_flops_ratio(ok: list[dict[str, Any]], _all: list[dict[str, Any]]) -> float:
    prefill = sum(r.get("prefill_flops") or 0 for r in ok)  # rows from before the columns count as 0
    return sum(r.get("compress_flops") or 0 for r in ok) / prefill if prefill > 0 else 0.0


def _kv_ratio(ok: list[dict[str, Any]], _all: list[dict[str, Any]]) -> float:
    return sum(r["kv_bytes"] for r in ok) / max(1, sum(r["kv_bytes_full"] for r in ok))


STR, INT, FLT, BOOL = "string", "int64", "float64", "bool"
for _m in (
    # identity of the step and its unit
    Metric("run_id", STR, ""), Metric("benchmark", STR, ""), Metric("episode_id", STR, ""), Metric("step_index", INT, 0),
    Metric("compressor", STR, ""), Metric("budget", FLT, 0.0), Metric("model", STR, ""), Metric("unit_key", STR, ""),
    Metric("step_key", STR, ""),
    # what the model did and how it scored
    Metric("prediction", STR, ""), Metric("action_type", STR, ""), Metric("raw_output", STR, ""),
    Metric("correct", BOOL, False, "fraction", "the step's action is right (the benchmark's rule)",
           summary={"accuracy": "mean_all"},
           check=Check("accuracy", "accuracy", True, False, 0.02, "fraction"),
           plot=PlotSpec("accuracy", "accuracy_vs_budget.png", "Accuracy vs KV budget",
                          "accuracy (fraction of steps correct)"),
           columns=(TableColumn("accuracy", "accuracy", 1.0, ".3f", 30),
                    TableColumn("accuracy", "95% CI", 1.0, ".2f", 31, interval=True, width=15))),
    Metric("score", FLT, 0.0, "", "the benchmark's per-step score"),
    Metric("reason", STR, ""),
    Metric("prompt_tokens", INT, 0, "tokens", "tokens of the step's prompt", summary={"mean_prompt_tokens": "mean"}),
    Metric("kept_tokens", INT, 0, "tokens", "cache entries kept per layer and head, summed",
           summary={"mean_kept_tokens": "mean"}),
    Metric("generated_tokens", INT, 0, "tokens", "tokens the model generated"),
    Metric("num_images", INT, 0, "", "screenshots in the prompt"),
    Metric("kv_bytes", INT, 0, "bytes", "bytes of the compressed KV cache the decode holds",
           summary={"mean_kv_bytes": "mean"},
           check=Check("kv_bytes", "mean_kv_bytes", False, True, 0.02, "bytes"),
           plot=PlotSpec("mean_kv_bytes", "kv_memory_vs_budget.png", "Kept KV-cache memory vs KV budget",
                          "kept KV cache per step, mean (MiB)", MIB),
           columns=(TableColumn("mean_kv_bytes", "KV kept MiB", 1 / MIB, ".3f", 40),)),
    Metric("kv_bytes_full", INT, 0, "bytes", "bytes the uncompressed cache would hold",
           summary={"mean_kv_bytes_full": "mean"},
           columns=(TableColumn("mean_kv_bytes_full", "KV full MiB", 1 / MIB, ".3f", 50),)),
    Metric("peak_mem_bytes", INT, 0, "bytes", "device-level peak (CUDA allocator, or CPU RSS high-water mark)",
           summary={"mean_peak_mem_bytes": "mean", "max_peak_mem_bytes": "max"},
           check=Check("peak_memory", "max_peak_mem_bytes", False, True, 0.10, "bytes"),
           columns=(TableColumn("max_peak_mem_bytes", "RSS MiB", 1 / MIB, ".1f", 70),)),
    Metric("mem_device", STR, ""),
    Metric("prefill_s", FLT, 0.0, "s", "time of the prefill forward", summary={"mean_prefill_s": "mean"},
           columns=(TableColumn("mean_prefill_s", "prefill ms", 1e3, ".1f", 80),)),
    Metric("decode_s", FLT, 0.0, "s", "time of the decode", summary={"mean_decode_s": "mean"},
           columns=(TableColumn("mean_decode_s", "decode ms", 1e3, ".1f", 90),)),
    Metric("error", STR, None), Metric("meta_json", STR, "{}"), Metric("actor_pid", INT, 0),
    # exact accounting of live tensor storages (pipeline.memory.accounting); peak_mem_bytes above is the
    # device-level figure, labelled by mem_device
    Metric("weights_bytes", INT, 0, "bytes", "bytes of the model's weights", summary={"weights_bytes": "max"}),
    Metric("peak_above_weights_bytes", INT, 0, "bytes", "exact peak of live tensors above the weights",
           summary={"max_peak_above_weights_bytes": "max", "mean_peak_above_weights_bytes": "mean"},
           check=Check("peak_above_weights", "max_peak_above_weights_bytes", False, True, 0.0, "bytes"),
           columns=(TableColumn("max_peak_above_weights_bytes", "peak>W MiB", 1 / MIB, ".2f", 60),)),
    Metric("peak_prefill_bytes", INT, 0, "bytes", "exact peak above the weights during the prefill",
           summary={"max_peak_prefill_bytes": "max"}),
    Metric("peak_decode_bytes", INT, 0, "bytes", "exact peak above the weights during the decode",
           summary={"max_peak_decode_bytes": "max"}),
    Metric("peak_phase", STR, ""), Metric("peak_part", STR, ""), Metric("peak_breakdown_json", STR, "{}"),
    # shared sweeps (pipeline.step.sweep): prefill_s is then the one prefill the units shared, compress_s the
    # unit's own selection and gather (inside prefill_s when not shared), decode_s its own decode -- or, with
    # decode_shared, a decode several units shared: the batch its unit decoded in as one row
    # (pipeline.step.row_decode; its time and decode peak are the batch's) or the one decode of a
    # budget-free unit (full) the sweep ran at another budget
    Metric("compress_s", FLT, 0.0, "s", "time of the unit's own selection and gather"),
    Metric("prefill_shared", BOOL, False, "", "the step's prefill was shared by the sweep's units",
           summary={"shared_prefill_steps": "count_true"}),
    Metric("decode_shared", BOOL, False),
    # "exact", or "approx_chunked" for model.prefill_mode chunked_compress (an approximation)
    Metric("mode", STR, ""),
    # model calls the step took: 1, more when the model scrolled to other screenshots (pipeline.step.multicall)
    Metric("model_calls", INT, 0),
    # the unit's own exact peak above the weights, as its per-unit step has it: peak_above_weights_bytes on a
    # per-unit step; a shared sweep (whose rows carry the sweep's peak) replays each unit's step alone on
    # the last step of every episode (the longest prompt) and records it there, 0 on its other steps
    Metric("own_peak_above_weights_bytes", INT, 0, "bytes", "the unit's own exact peak above the weights",
           summary={"max_own_peak_above_weights_bytes": "max"},
           columns=(TableColumn("max_own_peak_above_weights_bytes", "own peak>W MiB", 1 / MIB, ".2f", 61),)),
    # floating-point operations counted with torch's flop counter (starkv.flops: matmuls, convolutions and fused
    # attention, 2 per multiply-add) when a job sets measure_flops; 0 when not counted. prefill_flops is the
    # model's own prefill forward (a shared sweep's one prefill), compress_flops the unit's selection and gather
    Metric("prefill_flops", INT, 0, "flop", "flops of the model's prefill forward",
           summary={"mean_prefill_flops": "mean"}),
    Metric("compress_flops", INT, 0, "flop", "flops of the unit's own selection and gather",
           summary={"mean_compress_flops": "mean"}),
):
    register_metric(_m)

register_derived(Derived("steps", lambda _ok, rows: float(len(rows)),
                         columns=(TableColumn("steps", "steps", 1.0, ".0f", 10),)))
register_derived(Derived("errors", lambda ok, rows: float(len(rows) - len(ok)),
                         check=Check("errors", "errors", False, False, 0, "count"),
                         columns=(TableColumn("errors", "err", 1.0, ".0f", 20),)))
register_derived(Derived("episodes", lambda _ok, rows: float(len({r["episode_id"] for r in rows}))))
register_derived(Derived("kv_ratio", _kv_ratio))
register_derived(Derived("steps_per_s", _steps_per_s,
                         check=Check("throughput", "steps_per_s", True, True, 0.30, "per_s")))
#: the selection's share of the prefill's compute: compress flops over the model's prefill flops, summed over steps
register_derived(Derived("compress_flops_ratio", _compress_flops_ratio))


# ------------------------------------------------------------------- what the consumers read, in their order

#: The order of a unit's summary metrics (``summarize``'s dict, so ``summary.json``) as it was before the
#: registry; summaries registered later follow in registration order (metrics, then derived figures).
SUMMARY_ORDER: tuple[str, ...] = (
    "steps", "errors", "episodes", "mean_peak_mem_bytes", "max_peak_mem_bytes", "max_peak_above_weights_bytes",
    "mean_peak_above_weights_bytes", "max_peak_prefill_bytes", "max_peak_decode_bytes", "weights_bytes",
    "mean_kv_bytes", "mean_kv_bytes_full", "kv_ratio", "mean_prompt_tokens", "mean_kept_tokens", "mean_prefill_s",
    "mean_decode_s", "steps_per_s", "shared_prefill_steps", "accuracy",
)
#: Summary metrics a benchmark's own ``aggregate()`` may state (its figure wins; the registry's only fills in).
BENCHMARK_FIRST: frozenset[str] = frozenset({"accuracy"})
#: The regression gate's order of checks (the rows of its table); checks registered later follow.
CHECK_ORDER: tuple[str, ...] = ("accuracy", "peak_memory", "peak_above_weights", "kv_bytes", "throughput", "errors")


def _ordered(items: list[tuple[str, Any]], order: tuple[str, ...]) -> list[tuple[str, Any]]:
    rank = {name: i for i, name in enumerate(order)}
    return sorted(items, key=lambda item: rank.get(item[0], len(rank)))  # stable: the rest keep their order


def summary_sources() -> list[tuple[str, Metric | Derived]]:
    """Every summary metric with what computes it (a ``Metric``: its ``summary[name]`` aggregation of its
    column; a ``Derived``: its ``compute``), in ``SUMMARY_ORDER`` then registration order."""
    items: list[tuple[str, Metric | Derived]] = [(name, m) for m in COLUMNS for name in m.summary]
    items += [(d.name, d) for d in DERIVED]
    return _ordered(items, SUMMARY_ORDER)


def checks() -> list[Check]:
    """Every declared regression check, in ``CHECK_ORDER`` then registration order."""
    found = [(c.name, c) for c in (*(m.check for m in COLUMNS), *(d.check for d in DERIVED)) if c is not None]
    return [c for _, c in _ordered(found, CHECK_ORDER)]


def table_columns() -> list[TableColumn]:
    """Every declared terminal-table column, by ``order`` (ties in registration order)."""
    cols = [c for owner in (*COLUMNS, *DERIVED) for c in owner.columns]
    return sorted(cols, key=lambda c: c.order)


def plot_specs() -> list[tuple[Metric | Derived, PlotSpec]]:
    """Every declared budget plot with its declaring metric, in registration order (metrics, then derived)."""
    return [(owner, owner.plot) for owner in (*COLUMNS, *DERIVED) if owner.plot is not None]


def summary_unit(name: str) -> str:
    """The unit of summary metric ``name`` (its column's; empty for derived figures and unknown names)."""
    for m in COLUMNS:
        if name in m.summary:
            return "" if m.summary[name] == "count_true" else m.unit
    return ""
