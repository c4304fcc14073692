"""Synthetic benchmark: generator determinism and shape, loader round-trip and bad data, scoring, aggregate."""

from __future__ import annotations

import json
import os
from pathlib import Path

import fsspec
import pytest
from PIL import Image

from pipeline.agent.actions import ParsedAction
from pipeline.benchmarks import BENCHMARKS, get_benchmark
from pipeline.benchmarks.common.base import BenchmarkDataError, Episode, Step
from pipeline.benchmarks.common.scoring import (
    box_center,
    l2_distance,
    normalize_box,
    normalize_point,
    point_in_box,
    xywh_to_xyxy,
    xyxy_to_xywh,
)
from pipeline.benchmarks.synthetic import benchmark as syn
from pipeline.benchmarks.synthetic.benchmark import (
    SyntheticBenchmark,
    ensure_synthetic_dataset,
    generate_synthetic,
)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return generate_synthetic(tmp_path_factory.mktemp("syn") / "data", num_episodes=8, seed=0)


def _annotations(root: Path) -> dict:
    return json.loads((root / "synthetic.json").read_text())


# --- generator -------------------------------------------------------------------------------------


def test_same_seed_gives_identical_bytes(tmp_path):
    a = generate_synthetic(tmp_path / "a", num_episodes=3, seed=7)
    b = generate_synthetic(tmp_path / "b", num_episodes=3, seed=7)
    assert (a / "synthetic.json").read_bytes() == (b / "synthetic.json").read_bytes()
    pngs = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert pngs and pngs == sorted(p.relative_to(b) for p in b.rglob("*.png"))
    for rel in pngs:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    c = generate_synthetic(tmp_path / "c", num_episodes=3, seed=8)
    assert (c / "synthetic.json").read_bytes() != (a / "synthetic.json").read_bytes()


def test_episode_prefix_does_not_depend_on_count(tmp_path):
    small = _annotations(generate_synthetic(tmp_path / "s", num_episodes=2, seed=1))["episodes"]
    large = _annotations(generate_synthetic(tmp_path / "l", num_episodes=4, seed=1))["episodes"]
    assert [e["episode_id"] for e in small] == ["ep0000", "ep0001"]
    # Same episode content for the same index (resolutions are dealt by index, too).
    assert small == large[:2]


def test_format_and_ground_truth(dataset):
    data = _annotations(dataset)
    assert data["format"] == "starkv-synthetic" and data["version"] == 1
    episodes = data["episodes"]
    assert len(episodes) == 8
    sizes = set()
    for ep in episodes:
        assert ep["goal"]
        assert 3 <= len(ep["steps"]) <= 6
        for k, st in enumerate(ep["steps"]):
            assert st["step_index"] == k
            assert st["image"] == f"images/{ep['episode_id']}/{k}.png"
            w, h = st["image_size"]
            sizes.add((w, h))
            assert (w, h) in syn.DEFAULT_RESOLUTIONS
            with Image.open(dataset / st["image"]) as im:
                assert im.size == (w, h)
            x1, y1, x2, y2 = st["bbox"]
            assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
            assert st["element_type"] in ("button", "icon", "text_field")
            assert st["instruction"].startswith("Click the ")
            assert st["history_text"] == "Clicked" + st["instruction"][len("Click"):]
    assert len(sizes) >= 2  # smart_resize paths see several resolutions


def test_target_is_drawn_inside_its_box(dataset):
    """The ground-truth box is not empty background: its pixels differ from the window colour."""
    st = _annotations(dataset)["episodes"][0]["steps"][0]
    with Image.open(dataset / st["image"]) as im:
        rgb = im.convert("RGB")
    crop = rgb.crop(tuple(st["bbox"]))
    assert len(crop.getcolors(maxcolors=1 << 16)) >= 2


def test_step_count_bounds_and_validation(tmp_path):
    data = _annotations(generate_synthetic(tmp_path / "x", num_episodes=3, min_steps=2, max_steps=2,
                                           resolutions=((640, 480),)))
    assert [len(e["steps"]) for e in data["episodes"]] == [2, 2, 2]
    assert {tuple(s["image_size"]) for e in data["episodes"] for s in e["steps"]} == {(640, 480)}
    with pytest.raises(ValueError):
        generate_synthetic(tmp_path / "y", num_episodes=1, min_steps=4, max_steps=3)


# --- loader ----------------------------------------------------------------------------------------


def test_registry_and_load_round_trip(dataset):
    assert get_benchmark("synthetic") is SyntheticBenchmark and BENCHMARKS["synthetic"] is SyntheticBenchmark
    assert SyntheticBenchmark.prompt_kind == "computer"
    episodes = list(SyntheticBenchmark(str(dataset)).load())
    raw = _annotations(dataset)["episodes"]
    assert [e.episode_id for e in episodes] == [r["episode_id"] for r in raw]
    for ep, r in zip(episodes, raw):
        assert ep.benchmark == "synthetic" and ep.goal == r["goal"]
        assert len(ep.steps) == len(r["steps"])
        for st, rs in zip(ep.steps, r["steps"]):
            assert st.error is None
            assert os.path.isabs(st.image_path) and os.path.isfile(st.image_path)
            assert st.image_path == str((dataset / rs["image"]).resolve())
            assert st.instruction == rs["instruction"] and st.history_text == rs["history_text"]
            assert st.target == {"bbox": rs["bbox"], "element_type": rs["element_type"]}
            assert st.meta["element_type"] == rs["element_type"]
        assert Episode.from_row(ep.to_row()) == ep
    # The annotation file itself is accepted as the path, too.
    assert list(SyntheticBenchmark(str(dataset / "synthetic.json")).load()) == episodes


def test_bad_steps_become_error_steps(tmp_path):
    root = generate_synthetic(tmp_path / "bad", num_episodes=2, seed=0)
    data = _annotations(root)
    ep0, ep1 = data["episodes"]
    (root / ep0["steps"][1]["image"]).unlink()
    del ep1["steps"][0]["bbox"]
    w, h = ep1["steps"][1]["image_size"]
    ep1["steps"][1]["bbox"] = [10, 10, w + 5, 20]
    ep1["steps"][2]["bbox"] = "not a box"
    (root / "synthetic.json").write_text(json.dumps(data))

    episodes = list(SyntheticBenchmark(str(root)).load())
    assert [len(e.steps) for e in episodes] == [len(ep0["steps"]), len(ep1["steps"])]
    missing = episodes[0].steps[1].error
    assert missing is not None
    assert missing.startswith("episode ep0000 step 1:")
    assert str((root / ep0["steps"][1]["image"]).resolve()) in missing and "'image'" in missing
    assert episodes[1].steps[0].error == "episode ep0001 step 0: field 'bbox' missing"
    out_of_bounds = episodes[1].steps[1].error
    assert out_of_bounds and "field 'bbox'" in out_of_bounds and f"{w}x{h}" in out_of_bounds
    assert "field 'bbox' malformed" in episodes[1].steps[2].error
    bad = {(0, 1), (1, 0), (1, 1), (1, 2)}
    for i, ep in enumerate(episodes):
        for k, st in enumerate(ep.steps):
            assert (st.error is not None) == ((i, k) in bad), (i, k, st.error)


def test_missing_path_and_bad_files_raise(tmp_path):
    with pytest.raises(BenchmarkDataError, match="synthetic.json"):
        list(SyntheticBenchmark(str(tmp_path / "nope")).load())
    (tmp_path / "empty").mkdir()
    with pytest.raises(BenchmarkDataError, match="synthetic.json"):
        list(SyntheticBenchmark(str(tmp_path / "empty")).load())
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "synthetic.json").write_text("{not json")
    with pytest.raises(BenchmarkDataError, match="JSON"):
        list(SyntheticBenchmark(str(tmp_path / "junk")).load())
    (tmp_path / "junk" / "synthetic.json").write_text(json.dumps({"format": "other", "episodes": []}))
    with pytest.raises(BenchmarkDataError, match="format"):
        list(SyntheticBenchmark(str(tmp_path / "junk")).load())


def _as_remote(text, local: Path, url: str):
    return text.replace(str(local.resolve()), url) if text is not None else None


def test_memory_url_loads_like_local(dataset, memory_copy):
    from pipeline.benchmarks.common.storage import open_screenshot

    url = memory_copy(dataset, "syn-remote")
    local = list(SyntheticBenchmark(str(dataset)).load())
    remote = list(SyntheticBenchmark(url).load())
    assert [e.episode_id for e in remote] == [e.episode_id for e in local]
    assert [e.goal for e in remote] == [e.goal for e in local]
    for r, lo in zip((s for e in remote for s in e.steps), (s for e in local for s in e.steps)):
        assert (r.step_index, r.instruction, r.target, r.history_text, r.meta, r.error) == \
            (lo.step_index, lo.instruction, lo.target, lo.history_text, lo.meta, lo.error)
        assert r.error is None and r.image_path == _as_remote(lo.image_path, dataset, "memory:///syn-remote")
    first = remote[0].steps[0]
    assert first.image_path == "memory:///syn-remote/images/ep0000/0.png"
    assert open_screenshot(first.image_path).size == tuple(first.meta["image_size"])
    # the annotation file as the path, as a URL too
    assert list(SyntheticBenchmark(f"{url}/synthetic.json").load()) == remote


def test_memory_url_bad_data_and_missing_file(tmp_path, memory_copy):
    root = generate_synthetic(tmp_path / "bad", num_episodes=2, seed=0)
    data = _annotations(root)
    ep0, ep1 = data["episodes"]
    (root / ep0["steps"][1]["image"]).unlink()
    del ep1["steps"][0]["bbox"]
    (root / "synthetic.json").write_text(json.dumps(data))
    url = memory_copy(root, "syn-bad")
    local = list(SyntheticBenchmark(str(root)).load())
    remote = list(SyntheticBenchmark(url).load())
    assert [e.episode_id for e in remote] == [e.episode_id for e in local] == ["ep0000", "ep0001"]
    errors = [s.error for e in remote for s in e.steps]
    assert errors == [_as_remote(s.error, root, "memory:///syn-bad") for e in local for s in e.steps]
    assert sum(e is not None for e in errors) == 2
    assert f"image file 'memory:///syn-bad/{ep0['steps'][1]['image']}' (field 'image') not found" in errors[1]
    with pytest.raises(BenchmarkDataError, match="memory:///syn-nope/synthetic.json"):
        list(SyntheticBenchmark("memory://syn-nope").load())
    fsspec.filesystem("memory").pipe("/syn-bad/synthetic.json", b"{not json")
    with pytest.raises(BenchmarkDataError, match="memory:///syn-bad/synthetic.json is not readable JSON"):
        list(SyntheticBenchmark(url).load())


# --- scoring ---------------------------------------------------------------------------------------

# bbox [100, 50, 300, 150] px in a 1000 x 500 image -> (0.1, 0.1, 0.3, 0.3) normalised.
STEP = Step(step_index=0, image_path="/x.png", instruction="Click the 'Save' button",
            target={"bbox": [100, 50, 300, 150], "element_type": "button"})
SIZE = (1000, 500)


@pytest.mark.parametrize(("action_type", "point", "correct"), [
    ("click", (0.2, 0.2), True),             # centre
    ("click", (0.1, 0.3), True),             # bottom-left corner, on the edge
    ("click", (0.3, 0.1), True),             # top-right corner, on the edge
    ("click", (0.1 * 3, 0.2), True),         # 0.30000000000000004: edge up to float rounding
    ("click", (0.0999, 0.2), False),         # 0.1 px left of the box
    ("click", (0.2, 0.3001), False),         # just below
    ("click", (0.35, 0.2), False),
    ("left_double", (0.15, 0.15), True),
    ("right_single", (0.29, 0.29), True),
    ("long_press", (0.5, 0.5), False),
])
def test_score_click_points(action_type, point, correct):
    s = SyntheticBenchmark("/unused").score(STEP, ParsedAction(action_type, point=point), SIZE)
    assert s.correct is correct and s.score == (1.0 if correct else 0.0)
    assert s.fields == {"action_type_match": 1}
    assert (s.reason == "") is correct


def test_score_non_click_and_invalid():
    bench = SyntheticBenchmark("/unused")
    s = bench.score(STEP, ParsedAction("type", text="hello"), SIZE)
    assert (s.correct, s.score, s.reason, s.fields) == (False, 0.0, "action type type is not a click",
                                                          {"action_type_match": 0})
    s = bench.score(STEP, ParsedAction("scroll", point=(0.2, 0.2), direction="down"), SIZE)
    assert not s.correct and s.reason == "action type scroll is not a click"
    s = bench.score(STEP, ParsedAction.invalid("garbage", "no Action: line"), SIZE)
    assert (s.correct, s.score, s.reason) == (False, 0.0, "no Action: line")
    s = bench.score(STEP, ParsedAction("click"), SIZE)
    assert not s.correct and s.score == 0.0


def test_scoring_helpers():
    assert xywh_to_xyxy([10, 20, 30, 40]) == (10.0, 20.0, 40.0, 60.0)
    assert xyxy_to_xywh([10, 20, 40, 60]) == (10.0, 20.0, 30.0, 40.0)
    assert normalize_point((250, 100), (1000, 500)) == (0.25, 0.2)
    assert normalize_box([100, 50, 300, 150], (1000, 500)) == (0.1, 0.1, 0.3, 0.3)
    assert box_center((0.1, 0.1, 0.3, 0.5)) == pytest.approx((0.2, 0.3))
    assert l2_distance((0.0, 0.0), (0.3, 0.4)) == pytest.approx(0.5)
    assert point_in_box((1, 1), (1, 1, 2, 2)) and point_in_box((2, 2), (1, 1, 2, 2))
    assert not point_in_box((2.001, 1.5), (1, 1, 2, 2))


# --- aggregate -------------------------------------------------------------------------------------


def test_aggregate_golden():
    rows = [
        {"correct": True, "error": None, "meta": {"element_type": "button"}},
        {"correct": False, "error": None, "meta": {"element_type": "button"}},
        {"correct": True, "error": None, "meta_json": json.dumps({"element_type": "icon"})},
        {"correct": False, "error": "episode ep3 step 2: field 'bbox' missing",
         "meta": {"element_type": "text_field"}},
        {"correct": True, "error": None, "meta": {"element_type": "text_field"}},
        {"correct": True, "error": "image unreadable", "meta": {"element_type": "icon"}},  # error = wrong
    ]
    # overall 3/6; button 1/2; icon 1/2; text_field 1/2; two error rows
    assert SyntheticBenchmark("/unused").aggregate(rows) == {
        "accuracy": 0.5, "num_steps": 6.0, "num_errors": 2.0,
        "accuracy_button": 0.5, "accuracy_icon": 0.5, "accuracy_text_field": 0.5}
    assert SyntheticBenchmark("/unused").aggregate(rows[:3]) == {
        "accuracy": pytest.approx(2 / 3), "num_steps": 3.0, "num_errors": 0.0,
        "accuracy_button": 0.5, "accuracy_icon": 1.0}
    assert SyntheticBenchmark("/unused").aggregate([]) == {"accuracy": 0.0, "num_steps": 0.0, "num_errors": 0.0}


# --- cache -----------------------------------------------------------------------------------------


def test_ensure_dataset_generates_once(tmp_path, monkeypatch):
    monkeypatch.setenv("STARKV_CACHE", str(tmp_path / "cache"))
    root = ensure_synthetic_dataset(num_episodes=2, seed=5)
    assert root == tmp_path / "cache" / "synthetic-2-5"
    assert (root / ".complete").is_file() and len(list(SyntheticBenchmark(str(root)).load())) == 2
    assert not [p for p in root.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left

    def boom(*a, **k):
        raise AssertionError("regenerated")

    monkeypatch.setattr(syn, "generate_synthetic", boom)
    assert ensure_synthetic_dataset(num_episodes=2, seed=5) == root


def test_ensure_dataset_replaces_partial_and_refuses_foreign(tmp_path):
    partial = tmp_path / "partial"
    (partial / "images").mkdir(parents=True)
    (partial / "synthetic.json").write_text("{")  # interrupted earlier run: no marker
    assert ensure_synthetic_dataset(partial, num_episodes=1, seed=0) == partial
    assert (partial / ".complete").is_file() and list(SyntheticBenchmark(str(partial)).load())
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("keep me")
    with pytest.raises(FileExistsError):
        ensure_synthetic_dataset(foreign, num_episodes=1, seed=0)
    assert (foreign / "thesis.tex").read_text() == "keep me"
