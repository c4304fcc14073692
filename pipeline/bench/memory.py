"""``starkv-eval bench memory``: a model step's exact memory at full scale, simulated without weights or GPU.

The model is built from its published config (vendored in ``pipeline/models/configs``) on fake tensors
(:mod:`pipeline.memory.simulate`); the prompt is the agent's real one (UI-TARS computer-use template, N
screenshots as history turns, the real processor at the UI-TARS pixel limits, so image token counts are
exact; text tokens come from the offline tokenizer). Each compressor is attached with the real hook and
``generate`` runs prefill and D decode steps while :mod:`pipeline.memory.accounting` counts live storages.
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pipeline.metrics.units import unit_label
from starkv.flops import FlopMeter, FlopTally, region_flops

CONFIG_DIR = Path(__file__).resolve().parents[1] / "models" / "configs"
#: A square screenshot that lands exactly on UI-TARS's max_pixels cap: 128 x 128 merged patches.
MAX_RESOLUTION = (3584, 3584)
ATTN = ("sdpa", "eager")
#: ``--prefill`` values and the model.prefill_mode each one runs
PREFILLS = {"full": "full", "chunked": "chunked_compress"}
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


class MemoryBenchError(ValueError):
    """Bad ``bench memory`` input; the message names the option."""


def available_models() -> list[str]:
    return sorted(["tiny", *(p.stem for p in CONFIG_DIR.glob("*.json"))])


@dataclass(frozen=True)
class BenchSpec:
    """One ``bench memory`` invocation: the grid of rows to simulate."""

    model: str = "ui-tars-1.5-7b"
    screenshots: tuple[int, ...] = (5,)
    resolution: tuple[int, int] = (1920, 1080)
    budgets: tuple[float, ...] = (20.0,)
    compressors: tuple[str, ...] = ("full", "snapkv", "starkv")
    attn: tuple[str, ...] = ("sdpa",)
    decode_steps: int = 16
    dtype: str = "bfloat16"
    mlp_chunks: tuple[int, ...] = (0,)
    vision_per_image: bool = True
    #: model.prefill_mode values to sweep: full (exact) and/or chunked_compress (approximation)
    prefills: tuple[str, ...] = ("full",)
    #: count the prefill's and the selection's flops (prefill_flops, compress_flops, compress_flops_ratio)
    flops: bool = True


def _ints(text: str, option: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in str(text).split(",") if v.strip())
    except ValueError:
        raise MemoryBenchError(f"{option}: expected integers separated by commas, got {text!r}") from None
    if not values:
        raise MemoryBenchError(f"{option}: no value given")
    return values


def parse_spec(model: str, screenshots: str, resolution: str, budgets: str, compressors: str, attn: str,
               decode_steps: int, dtype: str, mlp_chunk: str = "0", vision: str = "per-image",
               prefill: str = "full", flops: bool = True) -> BenchSpec:
    """Validate every option before any work; each error names its option."""
    import starkv

    if model not in available_models():
        raise MemoryBenchError(f"--model: unknown model {model!r}; known: {', '.join(available_models())}")
    shots = _ints(screenshots, "--screenshots")
    if any(n < 1 for n in shots):
        raise MemoryBenchError(f"--screenshots: must be >= 1, got {screenshots!r}")
    if resolution == "max":
        size = MAX_RESOLUTION
    else:
        match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", str(resolution))
        if not match or int(match.group(1)) < 28 or int(match.group(2)) < 28:
            raise MemoryBenchError(f"--resolution: expected WIDTHxHEIGHT (each >= 28 pixels) or 'max', got "
                                   f"{resolution!r}")
        size = (int(match.group(1)), int(match.group(2)))
    try:
        bud = tuple(float(b) for b in str(budgets).split(",") if b.strip())
    except ValueError:
        raise MemoryBenchError(f"--budgets: expected numbers separated by commas, got {budgets!r}") from None
    if not bud or any(not 0 < b <= 100 for b in bud):
        raise MemoryBenchError(f"--budgets: every budget must be in (0, 100] percent, got {budgets!r}")
    comps = tuple(starkv.available()) if str(compressors).strip() == "all" else \
        tuple(c.strip() for c in str(compressors).split(",") if c.strip())
    unknown = [c for c in comps if c not in starkv.available()]
    if not comps or unknown:
        raise MemoryBenchError(f"--compressors: unknown {unknown or compressors!r}; registered: "
                               f"{', '.join(starkv.available())}")
    impls = tuple(a.strip() for a in str(attn).split(",") if a.strip())
    if not impls or any(a not in ATTN for a in impls):
        raise MemoryBenchError(f"--attn: expected {' or '.join(ATTN)} (comma-separated), got {attn!r}")
    if decode_steps < 1:
        raise MemoryBenchError(f"--decode-steps: must be >= 1, got {decode_steps}")
    if dtype not in DTYPES:
        raise MemoryBenchError(f"--dtype: expected one of {sorted(DTYPES)}, got {dtype!r}")
    chunks = _ints(mlp_chunk, "--mlp-chunk")
    if any(c < 0 for c in chunks):
        raise MemoryBenchError(f"--mlp-chunk: tokens per MLP slice must be >= 0 (0: off), got {mlp_chunk!r}")
    if vision not in ("per-image", "batch"):
        raise MemoryBenchError(f"--vision: expected per-image or batch, got {vision!r}")
    prefills = tuple(p.strip() for p in str(prefill).split(",") if p.strip())
    if not prefills or any(p not in PREFILLS for p in prefills):
        raise MemoryBenchError(f"--prefill: expected full or chunked (comma-separated), got {prefill!r}")
    return BenchSpec(model, shots, size, bud, comps, impls, decode_steps, dtype, chunks, vision == "per-image",
                     tuple(dict.fromkeys(PREFILLS[p] for p in prefills)), flops)


@dataclass
class ModelFacts:
    """What the simulation needs: the config (marker ids set to the tokenizer's) and the processor."""

    config: Any
    processor: Any
    generation_config: Any = None
    tokens: dict[str, int] = field(default_factory=dict)


def load_facts(model: str, config_file: str | Path | None = None) -> ModelFacts:
    """The vendored config (or the tiny one) and the offline processor at the model's pixel limits.

    ``config_file``: a checkpoint's own ``config.json`` instead of the vendored one (``starkv-eval plan``).
    """
    from transformers import GenerationConfig, Qwen2_5_VLConfig

    from pipeline.models.loader import (
        UITARS_MAX_PIXELS,
        UITARS_MIN_PIXELS,
        load_processor,
        set_image_pixel_limits,
    )
    from pipeline.models.tiny import ensure_tiny_model

    folder = ensure_tiny_model()
    processor = load_processor(folder)
    tok = processor.tokenizer
    tokens = {name: tok.convert_tokens_to_ids(f"<|{name}|>")
              for name in ("vision_start", "vision_end", "vision_pad", "image_pad", "video_pad", "im_end")}
    if model == "tiny" and config_file is None:
        config = Qwen2_5_VLConfig.from_pretrained(str(folder), local_files_only=True)
    else:
        data = json.loads(Path(config_file or CONFIG_DIR / f"{model}.json").read_text())
        data.pop("_comment", None)
        config = Qwen2_5_VLConfig(**data)
        set_image_pixel_limits(processor.image_processor, UITARS_MIN_PIXELS, UITARS_MAX_PIXELS)
        # the offline tokenizer numbers the markers differently; the ids only select positions
        config.vision_start_token_id, config.vision_end_token_id = tokens["vision_start"], tokens["vision_end"]
        config.vision_token_id, config.image_token_id = tokens["vision_pad"], tokens["image_pad"]
        config.video_token_id = tokens["video_pad"]
    generation = GenerationConfig(eos_token_id=None, pad_token_id=tokens["im_end"], do_sample=False)
    return ModelFacts(config, processor, generation, tokens)


def prompt_inputs(processor, screenshots: int, size: tuple[int, int]):
    """Processor output (real tensors) and layout for the agent's computer-use prompt with N screenshots.

    The N - 1 past screenshots are history turns (each with a short past action), the last is current,
    exactly as the pipeline builds a step's prompt.
    """
    from PIL import Image

    from pipeline.agent.history import HistoryConfig, build_messages, format_history_text
    from pipeline.agent.prompts import render_prompt
    from starkv import PromptLayout

    prompt = render_prompt("computer", "Open the settings page and turn on dark mode.")
    images = [Image.new("RGB", size, (200 + 10 * (i % 5), 220, 235)) for i in range(screenshots)]
    texts = [format_history_text(k + 1, "Thought: open the menu.\nAction: click(start_box='(100,200)')")
             for k in range(screenshots - 1)]
    messages, images = build_messages(prompt, images, texts, HistoryConfig(image_slots=screenshots))
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = dict(processor(text=[text], images=images, return_tensors="pt"))
    tok = processor.tokenizer
    layout = PromptLayout.from_input_ids(inputs["input_ids"][0].tolist(),
                                         tok.convert_tokens_to_ids("<|vision_start|>"),
                                         tok.convert_tokens_to_ids("<|vision_end|>"))
    return inputs, layout


def _owns_storage(t) -> bool:
    return t is None or (t.is_contiguous() and t.storage_offset() == 0
                         and t.untyped_storage().nbytes() == t.numel() * t.element_size())


@contextlib.contextmanager
def _vision_once(model, tracker, cache: dict | None, key, meter: FlopMeter | None = None,
                 replayed: FlopTally | None = None) -> Iterator[None]:
    """Run the vision tower for the first row of a prompt only; later rows replay its figures.

    The tower does not see the compressor, and every row enters it in the same state (nothing
    compressor-specific has run yet), so its rise above that state, the bytes per part at its top, its
    flops and its output shapes are the same for every row: the replay adds them without the (slow on fake
    tensors) per-window attention, and later rows are figured exactly as if it had run. ``meter`` (the
    step's flop count) gives the tower's flops; ``replayed`` collects those of the replayed calls, which
    the meter never sees.
    """
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    visual = getattr(getattr(model, "model", model), "visual", None)
    if cache is None or visual is None:
        yield
        return
    previous = vars(visual).get("forward")
    current = visual.forward
    fields = ("last_hidden_state", "pooler_output")

    def record(hidden_states, grid_thw, key, **kwargs):
        tracker.begin_probe()
        with region_flops(meter) as tower:
            out = current(hidden_states, grid_thw=grid_thw, **kwargs)
        rise, counts, part = tracker.end_probe()
        tensors = [getattr(out, f, None) for f in fields]
        distinct = len({id(t.untyped_storage()) for t in tensors if t is not None}) == sum(t is not None for t in tensors)
        if distinct and all(_owns_storage(t) for t in tensors) and not (out.hidden_states or out.attentions):
            cache[key] = (rise, counts, part, [None if t is None else (tuple(t.shape), t.dtype) for t in tensors],
                          tower.flops)
        return out

    def replay(hidden_states, grid_thw, key, **kwargs):
        rise, counts, part, shapes, flops = cache[key]
        tracker.replay_probe(rise, counts, part)
        if replayed is not None:
            replayed.flops += flops
        made = [None if s is None else torch.empty(s[0], dtype=s[1]) for s in shapes]
        return BaseModelOutputWithPooling(**dict(zip(fields, made)))

    def dispatch(hidden_states, grid_thw, **kwargs):
        # the figures depend on the screenshots' grids only (a chunked prefill calls once per chunk)
        call_key = (*key, tuple(tuple(g) for g in grid_thw.tolist()))
        return (replay if call_key in cache else record)(hidden_states, grid_thw, call_key, **kwargs)

    visual.forward = dispatch
    try:
        yield
    finally:
        if previous is None:
            del visual.forward
        else:
            visual.forward = previous


def simulate(facts: ModelFacts, inputs: dict[str, Any], layout, compressor: str | Any, budget: float, attn: str,
             decode_steps: int, dtype: torch.dtype, mlp_chunk: int = 0, per_image: bool = True,
             vision_cache: dict | None = None, prefill_mode: str = "full", flops: bool = True) -> dict[str, Any]:
    """One row: the step's exact memory on fake tensors (no data is computed) and, with ``flops``, the
    prefill's flops (torch's flop counter, shapes only): ``prefill_flops`` of the model (vision tower,
    decoder, the last position's logits), ``compress_flops`` of the compressor's selection and gather, and
    ``compress_flops_ratio``, the one over the other.

    ``compressor``: a registered name (its default parameters) or a built instance (a job's parameters).
    ``vision_cache``: shared by the rows of one prompt, so the vision tower runs once (see
    :func:`_vision_once`); None runs it every time.
    """
    import starkv
    from pipeline.memory.accounting import track_step
    from pipeline.memory.lowmem import chunked_mlp, vision_per_image
    from pipeline.memory.simulate import build_fake_model, fake_session, real_rope_index
    from pipeline.step.chunked_prefill import chunked_generate
    from pipeline.step.measure import PrefillFlops

    if per_image and isinstance(inputs.get("pixel_values"), torch.Tensor):  # as pipeline.step.engine does
        inputs = {**inputs, "pixel_values": inputs["pixel_values"].to(dtype)}
    with torch.inference_mode(), fake_session() as session:
        model = build_fake_model(copy.deepcopy(facts.config), dtype, attn)
        model.generation_config = copy.deepcopy(facts.generation_config)
        fake_inputs = session.to_fake(inputs)
        tracked = track_step(model, fake_inputs)
        replayed = FlopTally() if flops else None  # the vision tower's flops where its run is replayed
        meter = FlopMeter() if flops else None
        with real_rope_index(model, session), \
                starkv.attach(model, starkv.build(compressor) if isinstance(compressor, str) else compressor,
                              budget, layout, flop_meter=meter) as att, \
                chunked_mlp(model, mlp_chunk), vision_per_image(model, per_image), \
                (PrefillFlops(model, meter) if meter is not None else contextlib.nullcontext()) as counted, \
                tracked as account, \
                _vision_once(model, tracked.tracker, vision_cache, (attn, per_image, str(dtype)), meter, replayed):
            if prefill_mode == "full":
                model.generate(**fake_inputs, max_new_tokens=decode_steps, do_sample=False)
            else:  # the opt-in approximation (pipeline.step.chunked_prefill), D greedy steps like generate's
                chunked_generate(model, fake_inputs, att, layout, decode_steps)
        unknown = session.shadows.unknown_reads
    row = {**account.row_fields(), "kv_bytes": att.kv_bytes, "kv_bytes_full": att.kv_bytes_full,
           "kept_tokens": att.kept_tokens, "unknown_reads": unknown}
    if flops:
        prefill = counted.flops + replayed.flops - att.compress_flops
        row.update(prefill_flops=prefill, compress_flops=att.compress_flops,
                   compress_flops_ratio=att.compress_flops / prefill if prefill else 0.0)
    return row


def run_bench(spec: BenchSpec, echo=lambda *_: None) -> list[dict[str, Any]]:
    """Every (screenshots, attention, MLP slice, prefill mode, compressor, budget) row of ``spec``, in that order."""
    from pipeline.config import PrefillMode
    from pipeline.memory.simulate import unsimulated

    facts = load_facts(spec.model)
    dtype = DTYPES[spec.dtype] if spec.model != "tiny" else torch.float32
    rows = []
    for shots in spec.screenshots:
        inputs, layout = prompt_inputs(facts.processor, shots, spec.resolution)
        vision_cache: dict = {}  # the tower runs once per prompt (and attention/dtype/vision mode)
        image_tokens = sum(e - s for s, e in layout.image_spans)
        for attn, chunk, prefill in ((a, c, p) for a in spec.attn for c in spec.mlp_chunks for p in spec.prefills):
            for comp in spec.compressors:
                for budget in spec.budgets:
                    row = {"model": spec.model, "compressor": comp, "budget": budget, "screenshots": shots,
                           "resolution": f"{spec.resolution[0]}x{spec.resolution[1]}", "attn_implementation": attn,
                           "dtype": str(dtype).removeprefix("torch."), "mode": PrefillMode.parse(prefill).label,
                           "prefill_mode": prefill,
                           "prompt_tokens": int(inputs["input_ids"].shape[1]), "image_tokens": image_tokens,
                           "decode_steps": spec.decode_steps, "mlp_chunk_tokens": chunk,
                           "vision": "per-image" if spec.vision_per_image else "batch", "error": None}
                    try:
                        row.update(simulate(facts, inputs, layout, comp, budget, attn, spec.decode_steps, dtype,
                                            chunk, spec.vision_per_image, vision_cache, prefill, spec.flops))
                    except ValueError as err:  # e.g. eager attention with a layer-varying compressor
                        row["error"] = str(err)
                    except Exception as err:  # noqa: BLE001 - the row says why; the other rows go on
                        row["error"] = unsimulated(err) or f"{type(err).__name__}: {err}"[:300]
                    echo(row)
                    rows.append(row)
    return rows


def flop_units(rows: list[dict[str, Any]]) -> tuple[float, str, float, str]:
    """Scales and names of the prefill and selection flop columns: TFLOP and GFLOP when a prefill reaches
    a TFLOP (a 7B model), else GFLOP and MFLOP."""
    big = max((r.get("prefill_flops") or 0 for r in rows), default=0) >= 1e12
    return (1e12, "TFLOP", 1e9, "GFLOP") if big else (1e9, "GFLOP", 1e6, "MFLOP")


def format_rows(rows: list[dict[str, Any]]) -> str:
    """A fixed-width table (GiB, or MiB for small models) with the prefill's and the selection's flops and the
    parts that held each peak."""
    big = max((r.get("peak_above_weights_bytes") or 0 for r in rows), default=0) >= 1024 ** 3
    gib, unit = (1024 ** 3, "GiB") if big else (1024 ** 2, "MiB")
    pre_scale, pre_unit, sel_scale, sel_unit = flop_units(rows)
    head = (f"{'compressor':<12}{'budget':>7}{'shots':>6}{'attn':>6}{'chunk':>6}{'tokens':>8}{'peak>W':>9}{'prefill':>9}"
            f"{'decode':>9}{'KV':>8}{pre_unit:>10}{'sel ' + sel_unit:>12}{'sel/pre %':>11}  peak held by ({unit})")
    lines = [head, "-" * len(head)]
    for r in rows:
        if r.get("error"):
            lines.append(f"{r['compressor']:<12}{r['budget']:>7g}{r['screenshots']:>6}{r['attn_implementation']:>6}"
                         f"  error: {r['error']}")
            continue
        name = r["compressor"] + ("~" if r.get("mode") == "approx_chunked" else "")
        parts = json.loads(r["peak_breakdown_json"])
        held = ", ".join(f"{k} {v / gib:.2f}" for k, v in sorted(parts.items(), key=lambda kv: -kv[1]) if v >= gib / 100)
        lines.append(
            f"{name:<12}{r['budget']:>7g}{r['screenshots']:>6}{r['attn_implementation']:>6}"
            f"{r['mlp_chunk_tokens']:>6}{r['prompt_tokens']:>8}{r['peak_above_weights_bytes'] / gib:>9.2f}{r['peak_prefill_bytes'] / gib:>9.2f}"
            f"{r['peak_decode_bytes'] / gib:>9.2f}{r['kv_bytes'] / gib:>8.2f}{_flops(r, 'prefill_flops', pre_scale, 10)}"
            f"{_flops(r, 'compress_flops', sel_scale, 12)}{_ratio(r)}  {r['peak_phase']}/{r['peak_part']}: {held}")
    if rows and not rows[0].get("error"):
        lines.append(f"({unit} above the weights, {rows[0]['weights_bytes'] / gib:.2f} {unit}; exact live tensor bytes on "
                     f"fake tensors, {rows[0]['dtype']})")
    if any("prefill_flops" in r for r in rows):
        lines.append(f"({pre_unit}: the prefill's model flops; sel: the compressor's selection and gather; torch's flop "
                     "counter on fake tensors: matmuls, convolutions and attention, 2 per multiply-add)")
    if any(r.get("mode") == "approx_chunked" for r in rows):
        lines.append("(~: --prefill chunked, an approximation: the cache is compressed after each history screenshot)")
    return "\n".join(lines)


def _flops(row: dict[str, Any], key: str, scale: float, width: int) -> str:
    return f"{row[key] / scale:>{width}.2f}" if key in row else f"{'-':>{width}}"


def _ratio(row: dict[str, Any]) -> str:
    return f"{100 * row['compress_flops_ratio']:>11.4f}" if "compress_flops_ratio" in row else f"{'-':>11}"


def plot_rows(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Bars of the prefill and decode peaks and the kept KV per row (one PNG)."""
    from matplotlib.figure import Figure

    ok = [r for r in rows if not r.get("error")]
    labels = [f"{unit_label(r['compressor'], r['budget'])}\n{r['screenshots']} shots, {r['attn_implementation']}"
              + (f", MLP/{r['mlp_chunk_tokens']}" if r["mlp_chunk_tokens"] else "")
              + (", chunked (approx.)" if r.get("mode") == "approx_chunked" else "") for r in ok]
    fig = Figure(figsize=(max(6, 1.2 * len(ok) + 2), 4.5), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    gib = 1024 ** 3
    xs = range(len(ok))
    for offset, key, name in ((-0.27, "peak_prefill_bytes", "peak prefill"), (0.0, "peak_decode_bytes", "peak decode"),
                              (0.27, "kv_bytes", "KV after prefill")):
        ax.bar([x + offset for x in xs], [r[key] / gib for r in ok], width=0.26, label=name)
    ax.set_xticks(list(xs))
    ax.set_xticklabels(labels, fontsize="small")
    ax.set_ylabel("GiB above the weights")
    ax.set_title(f"{ok[0]['model'] if ok else ''}: simulated step memory (exact, fake tensors)", fontsize="medium")
    ax.legend(fontsize="small")
    ax.grid(True, axis="y", alpha=0.3)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out
