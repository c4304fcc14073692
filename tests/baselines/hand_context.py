"""Hand-built layer contexts for the golden tests of the scoring methods (tensors only, no model)."""

from __future__ import annotations

import torch

from starkv.budget import capacity, plan_selection
from starkv.context import LayerContext
from starkv.layout import PromptLayout


def hand_context(keys: list, queries: list | None = None, values: list | None = None, budget: float = 50.0,
                 window_size: int = 2, num_heads: int | None = None, module=None,
                 spans: tuple = ()) -> LayerContext:
    """A context from nested lists: ``keys``/``values`` [H_kv][L][d], ``queries`` [H][Wq][d].

    Defaults: values of norm 1 (so a value norm never decides), one zero query row per query head.
    With L = 10, budget 50 % and ``window_size`` 2 the plan keeps the top 3 of the 8 past tokens plus
    tokens 8 and 9 (C = int(10·50/100) = 5, W' = min(2, C − 2) = 2, k = C − W' = 3).
    """
    k = torch.tensor(keys, dtype=torch.float32).unsqueeze(0)
    _, num_kv, length, dim = k.shape
    heads = num_heads or num_kv
    q = torch.zeros(1, heads, 1, dim) if queries is None else torch.tensor(queries, dtype=torch.float32).unsqueeze(0)
    if values is None:
        v = torch.zeros(1, num_kv, length, dim)
        v[..., 0] = 1.0
    else:
        v = torch.tensor(values, dtype=torch.float32).unsqueeze(0)
    layout = PromptLayout(image_spans=tuple(spans), prompt_length=length)
    return LayerContext(layer_idx=0, num_layers=1, queries=q, keys=k, values=v,
                        hidden_states=torch.zeros(1, length, 4), layout=layout, budget=budget,
                        plan=plan_selection(length, capacity(length, budget), window_size), module=module)


def kept(idx: torch.Tensor) -> list[list[int]]:
    """Kept indices per KV head as plain lists."""
    return [row.tolist() for row in idx]
