"""``starkv-eval train-micro``: rebuild the micro agent's weights from scratch on this machine's CPUs."""

from __future__ import annotations

import argparse
from pathlib import Path

#: TrainConfig fields a flag may set (``--recipe shipped`` fixes all of them but ``threads``)
_SETTINGS = ("steps", "batch_size", "lr", "seed", "eval_every", "eval_episodes", "threads", "time_limit_s",
             "init_from", "start_phase", "stop_after")


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
    p.add_argument("--recipe", choices=("shipped",),
                   help="'shipped': replay the shipped weights' two stages in one command (stage 1 kept beside "
                        "--output as <name>.stage1)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=_cmd)
