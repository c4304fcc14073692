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


def test_pruning_methods_never_share_a_prefill():
    for name in starkv.available():
        comp = starkv.build(name)
        assert not (comp.pruning and comp.shares_prefill), name
    assert starkv.build("fastv").traits()["pruning"] and starkv.build("fastv").family == "pruning"


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


def _run(loaded, inputs, layout, comp, budget, tokens=4):
    with torch.inference_mode(), Seen(loaded.model, comp) as seen, starkv.attach(loaded.model, comp, budget,
                                                                                  layout) as att:
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


def test_eager_attention_slices_the_mask(tiny, tiny_model_dir):
    """Eager attention gets a 4-D mask: sliced to the kept tokens it gives what sdpa's causal attention does."""
    from pipeline.models.loader import ModelSpec, load_model

    loaded, inputs, layout, _ = tiny
    eager = load_model(ModelSpec(path=str(tiny_model_dir), device="cpu", dtype="float32",
                                 attn_implementation="eager"))
    a, att_a, _ = _run(loaded, inputs, layout, starkv.build("fastv"), 20)
    b, att_b, _ = _run(eager, inputs, layout, starkv.build("fastv"), 20)
    assert [s.kept_length for s in att_a.stats] == [s.kept_length for s in att_b.stats]
    assert torch.equal(a.sequences, b.sequences)
    for x, y in zip(a.logits, b.logits):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-4)


def test_layer_beyond_the_model_is_refused(tiny):
    from starkv.shared import PrefillRecord, compress_record

    loaded, _, layout, _ = tiny
    with pytest.raises(ValueError, match="shared"):
        compress_record(loaded.model, PrefillRecord(layout=layout), starkv.build("fastv"), 20)
    with pytest.raises(ValueError, match="beyond"):
        with starkv.attach(loaded.model, starkv.build("fastv", layer=4), 20, layout):
            pass
