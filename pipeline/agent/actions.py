"""The parsed form of one model action, shared by the parser and every benchmark scorer."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class ParsedAction:
    """One action of the UI-TARS computer / mobile action spaces.

    Coordinates are normalised to [0, 1] of the screenshot (x right, y down), mapped back from the
    smart-resized pixels the model saw. ``error`` is set (and ``action_type`` is ``"invalid"``) when the
    model output could not be parsed; a scorer gives such an action 0 with the error as the reason.
    """

    action_type: str
    point: tuple[float, float] | None = None
    end_point: tuple[float, float] | None = None
    text: str | None = None  # type(content) / finished(content)
    key: str | None = None  # hotkey(key)
    direction: str | None = None  # scroll(direction)
    app_name: str | None = None  # open_app(app_name)
    thought: str | None = None
    raw: str = ""
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def invalid(cls, raw: str, reason: str) -> ParsedAction:
        return cls(action_type="invalid", raw=raw, error=reason)
