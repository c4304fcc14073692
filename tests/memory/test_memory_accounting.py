"""Exact per-step memory accounting (pipeline.memory.accounting): known byte counts, determinism, the real step."""

from __future__ import annotations

import json

import pytest
import torch

import starkv
from pipeline.memory.accounting import track_step
from tests.helpers_model import tiny_with_prompt


def test_a_known_forward_is_counted_to_the_byte():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 1000), torch.nn.ReLU(), torch.nn.Linear(1000, 2))
    x = torch.randn(8, 4)
    with torch.inference_mode(), track_step(model, {"x": x}) as account:
        out = model(x)
    assert account.weights_bytes == (4 * 1000 + 1000 + 1000 * 2 + 2) * 4
    assert account.input_bytes == 8 * 4 * 4
    # linear1's output (8x1000 fp32) and relu's output are live together; then both die but the result
    assert account.prefill.bytes == 128 + 2 * 8 * 1000 * 4
    assert account.prefill.part == "other"
    # what is live when the forward returns is its output; it outlives the block, so like anything the
    # step hands on (a cache, carried state) it is not counted as the step's memory
    assert account.decode.bytes == 128
    assert out.shape == (8, 2)
    assert sum(account.prefill.breakdown.values()) == account.prefill.bytes


def test_views_and_in_place_ops_allocate_nothing():
    model = torch.nn.Identity()
    x = torch.zeros(1000)
    with torch.inference_mode(), track_step(model, {"x": x}) as account:
        y = x * 2          # 4000 bytes
        v = y[:10].view(2, 5).t()
        v.add_(1)
        del y              # the view keeps the storage alive
        z = torch.empty(500)  # 2000 more
        del v, z
    assert account.prefill.bytes == 4000 + 4000 + 2000


def test_copies_made_by_ops_that_may_alias_are_counted():
    """``to``, ``contiguous`` and ``reshape`` may return their input; when they copy, the copy is an allocation.
    1000 fp32 = 4000 bytes; as bfloat16 2000; a transposed (40, 25) made contiguous 4000; reshaping a
    non-contiguous tensor copies (4000). A same-dtype ``to``, ``contiguous`` of a contiguous tensor and a
    reshape of one allocate nothing."""
    model = torch.nn.Identity()
    x = torch.zeros(1000)
    with torch.inference_mode(), track_step(model, {"x": x}) as account:
        y = x * 2                              # 4000
        same = y.to(torch.float32)             # y itself
        half = y.to(torch.bfloat16)            # 2000
        flat = y.contiguous().reshape(40, 25)  # y's storage
        col = flat.t().contiguous()            # 4000
        again = flat.t().reshape(1000)         # 4000 (a copy: the transpose is not contiguous)
        del same, half, flat, col, again, y
    assert account.prefill.bytes == 4000 + 4000 + 2000 + 4000 + 4000


def test_a_process_wide_cache_filled_in_a_step_does_not_change_its_figures():
    import functools

    @functools.lru_cache
    def table(n: int) -> torch.Tensor:
        return torch.arange(n)

    model = torch.nn.Identity()
    x = torch.zeros(100)

    def step():
        with torch.inference_mode(), track_step(model, {"x": x}) as account:
            y = x + table(100)  # the first call fills the cache (800 bytes that outlive the step)
            del y
        return account.row_fields()

    first, second = step(), step()
    assert first == second and first["peak_prefill_bytes"] == 400 + 400


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return tiny_with_prompt(tiny_model_dir)


def _tracked_generate(loaded, inputs, layout, name: str, budget: float, tokens: int = 6):
    loaded.model.model.rope_deltas = None
    with torch.inference_mode(), starkv.attach(loaded.model, starkv.build(name), budget, layout) as att, \
            track_step(loaded.model, inputs) as account:
        out = loaded.model.generate(**inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
    return account, att, out


def test_two_runs_give_identical_figures(tiny):
    loaded, inputs, layout = tiny
    first = _tracked_generate(loaded, inputs, layout, "snapkv", 20)[0].row_fields()
    second = _tracked_generate(loaded, inputs, layout, "snapkv", 20)[0].row_fields()
    assert first == second
    assert first["peak_above_weights_bytes"] > 0


def test_tiny_step_accounting_follows_the_kv_budget(tiny):
    loaded, inputs, layout = tiny
    decode = {}
    for name, budget in (("full", 100), ("snapkv", 50), ("snapkv", 20), ("starkv", 20)):
        account, att, _ = _tracked_generate(loaded, inputs, layout, name, budget)
        fields = account.row_fields()
        assert fields["weights_bytes"] == sum(p.numel() * p.element_size() for p in loaded.model.parameters()) + \
            sum(b.numel() * b.element_size() for b in loaded.model.buffers())
        assert fields["peak_above_weights_bytes"] == max(fields["peak_prefill_bytes"], fields["peak_decode_bytes"])
        for phase in (account.prefill, account.decode):
            assert sum(phase.breakdown.values()) == phase.bytes
            assert phase.breakdown["inputs"] == account.input_bytes
        # at the decode peak the cache holds the compressed prompt plus the generated tokens so far
        kv_live = account.decode.breakdown["kv_cache"]
        assert att.kv_bytes <= kv_live <= att.kv_bytes * 2
        assert json.loads(fields["peak_breakdown_json"]) == {k: v for k, v in account.peak.breakdown.items() if v}
        decode[(name, budget)] = fields["peak_decode_bytes"]
    assert decode[("snapkv", 20)] < decode[("snapkv", 50)] < decode[("full", 100)]
    assert decode[("starkv", 20)] < decode[("snapkv", 50)]


def test_step_rows_carry_the_exact_columns(tiny_model_dir, tmp_path):
    from pipeline.benchmarks.synthetic.benchmark import SyntheticBenchmark, generate_synthetic
    from pipeline.config import AgentConfig
    from pipeline.metrics.rows import row_schema, rows_to_table
    from pipeline.metrics.units import Unit
    from pipeline.models.loader import ModelSpec, load_model
    from pipeline.step.engine import EpisodeRunner

    root = generate_synthetic(tmp_path / "syn", num_episodes=1, min_steps=2, max_steps=2, seed=1,
                              resolutions=((320, 240),))
    bench = SyntheticBenchmark(str(root))
    loaded = load_model(ModelSpec(path=str(tiny_model_dir), device="cpu", dtype="float32"))
    runner = EpisodeRunner(loaded, bench, AgentConfig(image_slots=5), max_new_tokens=2)
    rows = runner.run(bench.load()[0], starkv.build("snapkv"), Unit("r", "snapkv", 20.0, "tiny"))
    assert all(r["error"] is None for r in rows)
    for r in rows:
        assert r["peak_above_weights_bytes"] == max(r["peak_prefill_bytes"], r["peak_decode_bytes"]) > r["kv_bytes"]
        assert r["weights_bytes"] > 0 and r["peak_part"] and r["peak_phase"] in ("prefill", "decode")
        assert r["mem_device"].startswith("cpu_rss")  # the RSS figure stays, labelled, in its own column
    assert rows_to_table(rows).schema == row_schema()
    # the second step's prompt holds two screenshots: more live bytes at its peak
    assert rows[1]["peak_above_weights_bytes"] > rows[0]["peak_above_weights_bytes"]
