"""A user compressor living outside the project, registered by importing this module (``plugins:``)."""

from __future__ import annotations

from dataclasses import dataclass

import starkv
from baselines.scorers.snapkv import SnapKV


@starkv.register("test_reversed_snapkv")
@dataclass
class ReversedSnapKV(SnapKV):
    """Keeps the least attended tokens: a deliberately bad method for plugin and regression tests."""

    def score(self, ctx):
        return -super().score(ctx)
