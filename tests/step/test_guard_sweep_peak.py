"""A shared sweep's row reports the step's prefill peak, never less than what any part of the step held.

The unit of a shared sweep ran no prefill of its own, but its cache came out of the shared one, so its
``peak_prefill_bytes`` is the higher of two exact figures (README, "Memory"; ``MemoryAccount.with_prefill_of``):
the shared prefill's peak (every layer's full cache plus the records) and the unit's own accounted block
before its decode (the records held, its selection and gathered cache). The test takes both figures as
they are measured and checks the row against ``max`` of them, and against the same unit's per-unit run:
the shared prefill holds every layer's full cache where a per-unit step holds compressed ones, so a shared
row's prefill peak is never below the per-unit one.
"""

from __future__ import annotations

import pytest

import pipeline.step.sweep as sweep
import starkv
from pipeline.config import AgentConfig
from pipeline.metrics.units import Unit
from pipeline.step.engine import EpisodeRunner
from tests.step.tiny_setup import tiny_episode

#: snapkv at two budgets (decoded as one batch: 15 + 45 <= 100 %) and the budget-free full cache (decoded
#: alone: it counts 100 %), so both the batched decode and ``unit_from_prefill`` fill rows
UNITS = (("snapkv", 15.0), ("snapkv", 45.0), ("full", 30.0))


def _units():
    return [(starkv.build(name), Unit(run_id="r", compressor=name, budget=b, model="tiny")) for name, b in UNITS]


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tmp_path_factory):
    return tiny_episode(tiny_model_dir, tmp_path_factory.mktemp("guard-peak"), steps=2, seed=11)


def test_shared_row_prefill_peak_is_the_higher_of_shared_prefill_and_own_block(setup, monkeypatch):
    loaded, bench, episode = setup
    runner = EpisodeRunner(loaded, bench, AgentConfig(image_slots=2, history_source="ground_truth"),
                           max_new_tokens=2)  # exact memory accounting on (the default)

    shared_peaks: list[int] = []  # one per step: the shared prefill's own exact prefill peak
    own_peaks: dict[str, int] = {}  # step_key -> the unit's own accounted block's prefill-phase peak
    inner_prefill, inner_fill = sweep.shared_prefill, sweep.fill_from_prefill

    def spy_prefill(*args, **kwargs):
        prefill = inner_prefill(*args, **kwargs)
        shared_peaks.append(prefill.account.prefill.bytes)
        return prefill

    def spy_fill(row, prefill, att, account, *args, **kwargs):
        own_peaks[row["step_key"]] = account.prefill.bytes
        return inner_fill(row, prefill, att, account, *args, **kwargs)

    monkeypatch.setattr(sweep, "shared_prefill", spy_prefill)
    monkeypatch.setattr(sweep, "fill_from_prefill", spy_fill)
    shared = sweep.run_sweep(runner, episode, _units())
    monkeypatch.undo()
    per_unit = [runner.run(episode, comp, unit) for comp, unit in _units()]

    assert len(shared_peaks) == len(episode.steps)  # one shared prefill per step, all units in it
    assert all(p > 0 for p in shared_peaks)
    # both ways a shared row is filled ran: the batch (snapkv) and a unit decoding alone (full)
    assert [[r["decode_shared"] for r in rows] for rows in shared] == [[True, True], [True, True], [False, False]]
    for rows_s, rows_u in zip(shared, per_unit):
        for step, (s, u) in enumerate(zip(rows_s, rows_u)):
            assert s["error"] is None and u["error"] is None, (s["error"], u["error"])
            assert s["prefill_shared"] and not u["prefill_shared"]
            key = s["step_key"]
            own = own_peaks[key]
            # never below the shared prefill's own peak: every unit's cache came out of it
            assert s["peak_prefill_bytes"] >= shared_peaks[step], key
            # exactly the higher of the two accounted blocks (neither the lower one nor the unit's alone)
            assert s["peak_prefill_bytes"] == max(shared_peaks[step], own), key
            # never below what the same unit's own per-unit step held in its prefill
            assert s["peak_prefill_bytes"] >= u["peak_prefill_bytes"] > 0, key
            # the overall peak covers the prefill peak
            assert s["peak_above_weights_bytes"] >= s["peak_prefill_bytes"], key
