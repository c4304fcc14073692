"""What a work item evaluates: a compressor at a budget inside one run, and the one label it goes by."""

from __future__ import annotations

from dataclasses import dataclass


def unit_label(compressor: str, budget: float) -> str:
    """The label of a (compressor, budget) unit everywhere: rows, summaries, MLflow tags, resume keys."""
    return f"{compressor}@{float(budget):g}"


@dataclass(frozen=True)
class Unit:
    """What one work item sweeps: a compressor (by label) at a budget, inside one run."""

    run_id: str
    compressor: str
    budget: float
    model: str

    @property
    def key(self) -> str:
        return unit_label(self.compressor, self.budget)
