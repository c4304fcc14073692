"""A small figure of one (compressor, budget) unit, step by step: kept vs full KV bytes and peak memory.

Logged into the unit's MLflow child run so a child explains itself without opening the parent.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from pipeline.results.colours import compressor_colour

MIB = 1024 * 1024


def plot_unit(rows: pa.Table, compressor: str, budget: float, path: Path) -> Path | None:
    """Per-step bars of kept and full KV (MiB) with peak memory on a second axis; None without rows."""
    from matplotlib.figure import Figure

    if rows.num_rows == 0:
        return None
    data = sorted(rows.select(["episode_id", "step_index", "kv_bytes", "kv_bytes_full", "peak_mem_bytes",
                               "correct", "error"]).to_pylist(),
                  key=lambda r: (str(r["episode_id"]), int(r["step_index"])))
    xs = list(range(len(data)))
    colour = compressor_colour(compressor)
    fig = Figure(figsize=(7, 3.2), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    ax.bar(xs, [(r["kv_bytes_full"] or 0) / MIB for r in data], color="#d9d9d9", label="KV full")
    ax.bar(xs, [(r["kv_bytes"] or 0) / MIB for r in data], color=colour, label="KV kept", width=0.6)
    ax.set_ylabel("KV cache (MiB)")
    ax.set_xlabel("step (episodes in order)")
    mem = ax.twinx()
    mem.plot(xs, [(r["peak_mem_bytes"] or 0) / MIB for r in data], color="black", marker=".", linewidth=1,
             label="peak memory")
    mem.set_ylabel("peak memory (MiB)")
    correct = sum(1 for r in data if r["correct"])
    errors = sum(1 for r in data if r["error"])
    ax.set_title(f"{compressor} at {budget:g}% KV budget: {correct}/{len(data)} steps correct, {errors} errors",
                 fontsize="medium")
    handles = ax.get_legend_handles_labels()[0] + mem.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], fontsize="small", loc="upper left")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
