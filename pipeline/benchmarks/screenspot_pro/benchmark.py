"""ScreenSpot-Pro: GUI grounding on high-resolution professional software (23 apps, 3 OSes, 1,581 samples).

On-disk format (HF ``likaixin/ScreenSpot-Pro``): ``annotations/<app>_<os>.json``, each a JSON list of
``{"id", "img_filename", "bbox": [x1, y1, x2, y2] px, "instruction", "application", "platform",
"img_size": [w, h], "ui_type": "text"|"icon", "group"}``, and images under ``images/<img_filename>``.
Scoring follows ``eval_screenspot_pro.py``: the box is normalised by the annotation's ``img_size``
and the predicted point is correct iff inside it, edges included; the leaderboard number is the micro
accuracy over all samples, broken down by group (Dev, Creative, CAD, Scientific, Office, OS) x text/icon.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

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
    drop_skipped,
    image_missing,
    is_number_list,
    read_json_list,
    resolve_image,
    row_correct,
    score_point_in_box,
    valid_size,
)
from pipeline.benchmarks.common.storage import open_fs, url_of

GROUPS = ("Dev", "Creative", "CAD", "Scientific", "Office", "OS")
UI_TYPES = ("text", "icon")


@register_benchmark("screenspot_pro")
class ScreenSpotPro(GroundingBenchmark):
    """ScreenSpot-Pro. ``path``: the dataset folder with ``annotations/`` and ``images/`` (local or URL).

    Options: ``annotations_dir`` / ``images_dir`` to override the two folders. Annotation files are read
    in sorted name order (the reference uses ``os.listdir`` order; the metric does not depend on it).
    """

    interval_metrics = ("accuracy", "micro_accuracy", "*_acc")

    # Same protocol as ScreenSpot-v2 (GroundingBenchmark); reference: as the v2 driver — a missing
    # screenshot is skipped (the Pro driver crashes on one) and the point is the first action input.

    def load(self) -> Iterable[Episode]:
        fs, root = open_fs(self.path)
        ann_fs, ann_dir = open_fs(str(self.options["annotations_dir"])) if self.options.get(
            "annotations_dir") else (fs, f"{root}/annotations")
        files = sorted(ann_fs.glob(f"{ann_dir}/*.json")) if ann_fs.isdir(ann_dir) else []
        if not files:
            raise BenchmarkDataError(f"screenspot_pro: expected annotations/*.json (and images/) in {self.path}")
        images = open_fs(str(self.options["images_dir"])) if self.options.get("images_dir") else (
            fs, f"{root}/images")
        sizes = ImageSizes()
        episodes: list[Episode] = []
        seen: set[str] = set()
        for file in files:
            stem = file.rsplit("/", 1)[-1][: -len(".json")]
            for i, raw in enumerate(read_json_list(ann_fs, file, "screenspot_pro")):
                step = _step(images, url_of(ann_fs, file), i, raw, sizes)
                sample_id = raw.get("id") if isinstance(raw, dict) else None
                episode_id = str(sample_id) if isinstance(sample_id, (str, int)) and str(sample_id) else f"{stem}_{i}"
                if episode_id in seen:  # ids must be unique: outputs are keyed by them
                    episode_id = f"{stem}_{i}"
                    while episode_id in seen:
                        episode_id += "_dup"
                seen.add(episode_id)
                step.meta["sample_id"] = episode_id
                episodes.append(Episode(episode_id=episode_id, benchmark=self.name, goal=step.instruction,
                                        steps=[step], meta=dict(step.meta)))
        return episodes

    def score(self, step: Step, action: ParsedAction, image_size: tuple[int, int]) -> StepScore:
        # The reference normalises by the annotation's img_size; the runner's size only as a fallback.
        result = score_point_in_box(step, action, valid_size(step.meta.get("image_size")) or valid_size(image_size),
                                    first_argument_rule=self.protocol == "reference")
        if self.protocol == "reference" and not action.ok:  # the Pro driver counts a parse failure as "wrong"
            result.fields["wrong_format"] = 0
        return result

    def aggregate(self, rows: list[dict[str, Any]]) -> dict[str, float]:
        """``accuracy`` = micro accuracy over all samples (leaderboard "Avg"; also ``micro_accuracy``),
        ``text_acc`` / ``icon_acc`` (micro), per group ``<group>_acc`` / ``<group>_<type>_acc`` /
        ``<group>_<type>_n``, per application ``app_<application>_acc``. Error rows count as wrong."""
        rows = drop_skipped(rows) if self.protocol == "reference" else rows
        cells = CellTally()
        apps = CellTally()
        for r in rows:
            meta = row_meta(r)
            ok = row_correct(r)
            cells.add((str(meta.get("group", "unknown")), str(meta.get("ui_type", "unknown"))), ok)
            apps.add((str(meta.get("application", "unknown")),), ok)
        out = base_counts(rows)
        out["micro_accuracy"] = cells.acc_where(lambda k: True)
        out["accuracy"] = out["micro_accuracy"]
        for ui in sorted({t for _, t in cells.keys()}):
            out[f"{ui}_acc"] = cells.acc_where(lambda k, u=ui: k[1] == u)
        groups = sorted({g for g, _ in cells.keys()},
                        key=lambda g: (GROUPS.index(g) if g in GROUPS else len(GROUPS), g))
        for group in groups:
            out[f"{group}_acc"] = cells.acc_where(lambda k, g=group: k[0] == g)
            for ui in sorted({t for g, t in cells.keys() if g == group}):
                out[f"{group}_{ui}_acc"] = cells.acc((group, ui))
                out[f"{group}_{ui}_n"] = float(cells.n((group, ui)))
        for (app,) in sorted(apps.keys()):
            out[f"app_{app}_acc"] = apps.acc((app,))
        return out


def _step(images: tuple[Any, str], file: str, index: int, raw: Any, sizes: ImageSizes) -> Step:
    """One Step; an unusable annotation becomes ``Step.error`` naming the file, index and field."""
    where = f"{file} [{index}]"
    if not isinstance(raw, dict):
        return Step(step_index=0, image_path="", error=f"{where}: not a JSON object")
    problems: list[str] = []
    instruction = raw.get("instruction") if isinstance(raw.get("instruction"), str) else ""
    if not instruction.strip():
        problems.append("field 'instruction' missing")
    image_size = valid_size(raw.get("img_size"))
    if image_size is not None:
        image_path = _image(images, raw.get("img_filename"), problems)
    else:  # no usable img_size: the file header gives the size the box is normalised by
        if raw.get("img_size") is not None:
            problems.append(f"field 'img_size' {raw.get('img_size')!r} is not [width, height]")
        image_path, image_size = resolve_image(images, raw.get("img_filename"), sizes, problems)
    bbox = raw.get("bbox")
    if not is_number_list(bbox, 4):
        problems.append(f"field 'bbox' missing or not 4 numbers (got {bbox!r})")
    elif image_size is not None:
        problem = box_range_problem(bbox, image_size, "bbox")
        if problem:
            problems.append(problem)
    ui_type = raw.get("ui_type") if isinstance(raw.get("ui_type"), str) else "unknown"
    meta = {"group": raw.get("group") if isinstance(raw.get("group"), str) else "unknown",
            "ui_type": ui_type, "data_type": ui_type, "application": raw.get("application"),
            "platform": raw.get("platform"), "img_filename": raw.get("img_filename"),
            "image_size": list(image_size) if image_size else None, "annotation_file": file,
            "image_missing": image_missing(problems)}
    return Step(step_index=0, image_path=image_path, instruction=instruction,
                target={"bbox": [float(v) for v in bbox] if is_number_list(bbox, 4) else None},
                meta=meta, error=f"{where}: {'; '.join(problems)}" if problems else None)


def _image(images: tuple[Any, str], filename: Any, problems: list[str]) -> str:
    """Path of ``img_filename`` under the images folder (a missing file is a problem)."""
    if not isinstance(filename, str) or not filename:
        problems.append("field 'img_filename' missing")
        return ""
    fs, folder = images
    full = f"{folder}/{filename}"
    if not fs.isfile(full):
        problems.append(f"image file '{url_of(fs, full)}' (field 'img_filename') not found")
    return url_of(fs, full)
