"""AgentNetBench: loader on real-format trajectory JSON + images, step scores, aggregate, bad data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from pipeline.agent.actions import ParsedAction
from pipeline.benchmarks.agentnet.benchmark import (
    AgentNetBenchmark,
    click_score,
    uitars_to_agentnet,
    write_score,
)
from pipeline.benchmarks.common.base import BenchmarkDataError, Episode, Step, get_benchmark
from tests.fixtures.episodes import default_agentnet_trajectories, write_agentnet

EXTRA = {"task_id": "s_fixture_c", "high_level_task_description": "Say hello",
         "steps": [{"step_num": 1, "image": "s_fixture_c_1.png",
                    "inner_monologue": {"low_level_instruction": "Type hello"},
                    "ground_truth_actions": [{"type": "write", "params": {"text": "hello"}}]}]}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("anb")
    write_agentnet(root, default_agentnet_trajectories() + [EXTRA])
    return root


def test_registered():
    cls = get_benchmark("agentnetbench")
    assert cls is AgentNetBenchmark and cls.prompt_kind == "agentnet"


def test_load(dataset: Path):
    episodes = list(AgentNetBenchmark(str(dataset)).load())
    assert [e.episode_id for e in episodes] == ["s_fixture_a", "s_fixture_b", "s_fixture_c"]  # mapping_* skipped
    a = episodes[0]
    assert a.goal == "Search for cats in the browser" and a.benchmark == "agentnetbench"
    assert [s.step_index for s in a.steps] == [0, 1, 2]
    assert [s.meta["step_num"] for s in a.steps] == [1, 2, 4]
    assert all(s.error is None and Path(s.image_path).is_file() for e in episodes for s in e.steps)
    assert a.steps[2].image_path == str((dataset / "images" / "s_fixture_a_4.png").resolve())
    assert a.steps[0].instruction == a.goal
    assert [s.history_text for s in a.steps] == ["Click the search box", "Type cats and press enter",
                                                 "Finish the task"]
    # write + press enter merged into one GT action
    assert a.steps[1].meta["gt_actions"] == [{"type": "write", "text": "cats\n"}]
    assert a.steps[0].meta["gt_actions"][0]["boxes"] == [[0.40, 0.30, 0.10, 0.05]]
    assert a.steps[0].meta["alternatives"][0][0]["type"] == "doubleclick"
    assert a.steps[0].meta["milestone"] is True and a.steps[1].meta["milestone"] is False
    assert [s.meta["gt_type"] for s in episodes[1].steps] == ["hotkey", "scroll", "moveto"]
    assert Episode.from_row(a.to_row()) == a


PREDICTIONS = [
    # s_fixture_a
    ParsedAction("left_double", point=(0.45, 0.32)),  # GT click -> 0; alternative doubleClick, inside bbox -> 1
    ParsedAction("type", text="Cat\n"),  # vs "cats\n": ed 1 / 4 -> s 0.75 -> 0.75 / 0.8 = 0.9375
    ParsedAction("finished", text="The task is done"),  # terminate success -> 1
    # s_fixture_b
    ParsedAction("hotkey", key="ctrl c"),  # {ctrl, c} -> 1
    ParsedAction("scroll", point=(0.5, 0.5), direction="down"),  # type match -> 1
    ParsedAction("drag", point=(0.2, 0.2), end_point=(0.6, 0.6)),  # dragto vs GT[0] moveto -> 0
    # s_fixture_c
    ParsedAction("type", text="hello\n"),  # exact, newline only on one side -> 0.9
]
SCORES = [1.0, 0.9375, 1.0, 1.0, 1.0, 0.0, 0.9]


def _rows(bench, episodes, flatten):
    steps = [(e, s) for e in episodes for s in e.steps]
    rows = []
    for (ep, step), action in zip(steps, PREDICTIONS, strict=True):
        sc = bench.score(step, action, (1280, 720))
        row = {"episode_id": ep.episode_id, "correct": sc.correct, "score": sc.score, "error": None}
        if flatten:  # the runner's layout: StepScore.fields under meta_json["score_fields"]
            row["meta_json"] = json.dumps({**step.meta, "score_fields": sc.fields})
        else:
            row["fields_json"] = json.dumps(sc.fields)
            row["meta"] = step.meta
        rows.append(row)
    return rows


@pytest.mark.parametrize("flatten", [False, True])
def test_scores_and_aggregate_golden(dataset: Path, flatten: bool):
    bench = AgentNetBenchmark(str(dataset))
    rows = _rows(bench, list(bench.load()), flatten)
    assert [r["score"] for r in rows] == pytest.approx(SCORES)
    assert [r["correct"] for r in rows] == [s >= 0.5 for s in SCORES]
    agg = bench.aggregate(rows)
    assert agg["overall_score"] == pytest.approx(5.8375 / 7)
    traj = [(1.0 + 0.9375 + 1.0) / 3, 2.0 / 3, 0.9]
    assert agg["average_trajectory_score"] == pytest.approx(sum(traj) / 3)
    assert agg["accuracy"] == pytest.approx(6 / 7)
    assert agg["score_write"] == pytest.approx((0.9375 + 0.9) / 2) and agg["count_write"] == 2.0
    assert agg["score_click"] == 1.0 and agg["score_moveto"] == 0.0 and agg["score_hotkey"] == 1.0
    assert agg["milestone_score"] == pytest.approx(0.5) and agg["num_milestones"] == 2.0
    assert agg["alternative_matches"] == 1.0
    assert agg["num_steps"] == 7.0 and agg["num_errors"] == 0.0


def test_error_rows_count_zero(dataset: Path):
    bench = AgentNetBenchmark(str(dataset))
    rows = [{"episode_id": "t1", "score": 1.0, "correct": True, "error": None, "gt_type": "click"},
            {"episode_id": "t1", "score": 1.0, "correct": True, "error": "CUDA OOM", "gt_type": "click"},
            {"episode_id": "t2", "score": 0.5, "correct": True, "error": None, "gt_type": "write"}]
    agg = bench.aggregate(rows)
    assert agg["overall_score"] == pytest.approx(1.5 / 3)
    assert agg["average_trajectory_score"] == pytest.approx((0.5 + 0.5) / 2)
    assert agg["num_errors"] == 1.0
    assert bench.aggregate([])["overall_score"] == 0.0


# The official eval.py constants, written out (never imported from the implementation under test):
TAU = 0.01 * math.sqrt(2)  # click: full score within τ = 0.01·√2 of the GT point (relative coordinates)


def test_click_score_rules():
    gt = {"type": "click", "point": [0.5, 0.5], "boxes": []}
    assert TAU == pytest.approx(0.0141421356)
    assert click_score((0.5 + TAU, 0.5), gt) == 1.0
    assert click_score((0.5, 0.5 + 0.014), gt) == 1.0  # just inside τ
    # beyond τ: exp(−120·(d − τ)); d = τ + 0.01 -> exp(−1.2)
    assert click_score((0.5 + TAU + 0.01, 0.5), gt) == pytest.approx(math.exp(-1.2))
    assert math.exp(-1.2) == pytest.approx(0.301194, abs=1e-6)
    assert click_score((0.5 + 0.0144, 0.5), gt) == pytest.approx(math.exp(-120 * (0.0144 - TAU)))
    assert click_score((0.5, 0.55), gt) == pytest.approx(math.exp(-120 * (0.05 - TAU)))  # ≈ 0.0135
    boxed = {"type": "click", "point": [0.5, 0.5], "boxes": [[0.1, 0.1, 0.2, 0.3]]}
    assert click_score((0.3, 0.4), boxed) == 1.0  # on the far corner: edges included
    far = click_score((0.31, 0.4), boxed)
    assert far == pytest.approx(math.exp(-120 * (math.hypot(0.19, 0.1) - TAU)))


def test_write_score_rules():
    assert write_score("Hello World", "hello world") == 1.0
    assert write_score("hello wrld", "hello world") == 1.0  # s = 1 - 1/11 >= 0.8
    assert write_score("abxyz", "abcde") == pytest.approx(0.4 / 0.8)
    assert write_score("abc\n", "abc") == pytest.approx(0.9)
    assert write_score("abcd\n", "abce") == pytest.approx(0.75 * 0.9 / 0.8)
    assert write_score("", "abc") == 0.0
    assert write_score("abcdefgh", "abcdefghij") == 1.0  # s = 0.8 exactly: counts as 1
    assert write_score("abcdefgx", "abcdefghij") == pytest.approx(0.7 / 0.8)


def test_step_correct_from_half_score():
    bench = AgentNetBenchmark("u")
    step = Step(0, "/x.png", meta={"gt_actions": [{"type": "write", "text": "abcdefghij"}]})
    half = bench.score(step, ParsedAction("type", text="abcdxxxxxx"), (1, 1))  # s = 1 - 6/10 = 0.4 -> 0.5
    assert half.score == pytest.approx(0.5) and half.correct
    low = bench.score(step, ParsedAction("type", text="abcxxxxxxx"), (1, 1))  # s = 0.3 -> 0.375
    assert low.score == pytest.approx(0.375) and not low.correct


def test_conversion_and_key_rules():
    assert uitars_to_agentnet(ParsedAction("scroll", direction="up")) == [("scroll", 5)]
    assert uitars_to_agentnet(ParsedAction("scroll", direction="left")) == [("scroll", -5)]
    assert uitars_to_agentnet(ParsedAction("right_single", point=(0.1, 0.2))) == [("rightclick", (0.1, 0.2))]
    assert uitars_to_agentnet(ParsedAction("long_press", point=(0.1, 0.2))) == [("click", (0.1, 0.2))]
    assert uitars_to_agentnet(ParsedAction("press_back")) == [("press", ["escape"])]
    assert uitars_to_agentnet(ParsedAction("type", text="abc\n")) == [("write", "abc\n")]
    assert uitars_to_agentnet(ParsedAction("finished", text="infeasible")) == [("terminate", "failure")]
    assert uitars_to_agentnet(ParsedAction("wait")) == []
    assert uitars_to_agentnet(ParsedAction("hotkey", key="Ctrl C"), ctrl_quirk=True) == [("hotkey", ["control", "c"])]

    gt = {"type": "hotkey", "params": {"keys": ["ctrl", "c"]}}
    step = Step(0, "/x.png", meta={"gt_actions": [{"type": "hotkey", "keys": gt["params"]["keys"]}]})
    assert AgentNetBenchmark("u").score(step, ParsedAction("hotkey", key="c ctrl"), (1, 1)).score == 1.0
    assert AgentNetBenchmark("u", ctrl_quirk=True).score(step, ParsedAction("hotkey", key="ctrl c"), (1, 1)).score == 0.0
    esc = Step(0, "/x.png", meta={"gt_actions": [{"type": "press", "keys": ["Escape"]}]})
    assert AgentNetBenchmark("u").score(esc, ParsedAction("press_back"), (1, 1)).score == 1.0
    term = Step(0, "/x.png", meta={"gt_actions": [{"type": "terminate", "status": "success"}]})
    assert AgentNetBenchmark("u").score(term, ParsedAction("finished", text="infeasible"), (1, 1)).score == 0.0
    waited = AgentNetBenchmark("u").score(term, ParsedAction("wait"), (1, 1))
    assert waited.score == 0.0 and "no AgentNetBench counterpart" in waited.reason
    bad = AgentNetBenchmark("u").score(term, ParsedAction.invalid("x", "unparseable"), (1, 1))
    assert bad.score == 0.0 and bad.reason == "unparseable"


# ---------------------------------------------------------------------------------------------------
# Bad data
# ---------------------------------------------------------------------------------------------------

def _write_bad_dataset(root: Path) -> None:
    """Trajectory 'bad' with a bad step of every kind, a broken JSON file and a JSON list."""
    traj = {"task_id": "bad", "high_level_task_description": "Bad data", "steps": [
        {"image": "bad_1.png", "ground_truth_actions": [{"type": "click", "params": {"position": {"x": 0.1, "y": 0.1}}}]},
        {"image": "missing.png", "ground_truth_actions": [{"type": "click", "params": {"position": {"x": 0.1, "y": 0.1}}}]},
        {"image": "bad_3.png", "ground_truth_actions": [{"type": "swipe", "params": {}}]},
        {"image": "bad_4.png", "ground_truth_actions": [{"type": "click", "params": {}}]},
        {"image": "bad_5.png"},
        {"image": "bad_6.png", "ground_truth_actions": [{"type": "write", "params": {"text": "x"}}],
         "alternative_options": [[{"type": "bogus"}]]},
    ]}
    write_agentnet(root, [traj], skip_images={"missing.png"})
    (root / "broken.json").write_text("{not json")
    (root / "list.json").write_text("[]")


def test_bad_steps_become_error_rows(tmp_path: Path):
    _write_bad_dataset(tmp_path)
    episodes = {e.episode_id: e for e in AgentNetBenchmark(str(tmp_path)).load()}
    assert set(episodes) == {"bad", "broken", "list"}
    steps = episodes["bad"].steps
    file = str(tmp_path / "bad.json")
    assert steps[0].error is None
    expected = {1: "missing.png", 2: "ground_truth_actions[0] field 'type' is 'swipe'",
                3: "params.position", 4: "field 'ground_truth_actions' is missing"}
    for i, needle in expected.items():
        assert steps[i].error and file in steps[i].error and needle in steps[i].error, steps[i].error
    assert "field 'image'" in steps[1].error
    assert steps[5].error is None and steps[5].meta["alternatives"] == []
    assert "alternative_options[0][0]" in steps[5].meta["dropped_alternatives"][0]
    assert "not readable JSON" in episodes["broken"].steps[0].error
    assert "not an object" in episodes["list"].steps[0].error
    sc = AgentNetBenchmark("u").score(steps[2], ParsedAction("click", point=(0.1, 0.1)), (1, 1))
    assert sc.score == 0.0 and "swipe" in sc.reason


def test_images_dir_option(tmp_path: Path):
    write_agentnet(tmp_path / "data", default_agentnet_trajectories()[:1])
    (tmp_path / "data" / "images").rename(tmp_path / "imgs")
    missing = list(AgentNetBenchmark(str(tmp_path / "data")).load())[0]
    assert all(s.error and "does not exist" in s.error for s in missing.steps)
    found = list(AgentNetBenchmark(str(tmp_path / "data"), images_dir=str(tmp_path / "imgs")).load())[0]
    assert all(s.error is None for s in found.steps)


def test_missing_or_unrecognised_paths(tmp_path: Path):
    with pytest.raises(BenchmarkDataError, match="not a folder.*task_id"):
        list(AgentNetBenchmark(str(tmp_path / "nope")).load())
    (tmp_path / "mapping_ids.json").write_text("{}")
    with pytest.raises(BenchmarkDataError, match="no trajectory files"):
        list(AgentNetBenchmark(str(tmp_path)).load())


# ---------------------------------------------------------------------------------------------------
# Remote data through fsspec (memory:// stands in for a shared filesystem or object store)
# ---------------------------------------------------------------------------------------------------

def _as_remote(text: str | None, local: Path, url: str) -> str | None:
    return text.replace(str(local.resolve()), url) if text is not None else None


def test_memory_url_loads_like_local(dataset: Path, memory_copy):
    from pipeline.benchmarks.common.storage import open_screenshot

    url = memory_copy(dataset, "anb-remote")
    local = list(AgentNetBenchmark(str(dataset)).load())
    remote = list(AgentNetBenchmark(url).load())
    assert [e.episode_id for e in remote] == [e.episode_id for e in local] == ["s_fixture_a", "s_fixture_b",
                                                                                "s_fixture_c"]
    assert [e.goal for e in remote] == [e.goal for e in local]
    assert [e.meta["source"] for e in remote] == [_as_remote(e.meta["source"], dataset, "memory:///anb-remote")
                                                  for e in local]
    for r, lo in zip((s for e in remote for s in e.steps), (s for e in local for s in e.steps)):
        assert (r.step_index, r.instruction, r.target, r.history_text, r.meta, r.error) == \
            (lo.step_index, lo.instruction, lo.target, lo.history_text, lo.meta, lo.error)
        assert r.image_path == _as_remote(lo.image_path, dataset, "memory:///anb-remote")
    step = remote[0].steps[2]
    assert step.image_path == "memory:///anb-remote/images/s_fixture_a_4.png"
    assert open_screenshot(step.image_path).size == (1280, 720)
    assert Episode.from_row(remote[0].to_row()) == remote[0]


def test_memory_url_bad_data_errors_match_local(tmp_path: Path, memory_copy):
    _write_bad_dataset(tmp_path / "bad")
    url = memory_copy(tmp_path / "bad", "anb-bad")
    local = list(AgentNetBenchmark(str(tmp_path / "bad")).load())
    remote = list(AgentNetBenchmark(url).load())
    assert [e.episode_id for e in remote] == [e.episode_id for e in local] == ["bad", "broken", "list"]
    errors = [s.error for e in remote for s in e.steps]
    assert [_as_remote(s.error, tmp_path / "bad", "memory:///anb-bad") for e in local for s in e.steps] == errors
    missing = remote[0].steps[1].error
    assert "memory:///anb-bad/images/missing.png (field 'image') does not exist" in missing
    assert "memory:///anb-bad/bad.json: steps[1]" in missing
    assert "memory:///anb-bad/broken.json: not readable JSON" in remote[1].steps[0].error


def test_memory_images_dir_option_and_missing_paths(tmp_path: Path, memory_copy):
    write_agentnet(tmp_path / "data", default_agentnet_trajectories()[:1])
    images = memory_copy(tmp_path / "data" / "images", "anb-imgs")
    (tmp_path / "data" / "images").rename(tmp_path / "elsewhere")
    # local trajectories, remote screenshots
    ep = list(AgentNetBenchmark(str(tmp_path / "data"), images_dir=images).load())[0]
    assert all(s.error is None and s.image_path.startswith("memory:///anb-imgs/") for s in ep.steps)
    # remote trajectories, local screenshots: plain local paths
    url = memory_copy(tmp_path / "data", "anb-data")
    ep = list(AgentNetBenchmark(url, images_dir=str(tmp_path / "elsewhere")).load())[0]
    assert all(s.error is None and Path(s.image_path).is_file() for s in ep.steps)
    assert all("does not exist" in s.error for s in list(AgentNetBenchmark(url).load())[0].steps)
    with pytest.raises(BenchmarkDataError, match="memory:///anb-nope is not a folder"):
        list(AgentNetBenchmark("memory://anb-nope").load())
