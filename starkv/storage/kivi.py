"""KIVI's group-wise asymmetric integer quantization (Liu et al., 2024, arXiv 2402.02750), in plain torch.

Keys are quantized per channel: the tokens are cut into groups of G and each (group, channel) gets its
own zero point (the minimum) and scale ``(max − min) / (2^b − 1)``. Values are quantized per token: each
token's channels are cut into groups of G. Codes are ``round((x − min) / scale)`` clamped to
``[0, 2^b − 1]`` (0 where a group is constant), packed ``8 / b`` to a byte along the channels (the
lowest bits hold the first channel). Scales and zero points are stored in the K/V dtype and the codes
are computed from those stored values, so dequantizing ``code·scale + min`` gives back each element to
within half a stored scale.

Written here rather than taken from transformers' ``QuantizedLayer`` backends: optimum-quanto needs the
per-channel key groups to divide ``heads × tokens`` (a compressed cache keeps ``int(L·b/100)`` tokens,
rarely a multiple) and has no 8-bit layer there, and HQQ groups the flattened tensor, not per channel.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from starkv.storage import KVQuant


@dataclass
class Quantized:
    """Packed codes (…, n, d·b/8) uint8 and the groups' scale and zero point (model dtype)."""

    codes: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.codes, self.scale, self.zero))


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """(…, n) codes in ``[0, 2^b)`` -> (…, n·b/8) uint8; code ``i`` of a byte sits at bits ``i·b … i·b + b − 1``."""
    per = 8 // bits
    if codes.shape[-1] % per:
        raise ValueError(f"cannot pack {codes.shape[-1]} codes of {bits} bits into whole bytes")
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=codes.device)
    grouped = codes.to(torch.uint8).reshape(*codes.shape[:-1], -1, per)
    return (grouped << shifts).sum(dim=-1, dtype=torch.int32).to(torch.uint8)


def unpack(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of :func:`pack`: (…, m) uint8 -> (…, m·8/b) uint8 codes."""
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=packed.device)
    mask = (1 << bits) - 1
    codes = (packed.unsqueeze(-1) >> shifts) & mask
    return codes.reshape(*packed.shape[:-1], -1)


def _codes(x: torch.Tensor, dim: int, bits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Min-max codes of ``x`` with one group per slice along ``dim``; scale and zero in ``x.dtype``."""
    xf = x.float()
    lo, hi = xf.amin(dim=dim, keepdim=True), xf.amax(dim=dim, keepdim=True)
    scale = ((hi - lo) / (2**bits - 1)).to(x.dtype)
    zero = lo.to(x.dtype)
    s = scale.float()
    q = torch.where(s > 0, (xf - zero.float()) / torch.where(s > 0, s, torch.ones_like(s)), torch.zeros_like(xf))
    return q.round().clamp(0, 2**bits - 1).to(torch.uint8), scale, zero


def quantize_keys(keys: torch.Tensor, quant: KVQuant) -> Quantized:
    """(1, H, n, d) keys, n a multiple of G: per-channel groups of G tokens; scale/zero (1, H, n/G, d)."""
    b, h, n, d = keys.shape
    g = quant.group_size
    if n % g:
        raise ValueError(f"keys are quantized in whole groups of {g} tokens, got {n}")
    codes, scale, zero = _codes(keys.reshape(b, h, n // g, g, d), 3, quant.bits)
    return Quantized(pack(codes.reshape(b, h, n, d), quant.bits), scale.squeeze(3), zero.squeeze(3))


def dequantize_keys(q: Quantized, quant: KVQuant, dtype: torch.dtype) -> torch.Tensor:
    b, h, groups, d = q.scale.shape
    codes = unpack(q.codes, quant.bits).reshape(b, h, groups, quant.group_size, d).float()
    out = codes * q.scale.float().unsqueeze(3) + q.zero.float().unsqueeze(3)
    return out.reshape(b, h, groups * quant.group_size, d).to(dtype)


def quantize_values(values: torch.Tensor, quant: KVQuant) -> Quantized:
    """(1, H, n, d) values: per-token groups of G channels (G must divide d); scale/zero (1, H, n, d/G)."""
    b, h, n, d = values.shape
    g = quant.group_size
    if d % g:
        raise ValueError(f"kv_quant.group_size {g} does not divide the head dimension {d}")
    codes, scale, zero = _codes(values.reshape(b, h, n, d // g, g), 4, quant.bits)
    return Quantized(pack(codes.reshape(b, h, n, d), quant.bits), scale.squeeze(4), zero.squeeze(4))


def dequantize_values(q: Quantized, quant: KVQuant, dtype: torch.dtype) -> torch.Tensor:
    b, h, n, groups = q.scale.shape
    codes = unpack(q.codes, quant.bits).reshape(b, h, n, groups, quant.group_size).float()
    out = codes * q.scale.float().unsqueeze(4) + q.zero.float().unsqueeze(4)
    return out.reshape(b, h, n, groups * quant.group_size).to(dtype)


def concat(a: Quantized | None, b: Quantized) -> Quantized:
    """Quantized tokens ``a`` followed by ``b`` (each group keeps its own scale and zero point)."""
    if a is None:
        return b
    return Quantized(torch.cat([a.codes, b.codes], dim=-2), torch.cat([a.scale, b.scale], dim=-2),
                     torch.cat([a.zero, b.zero], dim=-2))
