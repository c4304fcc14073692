"""Where benchmark data lives: a local path or any fsspec URL (shared filesystem, object store).

Loaders call ``open_fs`` once on their ``path`` option and then work with ``(filesystem, path without
protocol)`` pairs, so the same code reads a local folder, ``s3://...`` or ``memory://...`` (tests).
``url_of`` turns such a pair back into what a ``Step.image_path`` holds: a plain path for local data
(what every consumer expects), the full URL otherwise (``open_screenshot`` opens URLs with
fsspec).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from pipeline.benchmarks.common.base import BenchmarkDataError


def open_fs(path: str) -> tuple[Any, str]:
    """``(filesystem, path without protocol)`` for a local path or fsspec URL; local paths resolved."""
    if "://" not in path:
        return LocalFileSystem(), str(Path(path).expanduser().resolve())
    fs, root = fsspec.core.url_to_fs(path)
    return fs, root.rstrip("/")


def open_data(path: str, bench: str, expected: str, folder: bool = False) -> tuple[Any, str]:
    """``open_fs(path)`` of a benchmark's data; BenchmarkDataError naming ``bench``, the path and what it
    should hold (``expected``) unless it exists (and is a folder, with ``folder``)."""
    fs, root = open_fs(path)
    if not (fs.isdir(root) if folder else fs.exists(root)):
        problem = "is not a folder" if folder else "does not exist"
        raise BenchmarkDataError(f"{bench}: {url_of(fs, root)} {problem} (expected {expected})")
    return fs, root


def is_local(fs: Any) -> bool:
    """True for the local filesystem (paths usable with ``open`` / ``pathlib``)."""
    return isinstance(fs, LocalFileSystem)


def url_of(fs: Any, path: str) -> str:
    """What goes into ``Step.image_path``: a plain resolved path locally, a full URL elsewhere."""
    return str(Path(path).resolve()) if is_local(fs) else fs.unstrip_protocol(path)


def file_under(folder: tuple[Any, str], name: str) -> tuple[str, bool]:
    """``(url_of the file, whether it exists)`` for ``name`` under the ``(filesystem, folder)`` pair."""
    fs, root = folder
    full = f"{root}/{name}"
    return url_of(fs, full), fs.exists(full)


def read_json(fs: Any, file: str, bench: str) -> Any:
    """The JSON document in ``file``; BenchmarkDataError naming ``bench`` and the file when it cannot be
    read or parsed."""
    try:
        with fs.open(file, "rb") as fh:
            return json.loads(fh.read().decode("utf-8"))
    except (OSError, ValueError) as exc:
        raise BenchmarkDataError(f"{bench}: {url_of(fs, file)} is not readable JSON: {exc}") from exc


def image_size_at(fs: Any, path: str) -> tuple[int, int] | str:
    """Size from the image header of ``path`` on ``fs``, or why it cannot be read (a problem string)."""
    try:
        from PIL import Image

        with fs.open(path, "rb") as fh, Image.open(fh) as im:
            return int(im.size[0]), int(im.size[1])
    except FileNotFoundError:
        return "does not exist"
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a bad sample, not a crash
        return f"is unreadable ({type(exc).__name__}: {exc})"


def open_screenshot(path: str):
    """Open and fully decode a screenshot (fsspec URLs too) as RGB; a missing or corrupt file raises
    ``ValueError`` naming the path."""
    from PIL import Image

    try:
        if "://" in path:
            with fsspec.open(path, "rb") as fh:
                image = Image.open(fh)
                image.load()
        else:
            with Image.open(path) as raw:
                raw.load()
                image = raw.copy()
    except FileNotFoundError:
        raise ValueError(f"screenshot not found: {path}") from None
    except Exception as err:  # PIL raises several types for corrupt data
        raise ValueError(f"screenshot {path} cannot be decoded: {type(err).__name__}: {err}") from None
    return image.convert("RGB")
