"""The opt-in chunked, compressing prefill (pipeline.step.chunked_prefill): exact when nothing is dropped, the
cache held to the prefix's budget after every chunk, and labelled as an approximation wherever it shows."""

from __future__ import annotations

import json

import pytest
import torch

import starkv
from pipeline.step.chunked_prefill import ChunkTrace, chunk_bounds, chunked_generate
from starkv.budget import capacity
from tests.helpers_model import Recording, prompt_inputs, tiny_with_prompt

MAX_NEW = 8


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    loaded, inputs, layout = tiny_with_prompt(tiny_model_dir)
    return loaded, dict(inputs), layout


def _normal(loaded, inputs, layout, compressor, budget):
    loaded.model.model.rope_deltas = None
    with torch.inference_mode(), starkv.attach(loaded.model, compressor, budget, layout) as att:
        out = loaded.model.generate(**inputs, max_new_tokens=MAX_NEW, do_sample=False)
    return out, att


def _chunked(loaded, inputs, layout, compressor, budget, eos=None):
    trace: list[ChunkTrace] = []
    with torch.inference_mode(), starkv.attach(loaded.model, compressor, budget, layout) as att:
        out = chunked_generate(loaded.model, inputs, att, layout, MAX_NEW, eos_token_id=eos, trace=trace)
    return out, att, trace


def test_chunks_end_after_each_history_screenshot(tiny):
    _, inputs, layout = tiny
    bounds = chunk_bounds(layout)
    assert len(bounds) == layout.num_images and bounds[-1] == layout.prompt_length
    vision_end = tiny[0].processor.tokenizer.convert_tokens_to_ids("<|vision_end|>")
    ids = inputs["input_ids"][0]
    assert all(int(ids[b - 1]) == vision_end for b in bounds[:-1])  # each cut right after a <|vision_end|>


@pytest.mark.parametrize("name", ["snapkv", "starkv", "pyramidkv", "vlcache"])
def test_nothing_dropped_gives_the_normal_tokens(tiny, name):
    loaded, inputs, layout = tiny
    ref, att_ref = _normal(loaded, inputs, layout, starkv.build(name), 100)
    out, att, trace = _chunked(loaded, inputs, layout, starkv.build(name), 100)
    assert torch.equal(out, ref)  # same prompt, same M-RoPE positions, same masks: same greedy tokens
    assert [t.prefix_length for t in trace] == chunk_bounds(layout)
    assert all(n == t.prefix_length for t in trace for n in t.cache_lengths)
    assert att.kv_bytes == att.kv_bytes_full == att_ref.kv_bytes_full


def test_eager_attention_masks_fit_the_compressed_cache(tiny_model_dir):
    """Eager attention uses the explicit causal mask: with a cut cache it must span kept tokens + chunk."""
    from pipeline.models.loader import ModelSpec, load_model

    loaded = load_model(ModelSpec(path=str(tiny_model_dir), device="cpu", dtype="float32",
                                  attn_implementation="eager"))
    inputs, layout = prompt_inputs(loaded.processor, num_images=3, size=(448, 336))
    inputs = dict(inputs)
    ref, _ = _normal(loaded, inputs, layout, starkv.build("snapkv"), 100)
    out, _, _ = _chunked(loaded, inputs, layout, starkv.build("snapkv"), 100)
    assert torch.equal(out, ref)
    out, att, trace = _chunked(loaded, inputs, layout, starkv.build("snapkv"), 20, eos=[])
    assert out.shape[1] == layout.prompt_length + MAX_NEW and trace[0].cache_lengths[0] == capacity(trace[0].prefix_length, 20)


def test_a_chunk_on_a_cut_cache_equals_its_tokens_fed_one_by_one(tiny):
    """Mask and positions of a chunk over a compressed cache: the same logits as one token at a time."""
    from starkv import PromptLayout

    loaded, inputs, layout = tiny
    model = loaded.model
    cut, images = chunk_bounds(layout)[-2], layout.num_images - 1
    logits = []
    hook = model.lm_head.register_forward_hook(lambda m, a, out: logits.append(out[:, -1].clone()))
    try:  # the whole prompt: its first lm_head call is the last chunk's, over the cut history
        _chunked(loaded, inputs, layout, starkv.build("snapkv"), 20, eos=[])
        rows = int(inputs["image_grid_thw"][:images].prod(-1).sum())
        short = {"input_ids": inputs["input_ids"][:, :cut], "attention_mask": inputs["attention_mask"][:, :cut],
                 "mm_token_type_ids": inputs["mm_token_type_ids"][:, :cut],
                 "pixel_values": inputs["pixel_values"][:rows], "image_grid_thw": inputs["image_grid_thw"][:images]}
        caches = []
        pre = model.register_forward_pre_hook(lambda m, a, kw: caches.append(kw["past_key_values"]), with_kwargs=True)
        short_layout = PromptLayout(layout.image_spans[:-1], cut)
        try:  # the history alone: the same cuts, so the same cache the last chunk started from
            with torch.inference_mode(), starkv.attach(model, starkv.build("snapkv"), 20, short_layout) as att:
                chunked_generate(model, short, att, short_layout, 1)  # one token: no decode step touches the cache
        finally:
            pre.remove()
        cache = caches[0]
        inner = model.model
        ids = inputs["input_ids"]
        positions, _ = inner.get_rope_index(ids, mm_token_type_ids=inputs["mm_token_type_ids"],
                                            image_grid_thw=inputs["image_grid_thw"])
        with torch.inference_mode():
            embeds = inner.get_input_embeddings()(ids).clone()
            feats = torch.cat(inner.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"]).pooler_output)
            embeds[ids == model.config.image_token_id] = feats
            for t in range(cut, ids.shape[1]):  # no compressor attached: one query at a time sees the whole cache
                length = cache.layers[0].keys.shape[-2]
                model(inputs_embeds=embeds[:, t:t + 1], position_ids=positions[:, :, t:t + 1], past_key_values=cache,
                      cache_position=torch.tensor([length]), use_cache=True, logits_to_keep=1)
    finally:
        hook.remove()
    torch.testing.assert_close(logits[-1], logits[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["snapkv", "starkv", "pyramidkv"])
def test_lossy_budget_holds_the_cache_to_the_prefix_budget(tiny, name):
    loaded, inputs, layout = tiny
    length = layout.prompt_length
    out, att, trace = _chunked(loaded, inputs, layout, starkv.build(name), 20, eos=[])
    assert out.shape[1] == length + MAX_NEW  # no EOS: exactly MAX_NEW greedy tokens
    assert len(trace) == layout.num_images
    kept, prefix = 0, 0
    for t in trace:
        assert kept + t.prefix_length - prefix < length  # the cache never held the whole prompt
        kept, prefix = max(t.cache_lengths), t.prefix_length
    for t in trace[:-1]:  # between chunks every layer holds the uniform capacity of the prompt so far
        assert len(t.cache_lengths) == len(starkv.hook.decoder_layers(loaded.model))
        assert all(n == capacity(t.prefix_length, 20) for n in t.cache_lengths), t
    # the last chunk ends with the compressor's own capacities for the whole prompt, as a normal prefill does
    _, att_ref = _normal(loaded, inputs, layout, starkv.build(name), 20)
    assert trace[-1].cache_lengths == [s.kept_length for s in att_ref.stats]
    assert att.kv_bytes == att_ref.kv_bytes and att.kv_bytes_full == att_ref.kv_bytes_full
    assert all(s.original_length == length for s in att.stats)


def test_cut_sees_chunk_queries_and_a_cache_layout(tiny):
    """Each cut is a real compressor call on the cache: kept tokens then the chunk, the chunk's screenshot last."""
    loaded, inputs, layout = tiny
    seen = []

    class Spy(Recording):
        def select(self, ctx):
            seen.append((ctx.layer_idx, ctx.length, ctx.layout, ctx.queries.shape[-2], ctx.hidden_states.shape[1]))
            return super().select(ctx)

    _chunked(loaded, inputs, layout, Spy(inner=starkv.build("snapkv")), 20)
    bounds = chunk_bounds(layout)
    layer0 = [s for s in seen if s[0] == 0]
    assert len(layer0) == len(bounds)
    kept = 0
    for (_, length, cache_layout, rows, hidden), start, end in zip(layer0, [0, *bounds[:-1]], bounds):
        assert length == kept + end - start == cache_layout.prompt_length == hidden
        assert cache_layout.num_images == 1 and rows == 8
        s, e = layout.image_spans[bounds.index(end)]
        assert cache_layout.current_image == (s - start + kept, e - start + kept)
        kept = capacity(end, 20)


def test_runner_rows_and_params_say_approximation(tiny_model_dir, tmp_path):
    from pipeline.benchmarks.synthetic.benchmark import SyntheticBenchmark, generate_synthetic
    from pipeline.config import AgentConfig
    from pipeline.metrics.rows import row_schema, rows_to_table
    from pipeline.metrics.units import Unit
    from pipeline.models.loader import ModelSpec, load_model
    from pipeline.step.engine import EpisodeRunner
    from pipeline.tracking.view import job_params

    root = generate_synthetic(tmp_path / "syn", num_episodes=1, min_steps=2, max_steps=2, seed=1,
                              resolutions=((320, 240),))
    bench = SyntheticBenchmark(str(root))
    loaded = load_model(ModelSpec(path=str(tiny_model_dir), device="cpu", dtype="float32"))
    episode = bench.load()[0]
    rows = {}
    for mode in ("full", "chunked_compress"):
        runner = EpisodeRunner(loaded, bench, AgentConfig(image_slots=5), max_new_tokens=2, prefill_mode=mode)
        rows[mode] = runner.run(episode, starkv.build("snapkv"), Unit("r", "snapkv", 20.0, "tiny"))
        assert all(r["error"] is None for r in rows[mode])
        assert rows_to_table(rows[mode]).schema == row_schema()
    assert [r["mode"] for r in rows["full"]] == ["exact", "exact"]
    assert [r["mode"] for r in rows["chunked_compress"]] == ["approx_chunked", "approx_chunked"]
    # one screenshot: one chunk, the normal prefill; two: the history is cut before the current screenshot
    assert rows["chunked_compress"][0]["raw_output"] == rows["full"][0]["raw_output"]
    assert rows["chunked_compress"][1]["kv_bytes"] == rows["full"][1]["kv_bytes"]
    job = {"name": "j", "model": {"path": "tiny", "prefill_mode": "chunked_compress"}}
    assert job_params(job)["mode"] == "approx_chunked"
    assert job_params({"name": "j", "model": {"path": "tiny"}})["mode"] == "exact"


def test_bad_mode_names_the_option():
    from pipeline.cli import main
    from pipeline.config import ConfigError, PrefillMode, parse_config

    with pytest.raises(ValueError, match="model.prefill_mode"):
        PrefillMode.parse("chunky")
    with pytest.raises(ConfigError, match="model.prefill_mode"):
        parse_config({"name": "j", "model": {"path": "tiny", "prefill_mode": "chunky"},
                      "compressors": [{"name": "full"}], "budgets": [20]})
    assert main(["bench", "memory", "--model", "tiny", "--prefill", "chunky"]) == 2


def test_bench_memory_rows_label_and_lower_the_peak(capsys):
    from pipeline.cli import main

    assert main(["bench", "memory", "--model", "tiny", "--screenshots", "3", "--resolution", "448x336",
                 "--budgets", "20", "--compressors", "full,snapkv", "--decode-steps", "2", "--prefill", "full,chunked",
                 "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    by = {(r["compressor"], r["mode"]): r for r in rows}
    assert set(by) == {(c, m) for c in ("full", "snapkv") for m in ("exact", "approx_chunked")}
    assert by[("snapkv", "approx_chunked")]["prefill_mode"] == "chunked_compress"
    assert by[("snapkv", "approx_chunked")]["kv_bytes"] == by[("snapkv", "exact")]["kv_bytes"]
    # the chunks are shorter than the prompt and the cache is cut between them: a lower prefill peak
    assert by[("snapkv", "approx_chunked")]["peak_prefill_bytes"] < by[("snapkv", "exact")]["peak_prefill_bytes"]
    assert all(r["unknown_reads"] == 0 for r in rows)
