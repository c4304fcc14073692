"""Allocation wrappers: a compressor that takes its token scores from another registered scorer.

AdaKV (per-head budgets) and MEDA (per-layer budgets) only decide *how many* tokens each head or layer
keeps; which tokens rank first is the inner scorer's business. :class:`ScorerWrapper` builds the inner
scorer from the ``scorer`` / ``scorer_params`` fields with :func:`starkv.compressor.build` and hands it
the score, the query window, the episode state and the prefill needs, so any scorer combines with any
allocation rule from a job config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from starkv.compressor import ScorerCompressor, build
from starkv.context import LayerContext
from starkv.layout import PromptLayout


@dataclass
class ScorerWrapper(ScorerCompressor):
    """A scorer compressor whose ``score`` is another registered scorer's (built from its fields).

    No paper: the plumbing the allocation wrappers share.

    Parameters
    ----------
    window_size : int
        Observation window W (8), kept by every head; the inner scorer gets the same value.
    scorer : str
        Registered name of the inner scorer (a ``ScorerCompressor``) whose scores rank the tokens.
    scorer_params : dict
        Fields of the inner scorer (``window_size`` excepted: set it on the wrapper).
    """

    hidden_states_needed: ClassVar[str] = "all"  # unused: hidden_needs() is the inner scorer's
    family: ClassVar[str] = "allocation"
    query_aware: ClassVar[bool] = True  # as its inner scorer (SnapKV by default)

    scorer: str = "snapkv"
    scorer_params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        own = type(self).name
        if "window_size" in self.scorer_params:
            raise TypeError(f"compressor {own!r}: set window_size on {own!r}, not in field 'scorer_params'")
        try:
            inner = build(self.scorer, window_size=self.window_size, **self.scorer_params)
        except (KeyError, TypeError) as err:
            raise TypeError(f"compressor {own!r}: field 'scorer' / 'scorer_params' ({self.scorer!r}): "
                            f"{err.args[0] if err.args else err}") from err
        if not isinstance(inner, ScorerCompressor) or type(inner).score is ScorerCompressor.score:
            raise TypeError(f"compressor {own!r}: field 'scorer' must name a scorer (a ScorerCompressor with "
                            f"a score), got {self.scorer!r} ({type(inner).__name__})")
        if inner.head_adaptive or isinstance(inner, ScorerWrapper):
            raise TypeError(f"compressor {own!r}: field 'scorer' names {self.scorer!r}, itself an allocation "
                            "wrapper; give it the scorer underneath")
        if inner.layer_adaptive:
            raise TypeError(f"compressor {own!r}: field 'scorer' names {self.scorer!r}, which splits the budget "
                            "over layers from its own scores; use a scorer with a per-layer budget")
        self.inner: ScorerCompressor = inner

    @property
    def shares_prefill(self) -> bool:  # type: ignore[override]
        return self.inner.shares_prefill

    def hidden_needs(self) -> str:
        """The inner scorer's need: the wrapper itself reads no hidden states."""
        return self.inner.hidden_needs()

    def reset(self) -> None:
        self.inner.reset()

    def on_uncompressed(self, ctx: LayerContext) -> None:
        self.inner.on_uncompressed(ctx)

    def query_window(self, layout: PromptLayout, prompt_length: int) -> int:
        return self.inner.query_window(layout, prompt_length)

    def score(self, ctx: LayerContext) -> torch.Tensor:
        return self.inner.score(ctx)
