"""Fused decode attention over a low-rank latent KV cache (Palu, arXiv 2407.21118, Sec. 3.2 and 4).

One new token attends to S cached slots whose keys and values are stored as per-group latents.
For each (batch, head group, split of the slots) one program streams the group's key and value
latents once, for all query heads of the group:

1. key reconstruction: ``k = latent_k @ k_up_g^T`` for a block of slots, per KV head of the group,
   as two dots (one per RoPE half) so that ``rotate_half`` becomes elementwise;
2. RoPE at each slot's position, in registers (cos/sin computed once per block for the group);
3. scores ``q . k_rot`` for the group's query heads, online softmax (flash-decoding);
4. ``p @ latent_v``: values stay latent, their up-projection is folded into o_proj by the caller.

Quantized slots are unpacked from int32 words and dequantized in registers. Each program writes a
partial (max, sum, accumulator); :func:`_merge_splits_kernel` combines the splits.
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Optional

import torch
import triton
import triton.language as tl

from ._autotune import decode_configs, prune_decode_configs

LOG2E = 1.4426950408889634
SUPPORTED_BITS = (2, 3, 4, 8)
MIN_SPLIT_LEN = 128  # slots per split: a multiple of the largest autotuned block
MAX_SPLITS = 256


@dataclasses.dataclass
class LatentView:
    """Cached latents of one projection (keys or values) of one layer, batch of B sequences.

    Cache slots [0, S_q) are quantized (codes/scale/zero), slots [S_q, S_q + S_fp) are full
    precision (fp). Total slots S = S_q + S_fp. Either part may be absent (None / size 0).
    """

    fp: Optional[torch.Tensor]  # (B, S_fp, R) fp16/bf16/fp32; last dim contiguous, row stride may be > R
    codes: Optional[torch.Tensor]  # (B, S_q, ceil(R / vpw)) int32, vpw = 32 // bits codes per word
    scale: Optional[torch.Tensor]  # (B, S_q, ceil(R / quant_group_size)) same dtype as q
    zero: Optional[torch.Tensor]  # same shape as scale, or None for symmetric quantization
    bits: int = 16  # 2, 3, 4, 8 when codes is given
    quant_group_size: int = 32

    @property
    def num_quantized(self) -> int:
        return 0 if self.codes is None else int(self.codes.shape[1])

    @property
    def num_fp(self) -> int:
        return 0 if self.fp is None else int(self.fp.shape[1])


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def _load_latent_tile(
    fp_base, fp_stride_s,
    codes_base, codes_stride_s,
    scale_base, scale_stride_s,
    zero_base, zero_stride_s,
    slots, slot_mask, num_quantized, chan, chan_mask,
    IS_QUANT: tl.constexpr, BITS: tl.constexpr, QUANT_GROUP: tl.constexpr, HAS_ZERO: tl.constexpr,
    DTYPE: tl.constexpr,
):
    """(BLOCK, C) tile of latent channels ``chan`` at cache ``slots``; masked entries are 0."""
    mask = slot_mask[:, None] & chan_mask[None, :]
    if IS_QUANT:
        VPW: tl.constexpr = 32 // BITS
        rows = slots.to(tl.int64)[:, None]
        word = tl.load(codes_base + rows * codes_stride_s + (chan // VPW)[None, :], mask=mask, other=0)
        # Arithmetic shift may drag the sign bit in; the mask keeps only this code's bits.
        code = (word >> ((chan % VPW) * BITS)[None, :]) & ((1 << BITS) - 1)
        group = (chan // QUANT_GROUP)[None, :]
        scale = tl.load(scale_base + rows * scale_stride_s + group, mask=mask, other=0.0).to(tl.float32)
        if HAS_ZERO:
            zero = tl.load(zero_base + rows * zero_stride_s + group, mask=mask, other=0.0).to(tl.float32)
        else:
            zero = float(1 << (BITS - 1))
        x = (code.to(tl.float32) - zero) * scale
    else:
        rows = (slots - num_quantized).to(tl.int64)[:, None]
        x = tl.load(fp_base + rows * fp_stride_s + chan[None, :], mask=mask, other=0.0)
    return x.to(DTYPE)


@triton.jit
def _attend_block(
    m_i, l_i, acc,
    q1, q2, head_kv_local,
    k_fp, k_fp_ss, k_codes, k_codes_ss, k_scale, k_scale_ss, k_zero, k_zero_ss,
    v_fp, v_fp_ss, v_codes, v_codes_ss, v_scale, v_scale_ss, v_zero, v_zero_ss,
    up_base, up_stride_row, bias_base, pos_base, inv_freq, rope_scale, qk_scale,
    start, end, num_quantized, k_off, k_rank, v_off, v_rank, half_idx, half_mask,
    IS_QUANT: tl.constexpr, BITS: tl.constexpr, QUANT_GROUP: tl.constexpr,
    K_HAS_ZERO: tl.constexpr, V_HAS_ZERO: tl.constexpr, HAS_BIAS: tl.constexpr,
    HEAD_DIM: tl.constexpr, HALF_PAD: tl.constexpr, GS: tl.constexpr,
    RK_PAD: tl.constexpr, RV_PAD: tl.constexpr, HG_PAD: tl.constexpr, BLOCK_S: tl.constexpr,
    DTYPE: tl.constexpr,
):
    """One block of slots [start, min(start + BLOCK_S, end)): update (m_i, l_i, acc)."""
    HALF: tl.constexpr = HEAD_DIM // 2
    slots = start + tl.arange(0, BLOCK_S)
    slot_mask = slots < end
    r_idx = tl.arange(0, RK_PAD)
    v_idx = tl.arange(0, RV_PAD)
    latent_k = _load_latent_tile(
        k_fp, k_fp_ss, k_codes, k_codes_ss, k_scale, k_scale_ss, k_zero, k_zero_ss,
        slots, slot_mask, num_quantized, k_off + r_idx, r_idx < k_rank,
        IS_QUANT, BITS, QUANT_GROUP, K_HAS_ZERO, DTYPE,
    )  # (BLOCK_S, RK_PAD)
    latent_v = _load_latent_tile(
        v_fp, v_fp_ss, v_codes, v_codes_ss, v_scale, v_scale_ss, v_zero, v_zero_ss,
        slots, slot_mask, num_quantized, v_off + v_idx, v_idx < v_rank,
        IS_QUANT, BITS, QUANT_GROUP, V_HAS_ZERO, DTYPE,
    )  # (BLOCK_S, RV_PAD)

    # RoPE tables for the block, shared by all KV heads of the group: (BLOCK_S, HALF_PAD) fp32.
    pos = tl.load(pos_base + slots, mask=slot_mask, other=0).to(tl.float32)
    freqs = pos[:, None] * inv_freq[None, :]
    cos = tl.cos(freqs) * rope_scale
    sin = tl.sin(freqs) * rope_scale

    scores = tl.zeros((HG_PAD, BLOCK_S), dtype=tl.float32)
    up_mask = (r_idx < k_rank)[:, None] & half_mask[None, :]
    for jl in tl.static_range(GS):
        # k_up rows [jl*D, jl*D + D/2) and [jl*D + D/2, (jl+1)*D), loaded transposed: (RK_PAD, HALF_PAD).
        up1_ptrs = up_base + (jl * HEAD_DIM + half_idx)[None, :].to(tl.int64) * up_stride_row + r_idx[:, None]
        up1 = tl.load(up1_ptrs, mask=up_mask, other=0.0)
        up2 = tl.load(up1_ptrs + HALF * up_stride_row, mask=up_mask, other=0.0)
        k1 = tl.dot(latent_k, up1)  # (BLOCK_S, HALF_PAD) fp32, first half of the head's key
        k2 = tl.dot(latent_k, up2)
        if HAS_BIAS:
            k1 += tl.load(bias_base + jl * HEAD_DIM + half_idx, mask=half_mask, other=0.0).to(tl.float32)[None, :]
            k2 += tl.load(bias_base + jl * HEAD_DIM + HALF + half_idx, mask=half_mask, other=0.0).to(tl.float32)[None, :]
        # rotate_half(k) = cat(-k2, k1): both halves rotate elementwise.
        k1_rot = (k1 * cos - k2 * sin).to(DTYPE)
        k2_rot = (k2 * cos + k1 * sin).to(DTYPE)
        s = tl.dot(q1, tl.trans(k1_rot)) + tl.dot(q2, tl.trans(k2_rot))  # (HG_PAD, BLOCK_S)
        scores = tl.where((head_kv_local == jl)[:, None], s, scores)

    scores = tl.where(slot_mask[None, :], scores * qk_scale, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(scores, axis=1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with no valid slot yet
    alpha = tl.exp2(m_i - m_safe)
    p = tl.exp2(scores - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None] + tl.dot(p.to(DTYPE), latent_v)
    return m_new, l_i, acc


@triton.jit
def _attend_range(
    m_i, l_i, acc, q1, q2, head_kv_local,
    k_fp, k_fp_ss, k_codes, k_codes_ss, k_scale, k_scale_ss, k_zero, k_zero_ss,
    v_fp, v_fp_ss, v_codes, v_codes_ss, v_scale, v_scale_ss, v_zero, v_zero_ss,
    up_base, up_stride_row, bias_base, pos_base, inv_freq, rope_scale, qk_scale,
    lo, hi, num_quantized, k_off, k_rank, v_off, v_rank, half_idx, half_mask,
    IS_QUANT: tl.constexpr, BITS: tl.constexpr, QUANT_GROUP: tl.constexpr,
    K_HAS_ZERO: tl.constexpr, V_HAS_ZERO: tl.constexpr, HAS_BIAS: tl.constexpr,
    HEAD_DIM: tl.constexpr, HALF_PAD: tl.constexpr, GS: tl.constexpr,
    RK_PAD: tl.constexpr, RV_PAD: tl.constexpr, HG_PAD: tl.constexpr, BLOCK_S: tl.constexpr,
    DTYPE: tl.constexpr, USE_WHILE: tl.constexpr,
):
    """Blocks of slots [lo, hi). A `for` loop lets the compiler pipeline the loads; the
    interpreter (numpy >= 2.3) cannot take run-time range bounds, so it walks a `while` loop."""
    if USE_WHILE:
        start = lo
        while start < hi:
            m_i, l_i, acc = _attend_block(
                m_i, l_i, acc, q1, q2, head_kv_local,
                k_fp, k_fp_ss, k_codes, k_codes_ss, k_scale, k_scale_ss, k_zero, k_zero_ss,
                v_fp, v_fp_ss, v_codes, v_codes_ss, v_scale, v_scale_ss, v_zero, v_zero_ss,
                up_base, up_stride_row, bias_base, pos_base, inv_freq, rope_scale, qk_scale,
                start, hi, num_quantized, k_off, k_rank, v_off, v_rank, half_idx, half_mask,
                IS_QUANT, BITS, QUANT_GROUP, K_HAS_ZERO, V_HAS_ZERO, HAS_BIAS,
                HEAD_DIM, HALF_PAD, GS, RK_PAD, RV_PAD, HG_PAD, BLOCK_S, DTYPE,
            )
            start += BLOCK_S
    else:
        for start in range(lo, hi, BLOCK_S):
            m_i, l_i, acc = _attend_block(
                m_i, l_i, acc, q1, q2, head_kv_local,
                k_fp, k_fp_ss, k_codes, k_codes_ss, k_scale, k_scale_ss, k_zero, k_zero_ss,
                v_fp, v_fp_ss, v_codes, v_codes_ss, v_scale, v_scale_ss, v_zero, v_zero_ss,
                up_base, up_stride_row, bias_base, pos_base, inv_freq, rope_scale, qk_scale,
                start, hi, num_quantized, k_off, k_rank, v_off, v_rank, half_idx, half_mask,
                IS_QUANT, BITS, QUANT_GROUP, K_HAS_ZERO, V_HAS_ZERO, HAS_BIAS,
                HEAD_DIM, HALF_PAD, GS, RK_PAD, RV_PAD, HG_PAD, BLOCK_S, DTYPE,
            )
    return m_i, l_i, acc


@triton.jit
def _latent_decode_split_kernel(
    q_ptr, q_sb, q_sh,
    k_fp_ptr, k_fp_sb, k_fp_ss, k_codes_ptr, k_codes_sb, k_codes_ss,
    k_scale_ptr, k_scale_sb, k_scale_ss, k_zero_ptr, k_zero_sb, k_zero_ss,
    v_fp_ptr, v_fp_sb, v_fp_ss, v_codes_ptr, v_codes_sb, v_codes_ss,
    v_scale_ptr, v_scale_sb, v_scale_ss, v_zero_ptr, v_zero_sb, v_zero_ss,
    up_ptr, up_sg, up_sr, k_offsets_ptr, v_offsets_ptr, bias_ptr,
    pos_ptr, pos_sb, kv_start_ptr, inv_freq_ptr,
    part_m_ptr, part_l_ptr, part_acc_ptr,
    rope_scale, qk_scale, num_heads, num_quantized, num_slots, split_len, num_splits, rv_max, tune_bucket,
    HEAD_DIM: tl.constexpr, HALF_PAD: tl.constexpr, GS: tl.constexpr, N_REP: tl.constexpr,
    RK_PAD: tl.constexpr, RV_PAD: tl.constexpr, HG_PAD: tl.constexpr,
    HAS_QUANT: tl.constexpr, HAS_FP: tl.constexpr, BITS: tl.constexpr, QUANT_GROUP: tl.constexpr,
    K_HAS_ZERO: tl.constexpr, V_HAS_ZERO: tl.constexpr, HAS_BIAS: tl.constexpr, IS_FP32: tl.constexpr,
    USE_WHILE: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """Grid (num_splits, G, B): partial softmax state of one split for all query heads of a group."""
    split = tl.program_id(0)
    g = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    HALF: tl.constexpr = HEAD_DIM // 2
    HG: tl.constexpr = GS * N_REP  # query heads per group
    DTYPE = q_ptr.dtype.element_ty

    k_off = tl.load(k_offsets_ptr + g)
    k_rank = tl.load(k_offsets_ptr + g + 1) - k_off
    v_off = tl.load(v_offsets_ptr + g)
    v_rank = tl.load(v_offsets_ptr + g + 1) - v_off

    # Query heads of the group, split into RoPE halves: (HG_PAD, HALF_PAD) each.
    t_idx = tl.arange(0, HG_PAD)
    half_idx = tl.arange(0, HALF_PAD)
    half_mask = half_idx < HALF
    head = g * HG + t_idx
    q_rows = q_ptr + b * q_sb + head.to(tl.int64)[:, None] * q_sh
    q_mask = (t_idx < HG)[:, None] & half_mask[None, :]
    q1 = tl.load(q_rows + half_idx[None, :], mask=q_mask, other=0.0)
    q2 = tl.load(q_rows + HALF + half_idx[None, :], mask=q_mask, other=0.0)
    head_kv_local = t_idx // N_REP
    inv_freq = tl.load(inv_freq_ptr + half_idx, mask=half_mask, other=0.0)

    up_base = up_ptr + g.to(tl.int64) * up_sg
    bias_base = bias_ptr + g * GS * HEAD_DIM
    pos_base = pos_ptr + b * pos_sb
    k_fp = k_fp_ptr + b * k_fp_sb
    k_codes = k_codes_ptr + b * k_codes_sb
    k_scale = k_scale_ptr + b * k_scale_sb
    k_zero = k_zero_ptr + b * k_zero_sb
    v_fp = v_fp_ptr + b * v_fp_sb
    v_codes = v_codes_ptr + b * v_codes_sb
    v_scale = v_scale_ptr + b * v_scale_sb
    v_zero = v_zero_ptr + b * v_zero_sb

    m_i = tl.full((HG_PAD,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((HG_PAD,), dtype=tl.float32)
    acc = tl.zeros((HG_PAD, RV_PAD), dtype=tl.float32)

    lo = split * split_len
    hi = tl.minimum(lo + split_len, num_slots)
    lo = tl.maximum(lo, tl.load(kv_start_ptr + b))  # left padding: skip masked slots entirely
    # Quantized slots first, then full-precision slots; each block is wholly in one part.
    if HAS_QUANT:
        m_i, l_i, acc = _attend_range(
            m_i, l_i, acc, q1, q2, head_kv_local,
            k_fp, k_fp_ss, k_codes, k_codes_ss, k_scale, k_scale_ss, k_zero, k_zero_ss,
            v_fp, v_fp_ss, v_codes, v_codes_ss, v_scale, v_scale_ss, v_zero, v_zero_ss,
            up_base, up_sr, bias_base, pos_base, inv_freq, rope_scale, qk_scale,
            lo, tl.minimum(hi, num_quantized), num_quantized, k_off, k_rank, v_off, v_rank, half_idx, half_mask,
            True, BITS, QUANT_GROUP, K_HAS_ZERO, V_HAS_ZERO, HAS_BIAS,
            HEAD_DIM, HALF_PAD, GS, RK_PAD, RV_PAD, HG_PAD, BLOCK_S, DTYPE, USE_WHILE,
        )
    if HAS_FP:
        m_i, l_i, acc = _attend_range(
            m_i, l_i, acc, q1, q2, head_kv_local,
            k_fp, k_fp_ss, k_codes, k_codes_ss, k_scale, k_scale_ss, k_zero, k_zero_ss,
            v_fp, v_fp_ss, v_codes, v_codes_ss, v_scale, v_scale_ss, v_zero, v_zero_ss,
            up_base, up_sr, bias_base, pos_base, inv_freq, rope_scale, qk_scale,
            tl.maximum(lo, num_quantized), hi, num_quantized, k_off, k_rank, v_off, v_rank, half_idx, half_mask,
            False, BITS, QUANT_GROUP, K_HAS_ZERO, V_HAS_ZERO, HAS_BIAS,
            HEAD_DIM, HALF_PAD, GS, RK_PAD, RV_PAD, HG_PAD, BLOCK_S, DTYPE, USE_WHILE,
        )

    # Partial state of (b, head, split); m is in log2 units (scores were scaled by log2(e)).
    row = (b * num_heads + head.to(tl.int64)) * num_splits + split  # (HG_PAD,)
    row_mask = t_idx < HG
    tl.store(part_m_ptr + row, m_i, mask=row_mask)
    tl.store(part_l_ptr + row, l_i, mask=row_mask)
    v_idx = tl.arange(0, RV_PAD)
    acc_ptrs = part_acc_ptr + row[:, None] * rv_max + v_idx[None, :]
    tl.store(acc_ptrs, acc, mask=row_mask[:, None] & (v_idx < rv_max)[None, :])


_latent_decode_split_tuned = triton.autotune(
    configs=decode_configs(),
    key=["HEAD_DIM", "GS", "N_REP", "RK_PAD", "RV_PAD", "HAS_QUANT", "HAS_FP", "BITS", "IS_FP32", "tune_bucket"],
    prune_configs_by={"early_config_prune": prune_decode_configs},
)(_latent_decode_split_kernel)


@triton.jit
def _merge_splits_kernel(
    part_m_ptr, part_l_ptr, part_acc_ptr, out_ptr, num_splits, rv_max,
    SPLITS_PAD: tl.constexpr, BLOCK_RV: tl.constexpr,
):
    """Grid (B*H, cdiv(rv_max, BLOCK_RV)): z = sum_i 2^(m_i - M) acc_i / sum_i 2^(m_i - M) l_i."""
    row = tl.program_id(0).to(tl.int64)
    col = tl.program_id(1) * BLOCK_RV + tl.arange(0, BLOCK_RV)
    split = tl.arange(0, SPLITS_PAD)
    split_mask = split < num_splits
    m = tl.load(part_m_ptr + row * num_splits + split, mask=split_mask, other=float("-inf"))
    l = tl.load(part_l_ptr + row * num_splits + split, mask=split_mask, other=0.0)
    m_max = tl.max(m, axis=0)
    weight = tl.exp2(m - tl.where(m_max == float("-inf"), 0.0, m_max))  # empty splits weigh 0
    acc_ptrs = part_acc_ptr + (row * num_splits + split)[:, None] * rv_max + col[None, :]
    acc = tl.load(acc_ptrs, mask=split_mask[:, None] & (col < rv_max)[None, :], other=0.0)
    out = tl.sum(acc * weight[:, None], axis=0) / tl.sum(l * weight, axis=0)
    tl.store(out_ptr + row * rv_max + col, out, mask=col < rv_max)


def choose_num_splits(num_slots: int, batch_groups: int, num_sms: int) -> int:
    """Splits of the slot axis so that B*G*splits programs fill the GPU about twice over,
    without splits shorter than MIN_SPLIT_LEN slots."""
    max_useful = max(1, triton.cdiv(num_slots, MIN_SPLIT_LEN))
    wanted = triton.cdiv(2 * num_sms, batch_groups)
    return max(1, min(wanted, max_useful, MAX_SPLITS))


def _view_args(view: LatentView, dummy: torch.Tensor) -> list:
    """(ptr, stride_b, stride_s) for fp, codes, scale, zero; absent parts point at a dummy."""
    args: list = []
    for t in (view.fp, view.codes, view.scale, view.zero):
        if t is None or t.shape[1] == 0:
            args += [dummy, 0, 0]
        else:
            args += [t, t.stride(0), t.stride(1)]
    return args


def _check_view(view: LatentView, name: str, batch: int, rank: int, dtype: torch.dtype) -> None:
    if view.fp is not None and view.fp.shape[1] > 0:
        fp = view.fp
        assert fp.dim() == 3 and fp.shape[0] == batch, f"{name}.fp must be (B, S_fp, R), got {tuple(fp.shape)}"
        assert fp.shape[2] >= rank, f"{name}.fp has {fp.shape[2]} channels, offsets need {rank}"
        assert fp.stride(2) == 1, f"{name}.fp: last dim must be contiguous"
        assert fp.dtype == dtype, f"{name}.fp dtype {fp.dtype} != q dtype {dtype}"
    if view.codes is not None and view.codes.shape[1] > 0:
        assert view.bits in SUPPORTED_BITS, f"{name}.bits must be one of {SUPPORTED_BITS}, got {view.bits}"
        codes, scale = view.codes, view.scale
        words = triton.cdiv(rank, 32 // view.bits)
        assert codes.dtype == torch.int32 and codes.dim() == 3 and codes.shape[0] == batch, (
            f"{name}.codes must be (B, S_q, W) int32, got {tuple(codes.shape)} {codes.dtype}"
        )
        assert codes.shape[2] >= words and codes.stride(2) == 1, f"{name}.codes needs {words} contiguous words"
        assert scale is not None and scale.shape[:2] == codes.shape[:2], f"{name}.scale must be (B, S_q, n_groups)"
        assert scale.shape[2] >= triton.cdiv(rank, view.quant_group_size) and scale.stride(2) == 1
        assert scale.dtype == dtype, f"{name}.scale dtype {scale.dtype} != q dtype {dtype}"
        if view.zero is not None:
            assert view.zero.shape == scale.shape and view.zero.dtype == dtype and view.zero.stride(2) == 1


def latent_decode_attention(
    q: torch.Tensor,
    k_latent: LatentView,
    v_latent: LatentView,
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
    *,
    num_splits: Optional[int] = None,
) -> torch.Tensor:
    """Decode attention of one new token over latent keys/values; returns z (B, H, rv_max) fp32.

    Shapes (B batch, H query heads, H_kv KV heads, gs = head_group_size, G = H_kv // gs groups,
    D head_dim, S = S_q + S_fp cache slots, R_k / R_v latent channels summed over groups):
      q          (B, H, D) fp16/bf16/fp32, RoPE applied; last dim contiguous.
      k_latent   LatentView of (B, S, R_k) key latents: slots [0, S_q) quantized, [S_q, S) in fp.
      v_latent   LatentView of (B, S, R_v) value latents, same S_q and S_fp as k_latent.
      k_up       (G, gs*D, rk_max) key up-projection, dtype of q, last dim contiguous; zero beyond
                 each group's rank (the kernel also masks it).
      k_offsets  (G+1,) int32 cumulative key-latent offsets; v_offsets likewise for values.
      positions  (B, S) int32 RoPE position of each slot (contiguous last dim).
      kv_start   (B,) int32: slots < kv_start[b] are masked out (left padding).
      inv_freq   (D/2,) fp32 RoPE inverse frequencies; rope_scale multiplies cos and sin.
      k_bias     optional (H_kv*D,) key bias added before RoPE.
      num_splits optional override of the number of splits of the slot axis (tests, benchmarks).

    Query head h reads KV head h // (H // H_kv) of group (h // (H // H_kv)) // gs. Output column
    c >= rv_g of a head in group g is 0. D must be even and <= 256; S >= 1.
    Runs under TRITON_INTERPRET=1 on CPU tensors (a fixed small config instead of autotuning).
    """
    assert q.dim() == 3 and q.stride(2) == 1, f"q must be (B, H, D) with contiguous last dim, got {tuple(q.shape)}"
    batch, num_heads, head_dim = q.shape
    dtype, device = q.dtype, q.device
    assert dtype in (torch.float16, torch.bfloat16, torch.float32), f"unsupported q dtype {dtype}"
    assert head_dim % 2 == 0 and 2 <= head_dim <= 256, f"head_dim must be even and <= 256, got {head_dim}"
    assert k_up.dim() == 3 and k_up.dtype == dtype and k_up.stride(2) == 1, "k_up must be (G, gs*D, rk_max) of q's dtype"
    num_groups, gs = k_up.shape[0], head_group_size
    assert k_up.shape[1] == gs * head_dim, f"k_up dim 1 must be gs*D = {gs * head_dim}, got {k_up.shape[1]}"
    num_kv_heads = num_groups * gs
    assert num_heads % num_kv_heads == 0, f"H={num_heads} is not a multiple of H_kv={num_kv_heads}"
    n_rep = num_heads // num_kv_heads
    assert k_offsets.shape == (num_groups + 1,) and v_offsets.shape == (num_groups + 1,), "offsets must be (G+1,)"
    assert k_offsets.dtype == torch.int32 and v_offsets.dtype == torch.int32, "offsets must be int32"
    k_off_host, v_off_host = k_offsets.tolist(), v_offsets.tolist()
    k_ranks = [b - a for a, b in zip(k_off_host, k_off_host[1:])]
    v_ranks = [b - a for a, b in zip(v_off_host, v_off_host[1:])]
    assert min(k_ranks) >= 0 and min(v_ranks) >= 0, "offsets must be non-decreasing"
    assert max(k_ranks) <= k_up.shape[2], f"a key rank {max(k_ranks)} exceeds k_up's rk_max {k_up.shape[2]}"
    rv_max = max(v_ranks)
    num_quantized, num_fp = k_latent.num_quantized, k_latent.num_fp
    assert (v_latent.num_quantized, v_latent.num_fp) == (num_quantized, num_fp), "k and v latents differ in S_q/S_fp"
    num_slots = num_quantized + num_fp
    assert num_slots >= 1, "empty cache"
    _check_view(k_latent, "k_latent", batch, k_off_host[-1], dtype)
    _check_view(v_latent, "v_latent", batch, v_off_host[-1], dtype)
    if num_quantized:
        assert (k_latent.bits, k_latent.quant_group_size) == (v_latent.bits, v_latent.quant_group_size), (
            "k and v latents must share bits and quant_group_size"
        )
    assert positions.shape == (batch, num_slots) and positions.dtype == torch.int32 and positions.stride(1) == 1, (
        f"positions must be (B, S) = {(batch, num_slots)} int32, got {tuple(positions.shape)} {positions.dtype}"
    )
    assert kv_start.shape == (batch,) and kv_start.dtype == torch.int32, "kv_start must be (B,) int32"
    assert inv_freq.shape == (head_dim // 2,) and inv_freq.dtype == torch.float32, "inv_freq must be (D/2,) fp32"
    if k_bias is not None:
        assert k_bias.shape == (num_kv_heads * head_dim,) and k_bias.is_contiguous(), "k_bias must be (H_kv*D,)"
    for t in (k_up, k_offsets, v_offsets, positions, kv_start, inv_freq):
        assert t.device == device, "all tensors must be on q's device"

    interpret = _interpreting() or device.type == "cpu"
    if num_splits is None:
        num_sms = 4 if interpret else torch.cuda.get_device_properties(device).multi_processor_count
        num_splits = choose_num_splits(num_slots, batch * num_groups, num_sms)
    split_len = triton.cdiv(triton.cdiv(num_slots, num_splits), MIN_SPLIT_LEN) * MIN_SPLIT_LEN
    if interpret:
        split_len = triton.cdiv(num_slots, num_splits)
    num_splits = triton.cdiv(num_slots, split_len)

    part_m = torch.empty(batch, num_heads, num_splits, dtype=torch.float32, device=device)
    part_l = torch.empty_like(part_m)
    part_acc = torch.empty(batch, num_heads, num_splits, rv_max, dtype=torch.float32, device=device)
    out = torch.empty(batch, num_heads, rv_max, dtype=torch.float32, device=device)

    pad = lambda n: max(16, triton.next_power_of_2(n))  # noqa: E731 (tl.dot needs >= 16)
    consts = dict(
        HEAD_DIM=head_dim, HALF_PAD=pad(head_dim // 2), GS=gs, N_REP=n_rep,
        RK_PAD=pad(max(k_ranks)), RV_PAD=pad(rv_max), HG_PAD=pad(gs * n_rep),
        HAS_QUANT=num_quantized > 0, HAS_FP=num_fp > 0,
        BITS=k_latent.bits if num_quantized else 16, QUANT_GROUP=k_latent.quant_group_size,
        K_HAS_ZERO=k_latent.zero is not None, V_HAS_ZERO=v_latent.zero is not None,
        HAS_BIAS=k_bias is not None, IS_FP32=dtype == torch.float32, USE_WHILE=interpret,
    )
    args = [
        q, q.stride(0), q.stride(1),
        *_view_args(k_latent, q), *_view_args(v_latent, q),
        k_up, k_up.stride(0), k_up.stride(1), k_offsets, v_offsets, k_bias if k_bias is not None else q,
        positions, positions.stride(0), kv_start, inv_freq,
        part_m, part_l, part_acc,
        float(rope_scale), float(sm_scale) * LOG2E, num_heads, num_quantized, num_slots, split_len, num_splits,
        rv_max, int(math.log2(split_len)),
    ]
    grid = (num_splits, num_groups, batch)
    if interpret:
        _latent_decode_split_kernel[grid](*args, **consts, BLOCK_S=16, num_warps=4, num_stages=1)
    else:
        _latent_decode_split_tuned[grid](*args, **consts)
    block_rv = min(64, pad(rv_max))
    _merge_splits_kernel[(batch * num_heads, triton.cdiv(rv_max, block_rv))](
        part_m, part_l, part_acc, out, num_splits, rv_max,
        SPLITS_PAD=triton.next_power_of_2(num_splits), BLOCK_RV=block_rv,
    )
    return out
