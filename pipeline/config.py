"""Job configuration: parsed from YAML and validated before any work starts, naming the bad field."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from pipeline.benchmarks.common.base import Benchmark
    from starkv import Compressor
    from starkv.storage import KVStorage


class ConfigError(ValueError):
    """A job config that cannot run; the message names the field."""


class PrefillMode(str, Enum):
    """How a step's prompt is prefilled (``model.prefill_mode``).

    ``full`` is exact; ``chunked_compress`` compresses the cache after each history screenshot while it
    prefills (an approximation, ``pipeline.step.chunked_prefill``), so its units cannot share a prefill.
    """

    FULL = "full"
    CHUNKED_COMPRESS = "chunked_compress"

    @classmethod
    def parse(cls, value: str | PrefillMode) -> PrefillMode:
        """The mode named by ``value``; ValueError naming the option otherwise."""
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"model.prefill_mode: expected one of {', '.join(m.value for m in cls)}, "
                             f"got {value!r}") from None

    @property
    def label(self) -> str:
        """The ``mode`` column of rows and params: ``exact`` or ``approx_chunked``."""
        return "exact" if self is PrefillMode.FULL else "approx_chunked"

    @property
    def shares_prefill(self) -> bool:
        """Whether a sweep's units may share a step's prefill (not a chunked one, which compresses per unit)."""
        return self is PrefillMode.FULL


@dataclass
class ModelConfig:
    #: a checkpoint folder, a Hugging Face repo id ``org/name`` (resolved through the hub cache,
    #: pipeline.models.hub), ``tiny`` / ``tiny:<seed>`` or ``micro``
    path: str = "tiny"
    #: for a repo id: branch, tag or commit sha (None: ``main``); the commit it resolves to is recorded
    revision: str | None = None
    dtype: str = "auto"
    attn_implementation: str | None = None
    device: str = "auto"
    max_new_tokens: int = 32
    #: run each decoder MLP over at most this many prompt tokens at a time in prefill (0: off); lowers the
    #: peak, same tokens and kept sets (pipeline.memory.lowmem)
    mlp_chunk_tokens: int = 0
    #: encode the screenshots one at a time in the vision tower (same features; lower peak)
    vision_per_image: bool = True
    #: ``full`` (exact) or ``chunked_compress``: an opt-in approximation that compresses the cache after
    #: each history screenshot during prefill, so it never holds the whole prompt (pipeline.step.chunked_prefill)
    prefill_mode: str = "full"
    min_pixels: int | None = None
    max_pixels: int | None = None


@dataclass
class BenchmarkConfig:
    name: str = "synthetic"
    path: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    max_episodes: int | None = None


HISTORY_SOURCES = ("ground_truth", "model")
PROMPT_FAMILIES = ("box", "point")


@dataclass
class AgentConfig:
    """How the agent sees each step. ``None`` = the benchmark's protocol default (the reference drivers'):
    ``image_slots`` (screenshots per prompt, current included; ``Benchmark.default_image_slots``),
    ``history_source`` (``ground_truth`` | ``model``; ``default_history_source``), ``prompt_family``
    (``box`` | ``point``; ``default_prompt_family``). ``text_history``: past steps that keep their text."""

    image_slots: int | None = None
    text_history: int = 10
    history_source: str | None = None
    prompt_family: str | None = None
    language: str = "English"

    def resolved(self, benchmark: Any) -> AgentConfig:
        """A copy with every ``None`` replaced by the benchmark's (class or instance) default."""
        return replace(
            self,
            image_slots=self.image_slots if self.image_slots is not None else int(benchmark.default_image_slots),
            history_source=self.history_source or benchmark.default_history_source,
            prompt_family=self.prompt_family or benchmark.default_prompt_family,
        )


@dataclass
class CompressorConfig:
    name: str
    params: dict[str, Any] = field(default_factory=dict)
    label: str | None = None
    #: storage options of the unit (``starkv.storage``): KIVI quantization of the kept K/V, e.g. ``{bits: 4}``
    kv_quant: dict[str, Any] | None = None
    #: ``per_kv_head`` (GQA storage) or ``per_query_head`` (the published drivers' storage rule)
    kv_layout: str = "per_kv_head"

    @property
    def display(self) -> str:
        """The unit's compressor column: label or name, then the storage tag (``snapkv+int4``); the unit
        label puts the tag after the budget (``snapkv@20+int4``, ``pipeline.metrics.units.unit_label``)."""
        return (self.label or self.name) + self.storage().tag

    def storage(self) -> KVStorage:
        """The parsed storage options; ValueError naming the field (``kv_quant.bits: ...``)."""
        from starkv.storage import KVQuant, KVStorage

        if not isinstance(self.kv_layout, str):
            raise ValueError(f"kv_layout: expected per_kv_head or per_query_head, got {self.kv_layout!r}")
        try:
            quant = None if self.kv_quant is None else KVQuant.from_dict(self.kv_quant)
        except ValueError as err:  # "bits: ..." names a field of kv_quant, anything else the mapping itself
            field_name = str(err).split(":", 1)[0]
            named = field_name.isidentifier() and field_name in KVQuant.__dataclass_fields__
            raise ValueError(f"kv_quant.{err}" if named else f"kv_quant: {err}") from None
        return KVStorage(layout=self.kv_layout, quant=quant)

    def build(self) -> Compressor:
        """The unit's compressor instance, storing as the unit's options say."""
        import starkv

        return starkv.build(self.name, **self.params).stored_as(self.storage())


@dataclass
class RayConfig:
    address: str | None = None
    num_actors: int = 1
    num_cpus_per_actor: float = 1.0
    num_gpus_per_actor: float | str = "auto"
    torch_threads: int | None = None
    object_store_memory: int = 512 * 1024 * 1024
    #: run all (compressor, budget) units of an episode on one actor, one prefill per step shared by the
    #: units whose prompt is the same (pipeline.step.sweep); the rows are identical either way, so it is not
    #: part of the run id. false: one work item per (unit, episode), each with its own prefills
    shared_prefill: bool = True


@dataclass
class TrackingConfig:
    uri: str | None = None
    experiment: str = "starkv-eval"
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class JobConfig:
    name: str
    model: ModelConfig
    benchmark: BenchmarkConfig
    compressors: list[CompressorConfig]
    budgets: list[float]
    agent: AgentConfig = field(default_factory=AgentConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    output: str = "outputs"
    seed: int = 0
    run_id: str | None = None
    regression: dict[str, Any] = field(default_factory=dict)
    #: modules imported (driver and every actor) before compressors are built: user-registered methods
    plugins: list[str] = field(default_factory=list)
    #: count each step's prefill and selection flops (torch's flop counter: the prefill_flops / compress_flops
    #: columns); off by default, as the counter slows the prefill and selection it counts (docs/performance.md)
    measure_flops: bool = False
    source: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("source", None)
        return data

    def fingerprint(self) -> str:
        """Stable hash of what determines the results (a rerun of the same job resumes the same run)."""
        data = self.to_dict()
        for volatile in ("output", "tracking", "run_id", "ray", "regression"):
            data.pop(volatile, None)
        if data["model"].get("revision") is None:  # jobs from before model.revision keep their run ids
            data["model"].pop("revision", None)
        if not data.get("measure_flops"):  # jobs from before measure_flops keep their run ids
            data.pop("measure_flops", None)
        for comp in data["compressors"]:  # units without storage options keep their run ids
            if comp.get("kv_quant") is None:
                comp.pop("kv_quant", None)
            if comp.get("kv_layout") == "per_kv_head":
                comp.pop("kv_layout", None)
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:10]

    def resolved_run_id(self) -> str:
        return self.run_id or f"{self.name}-{self.fingerprint()}"

    def units(self) -> list[tuple[CompressorConfig, float]]:
        return [(c, b) for c in self.compressors for b in self.budgets]


def _build(cls, data: Any, where: str):
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    known = set(cls.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; allowed: {sorted(known)}")
    try:
        return cls(**data)
    except TypeError as err:
        raise ConfigError(f"{where}: {err}") from None


def parse_config(data: dict[str, Any], source: str | None = None) -> JobConfig:
    """Build and validate a ``JobConfig`` from a mapping."""
    if not isinstance(data, dict):
        raise ConfigError("config: expected a YAML mapping at the top level")
    allowed = set(JobConfig.__dataclass_fields__) - {"source"}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(f"config: unknown field(s) {unknown}; allowed: {sorted(allowed)}")
    for required in ("name", "compressors", "budgets"):
        if required not in data:
            raise ConfigError(f"config: missing required field '{required}'")
    comps = data["compressors"]
    if not isinstance(comps, list) or not comps:
        raise ConfigError("compressors: expected a non-empty list")
    compressors = []
    for i, item in enumerate(comps):
        item = {"name": item} if isinstance(item, str) else item
        compressors.append(_build(CompressorConfig, item, f"compressors[{i}]"))
    budgets = data["budgets"]
    if not isinstance(budgets, list) or not budgets:
        raise ConfigError("budgets: expected a non-empty list of percents in (0, 100]")
    cfg = JobConfig(
        name=str(data["name"]),
        model=_build(ModelConfig, data.get("model"), "model"),
        benchmark=_build(BenchmarkConfig, data.get("benchmark"), "benchmark"),
        compressors=compressors,
        budgets=budgets,
        agent=_build(AgentConfig, data.get("agent"), "agent"),
        ray=_build(RayConfig, data.get("ray"), "ray"),
        tracking=_build(TrackingConfig, data.get("tracking"), "tracking"),
        output=str(data.get("output", "outputs")),
        seed=int(data.get("seed", 0)),
        run_id=data.get("run_id"),
        regression=data.get("regression") or {},
        plugins=list(data.get("plugins") or []),
        measure_flops=data.get("measure_flops", False),
        source=source,
    )
    validate(cfg)
    from pipeline.benchmarks.common.base import get_benchmark

    cfg.agent = cfg.agent.resolved(get_benchmark(cfg.benchmark.name))  # logged and fingerprinted as run
    return cfg


def load_config(path: str | os.PathLike) -> JobConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    return parse_config(data, source=str(path))


def import_plugins(plugins: list[str]) -> None:
    """Import the modules that register user compressors/benchmarks; a failure names the entry."""
    import importlib

    for i, module in enumerate(plugins):
        try:
            importlib.import_module(module)
        except Exception as err:
            raise ConfigError(f"plugins[{i}]: cannot import {module!r}: {type(err).__name__}: {err}") from None


def validate(cfg: JobConfig) -> None:
    """Every check that can fail before a model is loaded or a Ray cluster is started."""
    import starkv
    from pipeline.benchmarks.common.base import get_benchmark

    import_plugins(cfg.plugins)
    for i, b in enumerate(cfg.budgets):
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not 0 < float(b) <= 100:
            raise ConfigError(f"budgets[{i}]: {b!r} is outside (0, 100] percent")
    if len(set(map(float, cfg.budgets))) != len(cfg.budgets):
        raise ConfigError(f"budgets: duplicates in {cfg.budgets}")
    for i, c in enumerate(cfg.compressors):
        _validate_storage(c, i, cfg.model.prefill_mode)
    labels = [c.display for c in cfg.compressors]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"compressors: duplicate names {labels}; give one a 'label'")
    for i, c in enumerate(cfg.compressors):
        try:
            compressor = starkv.build(c.name, **c.params)
        except (KeyError, TypeError, ValueError) as err:
            msg = err.args[0] if err.args else str(err)
            raise ConfigError(f"compressors[{i}].name/params: {msg}") from None
        try:
            compressor.stored_as(c.storage())
        except ValueError as err:
            raise ConfigError(f"compressors[{i}].{err}") from None
    try:
        bench_cls = get_benchmark(cfg.benchmark.name)
    except KeyError as err:
        raise ConfigError(f"benchmark.name: {err.args[0]}") from None
    if not isinstance(cfg.benchmark.options, dict):
        raise ConfigError(f"benchmark.options: must be a mapping, got {type(cfg.benchmark.options).__name__}")
    protocol = cfg.benchmark.options.get("protocol")
    if protocol is not None and protocol not in bench_cls.protocols:
        raise ConfigError(f"benchmark.options.protocol: {protocol!r} is not a scoring protocol of benchmark "
                          f"{cfg.benchmark.name!r}; allowed: {', '.join(bench_cls.protocols)}")
    if cfg.benchmark.path is not None and "://" not in cfg.benchmark.path and not Path(cfg.benchmark.path).exists():
        raise ConfigError(f"benchmark.path: {cfg.benchmark.path} does not exist")
    if cfg.benchmark.path is None and getattr(get_benchmark(cfg.benchmark.name), "generator_style", None) is None:
        raise ConfigError(f"benchmark.path: required for benchmark {cfg.benchmark.name!r}")
    _validate_model_path(cfg.model)
    if cfg.model.max_new_tokens < 1:
        raise ConfigError("model.max_new_tokens: must be >= 1")
    if not isinstance(cfg.measure_flops, bool):
        raise ConfigError(f"measure_flops: must be true or false, got {cfg.measure_flops!r}")
    if not isinstance(cfg.model.vision_per_image, bool):
        raise ConfigError(f"model.vision_per_image: must be true or false, got {cfg.model.vision_per_image!r}")
    if not isinstance(cfg.model.mlp_chunk_tokens, int) or cfg.model.mlp_chunk_tokens < 0:
        raise ConfigError(f"model.mlp_chunk_tokens: must be an integer >= 0 (0: off), got {cfg.model.mlp_chunk_tokens!r}")
    try:
        mode = PrefillMode.parse(cfg.model.prefill_mode)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if mode is PrefillMode.CHUNKED_COMPRESS:
        for i, c in enumerate(cfg.compressors):
            if starkv.build(c.name, **c.params).pruning:  # its later layers must see the whole prompt's survivors
                raise ConfigError(f"compressors[{i}] ({c.display}): a pruning method drops tokens inside the "
                                  "prefill and cannot run with model.prefill_mode: chunked_compress (use full)")
    agent = cfg.agent
    if agent.image_slots is not None and (isinstance(agent.image_slots, bool) or not isinstance(agent.image_slots, int)
                                          or agent.image_slots < 1):
        raise ConfigError(f"agent.image_slots: must be an integer >= 1 or null (benchmark default), "
                          f"got {agent.image_slots!r}")
    if isinstance(agent.text_history, bool) or not isinstance(agent.text_history, int):
        raise ConfigError(f"agent.text_history: must be an integer (<= 0: all), got {agent.text_history!r}")
    if agent.history_source is not None and agent.history_source not in HISTORY_SOURCES:
        raise ConfigError(f"agent.history_source: must be 'ground_truth', 'model' or null (benchmark default), "
                          f"got {agent.history_source!r}")
    if agent.prompt_family is not None and agent.prompt_family not in PROMPT_FAMILIES:
        raise ConfigError(f"agent.prompt_family: must be 'box', 'point' or null (benchmark default), "
                          f"got {agent.prompt_family!r}")
    if cfg.ray.num_actors < 1:
        raise ConfigError("ray.num_actors: must be >= 1")
    if cfg.benchmark.max_episodes is not None and cfg.benchmark.max_episodes < 1:
        raise ConfigError("benchmark.max_episodes: must be >= 1")


def _validate_storage(c: CompressorConfig, i: int, prefill_mode: str) -> None:
    """A unit's ``kv_quant`` / ``kv_layout`` parse, its label cannot pose as a storage tag, and a chunked
    prefill (which compresses the stored cache again per chunk) takes no storage option."""
    from starkv.storage import split_storage_tag

    try:
        storage = c.storage()
    except ValueError as err:
        raise ConfigError(f"compressors[{i}].{err}") from None
    if c.label is not None and split_storage_tag(str(c.label))[1]:
        raise ConfigError(f"compressors[{i}].label: {c.label!r} ends like a storage tag (+pqh, +int<bits>), which "
                          "the unit label reserves for kv_layout / kv_quant")
    if not storage.default and prefill_mode != PrefillMode.FULL.value:
        field_name = "kv_quant" if storage.quant is not None else "kv_layout"
        raise ConfigError(f"compressors[{i}].{field_name}: needs model.prefill_mode full (a chunked prefill "
                          "compresses the stored cache again with every chunk)")


def _validate_model_path(model: ModelConfig) -> None:
    """``model.path`` names something loadable: tiny, micro, an existing folder or a hub repo id that is in the
    cache or (online) on the Hub at ``model.revision``; nothing is downloaded here."""
    from pipeline.models.hub import HubModelError, check_repo, is_repo_id

    path, revision = model.path, model.revision
    if not isinstance(path, str) or not path:
        raise ConfigError(f"model.path: expected a folder, a Hugging Face repo id, 'tiny' or 'micro', got {path!r}")
    if revision is not None and (not isinstance(revision, str) or not revision):
        raise ConfigError(f"model.revision: expected a branch, tag or commit sha, got {revision!r}")
    hub = is_repo_id(path)
    if revision is not None and not hub:
        raise ConfigError(f"model.revision: {revision!r} applies only to a Hugging Face repo id (org/name); "
                          f"model.path is {path!r}")
    if path == "micro":
        from pipeline.models.files import micro_model_dir

        try:
            micro_model_dir()
        except FileNotFoundError as err:
            raise ConfigError(f"model.path: {err}") from None
    elif path == "tiny" or path.startswith("tiny:"):
        return
    elif hub:
        try:
            check_repo(path, revision)
        except HubModelError as err:
            raise ConfigError(f"model.path: {err}") from None
    elif not Path(path).exists():
        raise ConfigError(f"model.path: {path} does not exist (use a checkpoint folder, a Hugging Face repo id "
                          "'org/name', 'tiny' for the offline test model or 'micro' for the micro agent)")


#: launcher/synthetic options that drive the generator, not the loader
SYNTHETIC_GENERATOR_OPTIONS = ("num_episodes", "seed", "min_steps", "max_steps", "style")


def make_benchmark(cfg: JobConfig, path: str | None = None) -> Benchmark:
    """The configured benchmark at ``path`` (default: the config's).

    The generated benchmarks' (synthetic, launcher) generator options are not loader options; without a
    path the dataset is generated into a cache folder from them.
    """
    from pipeline.benchmarks import get_benchmark

    cls = get_benchmark(cfg.benchmark.name)
    options = dict(cfg.benchmark.options)
    path = path or cfg.benchmark.path
    style = getattr(cls, "generator_style", None)
    if style is not None:  # a generated benchmark (synthetic, launcher)
        gen = {"style": style, **{k: options.pop(k) for k in SYNTHETIC_GENERATOR_OPTIONS if k in options}}
        if path is None:
            from pipeline.benchmarks.synthetic.benchmark import ensure_synthetic_dataset

            path = str(ensure_synthetic_dataset(**gen))
    return cls(path, **options)
