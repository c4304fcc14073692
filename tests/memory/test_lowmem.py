"""Exact peak reductions (pipeline.memory.lowmem): same kept sets and tokens, lower measured peak."""

from __future__ import annotations

import pytest
import torch

import starkv
from pipeline.memory.accounting import track_step
from pipeline.memory.lowmem import chunked_mlp, vision_per_image
from tests.helpers_model import Recording, tiny_with_prompt


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return tiny_with_prompt(tiny_model_dir)


def _run(tiny, name: str, chunk: int):
    loaded, inputs, layout = tiny
    rec = Recording(inner=starkv.build(name))
    loaded.model.model.rope_deltas = None
    with torch.inference_mode(), starkv.attach(loaded.model, rec, 20, layout), chunked_mlp(loaded.model, chunk), \
            track_step(loaded.model, inputs) as account:
        out = loaded.model.generate(**inputs, max_new_tokens=6, do_sample=False, return_dict_in_generate=True,
                                    output_logits=True)
    return out, rec.kept, account


@pytest.mark.parametrize("name", ["snapkv", "starkv"])
def test_chunked_mlp_keeps_the_same_tokens_and_kept_sets(tiny, name):
    ref, kept_ref, acc_ref = _run(tiny, name, 0)
    for chunk in (32, 100):
        out, kept, acc = _run(tiny, name, chunk)
        assert torch.equal(out.sequences, ref.sequences)
        assert kept.keys() == kept_ref.keys() and all(torch.equal(kept[i], kept_ref[i]) for i in kept_ref)
        for a, b in zip(out.logits, ref.logits):  # slices of a matmul round alike up to the last bits
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
        # the MLP intermediates exist for one slice at a time: the peak inside the MLP drops
        assert acc.prefill.breakdown.get("mlp", 0) <= acc_ref.prefill.breakdown.get("mlp", 0)
        assert acc.prefill.bytes <= acc_ref.prefill.bytes


def test_chunked_mlp_lowers_the_mlp_peak_and_restores_the_model(tiny):
    loaded, inputs, layout = tiny
    # a bare prefill without the vision tower's peak in the way: the decoder on embeddings
    embeds = torch.randn(1, 700, loaded.model.config.text_config.hidden_size)
    lm = loaded.model.model.language_model

    def peak(chunk):
        with torch.inference_mode(), chunked_mlp(loaded.model, chunk), track_step(lm, {"x": embeds}) as account:
            lm(inputs_embeds=embeds, use_cache=False)
        return account.prefill

    whole, sliced = peak(0), peak(64)
    inter = loaded.model.config.text_config.intermediate_size
    hidden = loaded.model.config.text_config.hidden_size
    # whole: gate, up and their product for all 700 tokens (fp32) are live at the peak
    assert whole.part == "mlp" and whole.breakdown["mlp"] == 3 * 700 * inter * 4
    # sliced: at most one slice's intermediates plus the preallocated output; the peak moves elsewhere
    assert sliced.bytes < whole.bytes and sliced.breakdown["mlp"] <= 3 * 64 * inter * 4 + 700 * hidden * 4
    assert all("forward" not in vars(layer.mlp) for layer in lm.layers)


def test_bad_chunk_size_is_rejected(tiny):
    with pytest.raises(ValueError, match="chunk_tokens"), chunked_mlp(tiny[0].model, -1):
        pass


def test_vision_per_image_gives_the_same_features_tokens_and_kept_sets(tiny):
    loaded, inputs, layout = tiny
    model = loaded.model
    with torch.inference_mode():
        whole = model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])
        with vision_per_image(model):
            split = model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])
    assert all(torch.equal(a, b) for a, b in zip(whole.pooler_output, split.pooler_output))
    assert split.last_hidden_state is None  # not read by the language model; not kept for the step

    runs = {}
    for on in (False, True):
        rec = Recording(inner=starkv.build("starkv"))
        model.model.rope_deltas = None
        with torch.inference_mode(), starkv.attach(model, rec, 20, layout), vision_per_image(model, on), \
                track_step(model, inputs) as account:
            out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
        runs[on] = out, rec.kept, account
    (ref, kept_ref, acc_ref), (out, kept, acc) = runs[False], runs[True]
    assert torch.equal(out, ref) and all(torch.equal(kept[i], kept_ref[i]) for i in kept_ref)
    # three screenshots: the vision tower's activations exist for one at a time
    assert acc_ref.prefill.part == "vision" and acc.prefill.bytes < acc_ref.prefill.bytes
    assert "forward" not in vars(model.model.visual)


def test_pixels_in_model_dtype_is_the_cast_the_vision_tower_does(tiny):
    from pipeline.memory.lowmem import pixels_in_model_dtype

    loaded, inputs, _ = tiny
    assert pixels_in_model_dtype(inputs, loaded.model) is inputs  # float32 model: nothing to do
    half = torch.nn.Linear(2, 2).to(torch.bfloat16)
    fake_model = type("M", (), {"model": type("I", (), {"visual": half})()})()
    half.dtype = torch.bfloat16
    cast = pixels_in_model_dtype(inputs, fake_model)
    assert cast["pixel_values"].dtype == torch.bfloat16
    assert torch.equal(cast["pixel_values"], inputs["pixel_values"].type(torch.bfloat16))
    assert cast["input_ids"] is inputs["input_ids"]
