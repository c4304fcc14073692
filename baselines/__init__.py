"""Baseline compressors, one module each; importing this package registers them by name."""

from baselines import (  # noqa: F401
    adakv,
    criticalkv,
    expected_attention,
    fastv,
    full,
    guikv,
    h2o,
    keydiff,
    knorm,
    lookm,
    meda,
    pyramidkv,
    random_keep,
    snapkv,
    streamingllm,
    tova,
    vlcache,
)
