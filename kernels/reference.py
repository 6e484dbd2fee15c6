"""Readable fp32 PyTorch references for the kernels in this package (paper Sec. 3.2 and 3.4).

Everything here computes in float32 on whatever device its inputs live on and is written for
clarity, not speed: the tests compare each Triton kernel with the function of the same name
here, and ``run_latency_kernel.py`` times :func:`latent_decode_attention_ref` as the unfused
PyTorch path.

Notation: B batch, H query heads, H_kv KV heads, n_rep = H // H_kv, gs KV heads per group,
G = H_kv // gs groups, D head_dim, S cache slots, R latent channels summed over groups.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import torch

if TYPE_CHECKING:
    from .latent_attention import LatentView


def unpack_codes_ref(words: torch.Tensor, bits: int, length: int) -> torch.Tensor:
    """(..., W) int32 packed words -> (..., length) int64 codes.

    Code ``i`` sits in word ``i // vpw`` at bit offset ``(i % vpw) * bits``, vpw = 32 // bits
    (palu.quant layout; 3-bit packs 10 codes per word and wastes 2 bits).
    """
    vpw = 32 // bits
    idx = torch.arange(length, device=words.device)
    word = words.long()[..., idx // vpw] & 0xFFFFFFFF  # view the int32 bits as unsigned
    return (word >> ((idx % vpw) * bits)) & ((1 << bits) - 1)


def dequantize_latent_ref(view: "LatentView", length: int) -> torch.Tensor:
    """All S = S_q + S_fp slots of a :class:`LatentView` as one (B, S, length) float32 tensor.

    Slots [0, S_q) are dequantized, ``x = (code - zero) * scale`` with the scale/zero of quant
    group ``i // quant_group_size`` (zero = 2^(bits-1) when symmetric); slots [S_q, S) are the
    full-precision part, upcast.
    """
    parts = []
    if view.codes is not None and view.codes.shape[1] > 0:
        codes = unpack_codes_ref(view.codes, view.bits, length).float()  # (B, S_q, length)
        group = torch.arange(length, device=codes.device) // view.quant_group_size
        scale = view.scale.float()[..., group]
        if view.zero is None:
            zero = torch.full_like(scale, float(1 << (view.bits - 1)))
        else:
            zero = view.zero.float()[..., group]
        parts.append((codes - zero) * scale)
    if view.fp is not None and view.fp.shape[1] > 0:
        parts.append(view.fp[..., :length].float())
    return torch.cat(parts, dim=1)


def rope_cos_sin_ref(
    positions: torch.Tensor, inv_freq: torch.Tensor, rope_scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, S) positions -> cos, sin of shape (B, S, D), transformers' cat(freqs, freqs) layout."""
    freqs = positions.float()[..., None] * inv_freq.float()  # (B, S, D/2), fp32 as in transformers
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos() * rope_scale, emb.sin() * rope_scale


def rotate_half_ref(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def reconstruct_keys_ref(
    latent_k: torch.Tensor,
    k_up: torch.Tensor,
    k_offsets: torch.Tensor,
    head_group_size: int,
    k_bias: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """(B, S, R_k) key latents -> (B, S, H_kv, D) pre-RoPE keys, group by group.

    Group g holds KV heads [g*gs, (g+1)*gs); its keys are ``latent[..., off_g:off_g+r_g] @
    k_up[g, :, :r_g].T`` reshaped from gs*D to (gs, D).
    """
    num_groups = k_up.shape[0]
    head_dim = k_up.shape[1] // head_group_size
    offsets = k_offsets.tolist()
    keys = []
    for g in range(num_groups):
        lo, hi = offsets[g], offsets[g + 1]
        k_g = latent_k[..., lo:hi] @ k_up[g, :, : hi - lo].float().T  # (B, S, gs*D)
        keys.append(k_g.unflatten(-1, (head_group_size, head_dim)))
    keys_all = torch.cat(keys, dim=2)  # (B, S, H_kv, D)
    if k_bias is not None:
        keys_all = keys_all + k_bias.float().view(-1, head_dim)
    return keys_all


def latent_decode_scores_ref(
    q: torch.Tensor,
    latent_k: torch.Tensor,
    k_up: torch.Tensor,
    k_offsets: torch.Tensor,
    positions: torch.Tensor,
    kv_start: torch.Tensor,
    inv_freq: torch.Tensor,
    rope_scale: float,
    sm_scale: float,
    head_group_size: int,
    k_bias: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Masked pre-softmax scores (B, H, S) fp32: sm_scale * q . RoPE(reconstructed key)."""
    keys = reconstruct_keys_ref(latent_k, k_up, k_offsets, head_group_size, k_bias)  # (B, S, H_kv, D)
    cos, sin = rope_cos_sin_ref(positions, inv_freq, rope_scale)  # (B, S, D)
    keys = keys * cos[:, :, None] + rotate_half_ref(keys) * sin[:, :, None]
    n_rep = q.shape[1] // keys.shape[2]
    keys = keys.repeat_interleave(n_rep, dim=2)  # (B, S, H, D): query head h reads KV head h // n_rep
    scores = torch.einsum("bhd,bshd->bhs", q.float(), keys) * sm_scale
    slots = torch.arange(scores.shape[-1], device=scores.device)
    masked = slots[None, :] < kv_start.to(slots.device)[:, None]  # (B, S) left padding
    return scores.masked_fill(masked[:, None, :], float("-inf"))


def fold_queries_ref(
    q: torch.Tensor, k_up: torch.Tensor, head_group_size: int, k_bias: Optional[torch.Tensor] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Queries folded into the key up-projection (the math of :mod:`kernels.fold_scores`).

    Returns M (B, H, D, rk_max) and c (B, H, D) with, for slot latent x_s (its group's channels, zero
    padded to rk_max) and angles a_si = pos_s * inv_freq_i,
        q_h . RoPE(U x_s + bias) = sum_i cos(a_si) (M[i] . x_s + c[i]) + sin(a_si) (M[D/2+i] . x_s + c[D/2+i])
    (rope_scale multiplying cos and sin, sm_scale outside). Rows [0, D/2) are the cos part, [D/2, D) the sin part.
    """
    batch, num_heads, head_dim = q.shape
    half = head_dim // 2
    num_groups, _, rk_max = k_up.shape
    up = k_up.float().view(num_groups * head_group_size, head_dim, rk_max)  # (H_kv, D, r): U_j
    n_rep = num_heads // up.shape[0]
    up = up.repeat_interleave(n_rep, dim=0)  # (H, D, r)
    q1, q2 = q.float()[..., :half, None], q.float()[..., half:, None]  # (B, H, D/2, 1)
    u1, u2 = up[None, :, :half], up[None, :, half:]
    m = torch.cat((q1 * u1 + q2 * u2, q2 * u1 - q1 * u2), dim=2)
    if k_bias is None:
        return m, torch.zeros(batch, num_heads, head_dim, device=q.device)
    bias = k_bias.float().view(-1, head_dim).repeat_interleave(n_rep, dim=0)[None]  # (1, H, D)
    b1, b2, q1, q2 = bias[..., :half], bias[..., half:], q1[..., 0], q2[..., 0]
    return m, torch.cat((q1 * b1 + q2 * b2, q2 * b1 - q1 * b2), dim=2)


def latent_decode_attention_ref(
    q: torch.Tensor,
    k_latent: "LatentView",
    v_latent: "LatentView",
    k_up: torch.Tensor,
    k_offsets: torch.Tensor,
    v_offsets: torch.Tensor,
    positions: torch.Tensor,
    kv_start: torch.Tensor,
    inv_freq: torch.Tensor,
    rope_scale: float,
    sm_scale: float,
    head_group_size: int,
    k_bias: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Reference of :func:`kernels.latent_decode_attention`; same arguments, (B, H, rv_max) fp32 out.

    z[b, h, :rv_g] = softmax_s(score[b, h, s]) @ latent_v[b, s, v_off_g : v_off_g + rv_g], with g the
    group of query head h's KV head; columns rv_g..rv_max are zero.
    """
    k_offsets, v_offsets = k_offsets.cpu(), v_offsets.cpu()
    latent_k = dequantize_latent_ref(k_latent, int(k_offsets[-1]))
    latent_v = dequantize_latent_ref(v_latent, int(v_offsets[-1]))
    scores = latent_decode_scores_ref(
        q, latent_k, k_up, k_offsets, positions, kv_start, inv_freq, rope_scale, sm_scale, head_group_size, k_bias
    )
    probs = scores.softmax(dim=-1)  # (B, H, S)

    batch, num_heads, _ = q.shape
    num_groups = k_up.shape[0]
    heads_per_group = num_heads // num_groups
    v_ranks = (v_offsets[1:] - v_offsets[:-1]).tolist()
    out = torch.zeros(batch, num_heads, max(v_ranks), dtype=torch.float32, device=q.device)
    for g in range(num_groups):
        lo, rank = int(v_offsets[g]), v_ranks[g]
        heads = slice(g * heads_per_group, (g + 1) * heads_per_group)
        out[:, heads, :rank] = probs[:, heads] @ latent_v[:, :, lo : lo + rank]
    return out
