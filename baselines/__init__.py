"""Baseline compressors, one module each, grouped by family; importing this package registers them by name."""

from baselines.allocation import adakv, criticalkv, meda, pyramidkv  # noqa: F401
from baselines.multimodal import fastv, guikv, lookm, vlcache  # noqa: F401
from baselines.reference import full, random_keep  # noqa: F401
from baselines.scorers import expected_attention, h2o, keydiff, knorm, snapkv, streamingllm, tova  # noqa: F401
