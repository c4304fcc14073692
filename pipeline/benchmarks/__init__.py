"""Benchmarks, one package each; importing this package registers every built-in one in ``BENCHMARKS``.

A benchmark is a sub-package whose modules register their classes with ``@register_benchmark``; the
packages are found here by walking this folder, so a new benchmark needs no line outside its package.
"""

import importlib
import pkgutil

from pipeline.benchmarks.common.base import BENCHMARKS, get_benchmark


def _register_builtin() -> None:
    """Import every benchmark package (and its modules) under this folder, which registers them."""
    for info in pkgutil.iter_modules(__path__):
        if not info.ispkg or info.name == "common":
            continue
        package = importlib.import_module(f"{__name__}.{info.name}")
        for sub in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{package.__name__}.{sub.name}")


_register_builtin()

__all__ = ["BENCHMARKS", "get_benchmark"]
