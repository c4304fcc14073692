"""Step wall time with the exact memory accounting on vs off: one process, one thread, best of 3.

    python tests/tools/accounting_cost.py [--steps 6] [--images 3] [--tokens 6]

The tiny random-weight model on one synthetic episode of 320×240 screenshots, SnapKV at 20 %, each setting
run 3 times (interleaved) through ``EpisodeRunner``; prints both times and the change.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=6)
    args = parser.parse_args()

    import torch

    import starkv
    from pipeline.config import AgentConfig
    from pipeline.metrics.units import Unit
    from pipeline.models.tiny import ensure_tiny_model
    from pipeline.step.engine import EpisodeRunner
    from tests.step.tiny_setup import tiny_episode

    torch.set_num_threads(1)
    scratch = Path(tempfile.mkdtemp())
    model_dir = ensure_tiny_model(scratch / "tiny" / "seed0", seed=0)
    loaded, bench, episode = tiny_episode(model_dir, scratch, steps=args.steps, seed=3)
    best: dict[bool, float] = {}
    for accounting in (False, True) * 3:
        runner = EpisodeRunner(loaded, bench, AgentConfig(image_slots=args.images), max_new_tokens=args.tokens,
                               memory_accounting=accounting)
        t0 = time.perf_counter()
        runner.run(episode, starkv.build("snapkv"), Unit(run_id="r", compressor="snapkv", budget=20.0, model="tiny"))
        best[accounting] = min(best.get(accounting, float("inf")), time.perf_counter() - t0)
    print(f"accounting off {best[False]:.3f} s, on {best[True]:.3f} s: {100 * (best[True] / best[False] - 1):+.1f} %")


if __name__ == "__main__":
    main()
