"""``starkv-eval data fetch``: offline, against local folders laid out like the real remotes.

Each benchmark's remote is written with the fixture writers the loader tests use, in the layout of its
public home (HF repo files including the ones not fetched; the GCS bucket folder), fetched, and then
loaded by the benchmark's loader through ``make_benchmark`` with the printed ``benchmark:`` block.
Digests that a listing would publish are computed here with hashlib / base64 from the bytes written,
independently of the downloader.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.benchmarks.common.fetch import (
    FETCHERS,
    FetchError,
    GcsSource,
    HubSource,
    Remote,
    _Digests,
    fetch,
    get_fetch_spec,
    published_checks,
)
from pipeline.benchmarks.common.storage import open_fs
from pipeline.cli import main
from pipeline.config import make_benchmark, parse_config
from tests.fixtures.benchmarks import write_mind2web, write_screenspot_pro, write_screenspot_v2
from tests.fixtures.episodes import write_agentnet, write_androidcontrol

pytestmark = pytest.mark.timeout(120)


# ---------------------------------------------------------------------------------------------------
# Remotes standing in for the real ones
# ---------------------------------------------------------------------------------------------------

def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubLikeRemote(Remote):
    """A local folder listed the way ``HfFileSystem`` lists a repo: LFS files (zip, parquet, png) carry
    ``lfs.sha256``, the others their git ``blob_id``. ``wrong`` names files whose published digest is
    wrong; ``fail_after`` makes the (k+1)-th ``open`` raise; ``cut_at`` makes that read stop with an
    error after some bytes were delivered; ``opened`` records every ``open``."""

    def __init__(self, root: Path, *, wrong: frozenset[str] = frozenset(), fail_after: int | None = None,
                 cut: bool = False) -> None:
        fs, folder = open_fs(str(root))
        super().__init__(fs, folder, f"hf-like:{root.name}")
        self.wrong, self.fail_after, self.cut = wrong, fail_after, cut
        self.opened: list[str] = []

    def listing(self) -> dict[str, dict[str, Any]]:
        out = super().listing()
        for path, info in out.items():
            data = Path(path).read_bytes()
            rel = path[len(self.root) + 1:]
            if path.endswith((".zip", ".parquet", ".png")):
                digest = hashlib.sha256(data).hexdigest()
                info["lfs"] = {"size": len(data), "sha256": "0" * 64 if rel in self.wrong else digest,
                               "pointer_size": 134}
            else:
                info["blob_id"] = "0" * 40 if rel in self.wrong else _git_blob_sha1(data)
        return out

    def open(self, rel: str):
        if self.fail_after is not None and len(self.opened) >= self.fail_after:
            if not self.cut:
                raise ConnectionError("connection reset by peer")
            return _CutReader(super().open(rel))
        self.opened.append(rel)
        return super().open(rel)


class _CutReader:
    """Delivers the first 100 bytes, then fails like a dropped connection."""

    def __init__(self, fh: Any) -> None:
        self.fh, self.sent = fh, 0

    def __enter__(self):
        return self

    def __exit__(self, *exc: Any) -> None:
        self.fh.close()

    def read(self, n: int) -> bytes:
        if self.sent:
            raise ConnectionError("connection dropped mid-file")
        self.sent = 100
        return self.fh.read(100)


class GcsLikeRemote(Remote):
    """A local folder listed the way gcsfs lists a bucket: ``md5Hash`` base64 per object."""

    def __init__(self, root: Path) -> None:
        fs, folder = open_fs(str(root))
        super().__init__(fs, folder, "gs-like:gresearch/android_control")

    def listing(self) -> dict[str, dict[str, Any]]:
        out = super().listing()
        for path, info in out.items():
            info["md5Hash"] = base64.b64encode(hashlib.md5(Path(path).read_bytes()).digest()).decode()
        return out


def _hub_extras(root: Path) -> None:
    """What every HF dataset repo holds besides the data (never fetched)."""
    (root / ".gitattributes").write_text("*.zip filter=lfs diff=lfs merge=lfs -text\n", encoding="utf-8")
    (root / "README.md").write_text("---\nlicense: apache-2.0\n---\n", encoding="utf-8")


def _load(block: str, monkeypatch: pytest.MonkeyPatch, cache: Path) -> list:
    """Episodes of the job built from the printed block (the path a user would paste)."""
    monkeypatch.setenv("STARKV_CACHE", str(cache))
    data = {"name": "fetched", "compressors": ["full"], "budgets": [50], **yaml.safe_load(block)}
    return list(make_benchmark(parse_config(data)).load())


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------------
# Per benchmark: fetch from the real remote layout, then load with the printed block
# ---------------------------------------------------------------------------------------------------

def test_screenspot_v2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    repo = tmp_path / "OS-Copilot--ScreenSpot-v2"
    write_screenspot_v2(repo, per_cell=2, as_zip=True)  # the hub ships the images as one zip
    _hub_extras(repo)
    report = fetch(get_fetch_spec("screenspot_v2"), tmp_path / "ssv2", remote=HubLikeRemote(repo), progress=False)
    assert report.ok, report.failed + report.problems
    assert sorted(report.downloaded) == ["screenspot_desktop_v2.json", "screenspot_mobile_v2.json",
                                         "screenspot_web_v2.json", "screenspotv2_image.zip"]
    target = tmp_path / "ssv2"
    assert not (target / "README.md").exists() and not (target / ".gitattributes").exists()
    # extracted beside the JSON files: 3 splits x 2 types x 2 samples, one image each
    assert sorted(p.name for p in (target / "screenspotv2_image").iterdir()) == sorted(
        f"{s}_{k:02d}.png" for s in ("mobile", "desktop", "web") for k in range(4))
    assert report.block == f"benchmark:\n  name: screenspot_v2\n  path: {target}"
    episodes = _load(report.block, monkeypatch, tmp_path / "cache")
    assert len(episodes) == 12 and all(ep.steps[0].error is None for ep in episodes)
    assert all(ep.steps[0].image_path.startswith(str(target / "screenspotv2_image")) for ep in episodes)


def test_screenspot_pro(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    repo = tmp_path / "likaixin--ScreenSpot-Pro"
    write_screenspot_pro(repo)
    _hub_extras(repo)
    (repo / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (repo / "images" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (repo / "annotate.html").write_text("<html></html>", encoding="utf-8")
    report = fetch(get_fetch_spec("screenspot_pro"), tmp_path / "sspro", remote=HubLikeRemote(repo), progress=False)
    assert report.ok, report.failed + report.problems
    # 3 annotation files + 3 apps x 4 screenshots; no .DS_Store, README or annotate.html
    assert len(report.downloaded) == 3 + 12
    assert not list((tmp_path / "sspro").rglob(".DS_Store"))
    episodes = _load(report.block, monkeypatch, tmp_path / "cache")
    assert len(episodes) == 12 and all(ep.steps[0].error is None for ep in episodes)


def _mind2web_repo(repo: Path) -> None:
    """Shards named like the hub's (``<split>-0000i-of-0000N-<hash>.parquet``), three test splits + train."""
    for split, shards in (("train", 1), ("test_task", 2), ("test_website", 1), ("test_domain", 1)):
        for path in write_mind2web(repo, split=split, shards=shards):
            path.rename(path.with_name(f"{path.stem}-{hashlib.sha1(path.name.encode()).hexdigest()[:16]}.parquet"))
    _hub_extras(repo)


def test_mind2web(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    repo = tmp_path / "osunlp--Multimodal-Mind2Web"
    _mind2web_repo(repo)
    report = fetch(get_fetch_spec("mind2web"), tmp_path / "m2w", remote=HubLikeRemote(repo), progress=False)
    assert report.ok, report.failed + report.problems
    names = sorted(Path(r).name.split("-")[0] for r in report.downloaded)
    assert names == ["test_domain", "test_task", "test_task", "test_website"]  # train is not fetched by default
    assert yaml.safe_load(report.block)["benchmark"] == {"name": "mind2web", "path": str(tmp_path / "m2w"),
                                                         "options": {"split": "test_task"}}
    episodes = _load(report.block, monkeypatch, tmp_path / "cache")
    # the fixture's two tasks: 3 and 2 actions
    assert sorted(len(ep.steps) for ep in episodes) == [2, 3]
    assert all(s.error is None for ep in episodes for s in ep.steps)


def test_mind2web_split_choice_and_missing_shard(tmp_path: Path):
    repo = tmp_path / "repo"
    _mind2web_repo(repo)
    spec = get_fetch_spec("mind2web", splits=["train"])
    report = fetch(spec, tmp_path / "train", remote=HubLikeRemote(repo), progress=False)
    assert report.ok and [Path(r).name.split("-")[0] for r in report.downloaded] == ["train"]
    # a remote missing one of test_task's two shards: the layout check names it
    next((repo / "data").glob("test_task-00001-*")).unlink()
    report = fetch(get_fetch_spec("mind2web", splits=["test_task"]), tmp_path / "task", remote=HubLikeRemote(repo),
                   progress=False)
    assert not report.ok and report.problems == [
        "mind2web test_task: test_task has 1 of 2 shards (missing [1])"]


def test_androidcontrol(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    bucket = tmp_path / "bucket" / "gresearch" / "android_control"
    write_androidcontrol(bucket, num_shards=2)
    report = fetch(get_fetch_spec("androidcontrol"), tmp_path / "ac", remote=GcsLikeRemote(bucket), progress=False)
    assert report.ok, report.failed + report.problems
    assert sorted(report.downloaded) == ["android_control-00000-of-00002", "android_control-00001-of-00002",
                                         "splits.json"]
    assert yaml.safe_load(report.block)["benchmark"]["options"] == {"split": "test"}
    episodes = _load(report.block, monkeypatch, tmp_path / "cache")
    # split test = episodes 101 and 102, four actions each
    assert sorted(ep.episode_id for ep in episodes) == ["101", "102"]
    assert [len(ep.steps) for ep in episodes] == [4, 4]


@pytest.mark.parametrize("zipped", [False, True], ids=["folder", "images-zip"])
def test_agentnetbench(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, zipped: bool):
    repo = tmp_path / "xlangai--AgentNetBench"
    write_agentnet(repo / "test_data")
    if zipped:  # screenshots shipped as test_data/images.zip holding images/<name>.png
        images = repo / "test_data" / "images"
        with zipfile.ZipFile(repo / "test_data" / "images.zip", "w") as zf:
            for png in sorted(images.iterdir()):
                zf.write(png, f"images/{png.name}")
        shutil.rmtree(images)
    _hub_extras(repo)
    report = fetch(get_fetch_spec("agentnetbench"), tmp_path / "anb", remote=HubLikeRemote(repo), progress=False)
    assert report.ok, report.failed + report.problems
    assert report.path == tmp_path / "anb" / "test_data"
    episodes = _load(report.block, monkeypatch, tmp_path / "cache")
    # two trajectories (the mapping file is skipped), three steps each, every screenshot found
    assert sorted(len(ep.steps) for ep in episodes) == [3, 3]
    assert all(s.error is None for ep in episodes for s in ep.steps)


# ---------------------------------------------------------------------------------------------------
# Interruption, resume, verification
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cut", [False, True], ids=["before-file", "mid-file"])
def test_interrupted_fetch_resumes_without_refetching(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cut: bool):
    repo = tmp_path / "repo"
    write_screenspot_pro(repo)
    target = tmp_path / "sspro"
    spec = get_fetch_spec("screenspot_pro")
    first = HubLikeRemote(repo, fail_after=5, cut=cut)
    with pytest.raises(FetchError, match="run again to resume"):
        fetch(spec, target, remote=first, progress=False)
    done = _files(target)
    assert len(first.opened) == 5 and sorted(done) == sorted(first.opened)  # the five finished, nothing else
    assert all(data == (repo / rel).read_bytes() for rel, data in done.items())
    assert not list(target.rglob("*.part"))  # the interrupted file left no partial copy
    second = HubLikeRemote(repo)
    report = fetch(spec, target, remote=second, progress=False)
    assert report.ok and sorted(report.skipped) == sorted(first.opened)
    assert len(second.opened) == 15 - 5 and not set(second.opened) & set(first.opened)
    assert len(_load(report.block, monkeypatch, tmp_path / "cache")) == 12


def test_rerun_refetches_a_file_changed_upstream(tmp_path: Path):
    repo = tmp_path / "repo"
    write_screenspot_pro(repo)
    spec = get_fetch_spec("screenspot_pro")
    assert fetch(spec, tmp_path / "t", remote=HubLikeRemote(repo), progress=False).ok
    changed = repo / "annotations" / "vscode_macos.json"
    text = changed.read_text(encoding="utf-8")
    changed.write_text(text.replace("open the", "press the", 1)[:len(text)].ljust(len(text)), encoding="utf-8")
    assert changed.stat().st_size == len(text.encode())  # same size: only the published digest differs
    again = HubLikeRemote(repo)
    report = fetch(spec, tmp_path / "t", remote=again, progress=False)
    assert report.ok and again.opened == ["annotations/vscode_macos.json"]
    assert (tmp_path / "t" / "annotations" / "vscode_macos.json").read_bytes() == changed.read_bytes()


def test_checksum_mismatch_is_reported_and_not_kept(tmp_path: Path, capsys: pytest.CaptureFixture):
    repo = tmp_path / "repo"
    write_screenspot_pro(repo)
    bad_png, bad_json = "images/vscode_mac/screenshot_1.png", "annotations/autocad_windows.json"
    remote = HubLikeRemote(repo, wrong=frozenset({bad_png, bad_json}))
    report = fetch(get_fetch_spec("screenspot_pro"), tmp_path / "t", remote=remote, progress=False)
    assert not report.ok and len(report.downloaded) == 13
    assert [f.split(":")[0] for f in report.failed] == [bad_json, bad_png]
    assert "sha256" in report.failed[1] and "git_sha1" in report.failed[0]
    assert not (tmp_path / "t" / bad_png).exists() and not (tmp_path / "t" / bad_json).exists()
    assert not list((tmp_path / "t").rglob("*.part"))
    manifest = json.loads((tmp_path / "t" / ".starkv-fetch.json").read_text())
    assert manifest["complete"] is False and len(manifest["files"]) == 15


def test_digest_rules_on_known_vectors():
    # git hash-object of "hello\n"; CRC-32C check value of "123456789" (RFC 3720 B.4); md5("")
    blob = {"blob_id": "ce013625030ba8dba906f756967f9e9ca394464a"}
    assert published_checks(blob) == {"git_sha1": "ce013625030ba8dba906f756967f9e9ca394464a"}
    d = _Digests(published_checks(blob))
    d.begin(6)
    d.update(b"hello\n")
    assert d.mismatches(published_checks(blob)) == []
    crc = {"crc32c": base64.b64encode(bytes.fromhex("e3069283")).decode()}
    d = _Digests(published_checks(crc))
    d.update(b"123456789")
    assert published_checks(crc) == {"crc32c": "e3069283"} and d.mismatches(published_checks(crc)) == []
    md5 = {"md5Hash": "1B2M2Y8AsgTpgAmY7PhCfg==", "crc32c": "AAAAAA=="}
    assert published_checks(md5) == {"md5": "d41d8cd98f00b204e9800998ecf8427e"}  # md5 preferred
    assert published_checks({"lfs": {"sha256": "AB" * 32}, "blob_id": "x" * 40}) == {"sha256": "ab" * 32}


def test_digests_from_the_hub_listing_format():
    """huggingface_hub's own conversion of tree-API entries (LFS: ``lfs.oid`` is the sha256; others:
    ``oid`` is the git blob sha1) into HfFileSystem listing dicts yields the digests the fetch checks."""
    from huggingface_hub.hf_api import RepoFile
    from huggingface_hub.hf_file_system import _cache_info_from_path_info

    lfs = RepoFile(path="screenspotv2_image.zip", size=10, oid="a" * 40,
                   lfs={"size": 10, "oid": "b" * 64, "pointerSize": 134})
    plain = RepoFile(path="screenspot_web_v2.json", size=6, oid="ce013625030ba8dba906f756967f9e9ca394464a")
    assert published_checks(_cache_info_from_path_info(lfs, "datasets/r@main/x.zip")) == {"sha256": "b" * 64}
    assert published_checks(_cache_info_from_path_info(plain, "datasets/r@main/y.json")) == {
        "git_sha1": "ce013625030ba8dba906f756967f9e9ca394464a"}


# ---------------------------------------------------------------------------------------------------
# The sources and the command line
# ---------------------------------------------------------------------------------------------------

def test_real_sources_declared():
    specs = {name: get_fetch_spec(name) for name in FETCHERS}
    assert {n: s.source for n, s in specs.items()} == {
        "screenspot_v2": HubSource("OS-Copilot/ScreenSpot-v2"), "screenspot_pro": HubSource("likaixin/ScreenSpot-Pro"),
        "mind2web": HubSource("osunlp/Multimodal-Mind2Web"), "agentnetbench": HubSource("xlangai/AgentNetBench"),
        "androidcontrol": GcsSource("gresearch/android_control")}
    hub = get_fetch_spec("screenspot_v2", revision="5efbb1f1b5463a575f2eb7bc30fe29e49c15f93c").source.open()
    assert type(hub.fs).__name__ == "HfFileSystem"
    assert hub.root == "datasets/OS-Copilot/ScreenSpot-v2@5efbb1f1b5463a575f2eb7bc30fe29e49c15f93c"
    assert hub.open_kwargs == {"block_size": 0}  # streamed reads
    pytest.importorskip("gcsfs")
    gcs = specs["androidcontrol"].source.open()
    assert gcs.root == "gresearch/android_control" and gcs.label == "gs://gresearch/android_control"


def test_cli_fetch_prints_block_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture):
    bucket = tmp_path / "bucket"
    write_androidcontrol(bucket)
    argv = ["data", "fetch", "androidcontrol", "--to", str(tmp_path / "ac"), "--from", str(bucket), "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    block = out[out.index("benchmark:"):]
    assert yaml.safe_load(block) == {"benchmark": {"name": "androidcontrol", "path": str(tmp_path / "ac"),
                                                   "options": {"split": "test"}}}
    assert main(argv) == 0
    assert "0 downloaded (0.0 MiB), 3 already complete" in capsys.readouterr().out


def test_cli_checksum_failure_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch):
    repo = tmp_path / "repo"
    write_screenspot_pro(repo)
    monkeypatch.setattr(Remote, "from_url", classmethod(
        lambda cls, url: HubLikeRemote(Path(url), wrong=frozenset({"annotations/vscode_macos.json"}))))
    assert main(["data", "fetch", "screenspot_pro", "--to", str(tmp_path / "t"), "--from", str(repo),
                 "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "problem: annotations/vscode_macos.json: git_sha1" in err and "run the same command again" in err


@pytest.mark.parametrize("case", ["unknown-benchmark", "unknown-split", "target-not-writable",
                                  "remote-missing", "remote-raises", "revision-on-gcs"])
def test_cli_bad_input_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch,
                              case: str):
    repo = tmp_path / "repo"
    write_screenspot_pro(repo)
    target = tmp_path / "target"
    base = ["data", "fetch", "screenspot_pro", "--to", str(target), "--from", str(repo), "--no-progress"]
    culprit = {"unknown-benchmark": "'screenspot_v3'", "unknown-split": "['test_everything']",
               "target-not-writable": str(tmp_path / "a-file"), "remote-missing": str(tmp_path / "nowhere"),
               "remote-raises": "network is unreachable", "revision-on-gcs": "gs://gresearch/android_control"}[case]
    if case == "unknown-benchmark":
        argv = [*base[:2], "screenspot_v3", *base[3:]]
    elif case == "unknown-split":
        argv = [*base[:2], "mind2web", *base[3:], "--split", "test_everything"]
    elif case == "target-not-writable":
        (tmp_path / "a-file").write_text("x")
        target = tmp_path / "a-file" / "sub"
        argv = [*base[:3], "--to", str(target), *base[5:]]
    elif case == "remote-missing":
        argv = [*base[:5], "--from", str(tmp_path / "nowhere"), "--no-progress"]
    elif case == "remote-raises":
        def down(self: Remote) -> dict:
            raise OSError("network is unreachable")

        monkeypatch.setattr(Remote, "listing", down)
        argv = base
    else:
        argv = [*base[:2], "androidcontrol", *base[3:], "--revision", "v1"]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and captured.err.startswith("starkv-eval data fetch: ")
    assert culprit in captured.err
    assert not target.exists()  # nothing written, not even the empty target folder
