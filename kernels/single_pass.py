"""Single-pass decode attention with the query folded into the key up-projection (n_rep = 1).

The fold path of :mod:`kernels.latent_attention` runs two kernels one after the other: the score
kernel (:mod:`kernels.fold_scores`, bound by its MMAs) writes (B, H, S) fp32 scores, then the value
kernel (bound by memory) reads them back with the value latents. At 64K slots on an H200 that is
143 + 103 us, while the latents alone need 127 us of memory time and the folded dots 104 us of MMA.
This kernel does both in one loop, so that the value latents could stream in while the tensor cores
fold the keys (flash-decoding split-K; the merge is :func:`kernels.latent_attention._merge_splits_kernel`):

  per block of BLOCK_S slots of one split, for the HP query heads of one program:
    y^T    = rows (HD * 2 * D/2, r) @ latent_k^T (r, BLOCK_S)       per HD heads, fp32
    s      = sum_i [cos a_i, sin a_i] * y^T                         (HP_PAD, BLOCK_S), log2 units
    online softmax over the block, per head                         m, l (HP_PAD,)
    acc^T += latent_v^T (rv, BLOCK_S) @ p^T (BLOCK_S, HP_PAD)

Both products put the long side (folded rows, value channels) on the MMA's M axis, read from shared
memory as loaded; heads are padded to HP_PAD = 16 columns (padding scores -inf). No scores reach memory.

Measured slower than the two kernels (H200, 32 x 128 heads, ranks 128 / 384 per group of 4; sweep in
benchmarks/results/kernel/h200/session7/): 657 vs 239 us at 64K with all four heads of a group per program,
and more with fewer. Its sm_90 build runs ~96 warp-instructions per slot and head against ~34 for the two
kernels together: the frequency sums cross lanes and warps (shuffles and shared memory with barriers), and
with slots as the score MMA's M side instead (as in fold_scores), Triton lays a dot whose result feeds
another dot out along M only, so two warpgroups computed one 64-row tile twice and 4 warps spilled.
Kept as method="single_pass" (tested, never chosen by "auto") for other shapes and compilers.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .fold_scores import load_folded_rows
from .rope_qk import cos_or_sin, load_latent_tile, online_softmax_step


@triton.jit
def _single_pass_block(
    m_i, l_i, acc1, acc2, start, hi, kv_start,
    k_fp, k_fp_ss, k_codes, k_codes_ss, k_scale, k_scale_ss, k_zero, k_zero_ss,
    v_fp, v_fp_ss, v_codes, v_codes_ss, v_scale, v_scale_ss, v_zero, v_zero_ss,
    num_quantized, k_off, k_rank, v_off, v_rank, ws, bws, inv_freq, pos,
    HP: tl.constexpr, HD: tl.constexpr, HP_PAD: tl.constexpr, HAS_QUANT: tl.constexpr, HAS_FP: tl.constexpr,
    BITS: tl.constexpr, QUANT_GROUP: tl.constexpr, HAS_ZERO: tl.constexpr, HAS_BIAS: tl.constexpr,
    K_VEC_QUANT: tl.constexpr, V_VEC_QUANT: tl.constexpr, RK_PAD: tl.constexpr, HALF_PAD: tl.constexpr,
    RV1: tl.constexpr, RV2: tl.constexpr, INTERPRET: tl.constexpr, BLOCK_S: tl.constexpr, DTYPE: tl.constexpr,
):
    """Slots [start, min(start + BLOCK_S, hi)): scores of the program's HP heads, then the online
    softmax update and p @ latent_v. acc1 (RV1, HP_PAD), acc2 (RV2, HP_PAD) fp32; m_i, l_i (HP_PAD,)."""
    slots = start + tl.arange(0, BLOCK_S)
    slot_mask = slots < hi
    valid = slot_mask & (slots >= kv_start)  # left padding: latents not read, p = 0
    latent = load_latent_tile(
        k_fp, k_fp_ss, k_codes, k_codes_ss, k_scale, k_scale_ss, k_zero, k_zero_ss,
        slots, valid, num_quantized, k_off, k_rank,
        HAS_QUANT, HAS_FP, BITS, QUANT_GROUP, HAS_ZERO, K_VEC_QUANT, RK_PAD, DTYPE,
    )  # (BLOCK_S, RK_PAD)
    # Transposed: the folded rows are the MMA's M side (256 rows over 8 warps). With the slots as M, Triton
    # lays a dot whose result feeds another dot out along M only, so two warpgroups computed one 64-row tile twice.
    angle = inv_freq[:, None] * pos.to(tl.float32)[None, :]  # (HALF_PAD, BLOCK_S): transformers' fp32 product
    is_cos = (tl.arange(0, 2) == 0)[None, :, None, None]
    heads = tl.arange(0, HP_PAD)
    t_idx = tl.arange(0, HD)
    s = tl.zeros((HP_PAD, BLOCK_S), dtype=tl.float32)
    for k in tl.static_range(HP // HD):
        y = tl.dot(ws[k], tl.trans(latent))  # (HD * 2 * HALF_PAD, BLOCK_S) fp32
        trig = cos_or_sin(angle[None, None, :, :], is_cos, INTERPRET)  # (1, 2, HALF_PAD, BLOCK_S)
        if HAS_BIAS:
            y += bws[k][:, None]
        y = tl.reshape(y, (HD, 2, HALF_PAD, BLOCK_S))
        sk = tl.sum(tl.sum(y * trig, axis=2), axis=1)  # (HD, BLOCK_S)
        # Into rows k * HD + [0, HD) of the padded (HP_PAD, BLOCK_S) block, by selects: a one-hot
        # product would be turned into a TF32 MMA by the compiler and round the scores to 10 bits.
        for h in tl.static_range(HD):
            row = tl.sum(tl.where(t_idx[:, None] == h, sk, 0.0), axis=0)  # (BLOCK_S,)
            s = tl.where(heads[:, None] == k * HD + h, row[None, :], s)
    s = tl.where(valid[None, :] & (heads < HP)[:, None], s, float("-inf"))

    v1 = load_latent_tile(
        v_fp, v_fp_ss, v_codes, v_codes_ss, v_scale, v_scale_ss, v_zero, v_zero_ss,
        slots, valid, num_quantized, v_off, v_rank,
        HAS_QUANT, HAS_FP, BITS, QUANT_GROUP, HAS_ZERO, V_VEC_QUANT, RV1, DTYPE,
    )  # (BLOCK_S, RV1)
    m_new, alpha, p, l_i = online_softmax_step(m_i, l_i, s)
    p = tl.trans(p.to(DTYPE))  # (BLOCK_S, HP_PAD)
    acc1 = acc1 * alpha[None, :] + tl.dot(tl.trans(v1), p)
    if RV2 > 0:
        v2 = load_latent_tile(
            v_fp, v_fp_ss, v_codes, v_codes_ss, v_scale, v_scale_ss, v_zero, v_zero_ss,
            slots, valid, num_quantized, v_off + RV1, v_rank - RV1,
            HAS_QUANT, HAS_FP, BITS, QUANT_GROUP, HAS_ZERO, V_VEC_QUANT, RV2, DTYPE,
        )  # (BLOCK_S, RV2)
        acc2 = acc2 * alpha[None, :] + tl.dot(tl.trans(v2), p)
    return m_new, l_i, acc1, acc2


@triton.jit
def _single_pass_kernel(
    rows_ptr, rows_sb, rows_sg, brows_ptr, brows_sb, brows_sg,
    k_fp_ptr, k_fp_sb, k_fp_ss, k_codes_ptr, k_codes_sb, k_codes_ss,
    k_scale_ptr, k_scale_sb, k_scale_ss, k_zero_ptr, k_zero_sb, k_zero_ss,
    v_fp_ptr, v_fp_sb, v_fp_ss, v_codes_ptr, v_codes_sb, v_codes_ss,
    v_scale_ptr, v_scale_sb, v_scale_ss, v_zero_ptr, v_zero_sb, v_zero_ss,
    k_offsets_ptr, v_offsets_ptr, pos_ptr, pos_sb, kv_start_ptr, inv_freq_ptr,
    part_m_ptr, part_l_ptr, part_acc_ptr,
    num_heads, num_quantized, num_slots, num_groups, batch_groups, split_len, num_splits, head_splits, rv_max,
    HEAD_DIM: tl.constexpr, HALF_PAD: tl.constexpr, HG: tl.constexpr, HP: tl.constexpr, HD: tl.constexpr,
    HP_PAD: tl.constexpr, RK_PAD: tl.constexpr, RV1: tl.constexpr, RV2: tl.constexpr,
    HAS_QUANT: tl.constexpr, HAS_FP: tl.constexpr, BITS: tl.constexpr, QUANT_GROUP: tl.constexpr,
    HAS_ZERO: tl.constexpr, HAS_BIAS: tl.constexpr, K_ALIGN: tl.constexpr, V_ALIGN: tl.constexpr,
    K_VEC_QUANT: tl.constexpr, V_VEC_QUANT: tl.constexpr, INTERPRET: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """Grid (num_splits * batch_groups * head_splits,): program p = (split * batch_groups + b * G + g) *
    head_splits + hs takes query heads hs * HP + [0, HP) of group g, slots [split * split_len, ...) of
    batch row b, and writes their partial softmax state: part_m/part_l (B, H, num_splits) and part_acc
    (B, H, num_splits, rv_max). rows/brows: :func:`kernels.fold_scores._fold_rows_kernel`'s output."""
    pid = tl.program_id(0)
    hs = pid % head_splits
    bg = (pid // head_splits) % batch_groups
    split = pid // (head_splits * batch_groups)
    g = bg % num_groups
    b = (bg // num_groups).to(tl.int64)
    h0 = hs * HP
    DTYPE = rows_ptr.dtype.element_ty

    kv_start = tl.load(kv_start_ptr + b)
    k_off = tl.multiple_of(tl.load(k_offsets_ptr + g), K_ALIGN)
    k_rank = tl.multiple_of(tl.load(k_offsets_ptr + g + 1) - k_off, K_ALIGN)
    v_off = tl.multiple_of(tl.load(v_offsets_ptr + g), V_ALIGN)
    v_rank = tl.multiple_of(tl.load(v_offsets_ptr + g + 1) - v_off, V_ALIGN)
    # The program's folded rows, resident for its whole split.
    ws, bws = load_folded_rows(rows_ptr, rows_sb, rows_sg, brows_ptr, brows_sb, brows_sg, b, g, h0,
                               HP, HD, HALF_PAD, RK_PAD, HAS_BIAS)
    half_idx = tl.arange(0, HALF_PAD)
    inv_freq = tl.load(inv_freq_ptr + half_idx, mask=half_idx < HEAD_DIM // 2, other=0.0)

    k_fp = k_fp_ptr + b * k_fp_sb
    k_codes = k_codes_ptr + b * k_codes_sb
    k_scale = k_scale_ptr + b * k_scale_sb
    k_zero = k_zero_ptr + b * k_zero_sb
    v_fp = v_fp_ptr + b * v_fp_sb
    v_codes = v_codes_ptr + b * v_codes_sb
    v_scale = v_scale_ptr + b * v_scale_sb
    v_zero = v_zero_ptr + b * v_zero_sb
    pos_base = pos_ptr + b * pos_sb
    idx = tl.arange(0, BLOCK_S)

    m_i = tl.full((HP_PAD,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((HP_PAD,), dtype=tl.float32)
    acc1 = tl.zeros((RV1, HP_PAD), dtype=tl.float32)
    acc2 = tl.zeros((RV2 if RV2 > 0 else 16, HP_PAD), dtype=tl.float32)  # a placeholder when RV2 == 0
    lo = split * split_len
    hi = tl.minimum(lo + split_len, num_slots)
    # Positions are a plain load, which the pipeliner does not move: loaded one block ahead.
    pos = tl.load(pos_base + lo + idx, mask=lo + idx < hi, other=0)
    if INTERPRET:  # the interpreter cannot range() over run-time bounds: same blocks, same order
        start = lo
        while start < hi:
            pos_next = tl.load(pos_base + start + BLOCK_S + idx, mask=start + BLOCK_S + idx < hi, other=0)
            m_i, l_i, acc1, acc2 = _single_pass_block(
                m_i, l_i, acc1, acc2, start, hi, kv_start,
                k_fp, k_fp_ss, k_codes, k_codes_ss, k_scale, k_scale_ss, k_zero, k_zero_ss,
                v_fp, v_fp_ss, v_codes, v_codes_ss, v_scale, v_scale_ss, v_zero, v_zero_ss,
                num_quantized, k_off, k_rank, v_off, v_rank, ws, bws, inv_freq, pos,
                HP, HD, HP_PAD, HAS_QUANT, HAS_FP, BITS, QUANT_GROUP, HAS_ZERO, HAS_BIAS, K_VEC_QUANT, V_VEC_QUANT,
                RK_PAD, HALF_PAD, RV1, RV2, INTERPRET, BLOCK_S, DTYPE,
            )
            pos = pos_next
            start += BLOCK_S
    else:  # a `for` loop, which the compiler software-pipelines (num_stages)
        for start in range(lo, hi, BLOCK_S):
            pos_next = tl.load(pos_base + start + BLOCK_S + idx, mask=start + BLOCK_S + idx < hi, other=0)
            m_i, l_i, acc1, acc2 = _single_pass_block(
                m_i, l_i, acc1, acc2, start, hi, kv_start,
                k_fp, k_fp_ss, k_codes, k_codes_ss, k_scale, k_scale_ss, k_zero, k_zero_ss,
                v_fp, v_fp_ss, v_codes, v_codes_ss, v_scale, v_scale_ss, v_zero, v_zero_ss,
                num_quantized, k_off, k_rank, v_off, v_rank, ws, bws, inv_freq, pos,
                HP, HD, HP_PAD, HAS_QUANT, HAS_FP, BITS, QUANT_GROUP, HAS_ZERO, HAS_BIAS, K_VEC_QUANT, V_VEC_QUANT,
                RK_PAD, HALF_PAD, RV1, RV2, INTERPRET, BLOCK_S, DTYPE,
            )
            pos = pos_next

    # Partial state of (b, head, split), m in log2 units; columns >= HP are padding.
    t_idx = tl.arange(0, HP_PAD)
    col_mask = t_idx < HP
    row = (b * num_heads + (g * HG + h0 + t_idx).to(tl.int64)) * num_splits + split  # (HP_PAD,)
    tl.store(part_m_ptr + row, m_i, mask=col_mask)
    tl.store(part_l_ptr + row, l_i, mask=col_mask)
    v_idx1 = tl.arange(0, RV1)
    acc_cols = part_acc_ptr + row[None, :] * rv_max
    tl.store(acc_cols + v_idx1[:, None], acc1, mask=(v_idx1 < rv_max)[:, None] & col_mask[None, :])
    if RV2 > 0:
        v_idx2 = RV1 + tl.arange(0, RV2)
        tl.store(acc_cols + v_idx2[:, None], acc2, mask=(v_idx2 < rv_max)[:, None] & col_mask[None, :])
