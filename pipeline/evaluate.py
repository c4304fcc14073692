"""Run one episode through the agent with one compressor at one budget: one result row per step.

Everything that can go wrong with a single step (unreadable screenshot, bad annotation, a model output
that does not parse, an exception or out-of-memory in generate) becomes a row with ``error`` set; the
episode and the run go on.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import traceback
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from pipeline.accounting import MemoryAccount, track_step
from pipeline.agent.coords import smart_resize
from pipeline.agent.history import HistoryConfig
from pipeline.agent.parser import parse_action
from pipeline.agent.step_prompt import StepHistory, step_messages
from pipeline.agent.views import ScrollViews
from pipeline.benchmarks.base import Benchmark, Episode, Step
from pipeline.chunked_prefill import chunked_generate, mode_label
from pipeline.config import AgentConfig
from pipeline.faults import inject as inject_fault
from pipeline.lowmem import chunked_mlp, pixels_in_model_dtype, vision_per_image
from pipeline.memory import peak_memory
from pipeline.models.loader import LoadedModel
from pipeline.multicall import run_views
from starkv import Attachment, Compressor, PromptLayout, attach


@dataclass(frozen=True)
class Unit:
    """What one work item sweeps: a compressor (by label) at a budget, inside one run."""

    run_id: str
    compressor: str
    budget: float
    model: str

    @property
    def key(self) -> str:
        return f"{self.compressor}@{self.budget:g}"


class _PhaseTimer:
    """Times generate's first forward (prefill) apart from the rest (decode) with a model forward hook."""

    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        self.model, self.device = model, device
        self.first_end: float | None = None
        self.start = 0.0

    def __enter__(self) -> _PhaseTimer:
        self._sync()
        self.start = time.perf_counter()
        self.handle = self.model.register_forward_hook(self._on_forward)
        return self

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _on_forward(self, module, args, output) -> None:
        if self.first_end is None:
            self._sync()
            self.first_end = time.perf_counter()

    def __exit__(self, *exc) -> None:
        self._sync()
        self.end = time.perf_counter()
        self.handle.remove()

    @property
    def prefill_s(self) -> float:
        return (self.first_end or self.end) - self.start

    @property
    def decode_s(self) -> float:
        return self.end - (self.first_end or self.end)


def step_error(err: BaseException) -> str:
    """The ``error`` column for a step that raised (an out-of-memory reads as such)."""
    if isinstance(err, torch.cuda.OutOfMemoryError):  # type: ignore[attr-defined]
        torch.cuda.empty_cache()
        return f"out of memory in generate: {str(err).splitlines()[0]}"
    tb = traceback.extract_tb(err.__traceback__)[-1]
    return f"{type(err).__name__}: {err} (at {os.path.basename(tb.filename)}:{tb.lineno})"


def guarded(work, row: dict[str, Any]) -> str:
    """Run a step's work; an exception becomes the row's ``error`` (a failing step is data, not a crash)."""
    try:
        return work()
    except Exception as err:
        row["error"] = step_error(err)
        return ""


def open_screenshot(path: str) -> Image.Image:
    """Open and fully decode a screenshot (fsspec URLs too); a corrupt file raises naming the path."""
    try:
        if "://" in path:
            import fsspec

            with fsspec.open(path, "rb") as fh:
                image = Image.open(fh)
                image.load()
        else:
            with Image.open(path) as raw:
                raw.load()
                image = raw.copy()
    except FileNotFoundError:
        raise ValueError(f"screenshot not found: {path}") from None
    except Exception as err:  # PIL raises several types for corrupt data
        raise ValueError(f"screenshot {path} cannot be decoded: {type(err).__name__}: {err}") from None
    return image.convert("RGB")


class EpisodeRunner:
    """Holds the loaded model and runs episodes step by step with a given compressor and budget."""

    def __init__(self, loaded: LoadedModel, benchmark: Benchmark, agent: AgentConfig, max_new_tokens: int,
                 memory_accounting: bool = True, mlp_chunk_tokens: int = 0, vision_per_image: bool = True,
                 prefill_mode: str = "full", batch_decode: bool = True) -> None:
        self.loaded = loaded
        self.prefill_mode, self.mode = prefill_mode, mode_label(prefill_mode)  # pipeline.chunked_prefill
        self.mlp_chunk_tokens, self.vision_per_image = mlp_chunk_tokens, vision_per_image  # pipeline.lowmem
        self.memory_accounting = memory_accounting  # off only to measure what the accounting costs
        # a shared sweep decodes its units as the rows of one batch where that is exact (pipeline.row_decode);
        # off only to measure what it saves
        self.batch_decode = batch_decode
        self.benchmark = benchmark
        self.agent = agent = agent.resolved(benchmark)  # unset fields take the benchmark's protocol defaults
        self.max_new_tokens = max_new_tokens
        self.history_cfg = HistoryConfig(image_slots=agent.image_slots, text_history=agent.text_history,
                                         source=agent.history_source, system_prompt=benchmark.system_prompt)

    def run(self, episode: Episode, compressor: Compressor, unit: Unit) -> list[dict[str, Any]]:
        compressor.reset()  # state never leaks across episodes (or actors)
        rows: list[dict[str, Any]] = []
        history = StepHistory.for_agent(self.agent)
        for step in episode.steps:
            rows.append(self.run_step(episode, step, compressor, unit, history))
        return rows

    def run_step(self, episode: Episode, step: Step, compressor: Compressor, unit: Unit,
                 history: StepHistory) -> dict[str, Any]:
        """One step's row; the step joins ``history`` when its screenshot could be opened."""
        row, image, output_text = self._run_step(episode, step, compressor, unit, history)
        if image is not None:
            history.add(step, image, output_text, self.agent.history_source)
        return row

    def _base_row(self, episode: Episode, step: Step, unit: Unit) -> dict[str, Any]:
        return {
            "run_id": unit.run_id, "benchmark": episode.benchmark, "episode_id": episode.episode_id,
            "step_index": int(step.step_index), "compressor": unit.compressor, "budget": float(unit.budget),
            "model": unit.model, "unit_key": unit.key,
            "step_key": f"{unit.key}/{episode.episode_id}/{step.step_index}",
            "prediction": "", "action_type": "", "raw_output": "", "correct": False, "score": 0.0,
            "reason": "", "prompt_tokens": 0, "kept_tokens": 0, "generated_tokens": 0, "num_images": 0,
            "kv_bytes": 0, "kv_bytes_full": 0, "peak_mem_bytes": 0, "mem_device": "", "prefill_s": 0.0,
            **MemoryAccount().row_fields(),
            "decode_s": 0.0, "compress_s": 0.0, "prefill_shared": False, "decode_shared": False, "error": None,
            "meta_json": json.dumps(step.meta, default=str), "actor_pid": os.getpid(), "mode": self.mode,
            "model_calls": 0,
        }

    def _run_step(self, episode: Episode, step: Step, compressor: Compressor, unit: Unit,
                  history: StepHistory):
        row = self._base_row(episode, step, unit)
        if step.error:
            row["error"] = step.error
            return row, None, ""
        try:
            image = open_screenshot(step.image_path)
        except ValueError as err:
            row["error"] = f"episode {episode.episode_id} step {step.step_index}: {err}"
            return row, None, ""
        def work() -> str:
            inject_fault(row["step_key"])  # test-only; a no-op unless STARKV_FAULT_* is set
            if ScrollViews.of(step) is not None:  # the model may scroll to other screenshots (pipeline.multicall)
                return run_views(self, episode, step, image, compressor, unit, history, row)
            return self._generate_and_score(episode, step, image, compressor, unit, history, row)

        return row, image, guarded(work, row)

    def _prompt(self, episode, step, image, history) -> tuple[str, list]:
        """The chat text and images of a step (what decides whether two units can share its prefill)."""
        messages, images = step_messages(self.benchmark, self.agent, self.history_cfg, episode, step, image,
                                         history)
        text = self.loaded.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return text, images

    def _encode(self, text: str, images: list, row: dict[str, Any]):
        """Processor inputs and the prompt layout; fills the row's prompt columns."""
        loaded = self.loaded
        inputs = loaded.processor(text=[text], images=images, return_tensors="pt").to(loaded.device)
        if self.vision_per_image:  # the same cast the vision tower does first, done once (pipeline.lowmem)
            inputs = pixels_in_model_dtype(dict(inputs), loaded.model)
        input_ids = inputs["input_ids"]
        layout = PromptLayout.from_input_ids(input_ids[0].tolist(), loaded.vision_start_id, loaded.vision_end_id)
        row["prompt_tokens"] = int(input_ids.shape[1])
        row["num_images"] = layout.num_images
        return inputs, layout

    def _generate_and_score(self, episode, step, image, compressor, unit, history, row) -> str:
        loaded = self.loaded
        inputs, layout = self._encode(*self._prompt(episode, step, image, history), row)
        if hasattr(loaded.model, "model"):
            loaded.model.model.rope_deltas = None
        # the tracker enters after attach, so the compressor's own scratch counts under attention
        tracked = track_step(loaded.model, inputs) if self.memory_accounting else contextlib.nullcontext()
        with torch.inference_mode(), peak_memory(loaded.device) as peak, \
                attach(loaded.model, compressor, unit.budget, layout) as att, \
                self._model_contexts(), tracked as account, _PhaseTimer(loaded.model, loaded.device) as timer:
            out = self._generate(inputs, self.max_new_tokens, att, layout)
        if account is not None:
            row.update(account.row_fields())
        row.update(kept_tokens=att.kept_tokens, kv_bytes=att.kv_bytes, kv_bytes_full=att.kv_bytes_full,
                   peak_mem_bytes=peak.peak_bytes, mem_device=peak.device, prefill_s=timer.prefill_s,
                   compress_s=att.compress_s, decode_s=timer.decode_s)
        return self._finish(step, image, out, int(inputs["input_ids"].shape[1]), row)

    def _model_contexts(self):
        """The low-memory switches every forward of a step runs under (pipeline.lowmem)."""
        stack = contextlib.ExitStack()
        stack.enter_context(chunked_mlp(self.loaded.model, self.mlp_chunk_tokens))
        stack.enter_context(vision_per_image(self.loaded.model, self.vision_per_image))
        return stack

    def _generate(self, inputs, max_new_tokens: int, att: Attachment | None = None,
                  layout: PromptLayout | None = None):
        """``generate`` (exact: a step, a shared sweep's prefill and replays), or with ``att`` and ``layout``
        under ``model.prefill_mode: chunked_compress`` the chunked, compressing prefill (an approximation)."""
        if att is not None and self.prefill_mode == "chunked_compress":
            return chunked_generate(self.loaded.model, inputs, att, layout, max_new_tokens)
        return self.loaded.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                          pad_token_id=self.loaded.processor.tokenizer.pad_token_id)

    def _finish(self, step: Step, image, out, prompt_len: int, row: dict[str, Any]) -> str:
        """Decode the generated tokens, parse the action and score it into the row; returns the output text."""
        loaded = self.loaded
        new_tokens = out[0, prompt_len:]
        output_text = loaded.processor.tokenizer.decode(new_tokens, skip_special_tokens=False)
        for special in ("<|im_end|>", "<|endoftext|>"):
            output_text = output_text.replace(special, "")
        row.update(generated_tokens=int(new_tokens.numel()), raw_output=output_text, model_calls=1)
        width, height = step.meta.get("frame_size") or image.size  # frame_size: pipeline.agent.views
        resized_h, resized_w = smart_resize(height, width, min_pixels=loaded.min_pixels, max_pixels=loaded.max_pixels)
        action = parse_action(output_text, image_size=(width, height), resized_size=(resized_w, resized_h))
        row["action_type"] = action.action_type
        row["prediction"] = json.dumps(action.to_dict(), default=str)
        result = self.benchmark.score(step, action, (width, height))
        row.update(correct=bool(result.correct), score=float(result.score), reason=result.reason or "")
        if result.fields:
            meta = json.loads(row["meta_json"])
            meta["score_fields"] = result.fields
            row["meta_json"] = json.dumps(meta, default=str)
        return output_text


def rows_to_table(rows: list[dict[str, Any]], metadata: dict[str, str] | None = None):
    """Rows -> an Arrow table with one fixed schema (so every Parquet file of a run agrees)."""
    import pyarrow as pa

    table = pa.Table.from_pylist(rows, schema=ROW_SCHEMA) if rows else ROW_SCHEMA.empty_table()
    return table.replace_schema_metadata({**(metadata or {})}) if metadata else table


def _row_schema():
    import pyarrow as pa

    s, i, f, b = pa.string(), pa.int64(), pa.float64(), pa.bool_()
    return pa.schema([
        ("run_id", s), ("benchmark", s), ("episode_id", s), ("step_index", i), ("compressor", s), ("budget", f),
        ("model", s), ("unit_key", s), ("step_key", s), ("prediction", s), ("action_type", s), ("raw_output", s),
        ("correct", b), ("score", f), ("reason", s), ("prompt_tokens", i), ("kept_tokens", i),
        ("generated_tokens", i), ("num_images", i), ("kv_bytes", i), ("kv_bytes_full", i), ("peak_mem_bytes", i),
        ("mem_device", s), ("prefill_s", f), ("decode_s", f), ("error", s), ("meta_json", s), ("actor_pid", i),
        # exact accounting of live tensor storages (pipeline.accounting); peak_mem_bytes above is the
        # device-level figure (CUDA allocator, or CPU RSS high-water mark), labelled by mem_device
        ("weights_bytes", i), ("peak_above_weights_bytes", i), ("peak_prefill_bytes", i),
        ("peak_decode_bytes", i), ("peak_phase", s), ("peak_part", s), ("peak_breakdown_json", s),
        # shared sweeps (pipeline.sweep): prefill_s is then the one prefill the units shared, compress_s the
        # unit's own selection and gather (inside prefill_s when not shared), decode_s its own decode --
        # or, with decode_shared, a decode several units shared: the batch its unit decoded in as one row
        # (pipeline.row_decode; its time and decode peak are the batch's) or the one decode of a
        # budget-free unit (full) the sweep ran at another budget
        ("compress_s", f), ("prefill_shared", b), ("decode_shared", b),
        # "exact", or "approx_chunked" for model.prefill_mode chunked_compress (an approximation)
        ("mode", s),
        # model calls the step took: 1, more when the model scrolled to other screenshots (pipeline.multicall)
        ("model_calls", i),
    ])


ROW_SCHEMA = _row_schema()
