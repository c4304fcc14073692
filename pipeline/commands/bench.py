"""``starkv-eval bench compress``: compressor selection cost at UI-TARS-7B dimensions."""

from __future__ import annotations

import argparse
import json


def _cmd(args: argparse.Namespace) -> int:
    import torch

    from pipeline.speed import (
        QUICK_SCENARIOS,
        SCENARIOS,
        Dims,
        format_reports,
        reports_to_json,
        run_compress_bench,
    )

    if args.threads:
        torch.set_num_threads(args.threads)
    dims = Dims(num_heads=4, num_kv_heads=2, head_dim=32, hidden=128, intermediate=256) if args.quick else Dims()
    scenarios = QUICK_SCENARIOS if args.quick else {k: v for k, v in SCENARIOS.items()
                                                      if not args.scenario or k in args.scenario}
    echo = (lambda *_: None) if args.json else print
    reports = run_compress_bench(scenarios, dims, budget=args.budget, repeats=args.repeats,
                                 layer_repeats=0 if args.no_layer else args.layer_repeats,
                                 compressors=args.compressor, echo=echo, device=args.device, dtype=args.dtype)
    if args.json:
        print(json.dumps({"threads": torch.get_num_threads(), "device": args.device, "dtype": args.dtype,
                          "dims": dims.__dict__,
                          "reports": reports_to_json(reports)}, indent=2))
    else:
        print(format_reports(reports, torch.get_num_threads(), args.device, args.dtype))
    return 0


def add_parser(sub) -> None:
    bench = sub.add_parser("bench", help="micro-benchmarks (selection cost of the compressors)")
    inner = bench.add_subparsers(dest="bench_command", required=True)
    comp = inner.add_parser("compress", help="selection time of every compressor, the MI step, one layer's prefill")
    comp.add_argument("--json", action="store_true", help="print the measurements as JSON")
    comp.add_argument("--budget", type=float, default=20.0)
    comp.add_argument("--repeats", type=int, default=5, help="timed repeats per selection (median)")
    comp.add_argument("--layer-repeats", type=int, default=1, help="timed repeats of the decoder-layer prefill")
    comp.add_argument("--no-layer", action="store_true", help="skip the (slow on CPU) decoder-layer prefill")
    comp.add_argument("--scenario", action="append", choices=["5x2691", "1x16384"], help="default: both")
    comp.add_argument("--compressor", action="append", help="default: every registered compressor")
    comp.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    comp.add_argument("--device", default="cpu", help="cpu or cuda[:i] (all inputs and the layer live there)")
    comp.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    comp.add_argument("--quick", action="store_true", help="tiny dimensions, for smoke tests of the command")
    comp.set_defaults(func=_cmd)
