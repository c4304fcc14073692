"""``starkv-eval bench memory``: fake-tensor simulation against real accounting, interface, bad input."""

from __future__ import annotations

import json

import pytest
import torch

import starkv
from pipeline.bench.memory import load_facts, prompt_inputs, simulate
from pipeline.cli import main
from pipeline.step.measure import PrefillFlops
from starkv.flops import FlopMeter
from starkv.methods.mi import joint_histogram

KEYS = {"compressor", "budget", "screenshots", "prompt_tokens", "peak_above_weights_bytes", "peak_prefill_bytes",
        "peak_decode_bytes", "kv_bytes"}


@pytest.mark.parametrize("name,budget", [("full", 100), ("snapkv", 20), ("starkv", 20), ("lookm", 20), ("adakv", 20),
                                         ("vlcache", 20), ("fastv", 20)])
def test_simulation_matches_real_accounting_on_the_tiny_model(tiny_model_dir, name, budget):
    from pipeline.memory.accounting import track_step
    from pipeline.memory.lowmem import vision_per_image
    from pipeline.models.loader import ModelSpec, load_model

    facts = load_facts("tiny")
    inputs, layout = prompt_inputs(facts.processor, 3, (448, 336))
    sim = simulate(facts, inputs, layout, name, budget, "sdpa", decode_steps=4, dtype=torch.float32)

    loaded = load_model(ModelSpec(path="tiny", device="cpu", dtype="float32"))
    meter = FlopMeter()
    with torch.inference_mode(), \
            starkv.attach(loaded.model, starkv.build(name), budget, layout, flop_meter=meter) as att, \
            vision_per_image(loaded.model), PrefillFlops(loaded.model, meter) as counted, \
            track_step(loaded.model, inputs) as account:
        loaded.model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    real = account.row_fields()
    assert sim["kv_bytes"] == att.kv_bytes and sim["weights_bytes"] == real["weights_bytes"]
    for key in ("peak_above_weights_bytes", "peak_prefill_bytes", "peak_decode_bytes"):
        assert sim[key] == pytest.approx(real[key], rel=0.01), key
    assert sim["peak_part"] == real["peak_part"] and sim["peak_phase"] == real["peak_phase"]
    # flops depend on shapes only: the fake tensors count exactly what the real run counts
    assert sim["compress_flops"] == att.compress_flops and (att.compress_flops > 0) == (name != "full")
    assert sim["prefill_flops"] == counted.flops - att.compress_flops > 0
    assert sim["compress_flops_ratio"] == att.compress_flops / sim["prefill_flops"]


def test_counting_flops_changes_no_memory_figure():
    facts = load_facts("tiny")
    inputs, layout = prompt_inputs(facts.processor, 2, (448, 336))
    plain = simulate(facts, inputs, layout, "snapkv", 20, "sdpa", 2, torch.float32, flops=False)
    counted = simulate(facts, inputs, layout, "snapkv", 20, "sdpa", 2, torch.float32)
    assert "prefill_flops" not in plain and counted["prefill_flops"] > 0
    assert {k: counted[k] for k in plain} == plain


def test_json_interface_rows(capsys):
    assert main(["bench", "memory", "--model", "tiny", "--screenshots", "1,2", "--resolution", "640x480",
                 "--budgets", "20,50", "--compressors", "full,snapkv", "--decode-steps", "2", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 2 * 2 * 2 and all(KEYS <= set(r) for r in rows)
    assert all(r["peak_above_weights_bytes"] == max(r["peak_prefill_bytes"], r["peak_decode_bytes"]) for r in rows)
    by = {(r["compressor"], r["budget"], r["screenshots"]): r for r in rows}
    for shots in (1, 2):
        assert by[("snapkv", 20, shots)]["kv_bytes"] < by[("snapkv", 50, shots)]["kv_bytes"] \
            < by[("full", 20, shots)]["kv_bytes"]
        assert by[("snapkv", 20, shots)]["peak_decode_bytes"] < by[("full", 20, shots)]["peak_decode_bytes"]
    assert by[("full", 20, 2)]["prompt_tokens"] > by[("full", 20, 1)]["prompt_tokens"]
    for shots in (1, 2):  # the model's prefill is the same at every budget and for every compressor
        assert len({by[(c, b, shots)]["prefill_flops"] for c in ("full", "snapkv") for b in (20, 50)}) == 1
        assert by[("full", 20, shots)]["compress_flops"] == 0 == by[("full", 20, shots)]["compress_flops_ratio"]
        # SnapKV's window product reads all L keys whatever the budget
        assert by[("snapkv", 20, shots)]["compress_flops"] == by[("snapkv", 50, shots)]["compress_flops"] > 0
    assert by[("snapkv", 20, 2)]["compress_flops_ratio"] == \
        by[("snapkv", 20, 2)]["compress_flops"] / by[("snapkv", 20, 2)]["prefill_flops"]


def test_table_shows_the_flops(capsys):
    assert main(["bench", "memory", "--model", "tiny", "--screenshots", "1", "--resolution", "448x336",
                 "--compressors", "full,snapkv", "--decode-steps", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[10:13] == ["GFLOP", "sel", "MFLOP"] and "sel/pre %" in lines[0]
    full, snap = lines[2].split(), lines[3].split()
    assert full[0] == "full" and full[11:13] == ["0.00", "0.0000"] and float(full[10]) > 0
    assert snap[0] == "snapkv" and snap[10] == full[10] and float(snap[11]) > 0
    assert any(line.startswith("(GFLOP: the prefill's model flops") for line in lines)


def test_image_tokens_follow_the_uitars_pixel_limits():
    facts = load_facts("ui-tars-1.5-7b")
    assert facts.config.text_config.num_hidden_layers == 28 and facts.config.text_config.hidden_size == 3584
    _, layout = prompt_inputs(facts.processor, 1, (1920, 1080))
    # a 1920x1080 screenshot at UI-TARS's limits: 1932x1092 pixels -> 69 x 39 merged patches, plus markers
    assert [e - s for s, e in layout.image_spans] == [69 * 39]
    _, layout = prompt_inputs(facts.processor, 1, (3584, 3584))
    assert [e - s for s, e in layout.image_spans] == [16384]


@pytest.mark.parametrize("argv,option", [
    (["--model", "llama-70b"], "--model"),
    (["--screenshots", "0"], "--screenshots"),
    (["--screenshots", "two"], "--screenshots"),
    (["--resolution", "1920by1080"], "--resolution"),
    (["--resolution", "0x1080"], "--resolution"),
    (["--budgets", "0"], "--budgets"),
    (["--budgets", "150"], "--budgets"),
    (["--compressors", "full,nope"], "--compressors"),
    (["--attn", "flash"], "--attn"),
])
def test_bad_input_fails_before_any_work_naming_the_option(argv, option, capsys, monkeypatch):
    import pipeline.bench.memory as mb

    monkeypatch.setattr(mb, "load_facts", lambda *_: pytest.fail("work started despite bad input"))
    assert main(["bench", "memory", *argv]) == 2
    err = capsys.readouterr().err
    assert option in err and len(err.strip().splitlines()) == 1


def test_fixed_size_histogram_equals_bincount():
    g = torch.Generator().manual_seed(0)
    for n_kv, n in ((1, 7), (4, 300), (2, 1000)):
        scores = torch.rand(n_kv, n, generator=g) - 0.1
        scores[:, ::5] = scores[:, 1::5][:, : scores[:, ::5].shape[1]]  # ties
        grid, bins = 12, 16
        hist = joint_histogram(scores, grid, bins)
        from starkv.methods.mi import cell_ids, rank_bins

        a = rank_bins(scores.clamp_min(0), bins)
        flat = ((torch.arange(n_kv).unsqueeze(1) * bins + a) * grid * grid + cell_ids(n, grid, "cpu")).reshape(-1)
        ref = torch.bincount(flat, minlength=n_kv * bins * grid * grid).view(n_kv, bins, grid * grid)
        assert torch.equal(hist, ref)


@pytest.mark.parametrize("per_image", [True, False])
def test_replayed_vision_tower_gives_the_same_rows(per_image):
    facts = load_facts("tiny")
    inputs, layout = prompt_inputs(facts.processor, 3, (448, 336))
    cache: dict = {}
    for name, budget in (("full", 20), ("snapkv", 20), ("snapkv", 50)):
        fresh = simulate(facts, inputs, layout, name, budget, "sdpa", 3, torch.float32, per_image=per_image)
        shared = simulate(facts, inputs, layout, name, budget, "sdpa", 3, torch.float32, per_image=per_image,
                          vision_cache=cache)
        assert shared == fresh
    assert len(cache) == 1  # recorded by the first row, replayed by the others


def test_every_registered_method_simulates_on_fake_tensors():
    """Every method runs its selection on shapes alone (``unknown_reads`` counts the values some read: a
    layer weight, the text prior's lift, AdaKV's head split); each keeps the budget's tokens."""
    facts = load_facts("tiny")
    inputs, layout = prompt_inputs(facts.processor, 2, (448, 336))
    length = inputs["input_ids"].shape[1]
    for name in starkv.available():
        row = simulate(facts, inputs, layout, name, 20, "sdpa", decode_steps=1, dtype=torch.float32, flops=False)
        assert row["peak_above_weights_bytes"] > row["kv_bytes"] > 0, name
        if name != "full":
            assert row["kept_tokens"] == int(length * 20 / 100), name


@pytest.fixture
def value_shaped(monkeypatch):
    """A plugin that keeps every past token scoring above its head's mean: a count only score values decide."""
    from baselines.scorers.snapkv import SnapKV
    from starkv.compressor import COMPRESSORS

    class AboveMean(SnapKV):
        def select(self, ctx):
            score = self.score(ctx)[0]
            return torch.cat([(score > score.mean()).nonzero().squeeze(1),
                              torch.arange(ctx.plan.past, ctx.length)]).expand(ctx.num_kv_heads, -1)

    monkeypatch.setitem(COMPRESSORS, "test_above_mean", AboveMean)
    AboveMean.name = "test_above_mean"
    return "test_above_mean"


def test_a_method_that_reads_values_is_named_by_bench_memory_and_plan(value_shaped, tmp_path, capsys):
    """One rule in both commands: the unit is named with the reason, never simulated as another method."""
    import yaml

    from tests.fixtures.benchmarks import write_screenspot_v2

    assert main(["bench", "memory", "--model", "tiny", "--screenshots", "1", "--compressors",
                 f"snapkv,{value_shaped}", "--budgets", "20", "--decode-steps", "1", "--json"]) == 1  # a row failed
    rows = {r["compressor"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["snapkv"]["error"] is None
    reason = rows[value_shaped]["error"]
    assert "reads values fake tensors do not carry (aten.nonzero" in reason
    write_screenspot_v2(tmp_path / "ssv2", per_cell=1)
    job = {"name": "plan-values", "model": {"path": "tiny", "max_new_tokens": 2},
           "benchmark": {"name": "screenspot_v2", "path": str(tmp_path / "ssv2")},
           "compressors": ["snapkv", value_shaped], "budgets": [20]}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    assert main(["plan", str(tmp_path / "job.yaml"), "--gpu-memory", "80GiB"]) != 0
    err = capsys.readouterr().err
    assert f"{value_shaped}@20: cannot be simulated: {reason}" in err
