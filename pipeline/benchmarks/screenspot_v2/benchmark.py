"""ScreenSpot-v2 (OS-Atlas): single-instruction GUI grounding on mobile, desktop and web screenshots.

On-disk format (HF ``OS-Copilot/ScreenSpot-v2``): ``screenspot_{mobile,desktop,web}_v2.json``, each a
JSON list of ``{"img_filename", "bbox": [x, y, w, h] px, "instruction", "data_type": "text"|"icon",
"data_source"}``, and the images in ``screenspotv2_image/`` (or the ``screenspotv2_image.zip`` it ships
as, extracted once into the cache). Scoring is the SeeClick / GUI-KV rule: the predicted point,
normalised to [0, 1], is correct iff it lies inside the box normalised by the real image size, edges
included. The helpers at the bottom are shared with ScreenSpot-Pro (same scoring, same error handling).
Option ``protocol: reference`` applies the STaR-KV / GUI-KV driver's rules: samples with a missing
screenshot are skipped, the point is the first action input (docs/benchmarks/parity.md).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fsspec.implementations.local import LocalFileSystem

from pipeline.agent.actions import ParsedAction
from pipeline.benchmarks.common.base import (
    BenchmarkDataError,
    Episode,
    Step,
    StepScore,
    register_benchmark,
    row_meta,
)
from pipeline.benchmarks.common.grounding import (
    CellTally,
    GroundingBenchmark,
    ImageSizes,
    base_counts,
    box_range_problem,
    cache_root,
    drop_skipped,
    image_missing,
    is_number_list,
    read_json_list,
    resolve_image,
    row_correct,
    score_point_in_box,
    valid_size,
)
from pipeline.benchmarks.common.scoring import xywh_to_xyxy
from pipeline.benchmarks.common.storage import open_fs, url_of

SPLITS = ("mobile", "desktop", "web")
DATA_TYPES = ("text", "icon")
ANNOTATION_TEMPLATE = "screenspot_{split}_v2.json"
IMAGE_DIR = "screenspotv2_image"
IMAGE_ZIP = "screenspotv2_image.zip"


@register_benchmark("screenspot_v2")
class ScreenSpotV2(GroundingBenchmark):
    """ScreenSpot-v2. ``path``: the folder holding the three JSON files (local path or fsspec URL).

    Options: ``images_dir`` (default ``<path>/screenspotv2_image``, else the extracted zip),
    ``splits`` (subset of mobile/desktop/web, list or comma string), ``cache_dir`` (where the image zip
    is extracted; default ``$STARKV_CACHE`` or ``~/.cache/starkv-eval``).
    """

    interval_metrics = ("accuracy", "micro_accuracy", "*_acc", "*_acc_micro")

    def load(self) -> Iterable[Episode]:
        fs, root = open_fs(self.path)
        splits = _parse_splits(self.options.get("splits"))
        files = {s: f"{root}/{ANNOTATION_TEMPLATE.format(split=s)}" for s in splits}
        present = {s: f for s, f in files.items() if fs.isfile(f)}
        if not present:
            names = ",".join(splits)
            raise BenchmarkDataError(f"screenspot_v2: expected screenspot_{{{names}}}_v2.json in {self.path}")
        images = self._images_dir(fs, root)
        sizes = ImageSizes()
        episodes: list[Episode] = []
        for split, file in present.items():
            records = read_json_list(fs, file, "screenspot_v2")
            for i, raw in enumerate(records):
                step = self._step(images, url_of(fs, file), i, raw, split, sizes)
                episodes.append(Episode(episode_id=f"{split}_{i:04d}", benchmark=self.name,
                                        goal=step.instruction, steps=[step], meta=dict(step.meta)))
        return episodes

    def _images_dir(self, fs: Any, root: str) -> tuple[Any, str]:
        explicit = self.options.get("images_dir")
        if explicit:
            ifs, iroot = open_fs(str(explicit))
            if not ifs.isdir(iroot):
                raise BenchmarkDataError(f"screenspot_v2: option images_dir {explicit} is not a folder")
            return ifs, iroot
        if fs.isdir(f"{root}/{IMAGE_DIR}"):
            return fs, f"{root}/{IMAGE_DIR}"
        if isinstance(fs, LocalFileSystem) and fs.isfile(f"{root}/{IMAGE_ZIP}"):
            folder = _extract_zip(Path(root) / IMAGE_ZIP, cache_root(self.options) / "screenspot_v2")
            return LocalFileSystem(), str(folder)
        # No image folder: every step becomes an error row naming the missing file (the rest still loads).
        return fs, f"{root}/{IMAGE_DIR}"

    def _step(self, images: tuple[Any, str], file: str, index: int, raw: Any, split: str,
              sizes: ImageSizes) -> Step:
        where = f"{file} [{index}]"
        if not isinstance(raw, dict):
            return Step(step_index=0, image_path="", meta={"split": split}, error=f"{where}: not a JSON object")
        problems: list[str] = []
        data_type = raw.get("data_type") if isinstance(raw.get("data_type"), str) else "unknown"
        instruction = raw.get("instruction") if isinstance(raw.get("instruction"), str) else ""
        if not instruction.strip():
            problems.append("field 'instruction' missing")
        image_path, image_size = resolve_image(images, raw.get("img_filename"), sizes, problems)
        bbox_xyxy: list[float] | None = None
        bbox = raw.get("bbox")
        if not is_number_list(bbox, 4):
            problems.append(f"field 'bbox' missing or not 4 numbers (got {bbox!r})")
        else:
            x, y, w, h = (float(v) for v in bbox)
            if w < 0 or h < 0:
                problems.append(f"field 'bbox' {bbox} has a negative width or height")
            else:
                bbox_xyxy = list(xywh_to_xyxy(bbox))
                if image_size is not None:
                    problem = box_range_problem(bbox_xyxy, image_size, "bbox")
                    if problem:
                        problems.append(problem)
        meta = {"split": split, "data_type": data_type, "data_source": raw.get("data_source"),
                "img_filename": raw.get("img_filename"), "image_missing": image_missing(problems),
                "image_size": list(image_size) if image_size else None,
                "sample_id": f"{split}_{index:04d}"}
        return Step(step_index=0, image_path=image_path, instruction=instruction,
                    target={"bbox": bbox_xyxy, "bbox_xywh": bbox if is_number_list(bbox, 4) else None},
                    meta=meta, error=f"{where}: {'; '.join(problems)}" if problems else None)

    def score(self, step: Step, action: ParsedAction, image_size: tuple[int, int]) -> StepScore:
        # Normalise by the image the runner opened (SeeClick / GUI-KV use PIL ``image.size``).
        return score_point_in_box(step, action, valid_size(image_size) or valid_size(step.meta.get("image_size")),
                                  first_argument_rule=self.protocol == "reference")

    def aggregate(self, rows: list[dict[str, Any]]) -> dict[str, float]:
        """Per split x type accuracy and the two overall numbers.

        ``overall_macro`` is the STaR-KV / GUI-KV driver's overall: (mean over splits of text accuracy +
        mean over splits of icon accuracy) / 2, a macro average of six cells. ``micro_accuracy`` is
        correct / all samples (what OS-Atlas-style tables call the average when pooling). ``accuracy``
        is ``overall_macro`` because the reference numbers this project compares with use it. Rows
        with ``error`` count as wrong (they are 0 on the official data). ``text_acc`` / ``icon_acc``
        are the split means that enter ``overall_macro``; ``*_micro`` pool samples.
        """
        reference = self.protocol == "reference"
        run_splits = {str(row_meta(r).get("split", "unknown")) for r in rows}  # before skipped rows go
        rows = drop_skipped(rows) if reference else rows
        cells = CellTally()
        for r in rows:
            meta = row_meta(r)
            cells.add((str(meta.get("split", "unknown")), str(meta.get("data_type", "unknown"))), row_correct(r))
        out = base_counts(rows)
        splits = sorted({s for s, _ in cells.keys()}, key=_split_order)
        for split in splits:
            for dtype in sorted({t for s, t in cells.keys() if s == split}):
                out[f"{split}_{dtype}_acc"] = cells.acc((split, dtype))
                out[f"{split}_{dtype}_n"] = float(cells.n((split, dtype)))
            out[f"{split}_acc"] = cells.acc_where(lambda k, s=split: k[0] == s)
        type_means: dict[str, float] = {}
        for dtype in DATA_TYPES:
            if reference:  # the driver averages every split it ran; a split with no sample of a type gives 0
                accs = [cells.acc((s, dtype)) for s in sorted(run_splits, key=_split_order)]
            else:
                accs = [cells.acc((s, dtype)) for s in splits if cells.n((s, dtype))]
            if accs:
                type_means[dtype] = sum(accs) / len(accs)
                out[f"{dtype}_acc"] = type_means[dtype]
                out[f"{dtype}_acc_micro"] = cells.acc_where(lambda k, t=dtype: k[1] == t)
        out["overall_macro"] = sum(type_means.values()) / len(type_means) if type_means else 0.0
        out["micro_accuracy"] = cells.acc_where(lambda k: True)
        out["accuracy"] = out["overall_macro"]
        return out


def _parse_splits(value: Any) -> tuple[str, ...]:
    if value is None:
        return SPLITS
    items = [s.strip() for s in value.split(",")] if isinstance(value, str) else [str(s) for s in value]
    unknown = [s for s in items if s not in SPLITS]
    if unknown or not items:
        raise BenchmarkDataError(f"screenspot_v2: option splits {value!r}: expected a subset of {SPLITS}")
    return tuple(items)


def _split_order(split: str) -> tuple[int, str]:
    return (SPLITS.index(split) if split in SPLITS else len(SPLITS), split)


def _extract_zip(zip_path: Path, cache: Path) -> Path:
    """Extract the image zip once and return the image folder; extraction goes to a private temporary
    folder renamed into place, so concurrent loaders never see a half-written one."""
    key = hashlib.sha1(str(zip_path.resolve()).encode("utf-8")).hexdigest()[:12]
    target = cache / f"{IMAGE_DIR}_{key}"
    if not target.is_dir():
        tmp = cache / f".{target.name}.{os.getpid()}.tmp"
        try:
            with zipfile.ZipFile(zip_path) as zf:
                zf.extractall(tmp)
            os.replace(tmp, target)
        except (OSError, zipfile.BadZipFile) as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if not target.is_dir():  # losing the rename race to another loader is fine
                raise BenchmarkDataError(f"screenspot_v2: cannot extract {zip_path}: {exc}") from exc
    nested = target / IMAGE_DIR
    return nested if nested.is_dir() else target


# ---------------------------------------------------------------------------------------------------
# Shared by the ScreenSpot family (v2, Pro): file access, validation, scoring, aggregation helpers.
# ---------------------------------------------------------------------------------------------------
