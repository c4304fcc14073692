"""A shared-prefill sweep gives every unit exactly what its own per-unit run gives.

For every registered compressor (plus the layer-adaptive STaR-KV extension and a plugin that declares
nothing), for prompts of 1, 3 and 5 screenshots, over whole episodes (STaR-KV's MI prior is active from
the 2nd step, so per-unit episode state is exercised): the kept indices of every layer, the KV bytes, the
generated tokens and the scored rows are identical between ``run_sweep`` and ``EpisodeRunner.run``.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import pipeline.step.sweep as sweep_module
import starkv
import starkv.hook as hook
from pipeline.config import AgentConfig
from pipeline.metrics.units import Unit
from pipeline.models.loader import ModelSpec, load_model
from pipeline.step.engine import EpisodeRunner
from pipeline.step.sweep import run_sweep
from tests.step.tiny_setup import tiny_episode

SAME = ("prompt_tokens", "num_images", "kept_tokens", "kv_bytes", "kv_bytes_full", "generated_tokens",
        "raw_output", "prediction", "action_type", "correct", "score", "reason", "error", "step_key")
BUDGETS = (15.0, 45.0)


def _specs() -> list[tuple[str, str, dict]]:
    import tests.plugin_compressor  # noqa: F401 - registers a method that declares no hidden-state need

    specs = [(name, name, {}) for name in starkv.available() if name != "test_reversed_snapkv"]
    specs = [(label, name, {"mi_profile_steps": 1, "mi_ramp_steps": 1} if name == "starkv" else params)
             for label, name, params in specs]
    specs.append(("starkv_adaptive", "starkv", {"entropy_adaptive_budget": True, "mi_profile_steps": 1}))
    specs.append(("plugin", "test_reversed_snapkv", {}))
    return specs


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tmp_path_factory):
    return tiny_episode(tiny_model_dir, tmp_path_factory.mktemp("sweep"), steps=5, seed=5)


@pytest.fixture
def kept(monkeypatch):
    """Kept indices per compressor instance, in call order (every gather goes through ``_write``)."""
    log: dict[int, list[torch.Tensor]] = {}
    inner = hook._LayerHook._write

    def write(self, layer, ctx, idx, *rest):
        copy = [i.clone() for i in idx] if isinstance(idx, list) else None if idx is None else idx.clone()
        log.setdefault(id(self.att.compressor), []).append(copy)  # a list: one row per KV head (head-adaptive)
        return inner(self, layer, ctx, idx, *rest)

    monkeypatch.setattr(hook._LayerHook, "_write", write)
    return log


def _units(specs, budgets=BUDGETS):
    return [(starkv.build(name, **params), Unit(run_id="r", compressor=label, budget=b, model="tiny"))
            for label, name, params in specs for b in budgets]


def _sweep_units(specs):
    """SnapKV at both budgets (two instances of one class in a sweep), every other method at one of them."""
    return [(starkv.build(name, **params), Unit(run_id="r", compressor=label, budget=b, model="tiny"))
            for i, (label, name, params) in enumerate(specs)
            for b in (BUDGETS if name == "snapkv" else BUDGETS[i % 2:i % 2 + 1])]


def _same_indices(a: list, b: list) -> bool:
    def same(x, y) -> bool:
        if isinstance(x, list) or isinstance(y, list):
            return isinstance(x, list) and isinstance(y, list) and len(x) == len(y) and all(map(torch.equal, x, y))
        return (x is None and y is None) or (x is not None and y is not None and torch.equal(x, y))

    return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("slots", [1, 5])
def test_shared_sweep_equals_per_unit_runs(setup, kept, slots):
    """slots 1: one screenshot, the history as text; slots 5: prompts of 1, 2, 3, 4 and 5 screenshots."""
    loaded, bench, episode = setup
    episode = dataclasses.replace(episode, steps=episode.steps[:max(2, slots)])  # 2 steps at least: state
    # accounting off: it only watches allocations (test_shared_rows_account_the_records runs with it)
    runner = EpisodeRunner(loaded, bench, AgentConfig(image_slots=slots, history_source="ground_truth"),
                           max_new_tokens=3, memory_accounting=False)
    specs = _specs()
    alone = _sweep_units(specs)
    per_unit = [runner.run(episode, comp, unit) for comp, unit in alone]
    together = _sweep_units(specs)
    shared = run_sweep(runner, episode, together)
    assert {r["num_images"] for r in shared[0]} == ({1} if slots == 1 else {1, 2, 3, 4, 5})
    for (ca, unit), (cb, _), rows_a, rows_b in zip(alone, together, per_unit, shared):
        assert [{k: r[k] for k in SAME} for r in rows_a] == [{k: r[k] for k in SAME} for r in rows_b], unit.key
        assert all(r["error"] is None for r in rows_b), (unit.key, [r["error"] for r in rows_b if r["error"]][:1])
        # every method shares (a pruning one, FastV, the layers up to its K, then runs its own on fewer tokens)
        assert all(r["prefill_shared"] for r in rows_b)
        assert all(r["prefill_flops"] == a["prefill_flops"] for a, r in zip(rows_a, rows_b) if cb.pruning), unit.key
        assert not any(r["prefill_shared"] for r in rows_a)
        assert _same_indices(kept[id(ca)], kept[id(cb)]), unit.key
        assert any(i is not None for i in kept[id(cb)]) or unit.compressor == "full", unit.key
    # the units decoded as rows of batches (pipeline.step.row_decode): the equality above covers that path
    assert sum(r["decode_shared"] for rows in shared for r in rows) > len(shared)
    # one prefill per step: the units' prefill times are one figure per step (a pruning unit adds its own layers)
    for step in range(len(episode.steps)):
        times = {rows[step]["prefill_s"] for (cb, _), rows in zip(together, shared) if not cb.pruning}
        assert len(times) == 1
        assert all(rows[step]["prefill_s"] > min(times) for (cb, _), rows in zip(together, shared) if cb.pruning)


def test_model_history_shares_only_identical_prompts(setup, kept):
    """With the model's own outputs as history, units share a step only while their prompts agree."""
    loaded, bench, episode = setup
    episode = dataclasses.replace(episode, steps=episode.steps[:3])
    runner = EpisodeRunner(loaded, bench, AgentConfig(image_slots=3, history_source="model"), max_new_tokens=4,
                           memory_accounting=False)
    specs = [("snapkv", "snapkv", {}), ("streamingllm", "streamingllm", {}), ("full", "full", {})]
    alone = _units(specs)
    per_unit = [runner.run(episode, comp, unit) for comp, unit in alone]
    shared = run_sweep(runner, episode, _units(specs))
    for rows_a, rows_b in zip(per_unit, shared):
        assert [{k: r[k] for k in SAME} for r in rows_a] == [{k: r[k] for k in SAME} for r in rows_b]
    assert all(rows[0]["prefill_shared"] for rows in shared)  # step 1 has no history: one prompt for all
    outputs = [tuple(r["raw_output"] for r in rows) for rows in shared]
    assert len(set(outputs)) > 1, "the units' outputs never diverged; the test needs a smaller budget"
    for step in range(1, len(episode.steps)):
        prompts = {}
        for rows in shared:
            prompts.setdefault(tuple(r["raw_output"] for r in rows[:step]), []).append(rows[step])
        for group in prompts.values():  # same past outputs: same prompt; shared exactly when not alone
            assert all(r["prefill_shared"] == (len(group) > 1) for r in group)


def test_share_off_and_opt_out_run_per_unit(setup, monkeypatch):
    loaded, bench, episode = setup
    episode = dataclasses.replace(episode, steps=episode.steps[:2])
    runner = EpisodeRunner(loaded, bench, AgentConfig(image_slots=2), max_new_tokens=2, memory_accounting=False)
    specs = [("snapkv", "snapkv", {}), ("random", "random", {})]
    off = run_sweep(runner, episode, _units(specs), share=False)
    assert not any(r["prefill_shared"] for rows in off for r in rows)
    monkeypatch.setattr(type(starkv.build("random")), "shares_prefill", False)
    mixed = run_sweep(runner, episode, _units(specs))
    assert [all(r["prefill_shared"] for r in rows) for rows in mixed] == [True, True, False, False]
    for rows_a, rows_b in zip(off, mixed):
        assert [{k: r[k] for k in SAME} for r in rows_a] == [{k: r[k] for k in SAME} for r in rows_b]


def test_full_cache_at_several_budgets_decodes_once_per_step(setup, monkeypatch):
    """The full cache is budget-free: a sweep decodes it once per step and its other budgets take that
    decode's results (rows equal to their own per-unit runs, ``decode_shared`` set, memory the same)."""
    loaded, bench, episode = setup
    episode = dataclasses.replace(episode, steps=episode.steps[:2])
    runner = EpisodeRunner(loaded, bench, AgentConfig(image_slots=2), max_new_tokens=3)
    specs = [("full", "full", {}), ("snapkv", "snapkv", {})]
    per_unit = [runner.run(episode, comp, unit) for comp, unit in _units(specs)]
    calls = []
    inner = runner.generate
    monkeypatch.setattr(runner, "generate", lambda *a, **kw: calls.append(1) or inner(*a, **kw))
    # counted without the last step's own-peak replays (each unit alone, tests/step/test_own_peak.py)
    monkeypatch.setattr(sweep_module, "own_peak_copies", lambda *a: [])
    shared = run_sweep(runner, episode, _units(specs))
    # per step: the shared prefill and one full-cache decode (alone: a budget-free unit fills a decode batch,
    # pipeline.step.sweep.decode_batches) for both budgets; snapkv's two budgets decode as one batch of rows
    assert len(calls) == len(episode.steps) * 2
    for rows_a, rows_b in zip(per_unit, shared):
        assert [{k: r[k] for k in SAME} for r in rows_a] == [{k: r[k] for k in SAME} for r in rows_b]
    assert [[r["decode_shared"] for r in rows] for rows in shared] == [[False, False], [True, True],
                                                                        [True, True], [True, True]]
    memory = ("peak_above_weights_bytes", "peak_decode_bytes", "peak_breakdown_json", "decode_s", "prefill_s")
    for a, b in zip(shared[0], shared[1]):
        assert {k: a[k] for k in memory} == {k: b[k] for k in memory}
        assert (a["budget"], b["budget"]) == BUDGETS and a["unit_key"] != b["unit_key"]
    # a budget the unit itself rejects still fails by name, although it would have nothing to decode
    bad = run_sweep(runner, episode, [(starkv.build("full"), Unit("r", "full", 15.0, "tiny")),
                                      (starkv.build("full"), Unit("r", "full", 0.0, "tiny"))])
    assert all(r["error"] is None for r in bad[0]) and all("budget" in (r["error"] or "") for r in bad[1])


def test_one_compressor_instance_per_unit(setup):
    loaded, bench, episode = setup
    runner = EpisodeRunner(loaded, bench, AgentConfig(image_slots=1), max_new_tokens=2)
    comp = starkv.build("snapkv")
    with pytest.raises(ValueError, match="one compressor instance per unit"):
        run_sweep(runner, episode, [(comp, Unit("r", "snapkv", b, "tiny")) for b in BUDGETS])


def test_shared_rows_account_the_records(setup):
    """The records held for the sweep are in every unit's peak; times split prefill/compress/decode."""
    loaded, bench, episode = setup
    episode = dataclasses.replace(episode, steps=episode.steps[:2])
    runner = EpisodeRunner(loaded, bench, AgentConfig(image_slots=3), max_new_tokens=2)
    rows = run_sweep(runner, episode, _units([("snapkv", "snapkv", {}), ("guikv", "guikv", {}), ("fastv", "fastv", {})]))
    import json

    for unit_rows in rows:
        for r in unit_rows[1:]:
            decode = json.loads(r["peak_breakdown_json"]) if r["peak_phase"] == "decode" else None
            assert r["peak_prefill_bytes"] >= r["kv_bytes_full"]  # the full cache of every layer was live
            assert r["peak_decode_bytes"] > r["kv_bytes_full"]  # the records (full K/V) stay held in decode
            assert decode is None or decode.get("sweep_record", 0) >= r["kv_bytes_full"]
            peak = json.loads(r["peak_breakdown_json"])
            assert sum(peak.values()) == r["peak_above_weights_bytes"]  # every byte of the peak has a part
            assert r["compress_s"] > 0 and r["decode_s"] > 0 and r["prefill_s"] > 0


def test_micro_agent_sweep_equals_per_unit_runs():
    """The trained micro agent (real outputs, 5 screenshots of history) on the smoke job's first episode."""
    from pathlib import Path

    import yaml

    from pipeline.config import make_benchmark, parse_config
    from pipeline.run.job import load_episodes

    job = yaml.safe_load((Path(__file__).resolve().parents[2] / "jobs" / "smoke.yaml").read_text())
    cfg = parse_config({**job, "benchmark": {**job["benchmark"], "max_episodes": 1}})
    bench = make_benchmark(cfg)
    (episode,) = load_episodes(cfg, bench)
    loaded = load_model(ModelSpec(path="micro", device="cpu", dtype="float32"))
    runner = EpisodeRunner(loaded, bench, cfg.agent, cfg.model.max_new_tokens, memory_accounting=False)
    specs = [("snapkv", "snapkv", {}), ("starkv", "starkv", {"mi_profile_steps": 1, "mi_ramp_steps": 1})]
    budgets = (10.0, 20.0)
    per_unit = [runner.run(episode, comp, unit) for comp, unit in _units(specs, budgets)]
    shared = run_sweep(runner, episode, _units(specs, budgets))
    for rows_a, rows_b in zip(per_unit, shared):
        assert [{k: r[k] for k in SAME} for r in rows_a] == [{k: r[k] for k in SAME} for r in rows_b]
        assert all(r["prefill_shared"] and r["error"] is None for r in rows_b)
    assert max(r["num_images"] for r in shared[0]) == min(5, len(episode.steps))
    assert len({tuple(r["raw_output"] for r in rows) for rows in shared}) > 1  # compression changed outputs


def test_hidden_rows_instead_of_norms(setup, monkeypatch):
    """A method that declares the current screenshot's hidden rows (not their norms) gets exactly those."""
    from baselines.multimodal.guikv import GUIKV

    loaded, bench, episode = setup
    monkeypatch.setattr(GUIKV, "hidden_states_needed", "current_image")
    episode = dataclasses.replace(episode, steps=episode.steps[:3])
    runner = EpisodeRunner(loaded, bench, AgentConfig(image_slots=3), max_new_tokens=2, memory_accounting=False)
    specs = [("guikv", "guikv", {}), ("starkv", "starkv", {"mi_profile_steps": 1})]
    per_unit = [runner.run(episode, comp, unit) for comp, unit in _units(specs)]
    shared = run_sweep(runner, episode, _units(specs))
    for rows_a, rows_b in zip(per_unit, shared):
        assert [{k: r[k] for k in SAME} for r in rows_a] == [{k: r[k] for k in SAME} for r in rows_b]
        assert all(r["prefill_shared"] for r in rows_b)


def test_multi_call_steps_run_per_unit_in_a_sweep(tiny_model_dir, tmp_path):
    """Mind2Web blocks steps (several model calls: the calls after the first follow the unit's own output)
    are never shared: the sweep's rows equal the per-unit runs', call counts included."""
    from pipeline.benchmarks.mind2web.benchmark import Mind2Web
    from tests.benchmarks.test_mind2web_blocks import script_for
    from tests.fixtures.reference import write_mind2web_blocks
    from tests.helpers_model import ScriptedOutputs

    write_mind2web_blocks(tmp_path)
    bench = Mind2Web(str(tmp_path), protocol="reference")
    episode = dataclasses.replace(bench.load()[0], steps=bench.load()[0].steps[:1])  # a1: 4 calls
    loaded = load_model(ModelSpec(path=str(tiny_model_dir), device="cpu", dtype="float32"))
    runner = EpisodeRunner(loaded, bench, AgentConfig(), max_new_tokens=2, memory_accounting=False)
    specs = [("snapkv", "snapkv", {}), ("starkv", "starkv", {"mi_profile_steps": 1, "mi_ramp_steps": 1})]
    with ScriptedOutputs(runner, script_for(loaded)):
        per_unit = [runner.run(episode, comp, unit) for comp, unit in _units(specs, (30.0,))]
        shared = run_sweep(runner, episode, _units(specs, (30.0,)))
    for rows_a, rows_b in zip(per_unit, shared):
        assert [{k: r[k] for k in (*SAME, "model_calls")} for r in rows_a] == \
               [{k: r[k] for k in (*SAME, "model_calls")} for r in rows_b]
        assert [r["model_calls"] for r in rows_b] == [4] and not any(r["prefill_shared"] for r in rows_b)


def test_pruning_unit_counts_its_own_prefill_flops(setup):
    """FastV from the shared prefill: the flops of its own run (the shared layers up to K, its later layers on
    the kept tokens), fewer than the full prefill the other units report."""
    loaded, bench, episode = setup
    episode = dataclasses.replace(episode, steps=episode.steps[:2])
    runner = EpisodeRunner(loaded, bench, AgentConfig(image_slots=3, history_source="ground_truth"),
                           max_new_tokens=2, memory_accounting=False, measure_flops=True)
    specs = [("fastv", "fastv", {}), ("snapkv", "snapkv", {})]
    per_unit = [runner.run(episode, comp, unit) for comp, unit in _units(specs, (20.0,))]
    fastv, snapkv = run_sweep(runner, episode, _units(specs, (20.0,)))
    assert all(r["prefill_shared"] for r in fastv + snapkv)
    assert [r["prefill_flops"] for r in fastv] == [r["prefill_flops"] for r in per_unit[0]]
    assert [r["compress_flops"] for r in fastv] == [r["compress_flops"] for r in per_unit[0]]
    assert [r["prefill_flops"] for r in snapkv] == [r["prefill_flops"] for r in per_unit[1]]
    assert all(0 < f < s for f, s in zip((r["prefill_flops"] for r in fastv), (r["prefill_flops"] for r in snapkv)))
