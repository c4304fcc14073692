"""FastV: hand-worked kept sets, and through the tiny model that later layers really compute on fewer tokens.

The golden case (10 tokens, two KV heads of one query head each, head_dim 2, window W = 2): tokens 2..6 are
one screenshot (5 image tokens), the rest text; the window is tokens 8, 9. The last query is (1, 0) in one
head and (2, 0) in the other, every key is (x, 0): each head's softmax is increasing in x, so is their
mean, and the tokens rank by x (no softmax needs working out):

    token  0    1     2    3    4    5    6    7     8  9
    x      0.0  −1.0  0.3  2.0  0.1  1.0  0.5  −0.5  0  0
    kind   txt  txt   img  img  img  img  img  txt   window

Image tokens by x: 3, 5, 6, 2, 4. Text past tokens by x: 0, 7, 1.
"""

from __future__ import annotations

import pytest
import torch

import starkv
from baselines.multimodal.fastv import FastV
from pipeline.config import ConfigError, parse_config
from starkv.budget import plan_selection
from starkv.context import LayerContext
from starkv.layout import PromptLayout
from tests.helpers_model import prompt_inputs

X = [0.0, -1.0, 0.3, 2.0, 0.1, 1.0, 0.5, -0.5, 0.0, 0.0]


def _ctx(cap: int) -> LayerContext:
    keys = torch.zeros(1, 2, 10, 2)
    keys[..., 0] = torch.tensor(X)
    queries = torch.tensor([[1.0, 0.0], [2.0, 0.0]]).view(1, 2, 1, 2)
    return LayerContext(layer_idx=1, num_layers=3, queries=queries, keys=keys, values=keys.clone(),
                        hidden_states=torch.zeros(1, 10, 4), layout=PromptLayout(((2, 7),), 10), budget=50.0,
                        plan=plan_selection(10, cap, 2))


@pytest.mark.parametrize(("ratio", "cap", "expected"), [
    # budget alone: C = 6 -> window 2 + 4 past: the 3 text tokens, then the best image token (3)
    (None, 6, [0, 1, 3, 7, 8, 9]),
    # C = 4 -> 2 past: below the text length, the lowest text token (1) goes too
    (None, 4, [0, 7, 8, 9]),
    # the paper's R = 50 % at budget 100: floor(0.5 * 5) = 2 image tokens leave (the two lowest: 2 and 4)
    (0.5, 10, [0, 1, 3, 5, 6, 7, 8, 9]),
    # R = 50 % with C = 6: min(6, 10 - 2) = 6 tokens, as the budget alone
    (0.5, 6, [0, 1, 3, 7, 8, 9]),
    # R = 100 %: every image token leaves
    (1.0, 10, [0, 1, 7, 8, 9]),
    # R = 0 at budget 100: nothing leaves
    (0.0, 10, list(range(10))),
])
def test_kept_set_by_hand(ratio, cap, expected):
    kept = FastV(window_size=2, ratio=ratio).select(_ctx(cap))
    assert kept.tolist() == [expected, expected]  # one token set for both KV heads


def test_bad_fields_are_refused():
    with pytest.raises(ValueError, match="layer"):
        starkv.build("fastv", layer=0)
    with pytest.raises(ValueError, match="ratio"):
        starkv.build("fastv", ratio=1.5)


def test_pruning_is_a_trait():
    assert starkv.build("fastv").traits()["pruning"] and starkv.build("fastv").family == "pruning"
    assert [n for n in starkv.available() if starkv.build(n).pruning] == ["fastv"]


def test_chunked_prefill_is_refused_before_any_work():
    data = {"name": "t", "model": {"path": "tiny", "prefill_mode": "chunked_compress"},
            "benchmark": {"name": "synthetic", "options": {"num_episodes": 1}},
            "compressors": ["snapkv", {"name": "fastv", "label": "fastv-k3", "params": {"layer": 3}}],
            "budgets": [20]}
    with pytest.raises(ConfigError, match=r"^compressors\[1\] \(fastv-k3\).*model\.prefill_mode: chunked_compress"):
        parse_config(data)
    data["model"]["prefill_mode"] = "full"
    parse_config(data)


class Seen:
    """Tokens each decoder layer's MLP computes on at prefill, the kept sets, the decode positions."""

    def __init__(self, model, comp) -> None:
        self.model, self.mlp, self.kept, self.positions, self.handles = model, {}, [], [], []
        select = comp.select
        comp.select = lambda ctx: self.kept.append(select(ctx)) or self.kept[-1]

    def __enter__(self):
        layers = self.model.model.language_model.layers
        for i, layer in enumerate(layers):
            def count(module, args, i=i):
                if args[0].shape[1] > 1:
                    self.mlp[i] = args[0].shape[1]
            self.handles.append(layer.mlp.register_forward_pre_hook(count))

        def positions(module, args, kwargs):
            if kwargs["inputs_embeds"].shape[1] == 1:
                self.positions.append(kwargs["position_ids"].clone())
        self.handles.append(self.model.model.language_model.register_forward_pre_hook(positions, with_kwargs=True))
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from pipeline.models.loader import ModelSpec, load_model

    loaded = load_model(ModelSpec(path=str(tiny_model_dir), device="cpu", dtype="float32"))
    inputs, layout = prompt_inputs(loaded.processor, num_images=2)
    with torch.inference_mode(), Seen(loaded.model, starkv.build("full")) as seen:
        loaded.model.model.rope_deltas = None
        ref = loaded.model.generate(**inputs, max_new_tokens=4, do_sample=False, return_dict_in_generate=True,
                                    output_logits=True)
    ref.decode_positions = seen.positions
    return loaded, inputs, layout, ref


def _run(loaded, inputs, layout, comp, budget, tokens=4, meter=None):
    with torch.inference_mode(), Seen(loaded.model, comp) as seen, starkv.attach(loaded.model, comp, budget,
                                                                                  layout, flop_meter=meter) as att:
        loaded.model.model.rope_deltas = None
        out = loaded.model.generate(**inputs, max_new_tokens=tokens, do_sample=False, return_dict_in_generate=True,
                                    output_logits=True)
    return out, att, seen


@pytest.mark.parametrize("k", [1, 2, 3])
def test_later_layers_run_on_fewer_tokens(tiny, k):
    loaded, inputs, layout, ref = tiny
    L = inputs["input_ids"].shape[1]
    cap = int(L * 50 / 100)  # more than the text tokens (53 of 251)
    out, att, seen = _run(loaded, inputs, layout, starkv.build("fastv", layer=k), 50)
    # layers 1..K (0-based 0..K-1) compute on the whole prompt, the later ones on the C kept tokens
    assert [seen.mlp[i] for i in range(3)] == [L] * k + [cap] * (3 - k)
    assert len(seen.kept) == 1  # one selection, at layer K
    kept = seen.kept[0]
    assert kept.shape == (loaded.num_kv_heads, cap) and torch.equal(kept, kept[:1].expand_as(kept))
    assert torch.equal(kept[0, -8:], torch.arange(L - 8, L))  # the window
    image = torch.zeros(L, dtype=torch.bool)
    for start, end in layout.image_spans:
        image[start:end] = True
    dropped = torch.tensor(sorted(set(range(L)) - set(kept[0].tolist())))
    assert image.sum() >= L - cap and image[dropped].all()  # enough image tokens: only image tokens leave
    # every layer caches the kept tokens; the layers that saw the whole prompt hold exactly the full run's K/V
    assert [s.kept_length for s in att.stats] == [cap] * 3 and all(s.original_length == L for s in att.stats)
    assert att.kv_bytes == pytest.approx(att.kv_bytes_full * cap / L, rel=1e-9)
    assert [layer.keys.shape[2] for layer in out.past_key_values.layers] == [cap + 3] * 3
    for i in range(k):
        full = ref.past_key_values.layers[i]
        torch.testing.assert_close(out.past_key_values.layers[i].keys[:, :, :cap], full.keys[:, :, kept[0]],
                                   rtol=0, atol=0)
    # decoding continues at the full prompt's positions, whatever the cache length
    assert len(seen.positions) == len(ref.decode_positions) == 3
    for a, b in zip(seen.positions, ref.decode_positions):
        assert torch.equal(a, b)


@pytest.mark.parametrize("params", [{}, {"ratio": 0.0}])
def test_budget_100_and_ratio_0_change_nothing(tiny, params):
    loaded, inputs, layout, ref = tiny
    L = inputs["input_ids"].shape[1]
    out, att, seen = _run(loaded, inputs, layout, starkv.build("fastv", **params), 100)
    assert [seen.mlp[i] for i in range(3)] == [L] * 3
    assert torch.equal(out.sequences, ref.sequences)
    for a, b in zip(out.logits, ref.logits):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_ratio_prunes_at_budget_100(tiny):
    loaded, inputs, layout, _ = tiny
    L = inputs["input_ids"].shape[1]
    n_img = sum(end - start for start, end in layout.image_spans)
    _, att, seen = _run(loaded, inputs, layout, starkv.build("fastv", ratio=0.5), 100, tokens=1)
    assert [seen.mlp[i] for i in range(3)] == [L, L, L - n_img // 2]
    assert [s.kept_length for s in att.stats] == [L - n_img // 2] * 3


def test_pruned_prefill_matches_a_layer_by_layer_forward(tiny):
    """Oracle: run the decoder layers by hand, slicing hidden states and cos/sin between layers 2 and 3."""
    loaded, inputs, layout, _ = tiny
    model = loaded.model
    text = model.model.language_model
    captured = {}

    def grab(module, args, kwargs):
        captured.setdefault("hidden", args[0])
        captured.setdefault("pe", kwargs["position_embeddings"])

    handle = text.layers[0].register_forward_pre_hook(grab, with_kwargs=True)
    with torch.inference_mode():
        model.model.rope_deltas = None
        model.generate(**inputs, max_new_tokens=1, do_sample=False)
    handle.remove()
    out, _, seen = _run(loaded, inputs, layout, starkv.build("fastv"), 20, tokens=1)
    kept = seen.kept[0][0]
    with torch.inference_mode():
        h, (cos, sin) = captured["hidden"], captured["pe"]
        for layer in text.layers[:2]:
            h = layer(h, attention_mask=None, position_embeddings=(cos, sin))
        h = text.layers[2](h[:, kept], attention_mask=None, position_embeddings=(cos[:, kept], sin[:, kept]))
        logits = model.lm_head(text.norm(h))[:, -1]
    torch.testing.assert_close(out.logits[0], logits, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def eager(tiny_model_dir):
    """The tiny model with eager attention (a 4-D attention mask handed to every decoder layer)."""
    from pipeline.models.loader import ModelSpec, load_model

    return load_model(ModelSpec(path=str(tiny_model_dir), device="cpu", dtype="float32", attn_implementation="eager"))


def test_eager_attention_slices_the_mask(tiny, eager):
    """Eager attention gets a 4-D mask: sliced to the kept tokens it gives what sdpa's causal attention does."""
    loaded, inputs, layout, _ = tiny
    a, att_a, _ = _run(loaded, inputs, layout, starkv.build("fastv"), 20)
    b, att_b, _ = _run(eager, inputs, layout, starkv.build("fastv"), 20)
    assert [s.kept_length for s in att_a.stats] == [s.kept_length for s in att_b.stats]
    assert torch.equal(a.sequences, b.sequences)
    for x, y in zip(a.logits, b.logits):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-4)


def _shared(loaded, inputs, layout, comp, budget, tokens=4, others=("snapkv",)):
    """FastV from a shared prefill recorded with other methods: the layers up to K are the record's."""
    from starkv.flops import FlopMeter
    from starkv.shared import compress_record, record_prefill, replay_prefill

    comps = [comp, *(starkv.build(n) for n in others)]
    with torch.inference_mode():
        with FlopMeter() as meter, record_prefill(loaded.model, comps, layout, flop_meter=meter) as record:
            loaded.model.model.rope_deltas = None
            loaded.model.generate(**inputs, max_new_tokens=1, do_sample=False)
        with FlopMeter() as meter:
            att, holders = compress_record(loaded.model, record, comp, budget, flop_meter=meter)
        replay_inputs = {k: v for k, v in inputs.items() if k != "pixel_values"}
        own = att.resumed.output if att.resumed is not None else None
        loaded.model.model.rope_deltas = None
        with replay_prefill(loaded.model, record, holders, own):
            out = loaded.model.generate(**replay_inputs, max_new_tokens=tokens, do_sample=False,
                                        return_dict_in_generate=True, output_logits=True)
    return out, att, record


@pytest.mark.parametrize(("k", "budget", "ratio"), [(1, 20, None), (2, 50, None), (2, 100, 0.5), (3, 20, None),
                                                     (2, 100, None)])
def test_shared_prefill_up_to_layer_k_equals_the_own_prefill(tiny, k, budget, ratio):
    """The record serves layers 1..K; the unit's own later layers give exactly its per-unit cache, first-token
    logits, generated tokens and prefill flops (the shared prefill's flops up to layer K + 1 plus its own)."""
    from starkv.flops import FlopMeter

    loaded, inputs, layout, _ = tiny
    comp = starkv.build("fastv", layer=k, ratio=ratio)
    alone, att_alone, _ = _run(loaded, inputs, layout, comp, budget)
    shared, att, record = _shared(loaded, inputs, layout, starkv.build("fastv", layer=k, ratio=ratio), budget)
    assert torch.equal(alone.sequences, shared.sequences)
    for a, b in zip(alone.logits, shared.logits):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert [(s.kept_length, s.bytes_before, s.bytes_after) for s in att_alone.stats] == \
        [(s.kept_length, s.bytes_before, s.bytes_after) for s in att.stats]
    pruned = att_alone.stats[0].kept_length < att_alone.stats[0].original_length and k < 3
    assert (att.resumed is not None) == pruned  # nothing dropped, or nothing after K: the record's layers
    assert sorted(record.layer_inputs) == ([k] if k < 3 else [])
    if pruned:
        # per unit: a one-token generate is the prefill alone; its count less the selection inside it
        with FlopMeter() as m1:
            _, att1, _ = _run(loaded, inputs, layout, starkv.build("fastv", layer=k, ratio=ratio), budget, tokens=1,
                              meter=m1)
        assert att.resumed.prefill_flops == m1.total - att1.compress_flops
        assert 0 < att.resumed.flops < att.resumed.flops_before
        assert att.compress_flops == att1.compress_flops


def test_shared_prefill_records_layer_inputs_only_for_pruning_units(tiny):
    loaded, inputs, layout, _ = tiny
    from starkv.shared import record_prefill

    with torch.inference_mode(), record_prefill(loaded.model, [starkv.build("snapkv")], layout) as record:
        loaded.model.model.rope_deltas = None
        loaded.model.generate(**inputs, max_new_tokens=1, do_sample=False)
    assert record.layer_inputs == {}
    with torch.inference_mode(), record_prefill(loaded.model, [starkv.build("fastv", layer=1),
                                                               starkv.build("fastv", layer=2)], layout) as record:
        loaded.model.model.rope_deltas = None
        loaded.model.generate(**inputs, max_new_tokens=1, do_sample=False)
    L = inputs["input_ids"].shape[1]
    assert sorted(record.layer_inputs) == [1, 2]
    assert all(r.hidden.shape[1] == L for r in record.layer_inputs.values())
    held = {id(t) for t in record.tensors()}
    assert all(id(t) in held for r in record.layer_inputs.values() for t in r.tensors())


def test_layer_beyond_the_model_is_refused(tiny):
    from starkv.shared import PrefillRecord, compress_record

    loaded, _, layout, _ = tiny
    record = PrefillRecord(layout=layout, layers=[None] * 3)
    with pytest.raises(ValueError, match="beyond"):
        compress_record(loaded.model, record, starkv.build("fastv", layer=4), 20)
    with pytest.raises(ValueError, match="beyond"):
        with starkv.attach(loaded.model, starkv.build("fastv", layer=4), 20, layout):
            pass


def test_kv_quant_stores_every_layer_quantized(tiny):
    """FastV at 50 % then int4 (G = R = 32): the layers after K, whose cache was computed on the kept tokens,
    are stored as KIVI too. C = int(L/2) per layer of H_kv = 2 heads, d = 32, fp32; keys quantize
    n_k = C − C mod 32 tokens, values n_v = C − 32; bytes per head and layer:
    n_k·32/2 + 2·(n_k/32)·32·4 + n_v·32/2 + 2·n_v·1·4 + (2C − n_k − n_v)·32·4. Alone and from a shared prefill."""
    from starkv.storage import KVQuant, KVStorage
    from starkv.storage.layers import KIVILayer

    loaded, inputs, layout, _ = tiny
    c = int(inputs["input_ids"].shape[1] * 50 / 100)
    n_k, n_v = c - c % 32, c - 32
    per_head = n_k * 16 + 2 * (n_k // 32) * 32 * 4 + n_v * 16 + 2 * n_v * 4 + (2 * c - n_k - n_v) * 32 * 4
    storage = KVStorage(quant=KVQuant(bits=4, residual_length=32))
    out, att, _ = _run(loaded, inputs, layout, starkv.build("fastv").stored_as(storage), 50)
    assert att.kv_bytes == 3 * 2 * per_head and att.kept_tokens == c
    assert all(type(layer) is KIVILayer and layer.get_seq_length() == c + 3 for layer in out.past_key_values.layers)
    shared, att_shared, _ = _shared(loaded, inputs, layout, starkv.build("fastv").stored_as(storage), 50)
    assert att_shared.kv_bytes == att.kv_bytes and torch.equal(shared.sequences, out.sequences)
    assert all(type(layer) is KIVILayer for layer in shared.past_key_values.layers)


def test_shared_prefill_slices_the_eager_mask_as_its_own_run(tiny, eager):
    """Eager attention: the 4-D mask the record kept for layer K + 1 is sliced like the pruning hook's."""
    _, inputs, layout, _ = tiny
    alone, att_alone, _ = _run(eager, inputs, layout, starkv.build("fastv"), 20)
    shared, att, record = _shared(eager, inputs, layout, starkv.build("fastv"), 20)
    mask = record.layer_inputs[2].kwargs.get("attention_mask")
    assert isinstance(mask, torch.Tensor) and mask.ndim == 4  # eager hands the layers a 4-D mask
    assert torch.equal(alone.sequences, shared.sequences)
    for a, b in zip(alone.logits, shared.logits):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert [s.kept_length for s in att.stats] == [s.kept_length for s in att_alone.stats]
