"""Hub names for ``model.path``: a repo id resolves through the hub cache to its snapshot folder, offline.

The caches are written by hand in the layout ``huggingface_hub`` downloads produce (tests/helpers_hub.py);
the expected folders and commits below are spelled out from that layout, not asked of the code under test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pipeline.config import ConfigError, load_config, parse_config
from pipeline.models.hub import (
    HubModelError,
    check_repo,
    hub_cache_dir,
    is_repo_id,
    resolve_repo,
    snapshot_repo,
)
from tests.helpers_hub import write_hub_snapshot

ROOT = Path(__file__).resolve().parents[2]
SHA_A = "a" * 40
SHA_B = "0123456789abcdef0123456789abcdef01234567"
CONFIG = {"model_type": "qwen2_5_vl", "architectures": ["Qwen2_5_VLForConditionalGeneration"]}


def _checkpoint(folder: Path, marker: str) -> Path:
    """A small stand-in checkpoint: resolution reads no weights, only finds the files."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({**CONFIG, "marker": marker}))
    (folder / "model.safetensors").write_bytes(marker.encode() * 100)
    return folder


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An offline hub cache (HF_HUB_CACHE) holding org/model at SHA_A (main) and SHA_B (branch v2)."""
    cache = tmp_path / "hub"
    write_hub_snapshot(_checkpoint(tmp_path / "a", "A"), cache, "org/model", SHA_A, refs=("main",))
    write_hub_snapshot(_checkpoint(tmp_path / "b", "B"), cache, "org/model", SHA_B, refs=("v2",))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    return cache


def _job(model: dict) -> dict:
    return {"name": "hub", "model": model, "compressors": ["full"], "budgets": [50],
            "benchmark": {"name": "synthetic", "options": {"num_episodes": 1}}}


def test_the_hand_written_cache_is_one_huggingface_hub_reads(hub):
    from huggingface_hub import scan_cache_dir

    info = scan_cache_dir(hub)
    assert info.warnings == []
    (repo,) = info.repos
    assert repo.repo_id == "org/model" and repo.repo_type == "model"
    assert {r.commit_hash: set(r.refs) for r in repo.revisions} == {SHA_A: {"main"}, SHA_B: {"v2"}}


def test_a_repo_id_resolves_to_its_snapshot_folder(hub):
    resolved = resolve_repo("org/model")
    assert resolved.folder == hub / "models--org--model" / "snapshots" / SHA_A
    assert (resolved.commit, resolved.revision, resolved.name) == (SHA_A, "main", "model")
    assert json.loads((resolved.folder / "config.json").read_text())["marker"] == "A"
    assert (resolved.folder / "model.safetensors").read_bytes() == b"A" * 100
    assert snapshot_repo(resolved.folder) == ("org/model", SHA_A)


def test_revision_by_branch_name_and_by_sha(hub):
    by_branch = resolve_repo("org/model", "v2")
    assert by_branch.commit == SHA_B and by_branch.folder == hub / "models--org--model" / "snapshots" / SHA_B
    assert json.loads((by_branch.folder / "config.json").read_text())["marker"] == "B"
    by_sha = resolve_repo("org/model", SHA_A)
    assert by_sha.commit == SHA_A and by_sha.revision == SHA_A
    assert check_repo("org/model", SHA_B) == SHA_B


def test_missing_repo_offline_names_the_repo_and_the_cache(hub):
    with pytest.raises(HubModelError) as err:
        check_repo("org/absent")
    msg = str(err.value)
    assert "'org/absent'" in msg and "'main'" in msg and str(hub) in msg and "HF_HUB_OFFLINE=1" in msg
    with pytest.raises(ConfigError) as cfg_err:
        parse_config(_job({"path": "org/absent"}))
    assert str(cfg_err.value).startswith("model.path: Hugging Face repo 'org/absent'") and str(hub) in str(cfg_err.value)


def test_nonexistent_revision_names_it_and_the_cached_ones(hub):
    with pytest.raises(ConfigError) as err:
        parse_config(_job({"path": "org/model", "revision": "no-such-branch"}))
    msg = str(err.value)
    assert "'org/model'" in msg and "'no-such-branch'" in msg and str(hub) in msg
    assert "main, v2" in msg  # what the cache does hold
    with pytest.raises(HubModelError, match="'org/model'.*'" + "f" * 40 + "'"):
        resolve_repo("org/model", "f" * 40)


def test_cli_run_exits_2_before_any_work(hub, tmp_path, capsys):
    from pipeline.cli import main

    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({**_job({"path": "org/absent", "revision": "v9"}), "output": str(tmp_path / "out")}))
    assert main(["run", str(job)]) == 2
    err = capsys.readouterr().err
    assert "'org/absent'" in err and "'v9'" in err and str(hub) in err
    assert not (tmp_path / "out").exists()


def test_cache_folder_and_offline_switch_come_from_the_environment_at_call_time(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert hub_cache_dir() == tmp_path / "home" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    assert hub_cache_dir() == tmp_path / "elsewhere"


def test_local_folders_tiny_and_micro_are_not_repo_ids(hub, tmp_path):
    for path in ("tiny", "tiny:3", "micro", "/abs/folder", "./rel/folder", "~/m", "a/b/c", "org--x/y", "plain"):
        assert not is_repo_id(path), path
    assert is_repo_id("ByteDance-Seed/UI-TARS-1.5-7B")
    local = _checkpoint(tmp_path / "org" / "local", "L")  # a relative folder shaped like a repo id stays a folder
    assert not is_repo_id("org/local")
    assert parse_config(_job({"path": "org/local"})).model.path == "org/local"
    assert parse_config(_job({"path": str(local)})).model.path == str(local)
    assert parse_config(_job({"path": "tiny"})).model.path == "tiny"
    with pytest.raises(ConfigError, match=r"model.path: \./gone does not exist"):
        parse_config(_job({"path": "./gone"}))
    with pytest.raises(ConfigError, match="model.revision: 'v2' applies only to a Hugging Face repo id"):
        parse_config(_job({"path": "tiny", "revision": "v2"}))


def test_run_ids_of_jobs_without_a_revision_are_unchanged():
    # smoke-39e6dbc038: `resolved_run_id()` of jobs/smoke.yaml before model.revision existed
    assert load_config(ROOT / "jobs" / "smoke.yaml").resolved_run_id() == "smoke-39e6dbc038"
    pinned = parse_config({**_job({"path": "tiny"})}).fingerprint()
    assert pinned == parse_config(_job({"path": "tiny", "revision": None})).fingerprint()


def test_the_loader_takes_a_repo_id_and_names_it_after_the_repo(tmp_path, monkeypatch):
    from pipeline.models import ModelSpec, ensure_tiny_model, load_model
    from pipeline.models.tiny import MARKER_FILE

    cache = tmp_path / "hub"
    write_hub_snapshot(ensure_tiny_model(), cache, "org/tiny-vl", SHA_B)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = load_model(ModelSpec(path="org/tiny-vl", device="cpu", dtype="float32"))
    assert loaded.name.startswith("tiny-qwen2.5-vl")  # the tiny build's own name (its marker file)
    # a real (unmarked) checkpoint in a snapshot is named after the repo, not after the commit folder
    plain = tmp_path / "plain"
    plain.mkdir()
    for f in ensure_tiny_model().iterdir():
        if f.is_file() and f.name != MARKER_FILE:
            (plain / f.name).write_bytes(f.read_bytes())
    write_hub_snapshot(plain, cache, "org/plain-vl", SHA_A)
    assert load_model(ModelSpec(path="org/plain-vl", device="cpu", dtype="float32")).name == "plain-vl"


@pytest.mark.parametrize(("code", "says"), [("RevisionNotFound", "the revision does not exist on the Hub"),
                                            ("RepoNotFound", "no such repo on the Hub")])
def test_online_the_hubs_answer_is_named_before_any_download(hub, monkeypatch, code, says):
    """Not in the cache and online: one metadata request; the Hub's 404 (as ``hf_raise_for_status`` turns a
    real response into an error) becomes the message. No network: the request itself is replaced."""
    import httpx2
    from huggingface_hub import HfApi
    from huggingface_hub.utils import hf_raise_for_status

    asked = []

    def model_info(self, repo_id, *, revision=None, **_):
        asked.append((repo_id, revision))
        url = f"https://huggingface.co/api/models/{repo_id}/revision/{revision}"
        hf_raise_for_status(httpx2.Response(404, headers={"X-Error-Code": code}, request=httpx2.Request("GET", url)))

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(HfApi, "model_info", model_info)
    with pytest.raises(ConfigError) as err:
        parse_config(_job({"path": "org/model", "revision": "v9"}))
    assert asked == [("org/model", "v9")]
    msg = str(err.value)
    assert says in msg and "'org/model'" in msg and "'v9'" in msg and str(hub) in msg
    assert check_repo("org/model", "v2") == SHA_B and len(asked) == 1  # a cached revision asks nothing


def test_an_actor_takes_the_drivers_folder_or_the_same_commit_from_its_own_cache(hub, tmp_path):
    from pipeline.run.job import node_model_folder

    driver = hub / "models--org--model" / "snapshots" / SHA_B
    assert node_model_folder({"name": "x"}) is None  # not a hub model
    job = {"_model_folder": str(driver), "_model_repo": "org/model", "_model_commit": SHA_B}
    assert node_model_folder(job) == str(driver)
    # another node: the driver's folder is not there; the driver's cache path on this node has the commit
    elsewhere = {**job, "_model_folder": str(tmp_path / "on-the-driver-node" / SHA_B), "_model_cache": str(hub)}
    assert node_model_folder(elsewhere) == str(driver)
    copy = tmp_path / "node-cache"  # a cache path of its own, holding the same commit
    write_hub_snapshot(tmp_path / "b", copy, "org/model", SHA_B, refs=())
    assert node_model_folder({**elsewhere, "_model_cache": str(copy)}) == str(copy / "models--org--model" / "snapshots" / SHA_B)
    with pytest.raises(HubModelError, match="'org/model'.*'" + SHA_A.replace("a", "c") + "'"):
        node_model_folder({**elsewhere, "_model_commit": SHA_A.replace("a", "c")})
