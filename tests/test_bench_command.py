"""``starkv-eval bench compress`` runs and reports every ratio it promises (no timing assertions)."""

from __future__ import annotations

import json

import starkv
from pipeline.cli import main


def test_bench_compress_quick_json(capsys):
    assert main(["bench", "compress", "--quick", "--json", "--repeats", "1"]) == 0
    data = json.loads(capsys.readouterr().out)
    (rep,) = data["reports"]
    expected = set(starkv.available()) - {"full"}
    assert set(rep["selection_ms"]) == expected
    assert all(v > 0 for v in rep["selection_ms"].values())
    assert rep["mi_step_ms"] > 0 and rep["layer_prefill_ms"] > 0
    assert set(rep["selection_over_layer"]) == expected
    assert rep["starkv_over_snapkv"] == rep["selection_ms"]["starkv"] / rep["selection_ms"]["snapkv"]


def test_bench_compress_table(capsys):
    assert main(["bench", "compress", "--quick", "--no-layer", "--repeats", "1", "--compressor", "snapkv",
                 "--compressor", "starkv"]) == 0
    out = capsys.readouterr().out
    assert "STaR-KV / SnapKV selection" in out and "MI step" in out
