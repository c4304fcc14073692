"""A bad job config fails before any work with one message naming the field (library and CLI)."""

from __future__ import annotations

import copy

import pytest
import yaml

from pipeline.cli import main
from pipeline.config import ConfigError, parse_config

BASE = {
    "name": "t",
    "model": {"path": "tiny"},
    "benchmark": {"name": "synthetic", "options": {"num_episodes": 1}},
    "compressors": [{"name": "snapkv"}],
    "budgets": [20],
}


def _with(**changes):
    data = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        node = data
        *parents, leaf = dotted.split("__")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return data


@pytest.mark.parametrize(("changes", "field"), [
    ({"compressors": [{"name": "nope"}]}, r"compressors\[0\].*unknown compressor 'nope'"),
    ({"compressors": [{"name": "snapkv", "params": {"windw": 3}}]}, r"compressors\[0\].*windw"),
    ({"budgets": [0]}, r"budgets\[0\]: 0 is outside \(0, 100\]"),
    ({"budgets": [20, 150]}, r"budgets\[1\]: 150"),
    ({"budgets": ["ten"]}, r"budgets\[0\]"),
    ({"budgets": []}, r"^budgets"),
    ({"benchmark__name": "screenspot_v3"}, r"^benchmark\.name: unknown benchmark 'screenspot_v3'"),
    ({"benchmark__path": "/does/not/exist"}, r"^benchmark\.path: /does/not/exist does not exist"),
    ({"model__path": "/no/model"}, r"^model\.path: /no/model does not exist"),
    ({"model__colour": "red"}, r"^model: unknown field\(s\) \['colour'\]"),
    ({"model__max_new_tokens": 0}, r"^model\.max_new_tokens"),
    ({"ray": {"num_actors": 0}}, r"^ray\.num_actors"),
    ({"compressors": [{"name": "snapkv"}, {"name": "snapkv"}]}, r"^compressors: duplicate"),
    ({"measure_flops": "yes"}, r"^measure_flops: must be true or false"),
    # unit storage options (starkv.storage): the unit and the field are named
    ({"compressors": [{"name": "snapkv"}, {"name": "snapkv", "kv_quant": {"bits": 3}}]},
     r"^compressors\[1\]\.kv_quant\.bits: 3 is not supported .* supported: 2, 4, 8"),
    ({"compressors": [{"name": "snapkv", "kv_quant": {"bits": 4, "groupsize": 32}}]},
     r"^compressors\[0\]\.kv_quant: unknown field\(s\) \['groupsize'\]"),
    ({"compressors": [{"name": "snapkv", "kv_quant": {"group_size": 32}}]}, r"^compressors\[0\]\.kv_quant\.bits: required"),
    ({"compressors": [{"name": "snapkv", "kv_quant": {"bits": 4, "residual_length": 40}}]},
     r"^compressors\[0\]\.kv_quant\.residual_length: must be a multiple of group_size"),
    ({"compressors": [{"name": "snapkv", "kv_quant": 4}]}, r"^compressors\[0\]\.kv_quant: expected a mapping"),
    ({"compressors": [{"name": "snapkv", "kv_layout": "per_head"}]}, r"^compressors\[0\]\.kv_layout: 'per_head'"),
    ({"compressors": [{"name": "snapkv"}, {"name": "pyramidkv", "kv_layout": "per_query_head"}]},
     r"^compressors\[1\]\.kv_layout: compressor 'pyramidkv' does not support per_query_head.*guikv, snapkv, starkv"),
    ({"compressors": [{"name": "snapkv", "label": "mine+int4"}]}, r"^compressors\[0\]\.label: 'mine\+int4'"),
    ({"compressors": [{"name": "snapkv", "kv_quant": {"bits": 4}}], "model": {"path": "tiny",
                                                                        "prefill_mode": "chunked_compress"}},
     r"^compressors\[0\]\.kv_quant: needs model\.prefill_mode full"),
    ({"compressors": [{"name": "snapkv", "kv_quant": {"bits": 4}}, {"name": "snapkv", "kv_quant": {"bits": 4}}]},
     r"^compressors: duplicate names \['snapkv\+int4', 'snapkv\+int4'\]"),
])
def test_bad_config_names_the_field(changes, field):
    data = copy.deepcopy(BASE)
    for key, value in changes.items():
        if "__" in key:
            data = _with(**{key: value})
        else:
            data[key] = value
    with pytest.raises(ConfigError, match=field):
        parse_config(data)


def test_missing_required_field():
    data = copy.deepcopy(BASE)
    del data["budgets"]
    with pytest.raises(ConfigError, match="missing required field 'budgets'"):
        parse_config(data)


def test_good_config_and_stable_run_id():
    a, b = parse_config(copy.deepcopy(BASE)), parse_config(copy.deepcopy(BASE))
    assert a.resolved_run_id() == b.resolved_run_id()
    c = parse_config(_with(budgets=[30]))
    assert c.resolved_run_id() != a.resolved_run_id()
    assert [(u[0].name, u[1]) for u in a.units()] == [("snapkv", 20)]


def test_measure_flops_off_keeps_the_run_id():
    import hashlib
    import json

    plain = parse_config(copy.deepcopy(BASE))
    assert plain.measure_flops is False
    assert parse_config({**copy.deepcopy(BASE), "measure_flops": False}).resolved_run_id() == plain.resolved_run_id()
    # the hash of a job written before the option: its fields without measure_flops
    data = plain.to_dict()
    for volatile in ("output", "tracking", "run_id", "ray", "regression", "measure_flops"):
        data.pop(volatile)
    data["model"].pop("revision")
    for comp in data["compressors"]:  # the storage options came later too
        comp.pop("kv_quant"), comp.pop("kv_layout")
    before = hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:10]
    assert plain.resolved_run_id() == f"t-{before}"
    counted = parse_config({**copy.deepcopy(BASE), "measure_flops": True})  # its rows differ: a run of its own
    assert counted.measure_flops is True and counted.resolved_run_id() != plain.resolved_run_id()


def test_storage_options_label_units_and_leave_other_run_ids_alone():
    from pipeline.metrics.units import Unit, unit_label

    plain = parse_config(copy.deepcopy(BASE))
    # the run id of a job without storage options is the one it had before the options existed
    assert plain.resolved_run_id() == "t-b948bb3b14"
    data = _with(compressors=[{"name": "snapkv"}, {"name": "snapkv", "kv_quant": {"bits": 4}},
                              {"name": "guikv", "kv_layout": "per_query_head", "kv_quant": {"bits": 2}},
                              {"name": "full", "label": "ref", "kv_quant": {"bits": 8, "group_size": 16}}])
    cfg = parse_config(data)
    assert [c.display for c in cfg.compressors] == ["snapkv", "snapkv+int4", "guikv+pqh+int2", "ref+int8"]
    assert [unit_label(c.display, b) for c, b in cfg.units()] == ["snapkv@20", "snapkv@20+int4", "guikv@20+pqh+int2",
                                                                 "ref@20+int8"]
    assert Unit("r", "snapkv+int4", 12.5, "m").key == "snapkv@12.5+int4"
    assert unit_label("my+label", 20) == "my+label@20"  # a '+' that is no storage tag stays in the name
    built = cfg.compressors[2].build()
    assert built.storage.per_query_head and built.storage.quant.bits == 2 and built.params()["compressor"] == "guikv"
    assert cfg.compressors[3].build().storage.quant.group_size == 16
    assert cfg.resolved_run_id() != plain.resolved_run_id()


def test_cli_reports_config_error_before_any_work(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**BASE, "budgets": [101]}))
    assert main(["run", str(path), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "config error" in err and "budgets[0]: 101" in err
    assert not (tmp_path / "out").exists()  # nothing started


def test_cli_missing_config_file(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nope.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_plugins_are_imported_and_a_bad_one_is_named():
    import starkv

    cfg = parse_config({**copy.deepcopy(BASE), "plugins": ["tests.plugin_compressor"],
                        "compressors": [{"name": "test_reversed_snapkv"}]})
    assert cfg.plugins == ["tests.plugin_compressor"] and "test_reversed_snapkv" in starkv.available()
    with pytest.raises(ConfigError, match=r"plugins\[1\]: cannot import 'no_such_module_x'"):
        parse_config({**copy.deepcopy(BASE), "plugins": ["tests.plugin_compressor", "no_such_module_x"]})


def test_cli_benchmark_path_without_data_fails_before_any_work(tmp_path, capsys):
    empty = tmp_path / "not_screenspot"
    empty.mkdir()
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({**BASE, "benchmark": {"name": "screenspot_v2", "path": str(empty)}}))
    assert main(["run", str(path), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "benchmark data error" in err and "screenspot_mobile_v2.json" in err.replace("{mobile,desktop,web}",
                                                                                          "mobile")
    assert not (tmp_path / "out").exists()  # failed before writing or starting anything
