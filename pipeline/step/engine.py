"""The step engine: one agent step of one unit (a compressor at a budget), from prompt to scored row.

``EpisodeRunner`` holds the loaded model and exposes the pieces of a step that every path shares: the
fresh row, the screenshot, the prompt, the encoded inputs, the low-memory contexts, ``generate`` and the
scoring of an output. A per-unit step is ``call``; a shared sweep (``pipeline.step.sweep``), a batched
decode (``pipeline.step.row_decode``) and a multi-call step (``pipeline.step.multicall``) compose the same
pieces, and every path measures through ``pipeline.step.measure``.

Everything that can go wrong with a single step (unreadable screenshot, bad annotation, a model output
that does not parse, an exception or out-of-memory in generate) becomes a row with ``error`` set; the
episode and the run go on.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from PIL import Image

from pipeline.agent.coords import smart_resize
from pipeline.agent.history import HistoryConfig
from pipeline.agent.parser import parse_action
from pipeline.agent.views import ScrollViews
from pipeline.benchmarks.common.base import Benchmark, Episode, Step
from pipeline.benchmarks.common.storage import open_screenshot
from pipeline.config import AgentConfig, PrefillMode
from pipeline.memory.lowmem import chunked_mlp, pixels_in_model_dtype, vision_per_image
from pipeline.metrics.rows import new_row
from pipeline.metrics.units import Unit
from pipeline.models.loader import LoadedModel
from pipeline.step.chunked_prefill import chunked_generate
from pipeline.step.faults import inject as inject_fault
from pipeline.step.measure import fill_measures, guarded, measured
from pipeline.step.multicall import run_views
from pipeline.step.prompt import StepHistory, step_messages
from starkv import Attachment, Compressor, PromptLayout, attach
from starkv.flops import FlopMeter


class EpisodeRunner:
    """Holds the loaded model and runs episodes step by step with a given compressor and budget."""

    def __init__(self, loaded: LoadedModel, benchmark: Benchmark, agent: AgentConfig, max_new_tokens: int,
                 memory_accounting: bool = True, mlp_chunk_tokens: int = 0, vision_per_image: bool = True,
                 prefill_mode: str | PrefillMode = PrefillMode.FULL, batch_decode: bool = True,
                 measure_flops: bool = False) -> None:
        self.loaded = loaded
        self.prefill_mode = PrefillMode.parse(prefill_mode)  # pipeline.step.chunked_prefill
        self.mlp_chunk_tokens, self.vision_per_image = mlp_chunk_tokens, vision_per_image  # pipeline.memory.lowmem
        self.memory_accounting = memory_accounting  # off only to measure what the accounting costs
        # a shared sweep decodes its units as the rows of one batch where that is exact
        # (pipeline.step.row_decode); off only to measure what it saves
        self.batch_decode = batch_decode
        # count the prefill's and the selection's flops (starkv.flops): the compress_flops / prefill_flops columns
        self.measure_flops = measure_flops
        self.benchmark = benchmark
        self.agent = agent = agent.resolved(benchmark)  # unset fields take the benchmark's protocol defaults
        self.max_new_tokens = max_new_tokens
        self.history_cfg = HistoryConfig(image_slots=agent.image_slots, text_history=agent.text_history,
                                         source=agent.history_source, system_prompt=benchmark.system_prompt)

    @property
    def mode(self) -> str:
        """The ``mode`` column: ``exact`` or ``approx_chunked``."""
        return self.prefill_mode.label

    # ------------------------------------------------------------------------------------------ episodes

    def run(self, episode: Episode, compressor: Compressor, unit: Unit) -> list[dict[str, Any]]:
        compressor.reset()  # state never leaks across episodes (or actors)
        history = StepHistory.for_agent(self.agent)
        return [self.run_step(episode, step, compressor, unit, history) for step in episode.steps]

    def run_step(self, episode: Episode, step: Step, compressor: Compressor, unit: Unit,
                 history: StepHistory) -> dict[str, Any]:
        """One step's row; the step joins ``history`` when its screenshot could be opened."""
        row = self.new_row(episode, step, unit)
        image = self.screenshot(episode, step, [row])
        output_text = ""
        if image is not None:
            def work() -> str:
                inject_fault(row["step_key"])  # test-only; a no-op unless STARKV_FAULT_* is set
                if ScrollViews.of(step) is not None:  # the model may scroll to other screenshots
                    return run_views(self.call, episode, step, image, compressor, unit, history, row)
                return self.call(episode, step, image, compressor, unit, history, row)

            output_text = guarded(work, row)
            history.add(step, image, output_text, self.agent.history_source)
        return row

    # ------------------------------------------------------------------------------- pieces of a step

    def new_row(self, episode: Episode, step: Step, unit: Unit) -> dict[str, Any]:
        """The step's row before it runs (``pipeline.metrics.rows``)."""
        return new_row(episode, step, unit, self.mode)

    def screenshot(self, episode: Episode, step: Step, rows: list[dict[str, Any]]) -> Image.Image | None:
        """The step's screenshot, or None with the reason in every row of ``rows`` (a bad annotation, a
        missing or corrupt file)."""
        error = step.error
        image = None
        if not error:
            try:
                image = open_screenshot(step.image_path)
            except ValueError as err:
                error = f"episode {episode.episode_id} step {step.step_index}: {err}"
        if error:
            for row in rows:
                row["error"] = error
        return image

    def prompt(self, episode: Episode, step: Step, image: Image.Image, history: StepHistory) -> tuple[str, list]:
        """The chat text and images of a step (what decides whether two units can share its prefill)."""
        messages, images = step_messages(self.benchmark, self.agent, self.history_cfg, episode, step, image,
                                         history)
        text = self.loaded.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return text, images

    def encode(self, text: str, images: list, row: dict[str, Any]) -> tuple[dict[str, Any], PromptLayout]:
        """Processor inputs and the prompt layout; fills the row's prompt columns."""
        loaded = self.loaded
        inputs = loaded.processor(text=[text], images=images, return_tensors="pt").to(loaded.device)
        if self.vision_per_image:  # the same cast the vision tower does first, done once (pipeline.memory.lowmem)
            inputs = pixels_in_model_dtype(dict(inputs), loaded.model)
        input_ids = inputs["input_ids"]
        layout = PromptLayout.from_input_ids(input_ids[0].tolist(), loaded.vision_start_id, loaded.vision_end_id)
        row["prompt_tokens"] = int(input_ids.shape[1])
        row["num_images"] = layout.num_images
        return inputs, layout

    def reset_positions(self) -> None:
        """Forget the previous prompt's M-RoPE offset before a new generate."""
        if hasattr(self.loaded.model, "model"):
            self.loaded.model.model.rope_deltas = None

    def measure(self, inputs: dict[str, Any], **kwargs: Any):
        """``pipeline.step.measure.measured`` on this runner's model, device and accounting switch."""
        return measured(self.loaded.model, self.loaded.device, inputs, accounting=self.memory_accounting,
                        **kwargs)

    def flop_meter(self) -> FlopMeter | None:
        """A fresh flop meter for one measured block when the run counts flops (``measure_flops``), else None."""
        return FlopMeter() if self.measure_flops else None

    @staticmethod
    def model_flops(m, att: Attachment | None = None) -> int:
        """The model's own prefill flops of a measured block: the count less the selection inside it."""
        if m.flops is None:
            return 0
        return m.flops.flops - (att.compress_flops if att is not None else 0)

    def model_contexts(self) -> contextlib.ExitStack:
        """The low-memory switches every forward of a step runs under (pipeline.memory.lowmem)."""
        stack = contextlib.ExitStack()
        stack.enter_context(chunked_mlp(self.loaded.model, self.mlp_chunk_tokens))
        stack.enter_context(vision_per_image(self.loaded.model, self.vision_per_image))
        return stack

    def generate(self, inputs: dict[str, Any], max_new_tokens: int, att: Attachment | None = None,
                 layout: PromptLayout | None = None):
        """``generate`` (exact: a step, a shared sweep's prefill and replays), or with ``att`` and ``layout``
        under ``model.prefill_mode: chunked_compress`` the chunked, compressing prefill (an approximation)."""
        if att is not None and self.prefill_mode is PrefillMode.CHUNKED_COMPRESS:
            return chunked_generate(self.loaded.model, inputs, att, layout, max_new_tokens)
        return self.loaded.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                          pad_token_id=self.loaded.processor.tokenizer.pad_token_id)

    def call(self, episode: Episode, step: Step, image: Image.Image, compressor: Compressor, unit: Unit,
             history: StepHistory, row: dict[str, Any]) -> str:
        """One model call of a unit's step: prompt, prefill with compression at the unit's budget, decode,
        parse, score, all measured into ``row``; returns the output text."""
        loaded = self.loaded
        inputs, layout = self.encode(*self.prompt(episode, step, image, history), row)
        self.reset_positions()
        meter = self.flop_meter()
        around = (attach(loaded.model, compressor, unit.budget, layout, flop_meter=meter), self.model_contexts())
        with self.measure(inputs, around=around, flops=meter) as m:
            out = self.generate(inputs, self.max_new_tokens, m.entered[0], layout)
        att = m.entered[0]
        fill_measures(row, att, m.account, peak_bytes=m.peak.peak_bytes, mem_device=m.peak.device,
                      prefill_s=m.timer.prefill_s, decode_s=m.timer.decode_s, prefill_flops=self.model_flops(m, att))
        return self.finish(step, image, out, int(inputs["input_ids"].shape[1]), row)

    def finish(self, step: Step, image: Image.Image, out, prompt_len: int, row: dict[str, Any]) -> str:
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
