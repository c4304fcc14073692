"""A Hugging Face hub cache written by hand in the layout ``huggingface_hub`` downloads produce.

``<cache>/models--<org>--<name>/`` holds ``blobs/<etag>`` (the git blob sha1 of a small file, the sha256 of an
LFS file such as ``*.safetensors``), ``snapshots/<commit>/<file>`` as relative symlinks into ``../../blobs``,
``refs/<branch or tag>`` with the commit (no newline) and ``trees/<commit>.json`` (the tree listing, format
version 1); ``<cache>/.locks/models--<org>--<name>/<etag>.lock`` are the download locks. Written from the
Hub's published layout (https://huggingface.co/docs/hub/local-cache), not with the library's own writer, so
the code under test reads a cache it did not write.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

LFS_SUFFIXES = (".safetensors", ".bin", ".pt")


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a file's bytes (the Hub's etag of a non-LFS file)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def write_hub_snapshot(src: str | os.PathLike, cache: str | os.PathLike, repo_id: str, commit: str,
                       refs: tuple[str, ...] = ("main",)) -> Path:
    """Put the files of folder ``src`` into ``cache`` as ``repo_id`` at ``commit``; ``refs`` point at it.

    Returns the snapshot folder ``<cache>/models--org--name/snapshots/<commit>``.
    """
    src, cache = Path(src), Path(cache)
    assert len(commit) == 40 and all(c in "0123456789abcdef" for c in commit), commit
    folder_name = "models--" + repo_id.replace("/", "--")
    repo = cache / folder_name
    blobs, snapshot, locks = repo / "blobs", repo / "snapshots" / commit, cache / ".locks" / folder_name
    for d in (blobs, snapshot, locks):
        d.mkdir(parents=True, exist_ok=True)
    tree: dict[str, dict] = {}
    for file in sorted(p for p in src.rglob("*") if p.is_file()):
        rel = file.relative_to(src).as_posix()
        data = file.read_bytes()
        lfs = file.suffix in LFS_SUFFIXES
        etag = hashlib.sha256(data).hexdigest() if lfs else git_blob_sha1(data)
        (blobs / etag).write_bytes(data)
        (locks / f"{etag}.lock").touch()
        link = snapshot / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blobs / etag, link.parent))
        entry: dict = {"size": len(data), "blob_id": git_blob_sha1(data)}
        if lfs:  # the blob id of an LFS file is its pointer file's; the content hash is the sha256
            pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{etag}\nsize {len(data)}\n".encode()
            entry = {"size": len(data), "blob_id": git_blob_sha1(pointer), "lfs_sha256": etag, "lfs_size": len(data)}
        tree[rel] = entry
    for ref in refs:
        path = repo / "refs" / ref
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(commit)
    (repo / "trees").mkdir(exist_ok=True)
    (repo / "trees" / f"{commit}.json").write_text(json.dumps({"format_version": 1, "files": tree}, indent=1))
    return snapshot
