"""Fail an image build when an installed distribution is not at its pinned version.

Usage: python check_pins.py [--require-cuda] NAME==VERSION [NAME==VERSION ...]
A local version label is ignored (torch 2.13.0+cu128 satisfies torch==2.13.0). --require-cuda also
fails on a CPU-only torch build, which a wrong index URL installs silently.
"""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, version


def drift(pins: list[str]) -> dict[str, tuple[str, str]]:
    """{name: (installed, wanted)} for every pin that does not hold."""
    bad = {}
    for pin in pins:
        name, sep, wanted = pin.partition("==")
        if not sep or not name or not wanted:
            raise ValueError(f"expected NAME==VERSION, got {pin!r}")
        try:
            installed = version(name)
        except PackageNotFoundError:
            installed = "missing"
        if installed.split("+")[0] != wanted:
            bad[name] = (installed, wanted)
    return bad


def main(argv: list[str]) -> int:
    require_cuda = "--require-cuda" in argv
    pins = [a for a in argv if a != "--require-cuda"]
    bad = drift(pins)
    if bad:
        print(f"version drift (installed, wanted): {bad}", file=sys.stderr)
        return 1
    if require_cuda:
        import torch

        if not torch.version.cuda:
            print(f"torch {torch.__version__} is a CPU build", file=sys.stderr)
            return 1
    print("pins ok:", ", ".join(pins))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
