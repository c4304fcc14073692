"""Hugging Face Hub names for ``model.path``: ``org/name`` (optionally at ``model.revision``) to a local folder.

Resolution goes through ``huggingface_hub`` and its cache (``snapshot_download``), so a checkpoint another
tool downloaded is found again and a downloaded one is shared with them. The cache folder and the offline
switch are read from the environment at call time (``HF_HUB_CACHE``, ``HF_HOME``, ``HF_HUB_OFFLINE``), not
from ``huggingface_hub.constants`` (fixed when the library is first imported), so a driver or test that sets
them later is honoured. Tokens (``HF_TOKEN``, the token file) are left to ``huggingface_hub``.

A job resolves its model once in the driver (``pipeline.run.job.run_job``), before any work, and passes the
snapshot folder to its actors; this module never downloads per actor. Light to import: ``huggingface_hub``
is imported only when a repo id is resolved.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

#: what ``huggingface_hub`` accepts as a repo id (``utils._validators.REPO_ID_REGEX``) with exactly one ``/``
_REPO_ID = re.compile(r"[\w\-.]{1,96}/[\w\-.]{1,96}")
_COMMIT = re.compile(r"[0-9a-f]{40}")
DEFAULT_REVISION = "main"
RESERVED_PATHS = ("tiny", "micro")


class HubModelError(ValueError):
    """A repo id that cannot be resolved; the message names the repo id, the revision and the cache folder."""


@dataclass(frozen=True)
class ResolvedModel:
    """Where a hub model lies on this node.

    Attributes
    ----------
    repo_id : str
        The configured ``org/name``.
    revision : str
        The requested revision (branch, tag or commit sha; ``main`` when none is configured).
    commit : str
        The commit sha the revision resolved to (the snapshot folder's name).
    folder : Path
        The snapshot folder ``<cache>/models--org--name/snapshots/<commit>``.
    """

    repo_id: str
    revision: str
    commit: str
    folder: Path

    @property
    def cache(self) -> Path:
        """The hub cache folder the snapshot lies in."""
        return self.folder.parents[2]

    @property
    def name(self) -> str:
        """The model's display name: the repo's name part, as a local folder of the same download would give."""
        return self.repo_id.split("/", 1)[1]


def _is_true(value: str | None) -> bool:
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_cache_dir() -> Path:
    """The hub cache folder the environment names now (``HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
    ``$XDG_CACHE_HOME/huggingface/hub``, else ``~/.cache/huggingface/hub``), as ``huggingface_hub`` derives it."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(os.path.expandvars(explicit)).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface")
    return Path(os.path.expandvars(home)).expanduser() / "hub"


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) forbids network access now."""
    return _is_true(os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE"))


def is_repo_id(path: str) -> bool:
    """Whether ``model.path`` names a hub repo: ``org/name``, not ``tiny``/``micro``, not an existing path.

    A folder that exists wins (``models/UI-TARS`` on disk stays a folder); ``./x/y``, ``/x/y`` and ``~/x``
    are paths.
    """
    if path in RESERVED_PATHS or path.startswith(("tiny:", "/", "./", "../", "~")):
        return False
    if not _REPO_ID.fullmatch(path) or "--" in path or ".." in path:
        return False
    return not Path(path).exists()


def _cached_refs(cache: Path, repo_id: str) -> list[str]:
    refs = cache / f"models--{repo_id.replace('/', '--')}" / "refs"
    if not refs.is_dir():
        return []
    return sorted(str(p.relative_to(refs)) for p in refs.rglob("*") if p.is_file())


def _hub_refusal(err: Exception, repo_id: str, revision: str | None, cache) -> HubModelError:
    """The Hub's answer that the repo or revision is not there for us, as one message naming both."""
    from huggingface_hub.errors import GatedRepoError, RevisionNotFoundError

    where = _where(repo_id, revision, cache)
    if isinstance(err, RevisionNotFoundError):
        return HubModelError(f"{where}: the revision does not exist on the Hub")
    if isinstance(err, GatedRepoError):
        return HubModelError(f"{where}: the repo is gated; accept its terms on the Hub and set HF_TOKEN")
    return HubModelError(f"{where}: no such repo on the Hub (or it is private: set HF_TOKEN)")


def _where(repo_id: str, revision: str, cache: Path) -> str:
    return f"Hugging Face repo {repo_id!r} (revision {revision!r}; hub cache searched: {cache})"


def _offline_miss(repo_id: str, revision: str, cache: Path, why: str) -> HubModelError:
    refs = _cached_refs(cache, repo_id)
    if refs or (cache / f"models--{repo_id.replace('/', '--')}").is_dir():
        found = f"the cache holds this repo at {', '.join(refs) or 'no named revision'}, not at {revision!r}"
    else:
        found = "the cache holds no copy of this repo"
    return HubModelError(f"{_where(repo_id, revision, cache)} not found: {why}; {found}. Download it first "
                         f"(`hf download {repo_id}" + ("" if revision == DEFAULT_REVISION else f" --revision {revision}")
                         + "` with HF_HUB_CACHE/HF_HOME set as for the run) or fix model.path/model.revision")


def resolve_repo(repo_id: str, revision: str | None = None, *, download: bool = True,
                 cache_dir: str | os.PathLike | None = None) -> ResolvedModel:
    """The local snapshot of ``repo_id`` at ``revision`` (downloading it when allowed and missing).

    Parameters
    ----------
    repo_id : str
        ``org/name`` on the Hub.
    revision : str, optional
        A branch, tag or commit sha; ``main`` when None.
    download : bool
        False: only look in the cache (no network, nothing written), as validation and actors do.
    cache_dir : path, optional
        The hub cache; by default the one the environment names now (``hub_cache_dir``).

    Raises
    ------
    HubModelError
        The repo or revision is missing (offline: from the cache; online: on the Hub), or the Hub is
        unreachable and the cache has no copy. The message names the repo id, the revision and the cache.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    revision = revision or DEFAULT_REVISION
    cache = Path(cache_dir).expanduser() if cache_dir is not None else hub_cache_dir()
    offline = hub_offline() or not download
    try:
        folder = snapshot_download(repo_id, revision=revision, cache_dir=str(cache), local_files_only=offline)
    except LocalEntryNotFoundError as err:
        why = ("HF_HUB_OFFLINE=1 forbids downloading" if hub_offline() else
               "only the cache is searched here" if not download else f"the Hub is unreachable ({err})")
        raise _offline_miss(repo_id, revision, cache, why) from None
    except (RevisionNotFoundError, GatedRepoError, RepositoryNotFoundError) as err:
        raise _hub_refusal(err, repo_id, revision, cache) from None
    except (HfHubHTTPError, OSError) as err:
        raise HubModelError(f"{_where(repo_id, revision, cache)}: {type(err).__name__}: {err}") from None
    path = Path(folder)
    return ResolvedModel(repo_id=repo_id, revision=revision, commit=path.name, folder=path)


def check_repo(repo_id: str, revision: str | None = None) -> str:
    """Fail fast, before any work, if ``repo_id`` at ``revision`` cannot be had; nothing is downloaded.

    A cached snapshot passes without network. Otherwise offline (``HF_HUB_OFFLINE=1``) fails naming the
    cache; online one metadata request checks that the repo and revision exist (the run downloads them).
    Returns the commit sha, or ``""`` when only the Hub knows it.
    """
    revision = revision or DEFAULT_REVISION
    try:
        return resolve_repo(repo_id, revision, download=False).commit
    except HubModelError:
        if hub_offline():
            raise _offline_miss(repo_id, revision, hub_cache_dir(), "HF_HUB_OFFLINE=1 forbids downloading") from None
    from huggingface_hub import HfApi
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    cache = hub_cache_dir()
    try:
        info = HfApi().model_info(repo_id, revision=revision)
    except (RevisionNotFoundError, GatedRepoError, RepositoryNotFoundError) as err:
        raise _hub_refusal(err, repo_id, revision, cache) from None
    except (HfHubHTTPError, OSError) as err:
        raise _offline_miss(repo_id, revision, cache, f"the Hub is unreachable ({type(err).__name__})") from None
    return info.sha or ""


def snapshot_repo(folder: str | os.PathLike) -> tuple[str, str] | None:
    """``(repo_id, commit)`` when ``folder`` is a hub-cache snapshot (``models--org--name/snapshots/<sha>``)."""
    path = Path(folder)
    repo_dir = path.parent.parent
    if path.parent.name != "snapshots" or not repo_dir.name.startswith("models--") or not _COMMIT.fullmatch(path.name):
        return None
    parts = repo_dir.name[len("models--"):].split("--")
    return "/".join(parts), path.name


__all__ = [
    "DEFAULT_REVISION",
    "HubModelError",
    "ResolvedModel",
    "check_repo",
    "hub_cache_dir",
    "hub_offline",
    "is_repo_id",
    "resolve_repo",
    "snapshot_repo",
]
