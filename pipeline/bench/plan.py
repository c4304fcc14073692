"""``starkv-eval plan``: what a job will need on a GPU, worked out before renting one.

The preflight reads the job like ``starkv-eval run`` (and collects every problem instead of stopping at
the first), finds the model and the data, counts the episodes and steps the run would evaluate, reads the
screenshots' sizes from their headers only and builds every step's prompt text exactly as the step engine
would (:func:`pipeline.step.prompt.step_messages`), so each step's prompt length is known without decoding
an image. The longest prompt is then simulated on fake tensors per unit with ``bench memory``'s machinery
(:mod:`pipeline.bench.memory`), and the token counts give GPU-hours from a stated throughput table
(``throughput.yaml`` beside this module).
"""

from __future__ import annotations

import ast
import copy
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

GIB = 1024 ** 3
THROUGHPUT_FILE = Path(__file__).with_name("throughput.yaml")
#: ``--gpu-memory`` units: decimal (kB, MB, GB, TB) and binary (KiB, MiB, GiB, TiB), case-insensitive
MEMORY_UNITS = {"b": 1, "kb": 1000, "mb": 1000 ** 2, "gb": 1000 ** 3, "tb": 1000 ** 4,
                "kib": 1024, "mib": 1024 ** 2, "gib": 1024 ** 3, "tib": 1024 ** 4}
#: decode steps simulated when the job's max_new_tokens is larger (the rest is added as KV growth)
DEFAULT_DECODE_STEPS = 16
#: fewest decode steps to simulate: the growth per later step is taken from the second half of them (the
#: first decode step also holds the prompt's last logits, so it does not grow like the others)
MIN_DECODE_STEPS = 4
#: configuration sections whose fields a bad-field message names as ``section.field``
_SECTIONS = ("model", "benchmark", "agent", "ray", "tracking")
#: the fields of the vendored UI-TARS-1.5-7B config that decide its memory and speed
_ARCH_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads")


class PlanProblems(Exception):
    """Every bad or unreachable input of a plan, reported together (the CLI exits 2)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def parse_memory(text: str) -> int:
    """Bytes of a size such as ``80GiB``, ``80GB`` or ``81920MiB``; ValueError otherwise.

    A unit is required: a bare number could mean GB or GiB, 7 % apart on an 80 GB card.
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]+)\s*", str(text))
    unit = match.group(2).lower() if match else ""
    if not match or unit not in MEMORY_UNITS:
        raise ValueError(f"--gpu-memory: expected a size with a unit such as 80GiB, 80GB or 81920MiB "
                         f"(units: {', '.join(('B', 'kB', 'MB', 'GB', 'TB', 'KiB', 'MiB', 'GiB', 'TiB'))}), "
                         f"got {text!r}")
    value = float(match.group(1)) * MEMORY_UNITS[unit]
    if value <= 0:
        raise ValueError(f"--gpu-memory: must be more than 0, got {text!r}")
    return int(value)


# ------------------------------------------------------------------------------------------- the job


def _drop_field(data: dict[str, Any], message: str) -> bool:
    """Take the field a ConfigError names out of ``data`` (or set a placeholder) so that parsing can go on
    and find the next problem; False when the message names nothing that can be taken out."""
    where = message.split(":", 1)[0].strip()
    unknown = re.search(r"unknown field\(s\) (\[.*?\])", message)
    if unknown and (where == "config" or where in _SECTIONS):
        target = data if where == "config" else data.get(where)
        if not isinstance(target, dict):
            return False
        for key in ast.literal_eval(unknown.group(1)):
            target.pop(key, None)
        return True
    missing = re.fullmatch(r"config: missing required field '(\w+)'", message)
    if missing:
        data[missing.group(1)] = {"name": "job", "compressors": ["full"], "budgets": [100]}[missing.group(1)]
        return True
    listed = re.fullmatch(r"(budgets|compressors|plugins)\[(\d+)\].*", where)
    if listed and isinstance(data.get(listed.group(1)), list):
        items = data[listed.group(1)]
        del items[int(listed.group(2))]
        if not items and listed.group(1) != "plugins":
            items.append(100 if listed.group(1) == "budgets" else "full")
        return True
    if where == "budgets" and isinstance(data.get("budgets"), list) and "duplicates" in message:
        data["budgets"] = list(dict.fromkeys(data["budgets"]))
        return True
    if where == "benchmark.name":
        data["benchmark"] = {"name": "synthetic"}
        return True
    if where == "benchmark.path":  # a placeholder that exists, so the rest is still checked
        data["benchmark"]["path"] = "."
        return True
    if where == "model.path":
        data["model"]["path"] = "tiny"
        return True
    if where == "benchmark.options.protocol":
        data["benchmark"]["options"].pop("protocol", None)
        return True
    parts = where.split(".")
    if len(parts) == 2 and parts[0] in _SECTIONS and isinstance(data.get(parts[0]), dict) \
            and parts[1] in data[parts[0]]:
        data[parts[0]].pop(parts[1])
        return True
    return False


def collect_config(path: str | Path):
    """``(JobConfig or None, problems)``: the job as ``run`` parses it, with every bad field listed.

    ``pipeline.config`` stops at the first bad field; here each named field is taken out in turn and the
    job parsed again, so one pass reports them all. The config returned when there are problems has
    placeholders in the bad fields and only serves further checks.
    """
    from pipeline.config import ConfigError, parse_config

    path = Path(path)
    if not path.is_file():
        return None, [f"job: config file not found: {path}"]
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        return None, [f"job: {path} is not valid YAML: {err}"]
    if not isinstance(data, dict):
        return None, ["config: expected a YAML mapping at the top level"]
    data = copy.deepcopy(data)
    problems: list[str] = []
    for _ in range(64):
        try:
            return parse_config(data, source=str(path)), problems
        except ConfigError as err:
            problems.append(str(err))
            if not _drop_field(data, str(err)):
                return None, problems
        except Exception as err:  # a value of the wrong type that the dataclasses do not check
            problems.append(f"config: {type(err).__name__}: {err}")
            return None, problems
    return None, problems


# ------------------------------------------------------------------------------------------ the model


@dataclass
class ModelSource:
    """Where the model's architecture and image limits come from."""

    path: str
    kind: str  # tiny | micro | folder
    config_file: str | None = None
    name: str = ""  # the throughput table's key: tiny, micro, ui-tars-1.5-7b or the folder's name
    min_pixels: int = 0
    max_pixels: int = 0


def resolve_model(cfg) -> tuple[ModelSource | None, list[str]]:
    """The model of the job, or the problems that stop it loading (missing folder, not Qwen2.5-VL)."""
    import json

    from pipeline.agent.coords import UITARS_MAX_PIXELS, UITARS_MIN_PIXELS
    from pipeline.bench.memory import CONFIG_DIR
    from pipeline.models.files import MICRO_DIR, micro_model_dir
    from pipeline.models.loader import check_qwen25vl_checkpoint, parse_tiny_path

    m = cfg.model
    try:
        if parse_tiny_path(m.path) is not None:
            source = ModelSource(m.path, "tiny", name="tiny")
        elif m.path == "micro":
            micro_model_dir()
            source = ModelSource(m.path, "micro", str(MICRO_DIR / "config.json"), name="micro")
        else:
            config = check_qwen25vl_checkpoint(m.path)
            vendored = json.loads((CONFIG_DIR / "ui-tars-1.5-7b.json").read_text())
            text = config.get("text_config") or config
            same = all(text.get(k) == vendored[k] for k in _ARCH_KEYS)
            source = ModelSource(m.path, "folder", str(Path(m.path) / "config.json"),
                                 name="ui-tars-1.5-7b" if same else Path(m.path).resolve().name,
                                 min_pixels=UITARS_MIN_PIXELS, max_pixels=UITARS_MAX_PIXELS)
    except (FileNotFoundError, ValueError) as err:
        return None, [f"model.path: {err}"]
    return source, []


def model_facts(source: ModelSource, cfg):
    """``bench memory``'s facts for the job's model: config, processor at the job's pixel limits."""
    from pipeline.bench.memory import ModelFacts, load_facts
    from pipeline.models.loader import image_pixel_limits, set_image_pixel_limits

    if source.kind == "tiny":
        facts = load_facts("tiny")
    elif source.kind == "micro":  # an own build: its own tokenizer, ids and saved image limits
        from transformers import GenerationConfig, Qwen2_5_VLConfig

        from pipeline.models.files import micro_model_dir
        from pipeline.models.loader import load_processor

        folder = micro_model_dir()
        processor = load_processor(folder)
        end = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
        facts = ModelFacts(Qwen2_5_VLConfig.from_pretrained(str(folder), local_files_only=True), processor,
                           GenerationConfig(eos_token_id=None, pad_token_id=end, do_sample=False))
    else:
        facts = load_facts("ui-tars-1.5-7b", config_file=source.config_file)
    saved_min, saved_max = image_pixel_limits(facts.processor.image_processor)
    source.min_pixels = cfg.model.min_pixels or (source.min_pixels or saved_min)
    source.max_pixels = cfg.model.max_pixels or (source.max_pixels or saved_max)
    set_image_pixel_limits(facts.processor.image_processor, source.min_pixels, source.max_pixels)
    return facts


# ------------------------------------------------------------------------------------------- the data


@dataclass(frozen=True)
class Frame:
    """A screenshot known by its header's size only: what a prompt needs to be counted."""

    size: tuple[int, int]


@dataclass
class StepPrompt:
    """One step of the run as the plan counts it."""

    episode_id: str
    step_index: int
    #: model calls the step may make: 0 for a step the run reports as an error row, up to max_calls for
    #: a step that scrolls between views (pipeline.agent.views)
    calls: int
    image_sizes: list[tuple[int, int]] = field(default_factory=list)  # oldest first, current last
    image_tokens: list[int] = field(default_factory=list)
    prompt_tokens: int = 0


def image_tokens(size: tuple[int, int], min_pixels: int, max_pixels: int) -> int:
    """Merged-patch tokens of a ``(W, H)`` screenshot: smart_resize, then one token per 28 x 28 pixels."""
    from pipeline.agent.coords import IMAGE_FACTOR, smart_resize

    h, w = smart_resize(size[1], size[0], min_pixels=min_pixels, max_pixels=max_pixels)
    return (h // IMAGE_FACTOR) * (w // IMAGE_FACTOR)


def load_data(cfg) -> tuple[Any, list, list[str]]:
    """``(benchmark, episodes, problems)``: the episodes ``run`` would evaluate, as it loads them."""
    from pipeline.config import make_benchmark
    from pipeline.run.job import load_episodes

    try:
        benchmark = make_benchmark(cfg)
        return benchmark, load_episodes(cfg, benchmark), []
    except Exception as err:  # BenchmarkDataError, a missing file, an unreadable archive: all name the data
        return None, [], [f"benchmark.path: {type(err).__name__}: {err}"]


def step_prompts(cfg, benchmark, episodes: list, processor, min_pixels: int,
                 max_pixels: int) -> tuple[list[StepPrompt], list[str]]:
    """Every step's prompt length, built by the step engine's own prompt code on header-only frames.

    The history follows the run's rules (``StepHistory``: a step joins it when its screenshot opens); with
    ``history_source: model`` a past step's text is its ground truth (the model's own is not known before
    the run). Returns the steps and the screenshots that cannot be read (the run reports those steps as
    error rows).
    """
    from pipeline.agent.history import HistoryConfig
    from pipeline.agent.prompts import PREVIOUS_ACTIONS_KINDS
    from pipeline.agent.views import ScrollViews
    from pipeline.benchmarks.common.storage import image_size_at, open_fs
    from pipeline.step.prompt import StepHistory, step_messages

    agent = cfg.agent.resolved(benchmark)
    history_cfg = HistoryConfig(image_slots=agent.image_slots, text_history=agent.text_history,
                                source=agent.history_source, system_prompt=benchmark.system_prompt)
    tokenizer = processor.tokenizer
    sizes: dict[str, tuple[int, int] | str] = {}

    def header(path: str) -> tuple[int, int] | str:
        if path not in sizes:
            fs, inner = open_fs(path)
            sizes[path] = image_size_at(fs, inner)
        return sizes[path]

    errors: list[str] = []
    out: list[StepPrompt] = []
    for episode in episodes:
        history = StepHistory.for_agent(agent)
        for step in episode.steps:
            row = StepPrompt(episode.episode_id, step.step_index, 0)
            out.append(row)
            size = step.error or header(step.image_path)
            if not isinstance(size, tuple):
                errors.append(f"{episode.episode_id}/{step.step_index}: "
                              + (step.error or f"screenshot {step.image_path} {size}"))
                continue
            frame = Frame(size)
            views = ScrollViews.of(step)
            row.calls = views.max_calls if views is not None else 1
            use_step, use_history = step, history
            frames = step.meta.get("context")
            if frames is not None:  # context-only frames (AndroidControl): sizes from headers too
                use_history = StepHistory.for_agent(agent)
                for f in frames:
                    got = header(f["image_path"])
                    use_history.add_frame(int(f["step_index"]) + 1, Frame(got if isinstance(got, tuple) else size),
                                          f["text"])
                use_step = copy.copy(step)
                use_step.meta = {k: v for k, v in step.meta.items() if k != "context"}
                in_prompt = benchmark.prompt_kind in PREVIOUS_ACTIONS_KINDS and agent.image_slots <= 1
                if in_prompt:
                    use_history = history
            messages, images = step_messages(benchmark, agent, history_cfg, episode, use_step, frame, use_history)
            text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            row.image_sizes = [im.size for im in images]
            row.image_tokens = [image_tokens(s, min_pixels, max_pixels) for s in row.image_sizes]
            # the processor replaces each image's one <|image_pad|> by its merged-patch tokens
            row.prompt_tokens = len(tokenizer(text)["input_ids"]) + sum(n - 1 for n in row.image_tokens)
            history.add(step, frame, "", agent.history_source)
    return out, errors


def worst_prompt(prompts: list[StepPrompt], min_pixels: int, max_pixels: int) -> tuple[int, tuple[int, int]]:
    """``(screenshots, (W, H))`` of ``bench memory``'s prompt that bounds every step's image tokens: the most
    screenshots any prompt shows, each as large (in tokens) as the largest screenshot of the run."""
    shots = max((len(p.image_sizes) for p in prompts), default=1) or 1
    sizes = {s for p in prompts for s in p.image_sizes} or {(28, 28)}
    size = max(sizes, key=lambda s: (image_tokens(s, min_pixels, max_pixels), s[0] * s[1], s))
    return shots, size


# ----------------------------------------------------------------------------------------- throughput


@dataclass
class Throughput:
    """Tokens per second of one GPU running one actor, and where the figures come from."""

    gpu: str
    model: str
    prefill_tokens_per_s: float | None
    decode_tokens_per_s: float | None
    source: str
    memory: str | None = None  # the card's memory, the default of --gpu-memory


def load_throughput(gpu: str, model: str, path: str | Path = THROUGHPUT_FILE, prefill: float | None = None,
                    decode: float | None = None) -> tuple[Throughput | None, list[str]]:
    """The table's figures for ``gpu`` and ``model``, overridden by ``prefill`` / ``decode`` when given."""
    try:
        table = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        return None, [f"--throughput-table: cannot read {path}: {err}"]
    gpus = table.get("gpus") or {}
    if gpu not in gpus:
        return None, [f"--gpu: unknown GPU {gpu!r}; the table {path} has {', '.join(sorted(gpus))}"]
    row = (gpus[gpu].get("models") or {}).get(model) or {}
    problems = [f"{flag}: must be a number > 0, got {value!r}" for flag, value in
                (("--prefill-tokens-per-s", prefill), ("--decode-tokens-per-s", decode))
                if value is not None and not value > 0]
    sources = [row.get("source", "")] if row and (prefill is None or decode is None) else []
    if prefill is not None or decode is not None:
        sources.append("overridden on the command line: " + ", ".join(
            f"{k} {v:g}" for k, v in (("prefill", prefill), ("decode", decode)) if v is not None))
    return Throughput(gpu, model, prefill if prefill is not None else row.get("prefill_tokens_per_s"),
                      decode if decode is not None else row.get("decode_tokens_per_s"),
                      "; ".join(s for s in sources if s) or f"no figure for {model} on {gpu} in {path}",
                      gpus[gpu].get("memory")), problems


# -------------------------------------------------------------------------------------------- estimate


def sharing_units(cfg) -> int:
    """How many of the job's units take part in a shared prefill (one prefill per step for all of them)."""
    from pipeline.config import PrefillMode

    if not PrefillMode.parse(cfg.model.prefill_mode).shares_prefill:
        return 0
    count = sum(len(cfg.budgets) for c in cfg.compressors if c.build().shares_prefill)
    return count if count > 1 else 0


def estimate(prompts: list[StepPrompt], units: int, sharing: int, decode_tokens: int,
             throughput: Throughput | None, shared_prefill: bool, gpus: int) -> dict[str, Any]:
    """Prefill and decode tokens of the sweep and its GPU-hours, per unit and with shared prefills.

    Per unit, every unit prefills every model call's prompt. With shared prefills the ``sharing`` units
    prefill each one-call step once together (``pipeline.step.sweep``); the others, and every call of a
    step that scrolls between views, prefill on their own. A pruning unit (FastV) shares too; its own later
    layers on the kept tokens are not counted (less than one prefill of its budget's tokens). Every call
    decodes ``decode_tokens`` (the job's max_new_tokens: an upper bound, a call stops at its end token).
    Hours = tokens / (tokens/s) / 3600.
    """
    single = sum(p.prompt_tokens * p.calls for p in prompts if p.calls == 1)
    multi = sum(p.prompt_tokens * p.calls for p in prompts if p.calls > 1)
    calls = sum(p.calls for p in prompts)
    per_unit_prefill = units * (single + multi)
    shared = sharing > 1
    shared_prefill_tokens = ((1 + units - sharing) * single + units * multi) if shared else per_unit_prefill
    decode = units * calls * decode_tokens

    def hours(prefill_tokens: int) -> float | None:
        if throughput is None or not throughput.prefill_tokens_per_s or not throughput.decode_tokens_per_s:
            return None
        return (prefill_tokens / throughput.prefill_tokens_per_s + decode / throughput.decode_tokens_per_s) / 3600

    per_unit = {"prefill_tokens": per_unit_prefill, "decode_tokens": decode, "gpu_hours": hours(per_unit_prefill)}
    with_shared = {"prefill_tokens": shared_prefill_tokens, "decode_tokens": decode,
                   "gpu_hours": hours(shared_prefill_tokens)}
    job_hours = (with_shared if shared_prefill else per_unit)["gpu_hours"]
    return {"units": units, "sharing_units": sharing if shared else 0, "model_calls_per_unit": calls,
            "decode_tokens_per_call": decode_tokens, "per_unit": per_unit, "shared": with_shared,
            "job_uses_shared_prefill": bool(shared_prefill), "job_gpu_hours": job_hours, "gpus": gpus,
            "wall_hours": None if job_hours is None else job_hours / gpus}


def fit(peak_per_gpu: int, gpu_memory: int) -> dict[str, Any]:
    """``fits``, or what the job ``needs`` (bytes, and GiB rounded up to 0.01) against one GPU's memory."""
    ok = peak_per_gpu <= gpu_memory
    return {"fits": ok, "needs_bytes": None if ok else peak_per_gpu,
            "verdict": "fits" if ok else f"needs {math.ceil(peak_per_gpu / GIB * 100) / 100:.2f} GiB"}


def actors_per_gpu(cfg) -> int:
    """Actors that share one GPU: 1 for ``auto`` or a whole GPU, floor(1/f) for a fraction f."""
    f = cfg.ray.num_gpus_per_actor
    return int(1 / f + 1e-9) if isinstance(f, (int, float)) and 0 < f < 1 else 1


def default_gpus(cfg) -> int:
    """GPUs the job's actors take: num_actors x num_gpus_per_actor (1 each for ``auto``), at least 1."""
    f = cfg.ray.num_gpus_per_actor
    per = f if isinstance(f, (int, float)) and f > 0 else 1
    return max(1, math.ceil(cfg.ray.num_actors * per))


# ------------------------------------------------------------------------------------------- the plan


@dataclass
class PlanOptions:
    """The command line of ``starkv-eval plan``, parsed."""

    job: str
    gpu_memory: str | None = None
    gpus: int | None = None
    gpu: str = "h100-sxm-80gb"
    prefill_tokens_per_s: float | None = None
    decode_tokens_per_s: float | None = None
    decode_steps: int = DEFAULT_DECODE_STEPS
    throughput_table: str = str(THROUGHPUT_FILE)


def _dtype(cfg, source: ModelSource) -> str:
    if source.kind == "tiny":
        return "float32"  # as bench memory simulates the tiny model
    return "bfloat16" if cfg.model.dtype in ("auto", None) else str(cfg.model.dtype)


def _attn(cfg) -> str:
    # flash_attention_2 and sdpa (which runs flash kernels on CUDA) are simulated as sdpa
    return "eager" if cfg.model.attn_implementation == "eager" else "sdpa"


def check(options: PlanOptions):
    """Every input problem of the plan in one list, else what the work needs (nothing simulated yet)."""
    from pipeline.bench.memory import DTYPES

    problems: list[str] = []
    gpu_memory = None
    if options.gpus is not None and options.gpus < 1:
        problems.append(f"--gpus: must be >= 1, got {options.gpus}")
    if options.decode_steps < MIN_DECODE_STEPS:
        problems.append(f"--decode-steps: must be >= {MIN_DECODE_STEPS} (the growth per step is measured between "
                        f"the second half of them), got {options.decode_steps}")
    cfg, config_problems = collect_config(options.job)
    problems += config_problems
    bad_fields = " ".join(config_problems)
    source = benchmark = None
    episodes: list = []
    if cfg is not None and "model.path" not in bad_fields:
        source, more = resolve_model(cfg)
        problems += more
        if source is not None and _dtype(cfg, source) not in DTYPES:
            problems.append(f"model.dtype: the simulation needs one of {sorted(DTYPES)} or auto, "
                            f"got {cfg.model.dtype!r}")
    if cfg is not None and not re.search(r"benchmark\.(path|name)", bad_fields):
        benchmark, episodes, more = load_data(cfg)
        problems += more
    throughput, more = load_throughput(options.gpu, source.name if source else "", options.throughput_table,
                                       options.prefill_tokens_per_s, options.decode_tokens_per_s)
    problems += more
    memory_text = options.gpu_memory or (throughput.memory if throughput else None)
    if memory_text is None and throughput is not None:
        problems.append(f"--gpu-memory: not given and the table has no memory for {options.gpu}")
    elif memory_text is not None:
        try:
            gpu_memory = parse_memory(memory_text)
        except ValueError as err:
            problems.append(str(err))
    return problems, cfg, source, benchmark, episodes, throughput, gpu_memory


def make_plan(options: PlanOptions, echo=lambda *_: None) -> dict[str, Any]:
    """The plan as a JSON-ready dict (keys in docs/cluster.md); PlanProblems lists every bad input first."""
    from pipeline.bench.memory import DTYPES, prompt_inputs, simulate
    from pipeline.metrics.units import unit_label

    problems, cfg, source, benchmark, episodes, throughput, gpu_memory = check(options)
    if problems:
        raise PlanProblems(problems)
    facts = model_facts(source, cfg)
    prompts, errors = step_prompts(cfg, benchmark, episodes, facts.processor, source.min_pixels,
                                   source.max_pixels)
    if len(errors) == len(prompts):
        raise PlanProblems([f"benchmark.path: every step is an error row, e.g. {'; '.join(errors[:3])}"])
    echo(f"{len(episodes)} episodes, {len(prompts)} steps; simulating the longest prompt per unit")
    shots, size = worst_prompt(prompts, source.min_pixels, source.max_pixels)
    inputs, layout = prompt_inputs(facts.processor, shots, size)
    dtype = _dtype(cfg, source)
    max_new = cfg.model.max_new_tokens
    decode_steps = min(options.decode_steps, max_new)
    text = facts.config.text_config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    kv_per_token = 2 * text.num_hidden_layers * text.num_key_value_heads * head_dim * DTYPES[dtype].itemsize
    per_gpu = actors_per_gpu(cfg)
    cache: dict = {}

    def run(comp, budget, steps):
        return simulate(facts, inputs, layout, comp.build(), float(budget), _attn(cfg),
                        steps, DTYPES[dtype], cfg.model.mlp_chunk_tokens, cfg.model.vision_per_image, cache,
                        cfg.model.prefill_mode)

    from pipeline.memory.simulate import unsimulated

    sims = []
    for comp, budget in cfg.units():
        label = unit_label(comp.display, float(budget))
        try:
            sims.append(run(comp, budget, decode_steps))
        except ValueError as err:  # e.g. eager attention with a layer-varying compressor, as in bench memory
            raise PlanProblems([f"{label}: cannot be simulated: {err}"]) from None
        except Exception as err:  # noqa: BLE001 - only a read of absent values is named; the rest propagates
            reason = unsimulated(err)
            if reason is None:
                raise
            raise PlanProblems([f"{label}: cannot be simulated: {reason}"]) from None
        echo(f"  simulated {label}")
    growth = 0
    if decode_steps < max_new:
        # each later decode step adds what one step adds from the middle of the simulated ones on (one
        # token's KV in every layer and a few growing index tensors, the same for every unit)
        half = decode_steps // 2
        short = run(*cfg.units()[0], half)
        growth = math.ceil((sims[0]["peak_decode_bytes"] - short["peak_decode_bytes"]) / (decode_steps - half))
    tail = (max_new - decode_steps) * growth
    rows = []
    for (comp, budget), sim in zip(cfg.units(), sims):
        above = max(sim["peak_prefill_bytes"], sim["peak_decode_bytes"] + tail)
        peak = per_gpu * (sim["weights_bytes"] + above)
        row = {"unit": unit_label(comp.display, float(budget)), "compressor": comp.display, "budget": float(budget),
               "weights_bytes": sim["weights_bytes"], "peak_prefill_bytes": sim["peak_prefill_bytes"],
               "peak_decode_bytes": sim["peak_decode_bytes"], "decode_tail_bytes": tail,
               "peak_above_weights_bytes": above, "peak_per_gpu_bytes": peak,
               "peak_phase": sim["peak_phase"], "peak_part": sim["peak_part"], "kv_bytes": sim["kv_bytes"],
               **fit(peak, gpu_memory)}
        rows.append(row)
    worst = max(rows, key=lambda r: r["peak_per_gpu_bytes"])
    longest = max(prompts, key=lambda p: p.prompt_tokens)
    gpus = options.gpus or default_gpus(cfg)
    return {
        "job": options.job, "run_id": cfg.resolved_run_id(),
        "model": {"path": cfg.model.path, "name": source.name, "config": source.config_file, "dtype": dtype,
                  "attn_implementation": _attn(cfg), "min_pixels": source.min_pixels,
                  "max_pixels": source.max_pixels},
        "data": {"benchmark": cfg.benchmark.name, "path": cfg.benchmark.path, "episodes": len(episodes),
                 "steps": len(prompts), "error_steps": len(errors), "error_examples": errors[:3],
                 "multi_call_steps": sum(p.calls > 1 for p in prompts), "image_slots": cfg.agent.image_slots},
        "prompt": {"longest_prompt_tokens": longest.prompt_tokens,
                   "longest_step": f"{longest.episode_id}/{longest.step_index}",
                   "simulated_screenshots": shots, "simulated_resolution": f"{size[0]}x{size[1]}",
                   "simulated_image_tokens": sum(e - s for s, e in layout.image_spans),
                   "simulated_prompt_tokens": int(inputs["input_ids"].shape[1])},
        "memory": {"gpu_memory_bytes": gpu_memory, "actors_per_gpu": per_gpu, "decode_steps_simulated": decode_steps,
                   "max_new_tokens": max_new, "kv_bytes_per_token": kv_per_token,
                   "decode_growth_bytes_per_step": growth,
                   "weights_bytes": worst["weights_bytes"], "peak_above_weights_bytes": worst["peak_above_weights_bytes"],
                   "peak_per_gpu_bytes": worst["peak_per_gpu_bytes"], "worst_unit": worst["unit"],
                   **fit(worst["peak_per_gpu_bytes"], gpu_memory), "units": rows},
        "throughput": asdict(throughput),
        "estimate": estimate(prompts, len(cfg.units()), sharing_units(cfg), max_new, throughput,
                             cfg.ray.shared_prefill, gpus),
        "problems": [],
    }


def format_plan(plan: dict[str, Any]) -> str:
    """The plan as text: data, prompt, memory per unit against the card, tokens and GPU-hours."""
    d, p, m, e, t = plan["data"], plan["prompt"], plan["memory"], plan["estimate"], plan["throughput"]
    gib, unit = (GIB, "GiB") if m["peak_per_gpu_bytes"] >= GIB else (1024 ** 2, "MiB")  # MiB for small models
    lines = [f"job {plan['job']} (run {plan['run_id']}), model {plan['model']['path']} ({plan['model']['name']}, "
             f"{plan['model']['dtype']}, {plan['model']['attn_implementation']})",
             f"data: {d['benchmark']} at {d['path'] or '(generated)'}: {d['episodes']} episodes, {d['steps']} steps "
             f"({d['error_steps']} error rows, {d['multi_call_steps']} multi-call), {d['image_slots']} screenshot(s) "
             f"per prompt at most"]
    if d["error_steps"]:
        lines.append(f"  {d['error_steps']} step(s) will be error rows (no model call), e.g. "
                     + "; ".join(d["error_examples"]))
    lines += [f"longest prompt: {p['longest_prompt_tokens']} tokens (step {p['longest_step']}); simulated: "
              f"{p['simulated_screenshots']} x {p['simulated_resolution']} = {p['simulated_image_tokens']} image "
              f"tokens, {p['simulated_prompt_tokens']} tokens",
              f"memory per GPU ({m['actors_per_gpu']} actor(s) per GPU, {m['decode_steps_simulated']} of "
              f"{m['max_new_tokens']} decode steps simulated, the rest at {m['decode_growth_bytes_per_step']:,} "
              f"bytes each) against {m['gpu_memory_bytes'] / GIB:.2f} GiB:"]
    head = f"  {'unit':<24}{'weights':>9}{'prefill':>9}{'decode':>9}{'peak/GPU':>10}  verdict"
    lines += [head, "  " + "-" * (len(head) - 2)]
    for r in m["units"]:
        lines.append(f"  {r['unit']:<24}{r['weights_bytes'] / gib:>9.2f}{r['peak_prefill_bytes'] / gib:>9.2f}"
                     f"{(r['peak_decode_bytes'] + r['decode_tail_bytes']) / gib:>9.2f}"
                     f"{r['peak_per_gpu_bytes'] / gib:>10.2f}  {r['verdict']}")
    lines.append(f"  ({unit}; prefill and decode above the weights, exact live tensor bytes on fake tensors; "
                 f"worst {m['worst_unit']}: {m['verdict']})")

    def hours(h):
        return "n/a" if h is None else f"{h:.3f}"

    def rate(r):
        return "n/a (give --prefill-tokens-per-s / --decode-tokens-per-s)" if r is None else f"{r:g} tokens/s"

    lines += [f"tokens: {e['units']} units x {e['model_calls_per_unit']} model calls, up to "
              f"{e['decode_tokens_per_call']} decoded per call",
              f"  per unit:       prefill {e['per_unit']['prefill_tokens']:,}  decode "
              f"{e['per_unit']['decode_tokens']:,}  GPU-hours {hours(e['per_unit']['gpu_hours'])}",
              f"  shared prefill: prefill {e['shared']['prefill_tokens']:,}  decode {e['shared']['decode_tokens']:,}"
              f"  GPU-hours {hours(e['shared']['gpu_hours'])} ({e['sharing_units']} units share)",
              f"  the job ({'shared' if e['job_uses_shared_prefill'] else 'per unit'}): GPU-hours "
              f"{hours(e['job_gpu_hours'])}, wall-clock hours {hours(e['wall_hours'])} on {e['gpus']} GPU(s)",
              f"throughput ({t['gpu']}, {t['model']}): prefill {rate(t['prefill_tokens_per_s'])}, decode "
              f"{rate(t['decode_tokens_per_s'])}; {t['source']}"]
    return "\n".join(lines)
