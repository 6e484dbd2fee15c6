"""Key reconstruction + RoPE + q.k from latents: Palu's "reconstruction kernel" (arXiv 2407.21118, Sec. 4).

For a block of cache slots and one KV head j of group g, the kernel loads the group's key latents
once, reconstructs the head's key as two dots (one per RoPE half, so that ``rotate_half`` becomes
elementwise), rotates it at each slot's position in registers and writes the attention scores of
the n_rep query heads that read head j. Keys never reach device memory: per slot it reads r_g latent
channels and writes n_rep scores instead of reading 2*D key channels.

Also home of the jit helpers shared with :mod:`kernels.latent_attention` (latent tile loads with
in-register dequantization, RoPE cos/sin).
"""
from __future__ import annotations

import triton
import triton.language as tl

from ._autotune import prune_reconstruction_configs, reconstruction_configs

TWO_PI_HI = tl.constexpr(6.2831854820251465)  # float32(2*pi)
TWO_PI_LO = tl.constexpr(-1.7484556025237907e-07)  # 2*pi - TWO_PI_HI


@triton.jit
def cos_sin(x, INTERPRET: tl.constexpr):
    """cos(x), sin(x) of fp32 angles up to ~1e6 rad: Cody-Waite reduction to [-pi, pi], then the
    hardware approximations (abs error ~1e-6 there). libdevice's cosf/sinf carry a Payne-Hanek
    slow path with a local-memory table that bloats the kernel; the interpreter uses numpy."""
    if INTERPRET:
        return tl.cos(x), tl.sin(x)
    k = tl.extra.cuda.libdevice.rint(x * 0.15915494309189535)
    r = tl.fma(-k, TWO_PI_HI, x)
    r = tl.fma(-k, TWO_PI_LO, r)
    cos = tl.inline_asm_elementwise("cos.approx.f32 $0, $1;", "=r,r", [r], dtype=tl.float32, is_pure=True, pack=1)
    sin = tl.inline_asm_elementwise("sin.approx.f32 $0, $1;", "=r,r", [r], dtype=tl.float32, is_pure=True, pack=1)
    return cos, sin


@triton.jit
def cos_or_sin(x, is_cos, INTERPRET: tl.constexpr):
    """cos(x) where is_cos, else sin(x), for fp32 angles up to ~1e6 rad (reduction as in :func:`cos_sin`).
    For a tensor whose is_cos is fixed per register (a dimension held in registers, as in the fold
    kernel's [cos, sin] axis), the compiler folds the select and drops the unused approximation: one
    hardware instruction per element."""
    cos, sin = cos_sin(x, INTERPRET)
    return tl.where(is_cos, cos, sin)


@triton.jit
def online_softmax_step(m_i, l_i, s):
    """One block of flash-decoding's online softmax in log2 units: s (R, BLOCK) scores of R rows (-inf
    where masked), m_i / l_i (R,) the running max and sum. Returns (m_new, alpha, p, l_new): p (R, BLOCK)
    = 2^(s - m_new) and alpha = 2^(m_i - m_new), the factor the running accumulators are rescaled by.
    A row with no valid slot yet keeps m = -inf and gets p = 0 (its max is taken as 0 in the exponents)."""
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_safe)
    p = tl.exp2(s - m_safe[:, None])
    return m_new, alpha, p, l_i * alpha + tl.sum(p, axis=1)


@triton.jit
def _dequant_gather(codes_base, codes_stride_s, scale_base, scale_stride_s, zero_base, zero_stride_s, rows, mask, chan,
                    BITS: tl.constexpr, QUANT_GROUP: tl.constexpr, HAS_ZERO: tl.constexpr):
    """Any layout: one (word, scale, zero) gather per element."""
    VPW: tl.constexpr = 32 // BITS
    word = tl.load(codes_base + rows * codes_stride_s + (chan // VPW)[None, :], mask=mask, other=0)
    # Arithmetic shift may drag the sign bit in; the mask keeps only this code's bits.
    code = (word >> ((chan % VPW) * BITS)[None, :]) & ((1 << BITS) - 1)
    group = (chan // QUANT_GROUP)[None, :]
    scale = tl.load(scale_base + rows * scale_stride_s + group, mask=mask, other=0.0).to(tl.float32)
    if HAS_ZERO:
        zero = tl.load(zero_base + rows * zero_stride_s + group, mask=mask, other=0.0).to(tl.float32)
    else:
        zero = float(1 << (BITS - 1))
    return (code.to(tl.float32) - zero) * scale


@triton.jit
def _codes_as(t, DTYPE: tl.constexpr, BITS: tl.constexpr):
    """Two codes per int32 lane of t (bits [0, 16) and [16, 32), each < 2^BITS) as exact DTYPE values.

    fp16 (any width up to 8 bits) and bf16 (up to 4 bits): OR each 16-bit half with the bit pattern of
    M = 1024 (fp16) / 128 (bf16), whose mantissa step is 1, so the half reads as M + code; one exact
    subtraction removes M. No integer-to-float conversion (quarter rate on the GPU). fp32, or codes too
    wide for the bf16 trick, convert from integers."""
    if DTYPE == tl.float16 or (DTYPE == tl.bfloat16 and BITS <= 4):
        MAGIC_BITS: tl.constexpr = 0x6400 if DTYPE == tl.float16 else 0x4300
        MAGIC: tl.constexpr = 1024.0 if DTYPE == tl.float16 else 128.0
        t = t | (MAGIC_BITS * 0x10001)
        lo = t.to(tl.int16).to(DTYPE, bitcast=True) - MAGIC  # int32 -> int16 keeps the low half
        hi = (t >> 16).to(tl.int16).to(DTYPE, bitcast=True) - MAGIC
    else:
        lo = (t & 0xFFFF).to(DTYPE)
        hi = (t >> 16).to(DTYPE)
    return lo, hi


@triton.jit
def quant_params(scale_base, scale_stride_s, zero_base, zero_stride_s, slots, slot_mask, num_quantized, chan0, rank,
                 C: tl.constexpr, BITS: tl.constexpr, QUANT_GROUP: tl.constexpr, HAS_ZERO: tl.constexpr,
                 DTYPE: tl.constexpr):
    """(scale, offset), each (BLOCK, C // QUANT_GROUP) in DTYPE, of the quant groups of channels chan0 + [0, C)
    at the quantized ones of ``slots`` (0 elsewhere and past the rank): what :func:`_dequant_words` needs
    besides the words. offset = -zero * scale (-2^(BITS-1) * scale when symmetric), rounded to DTYPE once.

    Kernels load these one block ahead: they are plain loads, which Triton's pipeliner leaves in the block
    that uses them (the words, which feed a dot, are copied asynchronously), so their latency stalled
    every block of the 4-bit kernels (ncu, H200, 64K)."""
    NG: tl.constexpr = C // QUANT_GROUP
    row_mask = slot_mask & (slots < num_quantized)
    rows = slots.to(tl.int64)[:, None]
    g_idx = tl.arange(0, NG)
    g_mask = row_mask[:, None] & (g_idx * QUANT_GROUP < rank)[None, :]
    g_idx = chan0 // QUANT_GROUP + g_idx
    scale = tl.load(scale_base + rows * scale_stride_s + g_idx[None, :], mask=g_mask, other=0.0)
    # The product of two DTYPE numbers is exact in fp32, so rounding it once to DTYPE (what a DTYPE
    # multiply does) equals rounding the fp32 product: the offset is computed in DTYPE directly.
    if HAS_ZERO:
        zero = tl.load(zero_base + rows * zero_stride_s + g_idx[None, :], mask=g_mask, other=0.0)
        offset = -(zero * scale)
    else:
        offset = scale * -float(1 << (BITS - 1))
    return scale.to(DTYPE), offset.to(DTYPE)


@triton.jit
def _dequant_words(codes_base, codes_stride_s, rows, row_mask, chan0, rank, scale, offset, BLOCK: tl.constexpr,
                   C: tl.constexpr, BITS: tl.constexpr, QUANT_GROUP: tl.constexpr, DTYPE: tl.constexpr):
    """Aligned layout (chan0 a multiple of the quant group, codes per word a power of two): (BLOCK, C)
    tile in DTYPE from whole words and per-group (scale, offset) from :func:`quant_params`.

    Codes of a word are taken two at a time (k and k + VPW/2, one per 16-bit half of a shifted copy of
    the word, see :func:`_codes_as`), then put back in channel order by a register permutation. The
    value is code * scale + offset: one DTYPE fma per channel instead of an fp32 subtract, multiply and
    conversion (this tile feeds a DTYPE dot either way); it differs from palu.quant's fp32
    dequantization by at most ~1 unit in the last place of DTYPE. Masked rows and channels past the
    rank have scale 0 and offset 0, so they come out 0 without a select."""
    VPW: tl.constexpr = 32 // BITS
    HALF_VPW: tl.constexpr = VPW // 2
    W: tl.constexpr = C // VPW
    NG: tl.constexpr = C // QUANT_GROUP
    w_idx = tl.arange(0, W)
    w_mask = row_mask[:, None] & (w_idx * VPW < rank)[None, :]  # never past the row's last word
    words = tl.load(codes_base + rows * codes_stride_s + (chan0 // VPW + w_idx)[None, :], mask=w_mask, other=0)
    # Per word (BLOCK, W): the scale and offset of its group, so the fma runs in the words' layout.
    WPG: tl.constexpr = QUANT_GROUP // VPW
    scale_w = tl.reshape(tl.broadcast_to(scale[:, :, None], (BLOCK, NG, WPG)), (BLOCK, W))
    offset_w = tl.reshape(tl.broadcast_to(offset[:, :, None], (BLOCK, NG, WPG)), (BLOCK, W))
    shifts = tl.arange(0, HALF_VPW) * BITS
    pairs = (words[:, :, None] >> shifts[None, None, :]) & (((1 << BITS) - 1) * 0x10001)  # (BLOCK, W, HALF_VPW)
    lo, hi = _codes_as(pairs, DTYPE, BITS)  # codes k and k + HALF_VPW of each word
    lo = lo * scale_w[:, :, None] + offset_w[:, :, None]
    hi = hi * scale_w[:, :, None] + offset_w[:, :, None]
    x = tl.permute(tl.join(lo, hi), (0, 1, 3, 2))  # (BLOCK, W, 2, HALF_VPW): channel order
    return tl.reshape(x, (BLOCK, C))


@triton.jit
def _load_part(
    fp_base, fp_stride_s, codes_base, codes_stride_s, scale_base, scale_stride_s, zero_base, zero_stride_s,
    slots, row_mask, chan_mask, num_quantized, chan0, rank, qscale, qoffset,
    IS_QUANT: tl.constexpr, BITS: tl.constexpr, QUANT_GROUP: tl.constexpr, HAS_ZERO: tl.constexpr,
    VEC_QUANT: tl.constexpr, PRE_Q: tl.constexpr, BLOCK: tl.constexpr, C: tl.constexpr, DTYPE: tl.constexpr,
):
    """(BLOCK, C) tile of one storage part, channels chan0 + [0, C); masked entries are 0. In DTYPE,
    except gathered codes (fp32). PRE_Q: the word path's (qscale, qoffset) were loaded by the caller."""
    chan = chan0 + tl.arange(0, C)
    mask = row_mask[:, None] & chan_mask[None, :]
    if IS_QUANT:
        rows = slots.to(tl.int64)[:, None]
        if VEC_QUANT:
            if not PRE_Q:
                qscale, qoffset = quant_params(scale_base, scale_stride_s, zero_base, zero_stride_s, slots, row_mask,
                                               num_quantized, chan0, rank, C, BITS, QUANT_GROUP, HAS_ZERO, DTYPE)
            x = _dequant_words(codes_base, codes_stride_s, rows, row_mask, chan0, rank, qscale, qoffset,
                               BLOCK, C, BITS, QUANT_GROUP, DTYPE)
        else:
            x = _dequant_gather(codes_base, codes_stride_s, scale_base, scale_stride_s, zero_base, zero_stride_s,
                                rows, mask, chan, BITS, QUANT_GROUP, HAS_ZERO)
    else:
        rows = (slots - num_quantized).to(tl.int64)[:, None]
        x = tl.load(fp_base + rows * fp_stride_s + chan[None, :], mask=mask, other=0.0)
    return x


@triton.jit
def load_latent_tile(
    fp_base, fp_stride_s, codes_base, codes_stride_s, scale_base, scale_stride_s, zero_base, zero_stride_s,
    slots, slot_mask, num_quantized, chan0, rank,
    HAS_QUANT: tl.constexpr, HAS_FP: tl.constexpr, BITS: tl.constexpr, QUANT_GROUP: tl.constexpr,
    HAS_ZERO: tl.constexpr, VEC_QUANT: tl.constexpr, C: tl.constexpr, DTYPE: tl.constexpr,
    qscale=0.0, qoffset=0.0, PRE_Q: tl.constexpr = False,
):
    """(BLOCK, C) tile of latent channels chan0 + [0, C) (those < chan0 + rank valid) at cache
    ``slots`` in DTYPE; masked entries are 0.

    Slots < num_quantized come from the packed codes (dequantized here), the rest from the fp part;
    a block that straddles the boundary loads both parts under disjoint masks and adds them.
    PRE_Q: (qscale, qoffset) of the word path are :func:`quant_params` of the same slots, slot_mask,
    chan0 and rank, loaded by the caller ahead of time.
    """
    BLOCK: tl.constexpr = slots.shape[0]
    chan_mask = tl.arange(0, C) < rank
    is_q = slots < num_quantized
    if HAS_QUANT:
        x = _load_part(
            fp_base, fp_stride_s, codes_base, codes_stride_s, scale_base, scale_stride_s, zero_base, zero_stride_s,
            slots, slot_mask & is_q, chan_mask, num_quantized, chan0, rank, qscale, qoffset,
            True, BITS, QUANT_GROUP, HAS_ZERO, VEC_QUANT, PRE_Q, BLOCK, C, DTYPE,
        )
        if HAS_FP:
            x += _load_part(
                fp_base, fp_stride_s, codes_base, codes_stride_s, scale_base, scale_stride_s, zero_base,
                zero_stride_s, slots, slot_mask & ~is_q, chan_mask, num_quantized, chan0, rank, qscale, qoffset,
                False, BITS, QUANT_GROUP, HAS_ZERO, VEC_QUANT, PRE_Q, BLOCK, C, DTYPE,
            ).to(x.dtype)  # disjoint masks: one of the two terms is 0, the sum is exact
    else:
        x = _load_part(
            fp_base, fp_stride_s, codes_base, codes_stride_s, scale_base, scale_stride_s, zero_base, zero_stride_s,
            slots, slot_mask, chan_mask, num_quantized, chan0, rank, qscale, qoffset,
            False, BITS, QUANT_GROUP, HAS_ZERO, VEC_QUANT, PRE_Q, BLOCK, C, DTYPE,
        )
    return x.to(DTYPE)


@triton.jit
def _rope_qk_block(
    start, num_slots, kv_start, k_fp, k_fp_ss, k_codes, k_codes_ss, k_scale, k_scale_ss, k_zero, k_zero_ss,
    num_quantized, k_off, k_rank, up1, up2, bias1, bias2, q1, q2, inv_freq, pos, rope_scale, qk_scale,
    out_base, rep_mask,
    N_REP: tl.constexpr, HAS_QUANT: tl.constexpr, HAS_FP: tl.constexpr, BITS: tl.constexpr, QUANT_GROUP: tl.constexpr,
    HAS_ZERO: tl.constexpr, HAS_BIAS: tl.constexpr, VEC_QUANT: tl.constexpr, RK_PAD: tl.constexpr,
    INTERPRET: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """Scores (N_REP, BLOCK_S) of slots [start, start + BLOCK_S) for one KV head, with its
    up-projection halves up1/up2 (RK_PAD, HALF_PAD) and queries q1/q2 (REP_PAD, HALF_PAD) resident;
    pos (BLOCK_S,) int32: the slots' positions, loaded by the caller a block ahead."""
    DTYPE = q1.dtype
    slots = start + tl.arange(0, BLOCK_S)
    slot_mask = slots < num_slots
    latent = load_latent_tile(
        k_fp, k_fp_ss, k_codes, k_codes_ss, k_scale, k_scale_ss, k_zero, k_zero_ss,
        slots, slot_mask & (slots >= kv_start), num_quantized, k_off, k_rank,
        HAS_QUANT, HAS_FP, BITS, QUANT_GROUP, HAS_ZERO, VEC_QUANT, RK_PAD, DTYPE,
    )  # (BLOCK_S, RK_PAD); left-padding slots are not read
    k1 = tl.dot(latent, up1)  # (BLOCK_S, HALF_PAD) fp32: first half of the key
    k2 = tl.dot(latent, up2)
    if HAS_BIAS:
        k1 += bias1
        k2 += bias2
    cos, sin = cos_sin(pos.to(tl.float32)[:, None] * inv_freq[None, :], INTERPRET)  # same fp32 product as transformers
    cos = cos * rope_scale
    sin = sin * rope_scale
    # rotate_half(k) = cat(-k2, k1): both halves rotate elementwise.
    k1_rot = (k1 * cos - k2 * sin).to(DTYPE)
    k2_rot = (k2 * cos + k1 * sin).to(DTYPE)
    scores = tl.dot(q1, tl.trans(k1_rot)) + tl.dot(q2, tl.trans(k2_rot))  # (REP_PAD, BLOCK_S)
    scores = tl.where((slots >= kv_start)[None, :], scores * qk_scale, float("-inf"))
    tl.store(out_base + slots[None, :], scores, mask=rep_mask[:, None] & slot_mask[None, :])


@triton.jit
def _rope_qk_kernel(
    q_ptr, q_sb, q_sh,
    k_fp_ptr, k_fp_sb, k_fp_ss, k_codes_ptr, k_codes_sb, k_codes_ss,
    k_scale_ptr, k_scale_sb, k_scale_ss, k_zero_ptr, k_zero_sb, k_zero_ss,
    up_ptr, up_sg, up_sr, k_offsets_ptr, bias_ptr,
    pos_ptr, pos_sb, kv_start_ptr, inv_freq_ptr,
    scores_ptr, scores_sb, scores_sh,
    rope_scale, qk_scale, num_quantized, num_slots, num_groups, slots_per_program, tune_bucket,
    HEAD_DIM: tl.constexpr, HALF_PAD: tl.constexpr, GS: tl.constexpr, N_REP: tl.constexpr, REP_PAD: tl.constexpr,
    RK_PAD: tl.constexpr, HAS_QUANT: tl.constexpr, HAS_FP: tl.constexpr, BITS: tl.constexpr,
    QUANT_GROUP: tl.constexpr, HAS_ZERO: tl.constexpr, HAS_BIAS: tl.constexpr, CHAN_ALIGN: tl.constexpr,
    VEC_QUANT: tl.constexpr, INTERPRET: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """Grid (GS, cdiv(S, slots_per_program), B*G): scores of KV head g*GS + jl's query heads for
    ``slots_per_program`` consecutive slots (a multiple of BLOCK_S), block by block.

    The head's two up-projection halves (2 * rk * D/2 elements) and its queries are loaded once per
    program and reused for all its blocks: with one block per program they were re-read from L2
    for every 64-128 slots, more bytes than the latent tile itself (measured: this kernel was 68%
    of the decode step at 64K). The local head index is the fastest grid axis, so the GS programs
    that read one latent tile run side by side and share it through L2.
    """
    jl = tl.program_id(0)
    first = tl.program_id(1) * slots_per_program
    g = tl.program_id(2) % num_groups
    b = (tl.program_id(2) // num_groups).to(tl.int64)
    HALF: tl.constexpr = HEAD_DIM // 2
    DTYPE = q_ptr.dtype.element_ty

    kv_start = tl.load(kv_start_ptr + b)
    t_idx = tl.arange(0, REP_PAD)
    head = (g * GS + jl) * N_REP + t_idx  # query heads reading this KV head
    # Alignment hints let the compiler issue 16-byte latent and up-projection loads.
    k_off = tl.multiple_of(tl.load(k_offsets_ptr + g), CHAN_ALIGN)
    k_rank = tl.multiple_of(tl.load(k_offsets_ptr + g + 1) - k_off, CHAN_ALIGN)
    r_idx = tl.arange(0, RK_PAD)

    # k_up rows [jl*D, jl*D + D/2) and [jl*D + D/2, (jl+1)*D), loaded transposed: (RK_PAD, HALF_PAD).
    half_idx = tl.arange(0, HALF_PAD)
    half_mask = half_idx < HALF
    up_mask = (r_idx < k_rank)[:, None] & half_mask[None, :]
    up_rows = g.to(tl.int64) * up_sg + (jl * HEAD_DIM + half_idx).to(tl.int64)[None, :] * up_sr
    up1 = tl.load(up_ptr + up_rows + r_idx[:, None], mask=up_mask, other=0.0)
    up2 = tl.load(up_ptr + up_rows + HALF * up_sr + r_idx[:, None], mask=up_mask, other=0.0)
    if HAS_BIAS:
        bias = bias_ptr + (g * GS + jl) * HEAD_DIM + half_idx
        bias1 = tl.load(bias, mask=half_mask, other=0.0).to(tl.float32)[None, :]
        bias2 = tl.load(bias + HALF, mask=half_mask, other=0.0).to(tl.float32)[None, :]
    else:
        bias1 = 0.0
        bias2 = 0.0
    inv_freq = tl.load(inv_freq_ptr + half_idx, mask=half_mask, other=0.0)
    q_rows = q_ptr + b * q_sb + head.to(tl.int64)[:, None] * q_sh
    q_mask = (t_idx < N_REP)[:, None] & half_mask[None, :]
    q1 = tl.load(q_rows + half_idx[None, :], mask=q_mask, other=0.0)
    q2 = tl.load(q_rows + HALF + half_idx[None, :], mask=q_mask, other=0.0)
    out_base = scores_ptr + b * scores_sb + head.to(tl.int64)[:, None] * scores_sh

    last = tl.minimum(first + slots_per_program, num_slots)
    pos_base = pos_ptr + b * pos_sb
    idx = tl.arange(0, BLOCK_S)
    # Positions are a plain load, which the pipeliner leaves in place: loaded one block ahead, so that
    # their latency is not waited for in every block (as measured in the fold kernel, ncu at 64K).
    pos = tl.load(pos_base + first + idx, mask=first + idx < num_slots, other=0)
    if INTERPRET:  # the interpreter cannot range() over run-time bounds: same blocks, same order
        start = first
        while start < last:
            pos_next = tl.load(pos_base + start + BLOCK_S + idx, mask=start + BLOCK_S + idx < num_slots, other=0)
            _rope_qk_block(start, num_slots, kv_start, k_fp_ptr + b * k_fp_sb, k_fp_ss, k_codes_ptr + b * k_codes_sb,
                           k_codes_ss, k_scale_ptr + b * k_scale_sb, k_scale_ss, k_zero_ptr + b * k_zero_sb, k_zero_ss,
                           num_quantized, k_off, k_rank, up1, up2, bias1, bias2, q1, q2, inv_freq,
                           pos, rope_scale, qk_scale, out_base, t_idx < N_REP,
                           N_REP, HAS_QUANT, HAS_FP, BITS, QUANT_GROUP, HAS_ZERO, HAS_BIAS, VEC_QUANT, RK_PAD,
                           INTERPRET, BLOCK_S)
            pos = pos_next
            start += BLOCK_S
    else:  # a `for` loop, which the compiler software-pipelines (num_stages)
        for start in range(first, last, BLOCK_S):
            pos_next = tl.load(pos_base + start + BLOCK_S + idx, mask=start + BLOCK_S + idx < num_slots, other=0)
            _rope_qk_block(start, num_slots, kv_start, k_fp_ptr + b * k_fp_sb, k_fp_ss, k_codes_ptr + b * k_codes_sb,
                           k_codes_ss, k_scale_ptr + b * k_scale_sb, k_scale_ss, k_zero_ptr + b * k_zero_sb, k_zero_ss,
                           num_quantized, k_off, k_rank, up1, up2, bias1, bias2, q1, q2, inv_freq,
                           pos, rope_scale, qk_scale, out_base, t_idx < N_REP,
                           N_REP, HAS_QUANT, HAS_FP, BITS, QUANT_GROUP, HAS_ZERO, HAS_BIAS, VEC_QUANT, RK_PAD,
                           INTERPRET, BLOCK_S)
            pos = pos_next


rope_qk_tuned = triton.autotune(
    configs=reconstruction_configs(),
    # tune_bucket (short / long loops per program) is only a key: the best pipelining differs.
    key=["HEAD_DIM", "GS", "N_REP", "RK_PAD", "HAS_QUANT", "HAS_FP", "BITS", "tune_bucket"],
    prune_configs_by={"early_config_prune": prune_reconstruction_configs},
    cache_results=True,  # best configs persist in Triton's cache dir: later processes skip tuning
)(_rope_qk_kernel)
