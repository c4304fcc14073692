"""The smallest benchmark: copy this module into a new package ``pipeline/benchmarks/<name>/`` (with an
``__init__.py`` that says what the benchmark is) and it is registered; nothing outside the package changes.

Every screenshot under ``path`` (``*.png``) is one single-step episode whose target is the image's centre.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.agent.actions import ParsedAction
from pipeline.benchmarks.common.base import Benchmark, Episode, Step, StepScore, register_benchmark


@register_benchmark("plugin_centre")
class CentreClick(Benchmark):
    """Click the centre of the screen: right when the click lands within a tenth of the width of it."""

    def load(self):
        for i, image in enumerate(sorted(Path(self.path).glob("*.png"))):
            yield Episode(f"ep{i:04d}", self.name, goal="Click the centre",
                          steps=[Step(0, str(image.resolve()), instruction="Click the centre of the screen")])

    def score(self, step: Step, action: ParsedAction, image_size: tuple[int, int]) -> StepScore:
        if action.point is None:
            return StepScore(False, 0.0, "no point")
        w, h = image_size
        x, y = action.point
        inside = abs(x - w / 2) <= w / 10 and abs(y - h / 2) <= w / 10
        return StepScore(inside, float(inside))
