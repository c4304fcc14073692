"""Store problems as one-line errors: the CLI prints the message (path + what to do), never a traceback."""

from __future__ import annotations


class StoreError(Exception):
    """A result store cannot be used as asked; the message names the path or URL and what to do."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))  # always one line


def brief(err: BaseException, limit: int = 300) -> str:
    """``Type: message`` of a backend error, cut to a readable length (some backends dump whole search paths)."""
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:limit]}{' ...' if len(text) > limit else ''}"


class LeaseHeld(StoreError):
    """Another live run holds the run folder's lease."""


class LeaseCorrupt(StoreError):
    """The run folder holds a lease file that is not a starkv-eval lease (never overwritten)."""
