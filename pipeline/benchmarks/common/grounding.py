"""What grounding benchmarks share: JSON-list annotations, image sizes, box checks, per-cell tallies.

ScreenSpot-v2, ScreenSpot-Pro and Multimodal-Mind2Web read annotations and screenshots the same way and
score a click against a box; the readers and the per-(split, data type) tallies of their aggregates
live here once.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from pipeline.agent.actions import ParsedAction
from pipeline.agent.parser import COORDINATE_ARGUMENTS, first_argument
from pipeline.benchmarks.common.base import (
    BenchmarkDataError,
    DriverBenchmark,
    Step,
    StepScore,
    row_fields,
    row_meta,
)
from pipeline.benchmarks.common.scoring import normalize_box, point_in_box
from pipeline.benchmarks.common.storage import read_json, url_of
from pipeline.cache import cache_root as project_cache_root

# A box may overhang its image by this fraction of the side (annotators clip at the screen edge with a
# pixel or two of slack); beyond it the box cannot describe this image (wrong image, wrong units).
BOX_SLACK_FRACTION = 0.01


class GroundingBenchmark(DriverBenchmark):
    """The ScreenSpot family (v2, Pro) as the GUI-KV / STaR-KV driver runs it: GROUNDING_DOUBAO, one
    screenshot, no system turn (the chat template then inserts its default "You are a helpful
    assistant.", which is what our default renders too). Protocol ``reference``: samples whose screenshot
    is missing are skipped and the point is the first action input (``score_point_in_box``,
    ``drop_skipped``)."""

    prompt_kind = "grounding"
    default_image_slots = 1
    system_prompt = None


def cache_root(options: dict[str, Any]) -> Path:
    """Writable cache for derived files: option ``cache_dir``, else the project cache (``$STARKV_CACHE``)."""
    return project_cache_root(options.get("cache_dir"))


def read_json_list(fs: Any, file: str, bench: str) -> list[Any]:
    """A JSON file holding a list; anything else is a data error for the whole benchmark."""
    data = read_json(fs, file, bench)
    if not isinstance(data, list):
        raise BenchmarkDataError(f"{bench}: {url_of(fs, file)} should hold a JSON list of samples")
    return data


class ImageSizes:
    """``(width, height)`` from image headers (PIL reads only the header), cached per file."""

    def __init__(self) -> None:
        self._sizes: dict[str, tuple[int, int] | str] = {}

    def get(self, fs: Any, path: str) -> tuple[int, int] | str:
        """The size, or a string saying why it could not be read."""
        key = url_of(fs, path)
        if key not in self._sizes:
            try:
                with fs.open(path, "rb") as fh, Image.open(fh) as img:
                    self._sizes[key] = (int(img.size[0]), int(img.size[1]))
            except FileNotFoundError:
                self._sizes[key] = "not found"
            except Exception as exc:  # noqa: BLE001  (any decoder failure is a bad sample, not a crash)
                self._sizes[key] = f"unreadable ({type(exc).__name__}: {exc})"
        return self._sizes[key]


def resolve_image(images: tuple[Any, str], filename: Any, sizes: ImageSizes,
                  problems: list[str]) -> tuple[str, tuple[int, int] | None]:
    """Image path (URL form) and size for field ``img_filename`` under the ``(fs, folder)`` ``images``;
    appends a problem naming the file and the field when it is unusable."""
    if not isinstance(filename, str) or not filename:
        problems.append("field 'img_filename' missing")
        return "", None
    fs, folder = images
    full = f"{folder}/{filename}"
    size = sizes.get(fs, full)
    if isinstance(size, str):
        problems.append(f"image file '{url_of(fs, full)}' (field 'img_filename') {size}")
        return url_of(fs, full), None
    return url_of(fs, full), size


MISSING_IMAGE = "(field 'img_filename') not found"


def image_missing(problems: list[str]) -> bool:
    """Whether the loader's problems say the screenshot file does not exist."""
    return any(MISSING_IMAGE in p for p in problems)


def drop_skipped(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Protocol ``reference``: rows whose screenshot is missing are skipped, not counted wrong."""
    return [r for r in rows if not row_meta(r).get("image_missing")]


def is_number_list(value: Any, n: int) -> bool:
    return (isinstance(value, (list, tuple)) and len(value) == n
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value))


def box_range_problem(box: Sequence[float], image_size: tuple[int, int], field: str) -> str | None:
    """Why an ``xyxy`` pixel box cannot belong to an image of ``image_size``, or None when it can."""
    w, h = image_size
    x1, y1, x2, y2 = (float(v) for v in box)
    if x2 < x1 or y2 < y1:
        return f"field '{field}' {list(box)} has x2 < x1 or y2 < y1"
    sx, sy = BOX_SLACK_FRACTION * w, BOX_SLACK_FRACTION * h
    if x1 < -sx or y1 < -sy or x2 > w + sx or y2 > h + sy:
        return f"field '{field}' {list(box)} lies outside the {w}x{h} image"
    if max(x2, y2) <= 1.0 and min(w, h) > 2:
        return f"field '{field}' {list(box)} looks normalised, expected pixels"
    return None


def valid_size(value: Any) -> tuple[int, int] | None:
    if is_number_list(value, 2) and value[0] > 0 and value[1] > 0:
        return (int(value[0]), int(value[1]))
    return None


def score_point_in_box(step: Step, action: ParsedAction, image_size: tuple[int, int] | None,
                       first_argument_rule: bool = False) -> StepScore:
    """The ScreenSpot rule on ``step.target['bbox']`` (xyxy px). Any action with a point is judged by
    its point, as the reference drivers take the first action's ``start_box`` whatever its type; no
    point (unparseable output, ``finished()``) is ``wrong_format``. ``first_argument_rule`` (protocol
    reference): the drivers read the point from the *first* action input, so a call whose first keyword is
    not a coordinate (``scroll(direction='up', point=...)``) has no point."""
    if step.error:
        return StepScore(False, 0.0, reason=step.error, fields={"hit": 0, "wrong_format": 0})
    if action.error is not None or action.action_type == "invalid":
        return StepScore(False, 0.0, reason=action.error or "invalid action", fields={"hit": 0, "wrong_format": 1})
    if action.point is None:
        return StepScore(False, 0.0, reason=f"{action.action_type} without a point",
                         fields={"hit": 0, "wrong_format": 1})
    if first_argument_rule and action.raw:  # (an action built in code, without model text, is exempt)
        first = first_argument(action.raw)
        if first not in COORDINATE_ARGUMENTS:
            what = f"the first argument ({first!r})" if first else "no keyword argument (positional values are dropped)"
            return StepScore(False, 0.0, reason=f"the reference driver reads {what} as the point",
                             fields={"hit": 0, "wrong_format": 1})
    if image_size is None:
        return StepScore(False, 0.0, reason="image size unknown", fields={"hit": 0, "wrong_format": 0})
    box = normalize_box(step.target["bbox"], image_size)
    hit = point_in_box(action.point, box)
    reason = "" if hit else (f"point ({action.point[0]:.4f}, {action.point[1]:.4f}) outside box "
                             f"({box[0]:.4f}, {box[1]:.4f}, {box[2]:.4f}, {box[3]:.4f})")
    return StepScore(hit, 1.0 if hit else 0.0, reason=reason, fields={"hit": int(hit), "wrong_format": 0})


def row_correct(row: dict[str, Any]) -> bool:
    """Correct and not an error row (errors count as wrong)."""
    return bool(row.get("correct")) and not row.get("error")


def base_counts(rows: list[dict[str, Any]]) -> dict[str, float]:
    return {"num_steps": float(len(rows)), "num_errors": float(sum(1 for r in rows if r.get("error"))),
            "num_wrong_format": float(sum(1 for r in rows if row_fields(r).get("wrong_format")))}


class CellTally:
    """Correct / total per cell key (e.g. (split, data_type))."""

    def __init__(self) -> None:
        self._hits: dict[tuple[str, ...], int] = {}
        self._totals: dict[tuple[str, ...], int] = {}

    def add(self, key: tuple[str, ...], correct: bool) -> None:
        self._totals[key] = self._totals.get(key, 0) + 1
        self._hits[key] = self._hits.get(key, 0) + int(correct)

    def keys(self) -> list[tuple[str, ...]]:
        return list(self._totals)

    def n(self, key: tuple[str, ...]) -> int:
        return self._totals.get(key, 0)

    def acc(self, key: tuple[str, ...]) -> float:
        return self._hits.get(key, 0) / self._totals[key] if self._totals.get(key) else 0.0

    def acc_where(self, pred: Any) -> float:
        keys = [k for k in self._totals if pred(k)]
        total = sum(self._totals[k] for k in keys)
        return sum(self._hits[k] for k in keys) / total if total else 0.0
