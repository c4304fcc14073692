"""The micro agent: training lowers the loss, the shipped weights act well with the full cache, and a
broken compressor is caught on accuracy by the nightly job's tolerances."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.config import AgentConfig
from pipeline.models.micro import MANIFEST_FILE, MICRO_DIR, init_micro, read_manifest, weights_sha256
from pipeline.training.micro import TrainConfig, answer_loss, train_micro
from pipeline.training.micro_data import IGNORE_INDEX, collate, training_examples

ROOT = Path(__file__).resolve().parents[2]
# The held-out subset the accuracy floor is pinned on: the first episodes of jobs/micro.yaml's dataset.
FLOOR_EPISODES = 8
# What the shipped weights (recipe 2) reach there with the full cache: 16 of 42 steps (0.381, deterministic on
# CPU; the first 8 episodes of `starkv-eval run jobs/micro.yaml`). The target was 0.8; the shipped recipe does not
# reach it (docs/micro-agent.md).
FULL_CACHE_FLOOR = 0.38
# The shipped manifest's own held-out figure: forced decoding on 200 episodes of micro-heldout:1 (890 steps), 0.3596
HELDOUT_FLOOR = 0.35


def _micro_job() -> dict:
    return yaml.safe_load((ROOT / "jobs" / "micro.yaml").read_text())


def test_examples_are_the_evaluation_prompt_plus_the_answer():
    _, processor = init_micro(0)
    example = next(training_examples(0, processor, AgentConfig(image_slots=5)))
    answer = example.input_ids[example.labels != IGNORE_INDEX]
    text = processor.tokenizer.decode(answer)
    assert text.startswith("Action: click(start_box='(") and text.endswith(")')<|im_end|>")
    prompt = processor.tokenizer.decode(example.input_ids[example.labels == IGNORE_INDEX])
    assert prompt.endswith("<|im_start|>assistant\n")
    assert "## User Instruction\nClick the " in prompt  # the UI-TARS grounding prompt of the launcher benchmark
    # digits are single tokens, so a coordinate is written digit by digit
    digits = [t for t in processor.tokenizer.convert_ids_to_tokens(answer) if t.isdigit()]
    assert digits and all(len(t) == 1 for t in digits)


def test_training_never_draws_an_evaluation_episode():
    """Training episodes come from their own random stream; none equals an episode of jobs/micro.yaml."""
    import random

    from pipeline.benchmarks.synthetic.launcher import launcher_episode, launcher_goal
    from pipeline.config import make_benchmark, parse_config

    heldout = {tuple((s.instruction, tuple(s.target["bbox"])) for s in e.steps)
               for e in make_benchmark(parse_config(_micro_job())).load()}
    train = set()
    for i in range(300):
        rng = random.Random(f"micro-train:0:{i}")
        launcher_goal(rng)  # drawn first, as episode_prompts does
        train.add(tuple((s.instruction, s.target.bbox) for s in launcher_episode(rng, rng.randint(3, 6))))
    assert len(heldout) >= 40 and not heldout & train


def test_a_few_training_steps_lower_the_loss():
    torch.manual_seed(0)
    model, processor = init_micro(0)
    model.train()
    stream = training_examples(0, processor, AgentConfig(image_slots=2), min_steps=2, max_steps=2)
    examples = [next(stream) for _ in range(4)]
    optim = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(12):
        loss = answer_loss(model, collate(examples, processor.tokenizer.pad_token_id))
        optim.zero_grad()
        loss.backward()
        optim.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.6 * losses[0], losses


def test_train_micro_writes_a_loadable_model_folder(tmp_path):
    from pipeline.models.loader import ModelSpec, load_model

    cfg = TrainConfig(steps=2, batch_size=2, eval_every=0, eval_episodes=1, threads=1, max_steps=3)
    result = train_micro(tmp_path / "m", cfg, progress=False, log=lambda *_: None)
    assert result.steps_done == 2 and len(result.losses) == 2
    manifest = read_manifest(tmp_path / "m")
    assert manifest["steps_done"] == 2 and manifest["train_config"]["batch_size"] == 2
    assert {"recipe_version", "final_loss", "heldout_accuracy", "torch", "transformers", "train_stream"} <= set(manifest)
    assert (tmp_path / "m" / "loss_curve.png").stat().st_size > 1000
    loaded = load_model(ModelSpec(path=str(tmp_path / "m"), device="cpu", dtype="float32"))
    assert loaded.name.startswith("micro-agent-r") and loaded.max_pixels == 64 * 28 * 28



def test_train_micro_continues_from_a_folder_on_the_later_phases(tmp_path):
    from pipeline.training.micro import _phase_at

    first = TrainConfig(steps=1, batch_size=2, eval_every=0, eval_episodes=1, threads=1, max_steps=3)
    train_micro(tmp_path / "a", first, progress=False, log=lambda *_: None)
    parent = read_manifest(tmp_path / "a")
    cont = TrainConfig(steps=5, stop_after=2, batch_size=2, eval_every=0, eval_episodes=1, threads=1, max_steps=3,
                       init_from=str(tmp_path / "a"), start_phase=2, seed=1)
    assert [_phase_at(s, cont) for s in range(5)] == [2] * 5  # only the last phase is left
    assert [_phase_at(s, TrainConfig(steps=10, start_phase=1)) for s in range(10)] == [1] * 6 + [2] * 4  # .45 : .33
    result = train_micro(tmp_path / "b", cont, progress=False, log=lambda *_: None)
    manifest = read_manifest(tmp_path / "b")
    assert result.steps_done == 2 and len(result.losses) == 2  # stopped at step 2 of the 5-step schedule
    assert manifest["continued_from"]["weights_sha256"] == parent["weights_sha256"]
    assert manifest["continued_from"]["steps_done"] == 1 and manifest["train_config"]["start_phase"] == 2
    assert manifest["weights_sha256"] != parent["weights_sha256"]  # it trained on from there
    with pytest.raises(FileNotFoundError, match="not a micro-agent folder"):
        train_micro(tmp_path / "c", TrainConfig(steps=1, init_from=str(tmp_path / "nothing")), progress=False)
    with pytest.raises(ValueError, match="start_phase 3"):
        train_micro(tmp_path / "c", TrainConfig(steps=1, start_phase=3), progress=False)


def test_recipe_runs_its_stages_in_one_command(tmp_path):
    """``train-micro --recipe`` chains the stages: each continues from the previous one's written weights,
    and the same stages run again give the same weights (deterministic on CPU at a given thread count)."""
    from pipeline.training.micro import SHIPPED_STAGES, train_recipe

    small = {"batch_size": 2, "eval_every": 0, "eval_episodes": 1, "max_steps": 3}
    stages = ({**small, "steps": 3, "stop_after": 2}, {**small, "steps": 4, "start_phase": 2, "seed": 1})
    lines: list[str] = []
    results = train_recipe(tmp_path / "m", stages, threads=1, progress=False, log=lines.append)
    assert [r.steps_done for r in results] == [2, 4] and results[0].out_dir == tmp_path / "m.stage1"
    first, last = read_manifest(tmp_path / "m.stage1"), read_manifest(tmp_path / "m")
    assert last["continued_from"]["weights_sha256"] == first["weights_sha256"]
    assert last["train_config"]["init_from"] == str(tmp_path / "m.stage1")
    assert sum("stage" in line for line in lines) == 2
    again = train_recipe(tmp_path / "n", stages, threads=1, progress=False, log=lambda *_: None)
    assert read_manifest(again[-1].out_dir)["weights_sha256"] == last["weights_sha256"]
    # the shipped recipe's two threads replay deterministically too (at a count, not across counts)
    two = [read_manifest(train_recipe(tmp_path / f"t{k}", stages, threads=2, progress=False,
                                      log=lambda *_: None)[-1].out_dir)["weights_sha256"] for k in range(2)]
    assert two[0] == two[1]
    # the shipped recipe is the one the shipped manifest records, stage by stage
    shipped = read_manifest(MICRO_DIR)
    assert shipped["steps_done"] == SHIPPED_STAGES[1]["steps"] == 3500
    assert shipped["continued_from"]["steps_done"] == TrainConfig(**SHIPPED_STAGES[0]).steps == 4500
    for key in ("start_phase", "steps", "lr", "seed", "threads"):
        assert shipped["train_config"][key] == SHIPPED_STAGES[1][key], key
    assert shipped["continued_from"]["train_config"]["threads"] == SHIPPED_STAGES[0]["threads"]
    from pipeline.cli import main as cli_main

    with pytest.raises(SystemExit, match="--recipe shipped fixes every stage's settings; drop --steps"):
        cli_main(["train-micro", "--recipe", "shipped", "--steps", "3", "--output", str(tmp_path / "x")])


# --- the shipped weights --------------------------------------------------------------------------


def test_shipped_weights_match_their_manifest():
    manifest = json.loads((MICRO_DIR / MANIFEST_FILE).read_text())
    assert (MICRO_DIR / "model.safetensors").stat().st_size <= 20 * 1024 * 1024
    assert manifest["weights_sha256"] == weights_sha256(MICRO_DIR)
    assert manifest["heldout_accuracy"] >= HELDOUT_FLOOR and manifest["heldout_steps"] >= 800
    assert (MICRO_DIR / "loss_curve.png").is_file()


def _run_subset(compressor_name: str, budget: float, episodes: int = FLOOR_EPISODES) -> list[dict]:
    from pipeline.config import JobConfig, make_benchmark, parse_config
    from pipeline.metrics.units import Unit
    from pipeline.models.loader import ModelSpec, load_model
    from pipeline.step.engine import EpisodeRunner
    from starkv import build

    cfg: JobConfig = parse_config(_micro_job())
    bench = make_benchmark(cfg)
    loaded = load_model(ModelSpec(path="micro", device="cpu", dtype="float32"))
    runner = EpisodeRunner(loaded, bench, cfg.agent, cfg.model.max_new_tokens)
    unit = Unit("t", compressor_name, budget, loaded.name)
    rows = []
    for episode in list(bench.load())[:episodes]:
        rows += runner.run(episode, build(compressor_name), unit)
    return rows


def test_shipped_agent_reaches_the_floor_with_the_full_cache():
    torch.set_num_threads(1)
    rows = _run_subset("full", 100)
    assert len(rows) >= 30 and not any(r["error"] for r in rows)
    accuracy = sum(r["correct"] for r in rows) / len(rows)
    assert accuracy >= FULL_CACHE_FLOOR, [r["raw_output"] for r in rows if not r["correct"]]
    # every answer is a well-formed UI-TARS click the real parser reads
    assert all(r["action_type"] == "click" for r in rows), {r["raw_output"] for r in rows if r["action_type"] != "click"}


@pytest.mark.slow
def test_nightly_catches_a_random_compressor_on_accuracy(ray_local, tmp_path, capsys, isolated_mlflow):
    """The nightly job's own settings and tolerances; the current run swaps STaR-KV for random keep."""
    from pipeline.cli import main
    from pipeline.config import parse_config
    from pipeline.run import job as run_mod

    nightly = yaml.safe_load((ROOT / "jobs" / "nightly.yaml").read_text())
    assert nightly["model"]["path"] == "micro"

    def job(compressor: dict) -> dict:
        data = dict(nightly, compressors=[compressor], budgets=[20], name="nightly-e2e")
        data["benchmark"] = dict(nightly["benchmark"], options=dict(nightly["benchmark"]["options"], num_episodes=4))
        data["ray"] = {"num_actors": 1, "num_cpus_per_actor": 1}
        return data

    base = run_mod.run_job(parse_config(job({"name": "starkv"})), output=str(tmp_path / "base"), echo=lambda _: None)
    cur = run_mod.run_job(parse_config(job({"name": "random", "label": "starkv"})), output=str(tmp_path / "cur"),
                          echo=lambda _: None)
    acc_base, acc_cur = (r.summaries[0].metrics["accuracy"] for r in (base, cur))
    assert acc_base - acc_cur > nightly["regression"]["accuracy"], (acc_base, acc_cur)
    capsys.readouterr()
    # 4 episodes cannot show a drop of the tolerance's size: the paired interval over episodes is wider than
    # the tolerance, so the gate says TOO_SMALL instead of passing (or failing) on noise; on the micro job's
    # 50 episodes the same swap is a significant drop and a REGRESSION (docs/comparisons.md)
    code = main(["regress", "--baseline", str(tmp_path / "base"), "--current", str(tmp_path / "cur"), "--json"])
    data = json.loads(capsys.readouterr().out)
    row = next(r for r in data["rows"] if (r["unit"], r["check"]) == ("starkv@20", "accuracy"))
    assert row["test"] == "paired" and row["delta"] < -nightly["regression"]["accuracy"]
    assert row["status"] == "TOO_SMALL" and (row["ci_high"] - row["ci_low"]) / 2 > nightly["regression"]["accuracy"]
    assert code == (1 if any(r["status"] == "REGRESSION" for r in data["rows"]) else 0)
