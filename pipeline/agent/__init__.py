"""Agent I/O for UI-TARS-1.5: prompt templates, multi-step chat history, action parsing, coordinates."""

from pipeline.agent.actions import ParsedAction
from pipeline.agent.coords import (
    UITARS_MAX_PIXELS,
    UITARS_MIN_PIXELS,
    resized_size,
    smart_resize,
    to_normalized,
    to_pixels,
)
from pipeline.agent.history import HistoryConfig, build_messages, format_history_text, select_past_texts
from pipeline.agent.parser import KNOWN_ACTIONS, format_action, parse_action
from pipeline.agent.prompts import ACTION_SPACES, FAMILIES, KINDS, render_prompt

__all__ = [
    "ACTION_SPACES",
    "FAMILIES",
    "KINDS",
    "KNOWN_ACTIONS",
    "UITARS_MAX_PIXELS",
    "UITARS_MIN_PIXELS",
    "HistoryConfig",
    "ParsedAction",
    "build_messages",
    "format_action",
    "format_history_text",
    "parse_action",
    "render_prompt",
    "resized_size",
    "select_past_texts",
    "smart_resize",
    "to_normalized",
    "to_pixels",
]
