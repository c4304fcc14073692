"""AndroidControl: the reference drivers' per-step JSON layout and the dataset's ``type`` action."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.agent.actions import ParsedAction
from pipeline.benchmarks.androidcontrol.benchmark import AndroidControlBenchmark
from pipeline.benchmarks.common.base import BenchmarkDataError
from tests.fixtures.episodes import ACEpisode, write_androidcontrol
from tests.fixtures.reference import default_androidcontrol_steps, write_androidcontrol_steps


@pytest.fixture(scope="module")
def steps_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ac_steps")
    write_androidcontrol_steps(root)
    return root


def test_loads_the_drivers_layout_grouped_by_episode(steps_dir: Path):
    episodes = list(AndroidControlBenchmark(str(steps_dir)).load())
    assert [e.episode_id for e in episodes] == ["501", "502"]
    ep = episodes[0]
    assert [s.step_index for s in ep.steps] == [0, 1, 2, 3]  # sorted although listed 1, 0, 2, 3
    assert all(s.error is None for s in ep.steps), [s.error for s in ep.steps]
    s0, s1 = ep.steps[0], ep.steps[1]
    assert s0.image_path == str((steps_dir / "501" / "0.png").resolve())
    assert s0.meta["image_size"] == [1080, 2400] and s0.meta["gt_point"] == [0.5, 0.5]
    assert s0.meta["layout"] == "steps_json" and s0.instruction == "Search for hello in Notes"
    # the nested tree is flattened, boxes as [x1, y1, x2, y2]
    assert [n["box"] for n in s0.meta["a11y"]] == [[0, 0, 1080, 2400], [400, 1100, 680, 1300], [0, 60, 150, 200]]
    assert s0.meta["a11y"][2]["desc"] == "Navigate up"
    # type_text without a point is the dataset's input_text; the driver's name is kept
    assert s1.meta["gt_action"] == {"action_type": "input_text", "text": "hello"}
    assert s1.meta["gt_source_type"] == "type_text" and s1.meta["a11y"] is None
    assert s1.meta["previous_actions"] == ["Tap the search bar"]
    assert episodes[1].steps[0].meta["image_size"] == [1440, 3120]
    # the file itself is also a valid path; low level uses the step instruction
    low = list(AndroidControlBenchmark(str(steps_dir / "500_steps.json"), level="low").load())
    assert [s.instruction for s in low[0].steps][:2] == ["Tap the search bar", "Type hello"]


def test_dataset_file_option_and_type_text_with_a_point(tmp_path: Path):
    rec = dict(default_androidcontrol_steps()[1], action={"action_type": "type_text", "x": 540, "y": 1200,
                                                           "text": "hello"})
    write_androidcontrol_steps(tmp_path, [rec], file_name="my_steps.json")
    [ep] = AndroidControlBenchmark(str(tmp_path), dataset_file="my_steps.json").load()
    assert ep.steps[0].meta["gt_action"]["action_type"] == "type" and ep.steps[0].meta["gt_point"] == [0.5, 0.5]


def test_bad_records_become_error_rows_naming_file_and_field(tmp_path: Path):
    good = default_androidcontrol_steps()[1]
    records = [
        dict(good, screenshot=None),
        dict(good, step_index=1, screenshot="501/missing.png"),
        dict(good, step_index=2, action={"action_type": "click", "x": 5}),
        dict(good, step_index=3, action={"action_type": "swipe"}),
        {k: v for k, v in good.items() if k != "episode_id"},
        dict(good, step_index="two"),
        dict(good, step_index=6, accessibility_tree=[{"text": "no box"}]),
        dict(good, step_index=7, goal=""),
        "not an object",
        dict(good, step_index=8),
        dict(good, step_index=8),  # the same step twice
    ]
    file = write_androidcontrol_steps(tmp_path, records, skip_images={"501/missing.png"})
    episodes = list(AndroidControlBenchmark(str(tmp_path)).load())
    errors = {s.meta["record"]: s.error for e in episodes for s in e.steps}
    name = str(file.resolve())
    expected = {0: "field 'screenshot' is missing", 1: "(field 'screenshot') does not exist",
                2: "field 'action' click needs numeric fields 'x' and 'y'", 3: "field 'action_type' is 'swipe'",
                4: "field 'episode_id'", 5: "field 'step_index'", 6: "field 'accessibility_tree'",
                7: "field 'goal'", 8: "record is not a JSON object", 10: "field 'step_index' 8 repeats record 9"}
    for record, needle in expected.items():
        assert errors[record] is not None and name in errors[record] and needle in errors[record], errors[record]
    assert errors[9] is None
    # an error step scores 0 with its error as the reason
    bench = AndroidControlBenchmark(str(tmp_path))
    step = next(s for e in episodes for s in e.steps if s.meta["record"] == 3)
    assert "swipe" in bench.score(step, ParsedAction("wait"), (1, 1)).reason


def test_steps_file_that_is_not_a_list_is_a_data_error(tmp_path: Path):
    (tmp_path / "500_steps.json").write_text(json.dumps({"steps": []}))
    with pytest.raises(BenchmarkDataError, match="500_steps.json holds a dict"):
        AndroidControlBenchmark(str(tmp_path)).load()
    (tmp_path / "500_steps.json").write_text("[{")
    with pytest.raises(BenchmarkDataError, match="not readable JSON"):
        AndroidControlBenchmark(str(tmp_path)).load()


def test_tfrecord_type_action_loads_and_scores(tmp_path: Path):
    # the dataset README's ``type``: tap (x, y), input the text, press enter
    ep = ACEpisode(9, "Search", [{"action_type": "type", "x": 540, "y": 1200, "text": "hello world"}],
                   ["Type hello world in the box"], size=(1080, 2400))
    write_androidcontrol(tmp_path / "ac", [ep], splits={"test": [9]}, num_shards=1)
    [loaded] = AndroidControlBenchmark(str(tmp_path / "ac"), cache_dir=str(tmp_path / "c")).load()
    step = loaded.steps[0]
    assert step.error is None and step.meta["gt_action_type"] == "type" and step.meta["gt_point"] == [0.5, 0.5]
    common = AndroidControlBenchmark("unused")
    # common: judged as TYPE on its text (token F1 of "hello there world" vs "hello world" = 0.8 > 0.5)
    assert common.score(step, ParsedAction("type", text="hello there world"), (1080, 2400)).correct
    assert not common.score(step, ParsedAction("type", text="bye"), (1080, 2400)).correct
    assert not common.score(step, ParsedAction("click", point=(0.5, 0.5)), (1080, 2400)).correct
    guikv = AndroidControlBenchmark("unused", metric="guikv")
    # guikv: lenient text match; a typed-at point must lie within max(72, 108) = 108 px (L-inf) of (540, 1200)
    assert guikv.score(step, ParsedAction("type", text="Hello World\n"), (1080, 2400)).correct
    near = ParsedAction("type", text="hello world", point=(0.55, 0.52))  # (594, 1248): 54, 48 px
    far = ParsedAction("type", text="hello world", point=(0.7, 0.5))  # (756, 1200): 216 px
    assert guikv.score(step, near, (1080, 2400)).correct and not guikv.score(step, far, (1080, 2400)).correct
    rows = [{"correct": True, "error": None, "meta": {"score_fields": {"gt_type": "type", "type_match": True}}}]
    assert guikv.aggregate(rows)["grounding_accuracy"] == 1.0  # type is a grounding step for the driver
