"""Attention scores from latents with the query folded into the key up-projection (decode, n_rep = 1).

For query head h reading KV head j of group g, latent x_s (r_g channels) at slot s and RoPE angle
a_si = pos_s * inv_freq_i of frequency pair i (channels i and i + D/2, transformers' rotate-half):

    q . RoPE(U_j x_s) = sum_i cos(a_si) * (Mc_h[i] . x_s) + sin(a_si) * (Ms_h[i] . x_s)
    Mc_h[i] = q_i U_j[i] + q_{i+D/2} U_j[i+D/2],   Ms_h[i] = q_{i+D/2} U_j[i] - q_i U_j[i+D/2]

(U_j[i] is row i of the head's (D, r_g) up-projection). Mc_h and Ms_h, (D/2, r_g) each, are built
once per program from q and k_up; per block of slots the kernel runs two dots per head against the
group's latent tile, then a multiply by cos/sin and a row sum. Compared with reconstructing keys
(kernels.rope_qk) it skips the rotation, the key cast and the q.k product, computes cos/sin once
for all heads of the group, and keeps every head's folded matrix resident in shared memory.
The dots cost the same as the reconstruction when each KV head serves one query head; with GQA
they grow n_rep-fold, so the launcher uses this kernel for n_rep == 1 only.

Scores go to a (B, H, S) fp32 buffer in log2 units (sm_scale * log2(e) folded into M). A program
covers HP of the group's HG heads (two per program by default: two programs fit on an SM). After each
chunk of slots it adds 1 to that chunk's flag (release); once all HG / HP programs have, the value kernel
(:func:`kernels.latent_attention._softmax_v_wait_kernel`), running concurrently on another stream,
can stream the chunk's value latents while later chunks are still being scored.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .rope_qk import cos_sin, load_latent_tile


@triton.jit
def _fold_block(
    start, hi, kv_start, k_fp, k_fp_ss, k_codes, k_codes_ss, k_scale, k_scale_ss, k_zero, k_zero_ss,
    num_quantized, k_off, k_rank, mcs, mss, bcs, bss, inv_freq, pos_base, out_base, out_sh,
    HP: tl.constexpr, HAS_QUANT: tl.constexpr, HAS_FP: tl.constexpr, BITS: tl.constexpr,
    QUANT_GROUP: tl.constexpr, HAS_ZERO: tl.constexpr, HAS_BIAS: tl.constexpr, VEC_QUANT: tl.constexpr,
    RK_PAD: tl.constexpr, INTERPRET: tl.constexpr, BLOCK_S: tl.constexpr, DTYPE: tl.constexpr,
):
    """Scores of slots [start, min(start + BLOCK_S, hi)) for the HP query heads of one program."""
    slots = start + tl.arange(0, BLOCK_S)
    slot_mask = slots < hi
    valid = slots >= kv_start  # left padding: latents not read, score -inf
    latent = load_latent_tile(
        k_fp, k_fp_ss, k_codes, k_codes_ss, k_scale, k_scale_ss, k_zero, k_zero_ss,
        slots, slot_mask & valid, num_quantized, k_off, k_rank,
        HAS_QUANT, HAS_FP, BITS, QUANT_GROUP, HAS_ZERO, VEC_QUANT, RK_PAD, DTYPE,
    )  # (BLOCK_S, RK_PAD)
    pos = tl.load(pos_base + slots, mask=slot_mask, other=0).to(tl.float32)
    cos, sin = cos_sin(pos[:, None] * inv_freq[None, :], INTERPRET)  # (BLOCK_S, HALF_PAD), once for all heads
    for t in tl.static_range(HP):
        yc = tl.dot(latent, tl.trans(mcs[t]))  # (BLOCK_S, HALF_PAD) fp32
        ys = tl.dot(latent, tl.trans(mss[t]))
        if HAS_BIAS:
            yc += bcs[t][None, :]
            ys += bss[t][None, :]
        s = tl.sum(yc * cos + ys * sin, axis=1)
        s = tl.where(valid, s, float("-inf"))
        tl.store(out_base + t * out_sh + slots, s, mask=slot_mask)


@triton.jit
def _fold_scores_kernel(
    q_ptr, q_sb, q_sh,
    k_fp_ptr, k_fp_sb, k_fp_ss, k_codes_ptr, k_codes_sb, k_codes_ss,
    k_scale_ptr, k_scale_sb, k_scale_ss, k_zero_ptr, k_zero_sb, k_zero_ss,
    up_ptr, up_sg, up_sr, k_offsets_ptr, bias_ptr,
    pos_ptr, pos_sb, kv_start_ptr, inv_freq_ptr,
    scores_ptr, scores_sb, scores_sh, flags_ptr,
    score_scale, num_quantized, num_slots, num_groups, batch_groups, chunk_len, num_chunks, ctas_per_bg,
    head_splits,
    HEAD_DIM: tl.constexpr, HALF_PAD: tl.constexpr, GS: tl.constexpr, HG: tl.constexpr, HP: tl.constexpr,
    N_REP: tl.constexpr,
    RK_PAD: tl.constexpr, HAS_QUANT: tl.constexpr, HAS_FP: tl.constexpr, BITS: tl.constexpr,
    QUANT_GROUP: tl.constexpr, HAS_ZERO: tl.constexpr, HAS_BIAS: tl.constexpr, CHAN_ALIGN: tl.constexpr,
    VEC_QUANT: tl.constexpr, INTERPRET: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """Grid (batch_groups * head_splits * ctas_per_bg,): program p scores HP = HG / head_splits of the
    group's query heads, (b, g) = divmod(p % batch_groups, G), heads from (p // batch_groups) % head_splits,
    for chunks p // (batch_groups * head_splits), + ctas_per_bg, ... of ``chunk_len`` slots, adding 1 to
    flag (b*G + g, chunk) after each (the chunk is done when it reaches head_splits). M is built once per
    program and stays in shared memory for all its chunks. HP < HG: smaller programs, more per SM, less
    fold work each (short caches); HP = HG: cos/sin and the latent tile once for the whole group.

    score_scale = sm_scale * log2(e) * rope_scale (rope_scale multiplies cos and sin).
    """
    pid = tl.program_id(0)
    bg = pid % batch_groups
    h0 = ((pid // batch_groups) % head_splits) * HP  # first local query head of this program
    g = bg % num_groups
    b = (bg // num_groups).to(tl.int64)
    HALF: tl.constexpr = HEAD_DIM // 2
    DTYPE = q_ptr.dtype.element_ty

    kv_start = tl.load(kv_start_ptr + b)
    k_off = tl.multiple_of(tl.load(k_offsets_ptr + g), CHAN_ALIGN)
    k_rank = tl.multiple_of(tl.load(k_offsets_ptr + g + 1) - k_off, CHAN_ALIGN)
    r_idx = tl.arange(0, RK_PAD)
    half_idx = tl.arange(0, HALF_PAD)
    half_mask = half_idx < HALF
    up_mask = half_mask[:, None] & (r_idx < k_rank)[None, :]

    # Folded matrices of this program's HP query heads, (HALF_PAD, RK_PAD) each, in the input dtype.
    mcs = ()
    mss = ()
    bcs = ()
    bss = ()
    for t in tl.static_range(HP):
        jl = (h0 + t) // N_REP  # local KV head read by local query head h0 + t
        head = g * HG + h0 + t
        q_row = q_ptr + b * q_sb + head.to(tl.int64) * q_sh
        q1 = tl.load(q_row + half_idx, mask=half_mask, other=0.0).to(tl.float32) * score_scale
        q2 = tl.load(q_row + HALF + half_idx, mask=half_mask, other=0.0).to(tl.float32) * score_scale
        rows = g.to(tl.int64) * up_sg + (jl * HEAD_DIM + half_idx).to(tl.int64)[:, None] * up_sr + r_idx[None, :]
        u1 = tl.load(up_ptr + rows, mask=up_mask, other=0.0).to(tl.float32)  # rows i of U_j
        u2 = tl.load(up_ptr + rows + HALF * up_sr, mask=up_mask, other=0.0).to(tl.float32)  # rows i + D/2
        mcs = mcs + ((q1[:, None] * u1 + q2[:, None] * u2).to(DTYPE),)
        mss = mss + ((q2[:, None] * u1 - q1[:, None] * u2).to(DTYPE),)
        if HAS_BIAS:  # the key bias rotates too: the same fold of q with the bias vector
            bias = bias_ptr + (g * GS + jl) * HEAD_DIM + half_idx
            b1 = tl.load(bias, mask=half_mask, other=0.0).to(tl.float32)
            b2 = tl.load(bias + HALF, mask=half_mask, other=0.0).to(tl.float32)
            bcs = bcs + (q1 * b1 + q2 * b2,)
            bss = bss + (q2 * b1 - q1 * b2,)
        else:
            bcs = bcs + (0.0,)
            bss = bss + (0.0,)
    inv_freq = tl.load(inv_freq_ptr + half_idx, mask=half_mask, other=0.0)

    k_fp = k_fp_ptr + b * k_fp_sb
    k_codes = k_codes_ptr + b * k_codes_sb
    k_scale = k_scale_ptr + b * k_scale_sb
    k_zero = k_zero_ptr + b * k_zero_sb
    pos_base = pos_ptr + b * pos_sb
    out_base = scores_ptr + b * scores_sb + (g * HG + h0).to(tl.int64) * scores_sh
    chunk = pid // (batch_groups * head_splits)
    while chunk < num_chunks:
        lo = chunk * chunk_len
        hi = tl.minimum(lo + chunk_len, num_slots)
        if INTERPRET:  # the interpreter cannot range() over run-time bounds: same blocks, same order
            start = lo
            while start < hi:
                _fold_block(start, hi, kv_start, k_fp, k_fp_ss, k_codes, k_codes_ss, k_scale, k_scale_ss, k_zero,
                            k_zero_ss, num_quantized, k_off, k_rank, mcs, mss, bcs, bss, inv_freq, pos_base,
                            out_base, scores_sh, HP, HAS_QUANT, HAS_FP, BITS, QUANT_GROUP, HAS_ZERO, HAS_BIAS,
                            VEC_QUANT, RK_PAD, INTERPRET, BLOCK_S, DTYPE)
                start += BLOCK_S
        else:  # a `for` loop, which the compiler software-pipelines (num_stages)
            for start in range(lo, hi, BLOCK_S):
                _fold_block(start, hi, kv_start, k_fp, k_fp_ss, k_codes, k_codes_ss, k_scale, k_scale_ss, k_zero,
                            k_zero_ss, num_quantized, k_off, k_rank, mcs, mss, bcs, bss, inv_freq, pos_base,
                            out_base, scores_sh, HP, HAS_QUANT, HAS_FP, BITS, QUANT_GROUP, HAS_ZERO, HAS_BIAS,
                            VEC_QUANT, RK_PAD, INTERPRET, BLOCK_S, DTYPE)
        # Every thread's score stores happen before the flag: a CTA barrier, then a gpu-scope release.
        tl.debug_barrier()
        tl.atomic_add(flags_ptr + bg * num_chunks + chunk, 1, sem="release", scope="gpu")
        chunk += ctas_per_bg
