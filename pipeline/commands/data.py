"""``starkv-eval data fetch BENCHMARK --to DIR``: download a benchmark into the layout its loader reads.

Sources, files and layouts per benchmark: docs/benchmarks/data.md. Resumable: run the same command
again after an interruption and only the missing files are downloaded. Exit codes: 0 fetched and
verified; 1 some file failed its size / checksum check or the layout is incomplete (those files are not
kept; run again); 2 bad input (unknown benchmark or split, target not writable, remote unreachable).
"""

from __future__ import annotations

import argparse
import sys

from pipeline.benchmarks.common.fetch import FetchError, Remote, fetch, get_fetch_spec


def add_parser(sub) -> None:
    p = sub.add_parser("data", help="benchmark data: fetch a benchmark from its public home",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = p.add_subparsers(dest="data_command", required=True)
    f = verbs.add_parser("fetch", help="download a benchmark into the layout its loader reads (resumable)",
                         description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    f.add_argument("benchmark", help="screenspot_v2, screenspot_pro, mind2web, androidcontrol or agentnetbench")
    f.add_argument("--to", required=True, metavar="DIR", help="target folder (created; re-runs resume in it)")
    f.add_argument("--from", dest="remote", metavar="URL",
                   help="read from this folder or fsspec URL instead of the public home (a mirror laid out "
                        "like it)")
    f.add_argument("--revision", help="Hugging Face branch, tag or commit (default: main)")
    f.add_argument("--split", action="append", metavar="SPLIT",
                   help="mind2web: a split to fetch (repeatable; default test_task, test_website, test_domain)")
    f.add_argument("--no-progress", action="store_true", help="no progress bar")
    f.set_defaults(func=run_fetch)


def run_fetch(args: argparse.Namespace) -> int:
    try:
        spec = get_fetch_spec(args.benchmark, revision=args.revision, splits=args.split)
        remote = Remote.from_url(args.remote) if args.remote else None
        report = fetch(spec, args.to, remote=remote, progress=not args.no_progress,
                       log=lambda line: print(line, flush=True))
    except FetchError as err:
        print(f"starkv-eval data fetch: {err}", file=sys.stderr)
        return 2
    print(f"[data fetch] {report.name}: {len(report.downloaded)} downloaded "
          f"({report.bytes_downloaded / 2**20:.1f} MiB), {len(report.skipped)} already complete")
    for line in report.failed + report.problems:
        print(f"[data fetch] problem: {line}", file=sys.stderr)
    if not report.ok:
        print(f"[data fetch] {report.name} is not complete; run the same command again to retry", file=sys.stderr)
        return 1
    print(f"[data fetch] {report.name} is ready in {report.path}; paste into a job:\n")
    print(report.block)
    return 0


