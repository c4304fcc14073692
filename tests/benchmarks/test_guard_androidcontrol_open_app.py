"""AndroidControl ``protocol: reference``, GT open_app: a click on the accessibility-tree node naming the app.

The driver's rule (docs/benchmarks/parity.md, AndroidControl "open_app"): a click counts when the node
under it (the smallest node of the tree containing the click, in the driver's pixels) names the app in its
text or content description; the fallback (the app named in goal / step instruction / previous actions)
is kept out of play here: neither names the app, so only the tree can make a click correct.
"""

from __future__ import annotations

import pytest

from pipeline.agent.actions import ParsedAction
from pipeline.benchmarks.androidcontrol.benchmark import AndroidControlBenchmark
from pipeline.benchmarks.common.base import Step
from tests.fixtures.reference import write_androidcontrol_steps

W, H = 1000, 2000  # fits the driver's 1200x2600: scored in these pixels unchanged


def _node(x1: int, y1: int, x2: int, y2: int, text: str = "", desc: str = "") -> dict:
    return {"bbox_pixels": {"x_min": x1, "y_min": y1, "x_max": x2, "y_max": y2}, "text": text,
            "content_description": desc}


# a home screen: the root, then (nested, as the driver's trees are) three icons in one row
TREE = [_node(0, 0, W, H, "", "Home screen"),
        [_node(100, 1500, 300, 1700, "Calculator"),          # names the app in its text
         _node(400, 1500, 600, 1700, "Clock"),               # another app
         _node(700, 1500, 900, 1700, "", "Calculator shortcut")]]  # names it in its content description
RECORD = {"episode_id": 601, "step_index": 0, "goal": "Work out a 15% tip on 48 dollars",
          "step_instruction": "Start the app for sums", "screenshot": "601/0.png", "previous_actions": [],
          "action": {"action_type": "open_app", "app_name": "Calculator"}, "accessibility_tree": TREE}


@pytest.fixture(scope="module")
def step(tmp_path_factory: pytest.TempPathFactory) -> Step:
    root = tmp_path_factory.mktemp("ac_open_app")
    write_androidcontrol_steps(root, records=[RECORD], sizes={"601": (W, H)})
    (episode,) = AndroidControlBenchmark(str(root), protocol="reference").load()
    (loaded,) = episode.steps
    assert loaded.error is None, loaded.error
    return loaded


def _correct(step: Step, action: ParsedAction, protocol: str = "reference") -> bool:
    return AndroidControlBenchmark("unused", protocol=protocol).score(step, action, (W, H)).correct


def test_the_loaded_step_carries_the_tree_and_the_gt_open_app(step):
    assert step.meta["gt_action"]["action_type"] == "open_app"
    assert step.meta["gt_action"]["app_name"] == "Calculator"
    assert step.meta["image_size"] == [W, H]
    assert [n["box"] for n in step.meta["a11y"]] == [[0, 0, W, H], [100, 1500, 300, 1700], [400, 1500, 600, 1700],
                                                      [700, 1500, 900, 1700]]


@pytest.mark.parametrize(("point", "expected", "why"), [
    ((0.20, 0.80), True, "(200, 1600) px: inside [100, 1500, 300, 1700], text 'Calculator'"),
    ((0.11, 0.76), True, "(110, 1520) px: inside the same node, near its top-left corner"),
    ((0.80, 0.80), True, "(800, 1600) px: inside [700, 1500, 900, 1700], description 'Calculator shortcut'"),
    ((0.50, 0.80), False, "(500, 1600) px: the 'Clock' node"),
    ((0.20, 0.50), False, "(200, 1000) px: only the root ('Home screen') is under it"),
    ((0.305, 0.80), False, "(305, 1600) px: 5 px right of the Calculator node (no margin for open_app): the root"),
    ((0.20, 0.86), False, "(200, 1720) px: 20 px below the Calculator node: the root"),
])
def test_click_on_the_node_naming_the_app_opens_it(step, point, expected, why):
    assert _correct(step, ParsedAction("click", point=point)) is expected, why


def test_official_protocol_never_takes_a_click_for_open_app(step):
    # official (OS-Atlas): the action types must be equal, so even the click on the app's icon is wrong
    assert not _correct(step, ParsedAction("click", point=(0.20, 0.80)), protocol="official")
    assert _correct(step, ParsedAction("open_app", app_name="Calculator"), protocol="official")
