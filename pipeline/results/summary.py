"""Per (compressor, budget) aggregates from the step rows: accuracy, memory, throughput."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from pipeline.benchmarks.common.base import Benchmark
from pipeline.metrics.units import unit_label


@dataclass
class UnitSummary:
    compressor: str
    budget: float
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return unit_label(self.compressor, self.budget)


def _mean(values: list[float]) -> float:
    return float(sum(values) / len(values)) if values else 0.0


def summarize(table: pa.Table, benchmark: Benchmark) -> list[UnitSummary]:
    """One summary per unit, in (compressor, budget) order; benchmark metrics come from its aggregate()."""
    if table.num_rows == 0:
        return []
    rows = table.to_pylist()
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["compressor"], float(r["budget"])), []).append(r)
    out = []
    for (comp, budget), items in sorted(groups.items()):
        for r in items:
            r["meta"] = json.loads(r.get("meta_json") or "{}")
        ok = [r for r in items if not r.get("error")]
        model_s = sum(r["prefill_s"] + r["decode_s"] for r in ok)
        metrics = {f"bench_{k}" if k == "num_steps" else k: float(v) for k, v in benchmark.aggregate(items).items()}
        metrics.update(
            steps=float(len(items)),
            errors=float(len(items) - len(ok)),
            episodes=float(len({r["episode_id"] for r in items})),
            mean_peak_mem_bytes=_mean([r["peak_mem_bytes"] for r in ok]),
            max_peak_mem_bytes=float(max((r["peak_mem_bytes"] for r in ok), default=0)),
            max_peak_above_weights_bytes=float(max((r.get("peak_above_weights_bytes") or 0 for r in ok), default=0)),
            mean_peak_above_weights_bytes=_mean([r.get("peak_above_weights_bytes") or 0 for r in ok]),
            max_peak_prefill_bytes=float(max((r.get("peak_prefill_bytes") or 0 for r in ok), default=0)),
            max_peak_decode_bytes=float(max((r.get("peak_decode_bytes") or 0 for r in ok), default=0)),
            weights_bytes=float(max((r.get("weights_bytes") or 0 for r in ok), default=0)),
            mean_kv_bytes=_mean([r["kv_bytes"] for r in ok]),
            mean_kv_bytes_full=_mean([r["kv_bytes_full"] for r in ok]),
            kv_ratio=(sum(r["kv_bytes"] for r in ok) / max(1, sum(r["kv_bytes_full"] for r in ok))),
            mean_prompt_tokens=_mean([r["prompt_tokens"] for r in ok]),
            mean_kept_tokens=_mean([r["kept_tokens"] for r in ok]),
            mean_prefill_s=_mean([r["prefill_s"] for r in ok]),
            mean_decode_s=_mean([r["decode_s"] for r in ok]),
            steps_per_s=(len(ok) / model_s) if model_s > 0 else 0.0,
            # steps whose prefill was shared by the sweep's units (pipeline.step.sweep): their peaks are the sweep's
            shared_prefill_steps=float(sum(1 for r in ok if r.get("prefill_shared"))),
        )
        metrics.setdefault("accuracy", _mean([1.0 if r["correct"] else 0.0 for r in items]))
        out.append(UnitSummary(comp, budget, metrics))
    return out


def format_table(summaries: list[UnitSummary], mem_device: str = "") -> str:
    """A small fixed-width table for the terminal and the MLflow artifact."""
    head = f"{'compressor':<14}{'budget%':>8}{'steps':>7}{'err':>5}{'accuracy':>10}{'KV kept MiB':>13}" \
           f"{'KV full MiB':>13}{'peak>W MiB':>12}{'peak MiB':>10}{'prefill ms':>12}{'decode ms':>11}"
    lines = [head, "-" * len(head)]
    mib = 1024 * 1024
    for s in summaries:
        m = s.metrics
        lines.append(
            f"{s.compressor:<14}{s.budget:>8g}{int(m['steps']):>7}{int(m['errors']):>5}{m['accuracy']:>10.3f}"
            f"{m['mean_kv_bytes'] / mib:>13.3f}{m['mean_kv_bytes_full'] / mib:>13.3f}"
            f"{m.get('max_peak_above_weights_bytes', 0) / mib:>12.2f}"
            f"{m['max_peak_mem_bytes'] / mib:>10.1f}{m['mean_prefill_s'] * 1e3:>12.1f}{m['mean_decode_s'] * 1e3:>11.1f}"
        )
    lines.append("(peak>W: exact live tensor bytes above the weights, prefill or decode; peak: "
                 + (mem_device or "device-level figure") + ")")
    if any(s.metrics.get("shared_prefill_steps", 0) > 0 for s in summaries):
        lines.append(SHARED_PEAK_NOTE)
    return "\n".join(lines)


SHARED_PEAK_NOTE = ("(shared prefill: one prefill holds every layer's full cache for all units, so peak>W is "
                    "the sweep's, the same for every unit; to compare compressors' memory run with "
                    "ray.shared_prefill: false)")
