"""Train the micro agent from scratch on launcher episodes (CPU, minutes to an hour).

``starkv-eval train-micro`` runs ``train_micro``: AdamW with warm-up and cosine decay, cross-entropy on
the answer tokens only, a progress bar with the running loss, periodic held-out evaluation (greedy
decoding through the real parser and scorer), and at the end the model folder (safetensors, processor,
manifest with the recipe, seeds, steps, losses, held-out accuracy, versions) and a loss-curve PNG.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers

from pipeline.agent.parser import parse_action
from pipeline.benchmarks.synthetic.launcher import SCREEN_SIZE
from pipeline.config import AgentConfig
from pipeline.models.micro import (
    MANIFEST_FILE,
    MICRO_RECIPE_VERSION,
    init_micro,
    read_manifest,
    weights_sha256,
)
from pipeline.training.micro_data import (
    COLOUR_CLASSES,
    IGNORE_INDEX,
    NO_ICON,
    collate,
    episode_steps,
    step_examples,
    training_examples,
)

HELDOUT_STREAM = "micro-heldout"


@dataclass
class TrainConfig:
    """The recipe. Defaults reproduce the shipped weights (``MICRO_RECIPE_VERSION``)."""

    steps: int = 4500
    batch_size: int = 8
    lr: float = 2e-3
    warmup: int = 100
    decay_fraction: float = 0.3  # cosine decay over the last 30 % of the steps
    weight_decay: float = 0.0
    clip: float = 1.0
    seed: int = 0  # weights init and training stream
    # Curriculum: (fraction of the steps, min episode steps, max episode steps, icons per screen choices).
    # One screen with one icon first (learn to read a place), then short episodes with two or three icons
    # (tell colours apart), then the evaluation's episode lengths and history with three icons.
    phases: tuple[tuple[float, int, int, tuple[int, ...]], ...] = (
        (0.22, 1, 1, (1,)),
        (0.45, 1, 2, (2, 3)),
        (0.33, 1, 6, (3,)),
    )
    min_steps: int = 3  # held-out evaluation episodes (the evaluation job's lengths, three icons)
    max_steps: int = 6
    image_slots: int = 5
    eval_every: int = 1000
    # 200 held-out episodes (~930 steps): a 95 % interval of about +-0.03, so 0.05 apart shows (12 gave ~55
    # steps, +-0.1)
    eval_episodes: int = 200
    threads: int = 1  # one thread per process is faster than two on a loaded 2-core machine
    attention_weight: float = 0.3  # attention supervision (see answer_loss); 0 turns it off
    target_layer: int = 1  # layer whose head 0 learns to look at the target icon
    colour_layer: int | None = 0  # layer whose head 0 learns to look at the instruction's colour word
    time_limit_s: float | None = None  # stop early (after an evaluation) when the wall time passes this
    stop_after: int | None = None  # stop after this step of the ``steps`` schedule (replays a time-limited run)
    # Continue from a trained micro-agent folder instead of ``seed``'s random init (a longer run in two
    # sittings); ``start_phase`` skips the curriculum's first phases, the rest keep their relative shares.
    init_from: str | None = None
    start_phase: int = 0
    # Recipe options (``RECIPE_OPTIONS``; at their defaults they leave the recipe, and its manifest, as before).
    # Auxiliary colour loss: a linear head (training only, never saved) on the language model's hidden state
    # entering layer ``colour_loss_layer`` (0: the image embeddings the vision tower hands over) predicts, at
    # every image token, the colour class of the icon in its cell or "none"; weight 0 turns it off.
    colour_weight: float = 1.0
    colour_loss_layer: int = 1
    rope_theta: float | None = None  # None: MICRO_ROPE_THETA (100); a fresh init only
    # The last phase's recall steps: probability that a step with a recallable icon recalls one (None: the
    # generator's 0.4) and weights of the distance drawn, 1, 2, 3, 4 screenshots back (None: uniform over icons)
    recall_probability: float | None = None
    recall_back: tuple[float, ...] | None = None
    # Held-out evaluation: "greedy" (generate, parse, score: what the benchmark does) or "forced" (one
    # teacher-forced batched pass; a step counts when every answer token is the argmax: the greedy answer is
    # then exactly the right click, so it is a lower bound of greedy accuracy, many times cheaper)
    eval_mode: str = "forced"


#: Options that stay at their defaults in the shipped recipe: written into the manifest only when changed.
RECIPE_OPTIONS: dict[str, Any] = {"colour_loss_layer": 1, "rope_theta": None, "recall_probability": None,
                                  "recall_back": None}


@dataclass
class TrainResult:
    out_dir: Path
    steps_done: int
    final_loss: float
    heldout_accuracy: float
    heldout_steps: int
    wall_s: float
    losses: list[float] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)


def _phase_streams(cfg: TrainConfig, processor: Any, agent: AgentConfig) -> list[Any]:
    """One example stream per curriculum phase; phase k draws episodes from its own slice of the seed's
    stream (``start = k * 10**7``), so phases never repeat an episode."""
    last = len(cfg.phases) - 1
    return [training_examples(cfg.seed, processor, agent, lo, hi, start=k * 10**7, icon_counts=icons,
                              recall_probability=cfg.recall_probability if k == last else None,
                              recall_back=cfg.recall_back if k == last else None, colours=cfg.colour_weight > 0)
            for k, (_, lo, hi, icons) in enumerate(cfg.phases)]


def _phase_at(step: int, cfg: TrainConfig) -> int:
    """The curriculum phase of ``step``: phases from ``start_phase`` on share the steps by their fractions."""
    active = list(enumerate(cfg.phases))[cfg.start_phase:]
    total = sum(fraction for _, (fraction, *_rest) in active)
    edge = 0.0
    for k, (fraction, *_rest) in active:
        edge += fraction / total * cfg.steps
        if step < edge:
            return k
    return len(cfg.phases) - 1


def _initial_model(cfg: TrainConfig) -> tuple[Any, Any]:
    """``seed``'s random init, or the weights and processor of the micro-agent folder ``init_from``."""
    if cfg.init_from is None:
        return init_micro(cfg.seed, cfg.rope_theta)
    if cfg.rope_theta is not None:
        raise ValueError("rope_theta applies to a fresh init; --init-from keeps the folder's own")
    folder = Path(cfg.init_from)
    if read_manifest(folder) is None or not (folder / "model.safetensors").is_file():
        raise FileNotFoundError(f"--init-from {folder}: not a micro-agent folder (no {MANIFEST_FILE} "
                                "and model.safetensors)")
    from pipeline.models.loader import ModelSpec, load_model

    loaded = load_model(ModelSpec(path=str(folder), device="cpu", dtype="float32"))  # the evaluation's own loader
    return loaded.model, loaded.processor


def _lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    decay_start = int(cfg.steps * (1 - cfg.decay_fraction))
    if step < decay_start:
        return cfg.lr
    progress = (step - decay_start) / max(1, cfg.steps - decay_start)
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def answer_loss(model: Any, batch: dict[str, torch.Tensor], attention_weight: float = 0.0,
                target_layer: int = 1, colour_layer: int | None = 0, head: int = 0, *,
                colour_head: torch.nn.Module | None = None, colour_weight: float = 0.0,
                colour_loss_layer: int = 1) -> torch.Tensor:
    """Mean cross-entropy of the answer tokens; the vocabulary projection runs only where there is a
    label (a few tokens per example instead of the whole prompt).

    ``attention_weight`` > 0 adds attention supervision (needs eager attention) at every answer position:
    head ``head`` of ``colour_layer`` is pulled onto the instruction's colour word, the same head of
    ``target_layer`` onto the target icon's image token (``-log`` of their attention probabilities). The
    two-hop lookup (which colour is asked for, then which image token has it) is what a small model
    otherwise learns last, after a long plateau at chance; with the hint it learns it first and the
    coordinates follow. Inference is unchanged: the model simply attends where it learnt to.

    ``colour_head`` with ``colour_weight`` > 0 adds the auxiliary colour loss: cross-entropy of the head's
    colour class at every image token (``batch["image_colours"]``) from the hidden state entering layer
    ``colour_loss_layer``, times ``colour_weight``.
    """
    labels = batch.pop("labels")
    image_colours = batch.pop("image_colours", None)
    hints = [(target_layer, batch.pop("target_token", None)), (colour_layer, batch.pop("colour_token", None))]
    hints = [(layer, pos) for layer, pos in hints if layer is not None and pos is not None and bool((pos >= 0).all())]
    supervise = attention_weight > 0 and bool(hints)
    colour = colour_head is not None and colour_weight > 0 and image_colours is not None
    out = model.model(**batch, output_attentions=supervise, **({"output_hidden_states": True} if colour else {}))
    hidden = out.last_hidden_state
    targets = labels[:, 1:]
    where = targets != IGNORE_INDEX
    logits = model.lm_head(hidden[:, :-1][where])
    loss = torch.nn.functional.cross_entropy(logits.float(), targets[where])
    if supervise:
        for layer, pos in hints:
            probs = out.attentions[layer][:, head, :-1]  # (B, L-1 queries, L keys)
            on = probs.gather(2, pos.view(-1, 1, 1).expand(-1, probs.shape[1], 1)).squeeze(2)
            loss = loss + attention_weight * -(on[where] + 1e-6).log().mean()
    if colour:
        cells = image_colours != IGNORE_INDEX
        states = out.hidden_states[colour_loss_layer][cells]
        loss = loss + colour_weight * torch.nn.functional.cross_entropy(colour_head(states).float(),
                                                                        image_colours[cells])
    return loss


def _hit(output: str, answer: str) -> bool:
    """The benchmark's rule: the parsed click falls inside the target icon's box (9 px of its centre)."""
    from pipeline.benchmarks.synthetic.launcher import CELL

    action = parse_action(output, image_size=(SCREEN_SIZE, SCREEN_SIZE), resized_size=(SCREEN_SIZE, SCREEN_SIZE))
    want = parse_action(answer, image_size=(SCREEN_SIZE, SCREEN_SIZE), resized_size=(SCREEN_SIZE, SCREEN_SIZE)).point
    return action.point is not None and want is not None and all(
        abs(p - w) * SCREEN_SIZE < CELL / 2 - 5 for p, w in zip(action.point, want))


def split_accuracy(records: list[tuple[str, int, int]]) -> dict[str, float]:
    """``(kind, steps back, hit)`` records -> ``accuracy``, ``steps``, ``accuracy_<kind>``,
    ``steps_<kind>``, ``accuracy_back<k>``, ``steps_back<k>`` (k = 0 is the current screen)."""
    result = {"accuracy": sum(h for *_, h in records) / max(1, len(records)), "steps": float(len(records))}
    for key, group in (("", {r[0] for r in records}), ("back", {r[1] for r in records})):
        for value in sorted(group):
            hits = [h for kind, back, h in records if (back if key else kind) == value]
            result[f"accuracy_{key}{value}"] = sum(hits) / len(hits)
            result[f"steps_{key}{value}"] = float(len(hits))
    return result


@torch.no_grad()
def heldout_forced(model: Any, processor: Any, agent: AgentConfig, episodes: int, seed: int,
                   min_steps: int = 3, max_steps: int = 6, batch_size: int = 16,
                   colour_head: torch.nn.Module | None = None, colour_loss_layer: int = 1) -> dict[str, float]:
    """The held-out episodes of ``heldout_accuracy`` in one teacher-forced pass per batch: a step counts
    when the argmax at every answer position is the answer token (then greedy decoding writes exactly the
    right click). With ``colour_head``, also its accuracy on the icon tokens (``colour_head_accuracy``)."""
    model.eval()
    examples = []
    for index in range(episodes):
        rng = random.Random(f"{HELDOUT_STREAM}:{seed}:{index}")
        examples += list(step_examples(rng, processor, agent, min_steps, max_steps, colours=colour_head is not None))
    records: list[tuple[str, int, int]] = []
    colour_hits = colour_total = 0
    for lo in range(0, len(examples), batch_size):
        chunk = examples[lo:lo + batch_size]
        batch = collate(chunk, processor.tokenizer.pad_token_id)
        labels = batch.pop("labels")
        image_colours = batch.pop("image_colours", None)
        for key in ("target_token", "colour_token"):
            batch.pop(key)
        out = model.model(**batch, output_hidden_states=colour_head is not None)
        targets = labels[:, 1:]
        where = targets != IGNORE_INDEX
        right = (model.lm_head(out.last_hidden_state[:, :-1]).argmax(-1) == targets) | ~where
        for e, ok in zip(chunk, right.all(dim=1).tolist()):
            records.append((e.kind, e.steps_back, int(ok)))
        if colour_head is not None and image_colours is not None:
            icons = (image_colours != IGNORE_INDEX) & (image_colours != NO_ICON)
            guess = colour_head(out.hidden_states[colour_loss_layer][icons]).argmax(-1)
            colour_hits += int((guess == image_colours[icons]).sum())
            colour_total += int(icons.sum())
    model.train()
    result = split_accuracy(records)
    if colour_total:
        result["colour_head_accuracy"] = colour_hits / colour_total
    return result


@torch.no_grad()
def heldout_accuracy(model: Any, processor: Any, agent: AgentConfig, episodes: int, seed: int,
                     min_steps: int = 3, max_steps: int = 6) -> dict[str, float]:
    """Greedy answers on held-out episodes (a stream training never draws), scored as the benchmark does:
    the parsed click must fall inside the target icon's box. Split by step kind and screenshots back
    (``split_accuracy``)."""

    model.eval()
    records: list[tuple[str, int, int]] = []
    end_ids = model.generation_config.eos_token_id
    for index in range(episodes):
        rng = random.Random(f"{HELDOUT_STREAM}:{seed}:{index}")
        for text, images, step in episode_steps(rng, min_steps, max_steps, agent, processor):
            inputs = processor(text=[text], images=images, return_tensors="pt")
            out = model.generate(**inputs, max_new_tokens=24, do_sample=False, eos_token_id=end_ids,
                                 pad_token_id=processor.tokenizer.pad_token_id)
            output = processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
            records.append((step.kind, step.steps_back, int(_hit(output, step.answer))))
    model.train()
    return split_accuracy(records)


def _loss_plot(losses: list[float], evals: list[dict[str, Any]], path: Path, colour_loss: bool = False) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(range(1, len(losses) + 1), losses, color="0.75", lw=0.6, label="batch loss")
    window = 50
    if len(losses) >= window:
        smooth = [sum(losses[i - window:i]) / window for i in range(window, len(losses) + 1)]
        ax.plot(range(window, len(losses) + 1), smooth, color="C0", lw=1.5, label=f"mean of {window}")
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("training loss: answer cross-entropy + attention hints" + (" + colour" if colour_loss else ""))
    if evals:
        ax2 = ax.twinx()
        steps = [e["step"] for e in evals]
        ax2.plot(steps, [e["accuracy"] for e in evals], "o-", color="C3", label="held-out accuracy")
        for key, colour, name in (("accuracy_icon", "C2", "current screen"),
                                  ("accuracy_recalled_icon", "C1", "recall"),
                                  *((f"accuracy_back{k}", f"C{3 + k}", f"recall {k} back") for k in range(1, 5))):
            if all(key in e for e in evals):
                style = ".--" if "back" not in key else ":"
                ax2.plot(steps, [e[key] for e in evals], style, color=colour, lw=1, label=f"held-out {name}")
        ax2.set_ylim(0, 1.02)
        ax2.set_ylabel("held-out step accuracy")
        ax2.legend(loc="center right", fontsize="small")
    ax.legend(loc="upper right")
    ax.set_title("micro agent training")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def train_micro(out_dir: str | os.PathLike, cfg: TrainConfig | None = None, *, progress: bool = True,
                log: Any = print) -> TrainResult:
    """Train from scratch and write the model folder to ``out_dir`` (replaced atomically at the end)."""
    cfg = cfg or TrainConfig()
    torch.set_num_threads(cfg.threads)
    out = Path(out_dir)
    agent = AgentConfig(image_slots=cfg.image_slots)
    if not 0 <= cfg.start_phase < len(cfg.phases):
        raise ValueError(f"start_phase {cfg.start_phase} is not a phase of the curriculum (0..{len(cfg.phases) - 1})")
    if cfg.eval_mode not in ("greedy", "forced"):
        raise ValueError(f"eval_mode {cfg.eval_mode!r}: 'greedy' or 'forced'")
    init_manifest = read_manifest(cfg.init_from) if cfg.init_from is not None else None
    model, processor = _initial_model(cfg)
    if cfg.attention_weight > 0:
        model.set_attn_implementation("eager")  # attention probabilities for the supervision
    model.train()
    pad_id = processor.tokenizer.pad_token_id
    params = [p for p in model.parameters() if p.requires_grad]
    colour_head = None
    if cfg.colour_weight > 0:  # training only: never part of the saved model; its own RNG scope
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed + 7919)
            colour_head = torch.nn.Linear(model.config.text_config.hidden_size, len(COLOUR_CLASSES))
        params = params + list(colour_head.parameters())
    optim = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay)
    streams = _phase_streams(cfg, processor, agent)
    losses: list[float] = []
    evals: list[dict[str, Any]] = []
    start = time.perf_counter()
    bar = _progress(cfg.steps, progress)
    step = 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        for step in range(cfg.steps):
            for group in optim.param_groups:
                group["lr"] = _lr_at(step, cfg)
            stream = streams[_phase_at(step, cfg)]
            loss = answer_loss(model, collate([next(stream) for _ in range(cfg.batch_size)], pad_id),
                               cfg.attention_weight, cfg.target_layer, cfg.colour_layer, colour_head=colour_head,
                               colour_weight=cfg.colour_weight, colour_loss_layer=cfg.colour_loss_layer)
            optim.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.clip)
            optim.step()
            losses.append(float(loss.detach()))
            bar.update(1, loss=sum(losses[-50:]) / len(losses[-50:]))
            last = step + 1 == cfg.steps
            out_of_time = ((cfg.time_limit_s is not None and time.perf_counter() - start > cfg.time_limit_s)
                           or (cfg.stop_after is not None and step + 1 >= cfg.stop_after))
            if (cfg.eval_every and (step + 1) % cfg.eval_every == 0) or last or out_of_time:
                began = time.perf_counter()
                if cfg.eval_mode == "forced":
                    result = heldout_forced(model, processor, agent, cfg.eval_episodes, cfg.seed, cfg.min_steps,
                                            cfg.max_steps, colour_head=colour_head,
                                            colour_loss_layer=cfg.colour_loss_layer)
                else:
                    result = heldout_accuracy(model, processor, agent, cfg.eval_episodes, cfg.seed,
                                              cfg.min_steps, cfg.max_steps)
                evals.append({"step": step + 1, "wall_s": round(time.perf_counter() - start, 1),
                              "eval_s": round(time.perf_counter() - began, 1), **result})
                log(f"[train-micro] step {step + 1}: loss {losses[-1]:.4f}, held-out accuracy "
                    f"{result['accuracy']:.3f} on {int(result['steps'])} steps ("
                    + ", ".join(f"{k[9:]} {v:.2f}/{int(result['steps_' + k[9:]])}"
                                for k, v in result.items() if k.startswith("accuracy_"))
                    + (f"; colour head {result['colour_head_accuracy']:.2f}" if "colour_head_accuracy" in result
                       else "") + ")")
                if out_of_time:
                    break
    bar.close()
    wall = time.perf_counter() - start
    final = evals[-1]
    result = TrainResult(out, step + 1, sum(losses[-50:]) / len(losses[-50:]), final["accuracy"],
                         int(final["steps"]), wall, losses, evals)
    _save(model, processor, out, cfg, result, init_manifest)
    return result


#: The shipped weights' recipe (``MICRO_RECIPE_VERSION`` 2), stage by stage: changes to ``TrainConfig()``'s
#: defaults (colour loss on, forced held-out evaluation on 200 episodes). Stage 1 is the default curriculum
#: (4,500 steps: one icon, then two or three, then full episodes with history); stage 2 continues from its
#: weights on the last phase only with a new stream seed and half the learning rate (3,500 steps).
#: ``--recipe shipped`` replays both in one command. Two torch threads: on an idle 2-core machine a step
#: takes 0.57x the time of one thread. The thread count changes the order of float sums, so a replay is
#: bit-for-bit only at the recorded count (each run is deterministic at its own count).
SHIPPED_STAGES: tuple[dict[str, Any], ...] = (
    {"threads": 2},
    {"start_phase": 2, "steps": 3500, "lr": 1e-3, "seed": 1, "threads": 2},
)


def train_recipe(out_dir: str | os.PathLike, stages: tuple[dict[str, Any], ...] = SHIPPED_STAGES, *,
                 threads: int | None = None, progress: bool = True, log: Any = print) -> list[TrainResult]:
    """Run ``stages`` in order, each continuing from the previous one's weights (kept beside ``out_dir`` as
    ``<name>.stage<k>``); the last writes ``out_dir``. Returns every stage's result."""
    out = Path(out_dir)
    results: list[TrainResult] = []
    previous: Path | None = None
    for k, changes in enumerate(stages, start=1):
        cfg = TrainConfig(**changes)
        if threads is not None:
            cfg.threads = threads
        if previous is not None:
            cfg.init_from = str(previous)
        target = out if k == len(stages) else out.parent / f"{out.name}.stage{k}"
        log(f"[train-micro] stage {k}/{len(stages)}: {changes} -> {target}")
        results.append(train_micro(target, cfg, progress=progress, log=log))
        previous = target
    return results


def recipe_fields(cfg: TrainConfig) -> dict[str, Any]:
    """The manifest's ``train_config``: every field, but the ``RECIPE_OPTIONS`` only where changed."""
    fields = asdict(cfg)
    for name, default in RECIPE_OPTIONS.items():
        if fields[name] == default:
            del fields[name]
    return fields


def _save(model: Any, processor: Any, out: Path, cfg: TrainConfig, result: TrainResult,
          init_manifest: dict | None = None) -> None:
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.eval()
    model.set_attn_implementation("sdpa")
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    _loss_plot(result.losses, result.evals, tmp / "loss_curve.png", cfg.colour_weight > 0)
    manifest = {
        "recipe_version": MICRO_RECIPE_VERSION,
        "train_config": recipe_fields(cfg),
        "train_stream": f"micro-train:{cfg.seed}:<episode>",
        "heldout_stream": f"{HELDOUT_STREAM}:{cfg.seed}:<episode>",
        "steps_done": result.steps_done,
        "final_loss": round(result.final_loss, 6),
        "heldout_accuracy": round(result.heldout_accuracy, 4),
        "heldout_steps": result.heldout_steps,
        "evals": result.evals,
        "wall_s": round(result.wall_s, 1),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    if init_manifest is not None:  # the run this one continued: its recipe, steps and weights, nested
        manifest["continued_from"] = {k: init_manifest.get(k) for k in (
            "train_config", "steps_done", "heldout_accuracy", "weights_sha256", "wall_s", "continued_from")}
    manifest["weights_sha256"] = weights_sha256(tmp)
    (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    (tmp / "losses.json").write_text(json.dumps([round(v, 5) for v in result.losses]) + "\n")
    if out.exists():
        shutil.rmtree(out)
    os.rename(tmp, out)


class _progress:
    """A tqdm bar on a terminal; a line every 5 % (or 60 s) otherwise (CI, logs)."""

    def __init__(self, total: int, enabled: bool) -> None:
        import sys

        self.total, self.enabled, self.done = total, enabled, 0
        self.tty = enabled and sys.stderr.isatty()
        self.bar = None
        self.last_print = time.perf_counter()
        self.start = self.last_print
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="train-micro", unit="step")

    def update(self, n: int, **postfix: float) -> None:
        self.done += n
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(n)
            self.bar.set_postfix({k: f"{v:.4f}" for k, v in postfix.items()}, refresh=False)
            return
        now = time.perf_counter()
        if now - self.last_print > 60 or self.done % max(1, self.total // 20) == 0 or self.done == self.total:
            rate = self.done / max(1e-9, now - self.start)
            eta = (self.total - self.done) / max(1e-9, rate)
            extra = " ".join(f"{k} {v:.4f}" for k, v in postfix.items())
            print(f"[train-micro] {self.done}/{self.total} steps, {rate:.2f} steps/s, ETA {eta / 60:.1f} min, {extra}",
                  flush=True)
            self.last_print = now

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


__all__ = ["RECIPE_OPTIONS", "SHIPPED_STAGES", "TrainConfig", "TrainResult", "heldout_accuracy", "heldout_forced",
           "recipe_fields", "split_accuracy", "train_micro", "train_recipe"]
