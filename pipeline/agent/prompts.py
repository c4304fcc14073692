"""UI-TARS-1.5 prompt templates and the one function that fills them.

The template texts are data and are kept character-for-character (trailing spaces, missing blank lines and
the stray quote of GROUNDING_DOUBAO included) because the model was trained on them and the reference
drivers use them; see benchmarks.md 1.1 and starkv.md 5. Two coordinate families exist:

* ``box``   -- ``click(start_box='<|box_start|>(x1,y1)<|box_end|>')``: release-era UI-TARS-1.5, OSWorld, desktop.
* ``point`` -- ``click(point='<point>x1 y1</point>')``: the ``*_DOUBAO`` constants, used by GUI-KV / STaR-KV.

The parser accepts both. The AgentNetBench, AndroidControl and Mind2Web prompts exist verbatim only in the
point family (GUI-KV drivers); their box versions are derived mechanically by rewriting each coordinate slot
(``_to_box_family``). Pass ``family="point"`` for parity with the reference drivers.
"""

from __future__ import annotations

import re

KINDS = ("grounding", "computer", "mobile", "agentnet", "androidcontrol", "mind2web")
# Kinds whose template has a "## Previous Actions" section (earlier steps as text, one screenshot).
PREVIOUS_ACTIONS_KINDS = ("androidcontrol", "mind2web")
FAMILIES = ("box", "point")

# --- box family (UI-TARS prompts.py / codes/prompts.py) -------------------------------------------------

COMPUTER_USE = """You are a GUI agent. You are given a task and your action history, with screenshots. You need to perform the next action to complete the task.

## Output Format
```
Thought: ...
Action: ...
```

## Action Space

click(start_box='<|box_start|>(x1,y1)<|box_end|>')
left_double(start_box='<|box_start|>(x1,y1)<|box_end|>')
right_single(start_box='<|box_start|>(x1,y1)<|box_end|>')
drag(start_box='<|box_start|>(x1,y1)<|box_end|>', end_box='<|box_start|>(x3,y3)<|box_end|>')
hotkey(key='')
type(content='xxx') # Use escape characters \\', \\", and \\n in content part to ensure we can parse the content in normal python string format. If you want to submit your input, use \\n at the end of content. 
scroll(start_box='<|box_start|>(x1,y1)<|box_end|>', direction='down or up or right or left')
wait() #Sleep for 5s and take a screenshot to check for any changes.
finished(content='xxx') # Use escape characters \\', \\", and \\n in content part to ensure we can parse the content in normal python string format.


## Note
- Use {language} in `Thought` part.
- Write a small plan and finally summarize your next action (with its target element) in one sentence in `Thought` part.

## User Instruction
{instruction}
"""  # noqa: W291

MOBILE_USE = """You are a GUI agent. You are given a task and your action history, with screenshots. You need to perform the next action to complete the task. 
## Output Format
```
Thought: ...
Action: ...
```
## Action Space

click(start_box='<|box_start|>(x1,y1)<|box_end|>')
long_press(start_box='<|box_start|>(x1,y1)<|box_end|>')
type(content='') #If you want to submit your input, use "\\n" at the end of `content`.
scroll(start_box='<|box_start|>(x1,y1)<|box_end|>', direction='down or up or right or left')
open_app(app_name='')
drag(start_box='<|box_start|>(x1,y1)<|box_end|>', end_box='<|box_start|>(x3,y3)<|box_end|>')
press_home()
press_back()
finished(content='xxx') # Use escape characters \\', \\", and \\n in content part to ensure we can parse the content in normal python string format.


## Note
- Use {language} in `Thought` part.
- Write a small plan and finally summarize your next action (with its target element) in one sentence in `Thought` part.

## User Instruction
{instruction}
"""  # noqa: W291

GROUNDING = (
    "You are a GUI agent. You are given a task and your action history, with screenshots. You need to perform "
    "the next action to complete the task. \n\n## Output Format\n\nAction: ...\n\n\n## Action Space\n"
    "click(start_box='<|box_start|>(x1,y1)<|box_end|>')\n\n## User Instruction\n{instruction}"
)

# --- point family (UI-TARS codes/ui_tars/prompt.py *_DOUBAO) ---------------------------------------------

COMPUTER_USE_DOUBAO = """You are a GUI agent. You are given a task and your action history, with screenshots. You need to perform the next action to complete the task.

## Output Format
```
Thought: ...
Action: ...
```

## Action Space

click(point='<point>x1 y1</point>')
left_double(point='<point>x1 y1</point>')
right_single(point='<point>x1 y1</point>')
drag(start_point='<point>x1 y1</point>', end_point='<point>x2 y2</point>')
hotkey(key='ctrl c') # Split keys with a space and use lowercase. Also, do not use more than 3 keys in one hotkey action.
type(content='xxx') # Use escape characters \\', \\", and \\n in content part to ensure we can parse the content in normal python string format. If you want to submit your input, use \\n at the end of content. 
scroll(point='<point>x1 y1</point>', direction='down or up or right or left') # Show more information on the `direction` side.
wait() #Sleep for 5s and take a screenshot to check for any changes.
finished(content='xxx') # Use escape characters \\', \\", and \\n in content part to ensure we can parse the content in normal python string format.


## Note
- Use {language} in `Thought` part.
- Write a small plan and finally summarize your next action (with its target element) in one sentence in `Thought` part.

## User Instruction
{instruction}
"""  # noqa: W291

MOBILE_USE_DOUBAO = """You are a GUI agent. You are given a task and your action history, with screenshots. You need to perform the next action to complete the task. 
## Output Format
```
Thought: ...
Action: ...
```
## Action Space

click(point='<point>x1 y1</point>')
long_press(point='<point>x1 y1</point>')
type(content='') #If you want to submit your input, use "\\n" at the end of `content`.
scroll(point='<point>x1 y1</point>', direction='down or up or right or left')
open_app(app_name='')
drag(start_point='<point>x1 y1</point>', end_point='<point>x2 y2</point>')
press_home()
press_back()
finished(content='xxx') # Use escape characters \\', \\", and \\n in content part to ensure we can parse the content in normal python string format.


## Note
- Use {language} in `Thought` part.
- Write a small plan and finally summarize your next action (with its target element) in one sentence in `Thought` part.

## User Instruction
{instruction}
"""  # noqa: W291

# The doubled closing quote after </point> is in the official file; GUI-KV / STaR-KV send it as is.
GROUNDING_DOUBAO = (
    "You are a GUI agent. You are given a task and your action history, with screenshots. You need to perform "
    "the next action to complete the task. \n\n## Output Format\n\nAction: ...\n\n\n## Action Space\n"
    "click(point='<point>x1 y1</point>'')\n\n## User Instruction\n{instruction}"
)

# --- GUI-KV benchmark variants (point family; "English" made a {language} slot, identical by default) ----

# AgentNetBench (eval/agentnetbench_eval.py AGENTNETBENCH_PROMPT_UI_TARS): <think> reasoning format.
AGENTNET_DOUBAO = """You are a GUI agent. You are given a task and your action history, with screenshots. You need to perform the next action to complete the task.

## Output Format
You should first think about the reasoning process in the mind and then provide the user with the answer. 
The reasoning process is enclosed within <think> </think> tags
After the <think> tags, you should place final answer, which concludes your summarized thought and your action.

For example,
```
<think>detailed reasoning content here</think>
Thought: a small plan and finally summarize your next action (with its target element) in one sentence
Action: ...
```

## Action Space

click(point='<point>x1 y1</point>')
left_double(point='<point>x1 y1</point>')
right_single(point='<point>x1 y1</point>')
drag(start_point='<point>x1 y1</point>', end_point='<point>x2 y2</point>')
hotkey(key='ctrl c') # Split keys with a space and use lowercase. Also, do not use more than 3 keys in one hotkey action.
type(content='xxx') # Use escape characters \\', \\", and \\n in content part to ensure we can parse the content in normal python string format. If you want to submit your input, use \\n at the end of content. 
scroll(point='<point>x1 y1</point>', direction='down or up or right or left') # Show more information on the `direction` side.
wait() #Sleep for 5s and take a screenshot to check for any changes.
finished(content='successful|failure') # Use escape characters \\', \\", and \\n in content part to ensure we can parse the content in normal python string format.

## Output Example
Thought: Let's click ...
Action: click(point='<point>100 200</point>')

## Note
- Use {language} in `Thought` part.
- Write a small plan and finally summarize your next action (with its target element) in one sentence in `Thought` part.
- If you have executed several same actions (like repeatedly clicking the same point) but the screen keeps no change, please try to execute a modified action when necessary.
- finished content should be either`successful` or `failure`.

## User Instruction
{instruction}

Please generate the next move according to the screenshot and task instruction.
"""  # noqa: W291

_ANDROIDCONTROL_HEAD = """You are a GUI agent. You are given a task and your action history, with screenshots. You need to perform the next action to complete the task. 
## Output Format
```
Thought: ...
Action: ...
```
## Action Space

click(point='<point>x1 y1</point>')
long_press(point='<point>x1 y1</point>')
type(content='') #If you want to submit your input, use "\\n" at the end of `content`.
scroll(point='<point>x1 y1</point>', direction='down or up or right or left')
press_back()
wait() # Wait for the screen to finish loading.
finished(content='successful|infeasible') # Use `infeasible` if you think the task is not feasible (including cases like you don't have enough information or cannot perform some necessary actions); otherwise, use `successful`.


## Note
- Use {language} in `Thought` part.
- Write a small plan and finally summarize your next action (with its target element) in one sentence in `Thought` part.
- Always use `click` if you want to open an app.
"""  # noqa: W291

# AndroidControl high level (eval/androidcontrol_eval.py ANDROIDCONTROL_PROMPT_HIGH): the goal is the instruction.
ANDROIDCONTROL_HIGH_DOUBAO = _ANDROIDCONTROL_HEAD + """- content in `finished` action should only be `successful` or `infeasible`.

## Previous Actions
{previous_actions}

## User Instruction
{goal}

"""

# AndroidControl low level (ANDROIDCONTROL_PROMPT_LOW): episode goal + the step instruction to follow.
ANDROIDCONTROL_LOW_DOUBAO = _ANDROIDCONTROL_HEAD + """- You must follow User Instruction below.

## User Goal:
{goal}

## Previous Actions
{previous_actions}

## User Instruction
{task}
"""

# Multimodal-Mind2Web (eval/multimodal_mind2web_eval.py MM_MIND2WEB_PROMPT, UI-TARS branch), verbatim: the
# "- " bullets, the stray "." after click(...), the trailing spaces and the blank-line runs are the driver's.
# The driver's ``type`` has no point (its rule: type clicks the box itself); ``select`` has point + content.
MIND2WEB_DOUBAO = (
    "You are a GUI agent. You are given a task and your action history, with screenshots. You need to perform "
    "the next action to complete the task. \n\n\n## Output Format\n```\nThought: ...\nAction: ...\n```\n\n"
    "## Action Space\n\n\n"
    "- type(content='xxx') # First click on the textbox, and then type the content. \n"
    "- scroll(point='<point>x1 y1</point>', direction='down or up') # Show more information on the `direction` "
    "side.\n"
    "- select(point='<point>x1 y1</point>', content='xxx') # Select dropdown menu at point x1 y1 and choose "
    "entry xxx.\n"
    "- click(point='<point>x1 y1</point>').   \n\n"
    "## Note\n- Use {language} in `Thought` part.\n"
    "- Write a small plan and finally summarize your next action (with its target element) in one sentence in "
    "`Thought` part. \n"
    "- For `type` action, Use escape characters \\', \\\", and \\n in content part to ensure we can parse the "
    "content in normal python string format. If you want to submit your input, use \\n at the end of content. "
    "\n\n"
    "## Rule\n- The `type` action will click + type in a textbox or search box. DO NOT `click` ON search box; "
    "otherwise, you will be terminated.\n\n"
    "## Previous Actions\n{previous_actions}\n\n\n\n## User Instruction\n{instruction}\n\n\n"
)

_POINT_SLOT = re.compile(r"(start_point|end_point|point)='<point>(\w+) (\w+)</point>'")
_BOX_NAME = {"point": "start_box", "start_point": "start_box", "end_point": "end_box"}


def _to_box_family(template: str) -> str:
    """Rewrite every ``name='<point>a b</point>'`` slot as ``box_name='<|box_start|>(a,b)<|box_end|>'``."""
    return _POINT_SLOT.sub(
        lambda m: f"{_BOX_NAME[m.group(1)]}='<|box_start|>({m.group(2)},{m.group(3)})<|box_end|>'", template
    )


AGENTNET = _to_box_family(AGENTNET_DOUBAO)
ANDROIDCONTROL_HIGH = _to_box_family(ANDROIDCONTROL_HIGH_DOUBAO)
ANDROIDCONTROL_LOW = _to_box_family(ANDROIDCONTROL_LOW_DOUBAO)
MIND2WEB = _to_box_family(MIND2WEB_DOUBAO)

TEMPLATES: dict[tuple[str, str], str] = {
    ("grounding", "box"): GROUNDING,
    ("grounding", "point"): GROUNDING_DOUBAO,
    ("computer", "box"): COMPUTER_USE,
    ("computer", "point"): COMPUTER_USE_DOUBAO,
    ("mobile", "box"): MOBILE_USE,
    ("mobile", "point"): MOBILE_USE_DOUBAO,
    ("agentnet", "box"): AGENTNET,
    ("agentnet", "point"): AGENTNET_DOUBAO,
    ("androidcontrol_high", "box"): ANDROIDCONTROL_HIGH,
    ("androidcontrol_high", "point"): ANDROIDCONTROL_HIGH_DOUBAO,
    ("androidcontrol_low", "box"): ANDROIDCONTROL_LOW,
    ("androidcontrol_low", "point"): ANDROIDCONTROL_LOW_DOUBAO,
    ("mind2web", "box"): MIND2WEB,
    ("mind2web", "point"): MIND2WEB_DOUBAO,
}

# Action names each prompt offers (the parser accepts the union of all of them).
ACTION_SPACES: dict[str, tuple[str, ...]] = {
    "grounding": ("click",),
    "computer": ("click", "left_double", "right_single", "drag", "hotkey", "type", "scroll", "wait", "finished"),
    "mobile": ("click", "long_press", "type", "scroll", "open_app", "drag", "press_home", "press_back", "finished"),
    "agentnet": ("click", "left_double", "right_single", "drag", "hotkey", "type", "scroll", "wait", "finished"),
    "androidcontrol": ("click", "long_press", "type", "scroll", "press_back", "wait", "finished"),
    "mind2web": ("type", "scroll", "select", "click"),
}

_SLOT = re.compile(r"\{(instruction|language|goal|previous_actions|task)\}")


def _fill(template: str, values: dict[str, str]) -> str:
    """Single-pass substitution: braces inside the instruction are never re-interpreted (unlike str.format)."""
    return _SLOT.sub(lambda m: values[m.group(1)], template)


def render_prompt(
    kind: str,
    instruction: str,
    *,
    family: str = "box",
    language: str = "English",
    goal: str | None = None,
    previous_actions: list[str] | None = None,
) -> str:
    """The user-prompt text for one step.

    ``androidcontrol``: with ``goal=None`` it is the high-level prompt and ``instruction`` is the episode goal;
    with a ``goal`` it is the low-level prompt (``## User Goal:`` = goal, ``## User Instruction`` =
    ``instruction``, the step instruction). ``previous_actions`` are joined by newlines into the
    ``## Previous Actions`` section (empty when None). Other kinds have neither section, so passing a goal or
    non-empty previous actions to them is an error rather than being silently dropped. ``mind2web`` has the
    ``## Previous Actions`` section but no goal.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown prompt kind {kind!r}; allowed: {', '.join(KINDS)}")
    if family not in FAMILIES:
        raise ValueError(f"unknown prompt family {family!r}; allowed: {', '.join(FAMILIES)}")
    values = {"instruction": instruction, "language": language, "goal": "", "previous_actions": "", "task": ""}
    if kind != "androidcontrol":
        if goal is not None:
            raise ValueError(f"goal applies only to kind 'androidcontrol', not {kind!r}")
        if previous_actions and kind not in PREVIOUS_ACTIONS_KINDS:
            raise ValueError(f"previous_actions apply only to kinds {', '.join(PREVIOUS_ACTIONS_KINDS)}, not {kind!r}")
        values["previous_actions"] = "\n".join(previous_actions or [])
        return _fill(TEMPLATES[(kind, family)], values)
    values["previous_actions"] = "\n".join(previous_actions or [])
    if goal is None:
        values["goal"] = instruction
        return _fill(TEMPLATES[("androidcontrol_high", family)], values)
    values["goal"] = goal
    values["task"] = instruction
    return _fill(TEMPLATES[("androidcontrol_low", family)], values)
