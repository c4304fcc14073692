"""Selection-cost benchmark at UI-TARS-7B dimensions: every compressor, the MI step, one decoder layer.

All figures of one report are measured in the same process on the same random inputs, so the ratios
(STaR-KV / SnapKV, selection / layer prefill) are meaningful on any machine; absolute times are not. The
flops (torch's flop counter, ``starkv.flops``) are exact on any machine: a selection's on its inputs, the
decoder layer's prefill on fake tensors (shapes only, no weights or arithmetic).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from types import SimpleNamespace
from typing import Any

import torch

import starkv
from starkv.budget import capacity, plan_selection
from starkv.context import LayerContext
from starkv.flops import count_flops
from starkv.layout import PromptLayout

CPU = torch.device("cpu")


@dataclass(frozen=True)
class Dims:
    """Decoder dimensions (defaults: Qwen2.5-VL-7B / UI-TARS-1.5-7B text model)."""

    num_heads: int = 28
    num_kv_heads: int = 4
    head_dim: int = 128
    hidden: int = 3584
    intermediate: int = 18944


@dataclass(frozen=True)
class Scenario:
    name: str
    image_tokens: tuple[int, ...]
    text_between: int = 60
    text_tail: int = 120

    def layout(self) -> PromptLayout:
        spans, pos = [], 40
        for n in self.image_tokens:
            spans.append((pos, pos + n))
            pos += n + self.text_between
        return PromptLayout(image_spans=tuple(spans), prompt_length=pos - self.text_between + self.text_tail)


SCENARIOS = {
    "5x2691": Scenario("5 screenshots of 2,691 tokens (1920x1080) + text", (2691,) * 5),
    "1x16384": Scenario("1 screenshot of 16,384 tokens (max_pixels cap) + text", (16384,)),
}
QUICK_SCENARIOS = {"quick": Scenario("2 screenshots of 256 tokens", (256, 256), 20, 30)}


@dataclass
class ScenarioReport:
    scenario: str
    prompt_tokens: int
    budget: float
    selection_ms: dict[str, float] = field(default_factory=dict)
    mi_step_ms: float = 0.0
    layer_prefill_ms: float | None = None
    starkv_over_snapkv: float | None = None
    selection_over_layer: dict[str, float] = field(default_factory=dict)
    selection_flops: dict[str, int] = field(default_factory=dict)
    layer_prefill_flops: int = 0
    selection_flops_over_layer: dict[str, float] = field(default_factory=dict)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn: Callable[[], object], repeats: int, device: torch.device = CPU) -> float:
    fn()  # warm-up (allocations, lazy init, kernel selection)
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def make_context(dims: Dims, layout: PromptLayout, budget: float, seed: int = 0, dtype=torch.float32,
                 device: torch.device = CPU) -> LayerContext:
    g = torch.Generator().manual_seed(seed)
    L = layout.prompt_length

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

    return LayerContext(
        layer_idx=0, num_layers=28,
        queries=rand(1, dims.num_heads, 8, dims.head_dim),
        keys=rand(1, dims.num_kv_heads, L, dims.head_dim),
        values=rand(1, dims.num_kv_heads, L, dims.head_dim),
        hidden_states=rand(1, L, dims.hidden),
        layout=layout, budget=budget, plan=plan_selection(L, capacity(L, budget), 8),
    )


def select_fn(name: str, ctx: LayerContext) -> Callable[[], object]:
    """A call of ``name``'s selection on ``ctx``, given the query rows it captures and a stand-in layer module."""
    comp = starkv.build(name)
    rows = min(ctx.length, max(1, comp.query_window(ctx.layout, ctx.length)))  # the hook's rule
    g = torch.Generator().manual_seed(1)
    if rows != ctx.queries.shape[2]:  # e.g. VL-Cache's post-vision rows, H2O's every row, TOVA's last one
        queries = torch.randn(1, ctx.num_heads, rows, ctx.head_dim, generator=g).to(ctx.keys)
        ctx = LayerContext(**{**ctx.__dict__, "queries": queries})
    if ctx.module is None:  # what a method may read of the layer (CriticalKV: o_proj), at the layer's dimensions
        o_proj = SimpleNamespace(weight=torch.randn(ctx.hidden_states.shape[-1], ctx.num_heads * ctx.head_dim,
                                                    generator=g).to(ctx.keys))
        ctx = LayerContext(**{**ctx.__dict__, "module": SimpleNamespace(o_proj=o_proj)})
    if name == "starkv":
        for _ in range(comp.mi_profile_steps + 2):  # steady state: MI prior and temporal state active
            comp.select(ctx)
    return lambda: comp.select(ctx)


def _mrope_section(head_dim: int) -> list[int]:
    """Qwen2.5-VL's temporal/height/width split of the rotary half-dimension ([16, 24, 24] for d = 128)."""
    half = head_dim // 2
    t = half // 4
    h = (half - t) // 2
    return [t, h, half - t - h]


def decoder_layer(dims: Dims, dtype=torch.float32, device: torch.device = CPU) -> tuple[Any, Any]:
    """One Qwen2.5-VL decoder layer at ``dims`` (sdpa attention, random weights) and its rotary embedding."""
    layer, rotary = _built_layer(dims)
    return layer.to(device=device, dtype=dtype), rotary.to(device)


def _built_layer(dims: Dims) -> tuple[Any, Any]:
    """The layer and rotary embedding as built (fp32, CPU; fake under a ``FakeTensorMode``, which cannot ``.to``)."""
    from transformers import Qwen2_5_VLTextConfig
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
        Qwen2_5_VLDecoderLayer,
        Qwen2_5_VLRotaryEmbedding,
    )

    cfg = Qwen2_5_VLTextConfig(hidden_size=dims.hidden, intermediate_size=dims.intermediate,
                               num_attention_heads=dims.num_heads, num_key_value_heads=dims.num_kv_heads,
                               num_hidden_layers=1, rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                                                     "mrope_section": _mrope_section(dims.head_dim)})
    cfg._attn_implementation = "sdpa"  # noqa: SLF001 - transformers keeps the attention backend only here
    return Qwen2_5_VLDecoderLayer(cfg, layer_idx=0).eval(), Qwen2_5_VLRotaryEmbedding(cfg)


def layer_prefill_ms(dims: Dims, length: int, repeats: int, dtype=torch.float32,
                      device: torch.device = CPU) -> float:
    """One Qwen2.5-VL decoder layer's prefill forward (sdpa attention, random weights) at ``length`` tokens."""
    layer, rotary = decoder_layer(dims, dtype, device)
    hidden = torch.randn(1, length, dims.hidden).to(device=device, dtype=dtype)
    pos = torch.arange(length, device=device).view(1, 1, -1).expand(3, 1, -1)
    with torch.inference_mode():
        emb = rotary(hidden, pos)

        def forward():
            return layer(hidden, attention_mask=None, position_ids=pos, position_embeddings=emb)

        return median_ms(forward, repeats, device) if repeats > 0 else 0.0


def layer_prefill_flops(dims: Dims, length: int) -> int:
    """Flops of one Qwen2.5-VL decoder layer's prefill forward at ``length`` tokens, counted on fake tensors.

    Exactly ``2·L·(2·D·H·d + 2·D·H_kv·d + 3·D·I) + 4·H·L²·d``: the q/k/v/o projections and the three MLP
    matrices, plus the attention's ``QKᵀ`` and ``AV`` over the full ``L × L`` scores (torch's convention,
    no causal saving); norms, RoPE and activations count 0.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(allow_non_fake_inputs=True), torch.inference_mode():
        layer, rotary = _built_layer(dims)
        hidden = torch.empty(1, length, dims.hidden)
        pos = torch.arange(length).view(1, 1, -1).expand(3, 1, -1)
        emb = rotary(hidden, pos)
        with count_flops() as tally:
            layer(hidden, attention_mask=None, position_ids=pos, position_embeddings=emb)
    return tally.flops


def selection_flops(fn: Callable[[], object]) -> int:
    """Flops of one call of a selection (``select_fn``)."""
    with count_flops() as tally:
        fn()
    return tally.flops


def run_compress_bench(scenarios: dict[str, Scenario] | None = None, dims: Dims = Dims(), budget: float = 20.0,
                       repeats: int = 5, layer_repeats: int = 1, compressors: list[str] | None = None,
                       echo=print, device: str = "cpu", dtype: str = "float32") -> list[ScenarioReport]:
    """Measure every compressor's selection, STaR-KV's MI step and one decoder layer's prefill per scenario."""
    from starkv.methods import mi as mi_mod

    torch.manual_seed(0)
    dev, dt = torch.device(device), getattr(torch, dtype)
    names = compressors or starkv.available()
    reports = []
    for key, scenario in (scenarios or SCENARIOS).items():
        layout = scenario.layout()
        ctx = make_context(dims, layout, budget, dtype=dt, device=dev)
        rep = ScenarioReport(scenario=f"{key}: {scenario.name}", prompt_tokens=layout.prompt_length, budget=budget)
        with torch.inference_mode():
            for name in names:
                if name == "full":
                    continue
                fn = select_fn(name, ctx)
                rep.selection_ms[name] = median_ms(fn, repeats, dev)
                rep.selection_flops[name] = selection_flops(fn)
                echo(f"  [{key}] {name:<13} selection {rep.selection_ms[name]:9.2f} ms, "
                     f"{rep.selection_flops[name] / 1e6:9.2f} MFLOP")
            start, end = layout.current_image
            image_scores = torch.rand(dims.num_kv_heads, end - start, device=dev)
            rep.mi_step_ms = median_ms(lambda s=image_scores: mi_mod.spatial_mi(s), repeats, dev)
            echo(f"  [{key}] MI step        {rep.mi_step_ms:9.2f} ms per layer ({end - start} image tokens)")
        rep.layer_prefill_flops = layer_prefill_flops(dims, layout.prompt_length)
        rep.selection_flops_over_layer = {n: f / rep.layer_prefill_flops for n, f in rep.selection_flops.items()}
        if layer_repeats > 0:
            echo(f"  [{key}] measuring one decoder layer prefill at {layout.prompt_length} tokens ...")
            rep.layer_prefill_ms = layer_prefill_ms(dims, layout.prompt_length, layer_repeats, dt, dev)
            rep.selection_over_layer = {n: t / rep.layer_prefill_ms for n, t in rep.selection_ms.items()}
        if "starkv" in rep.selection_ms and "snapkv" in rep.selection_ms:
            rep.starkv_over_snapkv = rep.selection_ms["starkv"] / rep.selection_ms["snapkv"]
        reports.append(rep)
    return reports


def format_reports(reports: list[ScenarioReport], threads: int, device: str = "cpu", dtype: str = "float32") -> str:
    where = f"{threads} torch threads" if device == "cpu" else device
    lines = [f"selection cost at budget {reports[0].budget:g}% ({dtype}, {where}; medians)"]
    for rep in reports:
        lines.append(f"\n{rep.scenario} — L = {rep.prompt_tokens}")
        layer = f"{rep.layer_prefill_ms:.1f} ms" if rep.layer_prefill_ms else "not measured"
        lines.append(f"  one decoder layer prefill: {layer}, {rep.layer_prefill_flops / 1e9:.1f} GFLOP")
        lines.append(f"  {'compressor':<14}{'select ms':>11}{'/ layer prefill':>17}{'select MFLOP':>14}"
                     f"{'/ layer flops':>15}")
        for name, ms in rep.selection_ms.items():
            frac = rep.selection_over_layer.get(name)
            flops, share = rep.selection_flops.get(name, 0), rep.selection_flops_over_layer.get(name, 0.0)
            lines.append(f"  {name:<14}{ms:>11.2f}{(f'{frac:.4f}' if frac is not None else '-'):>17}"
                         f"{flops / 1e6:>14.2f}{share:>15.6f}")
        lines.append(f"  MI step: {rep.mi_step_ms:.2f} ms per layer (target <= 5 ms): "
                     f"{'OK' if rep.mi_step_ms <= 5 else 'OVER'}")
        if rep.starkv_over_snapkv is not None:
            ok = "OK" if rep.starkv_over_snapkv <= 2 else "OVER"
            lines.append(f"  STaR-KV / SnapKV selection: {rep.starkv_over_snapkv:.2f}x (target <= 2x): {ok}")
    return "\n".join(lines)


def reports_to_json(reports: list[ScenarioReport]) -> list[dict]:
    return [asdict(r) for r in reports]
