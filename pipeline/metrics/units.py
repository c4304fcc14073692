"""What a work item evaluates: a compressor at a budget inside one run, and the one label it goes by."""

from __future__ import annotations

from dataclasses import dataclass

# the storage tags (``+pqh``, ``+int<bits>``) a unit's compressor name ends with (``CompressorConfig.display``)
from starkv.storage import split_storage_tag


def unit_label(compressor: str, budget: float) -> str:
    """The label of a (compressor, budget) unit everywhere: rows, summaries, MLflow tags, resume keys.

    A storage tag of the compressor column goes after the budget: ``snapkv+int4`` at 20 % is
    ``snapkv@20+int4``; a unit without storage options is ``snapkv@20`` as always.
    """
    name, tag = split_storage_tag(compressor)
    return f"{name}@{float(budget):g}{tag}"


@dataclass(frozen=True)
class Unit:
    """What one work item sweeps: a compressor (by its display name, storage tag included) at a budget."""

    run_id: str
    compressor: str
    budget: float
    model: str

    @property
    def key(self) -> str:
        return unit_label(self.compressor, self.budget)
