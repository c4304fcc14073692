"""UI-TARS action parsing, rendering and coordinate conversion (pipeline.agent.parser / coords)."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.agent.actions import ParsedAction
from pipeline.agent.coords import (
    UITARS_MAX_PIXELS,
    UITARS_MIN_PIXELS,
    resized_size,
    smart_resize,
    to_normalized,
    to_pixels,
)
from pipeline.agent.parser import KNOWN_ACTIONS, format_action, parse_action

# 1920x1080 with the UI-TARS limits: 1080/28 = 38.57 -> 39*28 = 1092, 1920/28 = 68.57 -> 69*28 = 1932;
# 1092*1932 = 2,109,744 lies inside [78,400, 12,845,056], so no rescale.
IMG = (1920, 1080)
RS = (1932, 1092)


def parse(text: str, resized: tuple[int, int] | None = RS) -> ParsedAction:
    return parse_action(text, image_size=IMG, resized_size=resized)


def approx_point(p, q, tol=1e-9):
    return p is not None and abs(p[0] - q[0]) <= tol and abs(p[1] - q[1]) <= tol


# --- smart_resize / coordinates ---------------------------------------------------------------------------


def test_smart_resize_golden_full_hd():
    assert smart_resize(1080, 1920) == (1092, 1932)
    assert smart_resize(1080, 1920, 28, UITARS_MIN_PIXELS, UITARS_MAX_PIXELS) == (1092, 1932)
    assert resized_size(1920, 1080) == (1932, 1092)


def test_smart_resize_uses_python_round():
    # 70/28 = 2.5 rounds to even -> 2 -> 56 (round-half-up would give 84); 3000/28 = 107.14 -> 107 -> 2996.
    assert smart_resize(70, 3000) == (56, 2996)
    # 42/28 = 1.5 -> 2 -> 56.
    assert smart_resize(42, 3000) == (56, 2996)


def test_smart_resize_scales_tiny_image_up_to_min_pixels():
    # 50x40: rounded 56x28 = 1,568 < 78,400 -> beta = sqrt(78,400 / 2,000) = 6.261;
    # h = ceil(50*6.261/28) = ceil(11.18) = 12 -> 336, w = ceil(40*6.261/28) = ceil(8.94) = 9 -> 252.
    h, w = smart_resize(50, 40)
    assert (h, w) == (336, 252)
    assert h * w >= UITARS_MIN_PIXELS and h % 28 == 0 and w % 28 == 0


def test_smart_resize_scales_huge_image_down_to_max_pixels():
    # 6000x8000: rounded 5992x8008 > max -> beta = sqrt(48e6 / 12,845,056) = 1.9331;
    # h = floor(6000/1.9331/28) = floor(110.85) = 110 -> 3080, w = floor(8000/1.9331/28) = floor(147.8) = 147 -> 4116.
    h, w = smart_resize(6000, 8000)
    assert (h, w) == (3080, 4116)
    assert h * w <= UITARS_MAX_PIXELS


def test_smart_resize_rejects_extreme_aspect_ratio_and_bad_sizes():
    with pytest.raises(ValueError, match=r"height=10, width=2100"):
        smart_resize(10, 2100)  # ratio 210 > 200
    assert smart_resize(10, 2000)  # ratio exactly 200 is allowed
    with pytest.raises(ValueError):
        smart_resize(0, 100)


def test_to_normalized_and_to_pixels_are_inverse():
    assert to_normalized(966, 546, 1932, 1092) == (0.5, 0.5)
    assert to_pixels(0.5, 0.5, 1920, 1080) == (960.0, 540.0)
    nx, ny = to_normalized(197, 525, 1932, 1092)
    assert to_pixels(nx, ny, 1932, 1092) == pytest.approx((197, 525))


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(st.integers(1, 5000), st.integers(1, 5000))
def test_smart_resize_matches_transformers(h, w):
    tf = pytest.importorskip("transformers.models.qwen2_vl.image_processing_pil_qwen2_vl")
    if max(h, w) / min(h, w) > 200:
        with pytest.raises(ValueError):
            smart_resize(h, w)
        return
    assert smart_resize(h, w) == tf.smart_resize(h, w, 28, UITARS_MIN_PIXELS, UITARS_MAX_PIXELS)


# --- coordinate forms ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "Action: click(start_box='<|box_start|>(966,546)<|box_end|>')",
        "Action: click(start_box='(966,546)')",  # box tokens already stripped by skip_special_tokens
        "Action: click(start_box='(966, 546)')",
        "Action: click(point='<point>966 546</point>')",
        "Action: click(start_point='<point>966 546</point>')",
        "Action: click(966, 546)",
        "Action: click([966, 546])",
        "Action: click(start_box='[966, 546]')",
        "Action: click(x=966, y=546)",
        # box form: centre of (866,446)-(1066,646) is (966,546)
        "Action: click(start_box='(866,446,1066,646)')",
        "Action: click(start_box='<|box_start|>(866,446,1066,646)<|box_end|>')",
        "click(start_box='(966,546)')",  # no Action: marker -> first known call
        "Action: click(point='<point>966 546</point>'')",  # GROUNDING_DOUBAO's stray quote echoed back
    ],
)
def test_all_coordinate_forms_give_the_centre(text):
    # (966, 546) in the 1932x1092 resized image is the exact centre: 966/1932 = 0.5, 546/1092 = 0.5.
    a = parse(text)
    assert a.ok, a.error
    assert a.action_type == "click"
    assert approx_point(a.point, (0.5, 0.5))


def test_normalisation_uses_resized_not_original_size():
    # (483, 273) is a quarter of 1932x1092 -> (0.25, 0.25); dividing by 1920x1080 would give 0.2516/0.2528.
    a = parse("Action: click(point='<point>483 273</point>')")
    assert approx_point(a.point, (0.25, 0.25))
    # Without resized_size the parser recomputes it from the original size with the UI-TARS limits.
    b = parse_action("Action: click(point='<point>483 273</point>')", image_size=IMG)
    assert approx_point(b.point, (0.25, 0.25))


def test_out_of_range_coordinates_are_kept_not_clamped():
    a = parse("Action: click(start_box='(3864,2184)')")
    assert a.ok and approx_point(a.point, (2.0, 2.0))
    huge = parse("Action: click(start_box='(1e300,5)')")
    assert huge.ok and huge.point[0] > 1e290


def test_non_finite_and_absurd_numbers_are_invalid_not_exceptions():
    assert parse("Action: click(start_box='(1e999,2)')").error
    assert parse("Action: click(" + "9" * 5000 + ", 3)").error  # beyond Python's int digit limit
    assert parse("Action: click(start_box='(x1,y1)')").error  # template echoed back
    assert parse("Action: click(start_box='(1,2,3)')").error


# --- every action type ------------------------------------------------------------------------------------

CASES = [
    ("Action: click(start_box='(966,546)')", {"action_type": "click", "point": (0.5, 0.5)}),
    ("Action: left_double(start_box='(483,273)')", {"action_type": "left_double", "point": (0.25, 0.25)}),
    ("Action: right_single(point='<point>483 273</point>')", {"action_type": "right_single", "point": (0.25, 0.25)}),
    ("Action: long_press(start_box='(966,546)')", {"action_type": "long_press", "point": (0.5, 0.5)}),
    (
        "Action: drag(start_box='(483,273)', end_box='(966,546)')",
        {"action_type": "drag", "point": (0.25, 0.25), "end_point": (0.5, 0.5)},
    ),
    (
        "Action: drag(start_point='<point>483 273</point>', end_point='<point>966 546</point>')",
        {"action_type": "drag", "point": (0.25, 0.25), "end_point": (0.5, 0.5)},
    ),
    ("Action: drag(483, 273, 966, 546)", {"action_type": "drag", "point": (0.25, 0.25), "end_point": (0.5, 0.5)}),
    ("Action: hotkey(key='ctrl c')", {"action_type": "hotkey", "key": "ctrl c"}),
    ("Action: hotkey(key='enter')", {"action_type": "hotkey", "key": "enter"}),
    ("Action: type(content='hello world')", {"action_type": "type", "text": "hello world"}),
    ("Action: type(content='')", {"action_type": "type", "text": ""}),
    ("Action: type(content='search\\n')", {"action_type": "type", "text": "search\n"}),
    ("Action: type(content='It\\'s \\\"quoted\\\"')", {"action_type": "type", "text": 'It\'s "quoted"'}),
    # unescaped quotes inside the content: the official repair re-escapes them
    ("Action: type(content='It's done')", {"action_type": "type", "text": "It's done"}),
    ("Action: type(content='say 'hi' (twice)')", {"action_type": "type", "text": "say 'hi' (twice)"}),
    ("Action: type(content='a\\\\b')", {"action_type": "type", "text": "a\\b"}),
    ('Action: type(content="double quoted")', {"action_type": "type", "text": "double quoted"}),
    ("Action: type(content='cut off", {"action_type": "type", "text": "cut off"}),  # truncated generation
    (
        "Action: scroll(start_box='(966,546)', direction='down')",
        {"action_type": "scroll", "point": (0.5, 0.5), "direction": "down"},
    ),
    (
        "Action: scroll(point='<point>483 273</point>', direction='UP')",
        {"action_type": "scroll", "point": (0.25, 0.25), "direction": "up"},
    ),
    ("Action: scroll(direction='left')", {"action_type": "scroll", "point": None, "direction": "left"}),
    ("Action: wait()", {"action_type": "wait"}),
    ("Action: finished(content='successful')", {"action_type": "finished", "text": "successful"}),
    ("Action: finished(content='It's infeasible')", {"action_type": "finished", "text": "It's infeasible"}),
    ("Action: finished()", {"action_type": "finished", "text": None}),
    ("Action: call_user()", {"action_type": "call_user"}),
    ("Action: open_app(app_name='Settings')", {"action_type": "open_app", "app_name": "Settings"}),
    ("Action: press_home()", {"action_type": "press_home"}),
    ("Action: press_back()", {"action_type": "press_back"}),
]


@pytest.mark.parametrize("text,expected", CASES, ids=[c[0][8:40] for c in CASES])
def test_every_action_type(text, expected):
    a = parse(text)
    assert a.ok, a.error
    assert a.raw == text
    for name, value in expected.items():
        got = getattr(a, name)
        if name in ("point", "end_point") and value is not None:
            assert approx_point(got, value), (name, got)
        else:
            assert got == value, (name, got)


def test_action_types_cover_both_action_spaces():
    assert {c[1]["action_type"] for c in CASES} == set(KNOWN_ACTIONS)


@pytest.mark.parametrize(
    "text,reason",
    [
        ("Action: scroll(start_box='(1,2)', direction='down or up or right or left')", "direction"),
        ("Action: scroll(start_box='(1,2)')", "direction"),
        ("Action: click()", "coordinates"),
        ("Action: drag(start_box='(1,2)')", "end_box"),
        ("Action: hotkey(key='')", "key"),
        ("Action: open_app(app_name='')", "app_name"),
        ("Action: type()", "content"),
        ("Action: tap(start_box='(1,2)')", "unknown action 'tap'"),
        ("Action: ", "nothing after"),
        ("Thought: I am not sure what to do.", "no 'Action:'"),
    ],
)
def test_invalid_actions_carry_a_reason(text, reason):
    a = parse(text)
    assert a.action_type == "invalid" and not a.ok
    assert reason in a.error
    assert a.raw == text


# --- thought, markers, multiple actions -------------------------------------------------------------------


def test_thought_extraction():
    a = parse("Thought: The search box is at the top. I will click it.\nAction: click(start_box='(966,546)')")
    assert a.thought == "The search box is at the top. I will click it."
    assert a.action_type == "click"


def test_think_block_is_removed_and_thought_kept():
    text = (
        "<think>The user wants to open settings. Action: click(start_box='(1,1)') would be wrong.</think>\n"
        "Thought: Click the gear icon.\nAction: click(point='<point>966 546</point>')"
    )
    a = parse(text)
    assert a.thought == "Click the gear icon."
    assert approx_point(a.point, (0.5, 0.5))


def test_think_only_reasoning_becomes_the_thought():
    a = parse("<think>gear icon top right</think>\nAction: press_back()")
    assert a.thought == "gear icon top right" and a.action_type == "press_back"
    b = parse("reasoning that began before the output</think>\nAction: wait()")  # template-opened <think>
    assert b.thought == "reasoning that began before the output" and b.action_type == "wait"


def test_reflection_and_action_summary():
    a = parse("Reflection: The last click missed.\nAction_Summary: Click the OK button.\nAction: click(start_box='(966,546)')")
    assert a.thought == "Click the OK button."
    assert a.action_type == "click"
    b = parse("Action_Summary: Go back.\nAction: press_back()")
    assert b.thought == "Go back." and b.action_type == "press_back"


def test_last_action_marker_wins_and_only_first_action_is_returned():
    a = parse("Action: wait()\nThought: changed my mind\nAction: press_home()")
    assert a.action_type == "press_home"
    b = parse("Action: click(start_box='(966,546)')\n\nhotkey(key='enter')")
    assert b.action_type == "click"
    c = parse("Action: type(content='abc')\n\nclick(start_box='(1,2)')")
    assert c.action_type == "type" and c.text == "abc"


def test_no_marker_only_a_bare_call_is_an_action():
    a = parse("left_double(start_box='(483,273)')")
    assert a.action_type == "left_double" and approx_point(a.point, (0.25, 0.25))
    b = parse("```\nwait()\n```")
    assert b.action_type == "wait"
    # prose that mentions a call is not an action (upstream requires the marker)
    for prose in ("I will now do left_double(start_box='(483,273)') and then wait()",
                  "I should wait() until the page loads."):
        c = parse(prose)
        assert c.action_type == "invalid" and "no 'Action:' marker" in c.error


def test_marker_inside_a_quoted_argument_is_not_the_marker():
    a = parse("Thought: type the label\nAction: type(content='Action: submit the form')")
    assert a.ok and a.action_type == "type" and a.text == "Action: submit the form"
    assert a.thought == "type the label"
    b = parse("Thought: the button reads 'Action: '\nAction: click(start_box='(966,546)')")
    assert b.action_type == "click" and approx_point(b.point, (0.5, 0.5))
    c = parse("Action: finished(content=\"said 'Action: wait()' twice\")")
    assert c.action_type == "finished" and c.text == "said 'Action: wait()' twice"


def test_type_with_text_keyword_and_a_point():
    # upstream's ast parse accepts any keyword; ``text=`` carries the content, start_box the point
    a = parse("Action: type(text='hello', start_box='(966,546)')")
    assert a.ok and a.action_type == "type" and a.text == "hello" and approx_point(a.point, (0.5, 0.5))
    b = parse("Action: type(content='plain')")
    assert b.ok and b.point is None


def test_click_with_only_end_box_uses_it():
    a = parse("Action: click(end_box='(483,273)')")
    assert a.ok and a.action_type == "click" and approx_point(a.point, (0.25, 0.25))
    d = parse("Action: drag(end_box='(483,273)')")
    assert d.action_type == "invalid" and "drag without coordinates" in d.error


def test_malformed_and_truncated_calls_say_so():
    a = parse("Action: scroll up()")
    assert a.action_type == "invalid" and "malformed call" in a.error and "'scroll'" in a.error
    b = parse("Action: scroll(direction='up")
    assert b.action_type == "invalid" and b.error.startswith("truncated call scroll(")
    c = parse("click at (966, 546)")
    assert c.action_type == "invalid" and "malformed call" in c.error


def test_regex_fallback_reads_unquoted_arguments():
    a = parse("Action: hotkey(key=ctrl)")
    assert a.ok and a.key == "ctrl"
    b = parse("Action: scroll(start_box=<point>966 546</point>, direction=down)")
    assert b.ok and b.direction == "down" and approx_point(b.point, (0.5, 0.5))
    c = parse("Action: click(start_box='(966,546)'")  # missing closing parenthesis
    assert c.ok and approx_point(c.point, (0.5, 0.5))


def test_invalid_keeps_thought_and_bad_sizes_are_invalid():
    a = parse("Thought: hmm\nAction: teleport()")
    assert a.error and a.thought == "hmm"
    assert parse_action("Action: wait()", image_size=(10, 5000)).error  # aspect ratio 500
    assert parse_action("Action: wait()", image_size=IMG, resized_size=(0, 0)).error
    assert parse_action(None, image_size=IMG).error  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "garbage",
    ["", " ", "Action:", "Action: click(", "Action: click(start_box='(", "))))((((", "Action: type(content='",
     "Action: click(start_box=<point>1 2</point>)", "Action: click(**{'a': 1})", "Action: click(*x)",
     "Action: " + "(" * 5000, "Action: click(" + "[" * 3000 + ")", "Action: hotkey(key=ctrl)",
     "\x00Action: click(1,2)\x00", "Action: type(content='\\')", "Action: finished(content=')"],
)
def test_garbage_is_invalid_or_parsed_never_raises(garbage):
    a = parse(garbage)
    assert isinstance(a, ParsedAction)
    assert (a.action_type == "invalid") == (a.error is not None)


# --- full-width colon and two-corner boxes ----------------------------------------------------------------

FW = "\uff1a"  # FULLWIDTH COLON, written by UI-TARS after a Chinese thought


def test_full_width_colon_is_the_action_marker():
    # 1280x720 with the UI-TARS limits: 720/28 = 25.71 -> 26*28 = 728, 1280/28 = 45.71 -> 46*28 = 1288;
    # 728*1288 = 937,664 lies inside the pixel limits. (644, 182) / (1288, 728) = (0.5, 0.25).
    text = f"Thought{FW}我需要点击设置图标。\nAction{FW}click(start_box='<|box_start|>(644,182)<|box_end|>')"
    a = parse_action(text, image_size=(1280, 720))
    assert a.ok, a.error
    assert a.action_type == "click" and approx_point(a.point, (0.5, 0.25))
    assert a.thought == "我需要点击设置图标。"
    assert a.raw == text


@pytest.mark.parametrize(
    "text,expected",
    [
        # ASCII "Thought:" with a Chinese thought, full-width "Action" colon (the common UI-TARS mix)
        (f"Thought: 点击搜索框。\nAction{FW}click(start_box='(966,546)')", ("click", "点击搜索框。")),
        (f"Thought{FW} 返回上一页\nAction{FW} press_back()", ("press_back", "返回上一页")),
        (f"Reflection{FW}上一步没点中\nAction_Summary{FW}点确定\nAction{FW}wait()", ("wait", "点确定")),
        # the last marker wins whichever colon each uses
        (f"Action: wait()\nThought{FW}改主意了\nAction{FW}press_home()", ("press_home", "改主意了")),
        (f"Action{FW}wait()\nThought: changed\nAction: press_home()", ("press_home", "changed")),
    ],
)
def test_full_width_colon_markers(text, expected):
    a = parse(text)
    assert a.ok, a.error
    assert (a.action_type, a.thought) == expected


def test_full_width_marker_inside_quoted_content_is_not_the_marker():
    a = parse(f"Thought{FW}输入标签\nAction{FW}type(content='Action{FW}提交表单')")
    assert a.ok and a.action_type == "type" and a.text == f"Action{FW}提交表单"
    assert a.thought == "输入标签"
    b = parse(f"Action{FW}")
    assert b.action_type == "invalid" and "nothing after" in b.error
    c = parse(f"NoAction{FW}wait()")  # an identifier ending in "Action" is not the marker
    assert c.action_type == "invalid"


def test_two_corner_box_is_clicked_at_its_centre():
    # The UI-TARS-desktop parser test: (1290,718)<|box_end|>(1350,747) -> centre (1320, 732.5).
    # 2560x1440: 1440/28 = 51.43 -> 51*28 = 1428, 2560/28 = 91.43 -> 91*28 = 2548 (3,638,544 px, in limits),
    # so the point is (1320/2548, 732.5/1428) = (330/637, 1465/2856) = (0.51805..., 0.51295...).
    text = "Thought: Click open\nAction: click(start_box='<|box_start|>(1290,718)<|box_end|>(1350,747)<|box_end|>')"
    a = parse_action(text, image_size=(2560, 1440))
    assert a.ok, a.error
    assert approx_point(a.point, (330 / 637, 1465 / 2856))
    assert approx_point(a.point, (0.518053, 0.512955), tol=1e-6)
    # the same corners as one 4-number box, and with the tokens already stripped by skip_special_tokens
    for same in ("Action: click(start_box='<|box_start|>(1290,718,1350,747)<|box_end|>')",
                 "Action: click(start_box='(1290,718)(1350,747)')",
                 f"Action{FW}click(start_box='<|box_start|>(1290,718)<|box_end|>(1350,747)<|box_end|>')"):
        b = parse_action(same, image_size=(2560, 1440))
        assert b.ok and approx_point(b.point, (330 / 637, 1465 / 2856)), (same, b)


def test_two_corner_boxes_in_drag_and_scroll():
    # In the 1932x1092 resized frame: centre of (383,173)-(583,373) is (483,273) -> (0.25, 0.25);
    # centre of (866,446)-(1066,646) is (966,546) -> (0.5, 0.5).
    d = parse("Action: drag(start_box='<|box_start|>(383,173)<|box_end|>(583,373)<|box_end|>', "
              "end_box='<|box_start|>(866,446)<|box_end|>(1066,646)<|box_end|>')")
    assert d.ok, d.error
    assert approx_point(d.point, (0.25, 0.25)) and approx_point(d.end_point, (0.5, 0.5))
    s = parse("Action: scroll(start_box='<|box_start|>(866,446)<|box_end|>(1066,646)<|box_end|>', direction='up')")
    assert s.ok and s.direction == "up" and approx_point(s.point, (0.5, 0.5))
    bad = parse("Action: click(start_box='<|box_start|>(1,2)<|box_end|>(3,4)<|box_end|>(5,6)<|box_end|>')")
    assert bad.action_type == "invalid" and "expected 2 or 4 numbers, got 6" in bad.error


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 1932), st.integers(0, 1092), st.integers(0, 1932), st.integers(0, 1092),
       st.sampled_from([":", FW]), st.booleans())
def test_two_corner_box_centre_property(x1, y1, x2, y2, colon, tokens):
    corners = f"({x1},{y1})<|box_end|>({x2},{y2})<|box_end|>" if tokens else f"({x1},{y1})({x2},{y2})"
    box = ("<|box_start|>" if tokens else "") + corners
    a = parse(f"Thought{colon}点击。\nAction{colon}click(start_box='{box}')")
    assert a.ok, a.error
    assert approx_point(a.point, ((x1 + x2) / 2 / 1932, (y1 + y2) / 2 / 1092), tol=1e-12)
    assert a.thought == "点击。"


# --- hypothesis: never raises -----------------------------------------------------------------------------

FRAGMENTS = [
    "Action: ", "Action:", "Thought: ", "Reflection: ", "Action_Summary: ", "<think>", "</think>",
    "click(", "left_double(", "drag(", "scroll(", "type(", "hotkey(", "finished(", "open_app(", "wait()",
    "start_box=", "end_box=", "point=", "start_point=", "end_point=", "content=", "direction=", "key=",
    "<point>", "</point>", "<|box_start|>", "<|box_end|>", "(", ")", "[", "]", ",", " ", "\n", "\n\n",
    ")\n\n", "'", '"', "\\", "\\'", "\\n", "1", "23", "456", "-7", "1e999", "0.5", "9" * 50, "x1", "y1",
    "down", "up", "ctrl c", "=", "*", "**",
    # full-width punctuation UI-TARS writes after Chinese thoughts, and two-corner box tokens
    f"Action{FW}", f"Thought{FW}", f"Reflection{FW}", f"Action_Summary{FW}", FW, "\uff0c", "\u3002", "\uff08",
    "\uff09", "\u3000", "点击", "<|box_start|>(", ")<|box_end|>(", ")<|box_end|>", "<|box_end|>(",
    "<|box_start|>(966,546)<|box_end|>(1,2)<|box_end|>", "<|", "|>", "<|box_start", "box_end|>",
]


def _check(text: str) -> None:
    a = parse(text)
    assert isinstance(a, ParsedAction)
    assert a.raw == text
    if a.action_type == "invalid":
        assert a.error
    else:
        assert a.error is None and a.action_type in KNOWN_ACTIONS
        for p in (a.point, a.end_point):
            assert p is None or (math.isfinite(p[0]) and math.isfinite(p[1]))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text())
def test_never_raises_on_arbitrary_text(text):
    _check(text)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=4)), max_size=30).map("".join))
def test_never_raises_on_action_like_text(text):
    _check(text)


# --- format_action round trip -----------------------------------------------------------------------------

ROUND_TRIP = [
    ParsedAction("click", point=(0.5, 0.5), thought="Click the centre."),
    ParsedAction("left_double", point=(0.25, 0.75)),
    ParsedAction("right_single", point=(0.1, 0.9)),
    ParsedAction("long_press", point=(0.3, 0.4)),
    ParsedAction("drag", point=(0.1, 0.2), end_point=(0.8, 0.9)),
    ParsedAction("hotkey", key="ctrl shift t"),
    ParsedAction("type", text="It's a \"test\" with \\ and\nnewline\n"),
    ParsedAction("scroll", point=(0.5, 0.5), direction="up"),
    ParsedAction("scroll", direction="right"),
    ParsedAction("wait"),
    ParsedAction("finished", text="successful"),
    ParsedAction("finished"),
    ParsedAction("call_user"),
    ParsedAction("open_app", app_name="Google Maps"),
    ParsedAction("press_home"),
    ParsedAction("press_back"),
]


def _same(a: ParsedAction, b: ParsedAction, resized=RS) -> None:
    tol_x, tol_y = 0.5 / resized[0] + 1e-12, 0.5 / resized[1] + 1e-12  # integer pixels in the text
    assert b.ok, b.error
    assert (b.action_type, b.text, b.key, b.direction, b.app_name, b.thought) == (
        a.action_type, a.text, a.key, a.direction, a.app_name, a.thought)
    for p, q in ((a.point, b.point), (a.end_point, b.end_point)):
        assert (p is None) == (q is None)
        if p is not None:
            assert abs(p[0] - q[0]) <= tol_x and abs(p[1] - q[1]) <= tol_y


@pytest.mark.parametrize("family", ["box", "point"])
@pytest.mark.parametrize("action", ROUND_TRIP, ids=[a.action_type for a in ROUND_TRIP])
def test_format_action_round_trip(action, family):
    text = format_action(action, RS, family=family)
    _same(action, parse(text))


def test_format_action_golden_text():
    a = ParsedAction("click", point=(0.5, 0.5), thought="Click it.")
    assert format_action(a, RS) == "Thought: Click it.\nAction: click(start_box='<|box_start|>(966,546)<|box_end|>')"
    assert format_action(a, RS, family="point", with_thought=False) == "Action: click(point='<point>966 546</point>')"
    d = ParsedAction("drag", point=(0.25, 0.25), end_point=(0.5, 0.5))
    assert format_action(d, RS) == (
        "Action: drag(start_box='<|box_start|>(483,273)<|box_end|>', end_box='<|box_start|>(966,546)<|box_end|>')"
    )
    assert format_action(d, RS, family="point") == (
        "Action: drag(start_point='<point>483 273</point>', end_point='<point>966 546</point>')"
    )
    assert format_action(ParsedAction("type", text="a'b\n"), RS) == "Action: type(content='a\\'b\\n')"
    with pytest.raises(ValueError):
        format_action(ParsedAction.invalid("x", "bad"), RS)


_SAFE_TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\r\x00\x85\u2028\u2029",
                                            exclude_categories=("Cs", "Cc", "Zl", "Zp")) | st.sampled_from(
    ["'", '"', "\\", "\n", "(", ")", " "]), max_size=40).filter(lambda s: "Action" not in s and "<" not in s)
_UNIT = st.integers(0, 1932).map(lambda x: x / 1932)
_UNIT_Y = st.integers(0, 1092).map(lambda y: y / 1092)
_POINT = st.tuples(_UNIT, _UNIT_Y)
_ACTIONS = st.one_of(
    st.builds(ParsedAction, st.sampled_from(["click", "left_double", "right_single", "long_press"]), point=_POINT),
    st.builds(ParsedAction, st.just("drag"), point=_POINT, end_point=_POINT),
    st.builds(ParsedAction, st.just("type"), text=_SAFE_TEXT),
    st.builds(ParsedAction, st.just("finished"), text=_SAFE_TEXT.filter(bool)),
    st.builds(ParsedAction, st.just("scroll"), point=st.none() | _POINT, direction=st.sampled_from(["up", "down", "left", "right"])),
)


@settings(max_examples=200, deadline=None)
@given(_ACTIONS, st.sampled_from(["box", "point"]))
def test_format_parse_round_trip_property(action, family):
    _same(action, parse(format_action(action, RS, family=family)))
