"""AgentNetBench ``protocol: reference``: each STaR-KV / GUI-KV driver rule pinned with hand-worked values,
side by side with the project's default (official) protocol."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.agent.actions import ParsedAction
from pipeline.benchmarks.agentnet.benchmark import AgentNetBenchmark
from pipeline.benchmarks.common.base import Episode, Step
from tests.fixtures.episodes import default_agentnet_trajectories, write_agentnet


def _click(kind: str, x: float, y: float) -> dict:
    return {"type": kind, "params": {"position": {"x": x, "y": y}}, "metadata": {"bboxes": []}}


def _traj(task_id: str, gts: list[list[dict]], milestones: list[bool] | None = None) -> dict:
    milestones = milestones or [False] * len(gts)
    return {"task_id": task_id, "high_level_task_description": "t", "steps": [
        {"step_num": k + 1, "image": f"{task_id}_{k + 1}.png", "milestone": m, "ground_truth_actions": gt,
         "alternative_options": []} for k, (gt, m) in enumerate(zip(gts, milestones))]}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("an_parity")
    extra = [
        _traj("t_write_only", [[{"type": "write", "params": {"text": "cats"}}]]),
        _traj("t_drag", [[_click("dragTo", 0.6, 0.6)]]),
        _traj("t_missing", [[{"type": "terminate", "params": {"status": "success"}}],
                            [{"type": "terminate", "params": {"status": "success"}}]]),
        _traj("t_milestones", [[_click("click", 0.5, 0.5)], [{"type": "write", "params": {"text": "x"}}]],
              milestones=[True, True]),
    ]
    write_agentnet(root, default_agentnet_trajectories() + extra, skip_images={"t_missing_2.png"})
    return root


def _episodes(root: Path, protocol: str) -> dict[str, Episode]:
    return {e.episode_id: e for e in AgentNetBenchmark(str(root), protocol=protocol).load()}


def _score(bench: AgentNetBenchmark, step: Step, action: ParsedAction) -> float:
    return bench.score(step, action, (1280, 720)).score


def both(root: Path, task: str, k: int, action: ParsedAction) -> tuple[float, float]:
    off, ref = _episodes(root, "official"), _episodes(root, "reference")
    return (_score(AgentNetBenchmark(str(root)), off[task].steps[k], action),
            _score(AgentNetBenchmark(str(root), protocol="reference"), ref[task].steps[k], action))


def test_finished_is_success_only_with_the_word(data: Path):
    # GT terminate(success): "Task completed" has no fail word (official: success) and no "success" (driver)
    assert both(data, "s_fixture_a", 2, ParsedAction("finished", text="Task completed")) == (1.0, 0.0)
    assert both(data, "s_fixture_a", 2, ParsedAction("finished", text="successful")) == (1.0, 1.0)
    assert both(data, "s_fixture_a", 2, ParsedAction("finished")) == (1.0, 0.0)  # finished() -> failure


def test_type_with_and_without_newline(data: Path):
    # GT write('cats') + press(enter): official merges it into 'cats\n'; the driver scores write('cats')
    assert both(data, "s_fixture_a", 1, ParsedAction("type", text="cats\n")) == (1.0, 1.0)
    # official: only the GT ends in a newline -> 0.9; driver: stripped texts are equal -> 1
    assert both(data, "s_fixture_a", 1, ParsedAction("type", text="cats")) == pytest.approx((0.9, 1.0))
    # GT write('cats') alone vs 'cats\n': official 0.9 (one newline), driver 1
    assert both(data, "t_write_only", 0, ParsedAction("type", text="cats\n")) == pytest.approx((0.9, 1.0))
    # 'cat' vs 'cats': s = 1 - 1/4 = 0.75 < 0.8 -> 0.75 / 0.8 = 0.9375 (driver, no newline);
    # official vs 'cats\n': 0.75 * 0.9 = 0.675 -> 0.84375
    assert both(data, "s_fixture_a", 1, ParsedAction("type", text="cat")) == pytest.approx((0.84375, 0.9375))


def test_scroll_without_a_point_is_no_prediction(data: Path):
    ref = AgentNetBenchmark(str(data), protocol="reference")
    step = _episodes(data, "reference")["s_fixture_b"].steps[1]  # GT scroll
    assert both(data, "s_fixture_b", 1, ParsedAction("scroll", direction="down")) == (1.0, 0.0)
    assert not ref.score(step, ParsedAction("scroll", direction="down"), (1920, 1080)).fields["has_prediction"]
    assert both(data, "s_fixture_b", 1, ParsedAction("scroll", point=(0.5, 0.5), direction="down")) == (1.0, 1.0)


def test_drag_needs_both_points(data: Path):
    # GT dragTo(0.6, 0.6): the end point is exact; the driver drops a drag without its start point
    assert both(data, "t_drag", 0, ParsedAction("drag", end_point=(0.6, 0.6))) == (1.0, 0.0)
    assert both(data, "t_drag", 0, ParsedAction("drag", point=(0.1, 0.1), end_point=(0.6, 0.6))) == (1.0, 1.0)


def test_empty_type_is_dropped(data: Path):
    off = AgentNetBenchmark(str(data)).score(_episodes(data, "official")["t_write_only"].steps[0],
                                             ParsedAction("type", text=""), (1280, 720))
    ref = AgentNetBenchmark(str(data), protocol="reference").score(
        _episodes(data, "reference")["t_write_only"].steps[0], ParsedAction("type", text=""), (1280, 720))
    # official: '' vs 'cats' -> s = 1 - 4/4 = 0, but it is a prediction; the driver has none
    assert (off.score, off.fields["has_prediction"]) == (0.0, True)
    assert (ref.score, ref.fields["has_prediction"]) == (0.0, False)


def test_ctrl_is_rewritten_to_control(data: Path):
    # GT hotkey [ctrl, c]: the driver predicts [control, c], a different key set
    assert both(data, "s_fixture_b", 0, ParsedAction("hotkey", key="ctrl c")) == (1.0, 0.0)


def test_alternative_of_the_predicted_type(data: Path):
    # GT click with an alternative doubleClick in the same box: both protocols use the alternative
    assert both(data, "s_fixture_a", 0, ParsedAction("left_double", point=(0.45, 0.325))) == (1.0, 1.0)


def _rows(bench: AgentNetBenchmark, episodes: dict[str, Episode], preds: dict[tuple[str, int], ParsedAction]):
    rows = []
    for (task, k), action in preds.items():
        step = episodes[task].steps[k]
        row = {"episode_id": task, "step_index": k, "correct": False, "score": 0.0, "error": step.error}
        meta = dict(step.meta)
        if not step.error:  # the runner scores only steps without an error
            sc = bench.score(step, action, (1280, 720))
            row.update(correct=sc.correct, score=sc.score)
            meta["score_fields"] = sc.fields
        row["meta_json"] = json.dumps(meta)
        rows.append(row)
    return rows


def _aggregates(data: Path, preds: dict[tuple[str, int], ParsedAction]) -> tuple[dict, dict]:
    """The official and the reference aggregate of the same predictions."""
    off = AgentNetBenchmark(str(data))
    ref = AgentNetBenchmark(str(data), protocol="reference")
    return (off.aggregate(_rows(off, _episodes(data, "official"), preds)),
            ref.aggregate(_rows(ref, _episodes(data, "reference"), preds)))


def test_missing_screenshot_is_skipped_but_stays_in_the_trajectory(data: Path):
    preds = {("t_missing", 0): ParsedAction("finished", text="success"),
             ("t_missing", 1): ParsedAction("finished", text="success")}
    a_off, a_ref = _aggregates(data, preds)
    # step 2's image is missing (an error row). official: (1 + 0) / 2 everywhere; driver: the step is
    # skipped in the overall mean (1 / 1) but its trajectory is (1 + 0) / 2
    assert (a_off["overall_score"], a_off["average_trajectory_score"]) == (0.5, 0.5)
    assert (a_ref["overall_score"], a_ref["average_trajectory_score"]) == (1.0, 0.5)
    assert a_ref["num_skipped"] == 1.0


def test_milestone_and_type_scores_use_steps_with_a_prediction(data: Path):
    # two milestone steps: a perfect click (1.0) and a 'wait' on a write step (no prediction, 0)
    preds = {("t_milestones", 0): ParsedAction("click", point=(0.5, 0.5)), ("t_milestones", 1): ParsedAction("wait")}
    a_off, a_ref = _aggregates(data, preds)
    assert (a_off["milestone_score"], a_off["num_milestones"]) == (0.5, 2.0)
    assert (a_ref["milestone_score"], a_ref["num_milestones"]) == (1.0, 1.0)
    assert a_off["score_write"] == 0.0 and "score_write" not in a_ref  # no predicted write step
    assert a_off["overall_score"] == a_ref["overall_score"] == 0.5
