"""Step-level test setup shared by test modules (a plain helper, not a fixture)."""

from __future__ import annotations


def tiny_episode(model_dir, folder, *, steps: int, seed: int):
    """(the tiny model loaded on CPU, a one-episode synthetic benchmark of ``steps`` steps, its episode)."""
    from pipeline.benchmarks.synthetic.benchmark import SyntheticBenchmark, generate_synthetic
    from pipeline.models.loader import ModelSpec, load_model

    root = generate_synthetic(folder / "syn", num_episodes=1, min_steps=steps, max_steps=steps, seed=seed,
                              resolutions=((320, 240),))
    bench = SyntheticBenchmark(str(root))
    loaded = load_model(ModelSpec(path=str(model_dir), device="cpu", dtype="float32"))
    return loaded, bench, bench.load()[0]
