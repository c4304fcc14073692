"""GUI-KV's Multimodal-Mind2Web blocks protocol: the blocks layout, the scroll rules, multi-call steps.

Golden values follow the driver (GUI-KV ``eval/multimodal_mind2web_eval.py``): a step starts at block 0;
after a scroll the driver adds "Scroll <direction>." to the previous actions, moves one block when that
block exists and calls again, at most 5 calls; the last call's action is scored against the record's
boxes, both normalised by block 0's size; a task's missing steps count 0.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import starkv
from pipeline.agent.actions import ParsedAction
from pipeline.agent.coords import smart_resize
from pipeline.agent.views import ScrollViews, ViewWalk
from pipeline.benchmarks.common.base import Step
from pipeline.benchmarks.mind2web.benchmark import Mind2Web
from pipeline.config import AgentConfig
from pipeline.metrics.rows import rows_to_table
from pipeline.metrics.units import Unit
from pipeline.step.engine import EpisodeRunner
from tests.fixtures.reference import write_mind2web_blocks
from tests.helpers_model import ScriptedOutputs


def _bench(root: Path, **options) -> Mind2Web:
    write_mind2web_blocks(root)
    return Mind2Web(str(root), protocol="reference", **options)


def test_blocks_layout_loads_tasks_views_and_the_records_history(tmp_path: Path):
    bench = _bench(tmp_path)
    episodes = bench.load()
    assert [(e.episode_id, [s.meta["action_uid"] for s in e.steps]) for e in episodes] == [
        ("t1", ["a1", "a2"]), ("t2", ["b1"])]
    a1, a2 = episodes[0].steps
    assert [Path(p).relative_to(tmp_path).as_posix() for p in a1.meta["views"]] == [
        "cross_task/t1_a1/0.png", "cross_task/t1_a1/1.png", "cross_task/t1_a1/2.png"]
    assert a1.image_path == a1.meta["views"][0] and a1.meta["max_calls"] == 5
    assert a1.meta["frame_size"] == [400, 300]  # block 0's; block 2 is 400x200
    assert a1.target["bboxes"] == [[100.0, 120.0, 180.0, 160.0]]  # [x, y, w, h] -> xyxy
    assert a2.meta["prompt_previous_actions"] == ["[button]  Flights -> CLICK"]
    assert (a2.target["op"], a2.target["value"], a2.meta["total_steps"]) == ("TYPE", "new york", 3)
    # the file may be named directly, and the split option picks cross_<name>_blocks.jsonl in a folder
    assert len(Mind2Web(str(tmp_path / "cross_task_blocks.jsonl")).load()) == 2
    write_mind2web_blocks(tmp_path / "web", split="website")
    assert len(Mind2Web(str(tmp_path / "web"), split="test_website").load()) == 2


def test_bad_block_records_become_error_rows_naming_file_line_and_field(tmp_path: Path):
    good = {"annotation_id": "t", "action_uid": "u", "task": "Do it", "bbox": [[1, 2, 3, 4]],
            "previous_actions": [], "operation": "CLICK", "value": "", "total_steps": 1}
    records = [
        {**good, "action_uid": "u1", "bbox": [[1, 2, 3]]},
        {**good, "action_uid": "u2", "previous_actions": "CLICK"},
        {**good, "action_uid": "u3", "total_steps": 0},
        {k: v for k, v in good.items() if k != "task"} | {"action_uid": "u4"},
        {**good, "action_uid": "u5"},  # no block images written
        {**good, "action_uid": "u6"},
    ]
    file = write_mind2web_blocks(tmp_path, records, blocks={"t_u5": []})
    with file.open("a") as fh:
        fh.write("{not json\n")
    steps = [s for e in Mind2Web(str(tmp_path)).load() for s in e.steps]
    errors = [s.error for s in steps]
    expected = ["line 1: field 'bbox'", "line 2: field 'previous_actions'", "line 3: field 'total_steps'",
                "line 4: field 'task'", "line 5: image file", "line 7: line is not JSON"]
    for err, want in zip([e for e in errors if e], expected):
        assert str(file) in err and want in err, (err, want)
    assert "t_u5/0.png (block 0) does not exist" in errors[4]
    assert errors[5] is None and sum(e is not None for e in errors) == 6


def _action(text: str) -> ParsedAction:
    from pipeline.agent.parser import parse_action

    return parse_action(text, image_size=(1000, 1000))


SCROLL = "Action: scroll(point='<point>10 10</point>', direction='{}')"


def test_scroll_rules_follow_the_driver():
    step = Step(0, "0.png", meta={"views": ["0.png", "1.png", "2.png"], "max_calls": 5})
    walk = ViewWalk(ScrollViews.of(step))
    # up at block 0 stays; down moves; down at the last block stays; each scroll adds its line
    for direction, view in (("up", 0), ("down", 1), ("down", 2), ("down", 2)):
        assert walk.record(_action(SCROLL.format(direction))) and walk.view == view
    assert walk.lines == ["Scroll up.", "Scroll down.", "Scroll down.", "Scroll down."]
    nxt = walk.call_step(step)
    assert nxt.image_path == "2.png" and nxt.meta["scroll_lines"] == walk.lines and step.meta.get("scroll_lines") is None
    assert not walk.record(_action(SCROLL.format("up")))  # the 5th call: no 6th, the step ends scrolling
    assert (walk.calls, walk.view) == (5, 1)
    # a click ends the step; a scroll without a point ends it too (the driver's parse of it fails)
    for text in ("Action: click(point='<point>5 5</point>')", "Action: scroll(direction='down')"):
        walk = ViewWalk(ScrollViews.of(step))
        assert not walk.record(_action(text)) and walk.calls == 1
    # direction written first: the driver reads the point text as the direction -> no move, but a call more
    walk = ViewWalk(ScrollViews.of(step))
    assert walk.record(_action("Action: scroll(direction='down', point='<point>10 10</point>')")) and walk.view == 0
    assert ScrollViews.of(Step(0, "x.png")) is None


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    from pipeline.models.loader import ModelSpec, load_model

    return load_model(ModelSpec(path=str(tiny_model_dir), device="cpu", dtype="float32"))


def _point(loaded, x: float, y: float, size=(400, 300)) -> str:
    """``<point>`` of block pixel (x, y) in the smart-resized frame the model sees for a ``size`` block."""
    rh, rw = smart_resize(size[1], size[0], min_pixels=loaded.min_pixels, max_pixels=loaded.max_pixels)
    return f"<point>{round(x * rw / size[0])} {round(y * rh / size[1])}</point>"


def script_for(loaded):
    """a1: down, down, down (stays on the last block), click the target; a2: scrolls down 5 times, outside
    the box; b1: select inside the second box. Keyed on the prompt, so every unit gets the same script."""
    def script(text: str) -> str:
        scrolls = len(re.findall(r"^Scroll (?:down|up)\.$", text, re.M))
        if "Find flights" in text and "Flights -> CLICK" not in text:
            if scrolls < 3:
                return "Thought: look lower\nAction: " + SCROLL.format("down")[len("Action: "):]
            return f"Thought: there\nAction: click(point='{_point(loaded, 140, 140)}')"
        if "Find flights" in text:
            return f"Action: scroll(point='{_point(loaded, 390, 290)}', direction='down')"
        return f"Action: select(point='{_point(loaded, 180, 215)}', content='Economy')"

    return script


def test_multi_call_steps_run_end_to_end_through_the_runner(loaded, tmp_path: Path):
    bench = _bench(tmp_path)
    runner = EpisodeRunner(loaded, bench, AgentConfig(), max_new_tokens=2, memory_accounting=False)
    comp = starkv.build("snapkv")
    unit = Unit(run_id="r", compressor="snapkv", budget=50.0, model="tiny")
    with ScriptedOutputs(runner, script_for(loaded)) as scripted:
        rows = [r for e in bench.load() for r in runner.run(e, comp, unit)]
    assert [r["error"] for r in rows] == [None] * 3
    assert [r["model_calls"] for r in rows] == [4, 5, 1] and len(scripted.calls) == 10
    traces = [[c["view"] for c in json.loads(r["meta_json"])["calls"]] for r in rows]
    assert traces == [[0, 1, 2, 2], [0, 1, 1, 1, 1], [0]]
    assert [im[-1].size[1] for _, im in scripted.calls[:4]] == [300, 300, 200, 200]  # the block each call saw
    prompts = [text for text, _ in scripted.calls]
    assert "## Previous Actions\nScroll down.\nScroll down.\n" in prompts[2]
    assert "Scroll" not in prompts[0] and "Scroll" not in prompts[4]  # a new step starts without scrolls
    assert "[button]  Flights -> CLICK\nScroll down.\n" in prompts[5]  # the record's own history first
    # a1: the click on block 2 is read in block 0's frame (the driver's), so it is the target's centre
    point = json.loads(rows[0]["prediction"])["point"]
    assert point == pytest.approx([140 / 400, 140 / 300], abs=0.01)
    fields = [json.loads(r["meta_json"])["score_fields"] for r in rows]
    assert [(f["ele_hit"], f["op_f1"]) for f in fields] == [(1, 1.0), (0, 0.0), (1, 1.0)]
    assert [r["correct"] for r in rows] == [True, False, True]
    assert rows[1]["action_type"] == "scroll" and rows[0]["generated_tokens"] >= 4  # summed over 4 calls
    assert rows_to_table(rows).column("model_calls").to_pylist() == [4, 5, 1]  # the Parquet schema has it
    # t1: a1 1, a2 0, one padded step 0 -> 1/3; t2: 1 -> macro (1/3 + 1) / 2 for all three metrics
    metrics = bench.aggregate(rows)
    assert metrics["num_padded_steps"] == 1 and metrics["num_steps"] == 3
    for name in ("ele_acc", "op_f1", "step_sr"):
        assert metrics[name] == pytest.approx(2 / 3), name
    assert metrics["step_sr_micro"] == pytest.approx(2 / 4)


def test_a_compressor_sees_every_call_as_a_prefill(loaded, tmp_path: Path):
    """Each call of a multi-call step is its own prefill + compression: STaR-KV's episode state advances once
    per call (a1: 4 calls, a2: 5 calls -> 9 steps of its temporal counter in every layer)."""
    bench = _bench(tmp_path)
    episode = bench.load()[0]
    runner = EpisodeRunner(loaded, bench, AgentConfig(), max_new_tokens=2, memory_accounting=False)
    comp = starkv.build("starkv")
    with ScriptedOutputs(runner, script_for(loaded)) as scripted:
        rows = runner.run(episode, comp, Unit(run_id="r", compressor="starkv", budget=30.0, model="tiny"))
    assert [r["model_calls"] for r in rows] == [4, 5] and len(scripted.calls) == 9
    layers = len(comp._states)
    assert layers > 0 and all(comp.state(i).temporal_steps == 9 for i in range(layers))
