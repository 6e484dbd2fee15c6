"""Latent quantization (paper Sec. 3.4): per-token groups, integer codes packed in int32.

One quantizer serves both paths: the simulation path calls :func:`fake_quant`
(= ``dequantize(quantize(x))``) and the latent cache stores :func:`quantize`'s output,
so the two agree bit for bit.

Layout of a quantized latent ``x`` of shape (..., R):
  * ``codes``: (..., ceil(R / vpw)) int32, ``vpw = 32 // bits`` codes per word, code ``i``
    at bit offset ``(i % vpw) · bits`` of word ``i // vpw`` (3-bit packs 10 per word).
  * ``scale``: (..., ceil(R / group_size)) in the latent dtype.
  * ``zero``:  same shape as ``scale``, real-valued (−group min / scale), asymmetric only;
    symmetric uses ``2^(bits-1)``.
  ``x̂ = (code − zero) · scale``.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch

from .config import LatentQuantConfig


def codes_per_word(bits: int) -> int:
    return 32 // bits


@dataclasses.dataclass
class QuantizedLatent:
    """Packed latent; see module docstring for the layout."""

    codes: torch.Tensor
    scale: torch.Tensor
    zero: Optional[torch.Tensor]
    bits: int
    length: int  # R, the unpacked last-dim size

    def nbytes(self) -> int:
        total = self.codes.numel() * self.codes.element_size() + self.scale.numel() * self.scale.element_size()
        if self.zero is not None:
            total += self.zero.numel() * self.zero.element_size()
        return total


def _grouped(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """(..., R) -> (..., n_groups, group_size), zero padded on the right."""
    r = x.shape[-1]
    pad = (-r) % group_size
    if pad:
        x = torch.nn.functional.pad(x, (0, pad))
    return x.reshape(*x.shape[:-1], -1, group_size)


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """(..., R) integer codes in [0, 2^bits) -> (..., ceil(R / vpw)) int32."""
    vpw = codes_per_word(bits)
    r = codes.shape[-1]
    pad = (-r) % vpw
    c = codes.to(torch.int64)
    if pad:
        c = torch.nn.functional.pad(c, (0, pad))
    c = c.reshape(*c.shape[:-1], -1, vpw)
    shifts = torch.arange(vpw, device=c.device, dtype=torch.int64) * bits
    words = (c << shifts).sum(-1)
    # Words may use bit 31: wrap into int32's range explicitly.
    words = torch.where(words >= 2**31, words - 2**32, words)
    return words.to(torch.int32)


def unpack_codes(words: torch.Tensor, bits: int, length: int) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: (..., W) int32 -> (..., length) int32 codes."""
    vpw = codes_per_word(bits)
    shifts = torch.arange(vpw, device=words.device, dtype=torch.int32) * bits
    codes = (words[..., None] >> shifts) & ((1 << bits) - 1)
    return codes.reshape(*words.shape[:-1], -1)[..., :length]


def scale_floor(dtype: torch.dtype) -> float:
    """Smallest scale: 1e-8, or the dtype's smallest normal number when that is larger (fp16: 6.1e-5).
    A constant group (e.g. all-zero latents) has range 0; a 1e-8 scale would round to 0 in fp16 and
    its zero-point and codes to NaN."""
    return max(1e-8, torch.finfo(dtype).tiny)


def _div(x: torch.Tensor, divisor: int) -> torch.Tensor:
    """x / divisor correctly rounded on every device. PyTorch's CUDA division by a Python number
    multiplies by its rounded reciprocal (on an H200, 1 of ~100k 3-bit group scales came out one ulp
    off and rounded to another fp16 scale than the CPU's and the kernel's); a divisor tensor on x's device
    takes the IEEE division, as the CPU and the quantization kernel do (full_like: no host copy, so
    it stays capturable in a CUDA graph)."""
    return x / torch.full_like(x, float(divisor))


def quantize(x: torch.Tensor, cfg: LatentQuantConfig) -> QuantizedLatent:
    """Quantize (..., R) per token in groups of ``cfg.group_size`` channels.

    Scales are rounded to ``x.dtype`` *before* codes are computed, so that
    dequantization from storage reproduces exactly what fake-quant computed.
    """
    bits, r = cfg.bits, x.shape[-1]
    g = _grouped(x.float(), cfg.group_size)
    qmax = (1 << bits) - 1
    # A trailing partial group is zero-padded; its statistics must come from its real channels only.
    real = _grouped(torch.ones(r, device=x.device), cfg.group_size).bool()  # (n_groups, group_size)
    floor = scale_floor(x.dtype)
    if cfg.sym:
        half = 1 << (bits - 1)
        amax = g.abs().amax(-1) * cfg.clip_ratio
        scale = _div(amax, half - 1 if bits > 1 else 1).clamp_min(floor).to(x.dtype).float()
        codes = (torch.round(g / scale[..., None]) + half).clamp(0, qmax)
        zero = None
    else:
        gmax = g.masked_fill(~real, -torch.inf).amax(-1) * cfg.clip_ratio
        gmin = g.masked_fill(~real, torch.inf).amin(-1) * cfg.clip_ratio
        scale = _div(gmax - gmin, qmax).clamp_min(floor).to(x.dtype).float()
        # A real-valued zero-point (= −min/scale, like storing the group minimum): an integer one
        # clamped to [0, qmax] would saturate every group that does not straddle zero.
        zero = (-gmin / scale).to(x.dtype)
        codes = torch.round(g / scale[..., None] + zero.float()[..., None]).clamp(0, qmax)
    codes = codes.reshape(*x.shape[:-1], -1)[..., :r]
    return QuantizedLatent(pack_codes(codes, bits), scale.to(x.dtype), zero, bits, r)


def dequantize(q: QuantizedLatent, group_size: int, dtype: torch.dtype) -> torch.Tensor:
    """(..., R) in ``dtype`` from a :class:`QuantizedLatent`."""
    codes = unpack_codes(q.codes, q.bits, q.length).float()
    g = _grouped(codes, group_size)
    zero = q.zero.float() if q.zero is not None else torch.full_like(q.scale, 1 << (q.bits - 1), dtype=torch.float32)
    deq = (g - zero[..., None]) * q.scale.float()[..., None]
    return deq.reshape(*codes.shape[:-1], -1)[..., : q.length].to(dtype)


def fake_quant(x: torch.Tensor, cfg: LatentQuantConfig) -> torch.Tensor:
    """Quantize-dequantize (..., R); identity when ``cfg.bits == 16``."""
    if not cfg.enabled:
        return x
    return dequantize(quantize(x, cfg), cfg.group_size, x.dtype)


def bits_per_element(cfg: LatentQuantConfig, scale_bytes: int = 2) -> float:
    """Stored bits per latent element, scales/zero-points and int32 packing waste included."""
    if not cfg.enabled:
        return 8.0 * scale_bytes
    packed = 32.0 / codes_per_word(cfg.bits)
    meta = (1 if cfg.sym else 2) * 8 * scale_bytes / cfg.group_size
    return packed + meta
