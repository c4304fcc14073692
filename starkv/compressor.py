"""The pluggable compressor interface and the registry that lets a config name a method by string."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from starkv.budget import SelectionPlan
from starkv.context import LayerContext
from starkv.storage import KVStorage

COMPRESSORS: dict[str, type[Compressor]] = {}
#: what a compressor may declare it reads of the hidden states, widest first (``hidden_states_needed``)
HIDDEN_NEEDS = ("all", "current_image", "current_image_norms", "none")


def register(name: str):
    """Class decorator: make a compressor constructible by name from a job config."""

    def wrap(cls: type[Compressor]) -> type[Compressor]:
        if name in COMPRESSORS and COMPRESSORS[name] is not cls:
            raise ValueError(f"compressor {name!r} registered twice")
        cls.name = name
        COMPRESSORS[name] = cls
        return cls

    return wrap


def available() -> list[str]:
    _load_builtin()
    return sorted(COMPRESSORS)


def build(name: str, **params: Any) -> Compressor:
    """Instantiate a registered compressor; unknown names or fields fail with a message naming them."""
    _load_builtin()
    if name not in COMPRESSORS:
        raise KeyError(f"unknown compressor {name!r}; registered: {', '.join(sorted(COMPRESSORS))}")
    cls = COMPRESSORS[name]
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - fields)
    if unknown:
        raise TypeError(f"compressor {name!r} has no field(s) {unknown}; fields: {sorted(fields)}")
    return cls(**params)


def _load_builtin() -> None:
    """Import the packages whose modules register compressors (baselines depend on starkv, not back)."""
    import importlib

    for module in ("starkv.methods", "baselines"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:  # pragma: no cover - only when a package is absent
            if err.name != module:
                raise


@dataclass
class Compressor:
    """Base of every KV compressor.

    A compressor is attached to a model's decoder self-attention layers (see ``starkv.hook.attach``) and
    called once per layer at the prefill of each ``generate``. It returns, per KV head, the sorted
    indices of the tokens to keep; the hook gathers the cache at KV-head granularity.

    Stateful methods keep their state on the instance and clear it in ``reset()``, which the pipeline
    calls at every episode start.

    No paper: the interface every method implements.

    Parameters
    ----------
    window_size : int
        Observation window W (8): the last W prompt tokens, always kept and used as queries by the
        scoring methods.
    """

    window_size: int = 8

    name: ClassVar[str] = "base"
    #: True when a layer's capacity depends on all layers (the hook then defers selection to the end).
    layer_adaptive: ClassVar[bool] = False
    #: Which attention-input hidden states selection reads, so a shared prefill (``starkv.shared``) keeps
    #: only those: ``"all"``, ``"current_image"`` (the last screenshot's span), ``"current_image_norms"`` (only
    #: their fp32 L2 norms, read with ``ctx.hidden_norms_of``) or ``"none"``. Read from the
    #: class's own body only: a subclass that does not declare it gets ``"all"`` (exact, more memory).
    hidden_states_needed: ClassVar[str] = "all"
    #: False when selection depends on more than its ``LayerContext`` and the instance's own state (global
    #: RNG, the moment it runs inside the forward, ...): its units then never share a prefill.
    shares_prefill: ClassVar[bool] = True
    #: True when the kept cache never depends on the budget or on episode state (the full cache): in a shared
    #: sweep its units at different budgets are one computation, decoded once per step (``pipeline.step.sweep``).
    budget_free: ClassVar[bool] = False
    #: Traits ``starkv-eval list compressors`` and ``docs/methods.md`` show. ``family``: reference, eviction,
    #: allocation (a wrapper that splits the budget over heads or layers), merging or pruning.
    family: ClassVar[str] = "eviction"
    #: scores with the prompt's queries (observation window, last query, all queries)
    query_aware: ClassVar[bool] = False
    #: KV heads of a layer keep different numbers of tokens (ragged per-head storage)
    head_adaptive: ClassVar[bool] = False
    #: evicted entries are merged into kept ones (values rewritten), not dropped
    merging: ClassVar[bool] = False
    #: tokens leave the prefill itself after some layer (later layers compute on fewer tokens)
    pruning: ClassVar[bool] = False
    #: selects per query head when the unit stores ``kv_layout: per_query_head`` (``LayerContext.selection_rows``);
    #: read from the class's own body only, so a subclass that changes the scoring does not inherit it
    per_query_head_layout: ClassVar[bool] = False
    #: how the unit stores the kept K/V (``starkv.storage``); set per instance by :meth:`stored_as`, not a
    #: method parameter (no annotation: not a dataclass field, not in ``params()``)
    storage = KVStorage()

    @classmethod
    def supports_per_query_head(cls) -> bool:
        """Whether this class itself declares ``per_query_head_layout`` (never inherited)."""
        return bool(cls.__dict__.get("per_query_head_layout", False))

    def stored_as(self, storage: KVStorage) -> Compressor:
        """Store this instance's kept K/V as ``storage`` says; ValueError naming ``kv_layout`` if unsupported."""
        if storage.per_query_head and not self.supports_per_query_head():
            supported = sorted(n for n, c in COMPRESSORS.items() if c.supports_per_query_head())
            raise ValueError(f"kv_layout: compressor {self.name!r} does not support per_query_head (it selects "
                             f"per KV head only); supported by: {', '.join(supported)}")
        self.storage = storage
        return self

    @classmethod
    def paper(cls) -> str:
        """The paper link of the class docstring's ``Paper:`` line ("" for reference points)."""
        for line in (cls.__doc__ or "").splitlines():
            if line.strip().startswith("Paper:"):
                return line.split("Paper:", 1)[1].strip()
        return ""

    @classmethod
    def traits(cls) -> dict[str, bool]:
        """The yes/no traits by name; layer-adaptive: budgets vary by layer (always, or as an option)."""
        declared = cls.layer_adaptive
        layer = not cls.budget_free and (not isinstance(declared, bool) or declared
                                         or cls.layer_capacity is not Compressor.layer_capacity)
        return {"query_aware": cls.query_aware, "head_adaptive": cls.head_adaptive, "layer_adaptive": layer,
                "merging": cls.merging, "pruning": cls.pruning}

    @property
    def uniform_layers(self) -> bool:
        """Whether every layer keeps the same number of tokens (eager attention needs that at decode)."""
        return not self.layer_adaptive and type(self).layer_capacity is Compressor.layer_capacity

    def reset(self) -> None:
        """Forget all per-episode state."""

    def hidden_needs(self) -> str:
        """This class's own ``hidden_states_needed`` declaration (``"all"`` when it declares none)."""
        need = type(self).__dict__.get("hidden_states_needed", "all")
        if need not in HIDDEN_NEEDS:
            raise ValueError(f"compressor {self.name!r}: hidden_states_needed must be one of {HIDDEN_NEEDS}, "
                             f"got {need!r}")
        return need

    def on_uncompressed(self, ctx: LayerContext) -> None:
        """Called instead of ``select`` when a prefill keeps everything (stateful methods may count it)."""

    def params(self) -> dict[str, Any]:
        """Every field, for MLflow params and Parquet metadata."""
        return {"compressor": self.name, **dataclasses.asdict(self)}

    def query_window(self, layout, prompt_length: int) -> int:
        """How many of the last query rows to capture for this prompt (the observation window)."""
        return self.window_size

    def layer_capacity(self, prompt_length: int, cap: int, layer_idx: int, num_layers: int) -> int:
        """Capacity of one layer given the uniform capacity ``cap``; layer-varying methods override."""
        return cap

    def select(self, ctx: LayerContext) -> torch.Tensor:
        """Kept token indices, shape (H_kv, C), ascending per row ((H, C) allowed for the per-query-head layout)."""
        raise NotImplementedError

    def merge(self, ctx: LayerContext, kept: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Kept keys and values (1, H_kv, C, d) with the evicted entries folded in, or None for the plain gather.

        Called by the hook after ``select`` only for ``merging`` classes; ``kept`` is what ``select`` returned
        and ``ctx.keys`` / ``ctx.values`` still hold every token of the layer.
        """
        return None

    def prune_layer(self, num_layers: int) -> int:
        """For ``pruning`` classes: the 0-based index of the layer whose ``select`` picks the tokens that go on.

        The layers after it run the prefill on the kept tokens only; the caches of it and the layers before it
        are cut to the same tokens (``starkv.pruning``).
        """
        raise NotImplementedError(f"compressor {self.name!r} is not a pruning method")


@dataclass
class ScorerCompressor(Compressor):
    """A compressor defined by a score per past token: keep the top-k past tokens plus the window.

    ``score`` returns (H_kv, P) for per-KV-head selection or (1, P) for one index set shared by all heads.

    No paper: the shared top-k plumbing of the scoring methods.

    Parameters
    ----------
    window_size : int
        Observation window W (8), always kept on top of the top-k past tokens.
    """

    def score(self, ctx: LayerContext) -> torch.Tensor:
        raise NotImplementedError

    def layer_weight(self, ctx: LayerContext, scores: torch.Tensor) -> float:
        """Relative share of the total budget for this layer (only used when ``layer_adaptive``)."""
        return 1.0

    def layer_weight_range(self) -> tuple[float, float] | None:
        """Bounds ``(floor, ceiling)`` of every ``layer_weight`` (a layer keeping everything weighs 1), or None.

        With them the hook cuts each layer's cache at once to what it can keep at most (``starkv.early_cut``).
        """
        return None

    def select(self, ctx: LayerContext) -> torch.Tensor:
        return topk_with_window(self.score(ctx), ctx.plan, ctx.selection_rows)


def topk_with_window(scores: torch.Tensor, plan: SelectionPlan, num_kv_heads: int) -> torch.Tensor:
    """Top ``plan.keep_past`` of ``scores`` (rows: heads or one shared row) + the last ``plan.window`` tokens.

    ``num_kv_heads``: the rows a shared row is expanded to (``LayerContext.selection_rows``).
    """
    if scores.shape[-1] != plan.past:
        raise ValueError(f"scores cover {scores.shape[-1]} tokens, expected the {plan.past} past tokens")
    device = scores.device
    top = scores.float().topk(plan.keep_past, dim=-1).indices.sort(dim=-1).values
    window = torch.arange(plan.past, plan.length, device=device).expand(top.shape[0], -1)
    idx = torch.cat([top, window], dim=-1)
    return idx.expand(num_kv_heads, -1) if idx.shape[0] == 1 else idx
