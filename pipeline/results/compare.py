"""Paired comparisons of a run's units against a baseline unit: the same steps, so differences are paired.

Every unit of a run evaluates the same steps, so unit and baseline are compared step by step: the mean
difference in accuracy with a paired cluster-bootstrap interval over episodes, and an exact McNemar test
on the steps where exactly one of them is right. A difference is called significant only when the
interval excludes 0 and McNemar's p is below 0.05; otherwise the table says ``n.s.``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.metrics.units import unit_label
from pipeline.results.stats import PairedDifference, paired_difference, step_correct


@dataclass(frozen=True)
class UnitComparison:
    """One unit against its baseline unit (same budget, or the baseline's only budget).

    Parameters
    ----------
    compressor, budget : str, float
        The unit.
    baseline : str
        The baseline unit's label.
    accuracy, baseline_accuracy : float
        Accuracy of each on the steps they share.
    paired : PairedDifference
        Unit minus baseline with its interval, discordant counts and McNemar p-value.
    """

    compressor: str
    budget: float
    baseline: str
    accuracy: float
    baseline_accuracy: float
    paired: PairedDifference

    @property
    def unit(self) -> str:
        return unit_label(self.compressor, self.budget)

    def to_dict(self) -> dict[str, Any]:
        d = self.paired.difference
        return {"unit": self.unit, "compressor": self.compressor, "budget": self.budget, "baseline": self.baseline,
                "steps": self.paired.steps, "accuracy": self.accuracy, "baseline_accuracy": self.baseline_accuracy,
                "difference": d.value, "ci_low": d.low, "ci_high": d.high, "interval_method": d.method,
                "better": self.paired.better, "worse": self.paired.worse, "mcnemar_p": self.paired.p_value,
                "significant": self.paired.significant}


class CompareInputError(ValueError):
    """A comparison that cannot be made (no such baseline compressor, no shared steps)."""


def compare_units(rows: list[dict[str, Any]], baseline: str = "full") -> list[UnitComparison]:
    """Every unit except the baseline's against the baseline unit of the same budget (or its only one)."""
    units: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for r in rows:
        units.setdefault((r["compressor"], float(r["budget"])), []).append(r)
    base_units = {b: rs for (c, b), rs in units.items() if c == baseline}
    if not base_units:
        names = ", ".join(sorted({c for c, _ in units}))
        raise CompareInputError(f"baseline {baseline!r} is not a compressor of this run (it has: {names})")
    out = []
    for (comp, budget), unit_rows in sorted(units.items()):
        if comp == baseline:
            continue
        base_budget = budget if budget in base_units else (next(iter(base_units)) if len(base_units) == 1 else None)
        if base_budget is None:
            raise CompareInputError(f"baseline {baseline!r} has no unit at budget {budget:g} "
                                    f"(it has {', '.join(f'{b:g}' for b in sorted(base_units))})")
        base_rows = base_units[base_budget]
        paired = paired_difference(unit_rows, base_rows, value=step_correct)
        if paired.steps == 0:
            raise CompareInputError(f"{unit_label(comp, budget)} shares no step with {unit_label(baseline, base_budget)}")
        keys = {(r["episode_id"], r["step_index"]) for r in base_rows}
        shared = [r for r in unit_rows if (r["episode_id"], r["step_index"]) in keys]
        base_keys = {(r["episode_id"], r["step_index"]) for r in shared}
        acc = sum(step_correct(r) for r in shared) / len(shared)
        base_acc = sum(step_correct(r) for r in base_rows if (r["episode_id"], r["step_index"]) in base_keys) / len(shared)
        out.append(UnitComparison(comp, budget, unit_label(baseline, base_budget), acc, base_acc, paired))
    return out


def format_comparison(comparisons: list[UnitComparison]) -> str:
    """The comparison as a fixed-width table (terminal, MLflow note and artifact)."""
    head = (f"{'unit':<18}{'vs':<14}{'steps':>6}{'acc':>8}{'base':>8}{'diff':>8}{'95% CI':>18}"
            f"{'+/-':>9}{'McNemar p':>11}  verdict")
    lines = [head, "-" * len(head)]
    for c in comparisons:
        d = c.paired.difference
        verdict = "significant" if c.paired.significant else "n.s."
        lines.append(f"{c.unit:<18}{c.baseline:<14}{c.paired.steps:>6}{c.accuracy:>8.3f}{c.baseline_accuracy:>8.3f}"
                     f"{d.value:>+8.3f}{f'[{d.low:+.3f}, {d.high:+.3f}]':>18}"
                     f"{f'{c.paired.better}/{c.paired.worse}':>9}{c.paired.p_value:>11.3g}  {verdict}")
    lines.append("(diff: unit - baseline accuracy on the same steps; 95% CI: paired bootstrap over episodes; "
                 "+/-: steps only the unit / only the baseline got right; McNemar p: exact, two-sided; "
                 "significant: CI excludes 0 and p < 0.05)")
    return "\n".join(lines)
