"""Baseline compressors, one module each; importing this package registers them by name."""

from baselines import full, snapkv  # noqa: F401
