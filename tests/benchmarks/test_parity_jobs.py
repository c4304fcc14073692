"""One parity job per benchmark (jobs/parity_<benchmark>.yaml, ``protocol: reference``), each loading a
small fixture in the layout its reference driver reads."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.benchmarks.common.base import get_benchmark
from pipeline.config import parse_config
from tests.fixtures.benchmarks import write_screenspot_pro, write_screenspot_v2
from tests.fixtures.episodes import write_agentnet
from tests.fixtures.reference import write_androidcontrol_steps, write_mind2web_blocks

ROOT = Path(__file__).resolve().parents[2]
# benchmark -> writer of a fixture in the layout the reference driver reads (AndroidControl: the drivers'
# own per-step JSON; Mind2Web: GUI-KV's blocks layout; the others read the official layout)
WRITERS = {
    "screenspot_v2": lambda root: write_screenspot_v2(root, per_cell=1),
    "screenspot_pro": lambda root: write_screenspot_pro(root, per_type=1),
    "androidcontrol": write_androidcontrol_steps,
    "agentnetbench": write_agentnet,
    "mind2web": write_mind2web_blocks,
}


def test_every_benchmark_with_a_reference_protocol_has_a_parity_job():
    import pipeline.benchmarks  # noqa: F401  (registers the built-ins)
    from pipeline.benchmarks.common.base import BENCHMARKS

    with_reference = {name for name, cls in BENCHMARKS.items() if "reference" in cls.protocols}
    assert with_reference == set(WRITERS)
    for name in with_reference:
        data = yaml.safe_load((ROOT / "jobs" / f"parity_{name}.yaml").read_text())
        assert data["benchmark"]["name"] == name and data["benchmark"]["options"]["protocol"] == "reference"
        assert data["output"] == f"/results/parity_{name}"


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_parity_job_loads_a_fixture_in_the_drivers_layout(name, tmp_path):
    data = yaml.safe_load((ROOT / "jobs" / f"parity_{name}.yaml").read_text())
    WRITERS[name](tmp_path / "data")
    data["model"]["path"] = str(tmp_path)
    data["benchmark"]["path"] = str(tmp_path / "data")
    options = {**data["benchmark"]["options"], "cache_dir": str(tmp_path / "cache")}
    data["benchmark"]["options"] = options
    cfg = parse_config(data)
    bench = get_benchmark(name)(cfg.benchmark.path, **cfg.benchmark.options)
    assert bench.protocol == "reference"
    episodes = list(bench.load())
    steps = [s for e in episodes for s in e.steps]
    assert steps and all(s.error is None for s in steps), [s.error for s in steps if s.error][:3]
    if name == "mind2web":  # the blocks protocol: block 0 first, up to 5 calls
        assert all(s.meta["views"][0] == s.image_path and s.meta["max_calls"] == 5 for s in steps)
    if name == "androidcontrol":  # history frames from android_control_test.json beside the steps file
        assert all(isinstance(s.meta.get("context"), list) for s in steps)


def test_every_test_named_in_the_parity_doc_exists():
    import re

    doc = (ROOT / "docs" / "benchmarks" / "parity.md").read_text()
    named = set(re.findall(r"`(test_[a-z0-9_]+)`", doc))
    defined = {m for f in (ROOT / "tests").rglob("test_*.py") for m in re.findall(r"^def (test_[a-z0-9_]+)",
                                                                                   f.read_text(), re.M)}
    assert len(named) > 30 and named <= defined, sorted(named - defined)
