"""``starkv-eval list compressors``: every registered method with its family, paper and traits."""

from __future__ import annotations

import argparse
import json

TRAITS = ("query_aware", "head_adaptive", "layer_adaptive", "merging", "pruning", "quantized")

#: unit options that combine with any method, listed after the methods (added with the option itself)
OPTIONS: list[dict] = [
    # kv_quant: KIVI storage of the kept K/V (starkv.storage, starkv.storage.kivi), any compressor, after eviction
    {"name": "kv_quant", "family": "quantization", "paper": "https://arxiv.org/abs/2402.02750", "quantized": True,
     "query_aware": False, "head_adaptive": False, "layer_adaptive": False, "merging": False, "pruning": False},
    # kv_layout: per_query_head: the GUI-KV / STaR-KV drivers' storage (K/V repeated to the query heads, selected
    # per query head; snapkv, guikv, starkv), 1.4x the GQA full cache at 20 % on UI-TARS
    {"name": "kv_layout=per_query_head", "family": "storage", "paper": "https://arxiv.org/abs/2510.00536",
     "quantized": False, "query_aware": False, "head_adaptive": False, "layer_adaptive": False, "merging": False,
     "pruning": False},
]


def compressor_rows() -> list[dict]:
    """One record per registered compressor, sorted by family then name."""
    import starkv
    from starkv.compressor import COMPRESSORS

    rows = []
    for name in starkv.available():
        cls = COMPRESSORS[name]
        rows.append({"name": name, "family": cls.family, "paper": cls.paper(), "quantized": False,
                     **cls.traits()})
    return sorted(rows, key=lambda r: (r["family"], r["name"])) + [dict(o) for o in OPTIONS]


def render(rows: list[dict]) -> str:
    """A fixed-width table: name, family, one column per trait (``yes`` or blank), paper."""
    heads = ["name", "family", *(t.replace("_", "-") for t in TRAITS), "paper"]
    table = [[r["name"], r["family"], *("yes" if r.get(t) else "" for t in TRAITS), r["paper"]] for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(heads, *table)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(heads, widths)).rstrip()]
    lines += ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip() for row in table]
    return "\n".join(lines)


def _cmd(args: argparse.Namespace) -> int:
    rows = compressor_rows()
    print(json.dumps(rows, indent=2) if args.json else render(rows))
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("list", help="list the registered compressors with their family, paper and traits")
    p.add_argument("what", choices=["compressors"], help="what to list")
    p.add_argument("--json", action="store_true", help="print JSON records instead of the table")
    p.set_defaults(func=_cmd)
