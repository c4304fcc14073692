"""Ground-truth history frames for a sparse AndroidControl sample (the driver's ``android_control_test.json``).

The STaR-KV ``androidcontrol_eval.py`` (``--use_history_frames``) evaluates a sample of steps
(``500_steps.json``) and takes each sampled step's history from the full test episodes in
``android_control_test.json``: a list of ``{"episode": {"episode_id", "screenshot_paths": [...],
"actions": [...], "step_instructions": [...]}}``. For a step with index ``s`` it shows the episode's steps
``max(0, s - (image_slots - 1)) .. s - 1`` (4 with its default ``--image_slots 5``), each as its screenshot
followed by the assistant turn ``"Step {k + 1}:\\n{step instruction}\\n"`` (the sampled record's
``previous_actions[k]`` when the instruction is empty); a frame whose screenshot file is missing is
skipped, as is an index past the episode's actions (``screenshot_paths`` shorter than ``actions`` reuse
the last path). Those steps are context only: no model call and no row.

:func:`attach_context` writes them into ``Step.meta["context"]`` as ``{"step_index", "image_path",
"text"}`` (``text`` carries the driver's trailing newline), which ``pipeline.step.prompt`` turns into
the step's history. An index entry with a malformed field makes the sampled steps of its episode error
steps naming the file, the entry and the field; a sampled episode missing from the index too. Entries
without an ``episode_id`` are ignored (the driver skips them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.benchmarks.androidcontrol.steps import read_steps_file
from pipeline.benchmarks.common.base import BenchmarkDataError, Episode
from pipeline.benchmarks.common.storage import url_of

DEFAULT_CONTEXT_FRAMES = 4  # the driver's --image_slots 5, minus the current screenshot


@dataclass
class IndexEpisode:
    """One episode of the index: per step its screenshot (relative path) and instruction; or a problem."""

    screenshots: list[str]
    instructions: list[str]
    problem: str | None = None


def _str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def read_episode_index(fs: Any, file: str) -> dict[str, IndexEpisode]:
    """``episode_id -> IndexEpisode`` of the index file; BenchmarkDataError naming it when unreadable."""
    name = url_of(fs, file)
    try:
        rows = read_steps_file(fs, file, holds="{'episode': {...}} entries")
    except ValueError as exc:
        raise BenchmarkDataError(str(exc)) from None
    out: dict[str, IndexEpisode] = {}
    for i, row in enumerate(rows):
        ep = row.get("episode") if isinstance(row, dict) else None
        eid = ep.get("episode_id") if isinstance(ep, dict) else None
        if eid is None or isinstance(eid, bool):
            continue  # the driver skips an entry it cannot match to an episode
        paths, actions = ep.get("screenshot_paths") or [], ep.get("actions") or []
        instructions = ep.get("step_instructions")
        instructions = [""] * len(actions) if instructions is None else instructions
        problem = None
        if not _str_list(paths):
            problem = "field 'episode.screenshot_paths' is not a list of strings"
        elif not isinstance(actions, list):
            problem = "field 'episode.actions' is not a list"
        elif not isinstance(instructions, list) or not all(isinstance(s, (str, type(None))) for s in instructions):
            problem = "field 'episode.step_instructions' is not a list of strings"
        if problem:
            out[str(eid)] = IndexEpisode([], [], problem=f"{name} [{i}]: {problem}")
            continue
        shots = [paths[k] if k < len(paths) else (paths[-1] if paths else "") for k in range(len(actions))]
        texts = [(instructions[k] or "") if k < len(instructions) else "" for k in range(len(actions))]
        out[str(eid)] = IndexEpisode(shots, texts)
    return out


def attach_context(episodes: list[Episode], index: dict[str, IndexEpisode], images: tuple[Any, str],
                   frames: int, index_name: str) -> None:
    """Give every sampled step its earlier steps of ``index`` as ``meta["context"]`` (the last ``frames``)."""
    ifs, folder = images
    for episode in episodes:
        entry = index.get(episode.episode_id)
        for step in episode.steps:
            if step.error:
                continue
            if entry is None:
                step.error = (f"{index_name}: episode {episode.episode_id} (field 'episode.episode_id') is not "
                              f"in the index, so step {step.step_index} has no history frames")
                continue
            if entry.problem:
                step.error = entry.problem
                continue
            previous = step.meta.get("previous_actions") or []
            context = []
            for k in range(max(0, step.step_index - frames), step.step_index):
                if k >= len(entry.screenshots) or not entry.screenshots[k]:
                    continue
                shot = entry.screenshots[k]
                full = shot if shot.startswith("/") else f"{folder}/{shot}"
                if not ifs.isfile(full):
                    continue  # the driver skips a frame whose screenshot is missing
                body = entry.instructions[k] or (previous[k] if k < len(previous) else "")
                context.append({"step_index": k, "image_path": url_of(ifs, full), "text": f"{body}\n"})
            step.meta["context"] = context


__all__ = ["DEFAULT_CONTEXT_FRAMES", "IndexEpisode", "attach_context", "read_episode_index"]
