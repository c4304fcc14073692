"""The terminal table and the peak-memory plot say when a unit's peak is a shared sweep's, not its own."""

from __future__ import annotations

from pipeline.results.plots import _peak_spec
from pipeline.results.summary import SHARED_PEAK_NOTE, UnitSummary, format_table

BASE = dict(steps=4.0, errors=0.0, accuracy=0.5, mean_kv_bytes=1.0, mean_kv_bytes_full=2.0,
            max_peak_above_weights_bytes=3 * 2**20, max_peak_mem_bytes=5 * 2**20, mean_prefill_s=0.1,
            mean_decode_s=0.2)


def _units(shared_steps: float) -> list[UnitSummary]:
    return [UnitSummary("snapkv", 20.0, dict(BASE, shared_prefill_steps=shared_steps)),
            UnitSummary("full", 100.0, dict(BASE, shared_prefill_steps=0.0))]


def test_table_notes_shared_prefill_peaks_only_when_a_step_shared():
    shared = format_table(_units(4.0), "cpu_rss_hwm")
    assert shared.splitlines()[-1] == SHARED_PEAK_NOTE and "own peak>W replays each unit alone" in SHARED_PEAK_NOTE
    own = format_table(_units(0.0), "cpu_rss_hwm")
    assert SHARED_PEAK_NOTE not in own and own.splitlines()[-1].startswith("(peak>W: exact live tensor bytes")


def test_peak_plot_title_says_the_peak_is_the_sweeps():
    assert "shared prefill" in _peak_spec(_units(4.0), "cpu_rss_hwm").title
    assert "shared prefill" not in _peak_spec(_units(0.0), "cpu_rss_hwm").title
