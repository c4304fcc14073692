"""Run every (compressor, budget) unit of one episode in lockstep, sharing each step's prefill where exact.

A step's prefill is the same for every compressor and budget: each layer's attention runs on the full
cache and compression only changes what is stored afterwards. So the units whose prompt for the step is
the same text (always with ground-truth history; with model history until their outputs diverge) get
one prefill (``starkv.shared``); each then selects with its own compressor (its own episode state) and
gathers its own cache, and the units decode from the shared first token as the rows of one batch
(``pipeline.step.row_decode``, exact: a layer whose batched product is not bit-for-bit the per-row one runs
row by row; batches hold at most one full cache's worth of budgets). Rows are the
rows of a per-unit run, one per unit and step, plus ``prefill_shared``, ``compress_s`` and
``decode_shared``. Units whose compressor opts out
(``Compressor.shares_prefill``), or a unit alone with its prompt, run the per-unit step unchanged, and so
does every unit on a step that may take several model calls (``pipeline.step.multicall``: the calls after the
first follow the unit's own output).
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field
from typing import Any

import torch

from pipeline.agent.views import ScrollViews
from pipeline.benchmarks.common.base import Episode, Step
from pipeline.metrics.units import Unit
from pipeline.step.engine import EpisodeRunner
from pipeline.step.faults import inject as inject_fault
from pipeline.step.measure import PhaseTimer, fill_measures, guarded, step_error
from pipeline.step.prompt import StepHistory
from pipeline.step.row_decode import decode_rows, greedy_setup
from starkv import Compressor
from starkv.budget import capacity
from starkv.shared import PrefillRecord, compress_record, record_prefill, replay_prefill

#: processor inputs only the vision tower reads (it ran once, in the shared prefill)
PIXEL_INPUTS = ("pixel_values", "pixel_values_videos")


@dataclass(eq=False)
class Member:
    """One unit of the sweep: its compressor instance (own episode state), history and rows."""

    unit: Unit
    compressor: Compressor
    history: StepHistory
    rows: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class SharedPrefill:
    """What the units of one prompt share: inputs, the record, and the prefill's time and memory."""

    inputs: dict[str, Any]
    record: PrefillRecord
    prefill_s: float
    peak_bytes: int
    mem_device: str
    account: Any  # MemoryAccount of the prefill, or None without accounting
    rope_deltas: torch.Tensor | None = None  # the prompt's M-RoPE offset (decode positions of a batched decode)
    prefill_flops: int = 0  # the model's flops in the prefill (0: not counted)


def run_sweep(runner: EpisodeRunner, episode: Episode, units: list[tuple[Compressor, Unit]],
              share: bool = True) -> list[list[dict[str, Any]]]:
    """Rows of every unit (in ``units`` order) for ``episode``; each compressor instance is its unit's own."""
    if len({id(c) for c, _ in units}) != len(units):
        raise ValueError("run_sweep needs one compressor instance per unit (episode state is per unit)")
    share = share and runner.prefill_mode.shares_prefill
    members = [Member(unit, comp, StepHistory.for_agent(runner.agent)) for comp, unit in units]
    for m in members:
        m.compressor.reset()  # state never leaks across episodes (or actors)
    for step in episode.steps:
        _sweep_step(runner, episode, step, members, share)
    return [m.rows for m in members]


def _sweep_step(runner: EpisodeRunner, episode: Episode, step: Step, members: list[Member], share: bool) -> None:
    if ScrollViews.of(step) is not None:  # later calls follow each unit's own output: never shared
        for m in members:
            m.rows.append(runner.run_step(episode, step, m.compressor, m.unit, m.history))
        return
    rows = {m: runner.new_row(episode, step, m.unit) for m in members}
    outputs: dict[Member, str] = {}
    image = runner.screenshot(episode, step, list(rows.values()))
    if image is not None:
        groups: dict[str, tuple[list, list[Member]]] = {}
        for m in members:
            def prompt(m=m) -> str:
                inject_fault(rows[m]["step_key"])  # test-only; a no-op unless STARKV_FAULT_* is set
                text, images = runner.prompt(episode, step, image, m.history)
                groups.setdefault(text, (images, []))[1].append(m)
                return ""
            outputs[m] = guarded(prompt, rows[m])
        for text, (images, group) in groups.items():
            shared = [m for m in group if m.compressor.shares_prefill] if share else []
            shared = shared if len(shared) > 1 else []
            for m in group:
                if m not in shared:
                    outputs[m] = guarded(lambda m=m: runner.call(
                        episode, step, image, m.compressor, m.unit, m.history, rows[m]), rows[m])
            if shared:
                alone = own_peak_copies(runner, episode, step, shared)
                _run_shared(runner, step, image, text, images, shared, rows, outputs)
                replay_own_peaks(runner, episode, step, image, alone, rows)
    for m in members:
        m.rows.append(rows[m])
        if image is not None:
            m.history.add(step, image, outputs.get(m, ""), runner.agent.history_source)


def own_peak_copies(runner: EpisodeRunner, episode: Episode, step: Step,
                    group: list[Member]) -> list[tuple[Member, Compressor]]:
    """On the last step of an episode (its longest prompt), a copy of each unit's compressor as it stands
    before the step, so the step can be replayed alone without advancing the unit's own state."""
    if not runner.memory_accounting or step is not episode.steps[-1]:
        return []
    return [(m, copy.deepcopy(m.compressor)) for m in group]


def replay_own_peaks(runner: EpisodeRunner, episode: Episode, step: Step, image,
                     alone: list[tuple[Member, Compressor]], rows: dict[Member, dict[str, Any]]) -> None:
    """Each unit's step run alone (``EpisodeRunner.call`` on the copy): its exact own peak above the
    weights goes into its row's ``own_peak_above_weights_bytes``; nothing else of the replay is kept.
    A budget-free compressor (full) runs the same step at every budget, so it replays once per class and
    its other budgets take that peak (the rule ``_copy_decode`` follows for the decode)."""
    budget_free: dict[tuple, int] = {}
    for m, compressor in alone:
        if rows[m]["error"] is not None:
            continue
        if compressor.budget_free and computation(compressor) in budget_free:
            rows[m]["own_peak_above_weights_bytes"] = budget_free[computation(compressor)]
            continue
        scratch = runner.new_row(episode, step, m.unit)
        guarded(lambda m=m, compressor=compressor, scratch=scratch: runner.call(
            episode, step, image, compressor, m.unit, m.history, scratch), scratch)
        if scratch["error"] is None:
            rows[m]["own_peak_above_weights_bytes"] = scratch["peak_above_weights_bytes"]
            if compressor.budget_free:
                budget_free[computation(compressor)] = scratch["peak_above_weights_bytes"]


def computation(compressor: Compressor) -> tuple:
    """What a budget-free unit computes at any budget: its class and how it stores the cache (a full cache
    stored quantized is not the full cache)."""
    return type(compressor), compressor.storage


def _run_shared(runner: EpisodeRunner, step: Step, image, text: str, images: list, group: list[Member],
                rows: dict[Member, dict[str, Any]], outputs: dict[Member, str]) -> None:
    try:
        prefill = shared_prefill(runner, text, images, [m.compressor for m in group], rows[group[0]])
    except Exception as err:  # the prefill every unit of the group would have run failed: each row says so
        message = step_error(err)
        for m in group:
            rows[m]["error"] = message
        return
    for m in group:
        rows[m].update(prompt_tokens=rows[group[0]]["prompt_tokens"], num_images=rows[group[0]]["num_images"])
    # a budget-free compressor (full) computes the same thing at every budget: one of its units decodes
    own: list[Member] = []
    copies: list[Member] = []
    classes: set[tuple] = set()
    for m in group:
        if m.compressor.budget_free and computation(m.compressor) in classes:
            copies.append(m)
            continue
        classes.add(computation(m.compressor))
        own.append(m)
    # a unit with storage options decodes alone: its cache layers are not rows of a batched decode
    rows_of = [m for m in own if m.compressor.storage.default]
    greedy = greedy_settings(runner, prefill) if runner.batch_decode and len(rows_of) > 1 else None
    batches = decode_batches(rows_of) if greedy is not None else [[m] for m in rows_of]
    for batch in batches + [[m] for m in own if not m.compressor.storage.default]:
        if len(batch) > 1:
            _decode_batch(runner, step, image, prefill, batch, rows, outputs, greedy)
            continue
        for m in batch:
            outputs[m] = guarded(lambda m=m: unit_from_prefill(runner, step, image, prefill, m.compressor, m.unit,
                                                               rows[m]), rows[m])
    for m in copies:
        donor = next((d for d in own if computation(d.compressor) == computation(m.compressor)
                      and rows[d]["error"] is None), None)
        if donor is not None:
            outputs[m] = guarded(lambda m=m, donor=donor: _copy_decode(rows[donor], outputs[donor], m, rows[m]),
                                 rows[m])
            continue
        outputs[m] = guarded(lambda m=m: unit_from_prefill(runner, step, image, prefill, m.compressor, m.unit,
                                                           rows[m]), rows[m])
        own.append(m)  # decoded itself: the donor of the class's later units


#: the columns that name a unit; every other column of a budget-free unit's row is its donor's
UNIT_COLUMNS = ("run_id", "compressor", "budget", "model", "unit_key", "step_key")


def _copy_decode(donor_row: dict[str, Any], donor_output: str, member: Member, row: dict[str, Any]) -> str:
    """A budget-free unit's step is the same computation as ``donor_row``'s (same compressor class, same
    prompt, the same uncompressed cache): take its results instead of decoding again. Times and memory are
    the one decode's, as ``prefill_s`` is the one prefill's; ``decode_shared`` says so."""
    capacity(1, member.unit.budget)  # a budget the unit itself would reject still fails, naming it
    row.update({k: v for k, v in donor_row.items() if k not in UNIT_COLUMNS}, decode_shared=True)
    return donor_output


def shared_prefill(runner: EpisodeRunner, text: str, images: list, compressors: list[Compressor],
                   row: dict[str, Any]) -> SharedPrefill:
    """One prefill (full cache) of the prompt, recording what ``compressors`` need; fills ``row``'s prompt columns."""
    loaded = runner.loaded
    inputs, layout = runner.encode(text, images, row)
    runner.reset_positions()
    meter = runner.flop_meter()
    around = (record_prefill(loaded.model, compressors, layout, flop_meter=meter), runner.model_contexts())
    with runner.measure(inputs, around=around, flops=meter) as m:
        record = m.entered[0]
        runner.generate(inputs, 1)  # the one forward is the prefill; its first token is every unit's
        if m.account is not None:
            m.account.tracked.keep(record.tensors())  # the records are this step's memory until the units finish
    rope_deltas = getattr(getattr(loaded.model, "model", None), "rope_deltas", None)
    return SharedPrefill(inputs=inputs, record=record, prefill_s=m.timer.prefill_s, peak_bytes=m.peak.peak_bytes,
                         mem_device=m.peak.device, account=m.account,
                         rope_deltas=None if rope_deltas is None else rope_deltas.clone(),
                         prefill_flops=runner.model_flops(m))


def unit_from_prefill(runner: EpisodeRunner, step: Step, image, prefill: SharedPrefill, compressor: Compressor,
                      unit: Unit, row: dict[str, Any]) -> str:
    """One unit's step from a shared prefill: select and gather (``compress_s``), decode, parse, score."""
    loaded = runner.loaded
    inputs = {k: v for k, v in prefill.inputs.items() if k not in PIXEL_INPUTS}
    meter = runner.flop_meter()
    with runner.measure(inputs, held=prefill.record.tensors(), timed=False, flops=meter) as m:
        # a pruning unit runs its own later layers here: under the model's switches, as in its own prefill
        with runner.model_contexts() if compressor.pruning else contextlib.nullcontext():
            att, holders = compress_record(loaded.model, prefill.record, compressor, unit.budget, flop_meter=meter)
        own = att.resumed.output if att.resumed is not None else None
        runner.reset_positions()
        with runner.model_contexts(), replay_prefill(loaded.model, prefill.record, holders, own), \
                PhaseTimer(loaded.model, loaded.device) as timer:
            out = runner.generate(inputs, runner.max_new_tokens)
        del holders, own  # the unit's cache dies with its decode, as in a per-unit step
    fill_from_prefill(row, prefill, att, m.account, m.peak, timer.total_s)
    return runner.finish(step, image, out, int(prefill.inputs["input_ids"].shape[1]), row)


#: the KV a batched decode may hold, in percent of one full cache: the units' budgets (100 for a budget-free
#: one) add up to at most this per batch, so the batch never holds more than the records already do
BATCH_CACHE_PERCENT = 100.0


def decode_batches(members: list[Member], limit: float = BATCH_CACHE_PERCENT) -> list[list[Member]]:
    """Consecutive units packed into batches whose budgets add up to at most ``limit`` percent.

    A head-adaptive unit (per-KV-head storage, ``starkv.storage.ragged``) decodes alone from the shared prefill:
    the batched decode's per-row caches are dense tensors. So does a pruning unit: its first token comes from
    its own prefill's logits, not the shared one's."""
    batches: list[list[Member]] = []
    total = 0.0
    for m in members:
        if m.compressor.head_adaptive or m.compressor.pruning:
            batches.append([m])
            total = limit  # the next unit starts a new batch
            continue
        share = 100.0 if m.compressor.budget_free else min(100.0, float(m.unit.budget))
        if not batches or total + share > limit:
            batches.append([])
            total = 0.0
        batches[-1].append(m)
        total += share
    return batches


def greedy_settings(runner: EpisodeRunner, prefill: SharedPrefill) -> tuple[Any, set[int]] | None:
    """``generate``'s greedy settings (logits processors, end tokens) for this prompt when its units can
    decode as the rows of one batch; None when they cannot (M-RoPE offset unknown, or a transformers
    without that internal): then each decodes alone."""
    if prefill.rope_deltas is None:
        return None
    try:
        return greedy_setup(runner.loaded.model, prefill.inputs["input_ids"], runner.max_new_tokens,
                            runner.loaded.processor.tokenizer.pad_token_id)
    except Exception:  # noqa: BLE001
        return None


def fill_from_prefill(row: dict[str, Any], prefill: SharedPrefill, att, account, peak, decode_s: float,
                      **flags: Any) -> None:
    """A unit's columns after its decode from a shared prefill (alone or in a batch): its selection's
    figures, memory with the shared prefill's peak, the shared prefill's time and the decode's."""
    if account is not None and prefill.account is not None:
        account = account.with_prefill_of(prefill.account)
    prefill_s, prefill_flops = prefill.prefill_s, prefill.prefill_flops
    resumed = att.resumed
    if resumed is not None:  # a pruning unit: the shared layers up to its layer K, then its own on fewer tokens
        prefill_s += resumed.seconds
        prefill_flops = resumed.prefill_flops if resumed.prefill_flops is not None else prefill_flops
    fill_measures(row, att, account, peak_bytes=max(prefill.peak_bytes, peak.peak_bytes), mem_device=peak.device,
                  prefill_s=prefill_s, decode_s=decode_s, prefill_flops=prefill_flops, prefill_shared=True, **flags)


def _decode_batch(runner: EpisodeRunner, step: Step, image, prefill: SharedPrefill, members: list[Member],
                  rows: dict[Member, dict[str, Any]], outputs: dict[Member, str], greedy: tuple[Any, set[int]]) -> None:
    """Each unit selects and gathers its own cache (``compress_s``), then all decode as one batch
    (``pipeline.step.row_decode``: every unit's tokens exactly as alone). ``decode_s`` and the decode-phase
    memory are the batch's, the same in each of its rows (``decode_shared``), as ``prefill_s`` is the
    shared prefill's: the records and every unit's cache are live together."""
    loaded = runner.loaded
    inputs = {k: v for k, v in prefill.inputs.items() if k not in PIXEL_INPUTS}
    prompt_ids = prefill.inputs["input_ids"]
    selected: list[tuple[Member, Any]] = []
    caches: list[list[tuple[torch.Tensor, torch.Tensor]]] = []
    tokens: list[list[int]] = []
    meter = runner.flop_meter()
    with runner.measure(inputs, held=prefill.record.tensors(), timed=False, flops=meter) as measure:
        for m in members:
            def select(m=m) -> str:
                att, holders = compress_record(loaded.model, prefill.record, m.compressor, m.unit.budget,
                                               flop_meter=meter)
                selected.append((m, att))
                caches.append([(h.keys, h.values) for h in holders])
                return ""
            guarded(select, rows[m])  # a unit whose selection fails says so in its row; the others decode
        if measure.account is not None:
            measure.account.tracked.start_decode()
        error = None
        with runner.model_contexts(), PhaseTimer(loaded.model, loaded.device) as timer:
            try:
                if caches:  # else every unit's selection failed: nothing to decode
                    tokens = decode_rows(loaded.model, prompt_ids, prefill.record.output.logits[:, -1, :],
                                         prefill.rope_deltas, caches, runner.max_new_tokens, greedy)
            except Exception as err:  # the decode every unit of the batch shared failed: each row says so
                error = step_error(err)
        caches.clear()  # the units' caches die with the decode, inside the accounted block
    for (m, att), new in zip(selected, tokens or [None] * len(selected)):
        row = rows[m]
        fill_from_prefill(row, prefill, att, measure.account, measure.peak, timer.total_s,
                          decode_shared=len(selected) > 1)
        if error is not None:
            row["error"] = error
            continue
        out = torch.cat([prompt_ids.cpu(), torch.tensor([new], dtype=prompt_ids.dtype)], dim=1)
        outputs[m] = guarded(lambda row=row, out=out: runner.finish(step, image, out, int(prompt_ids.shape[1]), row),
                             row)
