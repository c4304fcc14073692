"""STaR-KV state persists across the steps of one episode and never leaks into the next one on an actor."""

from __future__ import annotations

import torch

import starkv
from pipeline.benchmarks.synthetic.benchmark import SyntheticBenchmark, generate_synthetic
from pipeline.config import AgentConfig
from pipeline.metrics.units import Unit
from pipeline.models.loader import ModelSpec, load_model
from pipeline.step.engine import EpisodeRunner


def _snapshot(comp) -> dict:
    out = {}
    for layer, st in comp._states.items():
        out[layer] = (st.mi_steps, st.temporal_steps,
                      None if st.mi_ema is None else st.mi_ema.clone(),
                      None if st.pattern_ema is None else st.pattern_ema.clone())
    return out


def _same(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    for k in a:
        for x, y in zip(a[k], b[k]):
            if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
                if x is None or y is None or not torch.equal(x, y):
                    return False
            elif x != y:
                return False
    return True


def test_two_episodes_on_one_actor_do_not_share_state(tiny_model_dir, tmp_path):
    root = generate_synthetic(tmp_path / "syn", num_episodes=2, min_steps=3, max_steps=3, seed=3,
                              resolutions=((320, 240),))
    bench = SyntheticBenchmark(str(root))
    first, second = bench.load()
    loaded = load_model(ModelSpec(path=str(tiny_model_dir), device="cpu", dtype="float32"))
    runner = EpisodeRunner(loaded, bench, AgentConfig(image_slots=5), max_new_tokens=2)
    unit = Unit(run_id="r", compressor="starkv", budget=30.0, model="tiny")

    shared = starkv.build("starkv", mi_profile_steps=1, mi_ramp_steps=1)  # MI active from the 2nd step
    rows_a = runner.run(first, shared, unit)
    state_after_a = _snapshot(shared)
    assert all(st[0] == len(first.steps) for st in state_after_a.values())  # persisted over the episode
    rows_b_shared = runner.run(second, shared, unit)
    state_b_shared = _snapshot(shared)

    fresh = starkv.build("starkv", mi_profile_steps=1, mi_ramp_steps=1)
    rows_b_fresh = runner.run(second, fresh, unit)
    assert _same(state_b_shared, _snapshot(fresh))
    assert not _same(state_after_a, state_b_shared)
    keys = ("prediction", "kept_tokens", "kv_bytes", "prompt_tokens", "error")
    assert [{k: r[k] for k in keys} for r in rows_b_shared] == [{k: r[k] for k in keys} for r in rows_b_fresh]
    assert all(r["error"] is None for r in rows_a + rows_b_shared)
