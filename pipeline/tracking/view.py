"""What a person reads in the MLflow UI: readable metrics, run notes, readable params, headline numbers.

Kept apart from ``tracking`` (which only talks to the store). A metric registered in
``pipeline.metrics.registry`` needs no line here: every summary metric is logged on the unit's child run
(``child_metrics``) and a byte count gets its ``*_mib`` twin automatically; ``HEADLINE`` is the curated
choice of what the notes and the parent run show per unit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeline.metrics.registry import summary_unit
from pipeline.results.summary import UnitSummary

MIB = 1024 * 1024

#: experiment tag the MLflow 3 UI reads to choose its layout; this value opens on the Runs table
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
#: run tags the UI reads: the run's description (markdown) and its colour in tables and charts
NOTE_TAG = "mlflow.note.content"
COLOUR_TAG = "mlflow.runColor"
#: URL parameter and experiment-tag prefix of MLflow's shared views; each job's view is one such tag
VIEW_PARAM = "viewStateShareKey"
SHARED_VIEW_TAG_PREFIX = "mlflow.sharedViewState."

#: ``starkv.kind`` of the run that draws one compressor over the budgets (metrics logged at step = budget)
COMPRESSOR_KIND = "compressor"
#: the Runs-table columns the link opens with (metric names of the unit runs, in this order)
#: Peak memory is the unit's own exact peak above the weights (a shared sweep replays each unit alone for it);
#: the device-level figure (process RSS on CPU) is logged as ``max_peak_mem_mib`` but never called peak memory.
PEAK = "max_own_peak_above_weights_mib"
TABLE_COLUMNS: tuple[str, ...] = ("accuracy", "accuracy_ci_low", "accuracy_ci_high", "kv_ratio_pct", PEAK,
                                  "mean_prefill_ms", "mean_decode_ms")
#: metrics of a compressor run, one point per budget (``BUDGET_CHARTS`` are drawn by default)
BUDGET_METRICS: tuple[str, ...] = ("accuracy", "accuracy_ci_low", "accuracy_ci_high", PEAK, "kv_ratio_pct",
                                   "mean_kv_mib", "mean_prefill_ms", "mean_decode_ms", "steps_per_s", "budget_pct")
#: the line charts the link's chart view shows: each metric over ``budget_pct``, one line per compressor run (the
#: UI titles a chart with its metric name)
BUDGET_CHARTS: tuple[str, ...] = ("accuracy", PEAK, "kv_ratio_pct", "accuracy_ci_low",
                                  "accuracy_ci_high", "mean_prefill_ms", "mean_decode_ms")


@dataclass(frozen=True)
class Headline:
    """One headline number: the (readable) metric, its column title, and how to print it."""

    metric: str
    title: str
    fmt: Callable[[float], str]


HEADLINE: tuple[Headline, ...] = (
    Headline("accuracy", "accuracy", lambda v: f"{v:.3f}"),
    Headline(PEAK, "peak memory above weights", lambda v: f"{v:,.2f} MiB"),
    Headline("mean_kv_mib", "KV kept / step", lambda v: f"{v:,.3f} MiB"),
    Headline("mean_kv_full_mib", "KV full / step", lambda v: f"{v:,.3f} MiB"),
    Headline("kv_ratio_pct", "KV kept of full", lambda v: f"{v:.1f} %"),
    Headline("steps_per_s", "steps/s", lambda v: f"{v:.2f}"),
    Headline("max_peak_mem_mib", "process RSS (CPU) or device peak (GPU)", lambda v: f"{v:,.0f} MiB"),
)


def runs_page(experiment_id: str | None, run_id: str | None = None, base: str = "http://127.0.0.1:5000") -> str:
    """The experiment's Runs table in the MLflow UI; with ``run_id``, in the job's view (``view_state``).

    MLflow 3.17's UI picks its GenAI or model-training layout from the ``workflowType`` URL parameter (else
    the browser's last choice, GenAI at first), not from the experiment kind; this link asks for the
    model-training layout. ``viewStateShareKey`` names the experiment tag (``view_tag``) whose JSON the UI
    loads as the page's filter, columns and charts, as for a view shared with its own "Share" button.
    """
    page = f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
    return f"{page}&{VIEW_PARAM}={view_key(run_id)}" if run_id else page


def view_key(run_id: str) -> str:
    """``starkv-<run id>``: the job's shared-view key, only URL-safe characters."""
    return "starkv-" + "".join(c if c.isalnum() or c in "-_" else "_" for c in run_id)


def view_tag(run_id: str) -> str:
    """The experiment tag holding the job's view (``mlflow.sharedViewState.<key>``)."""
    return f"{SHARED_VIEW_TAG_PREFIX}{view_key(run_id)}"


def budget_text(budget: float) -> str:
    return f"{budget:g}%"


def readable_twin(key: str, value: float) -> tuple[str, float] | None:
    """The human-unit twin of a raw figure (``mean_kv_bytes`` -> ``mean_kv_mib``, ``mean_prefill_s`` ->
    ``mean_prefill_ms``, ``*_flops`` -> ``*_gflop``), or None for a figure already in human units.

    A byte count is a metric named ``*_bytes*`` or a summary whose registered column counts bytes
    (``pipeline.metrics.registry``); its twin drops ``_bytes`` and ends in ``_mib``.
    """
    if "_bytes" in key:
        return key.replace("_bytes", "") + "_mib", float(value) / MIB  # mean_kv_bytes_full -> mean_kv_full_mib
    unit = summary_unit(key)
    if unit == "bytes":
        return key + "_mib", float(value) / MIB
    if unit == "s" and key.endswith("_s"):
        return key[:-2] + "_ms", 1e3 * float(value)
    if unit == "flop" and key.endswith("_flops"):
        return key[:-6] + "_gflop", float(value) / 1e9
    return None


def readable_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """The unit's metrics plus the ``readable_twin`` of each raw figure and the KV ratio in percent."""
    out = dict(metrics)
    for key, value in metrics.items():
        twin = readable_twin(key, value)
        if twin is not None:
            out[twin[0]] = twin[1]
    if "kv_ratio" in metrics:
        out["kv_ratio_pct"] = 100.0 * float(metrics["kv_ratio"])
    return out


def budget_step(budget: float) -> int:
    """The metric step of a budget on a compressor run: the budget in whole percent (MLflow steps are integers;
    ``budget_pct`` at the same step keeps the exact value)."""
    return int(round(float(budget)))


def compressor_points(summaries: list[UnitSummary]) -> dict[str, dict[str, dict[int, float]]]:
    """Per compressor, per metric of ``BUDGET_METRICS``: ``{step: value}``, one point per budget.

    Budgets that share a whole percent cannot share a step; the first (in ``summaries`` order) keeps it.
    """
    out: dict[str, dict[str, dict[int, float]]] = {}
    for s in summaries:
        values = child_metrics(s)
        per_metric = out.setdefault(s.compressor, {})
        for key in BUDGET_METRICS:
            if key in values:
                per_metric.setdefault(key, {}).setdefault(budget_step(s.budget), float(values[key]))
    return out


def compressor_note(label: str, job: dict[str, Any], points: dict[str, dict[int, float]]) -> str:
    """A compressor run's description: what its lines are and where the per-budget runs are."""
    budgets = ", ".join(f"{b}%" for b in sorted(points.get("budget_pct", {})))
    return "\n".join([
        f"### {label} over the KV budgets",
        f"Each metric is logged once per budget with step = budget in percent ({budgets}), so MLflow's chart "
        "view draws it as a line over the budget, one line per compressor.",
        "",
        _job_line(job),
        "The per-budget runs (`<compressor>@<budget>%`) hold the step rows and the full set of metrics.",
    ])


def view_state(run_id: str) -> dict[str, Any]:
    """The experiment page's view (MLflow 3.17 ``ExperimentPageUIState`` + search facets) the job's link opens.

    Filter: the job's runs (its parent with the units folded under it, and its compressor runs). Columns:
    ``TABLE_COLUMNS`` in this order (Dataset, Source, Models, empty for these runs, left out). Charts: one line
    chart per ``BUDGET_CHARTS`` entry in a section kept first, x = ``budget_pct`` (points paired by step), every
    run shown. Only
    keys MLflow's shared-view loader reads are set; the rest take the UI's defaults.
    """
    section = "starkv-budget-section"
    charts = [{"uuid": f"starkv-chart-{key}", "type": "LINE", "runsCountToCompare": 10, "metricSectionId": section,
               "deleted": False, "isGenerated": False, "metricKey": key,
               "selectedMetricKeys": [key], "lineSmoothness": 0, "xAxisScaleType": "linear", "scaleType": "linear",
               "range": {}, "xAxisKey": "metric", "selectedXAxisMetricKey": "budget_pct", "displayPoints": True,
               "yAxisKey": "metric", "yAxisExpressions": [], "ignoreOutliers": False, "useGlobalXaxisKey": False,
               "useGlobalLineSmoothing": False}
              for key in BUDGET_CHARTS]
    return {
        "searchFilter": f"tags.`starkv.run_id` = '{run_id}'", "orderByKey": "attributes.start_time",
        "orderByAsc": False,
        "selectedColumns": [f"metrics.`{key}`" for key in TABLE_COLUMNS],
        "columnOrder": [f"metrics.`{key}`" for key in TABLE_COLUMNS],
        "compareRunCharts": charts,
        "compareRunSections": [{"uuid": section, "name": "by KV budget (one line per compressor)",
                                "display": True, "isReordered": False, "deleted": False, "isExpanded": True}],
        "isAccordionReordered": True, "runsHiddenMode": "SHOW_ALL", "hideEmptyCharts": True, "useGroupedValuesInCharts": True,
        "globalLineChartConfig": {"xAxisKey": "step", "lineSmoothness": 0, "selectedXAxisMetricKey": ""},
    }


def child_metrics(s: UnitSummary) -> dict[str, float]:
    """What a unit's MLflow child run logs: every summary metric, its readable twins and the budget, in the
    order its metrics table lists them: the table columns first, then the other figures in human units (MiB,
    ms, GFLOP, %, counts), the raw ``*_bytes`` / ``*_s`` / ``*_flops`` values last."""
    readable = {**readable_metrics(s.metrics), "budget_pct": s.budget}
    raw = {k for k, v in s.metrics.items() if readable_twin(k, v) is not None}  # shown again as their twins
    first = {k: readable[k] for k in TABLE_COLUMNS if k in readable}
    human = {k: v for k, v in readable.items() if k not in first and k not in raw}
    return {**first, **human, **{k: readable[k] for k in s.metrics if k in raw}}


def unit_slug(s: UnitSummary) -> str:
    """``snapkv_20pct``: a unit as MLflow allows it in a metric name (no ``@`` or ``%``)."""
    label = "".join(c if c.isalnum() or c in "_-." else "_" for c in s.compressor)
    return f"{label}_{s.budget:g}pct"


def parent_metrics(summaries: list[UnitSummary]) -> dict[str, float]:
    """Headline numbers of every unit on the parent run, grouped by metric: ``accuracy/snapkv_20pct``."""
    out = {}
    for s in summaries:
        readable = readable_metrics(s.metrics)
        for h in HEADLINE:
            if h.metric in readable:
                out[f"{h.metric}/{unit_slug(s)}"] = float(readable[h.metric])
    return out


def _cells(s: UnitSummary) -> list[str]:
    readable = readable_metrics(s.metrics)
    return [h.fmt(readable[h.metric]) if h.metric in readable else "–" for h in HEADLINE]


def summary_markdown(summaries: list[UnitSummary]) -> str:
    """A markdown table, one row per unit (compressor, budget, headline numbers, steps, errors)."""
    ci = any("accuracy_ci_low" in s.metrics for s in summaries)
    head = ["compressor", "budget", *(h.title for h in HEADLINE), *(["accuracy 95% CI"] if ci else []), "steps",
            "errors"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summaries:
        counts = [f"{int(s.metrics.get('steps', 0))}", f"{int(s.metrics.get('errors', 0))}"]
        interval = ([f"[{s.metrics['accuracy_ci_low']:.3f}, {s.metrics['accuracy_ci_high']:.3f}]"
                     if "accuracy_ci_low" in s.metrics else "–"] if ci else [])
        lines.append("| " + " | ".join([s.compressor, budget_text(s.budget), *_cells(s), *interval, *counts]) + " |")
    return "\n".join(lines)


def _job_line(job: dict[str, Any]) -> str:
    bench = job.get("benchmark") or {}
    episodes = bench.get("max_episodes") or (bench.get("options") or {}).get("num_episodes")
    extra = f", {episodes} episodes" if episodes else ""
    return (f"Job **{job.get('name', '?')}** (run id `{job.get('run_id', '')}`): benchmark "
            f"**{bench.get('name', '?')}**{extra}, model `{(job.get('model') or {}).get('path', '?')}`.")


def parent_note(job: dict[str, Any], summaries: list[UnitSummary], commit: str, comparison: str = "") -> str:
    """The parent run's description: the job, the summary table first (the UI folds long notes), then the
    paired comparison against the baseline (``starkv-eval compare``) and detail."""
    comps = ", ".join(describe_compressor(c) for c in job.get("compressors") or [])
    budgets = ", ".join(budget_text(float(b)) for b in job.get("budgets") or [])
    return "\n".join([
        f"### {job.get('name', job.get('run_id', 'job'))}: KV-cache compression sweep",
        _job_line(job),
        "",
        summary_markdown(summaries),
        "",
        *(["Paired against the full cache (`starkv-eval compare`):", "", "```", comparison, "```", ""]
          if comparison else []),
        f"Compressors: {comps}. KV budgets: {budgets} of the prompt tokens kept per layer. Code: `{commit}`.",
        "",
        "Each child run is one (compressor, budget) with its step rows (`rows/*.parquet`) and a per-step "
        "figure; `overview.png` here puts accuracy, peak memory and KV bytes vs budget side by side. "
        "Headline metrics per unit are logged here as `<metric>/<compressor>_<budget>pct`.",
    ])


def headline_sentence(s: UnitSummary) -> str:
    """``accuracy 0.250 · peak memory 812.0 MiB · ... · 18 steps, 0 errors``: a unit in one line."""
    readable = readable_metrics(s.metrics)
    parts = [f"{h.title} {h.fmt(readable[h.metric])}" for h in HEADLINE if h.metric in readable]
    parts.append(f"{int(s.metrics.get('steps', 0))} steps, {int(s.metrics.get('errors', 0))} errors")
    return " · ".join(parts)


def child_note(job: dict[str, Any], s: UnitSummary, settings: dict[str, str]) -> str:
    """A child run's description: which compressor at which budget, and its headline numbers."""
    shown = ", ".join(f"{k}={v}" for k, v in settings.items() if k != "method") or "defaults"
    return "\n".join([
        f"### {s.compressor} at {budget_text(s.budget)} KV budget",
        f"**{headline_sentence(s)}**",
        "",
        _job_line(job),
        f"Method `{settings.get('method', s.compressor)}` with {shown}.",
        "",
        "Artifacts: `rows/` holds this unit's step rows (Parquet), `unit.png` its per-step KV and peak memory.",
    ])


def describe_compressor(spec: dict[str, Any]) -> str:
    """``snapkv (window_size=8, kernel_size=5)`` from a compressor entry of the job config."""
    label = spec.get("label") or spec["name"]
    params = spec.get("params") or {}
    inner = ", ".join(f"{k}={v}" for k, v in params.items())
    name = label if label == spec["name"] else f"{label} = {spec['name']}"
    return f"{name} ({inner})" if inner else name


def job_params(job: dict[str, Any]) -> dict[str, str]:
    """The job config as params a person can read: one per compressor entry, budgets in percent."""
    out: dict[str, str] = {}
    for key, value in job.items():
        if key.startswith("_"):
            continue
        if key == "compressors":
            for spec in value:
                out[f"compressor.{spec.get('label') or spec['name']}"] = describe_compressor(spec)
        elif key == "budgets":
            out["budgets"] = ", ".join(budget_text(float(b)) for b in value)
        elif isinstance(value, dict):
            out.update(_flatten(key, value))
        else:
            out[key] = str(value)[:500]
    out["mode"] = run_mode(job)
    return out


def run_mode(job: dict[str, Any]) -> str:
    """``exact``, or ``approx_chunked`` when the job opts in to the approximate chunked prefill."""
    from pipeline.config import PrefillMode

    return PrefillMode.parse((job.get("model") or {}).get("prefill_mode", "full")).label


def _flatten(prefix: str, data: dict[str, Any]) -> dict[str, str]:
    out = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(_flatten(key, v))
        else:
            out[key] = str(v)[:500]
    return out
