"""``starkv-eval bench compress`` (compressor selection cost at UI-TARS-7B dimensions), ``bench memory``
(a step's exact memory and flops at full scale, simulated on fake tensors) and ``bench sweep`` (a sweep
with shared prefills against the same sweep per unit)."""

from __future__ import annotations

import argparse
import json

from pipeline.metrics.units import unit_label


def _cmd(args: argparse.Namespace) -> int:
    import torch

    from pipeline.bench.compress import (
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

    from pipeline.bench.memory import MemoryBenchError, format_rows, parse_spec, plot_rows, run_bench

    try:  # every option is checked before any work
        spec = parse_spec(args.model, args.screenshots, args.resolution, args.budgets, args.compressors, args.attn,
                          args.decode_steps, args.dtype, args.mlp_chunk, args.vision, args.prefill, not args.no_flops)
    except MemoryBenchError as err:
        print(f"starkv-eval bench memory: {err}", file=sys.stderr)
        return 2
    echo = (lambda *_: None) if args.json else (lambda r: print(f"  simulated {unit_label(r['compressor'], r['budget'])}, "
                                                               f"{r['screenshots']} screenshots, "
                                                               f"{r['attn_implementation']}", file=sys.stderr))
    rows = run_bench(spec, echo=echo)
    if args.plot:
        print(f"plot: {plot_rows(rows, args.plot)}", file=sys.stderr)
    print(json.dumps(rows, indent=2) if args.json else format_rows(rows))
    return 1 if any(r["error"] for r in rows) else 0


def _sweep_cmd(args: argparse.Namespace) -> int:
    import sys

    import torch

    from pipeline.bench.sweep import predict_7b, run_sweep_bench, to_json
    from pipeline.config import ConfigError, load_config, parse_config

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        cfg = load_config(args.job)
        data = cfg.to_dict()
        if args.compressors:
            data["compressors"] = [{"name": n.strip()} for n in args.compressors.split(",") if n.strip()]
        if args.budgets:
            data["budgets"] = [float(b) for b in args.budgets.split(",") if b.strip()]
        if args.model:
            data["model"].update(path=args.model, revision=None)  # the job's revision was its own model's
        if args.max_new_tokens:
            data["model"]["max_new_tokens"] = args.max_new_tokens
        cfg = parse_config(data, source=args.job)
    except (ConfigError, OSError, ValueError) as err:
        print(f"starkv-eval bench sweep: {err}", file=sys.stderr)
        return 2
    echo = (lambda *_: None) if args.json else (lambda *a: print(*a, file=sys.stderr))
    timing = None if args.predict_only else run_sweep_bench(cfg, args.episodes, echo=echo,
                                                                    memory_accounting=not args.no_accounting,
                                                                    batch_decode=not args.no_batch_decode)
    prediction = None
    if args.predict_7b or args.predict_only:
        prediction = predict_7b([c.name for c in cfg.compressors], budget=min(cfg.budgets), device=args.device,
                                unit_counts=(len(cfg.units()), 30), echo=echo)
    out = {"threads": torch.get_num_threads(), "job": args.job, "model": cfg.model.path, **to_json(timing, prediction)}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        if timing is not None:
            print(f"{timing.units} units x {timing.episodes} episodes ({timing.steps} steps each unit): per unit "
                  f"{timing.per_unit_s:.1f} s, shared {timing.shared_s:.1f} s, speedup {timing.speedup:.2f}x; rows "
                  f"{'identical' if timing.identical else 'DIFFER'}; prefill share of a per-unit step "
                  f"{timing.prefill_share:.0%}")
        if prediction is not None:
            ks = ", ".join(f"{k} units {v:.1f}x" for k, v in prediction.speedup.items())
            print(f"UI-TARS-7B ScreenSpot-Pro ({prediction.prompt_tokens} tokens, {prediction.new_tokens} output "
                  f"tokens, budget {prediction.budget:g}%): prefill share {prediction.prefill_share:.1%}; predicted "
                  f"speedup {ks}")
    return 0 if timing is None or timing.identical else 1


def add_parser(sub) -> None:
    bench = sub.add_parser("bench", help="micro-benchmarks (selection cost of the compressors)")
    inner = bench.add_subparsers(dest="bench_command", required=True)
    comp = inner.add_parser("compress", help="selection time and flops of every compressor, the MI step, one "
                                             "layer's prefill")
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

    mem = inner.add_parser("memory", help="a step's exact memory and flops at full model scale, simulated without "
                                          "weights or GPU")
    # (option, default, help); the option's type is its default's
    for flag, default, text in (
        ("--model", "ui-tars-1.5-7b", "a vendored config (ui-tars-1.5-7b) or tiny"),
        ("--screenshots", "5", "screenshots in the prompt; a comma list sweeps (1,2,3,4,5)"),
        ("--resolution", "1920x1080",
         "WIDTHxHEIGHT of every screenshot, or max (exactly the 16,384-token max_pixels cap)"),
        ("--budgets", "20", "KV budgets in percent, comma-separated"),
        ("--compressors", "full,snapkv,starkv", "registered compressors, comma-separated, or all"),
        ("--attn", "sdpa", "attention implementation(s): sdpa, eager or sdpa,eager"),
        ("--decode-steps", 16, "decode steps after the prefill"),
        ("--dtype", "bfloat16", "dtype of the simulated model (bfloat16, float16, float32)"),
        ("--mlp-chunk", "0", "run each decoder MLP over at most N prompt tokens at a time (0: off; a comma list "
                             "sweeps)"),
        ("--vision", "per-image", "per-image (one screenshot at a time through the vision tower, the default) "
                                  "or batch"),
        ("--prefill", "full", "full (exact, the default) or chunked: the opt-in approximation that compresses "
                              "the cache after each history screenshot (model.prefill_mode chunked_compress); "
                              "full,chunked sweeps"),
    ):
        mem.add_argument(flag, default=default, type=type(default), help=text)
    mem.add_argument("--no-flops", action="store_true",
                     help="skip counting the prefill's and the selection's flops (torch's flop counter)")
    mem.add_argument("--plot", help="also write a PNG of the peaks and KV per row")
    mem.add_argument("--json", action="store_true", help="print the rows as a JSON list")
    mem.set_defaults(func=_memory_cmd)

    sw = inner.add_parser("sweep", help="one sweep per unit vs with shared prefills: wall time and equal rows")
    sw.add_argument("--job", default="jobs/smoke.yaml", help="job file giving model, benchmark, units (smoke)")
    sw.add_argument("--compressors", help="registered compressors, comma-separated (default: the job's)")
    sw.add_argument("--budgets", help="budgets in percent, comma-separated (default: the job's)")
    sw.add_argument("--episodes", type=int, default=1, help="episodes of the job's benchmark to run (1)")
    sw.add_argument("--model", help="override model.path (tiny, micro, a folder or a Hugging Face repo id)")
    sw.add_argument("--max-new-tokens", type=int, help="override model.max_new_tokens")
    sw.add_argument("--no-accounting", action="store_true",
                    help="without the exact memory accounting (runs have it on; it costs per op, mostly in decode)")
    sw.add_argument("--no-batch-decode", action="store_true",
                    help="the shared sweep decodes unit by unit instead of as one batch of rows (shows what batching saves)")
    sw.add_argument("--predict-7b", action="store_true",
                    help="also time one UI-TARS-7B-sized layer (prefill over 16,544 tokens: ~1.5 min on CPU) and "
                         "predict the ScreenSpot-Pro speedup")
    sw.add_argument("--predict-only", action="store_true", help="only the 7B prediction, no sweep")
    sw.add_argument("--device", default="cpu", help="device of the 7B-layer timing (cpu or cuda)")
    sw.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    sw.add_argument("--json", action="store_true",
                    help="print units, shared_s, per_unit_s, speedup (and the rest) as JSON")
    sw.set_defaults(func=_sweep_cmd)
