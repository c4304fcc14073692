"""The UI-TARS agent protocol per benchmark: defaults, prompts, history, layouts and bad data (no Ray).

The runner tests drive ``EpisodeRunner`` directly on the tiny model with small screenshots, so each
episode takes a few seconds on CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import yaml

import starkv
from pipeline.agent.history import format_history_text
from pipeline.agent.parser import format_action, parse_action
from pipeline.agent.prompts import ACTION_SPACES, MIND2WEB_DOUBAO, render_prompt
from pipeline.benchmarks.common.base import BENCHMARKS, get_benchmark
from pipeline.config import AgentConfig, ConfigError, parse_config
from pipeline.metrics.units import Unit
from pipeline.step.engine import EpisodeRunner
from starkv.compressor import Compressor
from tests.fixtures.benchmarks import write_mind2web
from tests.fixtures.episodes import default_agentnet_trajectories, write_agentnet

ROOT = Path(__file__).resolve().parents[2]
SMALL = (336, 224)  # 12 x 8 merged patches: 96 image tokens, keeps CPU steps short

# benchmark -> (prompt kind, prompt family, history source, image slots) as the reference drivers run them
PROTOCOL = {
    "screenspot_v2": ("grounding", "point", "ground_truth", 1),
    "screenspot_pro": ("grounding", "point", "ground_truth", 1),
    "androidcontrol": ("androidcontrol", "point", "ground_truth", 5),
    "agentnetbench": ("agentnet", "point", "model", 5),
    "mind2web": ("mind2web", "point", "ground_truth", 1),
    "synthetic": ("computer", "box", "ground_truth", 5),
    "launcher": ("grounding", "box", "ground_truth", 5),  # click-only launcher episodes, multi-step history
}


# --- protocol defaults and config ------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PROTOCOL))
def test_benchmark_protocol_defaults(name):
    cls = get_benchmark(name)
    kind, family, source, slots = PROTOCOL[name]
    assert (cls.prompt_kind, cls.default_prompt_family, cls.default_history_source, cls.default_image_slots) == (
        kind, family, source, slots)
    resolved = AgentConfig().resolved(cls)
    assert (resolved.prompt_family, resolved.history_source, resolved.image_slots) == (family, source, slots)
    explicit = AgentConfig(image_slots=2, history_source="model", prompt_family="box").resolved(cls)
    assert (explicit.prompt_family, explicit.history_source, explicit.image_slots) == ("box", "model", 2)


def test_every_registered_benchmark_has_a_protocol():
    assert set(BENCHMARKS) == set(PROTOCOL)


def _job(**agent):
    return {"name": "t", "compressors": ["full"], "budgets": [50], "agent": agent}


def test_parse_config_fills_benchmark_defaults_and_keeps_explicit_values():
    assert parse_config(_job()).agent == AgentConfig(image_slots=5, history_source="ground_truth",
                                                     prompt_family="box")
    cfg = parse_config(_job(image_slots=1, history_source="model", prompt_family="point"))
    assert (cfg.agent.image_slots, cfg.agent.history_source, cfg.agent.prompt_family) == (1, "model", "point")


@pytest.mark.parametrize("field_name,value", [
    ("history_source", "teacher"), ("prompt_family", "boxes"), ("image_slots", 0), ("image_slots", "5"),
    ("text_history", 2.5),
])
def test_bad_explicit_agent_values_are_rejected_naming_the_field(field_name, value):
    with pytest.raises(ConfigError, match=rf"^agent\.{field_name}:"):
        parse_config(_job(**{field_name: value}))


# --- jobs/*.yaml -------------------------------------------------------------------------------------------

REAL_JOBS = {  # benchmark -> max_new_tokens of its reference driver
    "screenspot_v2": 200, "screenspot_pro": 400, "androidcontrol": 600, "agentnetbench": 1000, "mind2web": 500,
}


def _paths_replaced(data: dict, folder: Path) -> dict:
    data = {**data, "model": {**data["model"], "path": str(folder)},
            "benchmark": {**data["benchmark"], "path": str(folder)}}
    return data


@pytest.mark.parametrize("path", sorted((ROOT / "jobs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_job_file_validates(path, tmp_path):
    """Everything but the existence of cluster paths is checked; those fail naming the path field."""
    data = yaml.safe_load(path.read_text())
    model_path = data["model"]["path"]
    if model_path in ("tiny", "micro") or str(model_path).startswith("tiny:"):  # built here / shipped in the repo
        parse_config(data, source=str(path))
        return
    with pytest.raises(ConfigError, match=r"^(benchmark|model)\.path: "):
        parse_config(data)
    cfg = parse_config(_paths_replaced(data, tmp_path), source=str(path))
    get_benchmark(cfg.benchmark.name)(str(tmp_path), **cfg.benchmark.options)  # options are accepted


@pytest.mark.parametrize("bench", sorted(REAL_JOBS))
def test_real_job_settings(bench, tmp_path):
    path = ROOT / "jobs" / f"{bench}.yaml"
    data = yaml.safe_load(path.read_text())
    assert data["model"]["path"] == "/models/UI-TARS-1.5-7B"
    assert data["benchmark"]["path"].startswith("/data/") and data["output"].startswith("/results/")
    cfg = parse_config(_paths_replaced(data, tmp_path))
    assert cfg.benchmark.name == bench
    assert (cfg.model.dtype, cfg.model.attn_implementation) == ("bfloat16", None)
    assert cfg.model.max_new_tokens == REAL_JOBS[bench]
    assert (cfg.model.min_pixels, cfg.model.max_pixels) == (100 * 28 * 28, 16384 * 28 * 28)
    assert [float(b) for b in cfg.budgets] == [10.0, 20.0]
    assert [c.name for c in cfg.compressors] == ["full", "snapkv", "guikv", "starkv"]
    assert (cfg.ray.num_actors, float(cfg.ray.num_gpus_per_actor)) == (1, 1.0)
    assert cfg.tracking.uri is None  # MLFLOW_TRACKING_URI from the environment
    _, family, source, slots = PROTOCOL[bench]
    assert (cfg.agent.prompt_family, cfg.agent.history_source, cfg.agent.image_slots) == (family, source, slots)


def test_every_real_benchmark_has_a_job_file():
    names = {yaml.safe_load(p.read_text())["benchmark"]["name"] for p in (ROOT / "jobs").glob("*.yaml")}
    assert set(REAL_JOBS) <= names


# --- Mind2Web prompt and select action --------------------------------------------------------------------


def test_mind2web_prompt_sections_and_previous_actions():
    text = render_prompt("mind2web", "Find flights to {NYC}", family="point",
                         previous_actions=["CLICK [One-way]", "TYPE [To] New York"])
    for section in ("## Output Format", "## Action Space", "## Note", "## Rule", "## Previous Actions",
                    "## User Instruction"):
        assert section in text
    assert text.index("## Rule") < text.index("## Previous Actions") < text.index("## User Instruction")
    assert "## Previous Actions\nCLICK [One-way]\nTYPE [To] New York\n\n\n\n## User Instruction\nFind flights to {NYC}\n" \
        in text
    assert "- select(point='<point>x1 y1</point>', content='xxx')" in text
    assert "- type(content='xxx') # First click on the textbox" in text  # no point in the driver's type
    assert ACTION_SPACES["mind2web"] == ("type", "scroll", "select", "click")
    box = render_prompt("mind2web", "x", family="box")
    assert "- select(start_box='<|box_start|>(x1,y1)<|box_end|>', content='xxx')" in box and "<point>" not in box
    assert render_prompt("mind2web", "x", family="point", language="Chinese").count("Use Chinese in") == 1
    assert MIND2WEB_DOUBAO.startswith("You are a GUI agent.")
    with pytest.raises(ValueError, match="goal"):
        render_prompt("mind2web", "x", goal="g")


@pytest.mark.parametrize("text", [
    "Thought: choose two\nAction: select(point='<point>100 200</point>', content='2 adults')",
    "Action: select(start_box='<|box_start|>(100,200)<|box_end|>', content='2 adults')",
    "Action: select('<point>100 200</point>', '2 adults')",
])
def test_select_action_parses_and_round_trips(text):
    a = parse_action(text, image_size=(1000, 500), resized_size=(1000, 500))
    assert a.ok and a.action_type == "select" and a.text == "2 adults"
    assert a.point == pytest.approx((0.1, 0.4))
    for family in ("box", "point"):
        back = parse_action(format_action(a, (1000, 500), family=family), image_size=(1000, 500),
                            resized_size=(1000, 500))
        assert (back.action_type, back.text) == ("select", "2 adults") and back.point == pytest.approx(a.point)


def test_select_without_content_is_invalid():
    a = parse_action("Action: select(point='<point>1 2</point>')", image_size=(10, 10), resized_size=(10, 10))
    assert a.action_type == "invalid" and "content" in a.error


def test_mind2web_scores_a_select_step(tmp_path):
    write_mind2web(tmp_path / "m2w")
    bench = get_benchmark("mind2web")(str(tmp_path / "m2w"), cache_dir=str(tmp_path / "cache"))
    step = next(s for e in bench.load() for s in e.steps if s.target["op"] == "SELECT")
    w, h = step.meta["image_size"]
    x1, y1, x2, y2 = step.target["bbox"]
    px, py = round((x1 + x2) / 2 * 1000 / w), round((y1 + y2) / 2 * 1000 / h)
    hit = parse_action(f"Action: select(point='<point>{px} {py}</point>', content='2 Adults')",
                       image_size=(w, h), resized_size=(1000, 1000))
    assert bench.score(step, hit, (w, h)).correct
    wrong = parse_action(f"Action: select(point='<point>{px} {py}</point>', content='3 adults')",
                         image_size=(w, h), resized_size=(1000, 1000))
    assert not bench.score(step, wrong, (w, h)).correct


# --- EpisodeRunner on the tiny model --------------------------------------------------------------------


@dataclass
class LayoutRecorder(Compressor):
    """SnapKV that remembers the PromptLayout it is given at every prefill (one entry per step)."""

    inner: Compressor | None = None
    layouts: list = field(default_factory=list)

    def __post_init__(self) -> None:
        self.window_size = self.inner.window_size

    def query_window(self, layout, prompt_length):  # called once per layer at prefill
        self._pending = layout
        return self.inner.query_window(layout, prompt_length)

    def layer_capacity(self, prompt_length, cap, layer_idx, num_layers):
        if layer_idx == 0:
            assert self._pending.prompt_length == prompt_length
            self.layouts.append(self._pending)
        return self.inner.layer_capacity(prompt_length, cap, layer_idx, num_layers)

    def select(self, ctx):
        assert ctx.layout == self.layouts[-1]
        return self.inner.select(ctx)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    from pipeline.models.loader import ModelSpec, load_model
    from pipeline.models.tiny import ensure_tiny_model

    folder = ensure_tiny_model(tmp_path_factory.mktemp("tiny") / "seed0", seed=0)
    torch.manual_seed(0)
    return load_model(ModelSpec(path=str(folder), device="cpu", dtype="float32"))


class Capture:
    """Records the chat text and input ids of every step the runner renders."""

    def __init__(self, loaded):
        self.loaded, self.texts, self.input_ids = loaded, [], []

    def __enter__(self):
        proc = self.loaded.processor
        self._template = proc.apply_chat_template

        def template(*args, **kwargs):
            out = self._template(*args, **kwargs)
            self.texts.append(out)
            return out

        proc.apply_chat_template = template

        def pre_hook(module, args, kwargs):
            ids = kwargs.get("input_ids")
            if ids is not None and ids.shape[1] > 1:
                self.input_ids.append(ids[0].tolist())

        self._handle = self.loaded.model.register_forward_pre_hook(pre_hook, with_kwargs=True)
        return self

    def __exit__(self, *exc):
        del self.loaded.processor.apply_chat_template
        self._handle.remove()


def _vision_runs(ids, loaded):
    """Independent of PromptLayout: the runs of <|image_pad|> tokens, each framed by vision start/end."""
    runs, start = [], None
    for i, tok in enumerate(ids + [-1]):
        if tok == loaded.image_pad_id and start is None:
            start = i
        elif tok != loaded.image_pad_id and start is not None:
            assert ids[start - 1] == loaded.vision_start_id and ids[i] == loaded.vision_end_id
            runs.append((start, i))
            start = None
    return runs


def _agentnet(root: Path, trajectories=None, **kw):
    write_agentnet(root, trajectories, sizes={"s_fixture_a": SMALL, "s_fixture_b": SMALL}, **kw)
    return get_benchmark("agentnetbench")(str(root))


def _run(loaded, bench, episode, agent=None, capture=True):
    runner = EpisodeRunner(loaded, bench, agent or AgentConfig(), max_new_tokens=3)
    comp = LayoutRecorder(inner=starkv.build("snapkv"))
    with Capture(loaded) as cap:
        rows = runner.run(episode, comp, Unit(run_id="r", compressor="snapkv", budget=50.0, model="tiny"))
    return rows, comp, cap


def _check_layouts(loaded, rows, comp, cap, slots):
    assert [r["error"] for r in rows] == [None] * len(rows)
    assert len(comp.layouts) == len(cap.input_ids) == len(rows)
    for k, (layout, ids, row) in enumerate(zip(comp.layouts, cap.input_ids, rows)):
        assert list(layout.image_spans) == _vision_runs(ids, loaded)
        assert layout.prompt_length == len(ids) == row["prompt_tokens"]
        assert layout.num_images == min(k + 1, slots) == row["num_images"]


def test_layouts_and_model_output_history(loaded, tmp_path):
    """AgentNetBench defaults: 5 image slots, the model's own outputs under GUI-KV's double header."""
    bench = _agentnet(tmp_path / "anb")
    episode = bench.load()[0]
    rows, comp, cap = _run(loaded, bench, episode)
    _check_layouts(loaded, rows, comp, cap, slots=5)
    own = rows[0]["raw_output"]
    assert own.strip(), "the tiny model produced no text; the test needs some"
    assert format_history_text(1, own, gui_kv_header=True) in cap.texts[1]
    assert format_history_text(1, own, gui_kv_header=True) in cap.texts[2]
    assert format_history_text(2, rows[1]["raw_output"], gui_kv_header=True) in cap.texts[2]
    assert episode.steps[0].history_text not in cap.texts[1] + cap.texts[2]
    assert [t.count("<|vision_start|>") for t in cap.texts] == [1, 2, 3]


def test_layouts_and_teacher_forced_history_beyond_the_image_window(loaded, tmp_path):
    """image_slots 2: one past screenshot, but the older step keeps its (ground-truth) text turn."""
    bench = _agentnet(tmp_path / "anb")
    episode = bench.load()[0]
    rows, comp, cap = _run(loaded, bench, episode, AgentConfig(image_slots=2, history_source="ground_truth"))
    _check_layouts(loaded, rows, comp, cap, slots=2)
    gt = [format_history_text(j + 1, s.history_text, gui_kv_header=True) for j, s in enumerate(episode.steps)]
    assert gt[0] in cap.texts[1] and gt[0] in cap.texts[2] and gt[1] in cap.texts[2]
    last = cap.texts[2]  # step 1's text turn comes before step 2's screenshot turn, which has no text
    assert last.index(gt[0]) < last.index("<|vision_start|>") < last.index(gt[1])
    assert rows[0]["raw_output"] not in last


def test_step_header_and_previous_actions_layouts(loaded, tmp_path):
    """Ordinary benchmarks write "Step k:\\n..."; Mind2Web puts the GT actions in its prompt, one screenshot."""
    bench = _agentnet(tmp_path / "anb")
    bench.history_header = "step"  # instance override: the plain OS-Atlas / AndroidControl header
    episode = bench.load()[1]
    episode.steps = episode.steps[:2]
    _, _, cap = _run(loaded, bench, episode, AgentConfig(history_source="ground_truth"))
    assert "<|im_start|>assistant\nStep 1:\n" + episode.steps[0].history_text + "<|im_end|>" in cap.texts[1]
    assert "# Step" not in cap.texts[1]

    write_mind2web(tmp_path / "m2w")
    m2w = get_benchmark("mind2web")(str(tmp_path / "m2w"), cache_dir=str(tmp_path / "cache"))
    task = m2w.load()[0]
    rows, comp, cap = _run(loaded, m2w, task)
    assert [layout.num_images for layout in comp.layouts] == [1] * len(task.steps)
    assert cap.texts[0].startswith("<|im_start|>system\nYou are a helpful assistant. <|im_end|>")
    third = cap.texts[2]
    section = third[third.index("## Previous Actions\n"):third.index("## User Instruction")]
    assert section == "## Previous Actions\n" + "\n".join(s.history_text for s in task.steps[:2]) + "\n\n\n\n"
    assert "<|im_start|>assistant\nStep" not in third and "- select(point=" in third


def test_bad_data_rows_name_the_file_and_the_episode_goes_on(loaded, tmp_path):
    traj = default_agentnet_trajectories()[0]
    traj["steps"] = [*traj["steps"], *[{**s, "step_num": 10 + i, "image": f"extra_{i}.png"}
                                        for i, s in enumerate(traj["steps"][:2])]]
    root = tmp_path / "anb"
    bench = _agentnet(root, [traj], skip_images={"extra_0.png"})  # step 3: missing when loading
    corrupt = root / "images" / traj["steps"][1]["image"]
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n this is not a png at all")  # step 1: undecodable
    episode = bench.load()[0]
    vanished = Path(episode.steps[4].image_path)
    vanished.unlink()  # step 4: deleted after loading
    rows, comp, _ = _run(loaded, bench, episode)
    errors = [r["error"] for r in rows]
    assert errors[0] is None and errors[2] is None
    assert str(corrupt) in errors[1] and "cannot be decoded" in errors[1]
    assert "extra_0.png" in errors[3] and "does not exist" in errors[3]
    assert str(vanished) in errors[4] and "not found" in errors[4]
    # failed steps contribute no screenshot to the history of later steps
    assert [r["num_images"] for r in rows] == [1, 0, 2, 0, 0]
    assert [layout.num_images for layout in comp.layouts] == [1, 2]
    assert all(r["step_key"].endswith(f"/{r['step_index']}") for r in rows)
