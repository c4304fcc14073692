"""``starkv-eval list compressors``: the unit options (kv_quant, kv_layout) are listed after the methods."""

from __future__ import annotations

from pipeline.commands.listing import compressor_rows, render


def test_kv_quant_is_a_quantization_row_after_the_methods():
    rows = compressor_rows()
    assert [r["name"] for r in rows[-2:]] == ["kv_quant", "kv_layout=per_query_head"]
    quant = rows[-2]
    assert quant["family"] == "quantization" and quant["quantized"] is True
    assert quant["paper"] == "https://arxiv.org/abs/2402.02750"
    assert not any(r["quantized"] for r in rows if r is not quant)  # no method stores quantized by itself
    line = next(line for line in render(rows).splitlines() if line.startswith("kv_quant"))
    assert line.split()[:3] == ["kv_quant", "quantization", "yes"]
