"""A shared sweep reports each unit's own exact peak: its step replayed alone on the episode's last step
equals that unit's per-unit run of the step, and the replay changes nothing else of the row."""

from __future__ import annotations

import pytest

import starkv
from pipeline.config import AgentConfig
from pipeline.metrics.units import Unit
from pipeline.step.engine import EpisodeRunner
from pipeline.step.sweep import run_sweep
from tests.step.tiny_setup import tiny_episode

#: full at two budgets: the second takes the first replay's peak (a budget-free unit replays once per class)
UNITS = (("snapkv", 10.0), ("starkv", 50.0), ("full", 100.0), ("full", 30.0))
#: columns a replay may not touch (besides the one it fills) and that a shared row shares with its per-unit run
SAME = ("prediction", "raw_output", "correct", "kept_tokens", "kv_bytes", "kv_bytes_full", "generated_tokens")


def _units():
    return [(starkv.build(name), Unit(run_id="r", compressor=name, budget=b, model="tiny")) for name, b in UNITS]


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tmp_path_factory):
    return tiny_episode(tiny_model_dir, tmp_path_factory.mktemp("own-peak"), steps=3, seed=5)


def test_shared_rows_carry_each_units_own_peak_on_the_last_step(setup):
    loaded, bench, episode = setup
    runner = EpisodeRunner(loaded, bench, AgentConfig(image_slots=2, history_source="ground_truth"),
                           max_new_tokens=3)
    alone = {u.key: runner.run(episode, comp, u) for comp, u in _units()}
    shared = dict(zip([u.key for _, u in _units()], run_sweep(runner, episode, _units())))
    last = len(episode.steps) - 1
    for key, rows in shared.items():
        own = alone[key]
        assert all(r["error"] is None for r in rows + own)
        # per-unit steps: the own peak is the step's peak
        assert [r["own_peak_above_weights_bytes"] for r in own] == [r["peak_above_weights_bytes"] for r in own]
        # shared steps: the sweep's peak, the own peak only where replayed (the last step)
        assert all(r["prefill_shared"] for r in rows)
        assert [r["own_peak_above_weights_bytes"] for r in rows[:last]] == [0] * last
        assert rows[last]["own_peak_above_weights_bytes"] == own[last]["peak_above_weights_bytes"] > 0
        for a, b in zip(rows, own):
            assert {c: a[c] for c in SAME} == {c: b[c] for c in SAME}, key
    peaks = {k: rows[last]["own_peak_above_weights_bytes"] for k, rows in shared.items()}
    # a tighter budget holds less: the units' own peaks are not the sweep's one figure
    assert peaks["snapkv@10"] < peaks["full@100"]
