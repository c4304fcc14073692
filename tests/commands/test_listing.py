"""``starkv-eval list compressors``: every registered method once, with family, paper and traits."""

from __future__ import annotations

import json

import starkv
from pipeline.cli import main


def test_list_compressors_json_has_every_method_and_known_traits(capsys):
    assert main(["list", "compressors", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(starkv.available()) <= set(rows)
    # facts of the methods, from their papers: SnapKV scores with the window's queries, one budget per layer;
    # PyramidKV shapes the budget over layers; StreamingLLM keeps sinks and recent tokens, no query
    assert rows["snapkv"]["query_aware"] and not rows["snapkv"]["layer_adaptive"]
    assert rows["snapkv"]["paper"] == "https://arxiv.org/abs/2404.14469"
    assert rows["pyramidkv"]["layer_adaptive"] and rows["pyramidkv"]["query_aware"]
    assert not rows["streamingllm"]["query_aware"] and rows["streamingllm"]["family"] == "eviction"
    assert rows["full"]["family"] == "reference" and not rows["full"]["layer_adaptive"] and rows["full"]["paper"] == ""


def test_list_compressors_table_lines_up(capsys):
    assert main(["list", "compressors"]) == 0
    lines = capsys.readouterr().out.splitlines()
    head = lines[0].split()
    assert head[:2] == ["name", "family"] and head[-1] == "paper"
    assert {"query-aware", "head-adaptive", "layer-adaptive", "merging", "pruning", "quantized"} <= set(head)
    snap = next(line for line in lines if line.startswith("snapkv "))
    # "yes" sits under the query-aware title
    assert snap[lines[0].index("query-aware"):].startswith("yes")
