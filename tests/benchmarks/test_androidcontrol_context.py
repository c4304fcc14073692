"""AndroidControl history frames from ``android_control_test.json`` for a sparse sample (STaR-KV driver).

Golden values follow the driver (``androidcontrol_eval.py``, ``--use_history_frames``, ``--image_slots 5``):
a sampled step ``s`` shows the episode's steps ``max(0, s - 4) .. s - 1`` as screenshot + assistant turn
``"Step k+1:\\n<step instruction>\\n"`` (the record's ``previous_actions[k]`` when the instruction is
empty), skipping frames whose screenshot is missing; they are never run and get no rows.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import starkv
from pipeline.benchmarks.androidcontrol.benchmark import AndroidControlBenchmark
from pipeline.benchmarks.common.base import BenchmarkDataError
from pipeline.config import AgentConfig
from pipeline.metrics.units import Unit
from pipeline.step.engine import EpisodeRunner
from tests.fixtures.reference import default_androidcontrol_steps, write_androidcontrol_steps

SPARSE = {(501, 3), (502, 1)}  # two of the fixture's six steps


def _context(bench: AndroidControlBenchmark) -> dict[tuple[str, int], list[tuple[int, str]] | str]:
    return {(e.episode_id, s.step_index): s.error or [(c["step_index"], c["text"]) for c in s.meta["context"]]
            for e in bench.load() for s in e.steps}


def test_sampled_steps_get_their_skipped_steps_as_context(tmp_path: Path):
    write_androidcontrol_steps(tmp_path, sample=SPARSE)
    assert _context(AndroidControlBenchmark(str(tmp_path), protocol="reference")) == {
        ("501", 3): [(0, "Tap the search bar\n"), (1, "Type hello\n"), (2, "Open the Notes app\n")],
        ("502", 1): [(0, "Tap the corner\n")]}
    # at most context_frames of them, the latest
    two = AndroidControlBenchmark(str(tmp_path), protocol="reference", context_frames=2)
    assert _context(two)[("501", 3)] == [(1, "Type hello\n"), (2, "Open the Notes app\n")]
    # official: only when named; false turns the default off in reference mode
    assert "context" not in AndroidControlBenchmark(str(tmp_path)).load()[0].steps[0].meta
    named = AndroidControlBenchmark(str(tmp_path), episodes_file=str(tmp_path / "android_control_test.json"))
    assert len(_context(named)[("501", 3)]) == 3
    off = AndroidControlBenchmark(str(tmp_path), protocol="reference", episodes_file=False)
    assert "context" not in off.load()[0].steps[0].meta


def test_missing_frame_screenshot_is_skipped_and_an_empty_instruction_uses_previous_actions(tmp_path: Path):
    records = default_androidcontrol_steps()
    for rec in records:
        if (rec["episode_id"], rec["step_index"]) == (501, 0):
            rec["step_instruction"] = ""
    write_androidcontrol_steps(tmp_path, records, sample=SPARSE)
    (tmp_path / "501" / "1.png").unlink()
    context = _context(AndroidControlBenchmark(str(tmp_path), protocol="reference"))
    # frame 0 falls back to the sampled record's previous_actions[0]; frame 1 has no screenshot
    assert context[("501", 3)] == [(0, "Tap the search bar\n"), (2, "Open the Notes app\n")]


def test_bad_index_entries_become_error_rows_naming_file_and_field(tmp_path: Path):
    write_androidcontrol_steps(tmp_path, sample=SPARSE)
    index_file = tmp_path / "android_control_test.json"
    index = json.loads(index_file.read_text())
    index[0]["episode"]["screenshot_paths"] = "501/0.png"  # episode 501
    index_file.write_text(json.dumps(index[:1]))  # and episode 502 is gone
    context = _context(AndroidControlBenchmark(str(tmp_path), protocol="reference"))
    assert context[("501", 3)].startswith(f"{index_file} [0]: field 'episode.screenshot_paths'")
    assert context[("502", 1)].startswith(f"{index_file}: episode 502 (field 'episode.episode_id')")
    index_file.write_text(json.dumps({"episode": {}}))
    with pytest.raises(BenchmarkDataError, match="android_control_test.json holds a dict"):
        AndroidControlBenchmark(str(tmp_path), protocol="reference").load()
    with pytest.raises(BenchmarkDataError, match="option episodes_file: .*nowhere.json does not exist"):
        AndroidControlBenchmark(str(tmp_path), episodes_file=str(tmp_path / "nowhere.json")).load()
    with pytest.raises(ValueError, match="context_frames"):
        AndroidControlBenchmark(str(tmp_path), protocol="reference", context_frames=-1).load()


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    from pipeline.models.loader import ModelSpec, load_model

    return load_model(ModelSpec(path=str(tiny_model_dir), device="cpu", dtype="float32"))


def test_context_frames_reach_the_prompt_without_calls_or_rows(loaded, tmp_path: Path):
    """End to end through the runner: step 3 of episode 501 alone in the sample, its steps 0-2 as history."""
    write_androidcontrol_steps(tmp_path, sample={(501, 3)}, sizes={"501": (270, 600)})
    bench = AndroidControlBenchmark(str(tmp_path), protocol="reference")
    (episode,) = bench.load()
    runner = EpisodeRunner(loaded, bench, AgentConfig(), max_new_tokens=2, memory_accounting=False)
    texts = []
    template = loaded.processor.apply_chat_template

    def recorded(*args, **kwargs):
        texts.append(template(*args, **kwargs))
        return texts[-1]

    loaded.processor.apply_chat_template = recorded
    try:
        rows = runner.run(episode, starkv.build("snapkv"), Unit(run_id="r", compressor="snapkv", budget=50.0,
                                                                model="tiny"))
    finally:
        del loaded.processor.apply_chat_template
    assert len(rows) == 1 and rows[0]["error"] is None and rows[0]["step_index"] == 3
    assert len(texts) == 1 and rows[0]["model_calls"] == 1  # one model call: the context is not run
    assert rows[0]["num_images"] == 4  # three context screenshots + the current one
    (text,) = texts
    turns = ["Step 1:\nTap the search bar\n<|im_end|>", "Step 2:\nType hello\n<|im_end|>",
             "Step 3:\nOpen the Notes app\n<|im_end|>"]
    positions = [text.index(t) for t in turns]
    assert positions == sorted(positions) and text.count("<|vision_start|>") == 4
    assert "## Previous Actions\n\n" in text  # the driver leaves the section empty with history frames


def test_one_screenshot_mode_uses_the_records_previous_actions(tmp_path: Path):
    """The driver's default mode (no history frames): one screenshot, "## Previous Actions" = the sampled
    record's own ``previous_actions`` (with reference), not the earlier loaded steps (none here)."""
    from PIL import Image

    from pipeline.agent.history import HistoryConfig
    from pipeline.step.prompt import StepHistory, step_messages

    write_androidcontrol_steps(tmp_path, sample={(501, 3)})
    prompts = {}
    for protocol in ("official", "reference"):
        bench = AndroidControlBenchmark(str(tmp_path), protocol=protocol)
        (episode,) = bench.load()
        agent = AgentConfig(image_slots=1).resolved(bench)
        messages, images = step_messages(bench, agent, HistoryConfig(image_slots=1), episode, episode.steps[0],
                                         Image.new("RGB", (8, 8)), StepHistory.for_agent(agent))
        prompts[protocol] = messages[-1]["content"][-1]["text"]
        assert len(images) == 1
    assert "## Previous Actions\nTap the search bar\nType hello\nOpen the Notes app\n" in prompts["reference"]
    assert "## Previous Actions\n\n" in prompts["official"]  # official: the loaded steps' texts (none)
