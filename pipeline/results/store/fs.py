"""One filesystem API over local folders and object storage (any fsspec URL), with atomic writes.

A write of a finished file is atomic on every backend: temp file + rename on a local filesystem, one PUT
on an object store, so a reader (or a killed writer) never leaves or sees half a file under the real name.
Every failure of the backend becomes a one-line ``StoreError`` naming the location.
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.results.store.errors import StoreError, brief

TEMP_MARK = ".tmp-"
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(location: str | os.PathLike) -> bool:
    """True for ``scheme://...`` (``file://`` included), False for a plain path."""
    return isinstance(location, str) and bool(_URL.match(location))


def open_store(location: str | os.PathLike) -> Store:
    """The store at a local path or fsspec URL; a missing backend package or bad URL is a ``StoreError``."""
    from fsspec.core import url_to_fs
    from fsspec.implementations.local import LocalFileSystem

    if not is_url(location) or str(location).startswith("file://"):
        path = str(location)[len("file://"):] if is_url(location) else str(location)
        return Store(str(location), LocalFileSystem(), str(Path(path).expanduser().resolve()))
    url = str(location)
    try:
        fs, root = url_to_fs(url)
    except ImportError as err:
        raise StoreError(f"{url}: support for {url.split('://')[0]}:// is not installed ({err}); install the "
                         "package it names (s3fs for s3://, gcsfs for gs://)") from None
    except Exception as err:  # noqa: BLE001 - unknown protocol, malformed URL
        raise StoreError(f"{url}: not a usable storage URL ({brief(err)})") from None
    if isinstance(fs, LocalFileSystem):
        return Store(url, fs, str(Path(root).resolve()))
    if fs.protocol in ("memory",) or "memory" in (fs.protocol if isinstance(fs.protocol, tuple) else ()):
        raise StoreError(f"{url}: memory:// lives in one process and cannot be shared with Ray workers")
    return Store(url, fs, root.rstrip("/"))


@dataclass
class Store:
    """A folder of a filesystem: ``rel`` paths below are '/'-joined and relative to ``root``."""

    url: str  # as the user gave it (for messages)
    fs: Any  # an fsspec AbstractFileSystem (picklable, so Ray workers can write through it)
    root: str

    # ------------------------------------------------------------------ naming
    @property
    def local(self) -> bool:
        from fsspec.implementations.local import LocalFileSystem

        return isinstance(self.fs, LocalFileSystem)

    def path(self, rel: str = "") -> str:
        return f"{self.root}/{rel}".rstrip("/") if rel else self.root

    def where(self, rel: str = "") -> str:
        """The location as a user would type it (a path locally, a URL on object storage)."""
        return self.path(rel) if self.local else self.fs.unstrip_protocol(self.path(rel))

    def location(self, rel: str = "") -> Path | str:
        """``Path`` for a local store (so local callers keep using pathlib), the URL string otherwise."""
        return Path(self.path(rel)) if self.local else self.where(rel)

    def sub(self, rel: str) -> Store:
        return Store(self.where(rel), self.fs, self.path(rel))

    def mlflow_home(self) -> Path:
        """Where the default sqlite MLflow store goes: the output folder, or the working folder if remote."""
        return Path(self.root) if self.local else Path.cwd()

    @contextlib.contextmanager
    def guard(self, what: str, rel: str = "") -> Iterator[None]:
        """Turn any backend failure into one line naming the location and what to check."""
        try:
            yield
        except StoreError:
            raise
        except Exception as err:  # noqa: BLE001 - every backend raises its own kinds (OSError, botocore, ...)
            hint = ("check the path and its permissions" if self.local else
                    "check that the store is reachable and the credentials allow it (for s3:// e.g. "
                    "AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)")
            raise StoreError(f"{self.where(rel)}: cannot {what} ({brief(err)}); {hint}") from None

    # ------------------------------------------------------------------ checks
    def check(self) -> None:
        """Fail now (before any work) if the store cannot be reached or listed."""
        with self.guard("reach the result store"):
            if self.local:
                probe = Path(self.root)
                while not probe.exists():
                    probe = probe.parent
                if not probe.is_dir():
                    raise NotADirectoryError(f"{probe} is not a folder")
                return
            self.fs.invalidate_cache()
            bucket = self.root.split("/", 1)[0]
            self.fs.ls(bucket, detail=False)  # unreachable, unauthorised or missing bucket raise here

    # ------------------------------------------------------------------ reading
    def exists(self, rel: str) -> bool:
        with self.guard("look up", rel):
            if not self.local:
                self.fs.invalidate_cache(self.path(rel))
            return self.fs.isfile(self.path(rel))

    def read_bytes(self, rel: str) -> bytes | None:
        """The file's bytes, None if it does not exist."""
        with self.guard("read", rel):
            try:
                return self.fs.cat_file(self.path(rel))
            except FileNotFoundError:
                return None

    def read_many(self, rels: list[str]) -> dict[str, bytes]:
        """Several files at once (concurrent requests on object stores)."""
        if not rels:
            return {}
        with self.guard("read files under", ""):
            if self.local:
                return {r: Path(self.path(r)).read_bytes() for r in rels}
            data = self.fs.cat([self.path(r) for r in rels])
            return {r: data[self.path(r)] for r in rels}

    def list_files(self, rel_dir: str, suffix: str = "") -> list[str]:
        """Files below ``rel_dir`` (recursive, sorted, hidden/temp names skipped), relative to the root."""
        base = self.path(rel_dir)
        with self.guard("list", rel_dir):
            if not self.local:
                self.fs.invalidate_cache()
            try:
                found = self.fs.find(base)
            except FileNotFoundError:
                return []
        out = []
        for p in found:
            name = p.rsplit("/", 1)[-1]
            if name.startswith(".") or not name.endswith(suffix):
                continue
            out.append(p[len(self.root) + 1:] if p.startswith(self.root + "/") else p)
        return sorted(out)

    def list_dirs_with(self, name: str) -> list[str]:
        """Sub-folders (one level) that hold a file called ``name`` (e.g. run folders with config.json)."""
        with self.guard("list", ""):
            if not self.local:
                self.fs.invalidate_cache()
            found = self.fs.glob(f"{self.root}/*/{name}")
        return sorted(p[len(self.root) + 1:].rsplit("/", 1)[0] for p in found)

    # ------------------------------------------------------------------ writing
    def write_atomic(self, rel: str, data: bytes) -> None:
        """Replace the file as a whole: temp + fsync + rename locally, one PUT on object storage."""
        with self.guard("write", rel):
            if not self.local:
                self.fs.pipe_file(self.path(rel), data)
                return
            target = Path(self.path(rel))
            tmp = _durable_temp(target, data)
            try:
                os.replace(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)

    def create(self, rel: str, data: bytes) -> bool:
        """Write the file only if it does not exist yet (atomically); False if it already existed.

        Locally a complete temp file is hard-linked to the name (``link`` fails if the name exists); on S3 a
        conditional PUT (``If-None-Match: *``). Other backends fall back to fsspec's check-then-write.
        """
        with self.guard("create", rel):
            if not self.local:
                try:
                    self.fs.pipe_file(self.path(rel), data, mode="create")
                except FileExistsError:
                    return False
                except OSError as err:
                    if "precondition" in str(err).lower() or "412" in str(err):
                        return False
                    raise
                return True
            target = Path(self.path(rel))
            tmp = _durable_temp(target, data)
            try:
                os.link(tmp, target)
            except FileExistsError:
                return False
            finally:
                tmp.unlink(missing_ok=True)
            return True

    def delete(self, rel: str) -> None:
        with self.guard("delete", rel):
            try:
                self.fs.rm_file(self.path(rel))
            except FileNotFoundError:
                pass

    def remove_temp_files(self, rel_dir: str) -> list[str]:
        """Temp files a killed local writer left behind (never visible under a real name); removed."""
        if not self.local or not Path(self.path(rel_dir)).is_dir():
            return []
        gone = []
        for p in Path(self.path(rel_dir)).rglob(f".*{TEMP_MARK}*"):
            p.unlink(missing_ok=True)
            gone.append(str(p))
        return gone


def _durable_temp(target: Path, data: bytes) -> Path:
    """``data`` in a synced temp file beside ``target`` (its folder made), ready to rename or link into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}{TEMP_MARK}{uuid.uuid4().hex}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp
