"""Quantization-only KV-cache baselines on an *uncompressed* model (the comparison of paper Sec. 5.2 / Table 4).

Two methods, registered in :data:`KV_QUANT_METHODS`:

* ``kivi`` — KIVI (arXiv 2402.02750): keys quantized **per channel** over groups of
  ``group_size`` consecutive tokens, values **per token** over groups of ``group_size``
  channels, the newest ``residual_length`` tokens kept in full precision.
* ``per_token`` — keys and values both per token over groups of ``group_size`` channels
  (what Palu does to its latents, applied to the full cache).

Decisions:

* Keys are quantized **after RoPE**, as KIVI stores them (a standard KV cache holds
  rotated keys, so that is what a drop-in quantized cache sees).
* Simulation, not storage: :func:`apply_kv_quant` swaps each attention module for a thin
  :class:`KVQuantAttention` that fake-quantizes the keys/values it attends over (the
  whole cache after ``Cache.update``). For full-sequence perplexity forwards without a
  cache this is exactly "the last ``residual_length`` tokens of each window stay full
  precision, all earlier ones are quantized". With a cache, the whole cache is
  re-quantized each step (exact at prefill; an approximation during decoding).
* Per-channel key groups are formed from token 0 onward; a trailing partial group is
  quantized over the tokens it has (no zero padding). Known caveat of the full-sequence
  simulation: a key group's scale/zero-point depend on all of its ``group_size`` tokens,
  so query ``t`` sees keys whose quantization grid was set partly by keys after ``t``
  (a streaming cache would still hold those tokens in the residual window). The effect
  is noise-like, not an oracle, but it is not bit-identical to streaming.

The quantizer is min-max per group with a real-valued minimum (``x̂ = code·scale + min``),
not :func:`palu.quant.quantize`, whose integer zero-point is clamped to [0, 2^bits − 1]
and so saturates groups that do not straddle zero — common for per-channel key groups.

Bytes (:func:`kv_bytes_per_token`) follow the layout of :mod:`palu.quant`: codes packed
``32 // bits`` per int32 (3-bit packs 10 per word), one scale and (asymmetric) one
minimum per group in the cache dtype, the residual window in the cache dtype, all
amortized over ``context_length`` tokens.
"""
from __future__ import annotations

import dataclasses
import enum
from typing import Callable, Optional

import torch
import torch.nn as nn

from .adapters import ModelAdapter, attention_shape, get_adapter
from .config import SUPPORTED_BITS, _JsonMixin
from .modules.attention import apply_rope
from .quant import codes_per_word


class KVQuantMethod(str, enum.Enum):
    KIVI = "kivi"
    PER_TOKEN = "per_token"


@dataclasses.dataclass(frozen=True)
class KVQuantConfig(_JsonMixin):
    """Quantization of a standard (full K/V) cache.

    ``group_size`` is tokens per key group for ``kivi`` and channels per group otherwise
    (values always; keys for ``per_token``). ``residual_length`` newest tokens stay in
    full precision (KIVI uses 32 or 128; 0 = quantize everything).
    """

    method: KVQuantMethod = KVQuantMethod.KIVI
    bits: int = 4
    group_size: int = 32
    residual_length: int = 128
    sym: bool = False
    clip_ratio: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", KVQuantMethod(self.method))
        if self.bits not in SUPPORTED_BITS:
            raise ValueError(f"KV quant bits must be one of {SUPPORTED_BITS}, got {self.bits} "
                             "(for no quantization, skip apply_kv_quant)")
        if self.group_size < 1:
            raise ValueError(f"KV quant group_size must be >= 1, got {self.group_size}")
        if self.residual_length < 0:
            raise ValueError(f"residual_length must be >= 0, got {self.residual_length}")
        if not 0.0 < self.clip_ratio <= 1.0:
            raise ValueError(f"clip_ratio must lie in (0, 1], got {self.clip_ratio}")


# ---------------------------------------------------------------------------- fake quantization
def _fake_quant_minmax(x: torch.Tensor, cfg: KVQuantConfig) -> torch.Tensor:
    """Quantize-dequantize (..., n_groups, g): one scale (and minimum) per group along the last dim.

    Asymmetric: ``x̂ = code · scale + min`` with the minimum stored as a real number, so a
    group that does not straddle zero (a biased key channel) keeps its full resolution.
    Scale and minimum are rounded to ``x.dtype`` first, as a cache in that dtype stores them.
    """
    qmax = (1 << cfg.bits) - 1
    g = x.float()
    if cfg.sym:
        half = 1 << (cfg.bits - 1)
        scale = (g.abs().amax(-1, keepdim=True) * cfg.clip_ratio / (half - 1)).clamp_min(1e-8).to(x.dtype).float()
        return ((torch.round(g / scale) + half).clamp(0, qmax) - half).mul(scale).to(x.dtype)
    hi, lo = g.amax(-1, keepdim=True), g.amin(-1, keepdim=True)
    span = (hi - lo) * cfg.clip_ratio  # clipping shrinks the range about its midpoint
    lo = (0.5 * (hi + lo) - 0.5 * span).to(x.dtype).float()
    scale = (span / qmax).clamp_min(1e-8).to(x.dtype).float()
    return (torch.round((g - lo) / scale).clamp(0, qmax) * scale + lo).to(x.dtype)


def fake_quant_groups(x: torch.Tensor, cfg: KVQuantConfig) -> torch.Tensor:
    """Quantize-dequantize (..., N) in groups of ``cfg.group_size`` along the last dim.

    The trailing partial group gets its own statistics over its real elements (no zero padding).
    """
    n = x.shape[-1]
    n_full = (n // cfg.group_size) * cfg.group_size
    parts = []
    if n_full:
        grouped = x[..., :n_full].unflatten(-1, (-1, cfg.group_size))  # (..., n_groups, group_size)
        parts.append(_fake_quant_minmax(grouped, cfg).flatten(-2))
    if n > n_full:
        parts.append(_fake_quant_minmax(x[..., n_full:].unsqueeze(-2), cfg).squeeze(-2))
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)


def _keys_per_channel(k: torch.Tensor, cfg: KVQuantConfig) -> torch.Tensor:
    """(B, H_kv, S, D): groups of ``group_size`` consecutive tokens per channel."""
    return fake_quant_groups(k.transpose(-1, -2), cfg).transpose(-1, -2)


KV_QUANT_METHODS: dict[str, tuple[Callable, Callable]] = {
    # method -> (key quantizer, value quantizer), each (B, H_kv, S_q, D) -> same
    "kivi": (_keys_per_channel, fake_quant_groups),
    "per_token": (fake_quant_groups, fake_quant_groups),
}


def fake_quant_kv(keys: torch.Tensor, values: torch.Tensor, cfg: KVQuantConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Simulate a quantized cache: keys/values (B, H_kv, S, D) -> same, newest ``residual_length`` tokens exact."""
    s = keys.shape[-2]
    n_q = max(0, s - cfg.residual_length)
    if n_q == 0:
        return keys, values
    quant_k, quant_v = KV_QUANT_METHODS[cfg.method.value]
    k = torch.cat([quant_k(keys[..., :n_q, :], cfg), keys[..., n_q:, :]], dim=-2)
    v = torch.cat([quant_v(values[..., :n_q, :], cfg), values[..., n_q:, :]], dim=-2)
    return k, v


# ---------------------------------------------------------------------------- attention wrapper
class KVQuantAttention(nn.Module):
    """Llama-family attention that fake-quantizes post-RoPE keys and values before attending.

    Keeps the wrapped module's q/k/v/o projections (same parameters, same state-dict names);
    the original module is kept aside for :func:`remove_kv_quant`.
    """

    def __init__(self, base: nn.Module, adapter: ModelAdapter, cfg: KVQuantConfig) -> None:
        super().__init__()
        adapter.adopt_attention(self, base)
        self.head_dim = base.head_dim
        self.num_key_value_groups = base.num_key_value_groups
        self.sliding_window = getattr(base, "sliding_window", None)
        self.k_proj = getattr(base, adapter.k_proj)
        self.v_proj = getattr(base, adapter.v_proj)
        self.kv_quant = cfg
        self._base = (base,)  # a tuple keeps the original out of this module's state dict

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: Optional[torch.Tensor] = None,
        past_key_values=None,
        **kwargs,
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
        from transformers.models.llama.modeling_llama import eager_attention_forward

        b, s_q, _ = hidden_states.shape
        q = self.q_proj(hidden_states).view(b, s_q, -1, self.head_dim).transpose(1, 2)  # (B, H, S_q, D)
        k = self.k_proj(hidden_states).view(b, s_q, -1, self.head_dim).transpose(1, 2)  # (B, H_kv, S_q, D)
        v = self.v_proj(hidden_states).view(b, s_q, -1, self.head_dim).transpose(1, 2)
        cos, sin = position_embeddings
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if past_key_values is not None:
            k, v = past_key_values.update(k, v, self.layer_idx)  # the cache itself stays full precision
        k, v = fake_quant_kv(k, v, self.kv_quant)
        if self.sliding_window is not None:
            kwargs.setdefault("sliding_window", self.sliding_window)
        attn = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        out, weights = attn(self, q, k, v, attention_mask, dropout=0.0, scaling=self.scaling, **kwargs)
        return self.o_proj(out.reshape(b, s_q, -1).contiguous()), weights


def apply_kv_quant(model: nn.Module, cfg: KVQuantConfig) -> nn.Module:
    """Swap every attention module of an uncompressed model for a :class:`KVQuantAttention`. In place.

    Applying again replaces the config (wrappers are not stacked).
    """
    adapter = get_adapter(model.config)
    for layer in adapter.layers(model):
        attn = getattr(layer, adapter.attention_attr)
        if isinstance(attn, KVQuantAttention):
            attn.kv_quant = cfg
            continue
        if not isinstance(getattr(attn, adapter.k_proj, None), nn.Linear):
            raise ValueError(f"{type(attn).__name__} has no nn.Linear {adapter.k_proj!r}: "
                             "KV quant baselines need an uncompressed model")
        setattr(layer, adapter.attention_attr, KVQuantAttention(attn, adapter, cfg))
    return model


def remove_kv_quant(model: nn.Module) -> nn.Module:
    """Put the original attention modules back (no-op where none was swapped). In place."""
    adapter = get_adapter(model.config)
    for layer in adapter.layers(model):
        attn = getattr(layer, adapter.attention_attr)
        if isinstance(attn, KVQuantAttention):
            setattr(layer, adapter.attention_attr, attn._base[0])
    return model


# ---------------------------------------------------------------------------- bytes
def _rows_bytes(n_rows: int, row_len: int, group_size: int, bits: int, meta: int, fp_bytes: int) -> int:
    """Bytes of ``n_rows`` rows of ``row_len`` codes, each row packed into int32 words with its own groups."""
    words = -(-row_len // codes_per_word(bits))
    groups = -(-row_len // group_size)
    return n_rows * (4 * words + meta * fp_bytes * groups)


def kv_bytes_per_token(model_config, cfg: Optional[KVQuantConfig], context_length: int, fp_bytes: int = 2) -> float:
    """Cache bytes per token, averaged over a context of ``context_length`` tokens.

    ``cfg=None`` is the unquantized cache: ``fp_bytes · 2 · L · H_kv · D``. Otherwise codes
    (packed per row: a token-head of D channels, or for KIVI keys a channel's run of tokens),
    scales, zero-points and the full-precision residual window, per layer.
    """
    if context_length < 1:
        raise ValueError(f"context_length must be >= 1, got {context_length}")
    shape = attention_shape(model_config)
    kv_elems = shape.num_kv_heads * shape.head_dim
    if cfg is None:
        return float(fp_bytes * 2 * shape.num_layers * kv_elems)
    n_fp = min(cfg.residual_length, context_length)
    n_q = context_length - n_fp
    meta = 1 if cfg.sym else 2
    per_token_rows = _rows_bytes(n_q * shape.num_kv_heads, shape.head_dim, cfg.group_size, cfg.bits, meta, fp_bytes)
    if cfg.method == KVQuantMethod.KIVI:
        keys = _rows_bytes(kv_elems, n_q, cfg.group_size, cfg.bits, meta, fp_bytes) if n_q else 0
    else:
        keys = per_token_rows
    residual = n_fp * 2 * kv_elems * fp_bytes
    return shape.num_layers * (keys + per_token_rows + residual) / context_length


def bits_per_kv_element(model_config, bytes_per_token: float) -> float:
    """Effective stored bits per original K/V element (16 for an fp16 cache)."""
    shape = attention_shape(model_config)
    return 8.0 * bytes_per_token / (2 * shape.num_layers * shape.num_kv_heads * shape.head_dim)


def nominal_bits_per_element(cfg: KVQuantConfig, fp_bytes: int = 2) -> float:
    """Bits per quantized element with packing and per-group scale/zero overhead (residual window excluded)."""
    meta = 1 if cfg.sym else 2
    return 32.0 / codes_per_word(cfg.bits) + meta * 8 * fp_bytes / cfg.group_size


__all__ = [
    "KVQuantAttention", "KVQuantConfig", "KVQuantMethod", "KV_QUANT_METHODS", "apply_kv_quant", "bits_per_kv_element",
    "fake_quant_groups", "fake_quant_kv", "kv_bytes_per_token", "nominal_bits_per_element", "remove_kv_quant",
]
