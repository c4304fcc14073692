"""Multimodal-Mind2Web: teacher-forced web-navigation steps scored with Ele.Acc, Op.F1 and Step SR.

On-disk format (HF ``osunlp/Multimodal-Mind2Web``): parquet shards ``data/<split>-NNNNN-of-NNNNN.parquet``
(splits ``train``, ``test_task``, ``test_website``, ``test_domain``), one row per action with
``annotation_id`` (task), ``action_uid``, ``confirmed_task``, ``operation`` (JSON string ``{"op",
"original_op", "value"}``), ``pos_candidates`` (JSON strings whose ``attributes`` JSON carries
``bounding_box_rect`` = ``"x,y,w,h"`` page pixels), ``screenshot`` (HF Image struct ``{bytes, path}``,
the full page before the action), ``target_action_index`` (position of the action in the task),
``target_action_reprs`` (``"[tag]  text -> OP: value"``), ``website``, ``domain``, ``subdomain``.

One Episode per task, steps in ``target_action_index`` order, screenshots written once to
``<cache>/mind2web/<annotation_id>/<action_uid>.<png|jpg>`` so ``Step.image_path`` is a real file.

Metrics (SeeClick ``mind2web_test.py`` after Mind2Web): Ele.Acc = the predicted point lies inside a
positive candidate's box (normalised by the screenshot size, edges included); Op.F1 = token-set F1 of
``"OP value"`` strings (value lower-cased; CLICK is the op token alone); Step SR = element hit and
Op.F1 == 1; each is averaged per task, then over tasks (macro, the reported numbers), micro also given.

Action mapping (UI-TARS -> Mind2Web): click / left_double / right_single / long_press -> CLICK;
``type(content)`` -> TYPE content (a trailing newline, UI-TARS's "submit", is dropped);
``select`` (the GUI-KV Mind2Web template's select action; ``ParsedAction.text`` is the chosen value)
-> SELECT value; anything else -> its own name, which never matches. Element accuracy needs a point:
``type(content)`` has none (neither in the computer action space nor in GUI-KV's Mind2Web template, whose
rule says type clicks the box itself), so TYPE steps get no element hit, as in the GUI-KV driver; SELECT
steps do (``select(point=..., content=...)``).
"""

from __future__ import annotations

import io
import json
import math
import os
import posixpath
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from PIL import Image

from pipeline.agent.actions import ParsedAction
from pipeline.benchmarks.common.base import (
    DRIVER_SYSTEM_PROMPT,
    BenchmarkDataError,
    DriverBenchmark,
    Episode,
    Step,
    StepScore,
    register_benchmark,
    row_fields,
    row_meta,
)
from pipeline.benchmarks.common.grounding import cache_root, valid_size
from pipeline.benchmarks.common.scoring import normalize_box, point_in_box
from pipeline.benchmarks.common.scoring import token_f1 as common_token_f1
from pipeline.benchmarks.common.storage import image_size_at, open_fs, url_of
from pipeline.benchmarks.mind2web.blocks import (
    SPLIT_NAMES,
    blocks_file_name,
    build_block_episodes,
    split_of_file,
)

SPLITS = ("train", "test_task", "test_website", "test_domain")
REQUIRED_COLUMNS = ("annotation_id", "action_uid", "confirmed_task", "operation", "pos_candidates", "screenshot")
OPTIONAL_COLUMNS = ("target_action_index", "target_action_reprs", "website", "domain", "subdomain")
CLICK_ACTIONS = frozenset({"click", "left_double", "right_single", "long_press"})
VALUE_OPS = frozenset({"TYPE", "SELECT"})
_SAFE = re.compile(r"[^A-Za-z0-9._-]")


@register_benchmark("mind2web")
class Mind2Web(DriverBenchmark):
    """Multimodal-Mind2Web. ``path``: a folder laid out like the HF repo (``data/<split>-*.parquet``, or
    the shards directly in it) or one parquet file.

    Options: ``split`` (default ``test_task``); ``dataset_id`` (e.g. ``osunlp/Multimodal-Mind2Web``:
    read with ``datasets.load_dataset(dataset_id, split=split)`` instead of ``path``, needs network);
    ``cache_dir`` (screenshots go to ``<cache_dir>/mind2web/...``; default ``$STARKV_CACHE`` or
    ``~/.cache/starkv-eval``; must be readable by the workers); ``viewport_height`` (default none = the
    full page; N = crop each screenshot to the N-pixel page block holding the target's centre, blocks
    aligned at multiples of N, the last one ending at the page bottom).

    Second input format, GUI-KV's blocks layout (``mind2web_blocks``): ``path`` naming a ``.jsonl`` file,
    or a folder holding ``blocks_file`` (default ``cross_<task|website|domain>_blocks.jsonl`` from
    ``split``); block screenshots under ``images_dir`` (default the file's folder). Each step starts at
    block 0 and the model may scroll between blocks, at most 5 calls (``pipeline.agent.views``); tasks
    with fewer records than their ``total_steps`` are padded with 0 in the aggregate, as the driver does.

    Multi-step with teacher-forced ground-truth history: GUI-KV's ``mind2web`` prompt (type / scroll /
    select / click) with the earlier actions under ``## Previous Actions``.
    """

    interval_metrics = ("accuracy", "ele_acc", "op_f1", "step_sr", "task_sr", "*_micro")

    prompt_kind = "mind2web"
    # GUI-KV driver (MM_MIND2WEB_PROMPT): one screenshot, earlier actions as "## Previous Actions" text.
    default_history_source = "ground_truth"
    default_image_slots = 1
    system_prompt = DRIVER_SYSTEM_PROMPT
    # reference: GUI-KV's scoring rules (punctuation-free Op.F1; left_double / right_single / long_press
    # raise in the driver and score 0). Its blocks protocol (start at block 0, up to 5 model calls with
    # scrolls between blocks) comes with its blocks layout (mind2web_blocks, docs/benchmarks/parity.md).

    def _blocks_file(self, split: str) -> tuple[Any, str] | None:
        """``(filesystem, file)`` when ``path`` is the GUI-KV blocks JSONL or a folder holding it."""
        fs, path = open_fs(self.path)
        if fs.isfile(path):
            return (fs, path) if path.endswith(".jsonl") else None
        name = self.options.get("blocks_file") or (blocks_file_name(split) if split in SPLIT_NAMES else None)
        return (fs, f"{path}/{name}") if name and fs.isfile(f"{path}/{name}") else None

    def load(self) -> Iterable[Episode]:
        split = str(self.options.get("split", "test_task"))
        blocks = None if self.options.get("dataset_id") else self._blocks_file(split)
        if blocks is not None:
            fs, file = blocks
            explicit = self.options.get("images_dir")
            images = open_fs(str(explicit)) if explicit else (fs, posixpath.dirname(file))
            name = split_of_file(file) or SPLIT_NAMES.get(split, split)
            return build_block_episodes(fs, file, images, name, image_size_at, benchmark=self.name)
        viewport = self.options.get("viewport_height")
        viewport = int(viewport) if viewport else None
        cache = cache_root(self.options) / "mind2web"
        tasks: dict[str, list[tuple[tuple[float, int], Step, str]]] = {}
        for order, (source, r, row) in enumerate(self._rows(split)):
            task_id, step, goal = _row_step(source, r, row, cache, viewport, split)
            key = (_action_index(row.get("target_action_index")), order)
            tasks.setdefault(task_id, []).append((key, step, goal))
        episodes = []
        for task_id, items in tasks.items():
            items.sort(key=lambda item: item[0])
            steps = [step for _, step, _ in items]
            for k, step in enumerate(steps):
                step.step_index = k
            goal = next((g for _, _, g in items if g), "")
            first = steps[0].meta
            episodes.append(Episode(episode_id=task_id, benchmark=self.name, goal=goal, steps=steps,
                                    meta={k: first.get(k) for k in ("website", "domain", "subdomain", "split")}))
        return episodes

    def _rows(self, split: str) -> Iterator[tuple[str, int, dict[str, Any]]]:
        dataset_id = self.options.get("dataset_id")
        if dataset_id:
            yield from _hub_rows(str(dataset_id), split)
            return
        fs, root = open_fs(self.path)
        files = _parquet_files(fs, root, split)
        if not files:
            raise BenchmarkDataError(f"mind2web: expected data/{split}-*.parquet (osunlp/Multimodal-Mind2Web "
                                     f"layout) or {split}-*.parquet in {self.path}")
        for file in files:
            yield from _parquet_rows(fs, file)

    def score(self, step: Step, action: ParsedAction, image_size: tuple[int, int]) -> StepScore:
        zero = {"ele_hit": 0, "op_f1": 0.0, "op_match": 0}
        if step.error:
            return StepScore(False, 0.0, reason=step.error, fields=zero)
        if action.error is not None or action.action_type == "invalid":
            return StepScore(False, 0.0, reason=action.error or "invalid action", fields=zero)
        gt_op, gt_value = step.target["op"], step.target.get("value", "")
        if self.protocol == "reference" and action.action_type in DRIVER_UNSUPPORTED:
            return StepScore(False, 0.0, reason=f"{action.action_type} raises in the reference driver: 0",
                             fields={**zero, "pred_op": action.action_type.upper()})
        pred_op, pred_value = map_action(action)
        if self.protocol == "reference":  # the driver joins "op value" for every op (a CLICK's value counts)
            pred_str, gt_str = f"{pred_op} {pred_value}".strip(), f"{gt_op} {gt_value}".strip()
            f1 = driver_token_f1(pred_str, gt_str)
        else:
            pred_str, gt_str = op_string(pred_op, pred_value), op_string(gt_op, gt_value)
            f1 = token_f1(pred_str, gt_str)
        size = valid_size(image_size) or valid_size(step.meta.get("image_size"))
        hit = False
        if action.point is not None and size is not None:
            hit = any(point_in_box(action.point, normalize_box(b, size)) for b in step.target["bboxes"])
        success = hit and f1 == 1.0
        reasons = []
        if not hit:
            reasons.append("no point" if action.point is None else "point outside the target element")
        if f1 < 1.0:
            reasons.append(f"operation {pred_str!r} vs {gt_str!r}")
        return StepScore(success, 1.0 if success else 0.0, reason="; ".join(reasons),
                         fields={"ele_hit": int(hit), "op_f1": f1, "op_match": int(pred_op == gt_op),
                                 "pred_op": pred_op})

    def aggregate(self, rows: list[dict[str, Any]]) -> dict[str, float]:
        """``ele_acc``, ``op_f1``, ``step_sr``: macro over tasks (the reported Mind2Web numbers);
        ``*_micro``: over steps; ``task_sr``: tasks with every step successful; ``accuracy`` =
        ``step_sr``. Reads ``correct``, ``error``, fields ``ele_hit`` / ``op_f1`` and meta
        ``annotation_id``. Error rows count as 0 everywhere; in the blocks layout a task with fewer rows
        than its ``total_steps`` gets the missing steps as 0 (``num_padded_steps``; in macro and micro)."""
        per_task: dict[str, list[tuple[float, float, float]]] = {}
        totals: dict[str, int] = {}
        for r in rows:
            fields = row_fields(r)
            ok = not r.get("error")
            ele = float(bool(fields.get("ele_hit"))) if ok else 0.0
            f1 = float(fields.get("op_f1") or 0.0) if ok else 0.0
            step = float(bool(r.get("correct"))) if ok else 0.0
            meta = row_meta(r)
            task = str(meta.get("annotation_id") or r.get("episode_id") or "unknown")
            per_task.setdefault(task, []).append((ele, f1, step))
            if isinstance(meta.get("total_steps"), int):  # blocks layout: the driver's total per task
                totals[task] = meta["total_steps"]
        padded = 0
        for task, total in totals.items():  # the driver pads a task's missing steps with 0
            missing = max(0, total - len(per_task[task]))
            per_task[task] += [(0.0, 0.0, 0.0)] * missing
            padded += missing
        out: dict[str, float] = {"num_steps": float(len(rows)), "num_tasks": float(len(per_task)),
                                 "num_errors": float(sum(1 for r in rows if r.get("error"))),
                                 "num_padded_steps": float(padded)}
        names = ("ele_acc", "op_f1", "step_sr")
        all_steps = [v for vals in per_task.values() for v in vals]
        for j, name in enumerate(names):
            task_means = [sum(v[j] for v in vals) / len(vals) for vals in per_task.values()]
            out[name] = sum(task_means) / len(task_means) if task_means else 0.0
            out[f"{name}_micro"] = sum(v[j] for v in all_steps) / len(all_steps) if all_steps else 0.0
        out["task_sr"] = (sum(1.0 for vals in per_task.values() if all(v[2] == 1.0 for v in vals))
                          / len(per_task)) if per_task else 0.0
        out["accuracy"] = out["step_sr"]
        return out


# ---------------------------------------------------------------------------------------------------
# Metric pieces
# ---------------------------------------------------------------------------------------------------


def map_action(action: ParsedAction) -> tuple[str, str]:
    """A UI-TARS action as a Mind2Web ``(op, value)``."""
    kind = action.action_type
    if kind in CLICK_ACTIONS:
        return "CLICK", ""
    if kind == "type":
        return "TYPE", (action.text or "").rstrip("\n")
    if kind == "select":
        return "SELECT", action.text or ""
    return kind.upper(), action.text or ""


def op_string(op: str, value: str) -> str:
    """``"OP value"`` with the value lower-cased; CLICK carries no value."""
    op = op.upper()
    if op not in VALUE_OPS:
        return op
    return f"{op} {value.lower()}".strip()


def token_f1(pred: str, label: str) -> float:
    """Token-set F1 of two whitespace-tokenised strings (both empty: 1)."""
    return common_token_f1(pred, label)


# ---------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------


DRIVER_UNSUPPORTED = frozenset({"left_double", "right_single", "long_press"})


def driver_token_f1(pred: str, label: str) -> float:
    """GUI-KV's Op.F1: lower-cased token sets without punctuation tokens (a token that is a run of
    ``string.punctuation``, e.g. ``-`` or ``()``); both empty: 1, one empty: 0."""
    return common_token_f1(pred, label, lowercase=True, drop_punctuation=True)


def _parquet_files(fs: Any, root: str, split: str) -> list[str]:
    if fs.isfile(root):
        return [root] if root.endswith(".parquet") else []
    for pattern in (f"{root}/data/{split}-*.parquet", f"{root}/{split}-*.parquet", f"{root}/{split}/*.parquet"):
        files = sorted(fs.glob(pattern))
        if files:
            return files
    return []


def _parquet_rows(fs: Any, file: str) -> Iterator[tuple[str, int, dict[str, Any]]]:
    import pyarrow.parquet as pq

    name = url_of(fs, file)
    try:
        with fs.open(file, "rb") as fh:
            pf = pq.ParquetFile(fh)
            columns = set(pf.schema_arrow.names)
            missing = [c for c in REQUIRED_COLUMNS if c not in columns]
            if missing:
                raise BenchmarkDataError(f"mind2web: {name} lacks the Multimodal-Mind2Web column(s) "
                                         f"{', '.join(missing)}")
            wanted = [c for c in REQUIRED_COLUMNS + OPTIONAL_COLUMNS if c in columns]
            r = 0
            for batch in pf.iter_batches(batch_size=16, columns=wanted):
                for row in batch.to_pylist():
                    yield name, r, row
                    r += 1
    except BenchmarkDataError:
        raise
    except Exception as exc:  # noqa: BLE001  (pyarrow raises many types on a bad file)
        raise BenchmarkDataError(f"mind2web: {name} is not a readable parquet file: {exc}") from exc


def _hub_rows(dataset_id: str, split: str) -> Iterator[tuple[str, int, dict[str, Any]]]:
    """Rows through ``datasets`` (hub or its cache), screenshots kept as encoded bytes."""
    import datasets

    try:
        ds = datasets.load_dataset(dataset_id, split=split)
    except Exception as exc:  # noqa: BLE001
        raise BenchmarkDataError(f"mind2web: cannot load {dataset_id} split {split}: {exc}") from exc
    missing = [c for c in REQUIRED_COLUMNS if c not in ds.column_names]
    if missing:
        raise BenchmarkDataError(f"mind2web: {dataset_id} lacks column(s) {', '.join(missing)}")
    ds = ds.select_columns([c for c in REQUIRED_COLUMNS + OPTIONAL_COLUMNS if c in ds.column_names])
    ds = ds.cast_column("screenshot", datasets.Image(decode=False))
    for r, row in enumerate(ds):
        yield f"{dataset_id}:{split}", r, row


def _action_index(value: Any) -> float:
    try:
        return float(int(str(value)))
    except (TypeError, ValueError):
        return math.inf


def _row_step(source: str, r: int, row: dict[str, Any], cache: Path, viewport: int | None,
              split: str) -> tuple[str, Step, str]:
    """``(annotation_id, Step, task)`` for one parquet row; problems become ``Step.error``."""
    task_id = str(row.get("annotation_id") or f"row{r}")
    action_uid = str(row.get("action_uid") or f"row{r}")
    where = f"{source} row {r} (annotation_id {task_id}, action_uid {action_uid})"
    problems: list[str] = []
    goal = row.get("confirmed_task") if isinstance(row.get("confirmed_task"), str) else ""
    if not goal.strip():
        problems.append("field 'confirmed_task' missing")
    op, value = _operation(row.get("operation"), problems)
    boxes = _candidate_boxes(row.get("pos_candidates"), problems)
    image_path, image_size, page_size, crop_top = "", None, None, 0
    data = _screenshot_bytes(row.get("screenshot"), problems)
    if data is not None:
        try:
            page_size = _image_size(data)
        except Exception as exc:  # noqa: BLE001
            problems.append(f"field 'screenshot' is not a decodable image ({type(exc).__name__})")
    if page_size is not None and boxes:
        boxes = _clip_boxes(boxes, page_size, problems)
    if page_size is not None and data is not None:
        if viewport and boxes:
            crop_top = _block_top(boxes[0], page_size[1], viewport)
            image_size = (page_size[0], min(viewport, page_size[1]))
            boxes = [[x1, y1 - crop_top, x2, y2 - crop_top] for x1, y1, x2, y2 in boxes]
            boxes = _clip_boxes(boxes, image_size, problems)
        else:
            image_size = page_size
        image_path = _cache_image(cache, task_id, action_uid, data,
                                  (crop_top, image_size[1]) if viewport and boxes else None)
    reprs = row.get("target_action_reprs")
    meta = {"annotation_id": task_id, "action_uid": action_uid, "split": split,
            "website": row.get("website"), "domain": row.get("domain"), "subdomain": row.get("subdomain"),
            "target_action_index": row.get("target_action_index"), "op": op, "value": value,
            "image_size": list(image_size) if image_size else None,
            "page_size": list(page_size) if page_size else None, "crop_top": crop_top}
    step = Step(step_index=0, image_path=image_path, instruction=goal,
                target={"op": op, "value": value, "bboxes": boxes, "bbox": boxes[0] if boxes else None},
                history_text=history_text(op, value, reprs if isinstance(reprs, str) else ""),
                meta=meta, error=f"{where}: {'; '.join(problems)}" if problems else None)
    return task_id, step, goal


def _operation(raw: Any, problems: list[str]) -> tuple[str, str]:
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            raw = None
    if not isinstance(raw, dict) or not isinstance(raw.get("op"), str) or not raw["op"]:
        problems.append("field 'operation' is not a JSON object with 'op'")
        return "", ""
    value = raw.get("value")
    return raw["op"].upper(), value if isinstance(value, str) else ""


def _candidate_boxes(raw: Any, problems: list[str]) -> list[list[float]]:
    """xyxy page-pixel boxes of the positive candidates (``-1,-1,-1,-1`` and empty ones skipped)."""
    if isinstance(raw, str):  # a whole list serialised as one JSON string
        try:
            raw = json.loads(raw)
        except ValueError:
            raw = None
    if not isinstance(raw, (list, tuple)) or not raw:
        problems.append("field 'pos_candidates' is empty")
        return []
    boxes = []
    for cand in raw:
        try:
            cand = json.loads(cand) if isinstance(cand, str) else cand
            attrs = cand.get("attributes", {})
            attrs = json.loads(attrs) if isinstance(attrs, str) else attrs
            rect = attrs.get("bounding_box_rect")
            parts = [float(v) for v in (rect.split(",") if isinstance(rect, str) else rect)]
        except (AttributeError, TypeError, ValueError):
            continue
        if len(parts) == 4 and parts[2] > 0 and parts[3] > 0:
            x, y, w, h = parts
            boxes.append([x, y, x + w, y + h])
    if not boxes:
        problems.append("field 'pos_candidates' has no usable attributes.bounding_box_rect")
    return boxes


def _clip_boxes(boxes: list[list[float]], size: tuple[int, int], problems: list[str]) -> list[list[float]]:
    """Clip to the image; boxes wholly outside are dropped (all outside: a problem)."""
    w, h = size
    kept = [[max(0.0, x1), max(0.0, y1), min(float(w), x2), min(float(h), y2)]
            for x1, y1, x2, y2 in boxes if x2 > 0 and y2 > 0 and x1 < w and y1 < h]
    if not kept:
        problems.append(f"field 'pos_candidates' bounding_box_rect {boxes[0]} lies outside the {w}x{h} screenshot")
    return kept


def _block_top(box: list[float], page_height: int, viewport: int) -> int:
    centre = (box[1] + box[3]) / 2
    return int(max(0, min((int(centre) // viewport) * viewport, page_height - viewport)))


def _screenshot_bytes(raw: Any, problems: list[str]) -> bytes | None:
    data = raw.get("bytes") if isinstance(raw, dict) else raw
    if isinstance(raw, dict) and not data and isinstance(raw.get("path"), str) and os.path.isfile(raw["path"]):
        data = Path(raw["path"]).read_bytes()
    if not isinstance(data, (bytes, bytearray)) or not data:
        problems.append("field 'screenshot' holds no image bytes")
        return None
    return bytes(data)


def _image_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as img:
        return int(img.size[0]), int(img.size[1])


def _cache_image(cache: Path, task_id: str, action_uid: str, data: bytes,
                 crop: tuple[int, int] | None) -> str:
    """Write the screenshot (as stored, or the ``(top, height)`` crop as PNG) once; return its path."""
    folder = cache / _SAFE.sub("_", task_id)
    folder.mkdir(parents=True, exist_ok=True)
    if crop is None:
        with Image.open(io.BytesIO(data)) as img:
            ext = {"JPEG": "jpg", "WEBP": "webp"}.get(img.format or "", "png")
        path = folder / f"{_SAFE.sub('_', action_uid)}.{ext}"
        if not (path.is_file() and path.stat().st_size == len(data)):
            _atomic_write(path, data)
        return str(path)
    top, height = crop
    path = folder / f"{_SAFE.sub('_', action_uid)}_top{top}_h{height}.png"
    if not path.is_file():
        with Image.open(io.BytesIO(data)) as img:
            buf = io.BytesIO()
            img.convert("RGB").crop((0, top, img.size[0], top + height)).save(buf, format="PNG")
        _atomic_write(path, buf.getvalue())
    return str(path)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def history_text(op: str, value: str, reprs: str) -> str:
    """Ground-truth description of a step, e.g. ``CLICK [Search]`` or ``TYPE [Find a location] brooklyn``:
    the element text comes from ``target_action_reprs`` (``"[tag]  text -> OP: value"``)."""
    element = reprs.split(" -> ", 1)[0] if reprs else ""
    element = " ".join(re.sub(r"^\s*\[[^\]]*\]", "", element).split())
    text = f"{op} [{element}]" if element else op
    return f"{text} {value}" if op in VALUE_OPS and value else text
