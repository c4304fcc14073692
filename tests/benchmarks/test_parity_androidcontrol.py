"""AndroidControl ``protocol: reference``: each STaR-KV / GUI-KV driver rule pinned with hand-worked values,
side by side with the official (default) protocol, on a fixture in the driver's own per-step JSON layout."""

from __future__ import annotations

import pytest

from pipeline.agent.actions import ParsedAction
from pipeline.agent.parser import parse_action
from pipeline.benchmarks.androidcontrol.benchmark import AndroidControlBenchmark
from pipeline.benchmarks.androidcontrol.reference import driver_size, status_of
from pipeline.benchmarks.common.base import Step
from tests.fixtures.reference import write_androidcontrol_steps

OFFICIAL = AndroidControlBenchmark("unused")
REFERENCE = AndroidControlBenchmark("unused", protocol="reference")


@pytest.fixture(scope="module")
def steps(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, int], Step]:
    root = tmp_path_factory.mktemp("ac_parity")
    write_androidcontrol_steps(root)
    episodes = AndroidControlBenchmark(str(root), protocol="reference").load()
    return {(e.episode_id, s.step_index): s for e in episodes for s in e.steps}


def both(step: Step, action: ParsedAction) -> tuple[bool, bool]:
    size = tuple(step.meta["image_size"])
    return OFFICIAL.score(step, action, size).correct, REFERENCE.score(step, action, size).correct


def test_protocol_option_and_metric():
    assert OFFICIAL.protocol == "official" and OFFICIAL.metric == "common"
    assert REFERENCE.metric == "guikv"
    with pytest.raises(ValueError, match="option protocol must be one of official, reference, not 'driver'"):
        AndroidControlBenchmark("unused", protocol="driver")
    with pytest.raises(ValueError, match="metric must be 'guikv'"):
        AndroidControlBenchmark("unused", protocol="reference", metric="common")


def test_driver_downscaling_of_large_screenshots():
    # 1440x3120: ratio = min(1200/1440, 2600/3120) = 5/6 -> 1200x2600; 1080x2400 fits and is unchanged
    assert driver_size(1440, 3120) == (1200, 2600) and driver_size(1080, 2400) == (1080, 2400)
    assert driver_size(1300, 2000) == (1200, 1846)  # 1200/1300 = 0.923: 2000 * 0.923 = 1846.15 -> 1846
    gt = {"action_type": "click", "x": 1300, "y": 2900}
    step = Step(0, "x.png", target={"action": gt}, meta={"gt_action": gt, "image_size": [1440, 3120]})
    perfect = ParsedAction("click", point=(1300 / 1440, 2900 / 3120))
    # official: distance 0 -> correct. reference: the point lands at (1083.3, 2416.7) in 1200x2600 pixels,
    # 216.7 / 483.3 px from (1300, 2900) > max(72, 0.10 * 1200) = 120 -> wrong
    assert both(step, perfect) == (True, False)


def test_click_near_the_origin_survives_downscaling(steps):
    step = steps[("502", 0)]  # GT (100, 100) on 1440x3120
    perfect = ParsedAction("click", point=(100 / 1440, 100 / 3120))
    # reference: (83.3, 83.3) -> 16.7 px off on each axis <= 120 -> correct
    assert both(step, perfect) == (True, True)


def test_a11y_node_hit_with_the_drivers_margin(steps):
    step = steps[("501", 0)]  # GT (540, 1200) inside node "Search" [400, 1100, 680, 1300]; 1080x2400
    # margin m = max(8, 0.015 * 1080) = 16.2 px: x = 0.64 * 1080 = 691.2 <= 680 + 16.2 -> hit;
    # official: L2 distance 0.14 (= the radius) -> correct too
    assert both(step, ParsedAction("click", point=(0.64, 0.5))) == (True, True)
    # x = 0.66 * 1080 = 712.8 > 696.2 and 172.8 px > 108 -> reference wrong; official 0.16 > 0.14 -> wrong
    assert both(step, ParsedAction("click", point=(0.66, 0.5))) == (False, False)
    # long_press is a click for the driver; the official protocol needs the exact type
    assert both(step, ParsedAction("long_press", point=(0.5, 0.5))) == (False, True)


def test_type_text_without_a_point_uses_the_lenient_text_match(steps):
    step = steps[("501", 1)]  # GT input_text 'hello'
    assert both(step, ParsedAction("type", text="Hello\n")) == (True, True)
    # "hello!" contains the 5-character GT -> reference correct; official: token sets {"hello!"} and
    # {"hello"} share nothing -> F1 0 -> wrong
    assert both(step, ParsedAction("type", text="hello!")) == (False, True)
    # "helo" is neither equal to nor contains / is contained in "hello" -> wrong in both
    assert both(step, ParsedAction("type", text="helo")) == (False, False)


def test_open_app_with_another_app_name(steps):
    step = steps[("501", 2)]  # GT open_app 'Notes'
    # reference: a predicted open_app is correct whatever the name; official: token F1('keep', 'notes') = 0
    assert both(step, ParsedAction("open_app", app_name="Keep")) == (False, True)
    assert both(step, ParsedAction("open_app", app_name="Notes")) == (True, True)
    # reference: a click counts when 'Notes' is named in the goal and the click is below 6 % / left of 97 %
    assert both(step, ParsedAction("click", point=(0.5, 0.5))) == (False, True)
    assert both(step, ParsedAction("click", point=(0.5, 0.05))) == (False, False)


def test_press_home_never_scores_for_the_driver(steps):
    step = steps[("501", 3)]  # GT navigate_home
    result = REFERENCE.score(step, ParsedAction("press_home"), (1080, 2400))
    assert not result.correct and "navigate_home" in result.reason
    assert OFFICIAL.score(step, ParsedAction("press_home"), (1080, 2400)).correct


def test_status_reads_failure_words(steps):
    step = steps[("502", 1)]  # GT status successful
    assert status_of("Task completed, no errors") == "infeasible"  # contains "error"
    assert status_of("") == "successful" and status_of("infeasible") == "infeasible"
    assert both(step, ParsedAction("finished", text="Task completed, no errors")) == (True, False)
    assert both(step, ParsedAction("finished", text="successful")) == (True, True)


def test_scroll_needs_only_the_same_axis():
    gt = {"action_type": "scroll", "direction": "down"}
    step = Step(0, "x.png", target={"action": gt}, meta={"gt_action": gt, "image_size": [1080, 2400]})
    assert both(step, ParsedAction("scroll", direction="up")) == (False, True)  # same (vertical) axis
    assert both(step, ParsedAction("scroll", direction="down")) == (True, True)
    assert both(step, ParsedAction("scroll", direction="left")) == (False, False)


def test_back_affordance_on_the_tree():
    nodes = [{"box": [0, 0, 1080, 2400], "text": "", "desc": "root"},
             {"box": [0, 60, 150, 200], "text": "", "desc": "Navigate up"}]
    gt = {"action_type": "navigate_back"}
    step = Step(0, "x.png", target={"action": gt}, meta={"gt_action": gt, "image_size": [1080, 2400], "a11y": nodes})
    # (0.05, 0.05) = (54, 120) px lies in the "Navigate up" node -> reference correct; official: click != back
    assert both(step, ParsedAction("click", point=(0.05, 0.05))) == (False, True)
    # (0.5, 0.3): the root node says nothing about back, outside the toolbar region and a node is under it
    assert both(step, ParsedAction("click", point=(0.5, 0.3))) == (False, False)
    assert both(step, ParsedAction("press_back")) == (True, True)


def test_gt_type_with_a_point_gets_no_point_from_a_type_prediction():
    gt = {"action_type": "type", "x": 540, "y": 1200, "text": "hello"}
    step = Step(0, "x.png", target={"action": gt}, meta={"gt_action": gt, "image_size": [1080, 2400]})
    typed = parse_action("Action: type(text='hello', start_box='(546,1204)')", image_size=(1080, 2400))
    assert typed.ok and typed.point is not None
    result = REFERENCE.score(step, typed, (1080, 2400))
    assert not result.correct and "no point" in result.reason
    assert OFFICIAL.score(step, typed, (1080, 2400)).correct


def test_reference_aggregate_over_the_driver_fixture(steps):
    preds = {("501", 0): ParsedAction("click", point=(0.5, 0.5)), ("501", 1): ParsedAction("type", text="hello"),
             ("501", 2): ParsedAction("open_app", app_name="Keep"), ("501", 3): ParsedAction("press_home"),
             ("502", 0): ParsedAction("click", point=(100 / 1440, 100 / 3120)),
             ("502", 1): ParsedAction("finished", text="successful")}
    rows = []
    for key, action in preds.items():
        sc = REFERENCE.score(steps[key], action, tuple(steps[key].meta["image_size"]))
        rows.append({"correct": sc.correct, "error": None, "meta": {"score_fields": sc.fields}})
    agg = REFERENCE.aggregate(rows)
    # correct: all but press_home -> 5/6; grounding = GT click, input_text, click -> 3/3
    assert agg["step_success_rate"] == pytest.approx(5 / 6)
    assert agg["grounding_accuracy"] == 1.0 and agg["num_grounding_steps"] == 3.0
