"""Run a step that may call the model several times (a scroll shows another screenshot): one row per step.

Only steps that declare views (``pipeline.agent.views``) come here; every other step is one call. Each call
is an ordinary step call of ``EpisodeRunner.call`` (prompt, prefill, compression at the unit's budget, decode,
parse, score), so the compressor sees every call as a prefill + compress of its own: STaR-KV's per-episode
state (temporal prior, MI profile) advances once per call, exactly as it would for that many steps. The
calls after the first depend on the unit's own output, so such a step is never run on a shared prefill
(``pipeline.step.sweep`` runs it per unit).

The row is the step's: prediction, raw output and score are the last call's (the action the driver
scores); ``prefill_s``, ``decode_s``, ``compress_s``, ``generated_tokens`` and the flop counts are summed
over the calls; ``peak_mem_bytes`` is the largest; prompt / cache columns are the last call's; ``model_calls`` counts
the calls and ``meta_json["calls"]`` lists ``{view, action_type, direction}`` per call.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pipeline.agent.actions import ParsedAction
from pipeline.agent.views import ScrollViews, ViewWalk
from pipeline.benchmarks.common.storage import open_screenshot

if TYPE_CHECKING:
    from PIL.Image import Image

    from pipeline.benchmarks.common.base import Episode, Step
    from pipeline.metrics.units import Unit
    from pipeline.step.prompt import StepHistory
    from starkv import Compressor

SUMMED = ("prefill_s", "decode_s", "compress_s", "generated_tokens", "prefill_flops", "compress_flops")
INTEGER = ("generated_tokens", "prefill_flops", "compress_flops")


def run_views(call: Callable[..., str], episode: Episode, step: Step, image: Image, compressor: Compressor,
              unit: Unit, history: StepHistory, row: dict[str, Any]) -> str:
    """All calls of a views step into ``row``, each one ``call`` (``EpisodeRunner.call``: prompt, prefill,
    compression, decode, parse, score); returns the last call's output text."""
    views = ScrollViews.of(step)
    if views is None:
        raise ValueError(f"step {step.step_index} declares no views")
    walk = ViewWalk(views)
    sums: dict[str, float] = dict.fromkeys(SUMMED, 0)
    peak = 0
    call_step, call_image = step, image
    while True:
        output = call(episode, call_step, call_image, compressor, unit, history, row)
        for key in SUMMED:
            sums[key] += row[key]
        peak = max(peak, int(row["peak_mem_bytes"]))
        action = ParsedAction(**json.loads(row["prediction"]))
        if not walk.record(action):
            break
        call_step = walk.call_step(step)
        call_image = open_screenshot(call_step.image_path)
    row.update({k: int(v) if k in INTEGER else float(v) for k, v in sums.items()})
    row.update(peak_mem_bytes=peak, model_calls=walk.calls)
    meta = json.loads(row["meta_json"])
    meta["calls"] = walk.trace
    row["meta_json"] = json.dumps(meta, default=str)
    return output


__all__ = ["run_views"]
