"""The micro agent's recipe options: colour labels from the launcher layout, the last phase's recall draw,
defaults that leave the shipped recipe as it was, the held-out split and the diagnostic command."""

from __future__ import annotations

import random

import pytest
import torch

from pipeline.benchmarks.synthetic.launcher import (
    COLOURS,
    GRID,
    RECALL_PROBABILITY,
    LauncherIcon,
    launcher_episode,
    render_launcher,
    wallpaper_tint,
)
from pipeline.config import AgentConfig
from pipeline.models.micro import MICRO_DIR, init_micro, read_manifest
from pipeline.training.micro import (
    RECIPE_OPTIONS,
    SHIPPED_STAGES,
    TrainConfig,
    answer_loss,
    heldout_accuracy,
    heldout_forced,
    recipe_fields,
    split_accuracy,
    train_micro,
)
from pipeline.training.micro_data import (
    IGNORE_INDEX,
    NO_ICON,
    _training_episode,
    collate,
    screen_colour_labels,
    step_examples,
    training_examples,
)


@pytest.fixture(scope="module")
def micro():
    return init_micro(0)


def test_colour_labels_of_a_constructed_screen():
    """Worked out by hand: 6 x 6 cells, token = row * 6 + col; red is class 0, blue 3, white 14, none 16."""
    icons = (LauncherIcon("red", 0, 0), LauncherIcon("blue", 2, 5), LauncherIcon("white", 5, 5))
    labels = screen_colour_labels(icons)
    assert len(labels) == 36 and NO_ICON == 16
    assert labels[0] == 0 and labels[17] == 3 and labels[35] == 14
    assert [k for k, v in enumerate(labels) if v != NO_ICON] == [0, 17, 35]


def test_each_image_token_carries_its_cells_colour(micro):
    """The processor's own pixels: the four patches merged into image token k are cell (k // 6, k % 6) of
    the screen, and the pixel inside the icon square is the colour the label names (the tint where none)."""
    _, processor = micro
    icons = (LauncherIcon("red", 0, 0), LauncherIcon("blue", 2, 5), LauncherIcon("white", 5, 5))
    image = render_launcher(icons)
    pixels = processor.image_processor(images=[image], return_tensors="pt")["pixel_values"]
    assert pixels.shape[0] == 4 * GRID * GRID  # 2 x 2 patches of 14 px per merged token
    mean = torch.tensor(processor.image_processor.image_mean).view(3, 1, 1)
    std = torch.tensor(processor.image_processor.image_std).view(3, 1, 1)
    names = list(COLOURS)
    for token, label in enumerate(screen_colour_labels(icons)):
        patch = pixels[4 * token].view(3, 2, 14, 14)[:, 0]  # the token's top-left patch, first frame
        rgb = ((patch * std + mean) * 255).round()[:, 13, 13]  # cell pixel (13, 13): inside the icon square
        row, col = divmod(token, GRID)
        want = COLOURS[names[label]] if label != NO_ICON else wallpaper_tint(row, col)
        assert torch.allclose(rgb, torch.tensor(want, dtype=rgb.dtype), atol=2), (token, rgb, want)


def test_encoded_steps_label_every_image_token_of_every_screen(micro):
    """A whole episode: every prompt image's 36 tokens get the labels of the screen shown there (the last
    ``len(images)`` screens), read back from the prompt's own images."""
    _, processor = micro
    agent = AgentConfig(image_slots=3)
    examples = list(step_examples(random.Random("colour-test"), processor, agent, 4, 4, colours=True))
    assert len(examples) == 4
    names = list(COLOURS)
    image_token = processor.image_token_id
    for k, example in enumerate(examples):
        where = example.input_ids == image_token
        assert int(where.sum()) == 36 * min(k + 1, 3)
        assert bool((example.image_colours[~where] == IGNORE_INDEX).all())
        labels = example.image_colours[where].view(-1, 36)
        pixels = example.pixel_values.view(labels.shape[0], 144, 3, 2, 14, 14)
        for image in range(labels.shape[0]):
            for token in range(36):
                label = int(labels[image, token])
                centre = pixels[image, 4 * token, :, 0, 13, 13]
                mean = torch.tensor(processor.image_processor.image_mean)
                std = torch.tensor(processor.image_processor.image_std)
                rgb = ((centre * std + mean) * 255).round()
                if label != NO_ICON:
                    assert torch.allclose(rgb, torch.tensor(COLOURS[names[label]], dtype=rgb.dtype), atol=2)
                else:
                    assert not any(torch.allclose(rgb, torch.tensor(c, dtype=rgb.dtype), atol=2) for c in COLOURS.values())
    # the target hint still points at a labelled icon token of the right colour
    for example in examples:
        assert int(example.image_colours[example.target_token]) != NO_ICON


def test_the_training_draw_is_the_generators_by_default():
    """With the generator's recall probability and no distance weights it is ``launcher_episode``."""
    for i in range(40):
        ours = list(_training_episode(random.Random(f"t:{i}"), 6, 3, RECALL_PROBABILITY, None))
        theirs = list(launcher_episode(random.Random(f"t:{i}"), 6))
        assert [(s.icons, s.target, s.kind, s.steps_back) for s in ours] == \
               [(s.icons, s.target, s.kind, s.steps_back) for s in theirs]


def test_recall_share_and_distance_follow_the_options():
    backs = [s.steps_back for i in range(200)
             for s in _training_episode(random.Random(f"r:{i}"), 6, 3, 1.0, (0, 1, 1, 1))]
    assert 1 not in backs  # never one back
    recalled = [b for b in backs if b]
    assert len(recalled) > 0.5 * len(backs) and {2, 3, 4} <= set(recalled)


def test_defaults_keep_the_shipped_recipe_and_its_manifest():
    """New options are off by default and not written into a default manifest: the shipped stages give
    exactly the shipped manifest's ``train_config`` (but stage 2's parent path)."""
    shipped = read_manifest(MICRO_DIR)
    assert _json(recipe_fields(TrainConfig(**SHIPPED_STAGES[0]))) == _json(shipped["continued_from"]["train_config"])
    second = recipe_fields(TrainConfig(**SHIPPED_STAGES[1], init_from=shipped["train_config"]["init_from"]))
    assert _json(second) == _json(shipped["train_config"])
    assert all(getattr(TrainConfig(), name) == default for name, default in RECIPE_OPTIONS.items())
    changed = recipe_fields(TrainConfig(colour_weight=1.0, rope_theta=1e4))
    assert changed["colour_weight"] == 1.0 and changed["rope_theta"] == 1e4 and "recall_back" not in changed


def _json(value):
    import json

    return json.loads(json.dumps(value))


def test_the_colour_loss_trains_a_head_that_is_never_saved(tmp_path, micro):
    from safetensors import safe_open

    model, processor = micro
    stream = training_examples(0, processor, AgentConfig(image_slots=2), 2, 2, colours=True)
    batch = collate([next(stream) for _ in range(2)], processor.tokenizer.pad_token_id)
    head = torch.nn.Linear(model.config.text_config.hidden_size, 17)
    with torch.no_grad():
        plain = answer_loss(model, dict(batch))
        with_colour = answer_loss(model, dict(batch), colour_head=head, colour_weight=1.0)
    assert float(with_colour) > float(plain) + 1.0  # + ~log(17) of an untrained head
    keys = {}
    for name, weight in (("plain", 0.0), ("colour", 1.0)):
        cfg = TrainConfig(steps=2, batch_size=2, eval_every=0, eval_episodes=1, threads=1, max_steps=3,
                          start_phase=1, colour_weight=weight, eval_mode="forced")
        result = train_micro(tmp_path / name, cfg, progress=False, log=lambda *_: None)
        with safe_open(str(tmp_path / name / "model.safetensors"), "pt") as fh:
            keys[name] = {k: fh.get_slice(k).get_shape() for k in fh.keys()}
    assert "colour_head_accuracy" in result.evals[-1]
    assert keys["colour"] == keys["plain"]  # the head is not saved: the same tensors as without it
    assert read_manifest(tmp_path / "colour")["train_config"]["colour_weight"] == 1.0


def test_forced_heldout_equals_greedy_on_the_shipped_weights():
    from pipeline.models.loader import ModelSpec, load_model

    torch.set_num_threads(1)
    loaded = load_model(ModelSpec(path="micro", device="cpu", dtype="float32"))
    agent = AgentConfig(image_slots=5)
    forced = heldout_forced(loaded.model, loaded.processor, agent, 4, 1)
    greedy = heldout_accuracy(loaded.model, loaded.processor, agent, 4, 1)
    assert forced == greedy and forced["steps"] >= 12 and "accuracy_back0" in forced


def test_split_accuracy():
    result = split_accuracy([("icon", 0, 1), ("icon", 0, 0), ("recalled_icon", 2, 1)])
    assert result["accuracy"] == pytest.approx(2 / 3) and result["steps"] == 3
    assert result["accuracy_icon"] == 0.5 and result["steps_recalled_icon"] == 1
    assert result["accuracy_back2"] == 1.0 and result["steps_back0"] == 2


def test_diagnose_prints_the_split(tmp_path, capsys):
    from pipeline.cli import main

    cfg = TrainConfig(steps=1, batch_size=2, eval_every=0, eval_episodes=1, threads=1, max_steps=3)
    train_micro(tmp_path / "m", cfg, progress=False, log=lambda *_: None)
    assert main(["micro-diagnose", str(tmp_path / "m"), "--episodes", "2", "--json", str(tmp_path / "d.json")]) == 0
    out = capsys.readouterr().out
    assert "by step kind: icon" in out and "by screenshots back: back0" in out
    import json

    data = json.loads((tmp_path / "d.json").read_text())
    assert data["steps"] == data["steps_back0"] + sum(v for k, v in data.items() if k.startswith("steps_back") and k != "steps_back0")
    assert data["steps"] >= 8 and data["episodes"] == 2  # two episodes of 4-6 steps


def test_diagnose_reproduces_the_shipped_split_on_the_first_episodes():
    """The evaluation's own step code: the floor subset of test_micro_agent (16 of 42) and its kinds, as the rows
    of `starkv-eval run jobs/micro.yaml` have them for the first 8 episodes (11/30 current, 5/12 recall)."""
    from pipeline.training.micro_diagnose import diagnose

    result = diagnose(MICRO_DIR, 8)
    assert result["steps"] == 42 and round(result["accuracy"] * 42) == 16
    assert (result["steps_icon"], result["steps_recalled_icon"]) == (30, 12)
    assert round(result["accuracy_icon"] * 30) == 11 and round(result["accuracy_recalled_icon"] * 12) == 5
