"""Benchmarks: importing this package registers every built-in benchmark in ``BENCHMARKS``."""

from pipeline.benchmarks import agentnet, androidcontrol, mind2web, screenspot_pro, screenspot_v2, synthetic  # noqa: F401
from pipeline.benchmarks.base import BENCHMARKS, get_benchmark

__all__ = ["BENCHMARKS", "get_benchmark"]
