"""Tiny ScreenSpot-v2, ScreenSpot-Pro and Multimodal-Mind2Web datasets in their real on-disk formats.

Screenshots are PIL drawings (a background, a few distractor rectangles and the target element), so
the loaders, scorers and end-to-end jobs run with no download. Everything is deterministic: the same
arguments give the same annotations and, with the same Pillow build, the same image bytes. Box
positions follow simple formulas (documented per writer) so tests can compute expected numbers by hand.
"""

from __future__ import annotations

import io
import json
import uuid
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

# ---------------------------------------------------------------------------------------------------
# Drawing
# ---------------------------------------------------------------------------------------------------

_BACKGROUNDS = ((246, 246, 248), (255, 255, 255), (40, 42, 54), (250, 248, 240))
_TARGET = (52, 120, 246)
_DISTRACTOR = (200, 200, 210)


def _screenshot(size: tuple[int, int], target_xyxy: Sequence[float], label: str, seed: int,
                extra_targets: Sequence[Sequence[float]] = ()) -> Image.Image:
    """A flat window: background, four distractor boxes placed by ``seed``, the target box with a label."""
    w, h = size
    img = Image.new("RGB", (w, h), _BACKGROUNDS[seed % len(_BACKGROUNDS)])
    draw = ImageDraw.Draw(img)
    for k in range(4):
        x = (seed * 37 + k * 131) % max(1, w - 40)
        y = (seed * 53 + k * 97) % max(1, h - 20)
        draw.rectangle((x, y, x + 30, y + 14), fill=_DISTRACTOR)
    for box in (target_xyxy, *extra_targets):
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        draw.rectangle((x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)), fill=_TARGET)
    x1, y1 = int(target_xyxy[0]), int(target_xyxy[1])
    draw.text((x1 + 3, y1 + 2), label[:12], fill=(255, 255, 255))
    return img


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------------
# ScreenSpot-v2: screenspot_{mobile,desktop,web}_v2.json + screenspotv2_image/<img_filename>
# ---------------------------------------------------------------------------------------------------

SSV2_SPLITS = ("mobile", "desktop", "web")
SSV2_IMAGE_SIZES: dict[str, tuple[int, int]] = {"mobile": (360, 640), "desktop": (1280, 720), "web": (640, 360)}
_SSV2_SOURCES = {"mobile": ("ios", "android"), "desktop": ("macos", "windows"), "web": ("shop", "forum")}
_LABELS = ("Search", "Settings", "Save", "Menu", "Share", "Back", "Next", "Help", "Home", "Play", "Edit", "Close")


def ssv2_box(k: int) -> list[int]:
    """``[x, y, w, h]`` px of the k-th sample of a split: a 60x40 box at (20 + 70*(k%4), 20 + 50*(k//4))."""
    return [20 + 70 * (k % 4), 20 + 50 * (k // 4), 60, 40]


def write_screenspot_v2(root: str | Path, *, per_cell: int = 2, as_zip: bool = False,
                        image_sizes: dict[str, tuple[int, int]] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Write ScreenSpot-v2 with ``per_cell`` samples per split x {text, icon} (at most 12).

    Split order of samples: ``per_cell`` text then ``per_cell`` icon; sample k of a split has box
    :func:`ssv2_box` (k) and its own image ``<split>_<k:02d>.png`` of size ``SSV2_IMAGE_SIZES[split]``.
    ``as_zip``: ship the images as ``screenspotv2_image.zip`` (as on the hub) instead of the folder.
    Returns the records written per split.
    """
    if not 1 <= per_cell <= 12:
        raise ValueError("per_cell must be in 1..12 (boxes must fit the smallest image)")
    root = Path(root)
    sizes = {**SSV2_IMAGE_SIZES, **(image_sizes or {})}
    images: dict[str, bytes] = {}
    written: dict[str, list[dict[str, Any]]] = {}
    for s, split in enumerate(SSV2_SPLITS):
        records = []
        for k in range(2 * per_cell):
            data_type = "text" if k < per_cell else "icon"
            x, y, w, h = ssv2_box(k)
            label = _LABELS[k % len(_LABELS)]
            name = f"{split}_{k:02d}.png"
            images[name] = _png_bytes(_screenshot(sizes[split], (x, y, x + w, y + h), label, seed=10 * s + k))
            records.append({"img_filename": name, "bbox": [x, y, w, h],
                            "instruction": f"{'click' if data_type == 'text' else 'tap the icon of'} {label.lower()}",
                            "data_type": data_type, "data_source": _SSV2_SOURCES[split][k % 2]})
        _write_json(root / f"screenspot_{split}_v2.json", records)
        written[split] = records
    if as_zip:
        root.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(root / "screenspotv2_image.zip", "w") as zf:
            for name, data in images.items():
                info = zipfile.ZipInfo(f"screenspotv2_image/{name}", date_time=(2024, 1, 1, 0, 0, 0))
                zf.writestr(info, data)
    else:
        folder = root / "screenspotv2_image"
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in images.items():
            (folder / name).write_bytes(data)
    return written


# ---------------------------------------------------------------------------------------------------
# ScreenSpot-Pro: annotations/<app>_<os>.json + images/<app>_<os-short>/screenshot_<n>.png
# ---------------------------------------------------------------------------------------------------

# (application, platform, group): one annotation file each.
SSPRO_APPS: tuple[tuple[str, str, str], ...] = (
    ("vscode", "macos", "Dev"), ("photoshop", "windows", "Creative"), ("autocad", "windows", "CAD"))
_OS_SHORT = {"macos": "mac", "windows": "windows", "linux": "linux"}


def sspro_box(k: int, image_size: tuple[int, int]) -> list[int]:
    """``[x1, y1, x2, y2]`` px of the k-th sample of a file: 80x30 at (w/8 + 100*k, h/6 + 60*k)."""
    w, h = image_size
    x, y = w // 8 + 100 * k, h // 6 + 60 * k
    return [x, y, x + 80, y + 30]


def write_screenspot_pro(root: str | Path, *, apps: Sequence[tuple[str, str, str]] = SSPRO_APPS,
                         per_type: int = 2, image_size: tuple[int, int] = (1280, 720)) -> dict[str, list[dict[str, Any]]]:
    """Write ScreenSpot-Pro: per app ``per_type`` text then ``per_type`` icon samples (at most 4 each).

    Sample k of a file has box :func:`sspro_box` (k, image_size), id ``<app>_<platform>_<k>`` and image
    ``<app>_<os-short>/screenshot_<k>.png``. Returns the records written per annotation file stem.
    """
    if not 1 <= per_type <= 4:
        raise ValueError("per_type must be in 1..4")
    root = Path(root)
    written: dict[str, list[dict[str, Any]]] = {}
    for a, (app, platform, group) in enumerate(apps):
        stem = f"{app}_{platform}"
        folder = f"{app}_{_OS_SHORT.get(platform, platform)}"
        records = []
        for k in range(2 * per_type):
            ui_type = "text" if k < per_type else "icon"
            box = sspro_box(k, image_size)
            label = _LABELS[(a + k) % len(_LABELS)]
            name = f"{folder}/screenshot_{k}.png"
            path = root / "images" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(_png_bytes(_screenshot(image_size, box, label, seed=100 + 10 * a + k)))
            records.append({"id": f"{stem}_{k}", "img_filename": name, "bbox": box,
                            "instruction": f"open the {label.lower()} {'button' if ui_type == 'text' else 'icon'}",
                            "instruction_cn": f"打开{label}", "application": app, "platform": platform,
                            "img_size": list(image_size), "ui_type": ui_type, "group": group})
        _write_json(root / "annotations" / f"{stem}.json", records)
        written[stem] = records
    return written


# ---------------------------------------------------------------------------------------------------
# Multimodal-Mind2Web: data/<split>-00000-of-0000N.parquet with the HF columns
# ---------------------------------------------------------------------------------------------------

# One task = (website, domain, subdomain, confirmed_task, steps); a step = (op, value, tag, text, [x, y, w, h]).
MIND2WEB_TASKS: tuple[tuple[str, str, str, str, tuple[tuple[str, str, str, str, list[int]], ...]], ...] = (
    ("exampletravel", "Travel", "Airlines", "Find one-way flights to New York for 2 adults", (
        ("CLICK", "", "button", "One-way", [40, 100, 120, 40]),
        ("TYPE", "New York", "input", "To", [40, 300, 300, 40]),
        ("SELECT", "2 adults", "select", "Passengers", [40, 700, 200, 40]),
    )),
    ("exampleshop", "Shopping", "Department", "Search for red running shoes", (
        ("TYPE", "red running shoes", "input", "Search", [200, 40, 360, 40]),
        ("CLICK", "", "button", "Go", [580, 40, 50, 40]),
    )),
)


def mind2web_rows(tasks: Sequence[Any] = MIND2WEB_TASKS, *, page_size: tuple[int, int] = (640, 960),
                  ) -> list[dict[str, Any]]:
    """Parquet rows (one per action, tasks in order) with the HF ``osunlp/Multimodal-Mind2Web`` columns.

    ``annotation_id`` = uuid5(task text), ``action_uid`` = uuid5(task text + step index);
    ``screenshot`` = ``{"bytes": PNG, "path": None}`` of a ``page_size`` page with the target drawn.
    """
    rows = []
    for t, (website, domain, subdomain, task, steps) in enumerate(tasks):
        annotation_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"mind2web-fixture/{task}"))
        reprs = [_m2w_repr(op, value, tag, text) for op, value, tag, text, _ in steps]
        for k, (op, value, tag, text, (x, y, w, h)) in enumerate(steps):
            node = str(1000 * (t + 1) + k)
            pos = {"tag": tag, "attributes": json.dumps({
                "backend_node_id": node, "bounding_box_rect": f"{x},{y},{w},{h}", "class": f"fixture-{tag}",
                "data_pw_testid_buckeye": f"{annotation_id[:8]}-{k}"}),
                "is_original_target": True, "is_top_level_target": True, "backend_node_id": node}
            neg = {"tag": "div", "attributes": json.dumps({
                "backend_node_id": str(int(node) + 500), "bounding_box_rect": f"{x},{y + 60},{w},{h}"}),
                "is_original_target": False, "is_top_level_target": False, "backend_node_id": str(int(node) + 500)}
            shot = _screenshot(page_size, (x, y, x + w, y + h), text, seed=200 + 10 * t + k)
            html = f"<html><body><{tag} backend_node_id=\"{node}\">{text}</{tag}></body></html>"
            rows.append({
                "action_uid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"mind2web-fixture/{task}/{k}")),
                "raw_html": html, "cleaned_html": html,
                "operation": json.dumps({"original_op": op, "value": value, "op": op}),
                "pos_candidates": [json.dumps(pos)], "neg_candidates": [json.dumps(neg)],
                "website": website, "domain": domain, "subdomain": subdomain,
                "annotation_id": annotation_id, "confirmed_task": task,
                "screenshot": {"bytes": _png_bytes(shot), "path": None},
                "action_reprs": reprs, "target_action_index": str(k), "target_action_reprs": reprs[k]})
    return rows


def _m2w_repr(op: str, value: str, tag: str, text: str) -> str:
    """Mind2Web's action repr, e.g. ``[button]  Search -> CLICK`` / ``[input]  To -> TYPE: New York``."""
    return f"[{tag}]  {text} -> {op}" + (f": {value}" if value else "")


_M2W_STRING_COLUMNS = ("action_uid", "raw_html", "cleaned_html", "operation", "website", "domain",
                       "subdomain", "annotation_id", "confirmed_task", "target_action_index",
                       "target_action_reprs")
_M2W_LIST_COLUMNS = ("pos_candidates", "neg_candidates", "action_reprs")
_M2W_ORDER = ("action_uid", "raw_html", "cleaned_html", "operation", "pos_candidates", "neg_candidates",
              "website", "domain", "subdomain", "annotation_id", "confirmed_task", "screenshot",
              "action_reprs", "target_action_index", "target_action_reprs")


def write_mind2web(root: str | Path, *, split: str = "test_task", rows: list[dict[str, Any]] | None = None,
                   shards: int = 1) -> list[Path]:
    """Write ``rows`` (default :func:`mind2web_rows`) as ``data/<split>-0000i-of-0000N.parquet``.

    The schema is the hub's: strings, lists of strings, ``screenshot`` as the HF Image struct
    ``{bytes: binary, path: string}``, with the ``huggingface`` features metadata so ``datasets``
    decodes it as an Image. Rows are split over ``shards`` files in order. Returns the files.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = mind2web_rows() if rows is None else rows
    fields = []
    for name in _M2W_ORDER:
        if name in _M2W_LIST_COLUMNS:
            fields.append(pa.field(name, pa.list_(pa.string())))
        elif name == "screenshot":
            fields.append(pa.field(name, pa.struct([("bytes", pa.binary()), ("path", pa.string())])))
        else:
            fields.append(pa.field(name, pa.string()))
    features = {n: ({"feature": {"dtype": "string", "_type": "Value"}, "_type": "List"} if n in _M2W_LIST_COLUMNS
                    else {"_type": "Image"} if n == "screenshot" else {"dtype": "string", "_type": "Value"})
                for n in _M2W_ORDER}
    schema = pa.schema(fields, metadata={"huggingface": json.dumps({"info": {"features": features}})})
    folder = Path(root) / "data"
    folder.mkdir(parents=True, exist_ok=True)
    per = -(-len(rows) // shards) if rows else 0
    files = []
    for i in range(shards):
        chunk = rows[i * per:(i + 1) * per]
        table = pa.Table.from_pylist([{n: r.get(n) for n in _M2W_ORDER} for r in chunk], schema=schema)
        path = folder / f"{split}-{i:05d}-of-{shards:05d}.parquet"
        pq.write_table(table, path)
        files.append(path)
    return files
