"""A unit's MLflow params name its storage options (kv_quant / kv_layout) only when it has them."""

from __future__ import annotations

from pipeline.tracking.mlflow_runs import compressor_params


def test_storage_params_of_a_unit_and_none_for_a_plain_one():
    job = {"compressors": [{"name": "snapkv", "params": {}, "label": None},
                           {"name": "snapkv", "params": {"kernel_size": 7}, "label": None,
                            "kv_quant": {"bits": 4}, "kv_layout": "per_query_head"}]}
    quantized = compressor_params(job, "snapkv+pqh+int4")
    assert quantized["method"] == "snapkv" and quantized["kernel_size"] == "7"
    assert {k: quantized[k] for k in ("kv_layout", "kv_quant.bits", "kv_quant.group_size",
                                      "kv_quant.residual_length")} == {
        "kv_layout": "per_query_head", "kv_quant.bits": "4", "kv_quant.group_size": "32",
        "kv_quant.residual_length": "128"}
    plain = compressor_params(job, "snapkv")
    assert plain["kernel_size"] == "5" and not any(k.startswith("kv_") for k in plain)
