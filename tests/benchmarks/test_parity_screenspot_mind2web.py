"""ScreenSpot-v2 / Pro and Multimodal-Mind2Web ``protocol: reference``: each STaR-KV / GUI-KV driver rule
pinned with hand-worked values beside the official (default) protocol; the protocol option fails in
config validation, naming the field, before any work."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from pipeline.agent.actions import ParsedAction
from pipeline.agent.parser import first_argument, parse_action
from pipeline.benchmarks.common.base import Step
from pipeline.benchmarks.mind2web.benchmark import Mind2Web, driver_token_f1, token_f1
from pipeline.benchmarks.screenspot_pro.benchmark import ScreenSpotPro
from pipeline.benchmarks.screenspot_v2.benchmark import ScreenSpotV2
from pipeline.cli import main
from pipeline.config import ConfigError, parse_config
from tests.fixtures.benchmarks import write_screenspot_pro, write_screenspot_v2
from tests.helpers_benchmarks import box_click_rows


def test_ssv2_missing_screenshot_is_skipped_not_counted_wrong(tmp_path: Path):
    write_screenspot_v2(tmp_path, per_cell=2)  # per split: samples 00, 01 text; 02, 03 icon
    (tmp_path / "screenspotv2_image" / "mobile_03.png").unlink()
    official, reference = ScreenSpotV2(str(tmp_path)), ScreenSpotV2(str(tmp_path), protocol="reference")
    episodes = list(official.load())
    missing = [e for e in episodes if e.steps[0].meta["image_missing"]]
    assert [e.episode_id for e in missing] == ["mobile_0003"] and missing[0].steps[0].error
    off = official.aggregate(box_click_rows(official, episodes))
    ref = reference.aggregate(box_click_rows(reference, episodes))
    # official: mobile icon 1/2 -> icon mean (1/2 + 1 + 1) / 3 = 5/6, text mean 1 -> overall 11/12
    assert off["overall_macro"] == pytest.approx(11 / 12) and off["num_steps"] == 12.0
    # reference: the sample is skipped -> mobile icon 1/1 -> overall 1
    assert ref["overall_macro"] == 1.0 and ref["num_steps"] == 11.0


def test_ssv2_reference_counts_an_emptied_cell_as_zero(tmp_path: Path):
    write_screenspot_v2(tmp_path, per_cell=1)  # per split: sample 00 text, 01 icon
    (tmp_path / "screenspotv2_image" / "mobile_01.png").unlink()
    reference = ScreenSpotV2(str(tmp_path), protocol="reference")
    ref = reference.aggregate(box_click_rows(reference, list(reference.load())))
    # the driver's icon accuracy of a split with no icon sample left is 0 (not left out):
    # icon mean (0 + 1 + 1) / 3, text mean 1 -> overall (1 + 2/3) / 2 = 5/6 over 5 samples
    assert ref["overall_macro"] == pytest.approx(5 / 6) and ref["num_steps"] == 5.0


def test_sspro_missing_screenshot_is_skipped(tmp_path: Path):
    write_screenspot_pro(tmp_path, per_type=1)  # 3 apps x (text, icon) = 6 samples
    image = sorted((tmp_path / "images").rglob("*.png"))[0]
    image.unlink()
    official, reference = ScreenSpotPro(str(tmp_path)), ScreenSpotPro(str(tmp_path), protocol="reference")
    episodes = list(official.load())
    gone = sum(1 for e in episodes if e.steps[0].meta["image_missing"])
    assert gone >= 1
    # official: missing samples count wrong; reference: skipped (every remaining sample is a hit)
    assert official.aggregate(box_click_rows(official, episodes))["accuracy"] == pytest.approx((6 - gone) / 6)
    assert reference.aggregate(box_click_rows(reference, episodes))["accuracy"] == 1.0


def test_sspro_parse_failure_is_wrong_not_wrong_format(tmp_path: Path):
    write_screenspot_pro(tmp_path, per_type=1)
    step = ScreenSpotPro(str(tmp_path)).load()[0].steps[0]
    bad = ParsedAction.invalid("garbage", "no Action:")
    assert ScreenSpotPro(str(tmp_path)).score(step, bad, (1, 1)).fields["wrong_format"] == 1
    ref = ScreenSpotPro(str(tmp_path), protocol="reference").score(step, bad, (1, 1))
    assert not ref.correct and ref.fields["wrong_format"] == 0


def test_ssv2_point_must_be_the_first_argument(tmp_path: Path):
    write_screenspot_v2(tmp_path, per_cell=1)
    official, reference = ScreenSpotV2(str(tmp_path)), ScreenSpotV2(str(tmp_path), protocol="reference")
    step = next(iter(official.load())).steps[0]  # mobile_0000: xyxy [20, 20, 80, 60] in 360x640
    size = (360, 640)  # smart-resized to 364x644: <point>51 40</point> -> (50.4, 39.8) px, inside the box
    texts = {
        "Action: click(point='<point>51 40</point>')": (True, True),
        "Action: scroll(point='<point>51 40</point>', direction='up')": (True, True),
        # the driver reads the first action input ('up') as the point -> no point -> wrong
        "Action: scroll(direction='up', point='<point>51 40</point>')": (True, False),
        # the official parser keeps keyword arguments only: positional coordinates give the driver nothing
        "Action: click(51, 40)": (True, False),
    }
    for text, expected in texts.items():
        action = parse_action(text, image_size=size)
        got = (official.score(step, action, size).correct, reference.score(step, action, size).correct)
        assert got == expected, text
    assert first_argument("Action: scroll(direction='up', point='<point>1 2</point>')") == "direction"
    assert first_argument("Thought: x\nAction: click(start_box='(1,2)')") == "start_box"
    assert first_argument("no call here") is None and first_argument("Action: wait()") is None


def _m2w_step(op: str, value: str) -> Step:
    return Step(0, "x.png", target={"op": op, "value": value, "bboxes": [[100, 100, 200, 150]]},
                meta={"image_size": [1000, 1000], "annotation_id": "t"})


def test_mind2web_op_f1_drops_punctuation_tokens():
    # pred {type, new, york, -, ny} vs GT {type, new, york, ny}: official P = 4/5, R = 1 -> F1 = 8/9;
    # the driver drops the "-" token -> 1
    assert token_f1("TYPE new york - ny", "TYPE new york ny") == pytest.approx(8 / 9)
    assert driver_token_f1("TYPE new york - ny", "TYPE new york ny") == 1.0
    assert driver_token_f1("()", "") == 1.0 and driver_token_f1("TYPE ny", "") == 0.0  # "()" is punctuation
    step = _m2w_step("TYPE", "new york ny")
    typed = ParsedAction("type", text="new york - ny")
    off = Mind2Web("unused").score(step, typed, (1000, 1000))
    ref = Mind2Web("unused", protocol="reference").score(step, typed, (1000, 1000))
    assert off.fields["op_f1"] == pytest.approx(8 / 9) and ref.fields["op_f1"] == 1.0


def test_mind2web_click_value_counts_for_the_driver():
    # GT CLICK with value "Submit": official "CLICK" vs "CLICK" -> 1; the driver joins op and value for every
    # op: pred {click} vs GT {click, submit} -> P = 1, R = 1/2 -> F1 = 2/3, so the step fails
    step = _m2w_step("CLICK", "Submit")
    click = ParsedAction("click", point=(0.15, 0.125))
    off = Mind2Web("unused").score(step, click, (1000, 1000))
    ref = Mind2Web("unused", protocol="reference").score(step, click, (1000, 1000))
    assert off.fields["op_f1"] == 1.0 and off.correct
    assert ref.fields["op_f1"] == pytest.approx(2 / 3) and ref.fields["ele_hit"] == 1 and not ref.correct
    assert Mind2Web("unused", protocol="reference").score(_m2w_step("CLICK", ""), click, (1000, 1000)).correct


def test_mind2web_double_right_click_and_long_press_score_zero():
    step = _m2w_step("CLICK", "")
    for kind in ("left_double", "right_single", "long_press"):
        action = ParsedAction(kind, point=(0.15, 0.125))  # inside [0.1, 0.1, 0.2, 0.15]
        assert Mind2Web("unused").score(step, action, (1000, 1000)).correct
        ref = Mind2Web("unused", protocol="reference").score(step, action, (1000, 1000))
        assert not ref.correct and ref.fields["ele_hit"] == 0 and ref.fields["op_f1"] == 0.0
    assert Mind2Web("unused", protocol="reference").score(step, ParsedAction("click", point=(0.15, 0.125)),
                                                          (1000, 1000)).correct


BASE = {"name": "t", "model": {"path": "tiny"}, "benchmark": {"name": "synthetic", "options": {}},
        "compressors": [{"name": "full"}], "budgets": [20]}


@pytest.mark.parametrize(("name", "protocol", "allowed"), [
    ("screenspot_v2", "offical", "official, reference"),
    ("agentnetbench", 3, "official, reference"),
    ("synthetic", "reference", "official"),
])
def test_unknown_protocol_fails_config_validation_naming_the_field(name, protocol, allowed):
    data = copy.deepcopy(BASE)
    # the path does not exist either: the protocol is checked first, before anything touches data
    data["benchmark"] = {"name": name, "path": "/nonexistent/data", "options": {"protocol": protocol}}
    with pytest.raises(ConfigError, match=rf"^benchmark\.options\.protocol: {protocol!r} .*allowed: {allowed}$"):
        parse_config(data)


def test_cli_rejects_an_unknown_protocol_before_any_work(tmp_path: Path, capsys):
    data = copy.deepcopy(BASE)
    data["benchmark"]["options"] = {"protocol": "gui-kv"}
    path = tmp_path / "job.yaml"
    path.write_text(json.dumps(data))
    assert main(["run", str(path), "--output", str(tmp_path / "out")]) == 2
    assert "benchmark.options.protocol" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_known_protocols_pass_validation(tmp_path: Path):
    write_screenspot_v2(tmp_path, per_cell=1)
    data = copy.deepcopy(BASE)
    data["benchmark"] = {"name": "screenspot_v2", "path": str(tmp_path), "options": {"protocol": "reference"}}
    assert parse_config(data).benchmark.options["protocol"] == "reference"
