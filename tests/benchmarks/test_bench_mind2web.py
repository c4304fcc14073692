"""Multimodal-Mind2Web: parquet loader on fixture data in the hub's format, metric pieces, golden aggregates."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.agent.actions import ParsedAction
from pipeline.benchmarks.common.base import BENCHMARKS, BenchmarkDataError, Step
from pipeline.benchmarks.mind2web.benchmark import Mind2Web, history_text, map_action, op_string, token_f1
from tests.fixtures.benchmarks import mind2web_rows, write_mind2web

PAGE = (640, 960)


def load(tmp_path: Path, **options) -> list:
    return list(Mind2Web(str(tmp_path / "m2w"), cache_dir=str(tmp_path / "cache"), **options).load())


def centre(step: Step, size: tuple[int, int] = PAGE) -> tuple[float, float]:
    x1, y1, x2, y2 = step.target["bbox"]
    return ((x1 + x2) / 2 / size[0], (y1 + y2) / 2 / size[1])


def test_registered() -> None:
    assert BENCHMARKS["mind2web"] is Mind2Web and Mind2Web.prompt_kind == "mind2web"


def test_loader_episodes_steps_and_boxes(tmp_path: Path) -> None:
    rows = mind2web_rows()
    write_mind2web(tmp_path / "m2w", rows=rows[::-1], shards=2)  # steps out of order, over two shards
    episodes = load(tmp_path)
    assert len(episodes) == 2
    travel = next(e for e in episodes if e.goal.startswith("Find one-way"))
    assert travel.episode_id == rows[0]["annotation_id"]
    assert [s.meta["op"] for s in travel.steps] == ["CLICK", "TYPE", "SELECT"]
    assert [s.step_index for s in travel.steps] == [0, 1, 2]
    assert [s.meta["action_uid"] for s in travel.steps] == [r["action_uid"] for r in rows[:3]]
    assert all(s.error is None and s.instruction == travel.goal for s in travel.steps)
    typed = travel.steps[1]  # bounding_box_rect "40,300,300,40" -> xyxy
    assert typed.target == {"op": "TYPE", "value": "New York", "bboxes": [[40.0, 300.0, 340.0, 340.0]],
                            "bbox": [40.0, 300.0, 340.0, 340.0]}
    assert [s.history_text for s in travel.steps] == ["CLICK [One-way]", "TYPE [To] New York",
                                                      "SELECT [Passengers] 2 adults"]
    assert typed.meta["website"] == "exampletravel" and typed.meta["split"] == "test_task"
    assert typed.meta["image_size"] == [640, 960] and typed.meta["annotation_id"] == travel.episode_id
    path = Path(typed.image_path)
    assert path == (tmp_path / "cache" / "mind2web" / travel.episode_id / f"{typed.meta['action_uid']}.png")
    with Image.open(path) as img:
        assert img.size == PAGE
    assert travel.meta["domain"] == "Travel"
    # the cache is reused (same paths, files untouched)
    mtime = path.stat().st_mtime_ns
    again = load(tmp_path)
    assert next(e for e in again if e.episode_id == travel.episode_id).steps[1].image_path == str(path)
    assert path.stat().st_mtime_ns == mtime


def test_fixture_is_readable_by_datasets(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    files = write_mind2web(tmp_path / "m2w")
    ds = datasets.load_dataset("parquet", data_files=[str(f) for f in files], split="train",
                              cache_dir=str(tmp_path / "hf"))
    assert len(ds) == 5 and isinstance(ds.features["screenshot"], datasets.Image)
    assert ds[0]["screenshot"].size == PAGE
    assert json.loads(ds[0]["operation"])["op"] == "CLICK"


def test_viewport_crop(tmp_path: Path) -> None:
    write_mind2web(tmp_path / "m2w")
    travel = next(e for e in load(tmp_path, viewport_height=360) if e.goal.startswith("Find"))
    select = travel.steps[2]  # box y 700..740 on a 960 px page: block 1 would start at 360, the last ends at 960
    assert select.meta["crop_top"] == 600 and select.meta["image_size"] == [640, 360]
    assert select.target["bboxes"] == [[40.0, 100.0, 240.0, 140.0]]
    with Image.open(select.image_path) as img:
        assert img.size == (640, 360)
    first = travel.steps[0]
    assert first.meta["crop_top"] == 0 and first.target["bbox"] == [40.0, 100.0, 160.0, 140.0]


def test_metric_pieces() -> None:
    assert token_f1("TYPE new york city", "TYPE new york") == pytest.approx(6 / 7)  # P 3/4, R 1
    assert token_f1("CLICK", "SELECT 2 adults") == 0.0
    assert token_f1("", "") == 1.0
    assert op_string("CLICK", "ignored") == "CLICK"
    assert op_string("type", "New York") == "TYPE new york"
    assert map_action(ParsedAction(action_type="left_double", point=(0.1, 0.1))) == ("CLICK", "")
    assert map_action(ParsedAction(action_type="type", text="hello\n")) == ("TYPE", "hello")
    assert map_action(ParsedAction(action_type="select", text="2 adults")) == ("SELECT", "2 adults")
    assert map_action(ParsedAction(action_type="hotkey", key="enter")) == ("HOTKEY", "")
    assert history_text("CLICK", "", "[button]  Search -> CLICK") == "CLICK [Search]"
    assert history_text("TYPE", "hi", "") == "TYPE hi"


def test_golden_metrics(tmp_path: Path) -> None:
    write_mind2web(tmp_path / "m2w")
    bench = Mind2Web(str(tmp_path / "m2w"), cache_dir=str(tmp_path / "cache"))
    travel, shop = sorted(bench.load(), key=lambda e: len(e.steps), reverse=True)
    a0, a1, a2 = travel.steps
    b0, b1 = shop.steps
    predictions = [
        (a0, ParsedAction(action_type="click", point=centre(a0))),  # ele 1, F1 1 -> success
        (a1, ParsedAction(action_type="type", text="new york city", point=centre(a1))),  # ele 1, F1 6/7
        (a2, ParsedAction(action_type="click", point=centre(a2))),  # ele 1, "CLICK" vs "SELECT 2 adults": 0
        (b0, ParsedAction(action_type="type", text="Red running shoes\n")),  # no point: ele 0, F1 1
        (b1, ParsedAction(action_type="left_double", point=(0.01, 0.99))),  # ele 0, F1 1
    ]
    rows = []
    for step, action in predictions:
        s = bench.score(step, action, PAGE)
        rows.append({"correct": s.correct, "error": None, "meta": step.meta, "fields": s.fields})
    assert [r["correct"] for r in rows] == [True, False, False, False, False]
    assert [r["fields"]["ele_hit"] for r in rows] == [1, 1, 1, 0, 0]
    assert [r["fields"]["op_f1"] for r in rows] == pytest.approx([1, 6 / 7, 0, 1, 1])
    out = bench.aggregate(rows)
    # macro over tasks: travel (ele 1, op (1 + 6/7 + 0)/3 = 13/21, step 1/3), shop (ele 0, op 1, step 0)
    assert out["ele_acc"] == pytest.approx(0.5)
    assert out["op_f1"] == pytest.approx((13 / 21 + 1) / 2)
    assert out["step_sr"] == pytest.approx(1 / 6) and out["accuracy"] == out["step_sr"]
    assert out["ele_acc_micro"] == pytest.approx(3 / 5)
    assert out["op_f1_micro"] == pytest.approx((3 + 6 / 7) / 5)
    assert out["step_sr_micro"] == pytest.approx(1 / 5)
    assert out["task_sr"] == 0.0 and out["num_tasks"] == 2.0 and out["num_steps"] == 5.0
    # Parquet-style rows (meta_json / fields_json) and flattened fields give the same numbers
    as_json = [{"correct": r["correct"], "error": None, "meta_json": json.dumps(r["meta"]),
                "fields_json": json.dumps(r["fields"])} for r in rows]
    assert bench.aggregate(as_json) == out
    flat = [{"correct": r["correct"], "error": None, "meta": r["meta"], **r["fields"]} for r in rows]
    assert bench.aggregate(flat) == out
    # the runner's rows (pipeline.step.engine): fields inside meta_json under "score_fields"
    runner = [{"correct": r["correct"], "error": None, "episode_id": r["meta"]["annotation_id"],
               "meta_json": json.dumps({**r["meta"], "score_fields": r["fields"]})} for r in rows]
    assert bench.aggregate(runner) == out
    # an error row counts as 0 everywhere; a task with every step right counts for task_sr
    all_right = [dict(r, correct=True, fields={"ele_hit": 1, "op_f1": 1.0}) for r in rows]
    all_right[4] = dict(all_right[4], error="runner failed")
    out2 = bench.aggregate(all_right)
    assert out2["task_sr"] == 0.5 and out2["step_sr_micro"] == pytest.approx(4 / 5)
    assert out2["num_errors"] == 1.0


def test_score_never_raises_on_bad_actions(tmp_path: Path) -> None:
    write_mind2web(tmp_path / "m2w")
    bench = Mind2Web(str(tmp_path / "m2w"), cache_dir=str(tmp_path / "cache"))
    step = next(iter(bench.load())).steps[0]
    s = bench.score(step, ParsedAction.invalid("??", "unparseable"), PAGE)
    assert not s.correct and s.reason == "unparseable" and s.fields["ele_hit"] == 0
    s = bench.score(step, ParsedAction(action_type="click", point=centre(step)), None)  # type: ignore[arg-type]
    assert s.correct  # falls back to meta image_size


def test_bad_rows_become_error_steps(tmp_path: Path) -> None:
    rows = mind2web_rows()
    cand = json.loads(rows[1]["pos_candidates"][0])
    attrs = json.loads(cand["attributes"])
    attrs["bounding_box_rect"] = "-1,-1,-1,-1"  # how Mind2Web marks an element without a box
    cand["attributes"] = json.dumps(attrs)
    rows[1]["pos_candidates"] = [json.dumps(cand)]
    cand = json.loads(rows[2]["pos_candidates"][0])
    attrs = json.loads(cand["attributes"])
    attrs["bounding_box_rect"] = "2000,100,50,20"  # right of the 640 px page
    cand["attributes"] = json.dumps(attrs)
    rows[2]["pos_candidates"] = [json.dumps(cand)]
    rows[3]["screenshot"] = None
    files = write_mind2web(tmp_path / "m2w", rows=rows)
    episodes = load(tmp_path)
    steps = [s for e in episodes for s in e.steps]
    assert len(steps) == 5
    errors = {s.meta["action_uid"]: s.error for s in steps if s.error}
    assert set(errors) == {rows[1]["action_uid"], rows[2]["action_uid"], rows[3]["action_uid"]}
    name = str(files[0].resolve())
    assert all(name in e for e in errors.values())
    assert "row 1" in errors[rows[1]["action_uid"]] and "bounding_box_rect" in errors[rows[1]["action_uid"]]
    assert "'pos_candidates'" in errors[rows[2]["action_uid"]] and "outside the 640x960" in errors[rows[2]["action_uid"]]
    assert "'screenshot'" in errors[rows[3]["action_uid"]]


def test_missing_or_wrong_data(tmp_path: Path) -> None:
    with pytest.raises(BenchmarkDataError, match=r"expected data/test_task-\*.parquet"):
        list(Mind2Web(str(tmp_path / "nope")).load())
    write_mind2web(tmp_path / "m2w", split="test_domain")
    with pytest.raises(BenchmarkDataError, match=r"expected data/test_website-\*.parquet"):
        list(Mind2Web(str(tmp_path / "m2w"), split="test_website").load())
    assert len(list(Mind2Web(str(tmp_path / "m2w"), split="test_domain",
                             cache_dir=str(tmp_path / "c")).load())) == 2
    (tmp_path / "other" / "data").mkdir(parents=True)
    pq.write_table(pa.table({"a": [1]}), tmp_path / "other" / "data" / "test_task-00000-of-00001.parquet")
    with pytest.raises(BenchmarkDataError, match="lacks the Multimodal-Mind2Web column"):
        list(Mind2Web(str(tmp_path / "other")).load())
