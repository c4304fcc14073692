"""``measure_flops``: a step's ``prefill_flops`` / ``compress_flops`` columns, per unit and in a shared sweep.

SnapKV's selection counts, per layer, its observation-window product (2·H·W·d·L flops, worked out by hand in
``tests/starkv/test_flops.py``); the model's prefill is the same computation for every unit, so per-unit
and shared rows carry the same figures; counting changes no other column but the times.
"""

from __future__ import annotations

import pytest

import starkv
from pipeline.config import AgentConfig
from pipeline.metrics.units import Unit
from pipeline.step.engine import EpisodeRunner
from pipeline.step.sweep import run_sweep
from tests.step.tiny_setup import tiny_episode

SAME = ("prompt_tokens", "kept_tokens", "kv_bytes", "raw_output", "peak_above_weights_bytes", "peak_prefill_bytes",
        "peak_decode_bytes", "peak_part", "weights_bytes", "error")


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tmp_path_factory):
    return tiny_episode(tiny_model_dir, tmp_path_factory.mktemp("flops"), steps=2, seed=3)


def _units():
    return [(starkv.build(name), Unit(run_id="r", compressor=name, budget=30.0, model="tiny"))
            for name in ("full", "snapkv")]


def _runner(loaded, bench, flops: bool) -> EpisodeRunner:
    return EpisodeRunner(loaded, bench, AgentConfig(image_slots=2), max_new_tokens=2, measure_flops=flops)


def test_per_unit_and_shared_rows_count_the_same_flops(setup):
    loaded, bench, episode = setup
    cfg = loaded.model.config.text_config
    heads, layers = cfg.num_attention_heads, cfg.num_hidden_layers
    head_dim = cfg.hidden_size // heads
    counted = _runner(loaded, bench, True)
    per_unit = {unit.compressor: counted.run(episode, comp, unit) for comp, unit in _units()}
    for name, rows in per_unit.items():
        for r in rows:
            assert r["error"] is None and r["prefill_flops"] > 0
            window = 8 if name != "full" else 0  # full selects nothing
            assert r["compress_flops"] == layers * 2 * heads * window * head_dim * r["prompt_tokens"], name
    # the model's prefill does not depend on the compressor
    assert [r["prefill_flops"] for r in per_unit["full"]] == [r["prefill_flops"] for r in per_unit["snapkv"]]
    shared = run_sweep(counted, episode, _units())
    for (_, unit), rows in zip(_units(), shared):
        assert all(r["prefill_shared"] for r in rows)
        assert [(r["prefill_flops"], r["compress_flops"]) for r in rows] == \
            [(r["prefill_flops"], r["compress_flops"]) for r in per_unit[unit.compressor]]
    # without measure_flops nothing is counted, and counting changed nothing else
    plain = {unit.compressor: _runner(loaded, bench, False).run(episode, comp, unit) for comp, unit in _units()}
    for name, rows in plain.items():
        assert all(r["prefill_flops"] == r["compress_flops"] == 0 for r in rows)
        assert [{k: r[k] for k in SAME} for r in rows] == [{k: r[k] for k in SAME} for r in per_unit[name]], name
