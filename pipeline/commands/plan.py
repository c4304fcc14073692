"""``starkv-eval plan JOB.yaml``: a preflight with no GPU work. Does the job's data load, how many steps
will it evaluate, does its longest prompt fit the GPU (exact peak on fake tensors), and how many GPU-hours
will it take, with and without shared prefills. Every bad input is listed at once (exit 2)."""

from __future__ import annotations

import argparse
import json
import sys


def _cmd(args: argparse.Namespace) -> int:
    from pipeline.bench.plan import PlanOptions, PlanProblems, format_plan, make_plan

    options = PlanOptions(job=args.job, gpu_memory=args.gpu_memory, gpus=args.gpus, gpu=args.gpu,
                          prefill_tokens_per_s=args.prefill_tokens_per_s,
                          decode_tokens_per_s=args.decode_tokens_per_s, decode_steps=args.decode_steps,
                          throughput_table=args.throughput_table)
    echo = (lambda *_: None) if args.json else (lambda line: print(line, file=sys.stderr))
    try:
        plan = make_plan(options, echo=echo)
    except PlanProblems as err:
        print(f"starkv-eval plan: {len(err.problems)} problem(s) with {args.job}:", file=sys.stderr)
        for problem in err.problems:
            print(f"  - {problem}", file=sys.stderr)
        if args.json:
            print(json.dumps({"job": args.job, "problems": err.problems}, indent=2))
        return 2
    print(json.dumps(plan, indent=2) if args.json else format_plan(plan))
    return 0


def add_parser(sub) -> None:
    from pipeline.bench.plan import DEFAULT_DECODE_STEPS, THROUGHPUT_FILE

    p = sub.add_parser("plan", help="preflight a job without a GPU: data, steps, peak memory per GPU, GPU-hours")
    p.add_argument("job", help="job YAML, e.g. jobs/screenspot_pro.yaml")
    p.add_argument("--gpu-memory", help="memory of one GPU with a unit: 80GiB, 80GB, 81920MiB "
                                        "(default: the --gpu row of the throughput table)")
    p.add_argument("--gpus", type=int, help="GPUs the job runs on, for the wall-clock hours "
                                            "(default: ray.num_actors x ray.num_gpus_per_actor)")
    p.add_argument("--gpu", default="h100-sxm-80gb", help="row of the throughput table (default: h100-sxm-80gb)")
    p.add_argument("--prefill-tokens-per-s", type=float, help="override the table's prefill tokens/s per GPU")
    p.add_argument("--decode-tokens-per-s", type=float, help="override the table's decode tokens/s per GPU")
    p.add_argument("--decode-steps", type=int, default=DEFAULT_DECODE_STEPS,
                   help="decode steps to simulate (at most max_new_tokens; each step not simulated adds one "
                        f"token's KV to the decode peak; default {DEFAULT_DECODE_STEPS})")
    p.add_argument("--throughput-table", default=str(THROUGHPUT_FILE), help="YAML of tokens/s per GPU and model")
    p.add_argument("--json", action="store_true", help="print the plan (or the problems) as JSON")
    p.set_defaults(func=_cmd)
