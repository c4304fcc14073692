"""Budget sweeps as PNG plots (accuracy, kept KV bytes, peak memory vs KV budget, and every other ``PlotSpec``
the metric registry declares), one line per compressor.

Drawn with matplotlib's object API on the Agg canvas (no pyplot, no display, no global backend switch), so it
works headless in Ray jobs and tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline.metrics import registry
from pipeline.results.colours import compressor_colour
from pipeline.results.summary import UnitSummary

MIB = 1024 * 1024


@dataclass(frozen=True)
class PlotSpec:
    filename: str
    metric: str
    ylabel: str
    title: str
    scale: Callable[[float], float] = lambda v: v


def describe_device(mem_device: str) -> str:
    """The memory label the rows carry, in words (CPU RSS and CUDA allocator peaks are not comparable)."""
    names = []
    for label in filter(None, (d.strip() for d in mem_device.split(","))):
        if label.startswith("cuda_allocator"):
            names.append("GPU allocator peak" + (f", {label.split(':', 1)[1]}" if ":" in label else ""))
        elif label.startswith("cpu_rss"):
            names.append("CPU process RSS high-water mark (incl. weights and libraries)")
        else:
            names.append(label)
    return "; ".join(names)


def _peak_spec(units: list[UnitSummary], mem_device: str) -> PlotSpec:
    """The exact live-tensor peak above the weights when the rows have it, else the labelled device figure."""
    if any(u.metrics.get("max_own_peak_above_weights_bytes", 0) > 0 for u in units):
        return PlotSpec("peak_memory_vs_budget.png", "max_own_peak_above_weights_bytes",
                        "peak above weights per step, max over steps (MiB)",
                        "Peak memory vs KV budget\neach unit's own exact live tensor bytes above the weights "
                        "(prefill or decode)", lambda v: v / MIB)
    if any(u.metrics.get("max_peak_above_weights_bytes", 0) > 0 for u in units):
        shared = any(u.metrics.get("shared_prefill_steps", 0) > 0 for u in units)
        return PlotSpec("peak_memory_vs_budget.png", "max_peak_above_weights_bytes",
                        "peak above weights per step, max over steps (MiB)",
                        "Peak memory vs KV budget\nexact live tensor bytes above the weights (prefill or decode)"
                        + ("\nshared prefill: the sweep's peak (full cache); ray.shared_prefill: false compares"
                           if shared else ""),
                        lambda v: v / MIB)
    device = describe_device(mem_device)
    return PlotSpec("peak_memory_vs_budget.png", "max_peak_mem_bytes", "peak memory per step, max over steps (MiB)",
                    "Peak memory vs KV budget" + (f"\n{device}" if device else ""), lambda v: v / MIB)


#: The peak plot is the one special case: it draws the exact peak above the weights when the rows have it,
#: else the labelled device-level peak (``_peak_spec``), placed where ``peak_mem_bytes`` is registered.
_PEAK_COLUMN = "peak_mem_bytes"


def _declared(spec: registry.PlotSpec) -> PlotSpec:
    """A registry ``PlotSpec`` as drawn (its ``scale`` divides the values)."""
    div = spec.scale
    return PlotSpec(spec.filename, spec.summary, spec.ylabel, spec.title, lambda v: v / div)


def _specs(units: list[UnitSummary], mem_device: str) -> list[PlotSpec]:
    """Every budget plot the metric registry declares (registration order) and the peak-memory plot: accuracy,
    kept KV, peak memory, then plots of metrics registered later."""
    out = []
    for owner in (*registry.COLUMNS, *registry.DERIVED):
        if owner.plot is not None:
            out.append(_declared(owner.plot))
        if owner.name == _PEAK_COLUMN:
            out.append(_peak_spec(units, mem_device))
    return out


def _series(units: list[UnitSummary], metric: str) -> dict[str, list[tuple[float, float]]]:
    lines: dict[str, list[tuple[float, float]]] = {}
    for u in sorted(units, key=lambda u: (u.compressor, u.budget)):
        if metric in u.metrics:
            lines.setdefault(u.compressor, []).append((float(u.budget), float(u.metrics[metric])))
    return lines


#: line styles and markers per compressor (sorted order), so curves with equal values stay visible
LINESTYLES = ("-", "--", "-.", ":")
MARKERS = "osD^vP*X"


def _draw(ax, units: list[UnitSummary], spec: PlotSpec) -> None:
    """One line per compressor, each with its own marker and line style and a small sideways offset (curves
    with identical values stay visible); 95 % intervals as error bars where the summaries have them."""
    lines = _series(units, spec.metric)
    budgets = sorted({u.budget for u in units})
    spread = (budgets[-1] - budgets[0]) if len(budgets) > 1 else 1.0
    names = sorted(lines)
    # the offsets of all lines together stay within half the closest gap between budgets (many lines: smaller)
    gap = min((b - a for a, b in zip(budgets, budgets[1:])), default=spread)
    step = min(spread * 0.012, 0.5 * gap / max(len(names), 1))
    for i, name in enumerate(names):
        offset = (i - (len(names) - 1) / 2) * step
        xs, ys = zip(*sorted(lines[name]))
        low = _series(units, f"{spec.metric}_ci_low").get(name)
        high = _series(units, f"{spec.metric}_ci_high").get(name)
        yerr = None
        if low and high and len(low) == len(xs) == len(high):
            los, his = dict(low), dict(high)
            yerr = [[spec.scale(y) - spec.scale(los[x]) for x, y in zip(xs, ys)],
                    [spec.scale(his[x]) - spec.scale(y) for x, y in zip(xs, ys)]]
        ax.errorbar([x + offset for x in xs], [spec.scale(y) for y in ys], yerr=yerr, capsize=3 if yerr else 0,
                    marker=MARKERS[i % len(MARKERS)], linestyle=LINESTYLES[i % len(LINESTYLES)], label=name,
                    alpha=0.85, color=compressor_colour(name))


def sample_note(units: list[UnitSummary]) -> str:
    """``n = 251 steps, 50 episodes per unit`` (the largest unit's, when units differ)."""
    steps = max((int(u.metrics.get("steps", 0)) for u in units), default=0)
    episodes = max((int(u.metrics.get("episodes", 0)) for u in units), default=0)
    return f"n = {steps} steps, {episodes} episodes per unit" + ("; bars: 95% interval"
                                                                 if any("accuracy_ci_low" in u.metrics for u in units)
                                                                 else "")


def plot_metric(units: list[UnitSummary], spec: PlotSpec, path: Path, subtitle: str = "") -> Path | None:
    """One PNG: ``spec.metric`` against budget, a line per compressor; None when no unit has the metric."""
    from matplotlib.figure import Figure

    lines = _series(units, spec.metric)
    if not lines:
        return None
    fig = Figure(figsize=(8, 4.5), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    _draw(ax, units, spec)
    if spec.metric == "mean_kv_bytes":  # the uncompressed cache as the reference the budgets cut down
        by_budget: dict[float, list[float]] = {}
        for points in _series(units, "mean_kv_bytes_full").values():
            for b, v in points:
                by_budget.setdefault(b, []).append(v)
        if by_budget:
            xs = sorted(by_budget)
            ax.plot(xs, [spec.scale(sum(by_budget[x]) / len(by_budget[x])) for x in xs], linestyle="--",
                    color="grey", label="uncompressed cache", zorder=1)
    budgets = sorted({u.budget for u in units})
    ax.set_xticks(budgets)
    ax.set_xticklabels([f"{b:g}" for b in budgets])
    ax.set_xlabel("KV budget (% of prompt tokens kept per layer)")
    ax.set_ylabel(spec.ylabel)
    if spec.metric == "accuracy":
        ax.set_ylim(-0.02, 1.02)
    elif spec.metric == "mean_kv_bytes":
        ax.set_ylim(bottom=0)
    # peak memory keeps matplotlib's autoscale: it is dominated by weights, a zero baseline hides changes
    ax.grid(True, alpha=0.3)
    many = len(ax.get_legend_handles_labels()[1]) > 12
    ax.legend(title="compressor", fontsize="x-small" if many else "small", ncol=2 if many else 1, loc="upper left",
              bbox_to_anchor=(1.01, 1.0))
    ax.set_title(spec.title + (f"\n{subtitle}" if subtitle else "") + f"\n{sample_note(units)}", fontsize="medium")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def write_report_plots(units: list[UnitSummary], out_dir: str | Path, subtitle: str = "",
                       mem_device: str = "") -> list[Path]:
    """Accuracy, kept-KV-memory and peak-memory plots, and one per other registered ``PlotSpec``, into
    ``out_dir``; returns the files written."""
    out = Path(out_dir)
    written = [plot_metric(units, spec, out / spec.filename, subtitle) for spec in _specs(units, mem_device)]
    return [p for p in written if p is not None]


def plot_overview(units: list[UnitSummary], path: Path, subtitle: str = "", mem_device: str = "") -> Path | None:
    """One figure, three panels side by side: accuracy, peak memory and kept KV bytes vs budget, per compressor.

    The colours are the compressors' MLflow run colours, so the figure reads like the runs table.
    """
    from matplotlib.figure import Figure

    accuracy, kv, peak = _specs(units, mem_device)[:3]  # the built-in three; a registered plot has its own file
    specs = [accuracy, peak, kv]  # peak keeps its autoscale (weights dominate it); KV from zero
    if not any(_series(units, spec.metric) for spec in specs):
        return None
    fig = Figure(figsize=(13, 4), dpi=100, layout="constrained")
    axes = fig.subplots(1, len(specs))
    budgets = sorted({u.budget for u in units})
    for ax, spec in zip(axes, specs):
        _draw(ax, units, spec)
        ax.set_xticks(budgets)
        ax.set_xticklabels([f"{b:g}%" for b in budgets])
        ax.set_xlabel("KV budget")
        ax.set_ylabel(spec.ylabel, fontsize="small")
        ax.set_title(spec.title.split("\n")[0], fontsize="medium")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylim(-0.02, 1.02)
    axes[-1].set_ylim(bottom=0)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, title="compressor", loc="outside right upper", fontsize="small")
    fig.suptitle((f"{subtitle} · " if subtitle else "") + sample_note(units), fontsize="medium")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def write_job_figures(units: list[UnitSummary], out_dir: str | Path, subtitle: str = "",
                      mem_device: str = "") -> list[Path]:
    """What a job's parent run carries: the three sweep plots and the side-by-side ``overview.png``."""
    files = write_report_plots(units, out_dir, subtitle, mem_device)
    overview = plot_overview(units, Path(out_dir) / "overview.png", subtitle, mem_device)
    return files + ([overview] if overview else [])
