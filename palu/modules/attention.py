"""PaluAttention: Llama-family attention with low-rank K/V (paper Sec. 3, Fig. 2).

Two cache modes run the same factors:

* ``simulate`` — keys/values are rebuilt from (fake-quantized) latents right away and
  cached in full, through the model's own attention function. This is what the
  published code does; accuracy scripts may use it.
* ``latent`` (default) — only pre-RoPE latents are cached (:mod:`palu.modules.cache`).
  Each step rebuilds keys, applies RoPE at each key's stored position and attends;
  values stay latent: attention weights are applied to the latents and the value
  up-projection is applied after the weighted sum (folded into o_proj when that does
  not make o_proj larger). On CUDA, single-token decode dispatches to the fused Triton
  kernel (:mod:`kernels.latent_attention`), which also applies RoPE to the query and,
  without the fold, the value up-projection (no separate launches for either).

Shapes: x (B, S_q, d_model); q (B, H, S_q, D); latents (B, S, R); z (B, H, S_q, r_v_max).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..adapters import AttentionShape, ModelAdapter
from ..config import Backend, CacheMode, LatentQuantConfig
from ..quant import fake_quant
from .cache import PaluLatentLayer, latent_layer_for
from .lowrank import LowRankProjection


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, heads, S, D); cos/sin (B, S, D) — transformers' rotate-half convention."""
    return x * cos.unsqueeze(1) + rotate_half(x) * sin.unsqueeze(1)


class PaluAttention(nn.Module):
    """Drop-in replacement of a Llama/Mistral/Qwen2 attention module (see module docstring)."""

    def __init__(
        self,
        base: nn.Module,
        adapter: ModelAdapter,
        shape: AttentionShape,
        k_ranks: Sequence[int],
        v_ranks: Sequence[int],
        head_group_size: int,
        rotary: nn.Module,
    ) -> None:
        super().__init__()
        adapter.adopt_attention(self, base)
        self.head_dim = shape.head_dim
        self.num_heads = shape.num_heads
        self.num_kv_heads = shape.num_kv_heads
        self.num_key_value_groups = shape.n_rep  # name read by transformers' attention functions
        self.head_group_size = head_group_size
        k_lin, v_lin = getattr(base, adapter.k_proj), getattr(base, adapter.v_proj)
        kw = {"dtype": k_lin.weight.dtype, "device": k_lin.weight.device}
        group_out = head_group_size * shape.head_dim
        self.k_proj = LowRankProjection(shape.hidden_size, k_ranks, group_out, bias=k_lin.bias is not None, **kw)
        self.v_proj = LowRankProjection(shape.hidden_size, v_ranks, group_out, bias=v_lin.bias is not None, **kw)
        self._rotary = (rotary,)  # a tuple keeps the shared module out of this module's state dict
        self.cache_mode = CacheMode.LATENT
        self.backend = Backend.AUTO
        self.fused_kernel = "auto"  # Triton backend: a key of kernels.FUSED_KERNELS (which decode path runs)
        self.quant = LatentQuantConfig()
        self.fold_value_up: Optional[bool] = None  # None: fold when o_proj does not grow (r_v_max <= D)
        self._folded: Optional[tuple[tuple, torch.Tensor, Optional[torch.Tensor]]] = None

    # ------------------------------------------------------------------ helpers
    @property
    def rotary(self) -> nn.Module:
        return self._rotary[0]

    def _head_up(self, proj: LowRankProjection) -> torch.Tensor:
        """(H, D, r_max): the up-projection rows that serve each query head."""
        per_kv = proj.up.view(self.num_kv_heads, self.head_dim, proj.rank_max)
        if self.num_key_value_groups == 1:
            return per_kv  # a view: no per-step copy of the up-projection
        return per_kv.repeat_interleave(self.num_key_value_groups, dim=0)

    def _head_bias(self, proj: LowRankProjection) -> Optional[torch.Tensor]:
        if proj.bias is None:
            return None
        return proj.bias.view(self.num_kv_heads, self.head_dim).repeat_interleave(self.num_key_value_groups, 0).flatten()

    def _should_fold(self) -> bool:
        return self.v_proj.rank_max <= self.head_dim if self.fold_value_up is None else self.fold_value_up

    def _folded_o_proj(self) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """W_o · U_v per head: (d_model, H·r_v_max), and o bias + W_o·b_v; cached until weights change."""
        w_o, up = self.o_proj.weight, self.v_proj.up
        key = (w_o.data_ptr(), w_o._version, up.data_ptr(), up._version, w_o.dtype, w_o.device)
        if self._folded is None or self._folded[0] != key:
            with torch.no_grad():
                w64 = w_o.double().view(w_o.shape[0], self.num_heads, self.head_dim)
                fold = torch.einsum("ohd,hdr->ohr", w64, self._head_up(self.v_proj).double()).flatten(1)
                bias = self.o_proj.bias.double() if self.o_proj.bias is not None else None
                b_v = self._head_bias(self.v_proj)
                if b_v is not None:
                    extra = w_o.double() @ b_v.double()
                    bias = extra if bias is None else bias + extra
            self._folded = (key, fold.to(w_o.dtype), None if bias is None else bias.to(w_o.dtype))
        return self._folded[1], self._folded[2]

    def _output(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, H, S_q, r_v_max) latent-space attention output -> (B, S_q, d_model)."""
        b, _, s_q, _ = z.shape
        if self._should_fold():
            weight, bias = self._folded_o_proj()
            return F.linear(z.transpose(1, 2).reshape(b, s_q, -1), weight, bias)
        return self._project_values(torch.einsum("bhqr,hdr->bqhd", z, self._head_up(self.v_proj)).reshape(b, s_q, -1))

    def _project_values(self, v: torch.Tensor) -> torch.Tensor:
        """Values (B, S_q, H·D) without their bias -> o_proj(v + b_v) (B, S_q, d_model)."""
        b_v = self._head_bias(self.v_proj)
        return self.o_proj(v + b_v if b_v is not None else v)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: Optional[torch.Tensor] = None,
        past_key_values=None,
        **kwargs,
    ) -> tuple[torch.Tensor, None]:
        b, s_q, _ = hidden_states.shape
        cos, sin = position_embeddings
        q = self.q_proj(hidden_states).view(b, s_q, self.num_heads, self.head_dim).transpose(1, 2)  # before RoPE
        k_latent = self.k_proj.down(hidden_states)  # (B, S_q, R_k)
        v_latent = self.v_proj.down(hidden_states)  # (B, S_q, R_v)
        if self.cache_mode == CacheMode.SIMULATE:
            out = self._forward_simulate(apply_rope(q, cos, sin), k_latent, v_latent, cos, sin, attention_mask,
                                         past_key_values, **kwargs)
        else:
            out = self._forward_latent(q, (cos, sin), k_latent, v_latent, attention_mask, past_key_values,
                                       kwargs.get("position_ids"))
        return out, None

    def _forward_simulate(self, q, k_latent, v_latent, cos, sin, attention_mask, past_key_values, **kwargs):
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
        from transformers.models.llama.modeling_llama import eager_attention_forward

        b, _, s_q, _ = q.shape
        k = self.k_proj.reconstruct(fake_quant(k_latent, self.quant))
        v = self.v_proj.reconstruct(fake_quant(v_latent, self.quant))
        k = apply_rope(k.view(b, s_q, self.num_kv_heads, self.head_dim).transpose(1, 2), cos, sin)
        v = v.view(b, s_q, self.num_kv_heads, self.head_dim).transpose(1, 2)
        if past_key_values is not None:
            k, v = past_key_values.update(k, v, self.layer_idx)
        attn = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        kwargs.pop("position_ids", None)
        out, _ = attn(self, q, k, v, attention_mask, dropout=0.0, scaling=self.scaling, **kwargs)
        return self.o_proj(out.reshape(b, s_q, -1).contiguous())

    def _forward_latent(self, q, rope, k_latent, v_latent, attention_mask, past_key_values, position_ids):
        """q (B, H, S_q, D) before RoPE; rope: (cos, sin) (B, S_q, D) of the new tokens' positions."""
        b, _, s_q, _ = q.shape
        if past_key_values is not None:
            layer = latent_layer_for(past_key_values, self.layer_idx, self.quant)
        else:  # no cache: the same storage semantics for this forward only
            layer = PaluLatentLayer(self.quant)
        past = layer.get_seq_length()
        if position_ids is None:
            position_ids = torch.arange(past, past + s_q, device=q.device)[None]
        layer.append_latents(k_latent, v_latent, position_ids.expand(b, s_q))
        if s_q > 1 or layer.kv_start is None:
            layer.kv_start = _prefix_padding_start(attention_mask, b, layer.get_seq_length(), q.device)
        if self._use_triton(q, layer):
            return self.decode_output(q, rope, layer)
        z = self._torch_latent_attention(apply_rope(q, *rope), layer, attention_mask)
        return self._output(z)

    def decode_output(self, q: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                       layer: "PaluLatentLayer | DecodeSlots") -> torch.Tensor:
        """The Triton decode step's output (B, 1, d_model) from q (B, H, 1, D) before RoPE, over a cache layer or
        :class:`DecodeSlots`: the kernels rotate q, and without the o_proj fold apply the value up-projection in
        their merge (no RoPE or einsum launches here)."""
        if self._should_fold():
            return self._output(self._triton_decode(q, layer, rope))
        b = q.shape[0]
        return self._project_values(self._triton_decode(q, layer, rope, v_up=self.v_proj.up).reshape(b, 1, -1))

    def _use_triton(self, q: torch.Tensor, layer: PaluLatentLayer) -> bool:
        if self.backend == Backend.TORCH or q.shape[2] != 1 or layer.kv_start is None:
            return False
        if self.backend == Backend.TRITON:
            if not q.is_cuda:
                raise RuntimeError("backend 'triton' needs CUDA tensors; use backend 'torch' or 'auto' on CPU")
            return True
        return q.is_cuda

    def _torch_latent_attention(self, q, layer: PaluLatentLayer, attention_mask) -> torch.Tensor:
        """Reference path: rebuild all keys, RoPE at stored positions, attend over value latents."""
        b, _, s_q, _ = q.shape
        keys = self.k_proj.reconstruct(layer.k.materialize(q.dtype))  # (B, S, H_kv·D)
        s = keys.shape[1]
        keys = keys.view(b, s, self.num_kv_heads, self.head_dim).transpose(1, 2)
        cos_k, sin_k = self.rotary(keys, layer.positions.view().long())
        keys = apply_rope(keys, cos_k, sin_k)
        v_groups = self.v_proj.split_groups(layer.v.materialize(q.dtype))  # (B, S, G, r_max)
        values = v_groups.repeat_interleave(self.head_group_size, dim=2).transpose(1, 2)  # (B, H_kv, S, r_max)
        mask, causal = _sdpa_mask(attention_mask, s_q, s, q.device)
        return F.scaled_dot_product_attention(
            q, keys, values, attn_mask=mask, is_causal=causal, scale=self.scaling,
            enable_gqa=self.num_key_value_groups > 1,
        )

    def _triton_decode(self, q, layer: "PaluLatentLayer | DecodeSlots",
                       rope: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
                       v_up: Optional[torch.Tensor] = None) -> torch.Tensor:
        """q (B, H, 1, D), rotated unless ``rope`` (cos, sin (B, 1, D)) is given -> z (B, H, 1, r_v_max), or with
        ``v_up`` (the value up-projection) the values (B, H, 1, D)."""
        from kernels import FUSED_KERNELS, latent_decode_attention

        slots = layer if isinstance(layer, DecodeSlots) else self._layer_slots(layer)
        z = latent_decode_attention(
            q[:, :, 0], slots.k, slots.v, self.k_proj.up, self.k_proj.offsets, self.v_proj.offsets,
            slots.positions, slots.kv_start, self.rotary.inv_freq.float(),
            float(getattr(self.rotary, "attention_scaling", 1.0)), self.scaling, self.head_group_size,
            k_bias=self.k_proj.bias, out_dtype=q.dtype, **FUSED_KERNELS[self.fused_kernel],
            q_cos=None if rope is None else rope[0][:, 0], q_sin=None if rope is None else rope[1][:, 0], v_up=v_up,
        )
        return z.unsqueeze(2)

    def _layer_slots(self, layer: PaluLatentLayer) -> "DecodeSlots":
        from kernels import LatentView

        def view(store) -> LatentView:
            quantized = store.quantized()
            return LatentView(
                fp=store.fp.view(),
                codes=quantized.codes if quantized else None,
                scale=quantized.scale if quantized else None,
                zero=quantized.zero if quantized else None,
                bits=self.quant.bits if quantized else 16,
                quant_group_size=self.quant.group_size,
            )

        return DecodeSlots(view(layer.k), view(layer.v), layer.positions.view(), layer.kv_start)


@dataclasses.dataclass
class DecodeSlots:
    """What one decode call reads of a layer's cache: key / value latents (kernels.LatentView of (B, S, R)), the
    slots' RoPE positions (B, S) int32 and the first attended slot per sequence kv_start (B,) int32. A
    :class:`PaluLatentLayer` gives them (``_layer_slots``); :mod:`palu.graph_decode` builds them over its own buffers."""

    k: Any
    v: Any
    positions: torch.Tensor
    kv_start: torch.Tensor


def _sdpa_mask(attention_mask, s_q: int, s: int, device) -> tuple[Optional[torch.Tensor], bool]:
    """Turn transformers' 4-D mask (bool keep-mask or additive float) into SDPA's arguments."""
    if attention_mask is not None:
        return attention_mask[..., :s], False
    if s_q == 1:
        return None, False
    if s_q == s:
        return None, True
    # Chunked prefill after earlier tokens: query i sits at absolute slot s - s_q + i.
    keep = torch.ones(s_q, s, dtype=torch.bool, device=device).tril(diagonal=s - s_q)
    return keep, False


def _prefix_padding_start(attention_mask, batch: int, s: int, device) -> Optional[torch.Tensor]:
    """(B,) first attended slot if the mask is left padding only (else None: torch path handles it)."""
    if attention_mask is None:
        return torch.zeros(batch, dtype=torch.int32, device=device)
    last = attention_mask[:, 0, -1, :s]
    valid = last if last.dtype == torch.bool else last > torch.finfo(last.dtype).min / 2
    valid = valid.expand(batch, s)
    start = (valid.int().cumsum(-1) == 0).sum(-1)
    if not bool((valid.sum(-1) == s - start).all()):
        return None
    return start.to(torch.int32)
