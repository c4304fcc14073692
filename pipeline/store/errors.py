"""Store problems as one-line errors: the CLI prints the message (path + what to do), never a traceback."""

from __future__ import annotations


class StoreError(Exception):
    """A result store cannot be used as asked; the message names the path or URL and what to do."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))  # always one line


class LeaseHeld(StoreError):
    """Another live run holds the run folder's lease."""


class LeaseCorrupt(StoreError):
    """The run folder holds a lease file that is not a starkv-eval lease (never overwritten)."""
