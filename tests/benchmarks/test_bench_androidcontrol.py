"""AndroidControl: loader on real-format GZIP TFRecord shards, both scorers, aggregate, bad data."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import fsspec
import pytest

from pipeline.agent.actions import ParsedAction
from pipeline.benchmarks.androidcontrol.benchmark import (
    AndroidControlBenchmark,
    row_value,
    token_f1,
    typing_match,
)
from pipeline.benchmarks.androidcontrol.tfrecord import (
    TFRecordError,
    encode_example,
    frame_record,
    iter_records,
    write_records,
)
from pipeline.benchmarks.common.base import BenchmarkDataError, Episode, Step, get_benchmark
from tests.fixtures.episodes import (
    ACEpisode,
    androidcontrol_example,
    default_androidcontrol_episodes,
    write_androidcontrol,
)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ac")
    write_androidcontrol(root)
    return root


def _bench(root: Path, tmp_path: Path, **options) -> AndroidControlBenchmark:
    return AndroidControlBenchmark(str(root), cache_dir=str(tmp_path / "cache"), **options)


def test_registered():
    cls = get_benchmark("androidcontrol")
    assert cls is AndroidControlBenchmark and cls.prompt_kind == "androidcontrol"


def test_load_test_split(dataset: Path, tmp_path: Path):
    episodes = list(_bench(dataset, tmp_path).load())
    assert [e.episode_id for e in episodes] == ["101", "102"]
    ep = episodes[0]
    assert ep.goal == "Search for hello world in the Notes app" and ep.benchmark == "androidcontrol"
    assert len(ep.steps) == 4 and all(s.error is None for s in ep.steps)
    s0 = ep.steps[0]
    assert s0.image_path == str((tmp_path / "cache" / "androidcontrol" / "101" / "0.png").resolve())
    original = default_androidcontrol_episodes()[0].screenshot_bytes()[0]
    assert Path(s0.image_path).read_bytes() == original
    assert s0.instruction == ep.goal  # high level
    assert s0.history_text == "Tap the search bar"
    assert s0.meta["gt_action"] == {"action_type": "click", "x": 540, "y": 1200}
    assert s0.meta["gt_point"] == [0.5, 0.5] and s0.meta["image_size"] == [1080, 2400]
    assert s0.meta["level"] == "high" and s0.meta["a11y"] is None
    assert [s.meta["gt_action_type"] for s in ep.steps] == ["click", "input_text", "scroll", "navigate_back"]
    # the last screenshot (after the final action) is not a step
    assert not (tmp_path / "cache" / "androidcontrol" / "101" / "4.png").exists()
    ep2 = episodes[1]
    assert ep2.steps[1].meta["gt_point"] == pytest.approx([100 / 720, 200 / 1280])
    # JSON round trip for Ray rows
    assert Episode.from_row(ep.to_row()) == ep
    # loading again reuses the cache
    again = list(_bench(dataset, tmp_path).load())
    assert again == episodes


def test_low_level_and_other_splits(dataset: Path, tmp_path: Path):
    low = list(_bench(dataset, tmp_path, level="low").load())
    assert [s.instruction for s in low[0].steps] == ["Tap the search bar", "Type hello world",
                                                      "Scroll down to see results", "Go back"]
    assert low[0].goal == "Search for hello world in the Notes app"
    assert [e.episode_id for e in _bench(dataset, tmp_path, split="train").load()] == ["103"]
    # shard order: shard 0 holds 101 and 103, shard 1 holds 102
    assert [e.episode_id for e in _bench(dataset, tmp_path, split="all").load()] == ["101", "103", "102"]


def test_option_validation(dataset: Path):
    with pytest.raises(ValueError, match="level"):
        AndroidControlBenchmark(str(dataset), level="mid")
    with pytest.raises(ValueError, match="metric"):
        AndroidControlBenchmark(str(dataset), metric="strict")


# ---------------------------------------------------------------------------------------------------
# Scoring: one prediction per test step, golden values worked out by hand
# ---------------------------------------------------------------------------------------------------

PREDICTIONS = [
    # episode 101 (1080x2400), GT click at (540, 1200) = (0.5, 0.5)
    ParsedAction("click", point=(0.6, 0.55)),  # L2 0.1118 <= 0.14; L-inf (108, 120) px vs thr 108
    ParsedAction("type", text="hello there world"),  # token F1 = 0.8; not a GUI-KV string match
    ParsedAction("scroll", point=(0.5, 0.5), direction="up"),  # GT down: wrong, same axis
    ParsedAction("press_home"),  # GT navigate_back
    # episode 102 (720x1280)
    ParsedAction("open_app", app_name="settings app"),  # GT Settings: F1 = 2/3
    ParsedAction("click", point=(100 / 720, 200 / 1280)),  # GT long_press at the same point
    ParsedAction("press_home"),  # GT navigate_home
    ParsedAction("wait"),  # GT wait
]
COMMON_CORRECT = [True, True, False, False, True, False, True, True]
COMMON_TYPE_MATCH = [True, True, True, False, True, False, True, True]
GUIKV_CORRECT = [False, False, True, False, True, True, True, True]
GUIKV_TYPE_MATCH = [True, True, True, False, True, True, True, True]


def _rows(bench: AndroidControlBenchmark, episodes: list[Episode], flatten: bool) -> list[dict]:
    rows = []
    steps = [(e, s) for e in episodes for s in e.steps]
    for (ep, step), action in zip(steps, PREDICTIONS, strict=True):
        sc = bench.score(step, action, tuple(step.meta["image_size"]))
        row = {"episode_id": ep.episode_id, "step_index": step.step_index, "correct": sc.correct,
               "score": sc.score, "error": None}
        if flatten:  # the runner's layout: StepScore.fields under meta_json["score_fields"]
            row["meta_json"] = json.dumps({**step.meta, "score_fields": sc.fields})
        else:
            row["fields"] = sc.fields
            row["meta"] = step.meta
        rows.append(row)
    return rows


@pytest.mark.parametrize("flatten", [False, True])
def test_common_metric_golden(dataset: Path, tmp_path: Path, flatten: bool):
    bench = _bench(dataset, tmp_path)
    episodes = list(bench.load())
    rows = _rows(bench, episodes, flatten)
    assert [r["correct"] for r in rows] == COMMON_CORRECT
    tm = [row_value(r, "type_match") for r in rows]
    assert tm == COMMON_TYPE_MATCH
    d0 = row_value(rows[0], "distance")
    assert d0 == pytest.approx(math.sqrt(0.1 ** 2 + 0.05 ** 2))
    agg = bench.aggregate(rows)
    assert agg["step_success_rate"] == agg["accuracy"] == pytest.approx(5 / 8)
    assert agg["type_accuracy"] == pytest.approx(6 / 8)
    # grounding: GT click/long_press steps with a type match -> only episode 101 step 0 (correct)
    assert agg["grounding_accuracy"] == 1.0 and agg["num_grounding_steps"] == 1.0
    assert agg["accuracy_click"] == 1.0 and agg["accuracy_long_press"] == 0.0
    assert agg["accuracy_scroll"] == 0.0 and agg["accuracy_wait"] == 1.0
    assert agg["num_steps"] == 8.0 and agg["num_errors"] == 0.0


def test_guikv_metric_golden(dataset: Path, tmp_path: Path):
    bench = _bench(dataset, tmp_path, metric="guikv")
    episodes = list(bench.load())
    rows = _rows(bench, episodes, flatten=False)
    assert [r["correct"] for r in rows] == GUIKV_CORRECT
    assert [r["fields"]["type_match"] for r in rows] == GUIKV_TYPE_MATCH
    agg = bench.aggregate(rows)
    assert agg["step_success_rate"] == pytest.approx(5 / 8)
    assert agg["type_accuracy"] == pytest.approx(7 / 8)
    # grounding: GT click, input_text (101) and long_press (102): only the long_press is right
    assert agg["grounding_accuracy"] == pytest.approx(1 / 3) and agg["num_grounding_steps"] == 3.0


def _click_step(x: float, y: float, size=(1000, 2000), **meta) -> Step:
    gt = {"action_type": "click", "x": x, "y": y}
    return Step(0, "/x.png", meta={"gt_action": gt, "image_size": list(size), **meta})


def _step(gt: dict, size=(1000, 2000), **meta) -> Step:
    return Step(0, "/x.png", meta={"gt_action": gt, "image_size": list(size), **meta})


def test_common_click_radius_boundary():
    bench = AndroidControlBenchmark("unused")
    step = _click_step(500, 1000)  # (0.5, 0.5)
    assert bench.score(step, ParsedAction("click", point=(0.64, 0.5)), (1000, 2000)).correct  # d = 0.14
    assert not bench.score(step, ParsedAction("click", point=(0.6401, 0.5)), (1000, 2000)).correct
    assert not bench.score(step, ParsedAction("click"), (1000, 2000)).correct  # no point
    bad = bench.score(step, ParsedAction.invalid("garbage", "no Action: line"), (1000, 2000))
    assert not bad.correct and bad.score == 0.0 and bad.reason == "no Action: line"


def test_common_text_f1_threshold():
    assert token_f1("a b c", "a b") == pytest.approx(0.8)
    bench = AndroidControlBenchmark("unused")
    step = _step({"action_type": "input_text", "text": "a c"})
    # F1 exactly 0.5 is not enough; the whole string counts, not only its first token
    assert not bench.score(step, ParsedAction("type", text="a b"), (1, 1)).correct
    assert bench.score(step, ParsedAction("type", text="A C\n"), (1, 1)).correct
    long = _step({"action_type": "input_text", "text": "hello wonderful world"})
    assert bench.score(long, ParsedAction("type", text="goodbye wonderful world"), (1, 1)).correct  # F1 2/3


def test_scroll_direction_and_inversion():
    step = _step({"action_type": "scroll", "direction": "down"})
    down, up = ParsedAction("scroll", direction="down"), ParsedAction("scroll", direction="up")
    assert AndroidControlBenchmark("u").score(step, down, (1, 1)).correct
    assert not AndroidControlBenchmark("u").score(step, up, (1, 1)).correct
    assert AndroidControlBenchmark("u", invert_scroll=True).score(step, up, (1, 1)).correct


def test_guikv_rules_without_tree():
    bench = AndroidControlBenchmark("u", metric="guikv")
    # 720 x 1280: thr = max(72, 72) = 72 px
    step = _click_step(360, 640, size=(720, 1280))
    assert bench.score(step, ParsedAction("long_press", point=(432 / 720, 712 / 1280)), (720, 1280)).correct
    assert not bench.score(step, ParsedAction("click", point=(433 / 720, 640 / 1280)), (720, 1280)).correct
    # open_app through a click when the app is named in the goal, not in the status bar
    app = _step({"action_type": "open_app", "app_name": "Settings"}, goal="Open Settings", step_instruction="")
    assert bench.score(app, ParsedAction("click", point=(0.5, 0.5)), (1, 1)).correct
    assert not bench.score(app, ParsedAction("click", point=(0.5, 0.03)), (1, 1)).correct
    back = _step({"action_type": "navigate_back"})
    assert bench.score(back, ParsedAction("press_back"), (1, 1)).correct
    assert bench.score(back, ParsedAction("click", point=(0.05, 0.05)), (1, 1)).correct
    assert not bench.score(back, ParsedAction("click", point=(0.5, 0.5)), (1, 1)).correct
    status = _step({"action_type": "status", "goal_status": "infeasible"})
    assert bench.score(status, ParsedAction("finished", text="The task is infeasible"), (1, 1)).correct
    assert not bench.score(status, ParsedAction("finished", text="done"), (1, 1)).correct
    assert typing_match("John.Doe @ mail.com", "john.doe@mail.com")
    assert typing_match("123457", "123456") and not typing_match("123477", "123456")


# ---------------------------------------------------------------------------------------------------
# Bad data
# ---------------------------------------------------------------------------------------------------

def _write_bad_dataset(root: Path) -> None:
    """One shard: episode 7 with a bad step of every kind, a record without an id, good episode 103."""
    png_ok = default_androidcontrol_episodes()[2].screenshot_bytes()[0]
    ep = ACEpisode(7, "Bad episode", [
        {"action_type": "click", "x": 10, "y": 20},  # screenshot 0 is corrupt bytes: left to the runner
        {"action_type": "swipe", "x": 1, "y": 2},  # unknown type
        {"action_type": "click", "x": 5},  # missing y
        "{not json",
        {"action_type": "wait"},  # no screenshot left for this one
    ], ["a", "b", "c", "d", "e"], size=(540, 960),
        screenshots=[b"not a png at all", png_ok, png_ok, png_ok])
    good = default_androidcontrol_episodes()[2]
    no_id = encode_example({"goal": [b"no episode id"], "actions": ['{"action_type": "wait"}']})
    records = [androidcontrol_example(ep), no_id, androidcontrol_example(good)]
    write_records(root / "android_control-00000-of-00001", records)
    (root / "splits.json").write_text(json.dumps({"test": [7, 103]}))


def test_bad_steps_become_error_rows(tmp_path: Path):
    root = tmp_path / "bad"
    _write_bad_dataset(root)
    episodes = list(AndroidControlBenchmark(str(root), cache_dir=str(tmp_path / "c")).load())
    assert [e.episode_id for e in episodes] == ["7", "103"]  # the record without an id is skipped
    steps = episodes[0].steps
    assert steps[0].error is None and Path(steps[0].image_path).read_bytes() == b"not a png at all"
    assert steps[0].meta["image_size"] == [540, 960]
    shard = str(root / "android_control-00000-of-00001")
    for i, needle in [(1, "actions[1] field 'action_type' is 'swipe'"), (2, "'x' and 'y'"),
                      (3, "actions[3] is not valid JSON"), (4, "screenshots[4] is missing")]:
        assert steps[i].error is not None and shard in steps[i].error and needle in steps[i].error, steps[i].error
    assert episodes[1].steps[0].error is None
    # an error step scores 0 with its error as the reason
    sc = AndroidControlBenchmark("u").score(steps[1], ParsedAction("wait"), (1, 1))
    assert not sc.correct and "swipe" in sc.reason


def test_missing_or_unrecognised_paths(tmp_path: Path):
    with pytest.raises(BenchmarkDataError, match="does not exist.*android_control"):
        list(AndroidControlBenchmark(str(tmp_path / "nope")).load())
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(BenchmarkDataError, match=r"no TFRecord shards .*android_control-\*-of-\*"):
        list(AndroidControlBenchmark(str(tmp_path / "empty")).load())
    nosplits = tmp_path / "nosplits"
    write_records(nosplits / "data.tfrecord.gz", [androidcontrol_example(default_androidcontrol_episodes()[2])])
    with pytest.raises(BenchmarkDataError, match="splits.json"):
        list(AndroidControlBenchmark(str(nosplits)).load())
    assert [e.episode_id for e in AndroidControlBenchmark(str(nosplits), split="all",
                                                          cache_dir=str(tmp_path / "c")).load()] == ["103"]
    (nosplits / "splits.json").write_text(json.dumps({"train": [], "test": []}))
    with pytest.raises(BenchmarkDataError, match="no list for split 'validation'"):
        list(AndroidControlBenchmark(str(nosplits), split="validation").load())


def test_corrupt_shard_is_a_data_error(tmp_path: Path):
    root = tmp_path / "corrupt"
    root.mkdir()
    rec = androidcontrol_example(default_androidcontrol_episodes()[2])
    framed = bytearray(frame_record(rec))
    framed[40] ^= 0xFF
    shard = root / "android_control-00000-of-00001"
    shard.write_bytes(gzip.compress(bytes(framed)))
    (root / "splits.json").write_text(json.dumps({"test": [103]}))
    with pytest.raises(BenchmarkDataError, match=r"android_control-00000-of-00001: record 0 at byte offset 0"):
        list(AndroidControlBenchmark(str(root), cache_dir=str(tmp_path / "c")).load())


# ---------------------------------------------------------------------------------------------------
# Remote data through fsspec (memory:// stands in for a shared filesystem or object store)
# ---------------------------------------------------------------------------------------------------

def test_memory_url_loads_like_local(dataset: Path, tmp_path: Path, memory_copy):
    url = memory_copy(dataset, "ac-remote")
    for options in ({}, {"split": "all", "level": "low"}, {"split": "train"}):
        local = list(_bench(dataset, tmp_path, **options).load())
        remote = list(_bench(url, tmp_path, **options).load())
        assert [e.episode_id for e in remote] == [e.episode_id for e in local] and remote
        assert [e.goal for e in remote] == [e.goal for e in local]
        # same steps (instructions, targets, meta, no errors); screenshots land in the same local cache
        assert [e.steps for e in remote] == [e.steps for e in local]
        assert remote[0].meta["source"].startswith("memory:///ac-remote/android_control-00000-of-")
    step = remote[0].steps[0]
    assert Path(step.image_path).is_file() and step.image_path.startswith(str(tmp_path / "cache"))
    # a single shard given as a URL
    one = list(_bench(f"{url}/android_control-00001-of-00002", tmp_path).load())
    assert [e.episode_id for e in one] == ["102"]


def test_memory_url_bad_data_errors_match_local(tmp_path: Path, memory_copy):
    root = tmp_path / "bad"
    _write_bad_dataset(root)
    url = memory_copy(root, "ac-bad")
    local = list(AndroidControlBenchmark(str(root), cache_dir=str(tmp_path / "c")).load())
    remote = list(AndroidControlBenchmark(url, cache_dir=str(tmp_path / "c")).load())
    assert [e.episode_id for e in remote] == [e.episode_id for e in local] == ["7", "103"]
    errors = [s.error for e in remote for s in e.steps]
    assert sum(e is not None for e in errors) == 4
    assert all("memory:///ac-bad/android_control-00000-of-00001: record 0" in e for e in errors if e)
    assert errors == [s.error.replace(str(root), "memory:///ac-bad") if s.error else None
                      for e in local for s in e.steps]
    assert [s.target for e in remote for s in e.steps] == [s.target for e in local for s in e.steps]


def test_memory_url_missing_paths(tmp_path: Path, memory_copy):
    with pytest.raises(BenchmarkDataError, match="memory:///ac-nope does not exist"):
        list(AndroidControlBenchmark("memory://ac-nope").load())
    nosplits = tmp_path / "nosplits"
    write_records(nosplits / "data.tfrecord.gz", [androidcontrol_example(default_androidcontrol_episodes()[2])])
    url = memory_copy(nosplits, "ac-nosplits")
    with pytest.raises(BenchmarkDataError, match="memory:///ac-nosplits/splits.json does not exist"):
        list(AndroidControlBenchmark(url).load())
    assert [e.episode_id for e in AndroidControlBenchmark(url, split="all", cache_dir=str(tmp_path / "c")).load()] \
        == ["103"]


class _ReadOnlyStream:
    """A forward-only stream (no seek, tell or name), like a pipe or an HTTP body."""

    def __init__(self, data: bytes) -> None:
        self._data, self._pos, self.closed = data, 0, False

    def read(self, n: int = -1) -> bytes:
        end = len(self._data) if n is None or n < 0 else self._pos + n
        chunk, self._pos = self._data[self._pos:end], min(end, len(self._data))
        return chunk


def test_iter_records_reads_urls_and_open_streams(tmp_path: Path, memory_copy):
    records = [androidcontrol_example(e) for e in default_androidcontrol_episodes()]
    write_records(tmp_path / "recs" / "gz.tfrecord.gz", records)
    write_records(tmp_path / "recs" / "plain.tfrecord", records, compression=None)
    url = memory_copy(tmp_path / "recs", "ac-recs")
    for name in ("gz.tfrecord.gz", "plain.tfrecord"):
        assert list(iter_records(f"{url}/{name}")) == records
        with fsspec.open(f"{url}/{name}", "rb") as fh:  # a seekable fsspec file object, left open
            assert list(iter_records(fh)) == records
            assert not fh.closed
        stream = _ReadOnlyStream((tmp_path / "recs" / name).read_bytes())  # GZIP sniffed without seeking
        assert list(iter_records(stream)) == records and not stream.closed
    gz = (tmp_path / "recs" / "gz.tfrecord.gz").read_bytes()
    assert list(iter_records(_ReadOnlyStream(gz), compression="gzip")) == records
    # errors name the URL
    framed = bytearray(frame_record(records[0]))
    framed[40] ^= 0xFF
    fsspec.filesystem("memory").pipe("/ac-recs/bad.gz", gzip.compress(bytes(framed)))
    with pytest.raises(TFRecordError, match=r"memory://ac-recs/bad.gz: record 0 at byte offset 0"):
        list(iter_records(f"{url}/bad.gz"))
