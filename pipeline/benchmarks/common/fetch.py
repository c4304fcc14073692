"""Download a benchmark from its public home into the on-disk layout its loader reads.

Each benchmark package declares a :class:`FetchSpec` in its ``fetch.py`` (where the data lives, which
remote files to take, where they go, what to check afterwards) and registers it with
:func:`register_fetch`; ``starkv-eval data fetch`` runs :func:`fetch` on it.

The remote is a :class:`Remote`: an fsspec filesystem and a root folder. The real ones are the Hugging
Face hub (``HfFileSystem``, a dataset repo at a revision) and Google Cloud Storage (``gcsfs``, anonymous);
any other fsspec URL or local folder laid out like the real remote can stand in for it (``--from``), which
is how mirrors and the offline tests use it.

Guarantees: a file appears under its final name only once it is complete and verified (it is written to
``.<name>.part`` beside it, then renamed), so an interrupted fetch never leaves a half file that looks
complete; a re-run skips every file whose final name already exists with the remote's size (and the digests
an earlier fetch recorded, so a file changed in a new revision is fetched again); a file whose
size or published checksum (Hugging Face: the LFS sha256 or the git blob sha1; GCS: md5 or crc32c) does
not match is reported and not kept.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import os
import posixpath
import shutil
import sys
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

MANIFEST = ".starkv-fetch.json"
CHUNK = 1 << 20


class FetchError(Exception):
    """Bad input or an unreachable remote: one message naming the culprit, raised before any file is kept."""


@dataclass(frozen=True)
class HubSource:
    """A Hugging Face dataset repo at a revision (branch, tag or full commit hash)."""

    repo_id: str
    revision: str = "main"

    def describe(self) -> str:
        return f"hf://datasets/{self.repo_id}@{self.revision}"

    def open(self) -> Remote:
        try:
            from huggingface_hub import HfFileSystem
        except ImportError as exc:  # a core dependency; only a broken environment lacks it
            raise FetchError(f"huggingface_hub is not installed ({exc})") from exc
        # block_size=0: one streamed GET per file instead of ranged block reads
        return Remote(HfFileSystem(), f"datasets/{self.repo_id}@{self.revision}", self.describe(),
                      open_kwargs={"block_size": 0})


@dataclass(frozen=True)
class GcsSource:
    """A public Google Cloud Storage folder ``bucket/prefix``, read anonymously (the ``gcs`` extra)."""

    path: str

    def describe(self) -> str:
        return f"gs://{self.path}"

    def open(self) -> Remote:
        try:
            import gcsfs
        except ImportError as exc:
            raise FetchError(f"{self.describe()} needs gcsfs: pip install 'starkv-eval[gcs]' ({exc})") from exc
        return Remote(gcsfs.GCSFileSystem(token="anon"), self.path, self.describe())


@dataclass(frozen=True)
class RemoteFile:
    """One remote file: ``rel`` is its path under the remote root; ``checks`` maps an algorithm
    (``sha256``, ``git_sha1``, ``md5``, ``crc32c``) to the published digest (hex; crc32c as hex too)."""

    rel: str
    size: int | None
    checks: dict[str, str] = field(default_factory=dict)


def published_checks(info: dict[str, Any]) -> dict[str, str]:
    """The digests a listing publishes: HF ``lfs.sha256`` or ``blob_id`` (git blob sha1), GCS ``md5Hash``
    or ``crc32c`` (base64 in the listing, hex here)."""
    lfs = info.get("lfs")
    if isinstance(lfs, dict) and isinstance(lfs.get("sha256"), str):
        return {"sha256": lfs["sha256"].lower()}
    if isinstance(info.get("blob_id"), str) and len(info["blob_id"]) == 40:
        return {"git_sha1": info["blob_id"].lower()}
    for key, name in (("md5Hash", "md5"), ("crc32c", "crc32c")):
        value = info.get(key)
        if isinstance(value, str) and value:
            try:
                return {name: base64.b64decode(value).hex()}
            except ValueError:
                continue
    return {}


class Remote:
    """An fsspec filesystem rooted at ``root``: what a fetch lists and reads. ``label`` names it in messages."""

    def __init__(self, fs: Any, root: str, label: str, open_kwargs: dict[str, Any] | None = None) -> None:
        self.fs = fs
        self.root = root.rstrip("/")
        self.label = label
        self.open_kwargs = dict(open_kwargs or {})

    @classmethod
    def from_url(cls, url: str) -> Remote:
        """A stand-in for the real remote: a local folder or any fsspec URL laid out like it."""
        from pipeline.benchmarks.common.storage import open_fs

        fs, root = open_fs(url)
        return cls(fs, root, url)

    def listing(self) -> dict[str, dict[str, Any]]:
        """``{path: info}`` of every file under the root (fsspec ``find``)."""
        return self.fs.find(self.root, detail=True)

    def files(self) -> list[RemoteFile]:
        """Every file under the root, relative paths sorted; raises ``FetchError`` when unreachable."""
        try:
            if not self.fs.isdir(self.root):
                raise FetchError(f"remote {self.label} is unreachable or not a folder")
            found = self.listing()
        except FetchError:
            raise
        except Exception as exc:  # noqa: BLE001 - network, auth and missing-repo errors differ per backend
            raise FetchError(f"remote {self.label} is unreachable: {type(exc).__name__}: {exc}") from exc
        out = []
        for path, info in found.items():
            if info.get("type", "file") != "file":
                continue
            name = str(path)
            rel = name[len(self.root) + 1:] if name.startswith(self.root + "/") else posixpath.relpath(name, self.root)
            size = info.get("size")
            out.append(RemoteFile(rel, int(size) if isinstance(size, int) else None, published_checks(info)))
        return sorted(out, key=lambda f: f.rel)

    def open(self, rel: str):
        """A binary reader for ``rel``."""
        return self.fs.open(f"{self.root}/{rel}", "rb", **self.open_kwargs)


def _same_path(rel: str) -> str:
    return rel


def _target_itself(target: Path) -> Path:
    return target


def _no_problems(path: Path, spec: FetchSpec) -> list[str]:
    return []


@dataclass
class FetchSpec:
    """How one benchmark is fetched, declared in its package's ``fetch.py`` so a new benchmark adds its own.

    Attributes
    ----------
    name : str
        The registered benchmark name (what the printed block's ``name`` is).
    source : HubSource or GcsSource
        The public home.
    include, exclude : tuple of str
        fnmatch patterns on paths under the remote root; ``{split}`` in an include is filled from
        ``splits``; an exclude also matches a bare file name (``.DS_Store``).
    splits, all_splits : tuple of str
        The splits fetched, and those ``--split`` may name (empty: fetched whole).
    options : dict
        The printed block's ``options``; ``{split}`` in a value is the first split fetched.
    dest : callable
        Remote relative path to the path under the target (default: the same).
    prepare : callable or None
        Runs once every file is in place (e.g. extracting an archive); must be idempotent.
    locate : callable
        The folder the loader's ``path`` is, given the target (default: the target).
    verify : callable
        The layout problems left in that folder (empty list: complete).
    """

    name: str
    source: HubSource | GcsSource
    include: tuple[str, ...]
    exclude: tuple[str, ...] = ()
    splits: tuple[str, ...] = ()
    all_splits: tuple[str, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)
    dest: Callable[[str], str] = field(default=_same_path)
    prepare: Callable[[Path], None] | None = None
    locate: Callable[[Path], Path] = field(default=_target_itself)
    verify: Callable[[Path, FetchSpec], list[str]] = field(default=_no_problems)

    def patterns(self) -> list[str]:
        out: list[str] = []
        for pattern in self.include:
            if "{split}" in pattern:
                out.extend(pattern.format(split=s) for s in self.splits)
            else:
                out.append(pattern)
        return out

    def wants(self, rel: str) -> bool:
        name = posixpath.basename(rel)
        if any(fnmatch.fnmatchcase(rel, p) or fnmatch.fnmatchcase(name, p) for p in self.exclude):
            return False
        return any(fnmatch.fnmatchcase(rel, p) for p in self.patterns())


FETCHERS: dict[str, Callable[..., FetchSpec]] = {}


def register_fetch(name: str):
    """Register ``factory() -> FetchSpec`` as benchmark ``name``'s fetch (``get_fetch_spec`` applies
    ``--revision`` and ``--split`` to a fresh spec)."""

    def wrap(factory: Callable[..., FetchSpec]) -> Callable[..., FetchSpec]:
        FETCHERS[name] = factory
        return factory

    return wrap


def get_fetch_spec(name: str, revision: str | None = None, splits: Iterable[str] | None = None) -> FetchSpec:
    """The registered spec of ``name`` with a revision and splits applied.

    Parameters
    ----------
    name : str
        A benchmark with a ``fetch.py``.
    revision : str, optional
        Hugging Face branch, tag or commit (HF sources only).
    splits : iterable of str, optional
        Splits to fetch instead of the default ones (benchmarks with ``all_splits`` only).

    Returns
    -------
    FetchSpec

    Raises
    ------
    FetchError
        An unknown benchmark (naming the known ones), a revision for a non-HF source, an unknown split.
    """
    import pipeline.benchmarks  # noqa: F401  (imports every benchmark package's fetch module)

    if name not in FETCHERS:
        raise FetchError(f"unknown benchmark {name!r} for data fetch; known: {', '.join(sorted(FETCHERS))}")
    spec = FETCHERS[name]()
    if revision is not None:
        if not isinstance(spec.source, HubSource):
            raise FetchError(f"{name}: --revision applies to Hugging Face repos; {spec.source.describe()} has none")
        spec.source = HubSource(spec.source.repo_id, revision)
    if splits:
        chosen = tuple(splits)
        unknown = [s for s in chosen if s not in spec.all_splits]
        if not spec.all_splits:
            raise FetchError(f"{name}: --split does not apply (the benchmark is fetched whole)")
        if unknown:
            raise FetchError(f"{name}: unknown split(s) {unknown}; known: {', '.join(spec.all_splits)}")
        spec.splits = chosen
    return spec


@dataclass
class FetchReport:
    """What a fetch did: files downloaded / skipped as complete, files that failed verification, layout
    problems, the loader path and the ``benchmark:`` block to paste into a job."""

    name: str
    source: str
    path: Path
    downloaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    bytes_downloaded: int = 0
    block: str = ""

    @property
    def ok(self) -> bool:
        return not self.failed and not self.problems


def check_target(target: Path) -> Path:
    """Create ``target`` if needed and prove it writable (a probe file); ``FetchError`` naming it if not."""
    target = Path(target).expanduser()
    try:
        if target.exists() and not target.is_dir():
            raise FetchError(f"target {target} exists and is not a folder")
        target.mkdir(parents=True, exist_ok=True)
        probe = target / f".starkv-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except FetchError:
        raise
    except OSError as exc:
        raise FetchError(f"target {target} is not writable: {exc.strerror or exc}") from exc
    return target.resolve()


class _Digests:
    """Running digests of the algorithms a file publishes."""

    def __init__(self, checks: dict[str, str]) -> None:
        self.hashers: dict[str, Any] = {}
        for algo in checks:
            if algo in ("sha256", "md5"):
                self.hashers[algo] = hashlib.new(algo)
            elif algo == "git_sha1":
                self.hashers[algo] = None  # needs the size first: started in ``begin``
            elif algo == "crc32c":
                import google_crc32c

                self.hashers[algo] = google_crc32c.Checksum()

    def begin(self, size: int | None) -> None:
        if "git_sha1" in self.hashers:
            h = hashlib.sha1()
            h.update(f"blob {size}\0".encode())
            self.hashers["git_sha1"] = h

    def update(self, chunk: bytes) -> None:
        for h in self.hashers.values():
            h.update(chunk)

    def mismatches(self, checks: dict[str, str]) -> list[str]:
        out = []
        for algo, want in checks.items():
            h = self.hashers.get(algo)
            if h is None:
                continue
            got = h.digest().hex() if algo == "crc32c" else h.hexdigest()
            if got != want.lower():
                out.append(f"{algo} {got} != published {want}")
        return out


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total or None, unit="B", unit_scale=True, unit_divisor=1024, desc="fetch",
                disable=not enabled, file=sys.stderr, dynamic_ncols=True)


def _download(remote: Remote, item: RemoteFile, final: Path, bar: Any) -> tuple[int, list[str]]:
    """Copy one file to ``.<name>.part`` beside ``final``, verify, rename; ``(bytes, problems)``. The part
    file is removed on any failure (exceptions included), so nothing partial stays behind."""
    final.parent.mkdir(parents=True, exist_ok=True)
    part = final.with_name(f".{final.name}.part")
    digests = _Digests(item.checks)
    digests.begin(item.size)
    written = 0
    try:
        try:
            with remote.open(item.rel) as src, open(part, "wb") as dst:
                while True:
                    chunk = src.read(CHUNK)
                    if not chunk:
                        break
                    dst.write(chunk)
                    digests.update(chunk)
                    written += len(chunk)
                    bar.update(len(chunk))
                dst.flush()
                os.fsync(dst.fileno())
        except Exception as exc:  # noqa: BLE001 - a dropped connection or a full disk, per backend
            raise FetchError(f"fetching {item.rel} from {remote.label} failed after {written} bytes: "
                             f"{type(exc).__name__}: {exc} (complete files are kept; run again to resume)") from exc
        problems = []
        if item.size is not None and written != item.size:
            problems.append(f"size {written} != listed {item.size}")
        problems += digests.mismatches(item.checks)
        if problems:
            return written, problems
        os.replace(part, final)
        return written, []
    finally:
        part.unlink(missing_ok=True)


def fetch(spec: FetchSpec, target: str | Path, *, remote: Remote | None = None, progress: bool = True,
          log: Callable[[str], None] = print) -> FetchReport:
    """Fetch ``spec`` into ``target``, resuming what an earlier fetch there completed.

    Parameters
    ----------
    spec : FetchSpec
        What to fetch.
    target : str or Path
        The target folder (created if missing).
    remote : Remote, optional
        Replaces the spec's public home (a mirror, a local copy in tests).
    progress : bool
        Show a byte progress bar on stderr.
    log : callable
        Where the one-line summaries go.

    Returns
    -------
    FetchReport
        Downloaded / skipped files, files that failed verification (not kept), layout problems, the
        loader path and the ``benchmark:`` block.

    Raises
    ------
    FetchError
        A target that is not writable, a remote that is unreachable or holds no wanted file (a target
        folder created for the fetch is removed again), or a read that failed mid-fetch (complete files
        are kept, the partial one is not).
    """
    created = not Path(target).expanduser().exists()
    target = check_target(Path(target))
    try:
        remote = remote or spec.source.open()
        wanted = [f for f in remote.files() if spec.wants(f.rel)]
        if not wanted:
            raise FetchError(f"remote {remote.label} holds no file matching {', '.join(spec.patterns())} "
                             f"(is it the {spec.name} dataset?)")
    except FetchError:
        if created and not any(target.iterdir()):  # leave no trace of a fetch that never started
            target.rmdir()
        raise
    report = FetchReport(spec.name, remote.label, target)
    before = _recorded_checks(target)
    todo: list[tuple[RemoteFile, Path]] = []
    for item in wanted:
        final = target / spec.dest(item.rel)
        same = before.get(spec.dest(item.rel), item.checks) == item.checks  # a new revision changes digests
        if final.is_file() and same and (item.size is None or final.stat().st_size == item.size):
            report.skipped.append(item.rel)
        else:
            todo.append((item, final))
    total = sum(item.size or 0 for item, _ in todo)
    log(f"[data fetch] {spec.name}: {len(wanted)} files from {remote.label}; {len(report.skipped)} already "
        f"complete, {len(todo)} to download ({total / 2**20:.1f} MiB)")
    with _progress(total, progress) as bar:
        for item, final in todo:
            written, problems = _download(remote, item, final, bar)
            report.bytes_downloaded += written
            if problems:
                report.failed.append(f"{item.rel}: {'; '.join(problems)} (not kept)")
            else:
                report.downloaded.append(item.rel)
    if not report.failed and spec.prepare is not None:
        spec.prepare(target)
    report.path = spec.locate(target)
    if not report.failed:
        report.problems = spec.verify(report.path, spec)
    report.block = benchmark_block(spec, report.path)
    _write_manifest(target, spec, remote, wanted, report)
    return report


def benchmark_block(spec: FetchSpec, path: Path) -> str:
    """The ``benchmark:`` section of a job YAML for the fetched folder."""
    import yaml

    section: dict[str, Any] = {"name": spec.name, "path": str(path)}
    first = spec.splits[0] if spec.splits else ""
    options = {k: (v.format(split=first) if isinstance(v, str) else v) for k, v in spec.options.items()}
    if options:
        section["options"] = options
    return yaml.safe_dump({"benchmark": section}, sort_keys=False, default_flow_style=False).rstrip("\n")


def _recorded_checks(target: Path) -> dict[str, dict[str, str]]:
    """``{path: digests}`` from an earlier fetch's manifest (empty when there is none or it is unreadable)."""
    try:
        data = json.loads((target / MANIFEST).read_text(encoding="utf-8"))
        return {f["path"]: {k: v for k, v in f.items() if k not in ("path", "size")} for f in data["files"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _write_manifest(target: Path, spec: FetchSpec, remote: Remote, wanted: list[RemoteFile],
                    report: FetchReport) -> None:
    """``.starkv-fetch.json``: source, time, and each file with its size and published digests."""
    data = {"benchmark": spec.name, "source": remote.label, "fetched_at": datetime.now(timezone.utc).isoformat(),
            "complete": report.ok, "path": str(report.path),
            "files": [{"path": spec.dest(f.rel), "size": f.size, **f.checks} for f in wanted]}
    tmp = target / f".{MANIFEST}.part"
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, target / MANIFEST)


# ---------------------------------------------------------------------------------------------------
# Helpers the benchmark specs share
# ---------------------------------------------------------------------------------------------------

def extract_zip(archive: Path, folder: Path) -> Path:
    """Extract ``archive`` into ``folder`` once: into a temporary sibling renamed into place, so a folder
    under the final name is always complete. An archive holding one top folder named like ``folder`` is
    unwrapped. Returns ``folder``."""
    if folder.is_dir():
        return folder
    tmp = folder.with_name(f".{folder.name}.part")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(tmp)
        entries = [p for p in tmp.iterdir() if p.name != "__MACOSX"]
        inner = tmp / folder.name
        source = inner if len(entries) == 1 and inner.is_dir() else tmp
        os.replace(source, folder)
    except (OSError, zipfile.BadZipFile) as exc:
        raise FetchError(f"cannot extract {archive}: {exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def shard_count_problems(files: list[Path], label: str) -> list[str]:
    """Problems when ``*-NNNNN-of-MMMMM*`` shards are missing: per prefix, the count must equal MMMMM."""
    import re

    groups: dict[tuple[str, int], set[int]] = {}
    for f in files:
        m = re.match(r"^(.*)-(\d+)-of-(\d+)", f.name)
        if m:
            groups.setdefault((m.group(1), int(m.group(3))), set()).add(int(m.group(2)))
    problems = []
    for (prefix, total), seen in sorted(groups.items()):
        missing = sorted(set(range(total)) - seen)
        if missing:
            problems.append(f"{label}: {prefix} has {len(seen)} of {total} shards (missing {missing[:5]}"
                            f"{' ...' if len(missing) > 5 else ''})")
    if not groups:
        problems.append(f"{label}: no *-NNNNN-of-MMMMM shard found")
    return problems


def missing_images(folder: Path, names: Iterable[str], label: str, limit: int = 5) -> list[str]:
    """One problem line if any of ``names`` is not a file under ``folder``."""
    names = sorted(set(names))
    missing = [n for n in names if not (folder / n).is_file()]
    if not missing:
        return []
    return [f"{label}: {len(missing)} of {len(names)} referenced images missing under {folder} "
            f"(e.g. {', '.join(missing[:limit])})"]
