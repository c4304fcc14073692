"""One colour per compressor, the same in every plot and every MLflow run (tag ``mlflow.runColor``).

Built-in methods get fixed, clearly distinct colours; any other label (a plugin, an ablation's ``label``)
gets one from a second palette chosen by a stable hash of the label, so it never changes between runs.
"""

from __future__ import annotations

import zlib

BUILTIN_COLOURS: dict[str, str] = {
    "full": "#4d4d4d",          # the uncompressed reference: dark grey
    "starkv": "#d62728",        # red
    "snapkv": "#1f77b4",        # blue
    "guikv": "#2ca02c",         # green
    "pyramidkv": "#9467bd",     # purple
    "streamingllm": "#ff7f0e",  # orange
    "vlcache": "#17becf",       # cyan
    "random": "#bcbd22",        # olive
    "tova": "#9edae5",          # light cyan
    "h2o": "#c49c94",           # light brown
    "knorm": "#98df8a",         # light green
    "keydiff": "#dbdb8d",       # light olive
    "expected_attention": "#c5b0d5",  # light purple
    "criticalkv": "#aec7e8",    # light blue (its default inner scorer is SnapKV, blue)
    "lookm": "#8c564b",         # brown
    "fastv": "#e377c2",         # pink
    "adakv": "#393b79",         # dark blue (wraps SnapKV by default)
    "meda": "#e7969c",          # rose
}

EXTRA_COLOURS = ("#8c564b", "#e377c2", "#7f7f00", "#003f5c", "#ff9da7", "#59a14f", "#b07aa1", "#9c755f",
                 "#f28e2b", "#76b7b2")


def compressor_colour(label: str) -> str:
    """Hex colour of a compressor label: fixed for the built-ins, a stable hashed pick otherwise."""
    if label in BUILTIN_COLOURS:
        return BUILTIN_COLOURS[label]
    return EXTRA_COLOURS[zlib.crc32(label.encode()) % len(EXTRA_COLOURS)]
