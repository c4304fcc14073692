"""Launcher episodes (the micro agent's benchmark): generator invariants, on-disk round trip, scoring."""

from __future__ import annotations

import json
import random

import pytest

from pipeline.agent.parser import parse_action
from pipeline.benchmarks import get_benchmark
from pipeline.benchmarks.synthetic.benchmark import (
    LauncherBenchmark,
    ensure_synthetic_dataset,
    generate_synthetic,
)
from pipeline.benchmarks.synthetic.launcher import COLOURS, launcher_episode
from pipeline.config import parse_config, validate

# Written out from the layout rule, not read from the module: 168 px screens, 28 px cells (one
# language-model token each: patch 14 x merge 2), icons 12 px squares in the middle of their cell.
SCREEN, CELL, MARGIN = 168, 28, 8


def _steps(seed: int, n: int = 6):
    return list(launcher_episode(random.Random(seed), n))


def test_icon_sits_in_one_cell_and_answer_is_its_centre():
    for step in _steps(1):
        for icon in step.icons:
            x1, y1, x2, y2 = icon.bbox
            assert (x1 - MARGIN) % CELL == 0 and (y1 - MARGIN) % CELL == 0
            assert (x2 - x1, y2 - y1) == (CELL - 2 * MARGIN, CELL - 2 * MARGIN)
            assert 0 <= x1 and x2 <= SCREEN and 0 <= y1 and y2 <= SCREEN
        cx = step.target.col * CELL + CELL // 2
        cy = step.target.row * CELL + CELL // 2
        assert step.answer == f"Action: click(start_box='({cx},{cy})')"


def test_pixels_carry_the_cell_position_and_the_icon_colour():
    step = _steps(2)[0]
    img = step.image.convert("RGB")
    icon = step.icons[0]
    x1, y1, x2, y2 = icon.bbox
    assert img.getpixel(((x1 + x2) // 2, (y1 + y2) // 2)) == COLOURS[icon.colour]
    # The rim of every cell shows the wallpaper tint: red grows with the column, green with the row.
    rims = {(r, c): img.getpixel((c * CELL + 1, r * CELL + 1)) for r in range(6) for c in range(6)}
    assert len(set(rims.values())) == 36
    assert all(rims[(r, c)][0] < rims[(r, c + 1)][0] for r in range(6) for c in range(5))
    assert all(rims[(r, c)][1] < rims[(r + 1, c)][1] for r in range(5) for c in range(6))


@pytest.mark.parametrize("seed", range(20))
def test_every_instruction_names_one_icon_in_the_visible_history(seed):
    steps = _steps(seed, 8)
    for k, step in enumerate(steps):
        visible = [icon for s in steps[max(0, k - 4):k + 1] for icon in s.icons]  # 4 past + current
        colours = [icon.colour for icon in visible]
        assert len(colours) == len(set(colours)), "a colour repeats inside the image window"
        assert step.target in visible
        if step.kind == "recalled_icon":
            assert step.target not in step.icons, "a recalled icon must not be on the current screen"
            assert step.instruction == f"Click where the {step.target.colour} icon was"
            assert step.target not in [s.target for s in steps[:k]], "recalled icons were never clicked before"
        else:
            assert step.kind == "icon" and step.target in step.icons
            assert step.instruction == f"Click the {step.target.colour} icon"


def test_both_kinds_occur():
    kinds = [s.kind for seed in range(10) for s in _steps(seed, 6)]
    assert 0.2 < kinds.count("recalled_icon") / len(kinds) < 0.6


def test_launcher_dataset_round_trip_and_perfect_answers_score(tmp_path):
    root = generate_synthetic(tmp_path / "d", num_episodes=3, seed=5, style="launcher", min_steps=4, max_steps=4)
    data = json.loads((root / "synthetic.json").read_text())
    assert data["style"] == "launcher" and len(data["episodes"]) == 3
    bench = get_benchmark("launcher")(str(root))
    assert bench.prompt_kind == "grounding"
    episodes = list(bench.load())
    assert sum(len(e.steps) for e in episodes) == 12
    again = generate_synthetic(tmp_path / "e", num_episodes=3, seed=5, style="launcher", min_steps=4, max_steps=4)
    assert (again / "synthetic.json").read_bytes() == (root / "synthetic.json").read_bytes()
    for episode in episodes:
        for step in episode.steps:
            assert step.error is None
            x1, y1, x2, y2 = step.target["bbox"]
            answer = f"Action: click(start_box='({(x1 + x2) // 2},{(y1 + y2) // 2})')"
            action = parse_action(answer, image_size=(SCREEN, SCREEN), resized_size=(SCREEN, SCREEN))
            assert bench.score(step, action, (SCREEN, SCREEN)).correct
            outside = parse_action(f"Action: click(start_box='({x2 + 1},{y1})')", image_size=(SCREEN, SCREEN),
                                   resized_size=(SCREEN, SCREEN))
            assert not bench.score(step, outside, (SCREEN, SCREEN)).correct
    kinds = {s.meta["element_type"] for e in episodes for s in e.steps}
    assert kinds <= {"icon", "recalled_icon"}


def test_aggregate_reports_accuracy_per_kind(tmp_path):
    rows = [{"correct": True, "error": None, "meta_json": json.dumps({"element_type": "icon"})},
            {"correct": False, "error": None, "meta_json": json.dumps({"element_type": "recalled_icon"})},
            {"correct": True, "error": None, "meta_json": json.dumps({"element_type": "recalled_icon"})}]
    agg = LauncherBenchmark(str(tmp_path)).aggregate(rows)
    assert agg["accuracy"] == pytest.approx(2 / 3)
    assert agg["accuracy_icon"] == 1.0 and agg["accuracy_recalled_icon"] == 0.5


def test_ensure_names_the_style_in_the_cache_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("STARKV_CACHE", str(tmp_path))
    root = ensure_synthetic_dataset(num_episodes=2, seed=3, style="launcher")
    assert root.name == "synthetic-launcher-v2-2-3-steps3-6" and (root / ".complete").is_file()
    with pytest.raises(ValueError, match="unknown synthetic style 'bogus'"):
        generate_synthetic(tmp_path / "x", num_episodes=1, style="bogus")


def test_a_launcher_job_needs_no_path():
    cfg = parse_config({"name": "l", "benchmark": {"name": "launcher", "options": {"num_episodes": 2}},
                        "compressors": [{"name": "full"}], "budgets": [50]})
    validate(cfg)
