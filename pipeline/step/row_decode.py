"""Decode several units' compressed caches as the rows of one batch, bit for bit as each alone.

After a shared prefill (``pipeline.step.sweep``) every unit of a step starts from the same first token and
its own compressed cache. Decoding the units one after another repeats every per-token op -- and its
Python dispatch, and the memory accounting's per-op bookkeeping -- once per unit; on a small model that
overhead *is* the decode. Here the units are the rows of one batch, and only what is exact is batched:

* every linear layer of the language model runs as one ``baddbmm``/``bmm`` of the rows against the
  same weight: per row the same (1 x in) @ (in x out) product as the unit's own ``F.linear``. Whether
  the two agree to the bit depends on the BLAS kernels the device and thread count pick for the shape
  (on this CPU with two threads an LM head of odd width does not), so every layer is checked at every
  batch size on first use (:func:`_exact`) and a layer where they differ runs one ``F.linear`` per row;
* attention runs per row on that unit's own cache (the units keep different numbers of tokens), through
  the model's own attention function;
* norms, rotary embeddings, activations and residual adds work row by row anyway, and the greedy pick,
  the logits processors of the model's generation config and the end-of-sequence rule are ``generate``'s.

Rows leave the batch when they end (an end token or ``max_new_tokens``), exactly where ``generate``
would stop for that unit alone. Tests: tests/step/test_row_decode.py and every shared-sweep equality test.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

from starkv.hook import decoder_layers, install_attention_wrapper, remove_attention_wrapper, text_model

#: (device, dtype, in, out, bias, rows, threads) -> whether batched rows equal per-row ``F.linear`` (kernels
#: are chosen by shape, dtype, device and threads, not by values, so one check per key holds for the process)
_EXACT: dict[tuple, bool] = {}


def _linears(model) -> list[torch.nn.Linear]:
    """The language model's linear layers and the LM head (the vision tower never runs in decode)."""
    mods = [m for m in text_model(model).modules() if isinstance(m, torch.nn.Linear)]
    head = getattr(model, "lm_head", None)
    return mods + ([head] if isinstance(head, torch.nn.Linear) else [])


def _row_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear`` of (rows, 1, in) as one batched product, each row against the same weight."""
    rows = x.shape[0]
    w = weight.t().unsqueeze(0).expand(rows, -1, -1)
    if bias is None:
        return torch.bmm(x, w)
    return torch.baddbmm(bias.view(1, 1, -1).expand(rows, 1, -1), x, w)


def _exact(mod: torch.nn.Linear, rows: int) -> bool:
    """Whether the batched product gives each of ``rows`` rows exactly its own ``F.linear`` for this layer."""
    w, b = mod.weight, mod.bias
    key = (str(w.device), w.dtype, w.shape[1], w.shape[0], b is not None, rows, torch.get_num_threads())
    if key not in _EXACT:
        gen = torch.Generator(device=w.device).manual_seed(rows)  # never the global RNG
        with torch.inference_mode():
            x = torch.randn(rows, 1, w.shape[1], generator=gen, device=w.device, dtype=w.dtype)
            _EXACT[key] = bool(torch.equal(_row_linear(x, w, b), _per_row(x, w, b)))
    return _EXACT[key]


def _per_row(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Each row's own ``F.linear``, as its unit alone computes it."""
    return torch.cat([F.linear(x[i:i + 1], weight, bias) for i in range(x.shape[0])])


def rows_exact(model, rows: int) -> bool:
    """True when every linear layer batches ``rows`` rows exactly (else some run row by row)."""
    return all(_exact(mod, rows) for mod in _linears(model))


@contextlib.contextmanager
def _row_linear_forwards(model) -> Iterator[None]:
    """Every linear layer computes a (rows, 1, in) input row by row: in one batched product where that is
    exact for its shape on this device (:func:`_exact`), else as one ``F.linear`` per row."""
    patched = []
    for mod in _linears(model):
        if "forward" in vars(mod):  # someone else's instance forward: leave that layer alone
            continue

        verdicts: dict[int, bool] = {}  # rows -> exact, for this layer during this decode

        def forward(x, mod=mod, exact=verdicts):
            rows = x.shape[0]
            if x.dim() == 3 and x.shape[1] == 1 and rows > 1:
                if exact.get(rows) is None:
                    exact[rows] = _exact(mod, rows)
                if exact[rows]:
                    return _row_linear(x, mod.weight, mod.bias)
                return _per_row(x, mod.weight, mod.bias)
            return F.linear(x, mod.weight, mod.bias)

        mod.forward = forward
        patched.append(mod)
    try:
        yield
    finally:
        for mod in patched:
            del mod.forward


class RowCaches:
    """Each row's own K/V per layer; ``update`` grows the rows still decoding as ``DynamicCache`` would.

    The attention function then runs per row on that row's cache (:meth:`attend`), so units that kept
    different numbers of tokens decode side by side.
    """

    def __init__(self, per_row: list[list[tuple[torch.Tensor, torch.Tensor]]]) -> None:
        self.layers = None  # not a transformers Cache: nothing may read it as one
        self.rows = [[[k, v] for k, v in row] for row in per_row]
        self.active = list(range(len(per_row)))
        self._current: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def update(self, keys: torch.Tensor, values: torch.Tensor, layer_idx: int, *args, **kwargs):
        grown = []
        for r, i in enumerate(self.active):
            slot = self.rows[i][layer_idx]
            slot[0] = torch.cat([slot[0], keys[r:r + 1]], dim=-2)
            slot[1] = torch.cat([slot[1], values[r:r + 1]], dim=-2)
            grown.append((slot[0], slot[1]))
        self._current[layer_idx] = grown
        return keys, values

    def attend(self, inner, module, query: torch.Tensor, kwargs: dict[str, Any]):
        """The model's attention function per row, each on its own grown cache (no mask: one query)."""
        grown = self._current.pop(module.layer_idx)
        outs = [inner(module, query[r:r + 1], k, v, None, **kwargs)[0] for r, (k, v) in enumerate(grown)]
        return torch.cat(outs, dim=0), None


@contextlib.contextmanager
def _row_attention(model, cache: RowCaches) -> Iterator[None]:
    layers = decoder_layers(model)
    impl = layers[0].self_attn.config._attn_implementation or "eager"  # noqa: SLF001 - transformers keeps the attention backend only here
    install_attention_wrapper(impl)
    for layer in layers:
        layer.self_attn.starkv_rows = cache
    try:
        yield
    finally:
        for layer in layers:
            vars(layer.self_attn).pop("starkv_rows", None)
        remove_attention_wrapper(impl)


def greedy_setup(model, prompt_ids: torch.Tensor, max_new_tokens: int, pad_token_id: int | None):
    """``generate``'s greedy settings for this model: (logits processors, end-token ids)."""
    config = copy.deepcopy(model.generation_config)
    config.update(do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=pad_token_id)
    processors = model._get_logits_processor(generation_config=config, input_ids_seq_length=prompt_ids.shape[1],  # noqa: SLF001 - generate's own processors, not public in transformers
                                             encoder_input_ids=prompt_ids, device=prompt_ids.device, model_kwargs={})
    eos = config.eos_token_id
    eos = set() if eos is None else {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}
    return processors, eos


def decode_rows(model, prompt_ids: torch.Tensor, first_logits: torch.Tensor, rope_deltas: torch.Tensor,
                caches: list[list[tuple[torch.Tensor, torch.Tensor]]], max_new_tokens: int,
                greedy: tuple[Any, set[int]]) -> list[list[int]]:
    """Greedy tokens of every row: ``first_logits`` (the shared prefill's last-position logits) give the
    first token, then each row decodes from its own per-layer ``(keys, values)``. ``greedy``:
    :func:`greedy_setup`'s (logits processors, end tokens) for this prompt."""
    processors, eos = greedy

    def pick(ids: torch.Tensor, logits: torch.Tensor) -> list[int]:
        scores = logits.to(copy=True, dtype=torch.float32)
        if len(processors):
            scores = processors(ids, scores)
        return torch.argmax(scores, dim=-1).tolist()

    first = pick(prompt_ids, first_logits)[0]
    tokens = [[first] for _ in caches]
    active = [i for i in range(len(caches)) if first not in eos and max_new_tokens > 1]
    length = prompt_ids.shape[1]
    device = prompt_ids.device
    # generate's decode positions: the text row counts on from the prompt, the M-RoPE rows add the delta
    text = torch.full((1, 1, 1), length - 1, dtype=torch.long, device=device)
    base = torch.cat([text, (text + rope_deltas.to(device).view(1, 1, 1)).expand(3, 1, 1)])
    masks = {kind: None for kind in set(getattr(model.config.get_text_config(), "layer_types", None)
                                        or ["full_attention"])}
    cache = RowCaches(caches)
    with _row_linear_forwards(model), _row_attention(model, cache):
        for t in range(1, max_new_tokens):
            if not active:
                break
            cache.active = active
            n = len(active)
            input_ids = torch.tensor([[tokens[i][-1]] for i in active], dtype=torch.long, device=device)
            out = model(input_ids=input_ids, past_key_values=cache, position_ids=(base + t).expand(4, n, 1),
                        mm_token_type_ids=torch.zeros_like(input_ids), attention_mask=masks, use_cache=True,
                        logits_to_keep=1, return_dict=True)
            ids = None
            if len(processors):
                ids = torch.cat([prompt_ids.expand(n, -1),
                                 torch.tensor([tokens[i] for i in active], dtype=torch.long, device=device)], dim=1)
            for i, token in zip(active, pick(ids, out.logits[:, -1, :])):
                tokens[i].append(token)
            active = [i for i in active if tokens[i][-1] not in eos and len(tokens[i]) < max_new_tokens]
    return tokens


__all__ = ["RowCaches", "decode_rows", "greedy_setup", "rows_exact"]
