"""Latent KV cache on the transformers cache-layer API (the memory saving of Palu).

A :class:`PaluLatentLayer` holds, per layer, the *pre-RoPE* key latents (B, S, R_k),
the value latents (B, S, R_v) and the RoPE position of every slot (B, S) — keys are
rebuilt and rotated at their own positions on every step. With quantization on,
all but the newest ``residual_length`` tokens are stored packed (:mod:`palu.quant`)
with their scales and zero-points (KIVI-style full-precision recent window).

Buffers grow in chunks, not by ``torch.cat`` each step, so decoding does not copy the
whole cache per token. :meth:`PaluLatentLayer.nbytes` counts what is held.

Attention modules install this layer into whatever :class:`~transformers.Cache` they
are handed (``DynamicCache`` from ``generate()`` included), see :func:`latent_layer_for`.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from ..config import LatentQuantConfig
from ..quant import QuantizedLatent, codes_per_word, dequantize, quantize

_MIN_GROW = 256  # slots added at least per reallocation; bounds the slack to a few hundred tokens


class _Growable:
    """(B, n, *tail) tensor with spare capacity along dim 1."""

    def __init__(self) -> None:
        self.buf: Optional[torch.Tensor] = None
        self.length = 0
        self.reserved = 0  # capacity the first allocation (and any growth) takes at least

    def append(self, x: torch.Tensor) -> None:
        self.extend(x.shape[0], x.shape[1], x.shape[2:], x.dtype, x.device).copy_(x)

    def extend(self, batch: int, n_new: int, tail: tuple, dtype: torch.dtype, device) -> torch.Tensor:
        """Add ``n_new`` slots and return them, (batch, n_new, *tail), a view for the caller to fill."""
        if self.buf is None:
            self.buf = torch.empty((batch, max(n_new, self.reserved), *tail), dtype=dtype, device=device)
        elif self.length + n_new > self.buf.shape[1]:
            cap = self.length + n_new + max(_MIN_GROW, (self.length + n_new) // 8)
            cap = max(cap, self.reserved)
            grown = self.buf.new_empty((self.buf.shape[0], cap, *self.buf.shape[2:]))
            grown[:, : self.length] = self.buf[:, : self.length]
            self.buf = grown
        view = self.buf[:, self.length : self.length + n_new]
        self.length += n_new
        return view

    def drop_front(self, n: int) -> torch.Tensor:
        """Remove and return the oldest ``n`` slots (a copy)."""
        assert self.buf is not None
        out = self.buf[:, :n].clone()
        self.buf[:, : self.length - n] = self.buf[:, n : self.length].clone()
        self.length -= n
        return out

    def view(self) -> Optional[torch.Tensor]:
        return None if self.buf is None else self.buf[:, : self.length]

    def select(self, index: torch.Tensor) -> None:
        if self.buf is not None:
            self.buf = self.buf.index_select(0, index.to(self.buf.device))

    def nbytes(self, used_only: bool) -> int:
        if self.buf is None:
            return 0
        per_slot = self.buf[:, :1].numel() * self.buf.element_size()
        return per_slot * (self.length if used_only else self.buf.shape[1])


# Bit widths whose kernel was checked bit-identical on a GPU (H200, tests/kernels/test_quantize.py).
KERNEL_QUANT_BITS = (2, 3, 4, 8)


def quantize_into_views(x: torch.Tensor, cfg: LatentQuantConfig, codes: torch.Tensor, scale: torch.Tensor,
                        zero: Optional[torch.Tensor]) -> None:
    """Quantize x (B, n, R) into preallocated views (codes, scale, zero: layouts of palu.quant).

    On CUDA one Triton launch writes straight into them (kernels.quantize, bit-identical to
    palu.quant.quantize, which takes ~25 launches and fp32 copies of x) for KERNEL_QUANT_BITS;
    otherwise palu.quant.
    """
    if x.is_cuda and cfg.bits in KERNEL_QUANT_BITS:
        try:
            from kernels.quantize import quantize_into
        except ImportError:  # no triton: the torch path below
            pass
        else:
            quantize_into(x, cfg.bits, cfg.group_size, cfg.sym, cfg.clip_ratio, codes, scale, zero)
            return
    q = quantize(x, cfg)
    codes.copy_(q.codes)
    scale.copy_(q.scale)
    if zero is not None:
        zero.copy_(q.zero)


@dataclasses.dataclass
class LatentStore:
    """One projection's latents: quantized part (oldest slots) then full-precision part."""

    quant: LatentQuantConfig
    fp: _Growable = dataclasses.field(default_factory=_Growable)
    codes: _Growable = dataclasses.field(default_factory=_Growable)
    scale: _Growable = dataclasses.field(default_factory=_Growable)
    zero: _Growable = dataclasses.field(default_factory=_Growable)
    rank: int = 0

    def append(self, latent: torch.Tensor) -> None:
        """latent: (B, n, R)."""
        self.rank = latent.shape[-1]
        overflow = self.fp.length + latent.shape[1] - self.quant.residual_length
        if not self.quant.enabled or overflow <= 0:
            self.fp.append(latent)
            return
        # The oldest `overflow` slots of (fp window ++ latent) are quantized; only the newest
        # residual_length slots enter the fp window. Appending a whole prompt to the window first
        # would leave it with the prompt's capacity for good (measured: +80% memory at 32K, 4-bit).
        from_fp = min(overflow, self.fp.length)
        n_new = overflow - from_fp
        parts = ([self.fp.drop_front(from_fp)] if from_fp else []) + ([latent[:, :n_new]] if n_new else [])
        self._append_quantized(parts[0] if len(parts) == 1 else torch.cat(parts, dim=1))
        self.fp.append(latent[:, n_new:])

    def _append_quantized(self, x: torch.Tensor) -> None:
        """Quantize x (B, n, R) onto the end of the packed part."""
        cfg, (b, n, r) = self.quant, x.shape
        words, groups = -(-r // codes_per_word(cfg.bits)), -(-r // cfg.group_size)
        codes = self.codes.extend(b, n, (words,), torch.int32, x.device)
        scale = self.scale.extend(b, n, (groups,), x.dtype, x.device)
        zero = None if cfg.sym else self.zero.extend(b, n, (groups,), x.dtype, x.device)
        quantize_into_views(x, cfg, codes, scale, zero)

    @property
    def n_quantized(self) -> int:
        return self.codes.length

    def quantized(self) -> Optional[QuantizedLatent]:
        if self.codes.length == 0:
            return None
        zero = self.zero.view() if self.zero.length else None
        return QuantizedLatent(self.codes.view(), self.scale.view(), zero, self.quant.bits, self.rank)  # type: ignore[arg-type]

    def materialize(self, dtype: torch.dtype) -> torch.Tensor:
        """All slots as one (B, S, R) tensor (torch reference path)."""
        parts = []
        q = self.quantized()
        if q is not None:
            parts.append(dequantize(q, self.quant.group_size, dtype))
        fp = self.fp.view()
        if fp is not None and fp.shape[1]:
            parts.append(fp)
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def parts(self) -> list[_Growable]:
        return [self.fp, self.codes, self.scale, self.zero]

    def reserve(self, max_len: int) -> None:
        """Allocate room for ``max_len`` slots at once (quantized: the packed part; the fp window stays small)."""
        for part in ([self.codes, self.scale, self.zero] if self.quant.enabled else [self.fp]):
            part.reserved = max_len


class PaluLatentLayer(CacheLayerMixin):
    """Cache layer holding Palu latents instead of keys/values (shapes in module docstring)."""

    is_sliding = False
    is_compileable = False

    def __init__(self, quant: LatentQuantConfig | None = None, max_len: Optional[int] = None, **kwargs) -> None:
        super().__init__()
        self.quant = quant or LatentQuantConfig()
        self.k = LatentStore(self.quant)
        self.v = LatentStore(self.quant)
        self.positions = _Growable()
        self.kv_start: Optional[torch.Tensor] = None  # (B,) first non-padding slot, set at prefill
        self.palu_max_len = max_len
        if max_len:
            self.reserve(max_len)

    def reserve(self, max_len: int) -> None:
        """Size the buffers for ``max_len`` slots when they are first allocated (and never grow below it):
        one allocation per buffer instead of a chain of growing ones, whose freed blocks fragment
        the CUDA allocator's pool when a cache fills up in chunks."""
        self.k.reserve(max_len)
        self.v.reserve(max_len)
        self.positions.reserved = max_len

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):  # type: ignore[override]
        raise TypeError("PaluLatentLayer stores latents; call append_latents() (PaluAttention does)")

    def append_latents(self, k_latent: torch.Tensor, v_latent: torch.Tensor, positions: torch.Tensor) -> None:
        """k_latent (B, n, R_k), v_latent (B, n, R_v), positions (B, n) int."""
        if not self.is_initialized:
            self.lazy_initialization(k_latent, v_latent)
        self.k.append(k_latent)
        self.v.append(v_latent)
        b, n = k_latent.shape[:2]
        # one copy that also casts (generate's position ids are int64): not a cast, then a copy
        self.positions.extend(b, n, (), torch.int32, k_latent.device).copy_(positions)

    def get_seq_length(self) -> int:
        return self.positions.length

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        self.__init__(self.quant, self.palu_max_len)  # type: ignore[misc]

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.batch_select_indices(beam_idx)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        for part in self.k.parts() + self.v.parts() + [self.positions]:
            part.select(indices)
        if self.kv_start is not None:
            self.kv_start = self.kv_start.index_select(0, indices.to(self.kv_start.device))

    def offload(self) -> None:
        raise NotImplementedError("offloading a Palu latent cache is not supported")

    def prefetch(self) -> None:
        raise NotImplementedError("offloading a Palu latent cache is not supported")

    def nbytes(self, used_only: bool = True) -> int:
        """Bytes of latents, scales, zero-points, residual window and positions.

        ``used_only=False`` counts the allocated capacity (what the tensors hold in memory).
        """
        parts = self.k.parts() + self.v.parts() + [self.positions]
        return sum(p.nbytes(used_only) for p in parts)


class PaluCache(Cache):
    """An empty cache whose layers Palu attention modules create on first use.

    ``model.generate()`` works without it (Palu installs its layers into the
    ``DynamicCache`` that generate creates); pass one to hold a reference for byte counts, or
    with ``max_len`` (prompt + new tokens) to allocate each layer's buffers once at that size.
    """

    def __init__(self, max_len: Optional[int] = None) -> None:
        super().__init__(layers=[])
        if max_len is not None and max_len < 1:
            raise ValueError(f"max_len must be >= 1 (prompt + new tokens), got {max_len}")
        self.palu_max_len = max_len

    def nbytes(self, used_only: bool = True) -> int:
        return cache_nbytes(self, used_only)


def latent_layer_for(cache: Cache, layer_idx: int, quant: LatentQuantConfig) -> PaluLatentLayer:
    """Return the :class:`PaluLatentLayer` at ``layer_idx``, installing one in place of an empty layer."""
    from transformers.cache_utils import DynamicLayer

    while len(cache.layers) <= layer_idx:
        cache.layers.append(DynamicLayer())
    layer = cache.layers[layer_idx]
    if isinstance(layer, PaluLatentLayer):
        return layer
    if layer.get_seq_length() != 0:
        raise ValueError(
            f"cache layer {layer_idx} already holds full keys/values ({type(layer).__name__}); "
            "a Palu model in latent mode needs an empty cache (or set cache_mode='simulate')"
        )
    cache.layers[layer_idx] = PaluLatentLayer(quant, max_len=getattr(cache, "palu_max_len", None))
    return cache.layers[layer_idx]  # type: ignore[return-value]


def cache_nbytes(cache: Cache, used_only: bool = True) -> int:
    """Bytes held by any cache: Palu layers report their own; standard layers count keys+values."""
    total = 0
    for layer in cache.layers:
        if isinstance(layer, PaluLatentLayer):
            total += layer.nbytes(used_only)
        elif getattr(layer, "keys", None) is not None and layer.keys.numel():
            total += layer.keys.numel() * layer.keys.element_size() + layer.values.numel() * layer.values.element_size()
    return total
