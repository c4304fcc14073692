"""Benchmarks: importing this package registers every built-in benchmark in ``BENCHMARKS``."""

from pipeline.benchmarks import agentnet, androidcontrol, synthetic  # noqa: F401
from pipeline.benchmarks.base import BENCHMARKS, get_benchmark

__all__ = ["BENCHMARKS", "get_benchmark"]
