"""``bench sweep``: wall time of one sweep run per unit vs with shared prefills, and a 7B prediction.

Both runs go through the pipeline's own step code (``EpisodeRunner.run`` per unit, ``pipeline.step.sweep``
shared: one prefill per step, the units' decodes batched where exact) on the same model, episodes and
units in one process, and their rows are compared for equality.
The prediction for UI-TARS-7B on ScreenSpot-Pro times one 7B-sized decoder layer (random weights) on this
machine: its prefill over the prompt, a compressor's selection, and one decode step over the compressed
cache; a step per unit costs ``P + U`` (``P`` = layers × prefill, ``U`` = layers × (selection + tokens ×
decode)), a shared step ``P + K·U`` for K units, so the speedup is ``K·(P + U) / (P + K·U)``.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

import starkv
from pipeline.config import JobConfig

#: row columns that must agree between the per-unit and the shared run (times and memory differ by design)
SAME_COLUMNS = ("step_key", "prompt_tokens", "kept_tokens", "kv_bytes", "kv_bytes_full", "generated_tokens",
                "raw_output", "prediction", "correct", "score", "error")


@dataclass
class SweepTiming:
    units: int
    episodes: int
    steps: int
    per_unit_s: float
    shared_s: float
    speedup: float
    identical: bool
    batch_decode: bool  # the shared sweep decoded its units as one batch (where exact)
    prefill_share: float  # of a per-unit step's model time (prefill / (prefill + decode)), measured
    mean_prefill_s: float
    mean_compress_s: float
    mean_decode_s: float


def run_sweep_bench(cfg: JobConfig, episodes: int, echo=print, memory_accounting: bool = True,
                    batch_decode: bool = True) -> SweepTiming:
    """Run the job's units over its first ``episodes`` episodes per unit, then shared; time both.

    ``memory_accounting`` as in runs (on); off shows the ratio without the accounting's per-op cost.
    ``batch_decode`` as in runs (on): the shared sweep decodes its units as one batch (``pipeline.step.row_decode``).
    """
    from pipeline.config import make_benchmark
    from pipeline.metrics.units import Unit
    from pipeline.models.loader import ModelSpec, load_model
    from pipeline.run.job import load_episodes
    from pipeline.step.engine import EpisodeRunner
    from pipeline.step.sweep import run_sweep

    m = cfg.model
    loaded = load_model(ModelSpec(path=m.path, revision=m.revision, dtype=m.dtype, attn_implementation=m.attn_implementation,
                                  device=m.device, min_pixels=m.min_pixels, max_pixels=m.max_pixels))
    bench = make_benchmark(cfg)
    eps = load_episodes(cfg, bench)[:episodes]
    runner = EpisodeRunner(loaded, bench, cfg.agent, m.max_new_tokens, mlp_chunk_tokens=m.mlp_chunk_tokens,
                           vision_per_image=m.vision_per_image, memory_accounting=memory_accounting,
                           batch_decode=batch_decode)
    specs = cfg.units()

    def units():
        return [(c.build(), Unit("bench", c.display, float(b), loaded.name)) for c, b in specs]

    runner.run(eps[0], *units()[0])  # warm-up (allocator, lazy init), untimed
    echo(f"per unit: {len(specs)} units x {len(eps)} episodes ...")
    t0 = time.perf_counter()
    per_unit = [[runner.run(ep, comp, unit) for comp, unit in units()] for ep in eps]
    per_unit_s = time.perf_counter() - t0
    echo(f"  {per_unit_s:.1f} s; shared ...")
    t0 = time.perf_counter()
    shared = [run_sweep(runner, ep, units()) for ep in eps]
    shared_s = time.perf_counter() - t0
    echo(f"  {shared_s:.1f} s")

    def view(rows):
        return [[{k: r[k] for k in SAME_COLUMNS} for r in unit_rows] for ep_rows in rows for unit_rows in ep_rows]

    flat = [r for ep_rows in per_unit for unit_rows in ep_rows for r in unit_rows]
    flat_shared = [r for ep_rows in shared for unit_rows in ep_rows for r in unit_rows if r["prefill_shared"]]
    prefill = sum(r["prefill_s"] for r in flat)
    decode = sum(r["decode_s"] for r in flat)
    return SweepTiming(
        units=len(specs), episodes=len(eps), steps=sum(len(e.steps) for e in eps), per_unit_s=per_unit_s,
        shared_s=shared_s, speedup=per_unit_s / shared_s, identical=view(per_unit) == view(shared),
        batch_decode=batch_decode,
        prefill_share=prefill / (prefill + decode) if prefill + decode else 0.0,
        mean_prefill_s=statistics.fmean(r["prefill_s"] for r in flat_shared) if flat_shared else 0.0,
        mean_compress_s=statistics.fmean(r["compress_s"] for r in flat_shared) if flat_shared else 0.0,
        mean_decode_s=statistics.fmean(r["decode_s"] for r in flat_shared) if flat_shared else 0.0,
    )


@dataclass
class Prediction7B:
    """Measured per-layer costs at UI-TARS-7B dimensions and the speedup they predict for K units."""

    prompt_tokens: int
    budget: float
    new_tokens: int
    num_layers: int
    layer_prefill_s: float
    layer_decode_s: float  # one decode step over the compressed cache
    selection_s: dict[str, float]
    prefill_share: float  # P / (P + U) of one per-unit step
    speedup: dict[int, float]  # K units -> predicted shared speedup


def predicted_speedup(prefill_s: float, unit_s: float, units: int) -> float:
    """``K·(P + U) / (P + K·U)``: K per-unit steps against one shared prefill plus K selections and decodes."""
    return units * (prefill_s + unit_s) / (prefill_s + units * unit_s)


def predict_7b(compressors: list[str], prompt_tokens: int = 16_544, budget: float = 20.0, new_tokens: int = 20,
               unit_counts: tuple[int, ...] = (6, 30), device: str = "cpu", dtype: str = "float32",
               echo=print) -> Prediction7B:
    """Time one 7B-sized layer's prefill, decode step and each compressor's selection; predict the speedup.

    Defaults: ScreenSpot-Pro with one screenshot at the 16,384-token cap (16,544 prompt tokens, as in
    ``bench compress``), ~20 output tokens, budget 20 %. The vision tower is left out (it belongs to the
    shared part, so leaving it out under-states the speedup).
    """
    from pipeline.bench.compress import (
        Dims,
        Scenario,
        layer_prefill_ms,
        make_context,
        median_ms,
        select_fn,
    )

    dims, dev, dt = Dims(), torch.device(device), getattr(torch, dtype)
    text = 160
    layout = Scenario("screenspot-pro", (prompt_tokens - text,), 0, text - 40).layout()
    ctx = make_context(dims, layout, budget, dtype=dt, device=dev)
    selection = {}
    with torch.inference_mode():
        for name in compressors:
            selection[name] = 0.0 if name == "full" else median_ms(select_fn(name, ctx), 3, dev) / 1e3
            echo(f"  selection {name}: {selection[name] * 1e3:.1f} ms per layer")
    kept = starkv.kept_length(layout.prompt_length, budget)
    decode_s = _layer_decode_ms(dims, kept, new_tokens, dt, dev) / 1e3
    echo(f"  one layer decode step over {kept} cached tokens: {decode_s * 1e3:.2f} ms")
    echo(f"  one layer prefill over {layout.prompt_length} tokens (slow on CPU) ...")
    prefill_layer = layer_prefill_ms(dims, layout.prompt_length, 1, dt, dev) / 1e3
    layers = 28
    prefill = layers * prefill_layer
    unit = layers * (statistics.fmean(selection.values()) + new_tokens * decode_s)
    return Prediction7B(prompt_tokens=layout.prompt_length, budget=budget, new_tokens=new_tokens, num_layers=layers,
                        layer_prefill_s=prefill_layer, layer_decode_s=decode_s, selection_s=selection,
                        prefill_share=prefill / (prefill + unit),
                        speedup={k: predicted_speedup(prefill, unit, k) for k in unit_counts})


def _layer_decode_ms(dims, cached: int, steps: int, dtype, device) -> float:
    """Median of ``steps`` single-token forwards of one 7B-sized decoder layer over a ``cached``-token cache."""
    from transformers import DynamicCache

    from pipeline.bench.compress import decoder_layer

    layer, rotary = decoder_layer(dims, dtype, device)
    cache = DynamicCache()
    kv = torch.randn(1, dims.num_kv_heads, cached, dims.head_dim).to(device=device, dtype=dtype)
    cache.update(kv, kv.clone(), 0)
    hidden = torch.randn(1, 1, dims.hidden).to(device=device, dtype=dtype)
    times = []
    with torch.inference_mode():
        for i in range(steps + 1):
            pos = torch.full((3, 1, 1), cached + i, device=device)
            emb = rotary(hidden, pos)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            layer(hidden, attention_mask=None, position_ids=pos, position_embeddings=emb, past_key_values=cache)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times[1:])  # the first call warms up


def to_json(timing: SweepTiming | None, prediction: Prediction7B | None) -> dict[str, Any]:
    out: dict[str, Any] = asdict(timing) if timing is not None else {}
    if prediction is not None:
        out["predicted_7b_screenspot_pro"] = asdict(prediction)
    return out
