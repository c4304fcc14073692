"""``starkv-eval compare``: every unit of a run against a baseline unit, paired on the same steps.

Prints per unit the accuracy difference to the baseline with a paired bootstrap interval over episodes
and an exact McNemar p-value on the discordant steps, and marks differences that are not significant
(``pipeline.results.compare``). Exit codes: 0 printed, 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import sys


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("compare", help="paired comparison of a run's units against a baseline compressor",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", metavar="RUN_DIR", help="a run folder, its rows folder, or an output folder (its only "
                   "run, or the newest of several)")
    p.add_argument("--baseline", default="full", help="the compressor every other unit is compared with "
                   "(its unit at the same budget, or its only unit; default: full)")
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")
    p.set_defaults(func=run)


def rows_of_run(spec: str) -> tuple[str, list[dict]]:
    """The run folder and its step rows (``ValueError`` naming the path when there are none)."""
    from pipeline.results.parquet import read_rows
    from pipeline.tracking.sources import resolve_run

    resolved = resolve_run(spec)
    if resolved.rows_dir is None:
        raise ValueError(f"{spec}: compare needs a run's Parquet rows (a run, rows or output folder)")
    return str(resolved.run_dir), read_rows(resolved.rows_dir).to_pylist()


def run(args: argparse.Namespace) -> int:
    from pipeline.results.compare import CompareInputError, compare_units, format_comparison
    from pipeline.results.regression import RegressionInputError

    try:
        run_dir, rows = rows_of_run(args.run)
        comparisons = compare_units(rows, args.baseline)
    except (CompareInputError, RegressionInputError, ValueError, FileNotFoundError) as err:
        print(f"starkv-eval compare: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"run": run_dir, "baseline": args.baseline,
                          "units": [c.to_dict() for c in comparisons]}, indent=2))
    else:
        print(f"[starkv-eval] {run_dir}: {len(comparisons)} units against {args.baseline}")
        print(format_comparison(comparisons))
    return 0
