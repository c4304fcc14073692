"""Model text -> ParsedAction for the UI-TARS computer and mobile action spaces (both coordinate families),
plus the ``select`` action of GUI-KV's Mind2Web template.

Follows the official UI-TARS parser (benchmarks.md 1.2, starkv.md 5): drop ``<think>`` blocks, take the
thought, take the text after the last ``Action:`` (ASCII or full-width colon, U+FF1A) that is not quoted
inside an earlier action's arguments (without a marker, only an output that *starts* with a known call is
an action; prose that mentions one is not), keep only the first action, parse the call with ``ast`` after
re-escaping the quotes of ``type`` content, and map model pixels (absolute, in the smart-resized image) to
normalised coordinates; a box (4 numbers, or two corners ``(x1,y1)<|box_end|>(x2,y2)``) is clicked at its
centre. Where the official parser raises, this one falls back to regular expressions, and if that fails too
it returns an invalid action: ``parse_action`` never raises, because a bad generation must become a scored
row, not a crashed actor.

Normalised coordinates are not clamped: a point outside [0, 1] is kept as the model said it (scorers then
count it as a miss); non-finite values make the action invalid.
"""

from __future__ import annotations

import ast
import math
import re
import warnings
from dataclasses import dataclass, field
from typing import Any

from pipeline.agent.actions import ParsedAction
from pipeline.agent.coords import resized_size as _resized_size
from pipeline.agent.coords import to_normalized, to_pixels

POINT_ACTIONS = frozenset({"click", "left_double", "right_single", "long_press"})
NO_ARG_ACTIONS = frozenset({"wait", "press_home", "press_back", "call_user"})
KNOWN_ACTIONS = POINT_ACTIONS | NO_ARG_ACTIONS | {"drag", "hotkey", "type", "scroll", "finished", "open_app"}
# Benchmark-specific actions outside the computer / mobile spaces: GUI-KV's Mind2Web template offers
# ``select(point='<point>x y</point>', content='entry')`` (a point and the chosen entry in ``text``).
WEB_ACTIONS = frozenset({"select"})
PARSED_ACTIONS = KNOWN_ACTIONS | WEB_ACTIONS
SCROLL_DIRECTIONS = ("up", "down", "left", "right")
_CONTENT_ACTIONS = frozenset({"type", "finished"})
_COORD_ACTIONS = POINT_ACTIONS | {"drag", "scroll"}

_THINK_BLOCK = re.compile(r"<think>(.*?)</think>", re.S)
_SPECIAL_TOKEN = re.compile(r"<\|[A-Za-z_]+\|>")
# A marker's colon is ASCII ":" or the full-width colon U+FF1A that UI-TARS writes after a Chinese thought
# ("Thought: <Chinese text>\nAction<U+FF1A>click(...)"). The UI-TARS-desktop parser (bytedance/UI-TARS-desktop,
# packages/ui-tars/action-parser/src/actionParser.ts: ``findActionMarkers`` and its tests "should handle with
# Chinese colon") takes "Action" + U+FF1A as the action marker and ends the thought at ``Action[:U+FF1A]``;
# the Python package (bytedance/UI-TARS, codes/ui_tars/action_parser.py) splits on "Action: " only and
# asserts '"Action:" in text', so it raises there. Thought / Reflection / Action_Summary take either colon too.
_COLON = r"\s*[:\uff1a]"
_ACTION_MARKER = re.compile(r"(?<![A-Za-z0-9_])Action" + _COLON)
_THOUGHT = re.compile(
    r"(?<![A-Za-z0-9_])Thought" + _COLON + r"\s*(.*?)(?=(?<![A-Za-z0-9_])Action" + _COLON + r"|$)", re.S)
_SUMMARY = re.compile(r"Action_Summary" + _COLON + r"\s*(.*?)(?=(?<![A-Za-z0-9_])Action" + _COLON + r"|$)", re.S)
_REFLECTION = re.compile(
    r"Reflection" + _COLON + r"\s*(.*?)(?=Action_Summary" + _COLON + r"|(?<![A-Za-z0-9_])Action" + _COLON + r"|$)",
    re.S)
_CALL_START = re.compile(r"([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)\s*\(")
_KNOWN_CALL = re.compile(
    r"(?<![A-Za-z0-9_.])(" + "|".join(sorted(PARSED_ACTIONS, key=len, reverse=True)) + r")\s*\("
)
_NUMBER = re.compile(r"(?<![A-Za-z0-9_.])[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_KWARG = re.compile(
    r"""([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(?:'((?:\\.|[^'\\])*)'|"((?:\\.|[^"\\])*)"|(\([^()]*\)|\[[^\[\]]*\]|[^,()'"\s][^,()]*))""",
    re.S,
)
_QUOTED = re.compile(r"""'((?:\\.|[^'\\])*)'|"((?:\\.|[^"\\])*)\"""", re.S)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "'": "'", '"': '"', "\\": "\\"}
_RENAME = {"point": "start_box", "start_point": "start_box", "end_point": "end_box"}


@dataclass
class _Call:
    """One call as written: its name, literal positional / keyword values, and the raw argument text."""

    name: str
    positional: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    raw_args: str = ""
    truncated: bool = False  # no closing ``)`` (a generation cut off mid-call)


class _Invalid(Exception):
    """Internal: the output cannot be turned into an action; the message is the reason."""


def _unescape(text: str) -> str:
    """Python-style escapes the prompt asks for (\\' \\" \\n \\t \\\\); anything else is left as written."""
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(0)), text, flags=re.S)


def _split_thinking(text: str) -> tuple[str, str | None]:
    """Remove ``<think>`` reasoning; return (rest, reasoning). A lone ``</think>`` ends leading reasoning."""
    blocks = [b.strip() for b in _THINK_BLOCK.findall(text)]
    rest = _THINK_BLOCK.sub("", text)
    if "</think>" in rest:
        head, _, rest = rest.rpartition("</think>")
        blocks.append(head.replace("<think>", "").strip())
    rest = rest.replace("<think>", "")
    reasoning = "\n".join(b for b in blocks if b)
    return rest, reasoning or None


def _extract_thought(text: str, reasoning: str | None) -> str | None:
    for pattern in (_THOUGHT, _SUMMARY, _REFLECTION):
        m = pattern.search(text)
        if m and m.group(1).strip():
            return m.group(1).strip()
    return reasoning


def _match_paren(s: str, i: int) -> int:
    """Index of the ``)`` closing the call whose arguments start at ``s[i]``; -1 when unbalanced."""
    depth, quote = 1, None
    while i < len(s):
        c = s[i]
        if quote:
            if c == "\\":
                i += 2
                continue
            if c == quote:
                quote = None
        elif c in "'\"":
            quote = c
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


def _first_action_segment(rest: str) -> str:
    """The official multi-action separator is ``)\\n\\n``; everything after the first one is ignored."""
    cut = rest.find(")\n\n")
    return rest[: cut + 1] if cut >= 0 else rest


def _literal_call(source: str) -> tuple[list[Any], dict[str, Any]] | None:
    """Positional and keyword literals of ``f(...)`` via ``ast``; None when it is not a clean literal call."""
    for src in (source, source.replace("\n", "\\n")):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tree = ast.parse(src, mode="eval")
            call = tree.body
            if not isinstance(call, ast.Call):
                continue
            positional = [ast.literal_eval(arg) for arg in call.args]
            kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords if kw.arg is not None}
            return positional, kwargs
        except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError):
            continue
    return None


def _regex_args(argstr: str) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    for m in _KWARG.finditer(argstr):
        name, single, double, bare = m.groups()
        if name in kwargs:
            continue
        kwargs[name] = _unescape(single if single is not None else double) if bare is None else bare.strip()
    return kwargs


def _is_escaped(text: str, i: int) -> bool:
    """Whether ``text[i]`` is preceded by an odd number of backslashes."""
    before = text[:i]
    return (len(before) - len(before.rstrip("\\"))) % 2 == 1


def _content_call(name: str, args: str) -> _Call | None:
    """``type``/``finished`` with ``content=``: quotes inside the content are often left unescaped.

    The content runs from the opening quote to the closing quote of the call: the first unescaped quote
    followed by ``)`` and then only whitespace up to a line end, else the last such quote. It is re-escaped
    (the official repair) and read with ``ast``; if that still fails the escapes are decoded by hand.
    """
    m = re.search(r"content\s*=\s*(['\"])", args)
    if m is None:
        return None
    q = m.group(1)
    body = args[m.end():]
    closings = [c for c in re.finditer(re.escape(q) + r"\s*\)", body) if not _is_escaped(body, c.start())]
    end = None
    for c in closings:
        if re.match(r"[ \t]*(?:\n|$)", body[c.end():]):
            end = c.start()
            break
    if end is None and closings:
        end = closings[-1].start()
    if end is None:
        end = body.rfind(q) if q in body else len(body.rstrip(") \t\n"))
    raw = body[:end]
    repaired = re.sub(r"(?<!\\)" + re.escape(q), "\\\\" + q, raw)
    parsed = _literal_call(f"f(content={q}{repaired}{q})")
    content = parsed[1].get("content") if parsed else None
    if not isinstance(content, str):
        content = _unescape(raw)
    return _Call(name=name, kwargs={"content": content}, raw_args=args)


def _parse_call(name: str, after_paren: str) -> _Call:
    """Arguments of the call whose text (after its ``(``) is ``after_paren``."""
    segment = _first_action_segment(after_paren)
    if name in _CONTENT_ACTIONS:
        call = _content_call(name, segment)
        if call is not None:
            return call
    close = _match_paren(after_paren, 0)
    truncated = close < 0
    if truncated:  # unbalanced quotes or a truncated generation
        close = segment.rfind(")") if ")" in segment else len(segment)
        args = segment[:close]
    else:
        args = after_paren[:close]
    parsed = _literal_call(f"f({args})")
    if parsed is not None:
        return _Call(name=name, positional=parsed[0], kwargs=parsed[1], raw_args=args, truncated=truncated)
    return _Call(name=name, kwargs=_regex_args(args), raw_args=args, truncated=truncated)


def _call_end(text: str, start: int) -> int:
    """End (exclusive) of the call that begins at ``text[start]`` (quote-aware); ``len(text)`` when it never
    closes, so a marker inside an unterminated argument is still inside the call."""
    m = _CALL_START.match(text, start)
    if m is None:
        return start
    close = _match_paren(text, m.end())
    return len(text) if close < 0 else close + 1


def _action_marker(text: str) -> re.Match[str] | None:
    """The last ``Action:`` marker that is not inside the arguments of a call written after an earlier
    marker: ``type(content='Action: x')`` keeps the marker in front of ``type``."""
    chosen = None
    covered = -1
    for m in _ACTION_MARKER.finditer(text):
        if m.start() < covered:
            continue  # inside the quoted arguments of the previous marker's call
        chosen = m
        rest = len(text[m.end():]) - len(text[m.end():].lstrip(" \t\r\n`'\""))
        covered = _call_end(text, m.end() + rest)
    return chosen


def _malformed_call(rest: str) -> str | None:
    """A reason when ``rest`` opens with a known action name that is not directly followed by ``(``
    (``scroll up()``, ``click at (1, 2)``)."""
    m = re.match(r"([A-Za-z_][A-Za-z0-9_]*)\b\s*(\S.{0,40})?", rest, re.S)
    if m is None or m.group(1) not in PARSED_ACTIONS:
        return None
    after = (m.group(2) or "").splitlines()[0] if m.group(2) else ""
    return (f"malformed call: action name {m.group(1)!r} is not followed by '(' "
            f"(got {(m.group(1) + ' ' + after).strip()[:60]!r}); expected {m.group(1)}(...)")


def _locate_call(text: str) -> _Call:
    marker = _action_marker(text)
    if marker is not None:
        rest = text[marker.end():].lstrip(" \t\r\n`'\"")
        if not rest.strip():
            raise _Invalid("nothing after 'Action:'")
        m = _CALL_START.match(rest)
        if m is None:
            problem = _malformed_call(rest)
            if problem:
                raise _Invalid(problem)
            m = _KNOWN_CALL.search(rest) or _CALL_START.search(rest)
        if m is None:
            raise _Invalid(f"no action call after 'Action:': {rest[:80]!r}")
    else:
        # Without a marker only a bare call counts (the GROUNDING answer written without "Action:");
        # a known name inside prose ("I should wait() until ...") is not an action.
        rest = text.lstrip(" \t\r\n`'\"")
        m = _KNOWN_CALL.match(rest)
        if m is None:
            problem = _malformed_call(rest)
            raise _Invalid(problem or "no 'Action:' marker and the output does not start with a known action call")
    name = m.group(1).rsplit(".", 1)[-1]
    return _parse_call(name, rest[m.end():])


def _numbers(value: Any) -> list[float]:
    """Numbers in a coordinate value: ``'(x,y)'``, ``'<point>x y</point>'``, ``'[x1,y1,x2,y2]'``, tuples, ints."""
    if isinstance(value, bool):
        raise _Invalid(f"not a coordinate: {value!r}")
    if isinstance(value, (int, float)):
        return [float(value)]
    if isinstance(value, str):
        return [float(n) for n in _NUMBER.findall(value)]
    if isinstance(value, (list, tuple)):
        return [n for item in value for n in _numbers(item)]
    raise _Invalid(f"not a coordinate: {value!r}")


def _point(value: Any, resized: tuple[int, int], what: str) -> tuple[float, float]:
    """One click point from a coordinate value: 2 numbers are the point, 4 numbers a box clicked at its centre.

    A box reaches here in two spellings with the same 4 numbers once the special tokens are gone:
    ``(x1,y1,x2,y2)`` and the two-corner ``<|box_start|>(x1,y1)<|box_end|>(x2,y2)<|box_end|>``, i.e.
    ``(x1,y1)(x2,y2)``. Both are clicked at ``((x1+x2)/2, (y1+y2)/2)`` as upstream does: the Python package
    (bytedance/UI-TARS, codes/ui_tars/action_parser.py) keeps a 4-number box and
    ``parsing_response_to_pyautogui_code`` clicks ``(x1 + x2) / 2, (y1 + y2) / 2`` (a 2-number point is
    doubled into ``[x, y, x, y]``); the UI-TARS-desktop parser (packages/ui-tars/action-parser/src/
    actionParser.ts) strips the box tokens, joins ``)(`` with ``,`` and clicks the centre (its test "should
    parse box marker coordinates as absolute pixels": ``(1290,718)<|box_end|>(1350,747)`` gives
    ``start_coords [1320, 732.5]``). The Python package's ``replace("(", "")`` would glue ``y1`` to ``x2``
    in the two-corner form; that is not copied.
    """
    nums = _numbers(value)
    if len(nums) == 2:
        x, y = nums
    elif len(nums) == 4:
        x, y = (nums[0] + nums[2]) / 2, (nums[1] + nums[3]) / 2
    else:
        raise _Invalid(f"{what}: expected 2 or 4 numbers, got {len(nums)} in {str(value)[:80]!r}")
    nx, ny = to_normalized(x, y, resized[0], resized[1])
    if not (math.isfinite(nx) and math.isfinite(ny)):
        raise _Invalid(f"{what}: coordinate is not finite ({x}, {y})")
    return nx, ny


def _first_string(call: _Call, *names: str) -> str | None:
    for name in names:
        value = call.kwargs.get(name)
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return " ".join(value)
        if value is not None:
            return value if isinstance(value, str) else str(value)
    for value in call.positional:
        if isinstance(value, str):
            return value
    if not call.kwargs and not call.positional and call.raw_args.strip():
        m = _QUOTED.search(call.raw_args)  # regex fallback: a lone (maybe unterminated) argument
        if m:
            return _unescape(m.group(1) if m.group(1) is not None else m.group(2))
        return call.raw_args.strip()
    return None


def _coordinates(call: _Call) -> tuple[Any, Any]:
    """(start, end) coordinate values from keywords, ``x=``/``y=``, positional numbers or the raw arguments."""
    kw = {_RENAME.get(k, k): v for k, v in call.kwargs.items()}
    start, end = kw.get("start_box"), kw.get("end_box")
    if start is None and "x" in kw and "y" in kw:
        start = (kw["x"], kw["y"])
    if start is None:
        values = [v for v in call.positional
                  if not isinstance(v, str) or any(ch.isdigit() for ch in v)]
        if values:
            nums = _numbers(values)
            if call.name == "drag" and end is None and len(nums) == 4:
                start, end = nums[:2], nums[2:]
            else:
                start = nums
        elif not call.kwargs and not call.positional and call.raw_args.strip():
            start = call.raw_args
    return start, end


def _interpret(call: _Call, resized: tuple[int, int]) -> ParsedAction:
    name = call.name
    if name not in PARSED_ACTIONS:
        raise _Invalid(f"unknown action {name!r}")
    action = ParsedAction(action_type=name)
    if name in _COORD_ACTIONS:
        start, end = _coordinates(call)
        if name == "scroll":
            if start is not None:
                action.point = _point(start, resized, "scroll start_box")
            direction = call.kwargs.get("direction")
            if direction is None:
                words = [v for v in call.positional if isinstance(v, str) and v.strip().lower() in SCROLL_DIRECTIONS]
                direction = words[0] if words else ""
            direction = str(direction).strip().strip("'\"").lower()
            if direction not in SCROLL_DIRECTIONS:
                raise _Invalid(f"scroll direction must be one of {'/'.join(SCROLL_DIRECTIONS)}, got {direction!r}")
            action.direction = direction
        else:
            if start is None and end is not None and name != "drag":
                start, end = end, None  # click(end_box=...): the official parser keeps any box it is given
            if start is None:
                raise _Invalid(f"{name} without coordinates")
            action.point = _point(start, resized, "start_box")
            if name == "drag":
                if end is None:
                    raise _Invalid("drag without end_box")
                action.end_point = _point(end, resized, "end_box")
    elif name == "hotkey":
        key = _first_string(call, "key", "hotkey", "keys")
        if not key or not key.strip():
            raise _Invalid("hotkey without key")
        action.key = key.strip()
    elif name == "type":
        content = _first_string(call, "content", "text")  # type(text=..., start_box=...) is accepted upstream
        if content is None:
            raise _Invalid("type without content")
        action.text = content
        start, _ = _coordinates(_Call(name=name, kwargs=call.kwargs))
        if start is not None:  # the point to type at (AndroidControl's ``type``: tap x, y, then input)
            action.point = _point(start, resized, "start_box")
    elif name == "finished":
        content = _first_string(call, "content")
        action.text = content if content else None
    elif name == "select":
        _select(call, action, resized)
    elif name == "open_app":
        app = _first_string(call, "app_name")
        if not app or not app.strip():
            raise _Invalid("open_app without app_name")
        action.app_name = app.strip()
    return action


def _select(call: _Call, action: ParsedAction, resized: tuple[int, int]) -> None:
    """``select(point=..., content=...)``; positionally ``select(<point>, 'entry')`` (the last string is the entry)."""
    content = call.kwargs.get("content")
    coords = call
    if content is None and len(call.positional) >= 2 and isinstance(call.positional[-1], str):
        content = call.positional[-1]
        coords = _Call(name=call.name, positional=call.positional[:-1], kwargs=call.kwargs)
    if content is None:
        raise _Invalid("select without content")
    start, _ = _coordinates(coords)
    if start is None:
        raise _Invalid("select without coordinates")
    action.point = _point(start, resized, "start_box")
    action.text = content if isinstance(content, str) else str(content)


def parse_action(
    text: str,
    *,
    image_size: tuple[int, int],
    resized_size: tuple[int, int] | None = None,
) -> ParsedAction:
    """Parse one UI-TARS generation into its first action. Never raises.

    ``image_size`` is the original screenshot ``(W, H)``; ``resized_size`` the smart-resized ``(W', H')`` the
    model saw (computed from ``image_size`` with the UI-TARS pixel limits when None). Model numbers are
    divided by ``W'``/``H'``. Any failure gives ``ParsedAction.invalid(text, reason)`` (with the thought, if one
    was found).
    """
    raw = text if isinstance(text, str) else repr(text)
    thought: str | None = None
    try:
        if not isinstance(text, str):
            raise _Invalid(f"model output is {type(text).__name__}, not str")
        resized = tuple(resized_size) if resized_size is not None else _resized_size(*image_size)
        if len(resized) != 2 or not all(isinstance(v, (int, float)) and v > 0 for v in resized):
            raise _Invalid(f"bad resized size {resized_size!r}")
        body, reasoning = _split_thinking(text)
        body = _SPECIAL_TOKEN.sub("", body)
        thought = _extract_thought(body, reasoning)
        call = _locate_call(body)
        try:
            action = _interpret(call, resized)
        except _Invalid as exc:
            if call.truncated:  # say so first: the other reason is a consequence of the cut
                raise _Invalid(f"truncated call {call.name}({call.raw_args[:60]}: no closing quote or ')' "
                               f"({exc})") from None
            raise
    except _Invalid as exc:
        return _invalid(raw, str(exc), thought)
    except Exception as exc:  # the contract is "never raise": keep the reason instead
        return _invalid(raw, f"parser error: {type(exc).__name__}: {exc}"[:300], thought)
    action.thought = thought
    action.raw = raw
    return action


COORDINATE_ARGUMENTS = frozenset({"start_box", "end_box", "point", "start_point", "end_point"})


def first_argument(text: str) -> str | None:
    """Name of the first keyword argument written in the action call of ``text`` (None when there is none
    or the text holds no call). Never raises.

    The reference drivers read a grounding answer's point as the *first* action input, whatever its name,
    so ``scroll(direction='down', point=...)`` gives them no point; this lets a scorer apply that rule."""
    try:
        body, _ = _split_thinking(text)
        call = _locate_call(_SPECIAL_TOKEN.sub("", body))
    except Exception:  # noqa: BLE001 - any failure means "no call"
        return None
    m = re.match(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*=", call.raw_args)
    return m.group(1) if m else None


def _invalid(raw: str, reason: str, thought: str | None) -> ParsedAction:
    action = ParsedAction.invalid(raw, reason)
    action.thought = thought
    return action


# --- rendering (history from ground truth) ---------------------------------------------------------------


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")


def _slot(name: str, point: tuple[float, float], resized: tuple[int, int], family: str) -> str:
    x, y = (round(v) for v in to_pixels(point[0], point[1], resized[0], resized[1]))
    if family == "point":
        point_name = {"start_box": "point", "end_box": "end_point"}[name]
        return f"{point_name}='<point>{x} {y}</point>'"
    return f"{name}='<|box_start|>({x},{y})<|box_end|>'"


def format_action(
    action: ParsedAction,
    resized_size: tuple[int, int],
    *,
    family: str = "box",
    with_thought: bool = True,
) -> str:
    """Render an action as UI-TARS text (``Thought: ...\\nAction: ...``), e.g. ground-truth history turns.

    Coordinates become integer pixels of the resized image ``(W', H')``, so ``parse_action`` gives the action
    back to within half a resized pixel. ``family="point"`` writes ``point='<point>x y</point>'`` slots
    (``start_point``/``end_point`` for drag). Raises ValueError for invalid or unknown actions.
    """
    if family not in ("box", "point"):
        raise ValueError(f"unknown family {family!r}; allowed: box, point")
    if not action.ok or action.action_type not in PARSED_ACTIONS:
        raise ValueError(f"cannot format action {action.action_type!r} (error: {action.error})")
    name = action.action_type
    if name in POINT_ACTIONS or name == "drag":
        if action.point is None or (name == "drag" and action.end_point is None):
            raise ValueError(f"{name} needs its coordinates")
        args = [_slot("start_box", action.point, resized_size, family)]
        if name == "drag":
            if family == "point":
                args[0] = args[0].replace("point=", "start_point=", 1)
            args.append(_slot("end_box", action.end_point, resized_size, family))
    elif name == "scroll":
        args = [] if action.point is None else [_slot("start_box", action.point, resized_size, family)]
        args.append(f"direction='{action.direction or 'down'}'")
    elif name == "hotkey":
        args = [f"key='{_escape(action.key or '')}'"]
    elif name == "type":
        args = [f"content='{_escape(action.text or '')}'"]
    elif name == "finished":
        args = [] if action.text is None else [f"content='{_escape(action.text)}'"]
    elif name == "select":
        if action.point is None:
            raise ValueError("select needs its coordinates")
        args = [_slot("start_box", action.point, resized_size, family), f"content='{_escape(action.text or '')}'"]
    elif name == "open_app":
        args = [f"app_name='{_escape(action.app_name or '')}'"]
    else:
        args = []
    call = f"{name}({', '.join(args)})"
    if with_thought and action.thought:
        return f"Thought: {action.thought}\nAction: {call}"
    return f"Action: {call}"
