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
               "starkv_over_snapkv", "selection_over_layer", "selection_flops", "layer_prefill_flops",
               "selection_flops_over_layer"}
# one decoder layer's prefill at the quick dims (L 602, hidden D 128, H 4 query heads and H_kv 2 KV heads of
# d 32, MLP I 256): q, o (D -> H·d = 128), k, v (D -> H_kv·d = 64), gate, up, down (D <-> I); attention QKᵀ and
# AV over the full 602 x 602 scores per query head
QUICK_LAYER_FLOPS = 2 * 602 * (2 * 128 * 128 + 2 * 128 * 64 + 3 * 128 * 256) + 4 * 2 * (2 * 602 * 602 * 32)
# SnapKV: the window's 8 queries per query head against all 602 keys, (8, 32) @ (32, 602)
QUICK_SNAPKV_FLOPS = 4 * 2 * 8 * 602 * 32


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
    # flops, worked out by hand
    assert rep["layer_prefill_flops"] == QUICK_LAYER_FLOPS == 363_087_872
    assert rep["selection_flops"]["snapkv"] == QUICK_SNAPKV_FLOPS == 1_232_896
    assert rep["selection_flops"]["streamingllm"] == 0  # keeps sink + recent tokens: no product
    assert set(rep["selection_flops_over_layer"]) == expected
    for name, share in rep["selection_flops_over_layer"].items():
        assert share == rep["selection_flops"][name] / QUICK_LAYER_FLOPS, name


def test_bench_compress_without_layer_and_for_chosen_compressors(capsys):
    assert main(["bench", "compress", "--quick", "--json", "--no-layer", "--repeats", "1",
                 "--compressor", "streamingllm"]) == 0
    (rep,) = json.loads(capsys.readouterr().out)["reports"]
    assert list(rep["selection_ms"]) == ["streamingllm"]
    # nothing to relate to: no layer measured, no STaR-KV / SnapKV pair
    assert rep["layer_prefill_ms"] is None and rep["selection_over_layer"] == {}
    assert rep["starkv_over_snapkv"] is None and _positive(rep["mi_step_ms"])
    # flops need no timing: the layer is counted on fake tensors
    assert rep["layer_prefill_flops"] == QUICK_LAYER_FLOPS and rep["selection_flops"] == {"streamingllm": 0}


def test_bench_compress_table(capsys):
    assert main(["bench", "compress", "--quick", "--no-layer", "--repeats", "1", "--compressor", "snapkv",
                 "--compressor", "starkv"]) == 0
    out = capsys.readouterr().out
    assert "L = 602" in out and "one decoder layer prefill: not measured" in out
    rows = [line.split()[0] for line in out.splitlines() if line.startswith("  ") and line.split()[0] in
            set(starkv.available())]
    assert rows == ["snapkv", "starkv"]
    assert "STaR-KV / SnapKV selection" in out and "MI step" in out
