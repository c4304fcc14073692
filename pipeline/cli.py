"""The ``starkv-eval`` command line: run a job, sync MLflow from Parquet, and the tools around them."""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings


def _cmd_run(args: argparse.Namespace) -> int:
    from pipeline.config import load_config
    from pipeline.run.job import run_job

    cfg = load_config(args.config)
    if args.run_id:
        cfg.run_id = args.run_id
    result = run_job(cfg, output=args.output, tracking_uri=args.tracking_uri, wait=args.wait,
                     lease_timeout_s=args.lease_timeout, verbose=args.verbose)
    return 0 if result.summaries else 1


def _cmd_sync(args: argparse.Namespace) -> int:
    from pipeline.tracking.sync import sync_output

    synced = sync_output(args.output, tracking_uri=args.tracking_uri)
    return 0 if synced else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="starkv-eval", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run (or resume) an evaluation job from a YAML config")
    run.add_argument("config", help="job YAML, e.g. jobs/smoke.yaml")
    run.add_argument("--output", help="output folder (default: the config's 'output')")
    run.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite store in the output folder)")
    run.add_argument("--run-id", help="override the run id (default: <job name>-<config hash>)")
    run.add_argument("--wait", action="store_true",
                     help="if another run is writing the same run id, wait for it instead of failing")
    run.add_argument("--lease-timeout", type=float, default=120.0, metavar="SECONDS",
                     help="a run's lease without heartbeat for this long is taken over (default: 120)")
    run.add_argument("-v", "--verbose", action="store_true",
                     help="also show Ray's own start-up and scheduler logs (default: one progress display)")
    run.set_defaults(func=_cmd_run)

    sync = sub.add_parser("sync", help="fill MLflow from the Parquet results of an output folder")
    sync.add_argument("output", help="output folder of one or more runs")
    sync.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite store in the output folder)")
    sync.set_defaults(func=_cmd_sync)

    for extra in ("regress", "compare", "report", "bench", "plan", "train_micro", "micro_diagnose", "wait_head",
                  "data", "listing"):  # one module each in pipeline/commands/
        importlib.import_module(f"pipeline.commands.{extra}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from pipeline.config import ConfigError
    from pipeline.results.store import LeaseHeld, StoreError
    from pipeline.tracking.preflight import TrackingAuthError

    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.filterwarnings("default", category=UserWarning, module="pipeline")
    try:
        return int(args.func(args) or 0)
    except Exception as err:
        from pipeline.benchmarks.common.base import BenchmarkDataError

        # the errors a user can fix: (kind, message prefix, exit code), the first match wins
        for kind, prefix, code in ((ConfigError, "config error: ", 2), (LeaseHeld, "", 3),
                                   (StoreError, "result store: ", 2), (TrackingAuthError, "", 2),
                                   (FileNotFoundError, "", 2),
                                   (BenchmarkDataError, "benchmark data error: ", 2)):
            if isinstance(err, kind):
                print(f"starkv-eval: {prefix}{err}", file=sys.stderr)
                return code
        raise


if __name__ == "__main__":
    sys.exit(main())

