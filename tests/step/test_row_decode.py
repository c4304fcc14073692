"""A batched decode of a sweep's units gives every unit exactly the tokens of its own ``generate``.

Units with different kept lengths per layer (PyramidKV, StreamingLLM, SnapKV, STaR-KV), a logits processor
from the generation config (repetition penalty), rows that end at different tokens, the fallback where
batched linears are not exact, and the batch's memory (every unit's cache is live in its decode peak).
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

import pipeline.step.row_decode as row_decode
import starkv
from pipeline.benchmarks.common.storage import open_screenshot
from pipeline.config import AgentConfig
from pipeline.metrics.units import Unit
from pipeline.step.engine import EpisodeRunner
from pipeline.step.prompt import StepHistory
from pipeline.step.row_decode import decode_rows, rows_exact
from pipeline.step.sweep import (
    Member,
    decode_batches,
    greedy_settings,
    run_sweep,
    shared_prefill,
    unit_from_prefill,
)
from starkv.shared import compress_record
from tests.step.tiny_setup import tiny_episode

SAME = ("prompt_tokens", "kept_tokens", "kv_bytes", "generated_tokens", "raw_output", "prediction", "correct",
        "score", "error", "step_key")
# budgets add up to under 100 %: one decode batch (pipeline.step.sweep.decode_batches)
SPECS = (("snapkv", 15.0), ("pyramidkv", 15.0), ("starkv", 25.0), ("streamingllm", 25.0), ("guikv", 15.0))


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tmp_path_factory):
    return tiny_episode(tiny_model_dir, tmp_path_factory.mktemp("rows"), steps=3, seed=11)


@pytest.fixture
def generation(setup):
    """The tiny model's generation config, restored after the test (tests change its processors and ends)."""
    config = setup[0].model.generation_config
    saved = {key: copy.deepcopy(getattr(config, key)) for key in ("repetition_penalty", "eos_token_id")}
    yield config
    for key, value in saved.items():
        setattr(config, key, value)


def _units():
    return [(starkv.build(name), Unit("r", name, budget, "tiny")) for name, budget in SPECS]


def _step_tokens(runner: EpisodeRunner, episode, step_index: int = 1):
    """Every unit's generated token ids for one step: alone (``generate``) and as rows of one batch."""
    loaded = runner.loaded
    step = episode.steps[step_index]
    history = StepHistory.for_agent(runner.agent)
    for past in episode.steps[:step_index]:
        history.add(past, open_screenshot(past.image_path), "", "ground_truth")
    image = open_screenshot(step.image_path)
    text, images = runner.prompt(episode, step, image, history)
    units = _units()
    prefill = shared_prefill(runner, text, images, [c for c, _ in units], runner.new_row(episode, step, units[0][1]))
    length = prefill.inputs["input_ids"].shape[1]
    alone = []
    for comp, unit in units:
        row = runner.new_row(episode, step, unit)
        unit_from_prefill(runner, step, image, prefill, comp, unit, row)
        alone.append(row)
    caches, kept = [], []
    with torch.inference_mode():
        for comp, unit in _units():  # fresh instances: the same episode state as the units above had
            att, holders = compress_record(loaded.model, prefill.record, comp, unit.budget)
            caches.append([(h.keys, h.values) for h in holders])
            kept.append([h.keys.shape[-2] for h in holders])
        rows = decode_rows(loaded.model, prefill.inputs["input_ids"], prefill.record.output.logits[:, -1, :],
                           prefill.rope_deltas, caches, runner.max_new_tokens, greedy_settings(runner, prefill))
    tokenizer = loaded.processor.tokenizer
    batched = [tokenizer.decode(r, skip_special_tokens=False) for r in rows]
    own = [r["raw_output"] for r in alone]
    return own, batched, rows, kept, length, alone


def _plain(text: str) -> str:
    for special in ("<|im_end|>", "<|endoftext|>"):
        text = text.replace(special, "")
    return text


def test_batched_rows_equal_each_units_own_generate(setup, generation):
    loaded, bench, episode = setup
    runner = EpisodeRunner(loaded, bench, AgentConfig(image_slots=3), max_new_tokens=12, memory_accounting=False)
    own, batched, rows, kept, _, alone = _step_tokens(runner, episode)
    assert [_plain(b) for b in batched] == own
    assert [len(r) for r in rows] == [a["generated_tokens"] for a in alone]
    assert len({tuple(k) for k in kept}) >= 3, "the units should keep different cache lengths"
    assert len(set(kept[1])) > 1, "PyramidKV should keep different lengths per layer"

    # a logits processor of the generation config (generate applies it per unit; the batch must too)
    generation.repetition_penalty = 1.8
    own_p, batched_p, *_ = _step_tokens(runner, episode)
    assert [_plain(b) for b in batched_p] == own_p
    assert own_p != own, "the repetition penalty changed nothing; the test needs a stronger one"


def test_rows_end_where_each_unit_alone_ends(setup, generation):
    """An end token that some units produce early: those rows leave the batch, the others decode on."""
    loaded, bench, episode = setup
    runner = EpisodeRunner(loaded, bench, AgentConfig(image_slots=3), max_new_tokens=10, memory_accounting=False)
    _, _, rows, *_ = _step_tokens(runner, episode)
    candidates = [tok for r in rows for tok in r[1:]]
    for end in candidates:  # the first end token that splits the units' lengths
        generation.eos_token_id = [end]
        own, batched, ended, _, _, alone = _step_tokens(runner, episode)
        lengths = [len(r) for r in ended]
        if len(set(lengths)) > 1:
            break
    else:
        pytest.fail("no end token split the units' lengths")
    assert [_plain(b) for b in batched] == own
    assert lengths == [a["generated_tokens"] for a in alone]
    assert any(r[-1] == end for r in ended) and min(lengths) < runner.max_new_tokens


def test_sweep_batches_decode_and_accounts_every_cache(setup):
    """A shared sweep decodes its units as one batch (``decode_shared``), with the rows of per-unit runs; the
    batch's decode peak holds every unit's cache, and the same figure is in each of its rows."""
    loaded, bench, episode = setup
    episode = dataclasses.replace(episode, steps=episode.steps[:2])
    runner = EpisodeRunner(loaded, bench, AgentConfig(image_slots=2), max_new_tokens=4)
    per_unit = [runner.run(episode, comp, unit) for comp, unit in _units()]
    shared = run_sweep(runner, episode, _units())
    for rows_a, rows_b in zip(per_unit, shared):
        assert [{k: r[k] for k in SAME} for r in rows_a] == [{k: r[k] for k in SAME} for r in rows_b]
        assert all(r["prefill_shared"] and r["decode_shared"] for r in rows_b)
    for step in range(len(episode.steps)):
        batch = [rows[step] for rows in shared]
        assert len({r["peak_decode_bytes"] for r in batch}) == 1 and len({r["decode_s"] for r in batch}) == 1
        assert batch[0]["peak_decode_bytes"] >= sum(r["kv_bytes"] for r in batch)
        assert len({r["compress_s"] for r in batch}) == len(batch)  # each unit's own selection


def test_layers_whose_batched_product_is_not_exact_run_row_by_row(setup, monkeypatch):
    """A batched product one ulp off the per-row one is caught; layers that are not exact run one
    ``F.linear`` per row, and the decode stays batched and exact."""
    loaded, bench, episode = setup
    episode = dataclasses.replace(episode, steps=episode.steps[:1])
    runner = EpisodeRunner(loaded, bench, AgentConfig(image_slots=1), max_new_tokens=3, memory_accounting=False)
    per_unit = [runner.run(episode, comp, unit) for comp, unit in _units()]

    def one_ulp_off(x, w, b):
        return torch.nextafter(row_decode._per_row(x, w, b), torch.tensor(float("inf")))

    with monkeypatch.context() as patch:
        patch.setattr(row_decode, "_EXACT", {})
        patch.setattr(row_decode, "_row_linear", one_ulp_off)
        assert not rows_exact(loaded.model, 3) and not any(row_decode._EXACT.values())

    batched_calls = []
    monkeypatch.setattr(row_decode, "_exact", lambda mod, rows: False)
    monkeypatch.setattr(row_decode, "_row_linear", lambda *a: batched_calls.append(1))
    shared = run_sweep(runner, episode, _units())
    assert not batched_calls and all(r["decode_shared"] for rows in shared for r in rows)
    for rows_a, rows_b in zip(per_unit, shared):
        assert [{k: r[k] for k in SAME} for r in rows_a] == [{k: r[k] for k in SAME} for r in rows_b]


def test_decode_batches_hold_at_most_one_full_cache():
    """Units are packed in order into batches whose budgets add up to at most 100 % (a budget-free unit
    counts 100 %), so a batched decode never holds more KV than the shared prefill's records."""
    def member(name: str, budget: float) -> Member:
        return Member(Unit("r", name, budget, "tiny"), starkv.build(name), history=None)

    units = [member("full", 10), member("snapkv", 10), member("snapkv", 20), member("starkv", 50),
             member("starkv", 30), member("guikv", 5)]
    batches = decode_batches(units)
    assert [[(m.unit.compressor, m.unit.budget) for m in b] for b in batches] == [
        [("full", 10)], [("snapkv", 10), ("snapkv", 20), ("starkv", 50)], [("starkv", 30), ("guikv", 5)]]
    assert decode_batches(units, limit=1000.0) == [units]
