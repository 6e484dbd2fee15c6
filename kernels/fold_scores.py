"""Attention scores from latents with the query folded into the key up-projection (decode, n_rep = 1).

For query head h reading KV head j of group g, latent x_s (r_g channels) at slot s and RoPE angle
a_si = pos_s * inv_freq_i of frequency pair i (channels i and i + D/2, transformers' rotate-half):

    q . RoPE(U_j x_s) = sum_i cos(a_si) * (Mc_h[i] . x_s) + sin(a_si) * (Ms_h[i] . x_s)
    Mc_h[i] = q_i U_j[i] + q_{i+D/2} U_j[i+D/2],   Ms_h[i] = q_{i+D/2} U_j[i] - q_i U_j[i+D/2]

(U_j[i] is row i of the head's (D, r_g) up-projection). Mc_h and Ms_h, (D/2, r_g) each, are built
once per decode call from q and k_up (:func:`_fold_rows_kernel`) and loaded once per score program;
per block of slots the program runs one dot of the group's latent tile against the stacked rows of
its heads (up to FOLD_DOT_COLS = 256 rows per dot), then a multiply by cos/sin and a row sum per head.
Compared with reconstructing keys (kernels.rope_qk) it skips the rotation, the key cast and the q.k
product, computes cos/sin once for all heads of the program, and keeps the folded rows resident in
shared memory.
The dots cost the same as the reconstruction when each KV head serves one query head; with GQA
they grow n_rep-fold, so the launcher uses this kernel for n_rep == 1 only.

Scores go to a (B, H, S) fp32 buffer in log2 units (sm_scale * log2(e) folded into M). A program
covers HP of the group's HG heads (two per program by default: two programs fit on an SM). The value
kernel runs after it (running the two concurrently measured slower: kernels/NOTES.md). On sm_90 with
plain fp16/bf16 latents the warp-specialized Gluon version (:mod:`kernels.fold_scores_ws`) replaces it.
"""
from __future__ import annotations

import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents

from .rope_qk import cos_or_sin, load_latent_tile, quant_params


@triton.jit
def _key_qparams(k_scale, k_scale_ss, k_zero, k_zero_ss, start, hi, kv_start, num_quantized, k_off, k_rank,
                 HAS_QUANT: tl.constexpr, BITS: tl.constexpr, QUANT_GROUP: tl.constexpr, HAS_ZERO: tl.constexpr,
                 VEC_QUANT: tl.constexpr, RK_PAD: tl.constexpr, BLOCK_S: tl.constexpr, DTYPE: tl.constexpr):
    """quant_params of the key tile of slots [start, min(start + BLOCK_S, hi)) (the mask of
    :func:`_fold_block`), loaded one block ahead; placeholders 0.0 without quantized word tiles."""
    if HAS_QUANT and VEC_QUANT:
        slots = start + tl.arange(0, BLOCK_S)
        qs, qo = quant_params(k_scale, k_scale_ss, k_zero, k_zero_ss, slots, (slots < hi) & (slots >= kv_start),
                              num_quantized, k_off, k_rank, RK_PAD, BITS, QUANT_GROUP, HAS_ZERO, DTYPE)
    else:
        qs, qo = 0.0, 0.0
    return qs, qo


@triton.jit
def _fold_block(
    start, hi, kv_start, k_fp, k_fp_ss, k_codes, k_codes_ss, k_scale, k_scale_ss, k_zero, k_zero_ss,
    num_quantized, k_off, k_rank, qs, qo, ws, bws, inv_freq, pos, out_base, out_sh,
    HP: tl.constexpr, HD: tl.constexpr, HAS_QUANT: tl.constexpr, HAS_FP: tl.constexpr, BITS: tl.constexpr,
    QUANT_GROUP: tl.constexpr, HAS_ZERO: tl.constexpr, HAS_BIAS: tl.constexpr, VEC_QUANT: tl.constexpr,
    RK_PAD: tl.constexpr, HALF_PAD: tl.constexpr, INTERPRET: tl.constexpr, BLOCK_S: tl.constexpr,
    DTYPE: tl.constexpr,
):
    """Scores of slots [start, min(start + BLOCK_S, hi)) for the HP query heads of one program.

    Per HD heads, one dot of the latent tile (BLOCK_S, RK_PAD) with their folded rows ws[k]
    (HD * 2 * HALF_PAD, RK_PAD): one wide MMA reads the tile from shared memory once and waits once
    (Triton waits for each dot before the next starts, so per-head dots ran one at a time with nothing
    to overlap), then y (BLOCK_S, HD, 2, HALF_PAD) times [cos, sin] of the slots' angles, summed per head."""
    slots = start + tl.arange(0, BLOCK_S)
    slot_mask = slots < hi
    valid = slots >= kv_start  # left padding: latents not read, score -inf
    latent = load_latent_tile(
        k_fp, k_fp_ss, k_codes, k_codes_ss, k_scale, k_scale_ss, k_zero, k_zero_ss,
        slots, slot_mask & valid, num_quantized, k_off, k_rank,
        HAS_QUANT, HAS_FP, BITS, QUANT_GROUP, HAS_ZERO, VEC_QUANT, RK_PAD, DTYPE, qs, qo, HAS_QUANT and VEC_QUANT,
    )  # (BLOCK_S, RK_PAD); qs, qo: this block's quant_params, loaded a block ahead
    angle = pos.to(tl.float32)[:, None] * inv_freq[None, :]  # (BLOCK_S, HALF_PAD): transformers' fp32 product
    # (BLOCK_S, 1, 2, HALF_PAD): [cos a_i, sin a_i], shared by all heads. The [cos, sin] axis is held in
    # registers, so the select folds away and the broadcast copies of an angle are reduced once.
    is_cos = (tl.arange(0, 2) == 0)[None, None, :, None]
    t_idx = tl.arange(0, HD)
    for k in tl.static_range(HP // HD):
        y = tl.dot(latent, tl.trans(ws[k]))  # (BLOCK_S, HD * 2 * HALF_PAD) fp32
        trig = cos_or_sin(angle[:, None, None, :], is_cos, INTERPRET)  # computed while the MMA runs
        if HAS_BIAS:
            y += bws[k][None, :]
        y = tl.reshape(y, (BLOCK_S, HD, 2, HALF_PAD))
        s = tl.sum(tl.sum(y * trig, axis=3), axis=2)  # (BLOCK_S, HD)
        s = tl.where(valid[:, None], s, float("-inf"))
        tl.store(out_base + (k * HD + t_idx)[None, :] * out_sh + slots[:, None], s, mask=slot_mask[:, None])


@triton.jit
def _fold_rows_kernel(
    q_ptr, q_sb, q_sh, up_ptr, up_sg, up_sr, k_offsets_ptr, bias_ptr, rows_ptr, rows_sb, rows_sg,
    brows_ptr, brows_sb, brows_sg, score_scale, num_groups, cos_ptr, sin_ptr, rope_sb,
    HEAD_DIM: tl.constexpr, HALF_PAD: tl.constexpr, GS: tl.constexpr, HG: tl.constexpr, N_REP: tl.constexpr,
    RK_PAD: tl.constexpr, RK_BLOCK: tl.constexpr, HAS_BIAS: tl.constexpr, INTERLEAVE: tl.constexpr = False,
    Q_ROPE: tl.constexpr = False, PDL_TRIGGER: tl.constexpr = False, PAIR_COLS: tl.constexpr = False,
):
    """Grid (B * G * HG, RK_PAD / RK_BLOCK): the folded rows of one query head (b, g, local head t), columns
    [pid1 * RK_BLOCK, + RK_BLOCK), written to
    rows[b, g, t * 2 * HALF_PAD + c * HALF_PAD + i, :RK_PAD] = Mc[i] (c = 0) or Ms[i] (c = 1) in the
    query's dtype (zero past the head's D/2 frequencies and the group's rank), or with INTERLEAVE to
    row t * 2 * HALF_PAD + 2 * i + c (:mod:`kernels.fold_scores_ws`); with a key bias, its
    fold to brows[b, g, same row] (fp32). Built once per decode call and loaded by each score program
    with wide loads: built inside each program, its fp32 temporaries spilled (score kernel 20.0 vs
    15.7 us at 4K, H200), or, stacked by joins, were stored to shared memory two bytes at a time
    (48.5 us).

    Q_ROPE: q is given before RoPE and rotated here by cos / sin (B or broadcast 1, D) of the query's position
    (``rope_sb`` their batch stride, 0 to broadcast), each product and the sum rounded to q's dtype as transformers'
    ``q * cos + rotate_half(q) * sin`` rounds them: bit-identical in the interpreter; compiled (H100), within the fp16
    rounding of q (the compiler does not keep every intermediate rounding). It saves the module the five elementwise
    launches of RoPE on q per decode step.

    PDL_TRIGGER: the next launch, a programmatic dependent, may start at once (it waits for these rows itself).

    PAIR_COLS: the rank columns in nibble-pair order (kernels.word_unpack.NIBBLE_PAIR_ORDER within each octet, for
    the quantized kernel's SPQ_NIBBLE_PAIRS): column r is stored where that order puts code r, so the rows need no
    gather before the launch. Octets never straddle a rank block (RK_BLOCK is a multiple of 8)."""
    if PDL_TRIGGER:
        gdc_launch_dependents()
    pid = tl.program_id(0)
    t = pid % HG
    g = (pid // HG) % num_groups
    b = (pid // (HG * num_groups)).to(tl.int64)
    HALF: tl.constexpr = HEAD_DIM // 2
    DTYPE = q_ptr.dtype.element_ty
    jl = t // N_REP  # local KV head read by local query head t
    k_off = tl.load(k_offsets_ptr + g)
    k_rank = tl.load(k_offsets_ptr + g + 1) - k_off
    r_idx = tl.program_id(1) * RK_BLOCK + tl.arange(0, RK_BLOCK)
    half_idx = tl.arange(0, HALF_PAD)
    half_mask = half_idx < HALF
    q_row = q_ptr + b * q_sb + (g * HG + t).to(tl.int64) * q_sh
    q1 = tl.load(q_row + half_idx, mask=half_mask, other=0.0)
    q2 = tl.load(q_row + HALF + half_idx, mask=half_mask, other=0.0)
    if Q_ROPE:  # products of two q-dtype values are exact in fp32; each is rounded to q's dtype as torch rounds it
        rope_row = b * rope_sb + half_idx
        c1 = tl.load(cos_ptr + rope_row, mask=half_mask, other=0.0).to(tl.float32)
        c2 = tl.load(cos_ptr + rope_row + HALF, mask=half_mask, other=0.0).to(tl.float32)
        s1 = tl.load(sin_ptr + rope_row, mask=half_mask, other=0.0).to(tl.float32)
        s2 = tl.load(sin_ptr + rope_row + HALF, mask=half_mask, other=0.0).to(tl.float32)
        a1, a2 = q1.to(tl.float32), q2.to(tl.float32)
        r1 = (a1 * c1).to(DTYPE).to(tl.float32) + (-a2 * s1).to(DTYPE).to(tl.float32)
        r2 = (a2 * c2).to(DTYPE).to(tl.float32) + (a1 * s2).to(DTYPE).to(tl.float32)
        q1, q2 = r1.to(DTYPE), r2.to(DTYPE)
    q1 = q1.to(tl.float32) * score_scale
    q2 = q2.to(tl.float32) * score_scale
    up_mask = half_mask[:, None] & (r_idx < k_rank)[None, :]
    u_rows = g.to(tl.int64) * up_sg + (jl * HEAD_DIM + half_idx).to(tl.int64)[:, None] * up_sr + r_idx[None, :]
    u1 = tl.load(up_ptr + u_rows, mask=up_mask, other=0.0).to(tl.float32)  # rows i of U_j
    u2 = tl.load(up_ptr + u_rows + HALF * up_sr, mask=up_mask, other=0.0).to(tl.float32)  # rows i + D/2
    if INTERLEAVE:
        mc_row = t * 2 * HALF_PAD + 2 * half_idx
        ms_step = RK_PAD
    else:
        mc_row = t * 2 * HALF_PAD + half_idx
        ms_step = HALF_PAD * RK_PAD
    if PAIR_COLS:  # logical column j holds code nibble_pair_channel(j): code r goes to the j with r = that
        col = r_idx // 8 * 8 + (r_idx % 4) * 2 + (r_idx % 8) // 4
    else:
        col = r_idx
    out = rows_ptr + b * rows_sb + g * rows_sg + mc_row[:, None] * RK_PAD + col[None, :]
    tl.store(out, (q1[:, None] * u1 + q2[:, None] * u2).to(DTYPE))  # Mc = q1 U[i] + q2 U[i + D/2]
    tl.store(out + ms_step, (q2[:, None] * u1 - q1[:, None] * u2).to(DTYPE))  # Ms = q2 U[i] - q1 U[i + D/2]
    tl.static_assert(not (INTERLEAVE and HAS_BIAS), "interleaved rows are built for the bias-free Gluon kernel")
    if HAS_BIAS:  # the key bias rotates too: the same fold of q with the bias vector (by the first rank block)
        bias = bias_ptr + (g * GS + jl) * HEAD_DIM + half_idx
        b1 = tl.load(bias, mask=half_mask, other=0.0).to(tl.float32)
        b2 = tl.load(bias + HALF, mask=half_mask, other=0.0).to(tl.float32)
        bout = brows_ptr + b * brows_sb + g * brows_sg + t * 2 * HALF_PAD + half_idx
        first = (half_idx >= 0) & (tl.program_id(1) == 0)  # (HALF_PAD,): all or none
        tl.store(bout, q1 * b1 + q2 * b2, mask=first)
        tl.store(bout + HALF_PAD, q2 * b1 - q1 * b2, mask=first)


@triton.jit
def load_folded_rows(rows_ptr, rows_sb, rows_sg, brows_ptr, brows_sb, brows_sg, b, g, h0,
                     HP: tl.constexpr, HD: tl.constexpr, HALF_PAD: tl.constexpr, RK_PAD: tl.constexpr,
                     HAS_BIAS: tl.constexpr):
    """Folded rows (:func:`_fold_rows_kernel`) of local query heads h0 + [0, HP) of (b, g) in chunks of HD
    heads, one dot each: ws[k] (HD * 2 * HALF_PAD, RK_PAD) in the rows' dtype, and bws[k] (HD * 2 * HALF_PAD,)
    fp32 with a key bias (else 0.0)."""
    n_idx = tl.arange(0, HD * 2 * HALF_PAD)
    r_idx = tl.arange(0, RK_PAD)
    ws = ()
    bws = ()
    for k in tl.static_range(HP // HD):
        row0 = (h0 + k * HD) * 2 * HALF_PAD
        ws = ws + (tl.load(rows_ptr + b * rows_sb + g * rows_sg + (row0 + n_idx)[:, None] * RK_PAD + r_idx[None, :]),)
        if HAS_BIAS:
            bws = bws + (tl.load(brows_ptr + b * brows_sb + g * brows_sg + row0 + n_idx),)
        else:
            bws = bws + (0.0,)
    return ws, bws


@triton.jit
def _fold_scores_kernel(
    rows_ptr, rows_sb, rows_sg, brows_ptr, brows_sb, brows_sg,
    k_fp_ptr, k_fp_sb, k_fp_ss, k_codes_ptr, k_codes_sb, k_codes_ss,
    k_scale_ptr, k_scale_sb, k_scale_ss, k_zero_ptr, k_zero_sb, k_zero_ss,
    k_offsets_ptr, pos_ptr, pos_sb, kv_start_ptr, inv_freq_ptr,
    scores_ptr, scores_sb, scores_sh,
    num_quantized, num_slots, num_groups, batch_groups, chunk_len, num_chunks, ctas_per_bg, head_splits,
    HEAD_DIM: tl.constexpr, HALF_PAD: tl.constexpr, HG: tl.constexpr, HP: tl.constexpr, HD: tl.constexpr,
    RK_PAD: tl.constexpr, HAS_QUANT: tl.constexpr, HAS_FP: tl.constexpr, BITS: tl.constexpr,
    QUANT_GROUP: tl.constexpr, HAS_ZERO: tl.constexpr, HAS_BIAS: tl.constexpr, CHAN_ALIGN: tl.constexpr,
    VEC_QUANT: tl.constexpr, INTERPRET: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """Grid (batch_groups * head_splits * ctas_per_bg,): program p scores HP = HG / head_splits of the
    group's query heads, (b, g) = divmod(p % batch_groups, G), heads from (p // batch_groups) % head_splits,
    for chunks p // (batch_groups * head_splits), + ctas_per_bg, ... of ``chunk_len`` slots. Its folded
    rows are loaded once and stay in shared memory for all its chunks. HP < HG: smaller programs, more per SM, less
    fold work each (short caches); HP = HG: cos/sin and the latent tile once for the whole group.
    rows/brows: :func:`_fold_rows_kernel`'s output, (B, G, HG * 2 * HALF_PAD, RK_PAD) and (B, G, HG * 2 *
    HALF_PAD); HD heads share a dot (:func:`kernels.latent_attention.fold_heads_per_dot`).
    """
    pid = tl.program_id(0)
    bg = pid % batch_groups
    h0 = ((pid // batch_groups) % head_splits) * HP  # first local query head of this program
    g = bg % num_groups
    b = (bg // num_groups).to(tl.int64)
    HALF: tl.constexpr = HEAD_DIM // 2
    DTYPE = rows_ptr.dtype.element_ty

    kv_start = tl.load(kv_start_ptr + b)
    k_off = tl.multiple_of(tl.load(k_offsets_ptr + g), CHAN_ALIGN)
    k_rank = tl.multiple_of(tl.load(k_offsets_ptr + g + 1) - k_off, CHAN_ALIGN)
    # This program's folded rows, then resident in shared memory for all its chunks of slots.
    ws, bws = load_folded_rows(rows_ptr, rows_sb, rows_sg, brows_ptr, brows_sb, brows_sg, b, g, h0,
                               HP, HD, HALF_PAD, RK_PAD, HAS_BIAS)
    half_idx = tl.arange(0, HALF_PAD)
    inv_freq = tl.load(inv_freq_ptr + half_idx, mask=half_idx < HALF, other=0.0)

    k_fp = k_fp_ptr + b * k_fp_sb
    k_codes = k_codes_ptr + b * k_codes_sb
    k_scale = k_scale_ptr + b * k_scale_sb
    k_zero = k_zero_ptr + b * k_zero_sb
    pos_base = pos_ptr + b * pos_sb
    idx = tl.arange(0, BLOCK_S)
    out_base = scores_ptr + b * scores_sb + (g * HG + h0).to(tl.int64) * scores_sh
    chunk = pid // (batch_groups * head_splits)
    while chunk < num_chunks:
        lo = chunk * chunk_len
        hi = tl.minimum(lo + chunk_len, num_slots)
        # Positions are a plain load, which the pipeliner does not move: each block's are loaded one
        # block ahead (loaded in the block itself, their latency stalled every warp: ncu, 64K).
        pos = tl.load(pos_base + lo + idx, mask=lo + idx < hi, other=0)
        # Quantization scales and offsets too (plain loads: their latency stalled the 4-bit kernel, ncu).
        qs, qo = _key_qparams(k_scale, k_scale_ss, k_zero, k_zero_ss, lo, hi, kv_start, num_quantized, k_off, k_rank,
                              HAS_QUANT, BITS, QUANT_GROUP, HAS_ZERO, VEC_QUANT, RK_PAD, BLOCK_S, DTYPE)
        if INTERPRET:  # the interpreter cannot range() over run-time bounds: same blocks, same order
            start = lo
            while start < hi:
                pos_next = tl.load(pos_base + start + BLOCK_S + idx, mask=start + BLOCK_S + idx < hi, other=0)
                nq = _key_qparams(k_scale, k_scale_ss, k_zero, k_zero_ss, start + BLOCK_S, hi, kv_start, num_quantized,
                                  k_off, k_rank, HAS_QUANT, BITS, QUANT_GROUP, HAS_ZERO, VEC_QUANT, RK_PAD, BLOCK_S,
                                  DTYPE)
                _fold_block(start, hi, kv_start, k_fp, k_fp_ss, k_codes, k_codes_ss, k_scale, k_scale_ss, k_zero,
                            k_zero_ss, num_quantized, k_off, k_rank, qs, qo, ws, bws, inv_freq, pos,
                            out_base, scores_sh, HP, HD, HAS_QUANT, HAS_FP, BITS, QUANT_GROUP, HAS_ZERO, HAS_BIAS,
                            VEC_QUANT, RK_PAD, HALF_PAD, INTERPRET, BLOCK_S, DTYPE)
                pos = pos_next
                qs, qo = nq
                start += BLOCK_S
        else:  # a `for` loop, which the compiler software-pipelines (num_stages)
            for start in range(lo, hi, BLOCK_S):
                pos_next = tl.load(pos_base + start + BLOCK_S + idx, mask=start + BLOCK_S + idx < hi, other=0)
                nq = _key_qparams(k_scale, k_scale_ss, k_zero, k_zero_ss, start + BLOCK_S, hi, kv_start, num_quantized,
                                  k_off, k_rank, HAS_QUANT, BITS, QUANT_GROUP, HAS_ZERO, VEC_QUANT, RK_PAD, BLOCK_S,
                                  DTYPE)
                _fold_block(start, hi, kv_start, k_fp, k_fp_ss, k_codes, k_codes_ss, k_scale, k_scale_ss, k_zero,
                            k_zero_ss, num_quantized, k_off, k_rank, qs, qo, ws, bws, inv_freq, pos,
                            out_base, scores_sh, HP, HD, HAS_QUANT, HAS_FP, BITS, QUANT_GROUP, HAS_ZERO, HAS_BIAS,
                            VEC_QUANT, RK_PAD, HALF_PAD, INTERPRET, BLOCK_S, DTYPE)
                pos = pos_next
                qs, qo = nq
        chunk += ctas_per_bg
