"""Units with storage options (kv_quant, kv_layout) in a shared-prefill sweep give their per-unit rows.

A shared prefill hands each unit its cache layers through ``starkv.shared.replay_prefill``; such a unit
decodes alone (its layers are no rows of a batched decode), and a full cache stored quantized is not the
full cache (no decode copied between them).
"""

from __future__ import annotations

import dataclasses

import pytest

from pipeline.config import AgentConfig, CompressorConfig
from pipeline.metrics.units import Unit
from pipeline.step.engine import EpisodeRunner
from pipeline.step.sweep import run_sweep
from tests.step.tiny_setup import tiny_episode

SAME = ("prompt_tokens", "num_images", "kept_tokens", "kv_bytes", "kv_bytes_full", "generated_tokens",
        "raw_output", "prediction", "correct", "score", "error", "unit_key", "step_key")
SPECS = [
    CompressorConfig("snapkv"),
    CompressorConfig("snapkv", kv_quant={"bits": 4, "residual_length": 32}),
    CompressorConfig("guikv", kv_layout="per_query_head"),
    CompressorConfig("starkv", kv_layout="per_query_head", kv_quant={"bits": 8}, params={"mi_profile_steps": 1}),
    CompressorConfig("full"),
    CompressorConfig("full", kv_quant={"bits": 2, "residual_length": 0}),
]
BUDGETS = (15.0, 45.0)


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tmp_path_factory):
    return tiny_episode(tiny_model_dir, tmp_path_factory.mktemp("storage-sweep"), steps=2, seed=7)


def _units():
    """Both budgets for the two full caches and the plain SnapKV (two rows of a batched decode), one for the rest."""
    return [(spec.build(), Unit(run_id="r", compressor=spec.display, budget=b, model="tiny"))
            for spec in SPECS for b in (BUDGETS if spec.name == "full" or spec.display == "snapkv" else BUDGETS[:1])]


def test_storage_units_in_a_sweep_equal_their_per_unit_runs(setup):
    loaded, bench, episode = setup
    episode = dataclasses.replace(episode, steps=episode.steps[:2])
    runner = EpisodeRunner(loaded, bench, AgentConfig(image_slots=2, history_source="ground_truth"),
                           max_new_tokens=2, memory_accounting=False)
    per_unit = [runner.run(episode, comp, unit) for comp, unit in _units()]
    shared = run_sweep(runner, episode, _units())
    keys = [rows[0]["unit_key"] for rows in shared]
    assert keys == ["snapkv@15", "snapkv@45", "snapkv@15+int4", "guikv@15+pqh", "starkv@15+pqh+int8", "full@15",
                    "full@45", "full@15+int2", "full@45+int2"]
    for rows_a, rows_b in zip(per_unit, shared):
        assert [{k: r[k] for k in SAME} for r in rows_a] == [{k: r[k] for k in SAME} for r in rows_b]
        assert all(r["error"] is None and r["prefill_shared"] for r in rows_b), [r["error"] for r in rows_b]
    by = {rows[0]["unit_key"]: rows for rows in shared}
    for step in range(len(episode.steps)):
        # per query head: 2 x the bytes at the same budget (G = 2 on the tiny model); quantized: fewer bytes
        assert by["guikv@15+pqh"][step]["kv_bytes"] == 2 * by["snapkv@15"][step]["kv_bytes"]
        assert by["full@15+int2"][step]["kv_bytes"] < by["full@15"][step]["kv_bytes"]
        assert by["snapkv@15+int4"][step]["kv_bytes"] < by["snapkv@15"][step]["kv_bytes"]
    # the budget-free full cache decodes once per class and storage: its 45 % unit copies the 15 % one
    assert [r["decode_shared"] for r in by["full@45"]] == [True, True]
    assert [r["decode_shared"] for r in by["full@45+int2"]] == [True, True]
    assert by["full@45+int2"][0]["kv_bytes"] == by["full@15+int2"][0]["kv_bytes"] != by["full@45"][0]["kv_bytes"]
