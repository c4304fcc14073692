"""``starkv-eval list compressors``: the unit option kv_quant is listed after the methods."""

from __future__ import annotations

from pipeline.commands.listing import compressor_rows, render


def test_kv_quant_is_a_quantization_row_after_the_methods():
    rows = compressor_rows()
    assert rows[-1]["name"] == "kv_quant"
    assert rows[-1]["family"] == "quantization" and rows[-1]["quantized"] is True
    assert rows[-1]["paper"] == "https://arxiv.org/abs/2402.02750"
    assert not any(r["quantized"] for r in rows[:-1])  # no method stores quantized by itself
    line = next(line for line in render(rows).splitlines() if line.startswith("kv_quant"))
    assert line.split()[:3] == ["kv_quant", "quantization", "yes"]
