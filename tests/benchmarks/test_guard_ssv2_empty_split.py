"""ScreenSpot-v2 ``protocol: reference``: a split whose every screenshot is missing still counts 0 in the macro.

The driver skips samples whose screenshot is missing, then averages the text (and icon) accuracy over
every split it ran, a split with no sample of a type left giving 0 (docs/benchmarks/parity.md). An
emptied cell is pinned in tests/benchmarks/test_parity_screenspot_mind2web.py; here a whole split is emptied.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.benchmarks.screenspot_v2.benchmark import ScreenSpotV2
from tests.fixtures.benchmarks import write_screenspot_v2
from tests.helpers_benchmarks import box_click_rows

MISS = {"mobile_0001"}  # the one scored sample answered outside its box


def test_ssv2_reference_counts_a_split_with_every_screenshot_missing_as_zero(tmp_path: Path):
    write_screenspot_v2(tmp_path, per_cell=2)  # per split: samples 00, 01 text; 02, 03 icon (4 per split)
    for k in range(4):
        (tmp_path / "screenspotv2_image" / f"desktop_{k:02d}.png").unlink()
    reference = ScreenSpotV2(str(tmp_path), protocol="reference")
    episodes = list(reference.load())
    assert len(episodes) == 12
    assert sorted(e.episode_id for e in episodes if e.steps[0].meta["image_missing"]) == \
        [f"desktop_{k:04d}" for k in range(4)]
    rows = box_click_rows(reference, episodes, miss=MISS)
    # scored: mobile text 1/2 (mobile_0001 missed), mobile icon 2/2, web text 2/2, web icon 2/2
    assert sum(r["correct"] for r in rows) == 7
    out = reference.aggregate(rows)

    # hand-worked: desktop ran but every sample is skipped -> its text and icon cells are 0, not left out
    #   text mean = (1/2 + 0 + 1) / 3 = 1/2; icon mean = (1 + 0 + 1) / 3 = 2/3
    #   overall   = (1/2 + 2/3) / 2 = 7/12   (dropping desktop would give ((3/4) + 1) / 2 = 7/8)
    assert out["text_acc"] == pytest.approx(1 / 2)
    assert out["icon_acc"] == pytest.approx(2 / 3)
    assert out["overall_macro"] == pytest.approx(7 / 12)
    assert out["accuracy"] == out["overall_macro"]
    # the skipped samples are not steps of the run: 8 scored, 7 correct
    assert out["num_steps"] == 8.0
    assert out["micro_accuracy"] == pytest.approx(7 / 8)
    assert out["mobile_acc"] == pytest.approx(3 / 4) and out["web_acc"] == 1.0
