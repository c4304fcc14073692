"""``starkv-eval train-micro``: rebuild the micro agent's weights from scratch on this machine's CPUs."""

from __future__ import annotations

import argparse
from pathlib import Path

#: TrainConfig fields a flag may set (``--recipe shipped`` fixes all of them but ``threads``)
_SETTINGS = ("steps", "batch_size", "lr", "seed", "eval_every", "eval_episodes", "threads", "time_limit_s",
             "init_from", "start_phase", "stop_after", "phases", "colour_weight", "colour_loss_layer", "rope_theta",
             "recall_probability", "recall_back", "eval_mode")


def parse_phases(text: str) -> tuple[tuple[float, int, int, tuple[int, ...]], ...]:
    """``FRACTION:MIN:MAX:ICONS[,ICONS];...`` (e.g. ``0.1:1:1:1;0.5:1:2:2,3;0.4:1:6:3``) -> curriculum phases."""
    phases = []
    for part in text.split(";"):
        try:
            fraction, lo, hi, icons = part.strip().split(":")
            phase = (float(fraction), int(lo), int(hi), tuple(int(n) for n in icons.split(",")))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"phase {part!r}: want FRACTION:MIN_STEPS:MAX_STEPS:ICONS[,ICONS]") from None
        if phase[0] <= 0 or not 1 <= phase[1] <= phase[2] or not all(1 <= n <= 3 for n in phase[3]):
            raise argparse.ArgumentTypeError(f"phase {part!r}: fraction > 0, 1 <= MIN <= MAX, 1 to 3 icons")
        phases.append(phase)
    return tuple(phases)


def parse_weights(text: str) -> tuple[float, ...]:
    """``W1,W2,W3,W4`` -> weights of recalling 1, 2, 3, 4 screenshots back."""
    try:
        weights = tuple(float(w) for w in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: want comma-separated weights, e.g. 1,2,2,2") from None
    if not weights or any(w < 0 for w in weights) or not any(weights):
        raise argparse.ArgumentTypeError(f"{text!r}: weights >= 0, at least one > 0")
    return weights


def _cmd(args: argparse.Namespace) -> int:
    from pipeline.training.micro import TrainConfig, train_micro, train_recipe

    if args.recipe == "shipped":
        given = [n for n in _SETTINGS if n != "threads" and getattr(args, n) is not None]
        if given:
            raise SystemExit(f"starkv-eval train-micro: --recipe shipped fixes every stage's settings; drop "
                             f"{', '.join('--' + n.replace('_', '-') for n in given)}")
        results = train_recipe(args.output, threads=args.threads, progress=not args.quiet)
        last = results[-1]
        print(f"[train-micro] recipe 'shipped': {len(results)} stages, "
              f"{sum(r.steps_done for r in results)} steps in {sum(r.wall_s for r in results) / 60:.1f} min; "
              f"wrote {last.out_dir}: final loss {last.final_loss:.4f}, held-out accuracy "
              f"{last.heldout_accuracy:.3f} on {last.heldout_steps} steps")
        return 0
    cfg = TrainConfig()
    for name in _SETTINGS:
        value = getattr(args, name)
        if value is not None:
            setattr(cfg, name, value)
    if cfg.steps < 1 or cfg.batch_size < 1:
        raise SystemExit("starkv-eval train-micro: --steps and --batch-size must be >= 1")
    if cfg.lr <= 0:
        raise SystemExit("starkv-eval train-micro: --lr must be > 0")
    result = train_micro(args.output, cfg, progress=not args.quiet)
    print(f"[train-micro] wrote {result.out_dir} after {result.steps_done} steps in {result.wall_s / 60:.1f} min: "
          f"final loss {result.final_loss:.4f}, held-out accuracy {result.heldout_accuracy:.3f} "
          f"on {result.heldout_steps} steps; loss curve {Path(result.out_dir) / 'loss_curve.png'}")
    return 0


def add_parser(sub) -> None:
    from pipeline.models.files import MICRO_DIR

    p = sub.add_parser("train-micro", help="train the micro GUI agent from scratch (CPU; the shipped recipe by default)")
    p.add_argument("--output", default=str(MICRO_DIR),
                   help=f"model folder to write (default: the shipped one, {MICRO_DIR})")
    p.add_argument("--steps", type=int, help="optimizer steps (default: the recipe's)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int, help="weights init and training-episode stream")
    p.add_argument("--eval-every", type=int, help="held-out evaluation every N steps (0: only at the end)")
    p.add_argument("--eval-episodes", type=int, help="held-out episodes per evaluation")
    p.add_argument("--threads", type=int, help="torch threads (default: TrainConfig's 1; --recipe shipped: its 2, the count a bit-for-bit replay needs)")
    p.add_argument("--time-limit-s", type=float, help="stop after an evaluation once this wall time has passed")
    p.add_argument("--init-from", metavar="DIR",
                   help="continue from this micro-agent folder's weights (e.g. the shipped one) instead of a random init")
    p.add_argument("--start-phase", type=int,
                   help="skip the curriculum's phases before this one (0: one icon, 1: short episodes, 2: full)")
    p.add_argument("--stop-after", type=int, metavar="N",
                   help="stop after step N of the --steps schedule (replays a run that --time-limit-s stopped)")
    p.add_argument("--phases", type=parse_phases, metavar="SPEC",
                   help="curriculum FRACTION:MIN_STEPS:MAX_STEPS:ICONS[,ICONS];... (default: the recipe's "
                        "0.22:1:1:1;0.45:1:2:2,3;0.33:1:6:3), e.g. a shorter first phase")
    p.add_argument("--colour-weight", type=float,
                   help="weight of the auxiliary colour loss: a training-only linear head predicts every image "
                        "token's icon colour or 'none' (default 0: off)")
    p.add_argument("--colour-loss-layer", type=int,
                   help="hidden state the colour head reads: entering this language-model layer (default 1; "
                        "0: the vision tower's output)")
    p.add_argument("--rope-theta", type=float, help="rotary base of a fresh init (default: 100)")
    p.add_argument("--recall-probability", type=float,
                   help="last phase: probability that a step with a recallable icon recalls one (default 0.4)")
    p.add_argument("--recall-back", type=parse_weights, metavar="W1,W2,W3,W4",
                   help="last phase: weights of recalling 1..4 screenshots back (default: uniform over the icons)")
    p.add_argument("--eval-mode", choices=("greedy", "forced"),
                   help="held-out evaluation: 'greedy' decoding (default) or 'forced', one teacher-forced pass "
                        "(exact answer; many times cheaper, use with more --eval-episodes)")
    p.add_argument("--recipe", choices=("shipped",),
                   help="'shipped': replay the shipped weights' two stages in one command (stage 1 kept beside "
                        "--output as <name>.stage1)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=_cmd)
