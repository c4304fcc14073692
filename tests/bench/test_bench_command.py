"""``starkv-eval bench compress``: the JSON's structure and the relations its figures must satisfy.

No speed is asserted (timings depend on the machine and its load); only what holds on any machine.
"""

from __future__ import annotations

import json
import math

import starkv
from pipeline.cli import main

# --quick: 2 screenshots of 256 tokens, 40 tokens before the first, 20 between, 30 after the last
QUICK_PROMPT_TOKENS = 40 + 256 + 20 + 256 + 30
QUICK_DIMS = {"num_heads": 4, "num_kv_heads": 2, "head_dim": 32, "hidden": 128, "intermediate": 256}
REPORT_KEYS = {"scenario", "prompt_tokens", "budget", "selection_ms", "mi_step_ms", "layer_prefill_ms",
               "starkv_over_snapkv", "selection_over_layer"}


def _positive(x) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


def test_bench_compress_quick_json(capsys):
    assert main(["bench", "compress", "--quick", "--json", "--repeats", "3"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) == {"threads", "device", "dtype", "dims", "reports"}
    assert data["device"] == "cpu" and data["dtype"] == "float32" and data["threads"] >= 1
    assert data["dims"] == QUICK_DIMS
    (rep,) = data["reports"]  # --quick: its one scenario, in place of the two full-size ones
    assert set(rep) == REPORT_KEYS
    assert rep["scenario"] == "quick: 2 screenshots of 256 tokens"
    assert rep["prompt_tokens"] == QUICK_PROMPT_TOKENS and rep["budget"] == 20.0
    expected = set(starkv.available()) - {"full"}  # full selects nothing
    assert set(rep["selection_ms"]) == expected and all(_positive(v) for v in rep["selection_ms"].values())
    # STaR-KV's selection runs an MI step on the same screenshot, so it cannot take less than that step
    assert _positive(rep["mi_step_ms"]) and rep["selection_ms"]["starkv"] >= rep["mi_step_ms"]
    assert rep["starkv_over_snapkv"] == rep["selection_ms"]["starkv"] / rep["selection_ms"]["snapkv"]
    layer = rep["layer_prefill_ms"]
    assert _positive(layer)
    assert set(rep["selection_over_layer"]) == expected
    for name, frac in rep["selection_over_layer"].items():
        assert math.isclose(frac, rep["selection_ms"][name] / layer, rel_tol=1e-12), name


def test_bench_compress_without_layer_and_for_chosen_compressors(capsys):
    assert main(["bench", "compress", "--quick", "--json", "--no-layer", "--repeats", "1",
                 "--compressor", "streamingllm"]) == 0
    (rep,) = json.loads(capsys.readouterr().out)["reports"]
    assert list(rep["selection_ms"]) == ["streamingllm"]
    # nothing to relate to: no layer measured, no STaR-KV / SnapKV pair
    assert rep["layer_prefill_ms"] is None and rep["selection_over_layer"] == {}
    assert rep["starkv_over_snapkv"] is None and _positive(rep["mi_step_ms"])


def test_bench_compress_table(capsys):
    assert main(["bench", "compress", "--quick", "--no-layer", "--repeats", "1", "--compressor", "snapkv",
                 "--compressor", "starkv"]) == 0
    out = capsys.readouterr().out
    assert "L = 602" in out and "one decoder layer prefill: not measured" in out
    rows = [line.split()[0] for line in out.splitlines() if line.startswith("  ") and line.split()[0] in
            set(starkv.available())]
    assert rows == ["snapkv", "starkv"]
    assert "STaR-KV / SnapKV selection" in out and "MI step" in out
