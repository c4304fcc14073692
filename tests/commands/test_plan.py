"""``starkv-eval plan``: a job's steps, exact peak per GPU, fit and GPU-hours before any GPU work.

Expected values come from elsewhere: ``bench memory`` for the peaks, a real per-unit run through
``EpisodeRunner`` for the steps and their prompt lengths, the processor itself for image tokens, and hand
arithmetic for sizes, fits and hours.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from pipeline.bench import plan as bp
from pipeline.cli import main
from tests.fixtures.benchmarks import write_screenspot_v2

GIB = 1024 ** 3
SIZES = {"mobile": (200, 100), "desktop": (448, 336), "web": (300, 200)}
TOP_KEYS = {"job", "run_id", "model", "data", "prompt", "memory", "throughput", "estimate", "problems"}
MEMORY_KEYS = {"gpu_memory_bytes", "actors_per_gpu", "decode_steps_simulated", "max_new_tokens", "kv_bytes_per_token",
               "decode_growth_bytes_per_step",
               "weights_bytes", "peak_above_weights_bytes", "peak_per_gpu_bytes", "worst_unit", "fits", "needs_bytes",
               "verdict", "units"}
UNIT_KEYS = {"unit", "compressor", "budget", "weights_bytes", "peak_prefill_bytes", "peak_decode_bytes",
             "decode_tail_bytes", "peak_above_weights_bytes", "peak_per_gpu_bytes", "peak_phase", "peak_part", "kv_bytes",
             "fits", "needs_bytes", "verdict"}
DATA_KEYS = {"benchmark", "path", "episodes", "steps", "error_steps", "error_examples", "multi_call_steps", "image_slots"}
ESTIMATE_KEYS = {"units", "sharing_units", "model_calls_per_unit", "decode_tokens_per_call", "per_unit", "shared",
                 "job_uses_shared_prefill", "job_gpu_hours", "gpus", "wall_hours"}


def write_job(folder: Path, **over) -> Path:
    job = {"name": "plan-test", "model": {"path": "tiny", "max_new_tokens": 3},
           "benchmark": {"name": "screenspot_v2", "path": str(folder / "ssv2")},
           "compressors": ["full", "snapkv"], "budgets": [20, 50]}
    for key, value in over.items():
        job[key] = {**job[key], **value} if isinstance(value, dict) and isinstance(job.get(key), dict) else value
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


@pytest.fixture
def ssv2_job(tmp_path):
    # 3 splits x {text, icon}: 6 one-step episodes, three sizes under the tiny model's pixel cap
    write_screenspot_v2(tmp_path / "ssv2", per_cell=1, image_sizes=SIZES)
    return write_job(tmp_path)


# ------------------------------------------------------------------------------------------ --gpu-memory


@pytest.mark.parametrize("text,expected", [
    ("80GiB", 80 * 1024 ** 3), ("80GB", 80 * 10 ** 9), ("81920MiB", 80 * 1024 ** 3), ("80 gib", 80 * 1024 ** 3),
    ("0.5TiB", 512 * 1024 ** 3), ("141GB", 141 * 10 ** 9), ("1024B", 1024),
])
def test_gpu_memory_sizes(text, expected):
    assert bp.parse_memory(text) == expected


@pytest.mark.parametrize("text", ["80", "eighty GiB", "80XB", "-5GiB", "0GiB", "80 G", "GiB", ""])
def test_bad_gpu_memory_names_the_option(text):
    with pytest.raises(ValueError, match="--gpu-memory"):
        bp.parse_memory(text)


# ------------------------------------------------------------------------------------ fits / needs, hours


def test_fits_and_needs_by_hand():
    # 15 GB of weights + 2.5 GB above them = 17.5e9 bytes; 16 GiB = 17,179,869,184 bytes is too little:
    # 17.5e9 / 2**30 = 16.298 GiB, rounded up to 16.30
    assert bp.fit(15_000_000_000 + 2_500_000_000, 16 * GIB) == {
        "fits": False, "needs_bytes": 17_500_000_000, "verdict": "needs 16.30 GiB"}
    assert bp.fit(17_500_000_000, 80 * 10 ** 9) == {"fits": True, "needs_bytes": None, "verdict": "fits"}
    assert bp.fit(16 * GIB, 16 * GIB)["fits"]  # equal is enough


def test_gpu_hours_by_hand():
    prompts = [bp.StepPrompt("a", 0, 1, prompt_tokens=1000), bp.StepPrompt("a", 1, 1, prompt_tokens=2000),
               bp.StepPrompt("b", 0, 3, prompt_tokens=500),  # scrolls: up to 3 calls, never shared
               bp.StepPrompt("b", 1, 0)]  # an error row: no model call
    tp = bp.Throughput("test-gpu", "m", prefill_tokens_per_s=1000, decode_tokens_per_s=20, source="by hand")
    est = bp.estimate(prompts, units=6, sharing=4, decode_tokens=10, throughput=tp, shared_prefill=True, gpus=3)
    # calls per unit 1 + 1 + 3 = 5; per unit: 6 x (1000 + 2000 + 3 x 500) = 27,000 prefill tokens,
    # 6 x 5 x 10 = 300 decode tokens: 27,000/1000 + 300/20 = 42 s
    assert est["model_calls_per_unit"] == 5
    assert est["per_unit"] == {"prefill_tokens": 27_000, "decode_tokens": 300, "gpu_hours": pytest.approx(42 / 3600)}
    # shared: the 4 sharing units prefill the one-call steps once, the other 2 alone: 3 x 3000, plus
    # 6 x 1500 for the scroll step = 18,000; 18 + 15 = 33 s
    assert est["shared"] == {"prefill_tokens": 18_000, "decode_tokens": 300, "gpu_hours": pytest.approx(33 / 3600)}
    assert est["job_gpu_hours"] == pytest.approx(33 / 3600) and est["wall_hours"] == pytest.approx(11 / 3600)
    alone = bp.estimate(prompts, units=6, sharing=0, decode_tokens=10, throughput=tp, shared_prefill=True, gpus=1)
    assert alone["shared"] == alone["per_unit"]
    unknown = bp.estimate(prompts, 6, 4, 10, None, False, 1)
    assert unknown["per_unit"]["gpu_hours"] is None and unknown["wall_hours"] is None


# ----------------------------------------------------------------------------- the plan against its sources


def _tiny_image_tokens(size):
    """Image tokens the tiny model's own processor gives a blank screenshot of ``size``."""
    from PIL import Image

    from pipeline.bench.memory import load_facts

    proc = load_facts("tiny").processor
    grid = proc.image_processor(images=[Image.new("RGB", size)], return_tensors="pt")["image_grid_thw"][0]
    return int(grid.prod()) // 4


def test_peak_equals_bench_memory_for_the_same_prompt(ssv2_job, capsys):
    assert main(["plan", str(ssv2_job), "--gpu-memory", "80GiB", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert set(plan) == TOP_KEYS and set(plan["memory"]) == MEMORY_KEYS and set(plan["estimate"]) == ESTIMATE_KEYS
    assert all(set(r) == UNIT_KEYS for r in plan["memory"]["units"]) and set(plan["data"]) == DATA_KEYS
    # one screenshot per prompt; the largest in tokens of the fixture's three sizes
    tokens = {size: _tiny_image_tokens(size) for size in SIZES.values()}
    largest = max(tokens, key=tokens.get)
    assert sorted(tokens.values())[-2] < tokens[largest]  # one largest
    assert plan["prompt"]["simulated_screenshots"] == 1
    assert plan["prompt"]["simulated_resolution"] == f"{largest[0]}x{largest[1]}"
    assert plan["data"]["episodes"] == 6 and plan["data"]["steps"] == 6

    assert main(["bench", "memory", "--model", "tiny", "--screenshots", "1", "--resolution",
                 plan["prompt"]["simulated_resolution"], "--compressors", "full,snapkv", "--budgets", "20,50",
                 "--decode-steps", "3", "--json"]) == 0
    bench = {(r["compressor"], r["budget"]): r for r in json.loads(capsys.readouterr().out)}
    assert len(plan["memory"]["units"]) == 4
    for row in plan["memory"]["units"]:
        ref = bench[(row["compressor"], row["budget"])]
        assert row["decode_tail_bytes"] == 0  # all 3 decode steps simulated
        assert row["peak_above_weights_bytes"] == ref["peak_above_weights_bytes"]
        assert row["peak_per_gpu_bytes"] == ref["weights_bytes"] + ref["peak_above_weights_bytes"]
    assert plan["prompt"]["simulated_prompt_tokens"] == next(iter(bench.values()))["prompt_tokens"]
    assert plan["memory"]["fits"] and plan["memory"]["verdict"] == "fits"

    need = max(r["weights_bytes"] + r["peak_above_weights_bytes"] for r in bench.values())
    assert plan["memory"]["peak_per_gpu_bytes"] == need
    assert main(["plan", str(ssv2_job), "--gpu-memory", f"{need - 1}B", "--json"]) == 0  # one byte short
    got = json.loads(capsys.readouterr().out)["memory"]
    assert got["fits"] is False and got["needs_bytes"] == need
    assert got["verdict"] == f"needs {math.ceil(need / GIB * 100) / 100:.2f} GiB"


def test_decode_steps_not_simulated_are_extrapolated_exactly(tmp_path, capsys):
    """4 of 10 decode steps simulated: the growth per step measured between steps 2 and 4 gives the peak
    that ``bench memory`` counts with all 10 steps."""
    from pipeline.bench.memory import load_facts

    write_screenspot_v2(tmp_path / "ssv2", per_cell=1, image_sizes=SIZES)
    job = write_job(tmp_path, model={"path": "tiny", "max_new_tokens": 10})
    assert main(["plan", str(job), "--gpu-memory", "80GiB", "--decode-steps", "4", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    mem = plan["memory"]
    text = load_facts("tiny").config.text_config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    per_token = 2 * text.num_hidden_layers * text.num_key_value_heads * head_dim * 4  # float32 K and V
    assert mem["kv_bytes_per_token"] == per_token and mem["decode_steps_simulated"] == 4
    assert mem["decode_growth_bytes_per_step"] >= per_token  # at least one more token's K and V per layer
    assert all(r["decode_tail_bytes"] == 6 * mem["decode_growth_bytes_per_step"] for r in mem["units"])

    assert main(["bench", "memory", "--model", "tiny", "--screenshots", "1", "--resolution",
                 plan["prompt"]["simulated_resolution"], "--compressors", "full,snapkv", "--budgets", "20,50",
                 "--decode-steps", "10", "--json"]) == 0
    bench = {(r["compressor"], r["budget"]): r for r in json.loads(capsys.readouterr().out)}
    for row in mem["units"]:
        ref = bench[(row["compressor"], row["budget"])]
        assert row["peak_decode_bytes"] + row["decode_tail_bytes"] == ref["peak_decode_bytes"]
        assert row["peak_above_weights_bytes"] == ref["peak_above_weights_bytes"]


def test_steps_and_prompt_lengths_equal_a_per_unit_run(tmp_path, tiny_model):
    """The launcher's multi-step episodes with 3 screenshots per prompt: the plan's steps are the rows of
    a real per-unit run, and each step's prompt length is the one the run encoded."""
    import starkv
    from pipeline.benchmarks.synthetic.benchmark import ensure_synthetic_dataset
    from pipeline.metrics.units import Unit
    from pipeline.models.loader import ModelSpec, load_model
    from pipeline.run.job import load_episodes
    from pipeline.step.engine import EpisodeRunner

    data = ensure_synthetic_dataset(tmp_path / "launcher", num_episodes=2, style="launcher", min_steps=3,
                                    max_steps=4)
    job = write_job(tmp_path, benchmark={"name": "launcher", "path": str(data)}, agent={"image_slots": 3},
                    model={"path": "tiny", "max_new_tokens": 2})
    problems, cfg, source, benchmark, episodes, _, _ = bp.check(bp.PlanOptions(str(job), gpu_memory="80GiB"))
    assert problems == []
    facts = bp.model_facts(source, cfg)
    prompts, unreadable = bp.step_prompts(cfg, benchmark, episodes, facts.processor, source.min_pixels,
                                          source.max_pixels)
    assert unreadable == []
    assert len(prompts) == sum(len(e.steps) for e in load_episodes(cfg, benchmark)) >= 6

    loaded = load_model(ModelSpec(path="tiny", device="cpu", dtype="float32"))
    runner = EpisodeRunner(loaded, benchmark, cfg.agent, max_new_tokens=2)
    rows = [r for e in episodes for r in runner.run(e, starkv.build("full"), Unit("t", "full", 100.0, loaded.name))]
    assert len(rows) == len(prompts) and not any(r["error"] for r in rows)
    assert [(r["episode_id"], r["prompt_tokens"], r["num_images"]) for r in rows] == \
        [(p.episode_id, p.prompt_tokens, len(p.image_sizes)) for p in prompts]
    assert max(len(p.image_sizes) for p in prompts) == 3


def test_a_real_checkpoint_folder_uses_its_config(tmp_path):
    from pipeline.agent.coords import UITARS_MAX_PIXELS, UITARS_MIN_PIXELS
    from pipeline.bench.memory import CONFIG_DIR
    from pipeline.config import parse_config

    folder = tmp_path / "UI-TARS-1.5-7B"
    folder.mkdir()
    data = json.loads((CONFIG_DIR / "ui-tars-1.5-7b.json").read_text())
    data.pop("_comment")
    (folder / "config.json").write_text(json.dumps(data))
    cfg = parse_config({"name": "x", "model": {"path": str(folder)}, "benchmark": {"name": "launcher"},
                        "compressors": ["full"], "budgets": [20]})
    source, problems = bp.resolve_model(cfg)
    assert problems == [] and source.name == "ui-tars-1.5-7b"
    assert (source.min_pixels, source.max_pixels) == (UITARS_MIN_PIXELS, UITARS_MAX_PIXELS)
    facts = bp.model_facts(source, cfg)
    assert facts.config.text_config.num_hidden_layers == 28 and facts.config.text_config.hidden_size == 3584
    assert bp.image_tokens((1920, 1080), source.min_pixels, source.max_pixels) == 69 * 39  # as bench memory's test

    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert "not a Qwen2.5-VL checkpoint" in bp.resolve_model(cfg)[1][0]


# ------------------------------------------------------------------------------------------- bad input


def test_every_problem_is_listed_at_once_before_any_work(tmp_path, capsys, monkeypatch):
    job = write_job(tmp_path, model={"path": str(tmp_path / "no-model"), "max_new_tokens": 0},
                    agent={"image_slots": 2, "colour": "blue"}, budgets=[20, 150])
    monkeypatch.setattr(bp, "model_facts", lambda *_: pytest.fail("work started despite bad input"))
    assert main(["plan", str(job), "--gpu-memory", "80 gigs", "--gpus", "0", "--json"]) == 2
    captured = capsys.readouterr()
    problems = json.loads(captured.out)["problems"]
    expected = ["agent: unknown field(s) ['colour']", "budgets[1]", "benchmark.path:", "model.path:",
                "model.max_new_tokens", "--gpu-memory", "--gpus"]
    for fragment in expected:
        assert sum(fragment in p for p in problems) == 1, (fragment, problems)
    assert len(problems) == len(expected)
    assert str(tmp_path / "no-model") in " ".join(problems) and str(tmp_path / "ssv2") in " ".join(problems)
    assert f"{len(expected)} problem(s)" in captured.err and "Traceback" not in captured.err


def test_data_that_does_not_load_is_a_problem(tmp_path, capsys):
    (tmp_path / "ssv2").mkdir()  # exists, but holds no ScreenSpot-v2 annotation files
    assert main(["plan", str(write_job(tmp_path)), "--gpu", "no-such-card"]) == 2
    err = capsys.readouterr().err
    assert "benchmark.path: BenchmarkDataError" in err and "--gpu: unknown GPU 'no-such-card'" in err


def test_an_unreadable_screenshot_is_an_error_row_as_in_a_run(ssv2_job, capsys):
    (ssv2_job.parent / "ssv2" / "screenspotv2_image" / "web_01.png").write_bytes(b"not a png")
    assert main(["plan", str(ssv2_job), "--gpu-memory", "80GiB", "--decode-steps", "4", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["data"]["steps"] == 6 and plan["data"]["error_steps"] == 1
    assert "web_01.png" in plan["data"]["error_examples"][0]
    assert plan["estimate"]["model_calls_per_unit"] == 5  # no call for the error row


def test_missing_model_and_data_of_the_screenspot_pro_job(capsys):
    job = Path(__file__).resolve().parents[2] / "jobs" / "screenspot_pro.yaml"
    if Path("/data/ScreenSpot-Pro").exists() or Path("/models/UI-TARS-1.5-7B").exists():
        pytest.skip("this machine has the cluster's model or data")
    assert main(["plan", str(job), "--gpu-memory", "80GiB"]) == 2
    err = capsys.readouterr().err
    assert "2 problem(s)" in err and "/models/UI-TARS-1.5-7B does not exist" in err \
        and "/data/ScreenSpot-Pro does not exist" in err and "Traceback" not in err


def test_the_throughput_table_states_its_figures():
    table = yaml.safe_load(bp.THROUGHPUT_FILE.read_text())
    for gpu, row in table["gpus"].items():
        assert bp.parse_memory(row["memory"]) > 0, gpu
        for model, figures in row["models"].items():
            assert figures["prefill_tokens_per_s"] > 0 and figures["decode_tokens_per_s"] > 0, (gpu, model)
            assert figures["source"], (gpu, model)
    tp, problems = bp.load_throughput("h100-sxm-80gb", "ui-tars-1.5-7b", decode=45.0)
    assert problems == [] and tp.decode_tokens_per_s == 45.0 and "overridden" in tp.source
    assert tp.prefill_tokens_per_s == table["gpus"]["h100-sxm-80gb"]["models"]["ui-tars-1.5-7b"]["prefill_tokens_per_s"]
    assert math.isclose(bp.parse_memory(tp.memory), 80e9)
    assert bp.load_throughput("h100-sxm-80gb", "m", prefill=-1.0)[1] == [
        "--prefill-tokens-per-s: must be a number > 0, got -1.0"]
