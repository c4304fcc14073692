"""UI-TARS prompt rendering (pipeline.agent.prompts) and step history layout (pipeline.agent.history)."""

from __future__ import annotations

import re

import pytest

from pipeline.agent import prompts
from pipeline.agent.history import HistoryConfig, build_messages, format_history_text, select_past_texts
from pipeline.agent.prompts import ACTION_SPACES, FAMILIES, KINDS, render_prompt

INSTRUCTION = "Open the {settings} page and turn on Wi-Fi"


def action_space(text: str) -> list[str]:
    """Action names listed under '## Action Space' (up to the next section)."""
    section = text.split("## Action Space", 1)[1]
    section = re.split(r"\n## ", section, maxsplit=1)[0]
    return re.findall(r"^(?:- )?([a-z_]+)\(", section, flags=re.M)


# --- rendering --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_has_instruction_and_its_action_space(kind, family):
    text = render_prompt(kind, INSTRUCTION, family=family)
    assert INSTRUCTION in text  # braces in the instruction survive untouched
    assert action_space(text) == list(ACTION_SPACES[kind])
    assert "{" + "instruction}" not in text and "{language}" not in text
    if family == "box":
        assert "<|box_start|>(x1,y1)<|box_end|>" in text and "<point>" not in text
    else:
        assert "<point>x1 y1</point>" in text and "<|box_start|>" not in text


def test_grounding_box_is_verbatim():
    expected = (
        "You are a GUI agent. You are given a task and your action history, with screenshots. You need to "
        "perform the next action to complete the task. \n\n## Output Format\n\nAction: ...\n\n\n## Action Space\n"
        "click(start_box='<|box_start|>(x1,y1)<|box_end|>')\n\n## User Instruction\nClick OK"
    )
    assert render_prompt("grounding", "Click OK") == expected


def test_grounding_doubao_keeps_the_stray_quote():
    text = render_prompt("grounding", "Click OK", family="point")
    assert "click(point='<point>x1 y1</point>'')\n\n## User Instruction\nClick OK" in text
    assert text.endswith("## User Instruction\nClick OK")
    assert "Thought" not in text


def test_computer_use_box_details():
    text = render_prompt("computer", "Do it", language="Chinese")
    assert text.startswith("You are a GUI agent. You are given a task and your action history, with screenshots. "
                           "You need to perform the next action to complete the task.\n\n## Output Format\n```\n"
                           "Thought: ...\nAction: ...\n```\n\n## Action Space\n\nclick(")
    # the model sees single backslashes (the official source doubles them)
    assert ("type(content='xxx') # Use escape characters \\', \\\", and \\n in content part to ensure we can parse "
            "the content in normal python string format. If you want to submit your input, use \\n at the end of "
            "content. \n") in text
    assert "drag(start_box='<|box_start|>(x1,y1)<|box_end|>', end_box='<|box_start|>(x3,y3)<|box_end|>')" in text
    assert "hotkey(key='')\n" in text
    assert "- Use Chinese in `Thought` part." in text
    assert text.endswith("## User Instruction\nDo it\n")


def test_computer_use_point_family_has_doubao_comments():
    text = render_prompt("computer", "Do it", family="point")
    assert "hotkey(key='ctrl c') # Split keys with a space and use lowercase." in text
    assert "drag(start_point='<point>x1 y1</point>', end_point='<point>x2 y2</point>')" in text
    assert "# Show more information on the `direction` side." in text


def test_mobile_use_layout():
    text = render_prompt("mobile", "Call mom")
    # no blank line before the section headers in MOBILE_USE, and a trailing space after the preamble
    assert "complete the task. \n## Output Format\n```\nThought: ...\nAction: ...\n```\n## Action Space\n\n" in text
    assert "open_app(app_name='')" in text
    assert 'type(content=\'\') #If you want to submit your input, use "\\n" at the end of `content`.' in text


def test_agentnet_prompt_has_think_format():
    text = render_prompt("agentnet", "Rename the file", family="point")
    assert "The reasoning process is enclosed within <think> </think> tags\n" in text
    assert "<think>detailed reasoning content here</think>" in text
    assert "finished(content='successful|failure')" in text
    assert "Action: click(point='<point>100 200</point>')" in text
    assert text.endswith(
        "## User Instruction\nRename the file\n\nPlease generate the next move according to the screenshot and "
        "task instruction.\n"
    )
    box = render_prompt("agentnet", "Rename the file")
    assert "Action: click(start_box='<|box_start|>(100,200)<|box_end|>')" in box
    assert "drag(start_box='<|box_start|>(x1,y1)<|box_end|>', end_box='<|box_start|>(x2,y2)<|box_end|>')" in box
    # only the coordinate slots differ between the families
    assert re.sub(r"<\|box_start\|>|<\|box_end\|>|start_box|end_box|point|[(),<>/ ]", "", box) == re.sub(
        r"<\|box_start\|>|<\|box_end\|>|start_box|end_box|start_point|end_point|point|[(),<>/ ]", "", text
    )


def test_androidcontrol_high_level():
    text = render_prompt("androidcontrol", "Book a table for two", family="point",
                         previous_actions=["Step 1: open the app", "Step 2: tap search"])
    assert "wait() # Wait for the screen to finish loading." in text
    assert "finished(content='successful|infeasible')" in text
    assert "- content in `finished` action should only be `successful` or `infeasible`." in text
    assert text.endswith(
        "## Previous Actions\nStep 1: open the app\nStep 2: tap search\n\n## User Instruction\nBook a table for two\n\n"
    )
    assert "## User Goal:" not in text
    assert "open_app" not in text and "press_home" not in text


def test_androidcontrol_low_level_with_goal():
    text = render_prompt("androidcontrol", "Tap the search box", family="point", goal="Book a table for two")
    assert text.endswith(
        "- You must follow User Instruction below.\n\n## User Goal:\nBook a table for two\n\n## Previous Actions\n\n\n"
        "## User Instruction\nTap the search box\n"
    )


def test_language_slot_and_verbatim_english_default():
    assert "- Use English in `Thought` part." in render_prompt("androidcontrol", "x")
    assert "- Use German in `Thought` part." in render_prompt("agentnet", "x", language="German")
    # the instruction is inserted after the slots are filled: its own '{language}' stays literal
    assert "say {language}" in render_prompt("computer", "say {language}", language="French")


def test_unknown_kind_or_family_or_misplaced_sections():
    with pytest.raises(ValueError, match="grounding, computer, mobile, agentnet, androidcontrol"):
        render_prompt("desktop", "x")
    with pytest.raises(ValueError, match="box, point"):
        render_prompt("computer", "x", family="bbox")
    with pytest.raises(ValueError, match="androidcontrol"):
        render_prompt("computer", "x", goal="g")
    with pytest.raises(ValueError, match="androidcontrol"):
        render_prompt("mobile", "x", previous_actions=["a"])
    assert render_prompt("mobile", "x", previous_actions=[]) == render_prompt("mobile", "x")


def test_template_constants_are_exported():
    assert prompts.TEMPLATES[("computer", "box")] is prompts.COMPUTER_USE
    assert prompts.TEMPLATES[("grounding", "point")] is prompts.GROUNDING_DOUBAO


# --- history ----------------------------------------------------------------------------------------------


def _kinds(messages):
    """Compact view: 'S' system, 'I' image-only user, 'A<text>' assistant, 'U' final user."""
    out = []
    for m in messages:
        parts = [p["type"] for p in m["content"]]
        if m["role"] == "system":
            out.append("S")
        elif m["role"] == "assistant":
            out.append("A" + m["content"][0]["text"])
        elif parts == ["image"]:
            out.append("I")
        else:
            assert parts == ["image", "text"]
            out.append("U")
    return out


def _placeholders(messages):
    return sum(p["type"] == "image" for m in messages for p in m["content"])


PAST = [f"t{i}" for i in range(7)]
IMAGES = [f"img{i}.png" for i in range(7)] + ["current.png"]


def test_seven_past_steps_five_image_slots():
    messages, images = build_messages("PROMPT", IMAGES, PAST, HistoryConfig(image_slots=5, text_history=10))
    # 4 most recent past screenshots (steps 3..6) + current, oldest first
    assert images == ["img3.png", "img4.png", "img5.png", "img6.png", "current.png"]
    assert _placeholders(messages) == len(images) == 5
    assert _kinds(messages) == ["S", "At0", "At1", "At2", "I", "At3", "I", "At4", "I", "At5", "I", "At6", "U"]
    assert messages[0]["content"] == [{"type": "text", "text": "You are a helpful assistant."}]
    assert messages[-1] == {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "PROMPT"}]}


def test_text_history_limits_assistant_turns():
    messages, images = build_messages("P", IMAGES, PAST, HistoryConfig(image_slots=5, text_history=2))
    assert len(images) == 5
    assert _kinds(messages) == ["S", "I", "I", "I", "At5", "I", "At6", "U"]
    everything, _ = build_messages("P", IMAGES, PAST, HistoryConfig(text_history=0))
    assert [k for k in _kinds(everything) if k.startswith("A")] == [f"At{i}" for i in range(7)]


def test_image_window_smaller_than_history_and_no_system():
    messages, images = build_messages("P", IMAGES, PAST, HistoryConfig(image_slots=1, system_prompt=None))
    assert images == ["current.png"]
    assert _kinds(messages) == [f"At{i}" for i in range(7)] + ["U"]


def test_short_history_uses_all_past_images():
    messages, images = build_messages("P", ["a", "b", "c"], ["ta", "tb"], HistoryConfig())
    assert images == ["a", "b", "c"]
    assert _kinds(messages) == ["S", "I", "Ata", "I", "Atb", "U"]


def test_single_step():
    messages, images = build_messages("P", ["only"], [], HistoryConfig())
    assert images == ["only"]
    assert _kinds(messages) == ["S", "U"]
    messages, _ = build_messages("P", ["only"], [], HistoryConfig(system_prompt=None))
    assert _kinds(messages) == ["U"]


def test_images_pass_through_unchanged():
    from PIL import Image

    imgs = [Image.new("RGB", (8, 8), (i, i, i)) for i in range(3)]
    _, ordered = build_messages("P", imgs, ["a", "b"], HistoryConfig(image_slots=2))
    assert ordered[0] is imgs[1] and ordered[1] is imgs[2]


def test_build_messages_validates_lengths_and_config():
    with pytest.raises(ValueError, match="one image per past step"):
        build_messages("P", ["a", "b"], ["ta", "tb"], HistoryConfig())
    with pytest.raises(ValueError):
        HistoryConfig(image_slots=0)
    with pytest.raises(ValueError, match="ground_truth, model"):
        HistoryConfig(source="oracle")


def test_format_history_text_and_source_selection():
    assert format_history_text(3, "Thought: x\nAction: wait()") == "Step 3:\nThought: x\nAction: wait()"
    assert format_history_text(1, "out", gui_kv_header=True) == "# Step 1:\nStep 1:\nout"
    gt = ["g0", "g1", "g2"]
    assert select_past_texts(gt, ["m0", None], HistoryConfig(source="model")) == ["m0", "g1", "g2"]
    assert select_past_texts(gt, ["m0", "m1", "m2"], HistoryConfig(source="ground_truth")) == gt
