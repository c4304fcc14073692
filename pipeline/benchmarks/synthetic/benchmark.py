"""Synthetic multi-step GUI benchmark: PIL-drawn windows, one named element to click per step.

It exists so the whole pipeline (prompts with history screenshots, compression, scoring, aggregation)
runs on CI and on a laptop with no downloads. The on-disk format is documented in
``docs/benchmarks/synthetic.md``; generation is deterministic for a seed (byte-identical JSON and PNGs
with the same Pillow build).
"""

from __future__ import annotations

import json
import math
import os
import posixpath
import random
import shutil
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

from PIL import Image, ImageDraw, ImageFont

from pipeline.agent.actions import ParsedAction
from pipeline.benchmarks.common.base import (
    Benchmark,
    BenchmarkDataError,
    Episode,
    Step,
    StepScore,
    register_benchmark,
    row_meta,
)
from pipeline.benchmarks.common.scoring import normalize_box, point_in_box
from pipeline.benchmarks.common.storage import file_under, open_fs, read_json, url_of
from pipeline.benchmarks.synthetic.launcher import LAUNCHER_VERSION, launcher_episode, launcher_goal
from pipeline.cache import cache_root

FORMAT_NAME = "starkv-synthetic"
FORMAT_VERSION = 1
ANNOTATION_FILE = "synthetic.json"
COMPLETE_MARKER = ".complete"
DEFAULT_RESOLUTIONS: tuple[tuple[int, int], ...] = ((1280, 720), (1920, 1080), (1024, 768), (800, 600))
ELEMENT_TYPES = ("button", "icon", "text_field")
STYLES = ("windows", "launcher")
CLICK_TYPES = frozenset({"click", "left_double", "right_single", "long_press"})

# ---------------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------------

_BUTTON_LABELS = ("Save", "Cancel", "Submit", "OK", "Open", "Delete", "Next", "Back", "Apply", "Export",
                  "Print", "Share", "Help", "Sign in", "Upload", "Download", "Refresh", "Close", "Send",
                  "Continue", "Reset", "Edit")
_FIELD_LABELS = ("Email", "Name", "Password", "Phone", "Address", "City", "Username", "Company",
                 "Country", "Zip code", "Website", "Comment")
_ICON_KINDS = ("search", "settings", "home", "add", "menu", "star", "trash", "play")
_GOALS = ("Fill in the form and submit", "Update the account settings and save them",
          "Find the document and share it", "Create a new entry and apply the changes",
          "Search for the report and export it", "Sign in and open the dashboard",
          "Edit the profile and save it", "Delete the old draft and refresh the list")
_APP_TITLES = ("Settings", "Account", "Documents", "Mail", "Editor", "Dashboard", "Preferences", "Files")
# (window background, title bar, title text, button fill, button text, body text)
_THEMES = (
    ((246, 246, 248), (222, 224, 230), (40, 40, 48), (52, 120, 246), (255, 255, 255), (30, 30, 36)),
    ((255, 255, 255), (236, 239, 244), (30, 36, 48), (0, 150, 136), (255, 255, 255), (33, 33, 33)),
    ((40, 42, 54), (28, 29, 38), (230, 230, 240), (98, 114, 164), (248, 248, 242), (230, 230, 235)),
    ((250, 248, 240), (230, 224, 210), (60, 50, 40), (200, 90, 60), (255, 255, 255), (50, 44, 38)),
)


@dataclass
class _Element:
    """One clickable element as drawn: ``bbox`` is the click target, ``area`` what it occupies."""

    element_type: str
    name: str  # button label, icon kind or field label
    bbox: tuple[int, int, int, int]
    area: tuple[int, int, int, int]

    @property
    def instruction(self) -> str:
        if self.element_type == "button":
            return f"Click the '{self.name}' button"
        if self.element_type == "icon":
            return f"Click the {self.name} icon"
        return f"Click the text field labelled '{self.name}'"

    @property
    def history_text(self) -> str:
        return "Clicked" + self.instruction[len("Click"):]


@lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's bundled default font at ``size`` (no font files needed)."""
    return ImageFont.load_default(size=size)


def _text_size(draw: ImageDraw.ImageDraw, text: str, font: Any) -> tuple[int, int]:
    x1, y1, x2, y2 = draw.textbbox((0, 0), text, font=font)
    return x2 - x1, y2 - y1


def _draw_text(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, font: Any,
               fill: tuple[int, ...]) -> None:
    """Draw ``text`` with its ink's top-left corner at ``xy`` (works for bitmap and FreeType fonts)."""
    x1, y1, _, _ = draw.textbbox((0, 0), text, font=font)
    draw.text((xy[0] - x1, xy[1] - y1), text, fill=fill, font=font)


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int], margin: int) -> bool:
    return not (a[2] + margin <= b[0] or b[2] + margin <= a[0] or a[3] + margin <= b[1] or b[3] + margin <= a[1])


def _place(rng: random.Random, size: tuple[int, int], region: tuple[int, int, int, int],
           taken: list[tuple[int, int, int, int]], margin: int) -> tuple[int, int] | None:
    """A random top-left corner for a ``size`` box inside ``region`` clear of ``taken`` (or None)."""
    w, h = size
    x_max, y_max = region[2] - w, region[3] - h
    if x_max < region[0] or y_max < region[1]:
        return None
    for _ in range(80):
        x, y = rng.randint(region[0], x_max), rng.randint(region[1], y_max)
        box = (x, y, x + w, y + h)
        if not any(_overlaps(box, t, margin) for t in taken):
            return x, y
    return None


def _draw_icon(draw: ImageDraw.ImageDraw, kind: str, box: tuple[int, int, int, int],
               color: tuple[int, int, int], bg: tuple[int, int, int]) -> None:
    """A simple glyph for ``kind`` inside ``box`` (a flat tile behind it makes the box visible)."""
    x1, y1, x2, y2 = box
    size = x2 - x1
    draw.rounded_rectangle(box, radius=max(2, size // 6), fill=bg)
    p = max(3, round(size * 0.2))
    ix1, iy1, ix2, iy2 = x1 + p, y1 + p, x2 - p, y2 - p
    cx, cy = (ix1 + ix2) / 2, (iy1 + iy2) / 2
    r = (ix2 - ix1) / 2
    lw = max(2, size // 10)
    if kind == "search":
        cr = r * 0.62
        ccx, ccy = ix1 + cr, iy1 + cr
        draw.ellipse((ccx - cr, ccy - cr, ccx + cr, ccy + cr), outline=color, width=lw)
        off = cr * math.sqrt(0.5)
        draw.line((ccx + off, ccy + off, ix2, iy2), fill=color, width=lw + 1)
    elif kind == "settings":
        for k in range(8):
            a = k * math.pi / 4
            draw.line((cx + r * 0.5 * math.cos(a), cy + r * 0.5 * math.sin(a),
                       cx + r * math.cos(a), cy + r * math.sin(a)), fill=color, width=lw + 1)
        draw.ellipse((cx - r * 0.62, cy - r * 0.62, cx + r * 0.62, cy + r * 0.62), fill=color)
        draw.ellipse((cx - r * 0.25, cy - r * 0.25, cx + r * 0.25, cy + r * 0.25), fill=bg)
    elif kind == "home":
        draw.polygon([(cx, iy1), (ix2, cy), (ix1, cy)], fill=color)
        draw.rectangle((ix1 + r * 0.3, cy, ix2 - r * 0.3, iy2), fill=color)
    elif kind == "add":
        draw.line((cx, iy1, cx, iy2), fill=color, width=lw + 1)
        draw.line((ix1, cy, ix2, cy), fill=color, width=lw + 1)
    elif kind == "menu":
        for t in (0.15, 0.5, 0.85):
            y = iy1 + (iy2 - iy1) * t
            draw.line((ix1, y, ix2, y), fill=color, width=lw)
    elif kind == "star":
        pts = []
        for k in range(10):
            a = -math.pi / 2 + k * math.pi / 5
            rr = r if k % 2 == 0 else r * 0.42
            pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
        draw.polygon(pts, fill=color)
    elif kind == "trash":
        draw.line((ix1, iy1 + r * 0.25, ix2, iy1 + r * 0.25), fill=color, width=lw)
        draw.rectangle((cx - r * 0.3, iy1, cx + r * 0.3, iy1 + r * 0.25), outline=color, width=max(1, lw // 2))
        draw.rectangle((ix1 + r * 0.2, iy1 + r * 0.45, ix2 - r * 0.2, iy2), fill=color)
    elif kind == "play":
        draw.polygon([(ix1 + r * 0.2, iy1), (ix2, cy), (ix1 + r * 0.2, iy2)], fill=color)
    else:  # pragma: no cover - kinds come from _ICON_KINDS
        raise ValueError(f"unknown icon kind {kind!r}")


def _render_screen(rng: random.Random, size: tuple[int, int], theme: tuple, title: str) -> tuple[
        Image.Image, list[_Element]]:
    """Draw one window at ``size`` with randomly placed, non-overlapping elements."""
    w, h = size
    bg, bar, bar_text, btn_fill, btn_text, body_text = theme
    s = h / 720.0  # scale relative to a 720p screen
    # Palette mode: flat GUI colours fit easily, and PNG encoding skips the per-row filter search
    # (5-10x faster than RGB at 1080p). Text is drawn without anti-aliasing as a consequence.
    img = Image.new("P", size, bg)
    draw = ImageDraw.Draw(img)

    # Window chrome: title bar with title and (unlabelled) window dots, a status bar at the bottom.
    bar_h = max(20, round(32 * s))
    draw.rectangle((0, 0, w, bar_h), fill=bar)
    title_font = _font(max(10, round(14 * s)))
    tw, th = _text_size(draw, title, title_font)
    _draw_text(draw, ((w - tw) // 2, (bar_h - th) // 2), title, title_font, bar_text)
    dot = max(6, round(12 * s))
    for k, c in enumerate(((237, 106, 94), (245, 191, 79), (98, 197, 84))):
        x = round(12 * s) + k * (dot + round(8 * s))
        draw.ellipse((x, (bar_h - dot) // 2, x + dot, (bar_h + dot) // 2), fill=c)
    status_h = max(16, round(24 * s))
    draw.rectangle((0, h - status_h, w, h), fill=bar)
    _draw_text(draw, (round(10 * s), h - status_h + round(4 * s)), "Ready", _font(max(10, round(11 * s))),
               bar_text)

    pad = round(16 * s)
    region = (pad, bar_h + pad, w - pad, h - status_h - pad)
    margin = max(6, round(12 * s))
    font = _font(max(10, round(13 * s * rng.uniform(0.9, 1.2))))
    field_bg = (255, 255, 255) if sum(bg) > 384 else (60, 62, 76)
    tile_bg = tuple(max(0, c - 18) if sum(bg) > 384 else min(255, c + 22) for c in bg)
    taken: list[tuple[int, int, int, int]] = []
    elements: list[_Element] = []

    for label in rng.sample(_FIELD_LABELS, rng.randint(1, 3)):
        lw_, lh_ = _text_size(draw, label, font)
        fw, fh = round(rng.uniform(150, 320) * s), round(rng.uniform(24, 36) * s)
        gap = max(3, round(4 * s))
        occ = (max(fw, lw_), lh_ + gap + fh)
        pos = _place(rng, occ, region, taken, margin)
        if pos is None:
            continue
        x, y = pos
        box = (x, y + lh_ + gap, x + fw, y + lh_ + gap + fh)
        _draw_text(draw, (x, y), label, font, body_text)
        draw.rectangle(box, fill=field_bg, outline=(150, 150, 160), width=max(1, round(s)))
        hint = f"Enter {label.lower()}"
        hw, hh = _text_size(draw, hint, font)
        if hw < fw - 12:
            _draw_text(draw, (box[0] + 6, box[1] + (fh - hh) // 2), hint, font, (160, 160, 168))
        area = (x, y, x + occ[0], y + occ[1])
        taken.append(area)
        elements.append(_Element("text_field", label, box, area))

    for label in rng.sample(_BUTTON_LABELS, rng.randint(3, 6)):
        tw, th = _text_size(draw, label, font)
        bw = max(tw + 2 * round(rng.uniform(12, 28) * s), round(64 * s))
        bh = max(th + 8, round(rng.uniform(26, 42) * s))
        pos = _place(rng, (bw, bh), region, taken, margin)
        if pos is None:
            continue
        box = (pos[0], pos[1], pos[0] + bw, pos[1] + bh)
        fill = btn_fill if rng.random() < 0.6 else tile_bg
        text = btn_text if fill == btn_fill else body_text
        draw.rounded_rectangle(box, radius=max(2, round(6 * s)), fill=fill)
        _draw_text(draw, (box[0] + (bw - tw) // 2, box[1] + (bh - th) // 2), label, font, text)
        taken.append(box)
        elements.append(_Element("button", label, box, box))

    for kind in rng.sample(_ICON_KINDS, rng.randint(2, 5)):
        side = round(rng.uniform(22, 44) * s)
        pos = _place(rng, (side, side), region, taken, margin)
        if pos is None:
            continue
        box = (pos[0], pos[1], pos[0] + side, pos[1] + side)
        _draw_icon(draw, kind, box, body_text, tile_bg)
        taken.append(box)
        elements.append(_Element("icon", kind, box, box))

    return img, elements


def _episode_record(root: Path, seed: int, index: int, min_steps: int, max_steps: int,
                    resolution: tuple[int, int]) -> dict[str, Any]:
    # A string seed is hashed with SHA-512 by ``random``: stable across processes and Python builds,
    # and episode i does not depend on how many episodes are generated.
    rng = random.Random(f"{FORMAT_NAME}:{seed}:{index}")
    episode_id = f"ep{index:04d}"
    theme = _THEMES[rng.randrange(len(_THEMES))]
    title = rng.choice(_APP_TITLES)
    steps = []
    for k in range(rng.randint(min_steps, max_steps)):
        img, elements = _render_screen(rng, resolution, theme, title)
        present = sorted({e.element_type for e in elements}, key=ELEMENT_TYPES.index)
        kind = rng.choice(present)
        target = rng.choice([e for e in elements if e.element_type == kind])
        rel = f"images/{episode_id}/{k}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        img.save(root / rel, format="PNG", compress_level=1)
        steps.append({"step_index": k, "image": rel, "instruction": target.instruction,
                      "bbox": list(target.bbox), "element_type": target.element_type,
                      "image_size": [resolution[0], resolution[1]], "history_text": target.history_text})
    return {"episode_id": episode_id, "goal": rng.choice(_GOALS), "steps": steps}


def _launcher_record(root: Path, seed: int, index: int, min_steps: int, max_steps: int) -> dict[str, Any]:
    """One launcher-style episode (``pipeline.benchmarks.synthetic.launcher``), its PNGs written under ``root``."""
    rng = random.Random(f"{FORMAT_NAME}:launcher:{seed}:{index}")
    episode_id = f"ep{index:04d}"
    goal = launcher_goal(rng)
    steps = []
    for k, step in enumerate(launcher_episode(rng, rng.randint(min_steps, max_steps))):
        rel = f"images/{episode_id}/{k}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        step.image.save(root / rel, format="PNG", compress_level=1)
        steps.append({"step_index": k, "image": rel, "instruction": step.instruction,
                      "bbox": list(step.target.bbox), "element_type": step.kind,
                      "image_size": list(step.image.size), "history_text": step.history_text})
    return {"episode_id": episode_id, "goal": goal, "steps": steps}


def generate_synthetic(out_dir: str | os.PathLike, *, num_episodes: int, min_steps: int = 3,
                       max_steps: int = 6, seed: int = 0,
                       resolutions: tuple[tuple[int, int], ...] = DEFAULT_RESOLUTIONS,
                       style: str = "windows") -> Path:
    """Write ``num_episodes`` episodes to ``out_dir`` (``synthetic.json`` + ``images/``); return the root.

    ``style``: ``windows`` (application windows with buttons, icons and fields at several resolutions;
    resolutions are dealt from a seeded shuffle of ``resolutions`` in turn, so any two or more episodes
    cover more than one size) or ``launcher`` (224×224 icon grids with recall steps, see
    ``pipeline.benchmarks.synthetic.launcher``; what the micro agent is trained on).
    """
    if style not in STYLES:
        raise ValueError(f"unknown synthetic style {style!r}; allowed: {', '.join(STYLES)}")
    if num_episodes < 0:
        raise ValueError(f"num_episodes must be >= 0, got {num_episodes}")
    if not 1 <= min_steps <= max_steps:
        raise ValueError(f"need 1 <= min_steps <= max_steps, got {min_steps}, {max_steps}")
    if not resolutions:
        raise ValueError("resolutions is empty")
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    order = [tuple(r) for r in resolutions]
    random.Random(f"{FORMAT_NAME}:{seed}:resolutions").shuffle(order)
    if style == "launcher":
        episodes = [_launcher_record(root, seed, i, min_steps, max_steps) for i in range(num_episodes)]
    else:
        episodes = [_episode_record(root, seed, i, min_steps, max_steps, order[i % len(order)])
                    for i in range(num_episodes)]
    data = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "seed": seed, "style": style,
            "episodes": episodes}
    (root / ANNOTATION_FILE).write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    return root


def _default_cache_dir() -> Path:
    return cache_root()


def ensure_synthetic_dataset(root: str | os.PathLike | None = None, num_episodes: int = 8,
                             seed: int = 0, style: str = "windows", min_steps: int = 3,
                             max_steps: int = 6) -> Path:
    """The dataset directory for ``(style, num_episodes, seed, steps)``, generated only if not already complete.

    ``root`` is the dataset directory itself; by default ``$STARKV_CACHE/synthetic-<n>-<seed>`` for the
    default windows style and 3-6 steps (or ``~/.cache/starkv-eval/...``), with the style and step range
    in the name otherwise. Generation goes to a temporary sibling that is renamed into place
    with the ``.complete`` marker already written, so concurrent callers (e.g. Ray actors) never see a
    half-written dataset.
    """
    if root is not None:
        target = Path(root)
    else:
        name = f"synthetic-{num_episodes}-{seed}"
        if (style, min_steps, max_steps) != ("windows", 3, 6):
            tag = f"{style}-v{LAUNCHER_VERSION}" if style == "launcher" else style
            name = f"synthetic-{tag}-{num_episodes}-{seed}-steps{min_steps}-{max_steps}"
        target = _default_cache_dir() / name
    if (target / COMPLETE_MARKER).is_file():
        return target
    if target.exists():
        foreign = sorted({p.name for p in target.iterdir()} - {ANNOTATION_FILE, "images", COMPLETE_MARKER})
        if foreign:
            raise FileExistsError(f"{target} exists and holds other files ({', '.join(foreign[:3])}); "
                                  "refusing to replace it with a synthetic dataset")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        generate_synthetic(tmp, num_episodes=num_episodes, seed=seed, style=style, min_steps=min_steps,
                           max_steps=max_steps)
        marker = {"num_episodes": num_episodes, "seed": seed, "version": FORMAT_VERSION, "style": style,
                  "min_steps": min_steps, "max_steps": max_steps}
        (tmp / COMPLETE_MARKER).write_text(json.dumps(marker) + "\n", encoding="utf-8")
        if target.exists() and not (target / COMPLETE_MARKER).is_file():
            shutil.rmtree(target)  # an earlier, interrupted generation (checked above: only our files)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / COMPLETE_MARKER).is_file():  # not a concurrent winner: a real failure
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


# ---------------------------------------------------------------------------------------------------
# Loading, scoring, aggregation
# ---------------------------------------------------------------------------------------------------


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_image_size(value: Any) -> str | None:
    if value is None:
        return "field 'image_size' missing"
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) and not isinstance(v, bool)
                                                                and v > 0 for v in value)):
        return f"field 'image_size' malformed: {value!r} (want [width, height], positive integers)"
    return None


def _check_bbox(value: Any, image_size: Any) -> str | None:
    if value is None:
        return "field 'bbox' missing"
    if not (isinstance(value, list) and len(value) == 4 and all(_is_number(v) for v in value)):
        return f"field 'bbox' malformed: {value!r} (want [x1, y1, x2, y2] in pixels)"
    x1, y1, x2, y2 = value
    if not (x1 < x2 and y1 < y2):
        return f"field 'bbox' malformed: {value!r} (need x1 < x2 and y1 < y2)"
    if _check_image_size(image_size) is None:
        w, h = image_size
        if x1 < 0 or y1 < 0 or x2 > w or y2 > h:
            return f"field 'bbox' {value!r} is out of the image bounds {w}x{h}"
    return None


def _load_step(data: tuple[Any, str], episode_id: str, position: int, raw: Any) -> Step:
    """One ``Step``; an unusable annotation becomes ``Step.error`` naming the episode, step and field.
    ``data`` is ``(filesystem, dataset folder)``; image paths are plain local paths or fsspec URLs."""
    if not isinstance(raw, dict):
        return Step(step_index=position, image_path="",
                    error=f"episode {episode_id} step {position}: not a JSON object")
    index = raw.get("step_index", position)
    index = index if isinstance(index, int) and not isinstance(index, bool) else position
    where = f"episode {episode_id} step {index}"
    problems: list[str] = []

    image = raw.get("image")
    image_path = ""
    if not isinstance(image, str) or not image:
        problems.append("field 'image' missing")
    else:
        image_path, found = file_under(data, image)
        if not found:
            problems.append(f"image file '{image_path}' (field 'image') not found")
    instruction = raw.get("instruction")
    if not isinstance(instruction, str) or not instruction.strip():
        problems.append("field 'instruction' missing")
        instruction = ""
    image_size = raw.get("image_size")
    for problem in (_check_image_size(image_size), _check_bbox(raw.get("bbox"), image_size)):
        if problem:
            problems.append(problem)
    element_type = raw.get("element_type")
    element_type = element_type if isinstance(element_type, str) and element_type else "unknown"
    history = raw.get("history_text")

    return Step(step_index=index, image_path=image_path, instruction=instruction,
                target={"bbox": raw.get("bbox"), "element_type": element_type},
                history_text=history if isinstance(history, str) else "",
                meta={"element_type": element_type, "image_size": image_size},
                error=f"{where}: {'; '.join(problems)}" if problems else None)


@register_benchmark("synthetic")
class SyntheticBenchmark(Benchmark):
    """The generated multi-step benchmark: click the named element; accuracy overall and per type.

    ``path`` is the dataset directory (or its ``synthetic.json``), local or an fsspec URL (a copy on a
    shared filesystem or object store). Multi-step with teacher-forced history, hence the ``computer``
    prompt.
    """

    interval_metrics = ("accuracy", "accuracy_*")  # per element type / step kind

    prompt_kind = "computer"
    generator_style: ClassVar[str] = "windows"  # what a job without a path generates

    def _annotation_file(self) -> tuple[Any, str]:
        """``(filesystem, path of synthetic.json)``."""
        fs, path = open_fs(str(self.path))
        file = path if path.endswith(".json") else f"{path}/{ANNOTATION_FILE}"
        if not fs.isfile(file):
            raise BenchmarkDataError(f"synthetic benchmark: expected the annotation file {url_of(fs, file)} "
                                     f"(generate one with generate_synthetic)")
        return fs, file

    def load(self) -> Iterable[Episode]:
        fs, path = self._annotation_file()
        file = url_of(fs, path)
        data = read_json(fs, path, "synthetic benchmark")
        if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
            raise BenchmarkDataError(f"synthetic benchmark: {file} is not a {FORMAT_NAME!r} file "
                                     f"(field 'format' is {data.get('format') if isinstance(data, dict) else None!r})")
        if data.get("version") != FORMAT_VERSION:
            raise BenchmarkDataError(f"synthetic benchmark: {file} has field 'version' {data.get('version')!r}; "
                                     f"supported: {FORMAT_VERSION}")
        episodes = data.get("episodes")
        if not isinstance(episodes, list):
            raise BenchmarkDataError(f"synthetic benchmark: {file} has no list in field 'episodes'")
        return list(self._episodes((fs, posixpath.dirname(path)), episodes))

    def _episodes(self, root: tuple[Any, str], episodes: list[Any]) -> Iterator[Episode]:
        for i, raw in enumerate(episodes):
            raw = raw if isinstance(raw, dict) else {}
            episode_id = raw.get("episode_id")
            episode_id = str(episode_id) if isinstance(episode_id, (str, int)) else f"episode[{i}]"
            goal = raw.get("goal") if isinstance(raw.get("goal"), str) else ""
            steps_raw = raw.get("steps")
            if isinstance(steps_raw, list) and steps_raw:
                steps = [_load_step(root, episode_id, k, s) for k, s in enumerate(steps_raw)]
            else:  # keep the episode visible as one error row rather than dropping it silently
                steps = [Step(step_index=0, image_path="",
                              error=f"episode {episode_id}: field 'steps' missing or empty")]
            yield Episode(episode_id=episode_id, benchmark=self.name, goal=goal, steps=steps)

    def score(self, step: Step, action: ParsedAction, image_size: tuple[int, int]) -> StepScore:
        if action.error is not None or action.action_type == "invalid":
            return StepScore(False, 0.0, reason=action.error or "invalid action", fields={"action_type_match": 0})
        if step.error:
            return StepScore(False, 0.0, reason=step.error, fields={"action_type_match": 0})
        if action.action_type not in CLICK_TYPES:
            return StepScore(False, 0.0, reason=f"action type {action.action_type} is not a click",
                             fields={"action_type_match": 0})
        if action.point is None:
            return StepScore(False, 0.0, reason=f"{action.action_type} without a point",
                             fields={"action_type_match": 1})
        box = normalize_box(step.target["bbox"], image_size)
        hit = point_in_box(action.point, box)
        reason = "" if hit else f"point {tuple(round(v, 4) for v in action.point)} outside box " \
                                f"{tuple(round(v, 4) for v in box)}"
        return StepScore(hit, 1.0 if hit else 0.0, reason=reason, fields={"action_type_match": 1})

    def aggregate(self, rows: list[dict[str, Any]]) -> dict[str, float]:
        """``accuracy`` (error rows count as wrong), ``accuracy_<element_type>``, ``num_steps``,
        ``num_errors``. Reads ``correct``, ``error`` and the element type from ``meta`` / ``meta_json``."""
        out: dict[str, float] = {"accuracy": 0.0, "num_steps": float(len(rows)),
                                 "num_errors": float(sum(1 for r in rows if r.get("error")))}
        if not rows:
            return out
        out["accuracy"] = sum(1.0 for r in rows if r.get("correct") and not r.get("error")) / len(rows)
        groups: dict[str, list[float]] = {}
        for r in rows:
            kind = row_meta(r).get("element_type")
            if isinstance(kind, str) and kind:
                groups.setdefault(kind, []).append(1.0 if r.get("correct") and not r.get("error") else 0.0)
        for kind in sorted(groups):
            out[f"accuracy_{kind}"] = sum(groups[kind]) / len(groups[kind])
        return out


@register_benchmark("launcher")
class LauncherBenchmark(SyntheticBenchmark):
    """Launcher episodes (``pipeline.benchmarks.synthetic.launcher``): click the named icon, or where it was.

    Same on-disk format, loader and scorer as ``synthetic``; its only action is a click, so it uses the
    UI-TARS grounding prompt (whose action space is click), with the history screenshots and texts of
    the multi-step protocol. The micro agent is trained on exactly this protocol.
    """

    prompt_kind = "grounding"
    generator_style: ClassVar[str] = "launcher"
