"""``starkv-eval bench compress`` (compressor selection cost at UI-TARS-7B dimensions) and ``bench memory``
(a step's exact memory at full scale, simulated on fake tensors)."""

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


def _memory_cmd(args: argparse.Namespace) -> int:
    import sys

    from pipeline.memory_bench import MemoryBenchError, format_rows, parse_spec, plot_rows, run_bench

    try:  # every option is checked before any work
        spec = parse_spec(args.model, args.screenshots, args.resolution, args.budgets, args.compressors, args.attn,
                          args.decode_steps, args.dtype, args.mlp_chunk, args.vision, args.prefill)
    except MemoryBenchError as err:
        print(f"starkv-eval bench memory: {err}", file=sys.stderr)
        return 2
    echo = (lambda *_: None) if args.json else (lambda r: print(f"  simulated {r['compressor']}@{r['budget']:g}, "
                                                               f"{r['screenshots']} screenshots, "
                                                               f"{r['attn_implementation']}", file=sys.stderr))
    rows = run_bench(spec, echo=echo)
    if args.plot:
        print(f"plot: {plot_rows(rows, args.plot)}", file=sys.stderr)
    print(json.dumps(rows, indent=2) if args.json else format_rows(rows))
    return 1 if any(r["error"] for r in rows) else 0


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

    mem = inner.add_parser("memory", help="a step's exact memory at full model scale, simulated without weights or GPU")
    mem.add_argument("--model", default="ui-tars-1.5-7b", help="a vendored config (ui-tars-1.5-7b) or tiny")
    mem.add_argument("--screenshots", default="5", help="screenshots in the prompt; a comma list sweeps (1,2,3,4,5)")
    mem.add_argument("--resolution", default="1920x1080",
                     help="WIDTHxHEIGHT of every screenshot, or max (exactly the 16,384-token max_pixels cap)")
    mem.add_argument("--budgets", default="20", help="KV budgets in percent, comma-separated")
    mem.add_argument("--compressors", default="full,snapkv,starkv", help="registered compressors, comma-separated")
    mem.add_argument("--attn", default="sdpa", help="attention implementation(s): sdpa, eager or sdpa,eager")
    mem.add_argument("--decode-steps", type=int, default=16, help="decode steps after the prefill")
    mem.add_argument("--dtype", default="bfloat16", help="dtype of the simulated model (bfloat16, float16, float32)")
    mem.add_argument("--mlp-chunk", default="0",
                     help="run each decoder MLP over at most N prompt tokens at a time (0: off; a comma list sweeps)")
    mem.add_argument("--vision", default="per-image",
                     help="per-image (one screenshot at a time through the vision tower, the default) or batch")
    mem.add_argument("--prefill", default="full",
                     help="full (exact, the default) or chunked: the opt-in approximation that compresses the "
                          "cache after each history screenshot (model.prefill_mode chunked_compress); "
                          "full,chunked sweeps")
    mem.add_argument("--plot", help="also write a PNG of the peaks and KV per row")
    mem.add_argument("--json", action="store_true", help="print the rows as a JSON list")
    mem.set_defaults(func=_memory_cmd)
