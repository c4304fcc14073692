"""AndroidControl (Google Research): loader for the official GZIP TFRecord shards and two step scorers.

Data: a folder with the shards (``android_control-000NN-of-00020``, or any ``*.tfrecord*`` / ``*.gz``
file) and ``splits.json`` (``{"train": [ids], "validation": [...], "test": [...]}``). Each record is a
``tf.train.Example`` with ``episode_id``, ``goal``, ``screenshots`` (PNG bytes), ``screenshot_widths``,
``screenshot_heights``, ``actions`` (JSON strings, one fewer than screenshots; action *i* is taken on
screenshot *i*), ``step_instructions`` and ``accessibility_trees``. The folder (or a single shard) may
be a local path or any fsspec URL; shards are streamed and GZIP-decompressed on the fly.

One ``Step`` per action. Screenshots are extracted to ``<cache>/androidcontrol/<episode_id>/<i>.png``
(cache from option ``cache_dir``, else ``$STARKV_CACHE``, else ``~/.cache/starkv-eval``) because the
runner wants image files. Accessibility trees are serialized ``AndroidAccessibilityForest`` protos that
need ``android_env``'s proto definitions; they are **not parsed** (``Step.meta["a11y"]`` is ``None``),
so the GUI-KV scorer runs its no-tree fallbacks.

A second input format is the STaR-KV / GUI-KV drivers' per-step JSON (``500_steps.json`` next to
``android_control_test.json`` and the images; ``androidcontrol_steps``): ``path`` names that file or its
folder. Besides the official action types, the dataset README's ``type`` (tap ``x, y``, input ``text``,
press enter) is read; the drivers' ``type_text`` becomes ``type`` (with a point) or ``input_text``.

Scoring (option ``metric``; option ``protocol: reference`` replaces both by the driver's exact rules,
``androidcontrol_reference``):

* ``"common"`` (default) — the OS-Atlas / UI-TARS-paper protocol: the predicted type must equal the GT
  type; click/long_press correct iff the L2 distance between the points in normalised [0, 1] space is
  ≤ 0.14; input_text/type/open_app correct iff the strings are equal or their token-set F1 > 0.5, computed on
  the **whole** lowercased argument (the OS-Atlas script looks only at the first whitespace token — a
  quirk we do not replicate); scroll needs the same direction; other types need only the same type.
* ``"guikv"`` — the STaR-KV / GUI-KV reference driver (``androidcontrol_eval.py``) without a11y trees:
  click ≡ long_press, correct iff ``|dx| ≤ thr and |dy| ≤ thr`` pixels with
  ``thr = max(72, 0.10·min(W, H))``; input_text / type by a normalised string match (type: a predicted
  point, when given, must also pass the click rule); open_app by name match or
  a click outside the status bar / right edge when the app is named in the goal or step instruction;
  navigate_back by press_back or a click in the back-button regions; scroll by axis (up≡down,
  left≡right); status by equal goal status. Rules that need the tree (GT element box, element text)
  are not implemented.

Scroll direction: AndroidControl's ``direction`` and UI-TARS's ``scroll(direction=...)`` are both read as
"the side whose content is revealed" (AndroidWorld convention, which AndroidControl shares), so they are
compared as-is; option ``invert_scroll=True`` flips the predicted direction if real samples show the
opposite.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import posixpath
import re
import unicodedata
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pipeline.agent.actions import ParsedAction
from pipeline.benchmarks.androidcontrol.context import (
    DEFAULT_CONTEXT_FRAMES,
    attach_context,
    read_episode_index,
)
from pipeline.benchmarks.androidcontrol.reference import driver_size, score_reference
from pipeline.benchmarks.androidcontrol.steps import (
    DEFAULT_STEPS_FILE,
    EPISODE_INDEX_FILE,
    build_step_episodes,
    read_steps_file,
)
from pipeline.benchmarks.androidcontrol.tfrecord import (
    ExampleDecodeError,
    TFRecordError,
    iter_records,
    parse_example,
)
from pipeline.benchmarks.common.base import (
    DRIVER_SYSTEM_PROMPT,
    BenchmarkDataError,
    DriverBenchmark,
    Episode,
    Step,
    StepScore,
    register_benchmark,
    row_value,
)
from pipeline.benchmarks.common.scoring import token_f1 as common_token_f1
from pipeline.benchmarks.common.storage import image_size_at, open_data, open_fs, url_of
from pipeline.cache import cache_root

log = logging.getLogger(__name__)

SHARD_RE = re.compile(r"^android_control-\d+-of-\d+")
SPLITS_FILE = "splits.json"
CLICK_RADIUS = 0.14  # normalised L2 radius of the common protocol (140 on the 0-1000 grid)
F1_THRESHOLD = 0.5

# UI-TARS mobile action -> AndroidControl action type
UITARS_TO_AC = {
    "click": "click", "long_press": "long_press", "type": "input_text", "scroll": "scroll",
    "open_app": "open_app", "press_back": "navigate_back", "press_home": "navigate_home",
    "wait": "wait", "finished": "status",
}
# ``type`` (tap x, y, input the text, press enter) is documented in the dataset README beside
# ``input_text`` (text only); the reference drivers' JSON calls both ``type_text``.
AC_TYPES = ("click", "long_press", "scroll", "open_app", "input_text", "type", "navigate_home", "navigate_back",
            "wait", "status")
TEXT_TYPES = frozenset({"input_text", "type"})
POINT_TYPES = frozenset({"click", "long_press"})
SCROLL_DIRECTIONS = ("up", "down", "left", "right")
_FLIP = {"up": "down", "down": "up", "left": "right", "right": "left"}
_AXIS = {"up": "v", "down": "v", "left": "h", "right": "h"}


def default_cache_dir() -> Path:
    """``$STARKV_CACHE`` or ``~/.cache/starkv-eval``."""
    return cache_root()


# ---------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------

def find_shards(fs: Any, folder: str) -> list[str]:
    """TFRecord shards in ``folder`` of the fsspec filesystem ``fs`` (not recursive), sorted by name."""
    out = []
    for info in fs.ls(folder, detail=True):
        name = posixpath.basename(str(info["name"]).rstrip("/"))
        if info.get("type") != "file" or name == SPLITS_FILE:
            continue
        if SHARD_RE.match(name) or ".tfrecord" in name or name.endswith(".gz"):
            out.append(str(info["name"]))
    return sorted(out, key=posixpath.basename)


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value if isinstance(value, str) else None


def _image_size_from_bytes(data: bytes) -> tuple[int, int] | None:
    """Width/height from the image header (no full decode); ``None`` for unreadable bytes."""
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            return int(im.size[0]), int(im.size[1])
    except Exception:  # noqa: BLE001 - any decoder failure just means "unknown"
        return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(float(value)) else None


def validate_action(raw: Any) -> tuple[dict[str, Any] | None, str | None]:
    """Check one AndroidControl action dict; returns (action, None) or (None, problem)."""
    if not isinstance(raw, dict):
        return None, "is not a JSON object"
    kind = raw.get("action_type")
    if kind not in AC_TYPES:
        return None, f"field 'action_type' is {kind!r}; expected one of {', '.join(AC_TYPES)}"
    action = dict(raw)
    if kind in POINT_TYPES or kind == "type":
        x, y = _number(raw.get("x")), _number(raw.get("y"))
        if x is None or y is None:
            return None, f"{kind} needs numeric fields 'x' and 'y' (got x={raw.get('x')!r}, y={raw.get('y')!r})"
    if kind in TEXT_TYPES:
        if not isinstance(raw.get("text"), str):
            return None, f"{kind} needs a string field 'text'"
    elif kind == "open_app":
        if not isinstance(raw.get("app_name"), str) or not raw["app_name"].strip():
            return None, "open_app needs a non-empty string field 'app_name'"
    elif kind == "scroll":
        if raw.get("direction") not in SCROLL_DIRECTIONS:
            return None, f"scroll field 'direction' is {raw.get('direction')!r}; expected up/down/left/right"
    return action, None


def _load_splits(fs: Any, folder: str, split: str | None) -> set[str] | None:
    if split in (None, "all"):
        return None
    path = f"{folder}/{SPLITS_FILE}"
    file = url_of(fs, path)
    if not fs.isfile(path):
        raise BenchmarkDataError(f"androidcontrol: split {split!r} requested but {file} does not exist "
                                 f"(expected the official splits.json next to the shards; use split='all')")
    try:
        with fs.open(path, "rb") as fh:
            data = json.loads(fh.read().decode("utf-8"))
    except (OSError, ValueError) as exc:
        raise BenchmarkDataError(f"androidcontrol: {file} is not readable JSON: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get(split), list):
        keys = sorted(data) if isinstance(data, dict) else []
        raise BenchmarkDataError(f"androidcontrol: {file} has no list for split {split!r} (splits: {keys})")
    return {str(v) for v in data[split]}


def _write_cached(path: Path, data: bytes) -> None:
    """Write ``data`` unless an identical file is already there (atomic via rename)."""
    if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _as_list(features: dict[str, Any], name: str) -> list[Any]:
    value = features.get(name)
    return value if isinstance(value, list) else []


def build_episode(features: dict[str, Any], *, where: str, level: str, cache_root: Path,
                  benchmark: str = "androidcontrol") -> Episode:
    """One Episode from decoded Example features; screenshots are written under ``cache_root``.

    Per-step problems (missing screenshot, bad action JSON, unknown type, missing fields) become
    ``Step.error`` strings naming ``where`` and the field; the other steps are unaffected.
    """
    ep_ids = _as_list(features, "episode_id")
    episode_id = str(ep_ids[0])
    goal = _text(next(iter(_as_list(features, "goal")), b"")) or ""
    shots = _as_list(features, "screenshots")
    widths = _as_list(features, "screenshot_widths")
    heights = _as_list(features, "screenshot_heights")
    actions = _as_list(features, "actions")
    instructions = _as_list(features, "step_instructions")
    where = f"{where} (episode {episode_id})"
    ep_dir = cache_root / "androidcontrol" / episode_id
    steps: list[Step] = []
    if not actions:
        steps.append(Step(step_index=0, image_path="", error=f"{where}: feature 'actions' is missing or empty"))
    for i, raw_action in enumerate(actions):
        problems: list[str] = []
        image_path = ""
        size: list[int] | None = None
        if i < len(shots) and isinstance(shots[i], bytes):
            file = ep_dir / f"{i}.png"
            _write_cached(file, shots[i])
            image_path = str(file.resolve())
            if i < len(widths) and i < len(heights) and widths[i] > 0 and heights[i] > 0:
                size = [int(widths[i]), int(heights[i])]
            else:
                found = _image_size_from_bytes(shots[i])
                size = list(found) if found else None
        else:
            problems.append(f"screenshots[{i}] is missing ({len(shots)} screenshots for {len(actions)} actions)")
        instruction = _text(instructions[i]) if i < len(instructions) else None
        if instruction is None:
            problems.append(f"step_instructions[{i}] is missing")
            instruction = ""
        action: dict[str, Any] | None = None
        text = _text(raw_action)
        try:
            parsed = json.loads(text) if text is not None else None
        except ValueError as exc:
            problems.append(f"actions[{i}] is not valid JSON ({exc})")
        else:
            action, problem = validate_action(parsed)
            if problem:
                problems.append(f"actions[{i}] {problem}")
        gt_point = None
        if action is not None and "x" in action and "y" in action and size:
            gt_point = [float(action["x"]) / size[0], float(action["y"]) / size[1]]
        meta = {
            "level": level, "goal": goal, "step_instruction": instruction, "gt_action": action,
            "gt_action_type": action["action_type"] if action else None, "gt_point": gt_point,
            "image_size": size, "a11y": None, "episode_id": episode_id, "num_steps": len(actions),
        }
        steps.append(Step(
            step_index=i, image_path=image_path,
            instruction=goal if level == "high" else instruction,
            target={"action": action, "point": gt_point},
            history_text=instruction, meta=meta,
            error=f"{where}: {'; '.join(problems)}" if problems else None,
        ))
    return Episode(episode_id=episode_id, benchmark=benchmark, goal=goal, steps=steps,
                   meta={"source": where, "num_screenshots": len(shots), "level": level})


# ---------------------------------------------------------------------------------------------------
# Scoring helpers
# ---------------------------------------------------------------------------------------------------

def pixel_threshold(width: float, height: float) -> float:
    """The pixel protocol's L-inf distance (px) within which a point matches the ground truth: 72 px or a
    tenth of the shorter screen side, whichever is larger."""
    return max(72.0, 0.10 * min(width, height))


def token_f1(pred: str, gt: str) -> float:
    """Token-set F1 of two strings (lowercased, whitespace tokens; both empty: 0)."""
    return common_token_f1(pred, gt, lowercase=True, both_empty=0.0)


def text_match_common(pred: str, gt: str) -> bool:
    """OS-Atlas rule (whole string): equal after strip/lowercase, or token-set F1 > 0.5."""
    p, g = pred.strip().lower(), gt.strip().lower()
    return p == g or token_f1(p, g) > F1_THRESHOLD


def _norm_typed(s: str) -> str:
    s = unicodedata.normalize("NFKC", s).rstrip("\n")
    s = re.sub(r"[\"'`\u2018\u2019\u201c\u201d]", "", s)
    return " ".join(s.lower().split())


def typing_match(pred: str, gt: str) -> bool:
    """The GUI-KV driver's lenient typed-text match (subset): NFKC, quotes removed, case/whitespace
    normalised, trailing newline ignored; e-mails whitespace-insensitive; 4-8 digit numbers with at most
    one differing digit; substring containment either way when the GT has ≥ 5 characters."""
    p, g = _norm_typed(pred), _norm_typed(gt)
    if p == g:
        return True
    if "@" in g and p.replace(" ", "") == g.replace(" ", ""):
        return True
    if re.fullmatch(r"\d{4,8}", g) and re.fullmatch(r"\d{4,8}", p) and len(p) == len(g):
        return sum(a != b for a, b in zip(p, g)) <= 1
    return len(g) >= 5 and bool(p) and (g in p or p in g)


def goal_status(text: str | None) -> str:
    """``finished(content)`` / ``status.goal_status`` -> ``successful`` | ``infeasible``."""
    t = (text or "").lower()
    return "infeasible" if any(w in t for w in ("infeasible", "impossible", "fail", "cannot")) else "successful"


def _app_match(pred: str, gt: str) -> bool:
    p, g = _norm_typed(pred), _norm_typed(gt)
    compact = re.sub(r"[^a-z0-9]", "", p), re.sub(r"[^a-z0-9]", "", g)
    return bool(p) and (p == g or g in p or p in g or (bool(compact[1]) and compact[0] == compact[1]))


# ---------------------------------------------------------------------------------------------------
# Benchmark
# ---------------------------------------------------------------------------------------------------

@register_benchmark("androidcontrol")
class AndroidControlBenchmark(DriverBenchmark):
    """AndroidControl from its official TFRecord shards, or from the reference drivers' per-step JSON
    (``path`` is that JSON file, or a folder holding ``dataset_file``; see ``androidcontrol_steps``).

    Options: ``level`` ("high" | "low", default "high"), ``split`` (a key of splits.json, default "test";
    "all" / None keeps every episode; TFRecords only), ``metric`` ("common" | "guikv"), ``protocol``
    ("official" | "reference": the STaR-KV / GUI-KV driver's rules, ``androidcontrol_reference``; implies
    metric guikv), ``dataset_file`` (default ``500_steps.json``), ``images_dir`` (screenshots of the JSON
    layout; default the JSON file's folder), ``episodes_file`` (the driver's ``android_control_test.json``:
    each sampled step's earlier steps become context-only history frames, ``androidcontrol_context``;
    default with protocol reference: that file beside the steps file, if there; ``false`` = none),
    ``context_frames`` (frames per step, default 4 = the driver's ``--image_slots 5`` minus one),
    ``cache_dir``, ``verify_crc`` (default True), ``invert_scroll`` (default False).
    """

    interval_metrics = ("accuracy", "type_accuracy", "grounding_accuracy", "accuracy_*")

    prompt_kind = "androidcontrol"
    # GUI-KV driver with --use_history_frames (the "five screenshots" setting): up to 4 past GT screenshots,
    # each followed by "Step k:\n<GT step instruction>"; image_slots 1 gives its default mode instead
    # (current screenshot only, the GT step instructions in "## Previous Actions").
    default_history_source = "ground_truth"
    default_image_slots = 5
    system_prompt = DRIVER_SYSTEM_PROMPT

    @classmethod
    def prompt_goal(cls, episode: Episode, step: Step) -> str | None:
        """Low level: "## User Goal" carries the episode goal, "## User Instruction" the step's instruction."""
        return episode.goal or None if step.meta.get("level") == "low" else None

    def __init__(self, path: str, **options: Any) -> None:
        super().__init__(path, **options)
        self.level = options.get("level", "high")
        if self.level not in ("high", "low"):
            raise ValueError(f"androidcontrol: option level must be 'high' or 'low', not {self.level!r}")
        self.split = options.get("split", "test")
        default_metric = "guikv" if self.protocol == "reference" else "common"
        self.metric = options.get("metric", default_metric)
        if self.metric not in ("common", "guikv"):
            raise ValueError(f"androidcontrol: option metric must be 'common' or 'guikv', not {self.metric!r}")
        if self.protocol == "reference" and self.metric != "guikv":
            raise ValueError("androidcontrol: option metric must be 'guikv' (or unset) with protocol 'reference', "
                             f"not {self.metric!r}")
        self.dataset_file = str(options.get("dataset_file") or DEFAULT_STEPS_FILE)
        cache = options.get("cache_dir")
        self.cache_dir = Path(cache).expanduser() if cache else default_cache_dir()
        self.verify_crc = bool(options.get("verify_crc", True))
        self.invert_scroll = bool(options.get("invert_scroll", False))

    # -- loading -------------------------------------------------------------------------------------

    def _shards(self) -> tuple[Any, str, list[str]]:
        """``(filesystem, folder, shard paths)``; ``path`` may also name a single shard."""
        fs, path = open_data(str(self.path), "androidcontrol",
                             "a folder with the android_control-*-of-* GZIP TFRecord shards and splits.json")
        if fs.isfile(path):
            return fs, posixpath.dirname(path), [path]
        shards = find_shards(fs, path)
        if not shards:
            raise BenchmarkDataError(f"androidcontrol: no TFRecord shards in {url_of(fs, path)} (expected files "
                                     f"named android_control-*-of-*, *.tfrecord* or *.gz, plus splits.json)")
        return fs, path, shards

    def _steps_file(self) -> tuple[Any, str] | None:
        """``(filesystem, file)`` when ``path`` is the drivers' per-step JSON (or a folder holding it)."""
        fs, path = open_fs(str(self.path))
        if fs.isfile(path) and path.endswith(".json"):
            return fs, path
        if fs.isdir(path) and fs.isfile(f"{path}/{self.dataset_file}"):
            return fs, f"{path}/{self.dataset_file}"
        return None

    def _load_steps_json(self, fs: Any, file: str) -> list[Episode]:
        explicit = self.options.get("images_dir")
        images = open_fs(str(explicit)) if explicit else (fs, posixpath.dirname(file))
        try:
            records = read_steps_file(fs, file)
        except ValueError as exc:
            raise BenchmarkDataError(str(exc)) from None
        episodes = build_step_episodes(records, file=url_of(fs, file), images=images, level=self.level,
                                       validate_action=validate_action, image_size=image_size_at,
                                       benchmark=self.name)
        if self.protocol == "reference":  # the driver's prompt history is the record's own list
            for step in (s for e in episodes for s in e.steps):
                step.meta["prompt_previous_actions"] = list(step.meta.get("previous_actions") or [])
        index = self._episodes_file(fs, file, images)
        if index is not None:
            frames = self.options.get("context_frames", DEFAULT_CONTEXT_FRAMES)
            if isinstance(frames, bool) or not isinstance(frames, int) or frames < 0:
                raise ValueError(f"androidcontrol: option context_frames must be a non-negative integer, "
                                 f"not {frames!r}")
            attach_context(episodes, read_episode_index(*index), images, frames, url_of(*index))
        return episodes

    def _episodes_file(self, fs: Any, file: str, images: tuple[Any, str]) -> tuple[Any, str] | None:
        """The driver's ``android_control_test.json`` (history frames), or None: option ``episodes_file``
        (a path; ``false`` = none); by default, with protocol reference only, that name beside the steps
        file or in the images folder when there is one."""
        named = self.options.get("episodes_file")
        if named is False:
            return None
        if named:
            efs, path = open_fs(str(named))
            if not efs.isfile(path):
                raise BenchmarkDataError(f"androidcontrol: option episodes_file: {url_of(efs, path)} does not exist")
            return efs, path
        if self.protocol != "reference":
            return None
        for where, folder in ((fs, posixpath.dirname(file)), images):
            if where.isfile(f"{folder}/{EPISODE_INDEX_FILE}"):
                return where, f"{folder}/{EPISODE_INDEX_FILE}"
        return None

    def load(self) -> Iterable[Episode]:
        steps_file = self._steps_file()
        if steps_file is not None:
            return self._load_steps_json(*steps_file)
        fs, folder, shards = self._shards()
        wanted = _load_splits(fs, folder, self.split)
        return list(self._iter_episodes([url_of(fs, s) for s in shards], wanted))

    def _iter_episodes(self, shards: list[str], wanted: set[str] | None) -> Iterator[Episode]:
        """Episodes from ``shards`` (local paths or fsspec URLs, streamed by ``iter_records``)."""
        found: set[str] = set()
        for shard in shards:
            try:
                for index, record in enumerate(iter_records(shard, verify=self.verify_crc)):
                    where = f"{shard}: record {index}"
                    try:
                        head = parse_example(record, keys={"episode_id"})
                    except ExampleDecodeError as exc:
                        log.warning("androidcontrol: %s is not a tf.train.Example (%s); skipped", where, exc)
                        continue
                    ids = head.get("episode_id")
                    if not ids or not isinstance(ids[0], int):
                        log.warning("androidcontrol: %s has no int64 feature 'episode_id'; skipped", where)
                        continue
                    if wanted is not None and str(ids[0]) not in wanted:
                        continue
                    try:
                        features = parse_example(record)
                    except ExampleDecodeError as exc:  # pragma: no cover - head parsed, so unlikely
                        log.warning("androidcontrol: %s: %s; skipped", where, exc)
                        continue
                    found.add(str(ids[0]))
                    yield build_episode(features, where=where, level=self.level, cache_root=self.cache_dir,
                                        benchmark=self.name)
                    if wanted is not None and found >= wanted:
                        return  # every requested episode seen: skip the remaining shards
            except TFRecordError as exc:
                raise BenchmarkDataError(f"androidcontrol: unreadable shard: {exc}") from exc
        if wanted is not None and found < wanted:
            log.warning("androidcontrol: %d of %d episodes of split %r not found in the shards",
                        len(wanted - found), len(wanted), self.split)

    # -- scoring -------------------------------------------------------------------------------------

    def _pred_type(self, action: ParsedAction) -> str:
        return UITARS_TO_AC.get(action.action_type, action.action_type)

    def score(self, step: Step, action: ParsedAction, image_size: tuple[int, int]) -> StepScore:
        gt = step.meta.get("gt_action") if isinstance(step.meta, dict) else None
        gt_type = gt.get("action_type") if isinstance(gt, dict) else None
        fields: dict[str, Any] = {"gt_type": gt_type, "pred_type": None, "type_match": False,
                                  "is_grounding": self._is_grounding(gt_type), "distance": None}
        size = (step.meta.get("image_size") if isinstance(step.meta, dict) else None) or list(image_size)
        if self.protocol == "reference":  # the size the driver scores in (downscaled above 1200x2600)
            fields["driver_size"] = list(driver_size(int(size[0]), int(size[1])))
        if step.error or not isinstance(gt, dict):
            return StepScore(False, 0.0, reason=step.error or "step has no ground-truth action", fields=fields)
        if action.error is not None or action.action_type == "invalid":
            return StepScore(False, 0.0, reason=action.error or "invalid action", fields=fields)
        fields["pred_type"] = self._pred_type(action)
        if self.protocol == "reference":
            ok, reason = score_reference({**step.meta, "image_size": size}, gt, action, fields)
        elif self.metric == "common":
            ok, reason = self._score_common(gt, action, fields, size)
        else:
            ok, reason = self._score_guikv(step, gt, action, fields, size)
        return StepScore(ok, 1.0 if ok else 0.0, reason=reason, fields=fields)

    def _is_grounding(self, gt_type: str | None) -> bool:
        kinds = POINT_TYPES if self.metric == "common" else POINT_TYPES | TEXT_TYPES
        return gt_type in kinds

    def _direction(self, action: ParsedAction) -> str | None:
        d = (action.direction or "").strip().lower()
        if d not in _FLIP:
            return None
        return _FLIP[d] if self.invert_scroll else d

    def _score_common(self, gt: dict[str, Any], action: ParsedAction, fields: dict[str, Any],
                      size: list[int]) -> tuple[bool, str]:
        gt_type, pred_type = gt["action_type"], fields["pred_type"]
        # GT ``type`` is TYPE in this protocol (OS-Atlas writes no point for typing): judged on its text
        fields["type_match"] = gt_type == pred_type or (gt_type == "type" and pred_type == "input_text")
        if not fields["type_match"]:
            return False, f"type {pred_type} != {gt_type}"
        if gt_type in POINT_TYPES:
            if action.point is None:
                return False, f"{action.action_type} without a point"
            gx, gy = float(gt["x"]) / size[0], float(gt["y"]) / size[1]
            d = math.hypot(action.point[0] - gx, action.point[1] - gy)
            fields["distance"] = d
            ok = d <= CLICK_RADIUS + 1e-9
            return ok, "" if ok else f"distance {d:.4f} > {CLICK_RADIUS}"
        if gt_type in TEXT_TYPES:
            ok = text_match_common(action.text or "", gt["text"])
            return ok, "" if ok else f"text {action.text!r} vs {gt['text']!r}: F1 <= {F1_THRESHOLD}"
        if gt_type == "open_app":
            ok = text_match_common(action.app_name or "", gt["app_name"])
            return ok, "" if ok else f"app {action.app_name!r} vs {gt['app_name']!r}: F1 <= {F1_THRESHOLD}"
        if gt_type == "scroll":
            ok = self._direction(action) == gt["direction"]
            return ok, "" if ok else f"direction {action.direction!r} != {gt['direction']!r}"
        return True, ""

    def _score_guikv(self, step: Step, gt: dict[str, Any], action: ParsedAction, fields: dict[str, Any],
                     size: list[int]) -> tuple[bool, str]:
        gt_type, pred_type = gt["action_type"], fields["pred_type"]
        fields["type_match"] = gt_type == pred_type or (gt_type in POINT_TYPES and pred_type in POINT_TYPES)
        w, h = float(size[0]), float(size[1])
        if gt_type in POINT_TYPES:
            if pred_type not in POINT_TYPES:
                return False, f"type {pred_type} != {gt_type}"
            if action.point is None:
                return False, f"{action.action_type} without a point"
            thr = pixel_threshold(w, h)
            dx, dy = abs(action.point[0] * w - float(gt["x"])), abs(action.point[1] * h - float(gt["y"]))
            fields["distance"] = max(dx, dy)
            ok = dx <= thr and dy <= thr
            return ok, "" if ok else f"L-inf distance {max(dx, dy):.1f}px > {thr:.1f}px"
        if gt_type in TEXT_TYPES:
            fields["type_match"] = pred_type == "input_text"
            if pred_type != "input_text":
                return False, f"type {pred_type} != {gt_type}"
            ok = typing_match(action.text or "", gt["text"])
            if ok and gt_type == "type" and action.point is not None:  # a typed-at point must be the GT's
                thr = pixel_threshold(w, h)
                ok = abs(action.point[0] * w - float(gt["x"])) <= thr and abs(action.point[1] * h - float(gt["y"])) <= thr
                return ok, "" if ok else f"typed at a point farther than {thr:.1f}px (L-inf) from the GT"
            return ok, "" if ok else f"text {action.text!r} does not match {gt['text']!r}"
        if gt_type == "open_app":
            if pred_type == "open_app":
                ok = _app_match(action.app_name or "", gt["app_name"])
                return ok, "" if ok else f"app {action.app_name!r} != {gt['app_name']!r}"
            if pred_type == "click" and action.point is not None:
                fields["type_match"] = True
                context = f"{step.meta.get('goal', '')} {step.meta.get('step_instruction', '')}".lower()
                named = gt["app_name"].strip().lower() in context
                x, y = action.point
                ok = named and y > 0.06 and x < 0.97
                return ok, "" if ok else "click does not open the app (no a11y tree: app not named or click in bars)"
            return False, f"type {pred_type} != open_app"
        if gt_type == "navigate_back":
            if pred_type == "navigate_back":
                fields["type_match"] = True
                return True, ""
            if pred_type == "click" and action.point is not None:
                x, y = action.point
                ok = (x <= 0.16 and y <= 0.46) or (x <= 0.30 and y <= 0.36) or (x >= 0.8 and y <= 0.14)
                return ok, "" if ok else "click outside the back-button regions"
            return False, f"type {pred_type} != navigate_back"
        fields["type_match"] = gt_type == pred_type
        if not fields["type_match"]:
            return False, f"type {pred_type} != {gt_type}"
        if gt_type == "scroll":
            d = self._direction(action)
            ok = d is not None and _AXIS[d] == _AXIS[gt["direction"]]
            return ok, "" if ok else f"scroll axis of {action.direction!r} != that of {gt['direction']!r}"
        if gt_type == "status":
            ok = goal_status(action.text) == goal_status(str(gt.get("goal_status", "")))
            return ok, "" if ok else f"status {action.text!r} != {gt.get('goal_status')!r}"
        return True, ""

    # -- aggregate -----------------------------------------------------------------------------------

    def aggregate(self, rows: list[dict[str, Any]]) -> dict[str, float]:
        """``step_success_rate`` (= ``accuracy``; error rows count as wrong), ``type_accuracy``,
        ``grounding_accuracy``, ``accuracy_<gt type>``, ``num_steps``, ``num_errors``.

        Grounding: common metric = correct / type-matched GT click+long_press steps (OS-Atlas);
        guikv = correct / all GT click+long_press+input_text steps (GUI-KV driver).
        """
        n = len(rows)
        out: dict[str, float] = {"step_success_rate": 0.0, "accuracy": 0.0, "type_accuracy": 0.0,
                                 "grounding_accuracy": 0.0, "num_steps": float(n),
                                 "num_errors": float(sum(1 for r in rows if r.get("error")))}
        if not n:
            return out

        def ok(r: dict[str, Any]) -> bool:
            return bool(r.get("correct")) and not r.get("error")

        out["step_success_rate"] = out["accuracy"] = sum(ok(r) for r in rows) / n
        out["type_accuracy"] = sum(bool(row_value(r, "type_match")) and not r.get("error") for r in rows) / n
        grounding = []
        per_type: dict[str, list[bool]] = {}
        for r in rows:
            gt_type = row_value(r, "gt_type") or row_value(r, "gt_action_type")
            if isinstance(gt_type, str):
                per_type.setdefault(gt_type, []).append(ok(r))
            if not self._is_grounding(gt_type):
                continue
            if self.metric == "common" and not row_value(r, "type_match"):
                continue
            grounding.append(ok(r))
        out["grounding_accuracy"] = sum(grounding) / len(grounding) if grounding else 0.0
        out["num_grounding_steps"] = float(len(grounding))
        for kind in sorted(per_type):
            out[f"accuracy_{kind}"] = sum(per_type[kind]) / len(per_type[kind])
        return out
