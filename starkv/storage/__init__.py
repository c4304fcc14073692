"""Storage options of a unit: how the K/V kept at prefill are stored (head layout, integer quantization).

Both are storage options of a unit, not of a method: eviction picks the tokens as before, then the kept
K/V are written to the cache in the chosen form. ``KVStorage()`` (the default) is the project's GQA
storage in the model dtype: per KV head, full precision, exactly what a unit without options stores.

* ``layout="per_query_head"``: the storage rule of the published GUI-KV / STaR-KV drivers, which repeat
  K/V to every query head before selecting, so each of the H query heads keeps its own rows
  (``H / H_kv`` times the bytes of a per-KV-head cache at the same budget). Decode tokens are repeated
  too, and attention then treats the layer as having no KV groups (``starkv.hook``).
* ``quant=KVQuant(bits)``: the kept K/V are stored as KIVI does (arXiv 2402.02750): keys quantized per
  channel in groups of ``group_size`` tokens, values per token in groups of ``group_size`` channels,
  asymmetric (min-max) integer codes with one scale and zero point per group, and the most recent tokens
  in full precision (the residual).

This module has no torch or transformers import: the pipeline validates job configs with it.
``starkv.storage.kivi`` holds the quantization arithmetic, ``starkv.storage.layers`` the cache layers, and
``starkv.storage.ragged`` the per-KV-head storage of head-adaptive methods (KV heads of different lengths).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

#: head layouts of the stored cache
LAYOUTS = ("per_kv_head", "per_query_head")
#: code widths the KIVI storage (``starkv.storage.kivi``) packs: 4, 2 or 1 codes per byte
QUANT_BITS = (2, 4, 8)
#: what the unit label shows for a non-default layout (``snapkv@20+pqh``)
LAYOUT_TAGS = {"per_query_head": "+pqh"}
#: the storage tags (:attr:`KVStorage.tag`) a unit's compressor name may end with
STORAGE_TAG = re.compile(r"(?:\+(?:pqh|int\d+))+$")


def split_storage_tag(name: str) -> tuple[str, str]:
    """``"snapkv+int4"`` -> ``("snapkv", "+int4")``; ``("snapkv", "")`` without a storage tag."""
    match = STORAGE_TAG.search(name)
    return (name, "") if match is None else (name[: match.start()], match.group())


@dataclass(frozen=True)
class KVQuant:
    """KIVI integer quantization of the kept K/V (defaults: the KIVI paper's G = 32, R = 128).

    Parameters
    ----------
    bits : int
        Code width b of every quantized element: 2, 4 or 8.
    group_size : int
        G: tokens per key group (per channel) and channels per value group (per token); it must divide
        the model's head dimension.
    residual_length : int
        R: the most recent tokens kept in full precision; a multiple of G (0: keys keep only the last
        incomplete group of fewer than G tokens, values keep none).
    """

    bits: int
    group_size: int = 32
    residual_length: int = 128

    def __post_init__(self) -> None:
        for name in ("bits", "group_size", "residual_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name}: expected an integer, got {value!r}")
        if self.bits not in QUANT_BITS:
            raise ValueError(f"bits: {self.bits} is not supported by the KIVI storage (starkv.storage.kivi); "
                             f"supported: {', '.join(map(str, QUANT_BITS))}")
        if self.group_size < 1:
            raise ValueError(f"group_size: must be >= 1, got {self.group_size}")
        if self.residual_length < 0 or self.residual_length % self.group_size:
            raise ValueError(f"residual_length: must be a multiple of group_size ({self.group_size}) and >= 0, "
                             f"got {self.residual_length}")

    @classmethod
    def from_dict(cls, data: Any) -> KVQuant:
        """Parse a job's ``kv_quant`` mapping; ValueError names the field (``bits: ...``)."""
        if not isinstance(data, dict):
            raise ValueError(f"expected a mapping with 'bits', got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown field(s) {unknown}; allowed: {sorted(known)}")
        if "bits" not in data:
            raise ValueError("bits: required (2, 4 or 8)")
        return cls(**data)

    @property
    def key_flush(self) -> int:
        """Residual keys are quantized once this many have gathered (R, or one group when R = 0)."""
        return self.residual_length or self.group_size


@dataclass(frozen=True)
class KVStorage:
    """The storage options of a unit (see the module docstring); the default stores as before."""

    layout: str = "per_kv_head"
    quant: KVQuant | None = None

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"kv_layout: {self.layout!r} is not a layout; allowed: {', '.join(LAYOUTS)}")

    @property
    def default(self) -> bool:
        return self.layout == "per_kv_head" and self.quant is None

    @property
    def per_query_head(self) -> bool:
        return self.layout == "per_query_head"

    @property
    def tag(self) -> str:
        """The suffix of the unit label: ``+pqh`` for the drivers' layout, then ``+int<b>`` ("" by default)."""
        quant = f"+int{self.quant.bits}" if self.quant is not None else ""
        return LAYOUT_TAGS.get(self.layout, "") + quant

    def params(self) -> dict[str, Any]:
        """The non-default options, flat (for MLflow params); empty for the default storage."""
        out: dict[str, Any] = {}
        if self.layout != "per_kv_head":
            out["kv_layout"] = self.layout
        if self.quant is not None:
            out.update({f"kv_quant.{k}": v for k, v in dataclasses.asdict(self.quant).items()})
        return out


def kivi_split(length: int, quant: KVQuant) -> tuple[int, int]:
    """``(n_k, n_v)``: how many of ``length`` stored tokens are quantized, keys and values (KIVI's rule).

    Keys: all but the last ``length mod F`` tokens, F = :attr:`KVQuant.key_flush` (a multiple of G, so
    keys are quantized in whole groups). Values: all but the last R tokens.
    """
    flush = quant.key_flush
    return length - length % flush, max(0, length - quant.residual_length)


def kivi_bytes(heads: int, length: int, head_dim: int, element_size: int, quant: KVQuant) -> int:
    """Bytes one layer's KIVI storage holds for ``length`` tokens (codes, scales and zero points, residual).

    ``n_k·d·b/8 + 2·(n_k/G)·d·e`` (keys) ``+ n_v·d·b/8 + 2·n_v·(d/G)·e`` (values) ``+ (2L − n_k − n_v)·d·e``
    (residual), per head, with e the element size of the model dtype (scales and zero points are stored in it).
    """
    n_k, n_v = kivi_split(length, quant)
    g, b, d, e = quant.group_size, quant.bits, head_dim, element_size
    keys = n_k * d * b // 8 + 2 * (n_k // g) * d * e
    values = n_v * d * b // 8 + 2 * n_v * (d // g) * e
    residual = (2 * length - n_k - n_v) * d * e
    return heads * (keys + values + residual)
