"""Baseline compressors, one module each; importing this package registers them by name."""

from baselines import adakv, full, guikv, meda, pyramidkv, random_keep, snapkv, streamingllm, vlcache  # noqa: F401
