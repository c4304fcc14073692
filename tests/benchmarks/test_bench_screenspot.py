"""ScreenSpot-v2 and ScreenSpot-Pro: loaders on fixture data in the real formats, scorers, official aggregates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.agent.actions import ParsedAction
from pipeline.benchmarks.common.base import BENCHMARKS, BenchmarkDataError, Step
from pipeline.benchmarks.screenspot_pro.benchmark import ScreenSpotPro
from pipeline.benchmarks.screenspot_v2.benchmark import ScreenSpotV2
from tests.fixtures.benchmarks import (
    SSV2_IMAGE_SIZES,
    sspro_box,
    ssv2_box,
    write_screenspot_pro,
    write_screenspot_v2,
)


def click(x: float, y: float) -> ParsedAction:
    return ParsedAction(action_type="click", point=(x, y))


def hit_point(step: Step, size: tuple[int, int]) -> ParsedAction:
    x1, y1, x2, y2 = step.target["bbox"]
    return click((x1 + x2) / 2 / size[0], (y1 + y2) / 2 / size[1])


def miss_point(step: Step, size: tuple[int, int]) -> ParsedAction:
    x1, y1, x2, y2 = step.target["bbox"]
    return click((x2 + 5) / size[0], (y1 + y2) / 2 / size[1])  # 5 px right of the box


def row(step: Step, correct: bool, error: str | None = None) -> dict:
    return {"correct": correct, "error": error, "meta": step.meta}


def planned_aggregate(bench, plan: dict[tuple[str, str], list[int]], cell: tuple[str, str], size_of,
                      runner_size: tuple[int, int] | None = None) -> dict[str, float]:
    """The aggregate of rows that hit (1) or miss (0) each sample as ``plan`` says: per cell (the two ``cell``
    meta fields), its samples' outcomes in load order. ``size_of(cell)`` is the image size the click is
    placed in; ``runner_size`` (default that size) what the scorer is told."""
    seen: dict[tuple[str, str], int] = {}
    rows = []
    for e in bench.load():
        step = e.steps[0]
        key = (step.meta[cell[0]], step.meta[cell[1]])
        want = plan[key][seen.get(key, 0)]
        seen[key] = seen.get(key, 0) + 1
        size = size_of(key)
        action = hit_point(step, size) if want else miss_point(step, size)
        score = bench.score(step, action, runner_size or size)
        assert score.correct == bool(want)
        rows.append({**row(step, score.correct), "fields": score.fields})
    return bench.aggregate(rows)


# ---------------------------------------------------------------------------------------------------
# ScreenSpot-v2
# ---------------------------------------------------------------------------------------------------


def test_registered() -> None:
    assert BENCHMARKS["screenspot_v2"] is ScreenSpotV2 and BENCHMARKS["screenspot_pro"] is ScreenSpotPro
    assert ScreenSpotV2.prompt_kind == "grounding" and ScreenSpotPro.prompt_kind == "grounding"


def test_ssv2_loader_fields_and_boxes(tmp_path: Path) -> None:
    write_screenspot_v2(tmp_path, per_cell=2)
    episodes = list(ScreenSpotV2(str(tmp_path)).load())
    assert len(episodes) == 12
    assert [e.episode_id for e in episodes[:5]] == ["mobile_0000", "mobile_0001", "mobile_0002", "mobile_0003",
                                                    "desktop_0000"]
    assert len({e.episode_id for e in episodes}) == 12
    assert all(len(e.steps) == 1 and e.steps[0].error is None for e in episodes)
    step = episodes[3].steps[0]  # mobile sample 3: icon, bbox [230, 20, 60, 40] xywh
    assert ssv2_box(3) == [230, 20, 60, 40]
    assert step.target["bbox"] == [230.0, 20.0, 290.0, 60.0]
    assert step.meta["split"] == "mobile" and step.meta["data_type"] == "icon"
    assert step.meta["image_size"] == [360, 640] and step.meta["data_source"] == "android"
    assert step.image_path == str(tmp_path.resolve() / "screenspotv2_image" / "mobile_03.png")
    assert Path(step.image_path).is_file()
    assert step.instruction and episodes[3].goal == step.instruction
    counts = {(e.steps[0].meta["split"], e.steps[0].meta["data_type"]) for e in episodes}
    assert len(counts) == 6


def test_ssv2_options_splits_and_images_dir(tmp_path: Path) -> None:
    write_screenspot_v2(tmp_path / "d", per_cell=1)
    (tmp_path / "d" / "screenspotv2_image").rename(tmp_path / "imgs")
    episodes = list(ScreenSpotV2(str(tmp_path / "d"), images_dir=str(tmp_path / "imgs"), splits="web").load())
    assert [e.episode_id for e in episodes] == ["web_0000", "web_0001"]
    assert all(e.steps[0].error is None for e in episodes)


def test_ssv2_loads_from_fsspec_url(tmp_path: Path) -> None:
    fsspec = pytest.importorskip("fsspec")
    write_screenspot_v2(tmp_path / "d", per_cell=1)
    fs = fsspec.filesystem("memory")
    fs.put(str(tmp_path / "d"), "/ssv2-test", recursive=True)
    try:
        episodes = list(ScreenSpotV2("memory://ssv2-test").load())
        assert len(episodes) == 6 and all(e.steps[0].error is None for e in episodes)
        step = episodes[0].steps[0]
        assert step.image_path.startswith("memory://") and step.image_path.endswith("/mobile_00.png")
        with fsspec.open(step.image_path, "rb") as fh:  # the URL is usable as-is by the runner
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
        assert step.meta["image_size"] == [360, 640]
        local = list(ScreenSpotV2(f"file://{tmp_path / 'd'}").load())
        assert local[0].steps[0].image_path == str(tmp_path / "d" / "screenspotv2_image" / "mobile_00.png")
    finally:
        fs.rm("/ssv2-test", recursive=True)


def test_ssv2_image_zip_is_extracted_to_cache(tmp_path: Path) -> None:
    write_screenspot_v2(tmp_path / "d", per_cell=1, as_zip=True)
    assert not (tmp_path / "d" / "screenspotv2_image").exists()
    episodes = list(ScreenSpotV2(str(tmp_path / "d"), cache_dir=str(tmp_path / "cache")).load())
    assert len(episodes) == 6 and all(e.steps[0].error is None for e in episodes)
    assert all(e.steps[0].image_path.startswith(str(tmp_path / "cache")) for e in episodes)
    # a second load reuses the extraction
    again = list(ScreenSpotV2(str(tmp_path / "d"), cache_dir=str(tmp_path / "cache")).load())
    assert [e.steps[0].image_path for e in again] == [e.steps[0].image_path for e in episodes]


def test_ssv2_score_point_in_box_inclusive(tmp_path: Path) -> None:
    write_screenspot_v2(tmp_path, per_cell=1)
    bench = ScreenSpotV2(str(tmp_path))
    step = next(iter(bench.load())).steps[0]  # mobile_0000: xyxy [20, 20, 80, 60] in 360x640
    size = (360, 640)
    assert bench.score(step, hit_point(step, size), size).correct
    assert bench.score(step, click(80 / 360, 60 / 640), size).correct  # the corner is inside
    assert bench.score(step, click(20 / 360, 20 / 640), size).correct
    s = bench.score(step, click(81 / 360, 40 / 640), size)
    assert not s.correct and s.fields == {"hit": 0, "wrong_format": 0}
    bad = bench.score(step, ParsedAction.invalid("garbage", "no Action:"), size)
    assert not bad.correct and bad.fields["wrong_format"] == 1 and bad.reason == "no Action:"
    nopoint = bench.score(step, ParsedAction(action_type="finished"), size)
    assert not nopoint.correct and nopoint.fields["wrong_format"] == 1
    # any action with a point is judged by its point, as the reference drivers do
    assert bench.score(step, ParsedAction(action_type="left_double", point=(50 / 360, 40 / 640)), size).correct
    # normalised by the real image size: the runner's, else meta image_size
    assert bench.score(step, click(50 / 360, 40 / 640), None).correct  # type: ignore[arg-type]
    assert not bench.score(step, click(50 / 360, 40 / 640), (720, 1280)).correct


# hits per split x type (2 samples each): mobile 2/2 text, 1/2 icon; desktop 1/2, 0/2; web 2/2, 1/2
SSV2_PLAN = {("mobile", "text"): [1, 1], ("mobile", "icon"): [1, 0], ("desktop", "text"): [0, 1],
             ("desktop", "icon"): [0, 0], ("web", "text"): [1, 1], ("web", "icon"): [0, 1]}


def test_ssv2_golden_metrics(tmp_path: Path) -> None:
    write_screenspot_v2(tmp_path, per_cell=2)
    out = planned_aggregate(ScreenSpotV2(str(tmp_path)), SSV2_PLAN, ("split", "data_type"),
                            lambda key: SSV2_IMAGE_SIZES[key[0]])
    assert out["mobile_text_acc"] == 1.0 and out["mobile_icon_acc"] == 0.5
    assert out["desktop_text_acc"] == 0.5 and out["desktop_icon_acc"] == 0.0
    assert out["web_text_acc"] == 1.0 and out["web_icon_acc"] == 0.5
    assert out["mobile_text_n"] == 2.0
    assert out["mobile_acc"] == 0.75 and out["desktop_acc"] == 0.25 and out["web_acc"] == 0.75
    assert out["text_acc"] == pytest.approx(2.5 / 3)  # (1 + 0.5 + 1) / 3
    assert out["icon_acc"] == pytest.approx(1 / 3)  # (0.5 + 0 + 0.5) / 3
    assert out["overall_macro"] == pytest.approx((2.5 / 3 + 1 / 3) / 2)
    assert out["micro_accuracy"] == pytest.approx(7 / 12)
    assert out["accuracy"] == out["overall_macro"]
    assert out["num_steps"] == 12.0 and out["num_errors"] == 0.0


def test_ssv2_macro_differs_from_micro_on_unequal_cells() -> None:
    def r(split: str, dtype: str, ok: bool, error: str | None = None) -> dict:
        return {"correct": ok, "error": error, "meta": {"split": split, "data_type": dtype}}

    rows = ([r("mobile", "text", True)] * 3 + [r("mobile", "icon", False)]
            + [r("desktop", "text", True), r("desktop", "icon", True)]
            + [r("web", "text", True), r("web", "text", True, error="bad sample")]
            + [r("web", "icon", False)] * 2)
    out = ScreenSpotV2("unused").aggregate(rows)
    # text: mobile 3/3, desktop 1/1, web 1/2 (the error row counts as wrong); icon: 0/1, 1/1, 0/2
    assert out["text_acc"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert out["icon_acc"] == pytest.approx(1 / 3)
    assert out["overall_macro"] == pytest.approx(((2.5 / 3) + (1 / 3)) / 2)
    assert out["micro_accuracy"] == pytest.approx(6 / 10)  # 3 + 1 + 1 + 1 correct of 10
    assert out["text_acc_micro"] == pytest.approx(5 / 6) and out["icon_acc_micro"] == pytest.approx(1 / 4)
    assert out["num_errors"] == 1.0
    # Parquet-style rows carry meta as JSON
    flat = [{"correct": x["correct"], "error": x["error"], "meta_json": json.dumps(x["meta"])} for x in rows]
    assert ScreenSpotV2("unused").aggregate(flat) == out
    # wrong_format is counted from the score fields the runner stores in meta_json["score_fields"]
    rows[3]["meta"] = {**rows[3]["meta"], "score_fields": {"hit": 0, "wrong_format": 1}}
    assert ScreenSpotV2("unused").aggregate(rows)["num_wrong_format"] == 1.0


def test_ssv2_bad_data_becomes_error_steps(tmp_path: Path) -> None:
    write_screenspot_v2(tmp_path, per_cell=2)
    mobile = tmp_path / "screenspot_mobile_v2.json"
    records = json.loads(mobile.read_text())
    records[0]["img_filename"] = "missing.png"
    del records[1]["bbox"]
    mobile.write_text(json.dumps(records))
    desktop = tmp_path / "screenspot_desktop_v2.json"
    records = json.loads(desktop.read_text())
    records[2]["bbox"] = [1300, 10, 50, 50]  # right of the 1280x720 image
    desktop.write_text(json.dumps(records))

    episodes = list(ScreenSpotV2(str(tmp_path)).load())
    assert len(episodes) == 12
    errors = {e.episode_id: e.steps[0].error for e in episodes if e.steps[0].error}
    assert set(errors) == {"mobile_0000", "mobile_0001", "desktop_0002"}
    assert "screenspot_mobile_v2.json [0]" in errors["mobile_0000"]
    assert "missing.png" in errors["mobile_0000"] and "'img_filename'" in errors["mobile_0000"]
    assert "screenspot_mobile_v2.json [1]" in errors["mobile_0001"] and "'bbox'" in errors["mobile_0001"]
    assert "screenspot_desktop_v2.json [2]" in errors["desktop_0002"]
    assert "'bbox'" in errors["desktop_0002"] and "outside the 1280x720 image" in errors["desktop_0002"]
    bench = ScreenSpotV2(str(tmp_path))
    bad = next(e for e in episodes if e.episode_id == "mobile_0001").steps[0]
    assert not bench.score(bad, click(0.5, 0.5), (360, 640)).correct  # never raises


def test_box_may_overhang_its_image_by_one_percent_of_the_side() -> None:
    """Annotators clip at the screen edge with a pixel or two of slack: 1 % of a side passes, more is refused."""
    from pipeline.benchmarks.common.grounding import box_range_problem

    assert box_range_problem([-10, -5, 1010, 505], (1000, 500), "bbox") is None  # 10 px = 1 % of 1000, 5 of 500
    for box in ([-11, 0, 100, 100], [0, -6, 100, 100], [0, 0, 1011, 100], [0, 0, 100, 506]):
        assert "outside the 1000x500 image" in box_range_problem(box, (1000, 500), "bbox"), box


def test_ssv2_missing_or_wrong_folder(tmp_path: Path) -> None:
    with pytest.raises(BenchmarkDataError, match=r"expected screenspot_\{mobile,desktop,web\}_v2.json in"):
        list(ScreenSpotV2(str(tmp_path / "nope")).load())
    (tmp_path / "other.json").write_text("[]")
    with pytest.raises(BenchmarkDataError, match="expected screenspot_"):
        list(ScreenSpotV2(str(tmp_path)).load())
    (tmp_path / "screenspot_web_v2.json").write_text("{not json")
    with pytest.raises(BenchmarkDataError, match="not readable JSON"):
        list(ScreenSpotV2(str(tmp_path)).load())


# ---------------------------------------------------------------------------------------------------
# ScreenSpot-Pro
# ---------------------------------------------------------------------------------------------------


def test_sspro_loader_fields_and_boxes(tmp_path: Path) -> None:
    write_screenspot_pro(tmp_path, per_type=2)
    episodes = list(ScreenSpotPro(str(tmp_path)).load())
    assert len(episodes) == 12 and all(e.steps[0].error is None for e in episodes)
    # files in sorted order: autocad_windows, photoshop_windows, vscode_macos
    assert episodes[0].episode_id == "autocad_windows_0" and episodes[-1].episode_id == "vscode_macos_3"
    step = episodes[-1].steps[0]
    assert sspro_box(3, (1280, 720)) == [460, 300, 540, 330]
    assert step.target["bbox"] == [460.0, 300.0, 540.0, 330.0]
    assert step.meta["group"] == "Dev" and step.meta["ui_type"] == "icon" and step.meta["application"] == "vscode"
    assert step.meta["platform"] == "macos" and step.meta["image_size"] == [1280, 720]
    assert step.image_path == str(tmp_path.resolve() / "images" / "vscode_mac" / "screenshot_3.png")
    assert Path(step.image_path).is_file()


SSPRO_PLAN = {("Dev", "text"): [1, 1], ("Dev", "icon"): [1, 0], ("Creative", "text"): [1, 0],
              ("Creative", "icon"): [0, 0], ("CAD", "text"): [1, 1], ("CAD", "icon"): [1, 1]}


def test_sspro_golden_metrics(tmp_path: Path) -> None:
    write_screenspot_pro(tmp_path, per_type=2)
    # scored with a runner size of (1, 1): normalised by the annotation's img_size (the runner's is a fallback)
    out = planned_aggregate(ScreenSpotPro(str(tmp_path)), SSPRO_PLAN, ("group", "ui_type"), lambda key: (1280, 720),
                            runner_size=(1, 1))
    assert out["accuracy"] == pytest.approx(8 / 12) and out["micro_accuracy"] == out["accuracy"]
    assert out["text_acc"] == pytest.approx(5 / 6) and out["icon_acc"] == pytest.approx(3 / 6)
    assert out["Dev_acc"] == 0.75 and out["Creative_acc"] == 0.25 and out["CAD_acc"] == 1.0
    assert out["Dev_text_acc"] == 1.0 and out["Dev_icon_acc"] == 0.5 and out["Creative_icon_acc"] == 0.0
    assert out["Dev_icon_n"] == 2.0
    assert out["app_vscode_acc"] == 0.75 and out["app_photoshop_acc"] == 0.25 and out["app_autocad_acc"] == 1.0


def test_sspro_bad_data_becomes_error_steps(tmp_path: Path) -> None:
    write_screenspot_pro(tmp_path, per_type=1)
    file = tmp_path / "annotations" / "vscode_macos.json"
    records = json.loads(file.read_text())
    records[0]["img_filename"] = "vscode_mac/gone.png"
    records[1]["bbox"] = [1200, 700, 1400, 760]  # beyond 1280x720
    file.write_text(json.dumps(records))
    other = tmp_path / "annotations" / "autocad_windows.json"
    records = json.loads(other.read_text())
    del records[0]["bbox"]
    records[1]["id"] = records[0]["id"]  # duplicate id: gets a unique one
    other.write_text(json.dumps(records))

    episodes = list(ScreenSpotPro(str(tmp_path)).load())
    assert len(episodes) == 6 and len({e.episode_id for e in episodes}) == 6
    errors = {e.episode_id: e.steps[0].error for e in episodes if e.steps[0].error}
    assert set(errors) == {"vscode_macos_0", "vscode_macos_1", "autocad_windows_0"}
    assert "vscode_macos.json [0]" in errors["vscode_macos_0"] and "gone.png" in errors["vscode_macos_0"]
    assert "'img_filename'" in errors["vscode_macos_0"]
    assert "vscode_macos.json [1]" in errors["vscode_macos_1"] and "outside the 1280x720" in errors["vscode_macos_1"]
    assert "autocad_windows.json [0]" in errors["autocad_windows_0"] and "'bbox'" in errors["autocad_windows_0"]


def test_sspro_missing_or_wrong_folder(tmp_path: Path) -> None:
    with pytest.raises(BenchmarkDataError, match=r"expected annotations/\*.json"):
        list(ScreenSpotPro(str(tmp_path / "nope")).load())
    (tmp_path / "annotations").mkdir()
    with pytest.raises(BenchmarkDataError, match=r"expected annotations/\*.json"):
        list(ScreenSpotPro(str(tmp_path)).load())
