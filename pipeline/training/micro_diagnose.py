"""Where a micro agent's accuracy comes from: held-out accuracy by step kind and screenshots back.

``starkv-eval micro-diagnose MODEL_DIR`` evaluates a micro-agent folder on the held-out stream of
``jobs/micro.yaml`` (launcher generator seed 0, the first ``episodes`` episodes) through the evaluation's
own step code (``EpisodeRunner``, full cache, greedy decoding, the real parser and scorer) and splits the
hits by step kind (``icon``: the target is on the current screen; ``recalled_icon``: only on an earlier
one) and by how many screenshots back the target is. The on-disk episodes do not record the distance, so
it is read from the generator: each episode is drawn again from its own seed string and checked against
the loaded one.

``probe_screens`` > 0 adds a linear colour probe: a softmax regression on the vision tower's output token of
each icon cell (the representation the language model receives), trained on two thirds of the screens and
scored on the rest (16 classes, chance 1/16).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]
MICRO_JOB = ROOT / "jobs" / "micro.yaml"
PROBE_STREAM = "micro-probe"


def _steps_back(seed: int, index: int, min_steps: int, max_steps: int) -> list[tuple[str, int]]:
    """``(instruction, steps back)`` per step of generated launcher episode ``index`` of ``seed``."""
    from pipeline.benchmarks.synthetic.benchmark import FORMAT_NAME
    from pipeline.benchmarks.synthetic.launcher import launcher_episode, launcher_goal

    rng = random.Random(f"{FORMAT_NAME}:launcher:{seed}:{index}")  # as the generator draws the dataset
    launcher_goal(rng)
    return [(s.instruction, s.steps_back) for s in launcher_episode(rng, rng.randint(min_steps, max_steps))]


def diagnose(model_dir: str | Path, episodes: int = 50, *, job: str | Path = MICRO_JOB, threads: int = 1,
             probe_screens: int = 0) -> dict[str, Any]:
    """Accuracy of ``model_dir`` on the first ``episodes`` episodes of ``job``'s benchmark (full cache):
    ``split_accuracy``'s keys, plus ``colour_probe`` when ``probe_screens`` > 0."""
    import yaml

    from pipeline.benchmarks.common.base import row_meta
    from pipeline.config import make_benchmark, parse_config
    from pipeline.metrics.units import Unit
    from pipeline.models.loader import ModelSpec, load_model
    from pipeline.step.engine import EpisodeRunner
    from pipeline.training.micro import split_accuracy
    from starkv import build

    torch.set_num_threads(threads)
    data = yaml.safe_load(Path(job).read_text())
    options = dict(data["benchmark"]["options"], num_episodes=episodes)
    data["benchmark"] = dict(data["benchmark"], options=options)
    cfg = parse_config(data)
    bench = make_benchmark(cfg)
    loaded = load_model(ModelSpec(path=str(model_dir), device="cpu", dtype="float32"))
    runner = EpisodeRunner(loaded, bench, cfg.agent, cfg.model.max_new_tokens)
    unit = Unit("diagnose", "full", 100, loaded.name)
    records: list[tuple[str, int, int]] = []
    errors = 0
    for episode in list(bench.load())[:episodes]:
        index = int(episode.episode_id.removeprefix("ep"))
        drawn = _steps_back(options.get("seed", 0), index, options.get("min_steps", 3), options.get("max_steps", 6))
        if [s.instruction for s in episode.steps] != [instruction for instruction, _ in drawn]:
            raise ValueError(f"episode {episode.episode_id}: the generator draws other steps than the dataset holds")
        for row, (_, back) in zip(runner.run(episode, build("full"), unit), drawn):
            errors += bool(row.get("error"))
            records.append((str(row_meta(row).get("element_type")), back, int(bool(row["correct"]) and not row.get("error"))))
    result: dict[str, Any] = {"model": str(model_dir), "episodes": episodes, "errors": errors,
                              **split_accuracy(records)}
    if probe_screens > 0:
        result["colour_probe"] = colour_probe(loaded.model, loaded.processor, probe_screens)
    return result


@torch.no_grad()
def _icon_features(model: Any, processor: Any, screens: int) -> tuple[torch.Tensor, torch.Tensor]:
    from pipeline.benchmarks.synthetic.launcher import COLOURS, GRID, launcher_episode

    names = list(COLOURS)
    features, labels = [], []
    for i in range(screens):
        step = next(launcher_episode(random.Random(f"{PROBE_STREAM}:{i}"), 1))
        pixels = processor.image_processor(images=[step.image], return_tensors="pt")
        tokens = model.model.get_image_features(pixels["pixel_values"], pixels["image_grid_thw"]).pooler_output[0]
        for icon in step.icons:
            features.append(tokens[icon.row * GRID + icon.col])
            labels.append(names.index(icon.colour))
    return torch.stack(features).float(), torch.tensor(labels)


def colour_probe(model: Any, processor: Any, screens: int = 300, iterations: int = 300) -> float:
    """Held-out accuracy of a linear colour classifier on the vision tower's icon-cell tokens."""
    from pipeline.benchmarks.synthetic.launcher import COLOURS

    x, y = _icon_features(model, processor, screens)
    cut = 3 * (2 * screens // 3)  # whole screens: two thirds to fit, the rest to score
    mean, std = x[:cut].mean(0), x[:cut].std(0) + 1e-6
    x = (x - mean) / std
    with torch.enable_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        head = torch.nn.Linear(x.shape[1], len(COLOURS))
        optim = torch.optim.LBFGS(head.parameters(), max_iter=iterations, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            optim.zero_grad()
            loss = torch.nn.functional.cross_entropy(head(x[:cut]), y[:cut]) + 1e-3 * head.weight.pow(2).sum()
            loss.backward()
            return loss

        optim.step(closure)
    with torch.no_grad():
        return float((head(x[cut:]).argmax(-1) == y[cut:]).float().mean())


def format_diagnosis(result: dict[str, Any]) -> str:
    """The split as a few lines: overall, by step kind, by screenshots back (hits/steps)."""

    def cell(key: str) -> str:
        steps = int(result[f"steps_{key}"])
        return f"{key} {result[f'accuracy_{key}']:.3f} ({round(result[f'accuracy_{key}'] * steps)}/{steps})"

    kinds = sorted(k[len("steps_"):] for k in result if k.startswith("steps_") and not k.startswith("steps_back"))
    backs = sorted((k[len("steps_"):] for k in result if k.startswith("steps_back")), key=lambda k: int(k[4:]))
    lines = [f"{result['model']}: {result['episodes']} episodes, {int(result['steps'])} steps, full cache",
             f"overall {result['accuracy']:.3f} ({round(result['accuracy'] * result['steps'])}/{int(result['steps'])})"
             + (f", {result['errors']} error rows" if result["errors"] else ""),
             "by step kind: " + ", ".join(cell(k) for k in kinds),
             "by screenshots back: " + ", ".join(cell(k) for k in backs)]
    if "colour_probe" in result:
        lines.append(f"colour probe (vision tower, icon cells, linear): {result['colour_probe']:.3f}")
    return "\n".join(lines)


__all__ = ["MICRO_JOB", "colour_probe", "diagnose", "format_diagnosis"]
