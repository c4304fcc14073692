"""``starkv-eval micro-diagnose``: a micro agent's held-out accuracy by step kind and screenshots back."""

from __future__ import annotations

import argparse
import json


def _cmd(args: argparse.Namespace) -> int:
    from pipeline.training.micro_diagnose import diagnose, format_diagnosis

    result = diagnose(args.model_dir, args.episodes, job=args.job, threads=args.threads,
                      probe_screens=args.probe_screens)
    print(format_diagnosis(result))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
            fh.write("\n")
    return 0


def add_parser(sub) -> None:
    from pipeline.training.micro_diagnose import MICRO_JOB

    p = sub.add_parser("micro-diagnose",
                       help="a micro-agent folder's held-out accuracy by step kind and screenshots back (full cache)")
    p.add_argument("model_dir", help="micro-agent folder (e.g. pipeline/models/micro_agent or a train-micro output)")
    p.add_argument("--episodes", type=int, default=50, help="first N episodes of the job's stream (default 50: all)")
    p.add_argument("--job", default=str(MICRO_JOB), help="job whose benchmark and agent settings to use")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--probe-screens", type=int, default=0,
                   help="also fit a linear colour probe on the vision tower's icon tokens of N screens (e.g. 300)")
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    p.set_defaults(func=_cmd)
