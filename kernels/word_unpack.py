"""Packed-code unpacking for the quantized Gluon single-pass kernel (:mod:`kernels.single_pass_ws_quant`).

Codes of 2/4/8 bits sit in int32 words, channel c of a word at bits [BITS * c, BITS * (c + 1)); each slot has one
scale (and zero-point) per quant group of QG channels. A code becomes ``code * scale + offset`` in the latent
dtype: OR-ed into the mantissa of a magic number (fp16 1024, bf16 128, whose mantissa step is 1) it is
``magic + code`` exactly, so one subtraction and one FMA finish it (no int-to-float conversion).

- :func:`_unpack_chunk`: a shared-memory tile of words into a shared-memory tile of fp16/bf16 (the dequant
  warps; the consumers' wgmmas read the result);
- :func:`_unpack_key_regs`: a key tile of 4- or 2-bit words straight into the registers of a wgmma's A operand
  (the consumers, so the key tile needs no fp16 ring in shared memory).
"""
from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl

# fp16/bf16 scales in 16 bytes: a TMA box row is at least this wide and starts at a multiple of it
SPQ_SCALE_ALIGN = gl.constexpr(8)
# _load_groups picks the slice for `sub` with gl.where over loaded values instead of an `if` per candidate. The
# `if` becomes predicated moves between candidate addresses that the compiler hoists out of the tile loop and
# spills: offline (4-bit Llama build) each consumer partition has 40 local loads with the `if`, 10 with where
# (stack 168 -> 48 B; 2 bits 200 -> 80 B), and ncu counts 0.12 M spill requests per 64K call instead of 1.20 M.
# Every candidate slice lies inside the scale box (_scale_box), so the extra loads read the box only. H200, one
# process each (seventeenth session): 211.5 vs 219.6 us at 64K with 4 bits, 217.6 vs 226.6 us with 2 bits, about
# 4% at batch 8 too. False keeps the `if` (for A/B runs: fold_heads_sweep's wu.SPQ_SCALE_WHERE=0).
SPQ_SCALE_WHERE = gl.constexpr(True)


@gluon.jit
def _scale_start(g, per_group):
    """(first column of group g's scale box, where the group's scales start in it): g * per_group rounded
    down to a 16-byte aligned column, and the rest (see _scale_box)."""
    first = g * per_group
    return first // SPQ_SCALE_ALIGN * SPQ_SCALE_ALIGN, first % SPQ_SCALE_ALIGN


@gluon.jit
def _load_groups(meta_smem, g0, sub, NG: gl.constexpr, layout: gl.constexpr, BLOCK_S: gl.constexpr,
                 SUB_STEP: gl.constexpr, ROW0: gl.constexpr = 0):
    """Columns sub + g0 + [0, NG) of meta_smem (1, BLOCK_S, SB) as (BLOCK_S, NG) in ``layout``. A shared-memory
    slice starts at a constant: one candidate per possible sub (a multiple of SUB_STEP, uniform over the
    program), picked by a branch or, with SPQ_SCALE_WHERE, by gl.where over every candidate's load."""
    rows = meta_smem.reshape([meta_smem.shape[1], meta_smem.shape[2]]).slice(ROW0, BLOCK_S, dim=0)
    x = rows.slice(g0, NG, dim=1).load(layout)
    for c in gl.static_range(1, SPQ_SCALE_ALIGN // SUB_STEP):
        if SPQ_SCALE_WHERE:
            x = gl.where(sub == c * SUB_STEP, rows.slice(g0 + c * SUB_STEP, NG, dim=1).load(layout), x)
        else:
            if sub == c * SUB_STEP:
                x = rows.slice(g0 + c * SUB_STEP, NG, dim=1).load(layout)
    return x


@gluon.constexpr_function
def _magic_bits(dtype):
    """fp16 bits of the magic number whose mantissa holds a code: fp16 1024 (mantissa step 1, so 1024 + code
    is exact), bf16 128 (codes of up to 4 bits)."""
    return 0x6400 if dtype == gl.float16 else 0x4300


@gluon.constexpr_function
def _magic_value(dtype):
    """The magic number of _magic_bits."""
    return 1024.0 if dtype == gl.float16 else 128.0


@gluon.jit
def _magic_code(t, DTYPE: gl.constexpr):
    """The code in bits [0, 16) of int32 ``t`` (OR-ed there into _magic_bits) as a DTYPE value."""
    return t.to(gl.int16).to(DTYPE, bitcast=True) - _magic_value(DTYPE)


@gluon.jit
def _scale_offset(scale_smem, zero_smem, g0, sub, NG: gl.constexpr, layout: gl.constexpr, BLOCK_S: gl.constexpr,
                  SUB_STEP: gl.constexpr, HAS_ZERO: gl.constexpr, BITS: gl.constexpr, ROW0: gl.constexpr = 0):
    """(scale, offset) of quant groups sub + g0 + [0, NG) of each slot, (BLOCK_S, NG) in ``layout``, so that a
    code's value is code * scale + offset (symmetric codes: centred at 2^(BITS - 1))."""
    scale = _load_groups(scale_smem, g0, sub, NG, layout, BLOCK_S, SUB_STEP, ROW0)
    if HAS_ZERO:
        zero = _load_groups(zero_smem, g0, sub, NG, layout, BLOCK_S, SUB_STEP, ROW0)
        offset = -(zero * scale)
    else:
        offset = scale * -float(1 << (BITS - 1))
    return scale, offset


@gluon.jit
def _chunk_words(words_smem, scale_smem, zero_smem, g0, sub, BLOCK_S: gl.constexpr, BITS: gl.constexpr,
                 QG: gl.constexpr, HAS_ZERO: gl.constexpr, SUB_STEP: gl.constexpr, ROW0: gl.constexpr):
    """(words (BLOCK_S, NG, WPG) int32, scale, offset (BLOCK_S, NG)) of a chunk for _unpack_chunk(_pairs): each
    thread holds the whole words of one quant group of a slot, so one scale per run of words."""
    CW: gl.constexpr = words_smem.shape[2]
    WPG: gl.constexpr = QG // (32 // BITS)  # words per quant group
    NG: gl.constexpr = CW // WPG
    l3: gl.constexpr = gl.BlockedLayout([1, 1, WPG], [32 // NG, NG, 1], [4, 1, 1], [2, 1, 0])
    w2: gl.constexpr = gl.BlockedLayout([1, WPG], [32 // NG, NG], [4, 1], [1, 0])
    FULL: gl.constexpr = words_smem.shape[1]
    words = gl.reshape(words_smem.reshape([FULL, CW]).slice(ROW0, BLOCK_S, dim=0).load(w2), (BLOCK_S, NG, WPG))
    words = gl.convert_layout(words, l3)  # the same mapping, named (a no-op)
    s_layout: gl.constexpr = gl.SliceLayout(2, l3)
    scale, offset = _scale_offset(scale_smem, zero_smem, g0, sub, NG, s_layout, BLOCK_S, SUB_STEP, HAS_ZERO, BITS,
                                  ROW0)
    return words, scale, offset


@gluon.jit
def _unpack_chunk(words_smem, scale_smem, zero_smem, g0, sub, dst, BLOCK_S: gl.constexpr, BITS: gl.constexpr,
                  QG: gl.constexpr, HAS_ZERO: gl.constexpr, SUB_STEP: gl.constexpr, ROW0: gl.constexpr = 0):
    """Unpack one chunk into ``dst``: words (1, BLOCK_S, CW) int32, scales (and zero-points) of its quant
    groups at columns sub + g0 + [0, NG) of scale_smem / zero_smem (1, BLOCK_S, SB) (sub: a run-time multiple
    of SUB_STEP below 8, the same for the whole program; g0 constexpr); dst (1, BLOCK_S, CW * VPW)
    fp16/bf16. Each thread takes the whole words of one quant group of a slot, so one scale per word run."""
    VPW: gl.constexpr = 32 // BITS
    HALF_VPW: gl.constexpr = VPW // 2
    CW: gl.constexpr = words_smem.shape[2]
    DTYPE: gl.constexpr = dst.dtype
    FULL: gl.constexpr = words_smem.shape[1]
    words, scale, offset = _chunk_words(words_smem, scale_smem, zero_smem, g0, sub, BLOCK_S, BITS, QG, HAS_ZERO,
                                        SUB_STEP, ROW0)
    scale = scale[:, :, None]
    offset = offset[:, :, None]
    MAGIC_BITS: gl.constexpr = _magic_bits(DTYPE)
    MASK2: gl.constexpr = ((1 << BITS) - 1) * 0x10001
    leaves = ()
    for half in gl.static_range(2):
        for k in gl.static_range(HALF_VPW):
            # code k in bits [0, 16), code k + VPW/2 in bits [16, 32) of one shifted copy of the word
            t = ((words >> (BITS * k)) & MASK2) | (MAGIC_BITS * 0x10001)
            if half == 1:
                t = t >> 16
            code = _magic_code(t, DTYPE)
            leaves = leaves + (code * scale + offset,)
    # Channel c of a word is leaf c (c = half * VPW/2 + k); join c with c + n/2 level by level so that the
    # joined axes read row-major as c.
    LOG_VPW: gl.constexpr = 4 if BITS == 2 else (3 if BITS == 4 else 2)
    for level in gl.static_range(LOG_VPW):
        joined = ()
        for c in gl.static_range((VPW >> level) // 2):
            joined = joined + (gl.join(leaves[c], leaves[c + (VPW >> level) // 2]),)
        leaves = joined
    dst.reshape([FULL, CW * VPW]).slice(ROW0, BLOCK_S, dim=0).store(gl.reshape(leaves[0], (BLOCK_S, CW * VPW)))


@gluon.constexpr_function
def _key_word_layout(block_s, groups, words_per_group, flat=False):
    """Layout of (slot, quant group, word of the group, lane t) for _unpack_key_regs (flat: of the words as
    (slot, word), t replicated). Registers run over the words of a row and its row + 8, the four lanes of a quad
    over t and the other eight over rows, warps over 16-row blocks: the A operand's layout once the two codes of
    a byte are joined as the last axis. BLOCK_S = 64 (one m64 wgmma over 4 warps)."""
    log_w = (groups * words_per_group).bit_length() - 1
    if flat:
        return gl.DistributedLinearLayout(
            reg_bases=[[0, 1 << i] for i in range(log_w)] + [[8, 0]],
            lane_bases=[[0, 0], [0, 0], [1, 0], [2, 0], [4, 0]], warp_bases=[[16, 0], [32, 0]], block_bases=[],
            shape=[block_s, groups * words_per_group])
    log_m = words_per_group.bit_length() - 1
    return gl.DistributedLinearLayout(
        reg_bases=([[0, 0, 1 << i, 0] for i in range(log_m)] + [[0, 1 << i, 0, 0] for i in range(log_w - log_m)]
                   + [[8, 0, 0, 0]]),
        lane_bases=[[0, 0, 0, 1], [0, 0, 0, 2], [1, 0, 0, 0], [2, 0, 0, 0], [4, 0, 0, 0]],
        warp_bases=[[16, 0, 0, 0], [32, 0, 0, 0]], block_bases=[], shape=[block_s, groups, words_per_group, 4])


@gluon.jit
def _key_words(words_smem, scale_smem, zero_smem, sub, BLOCK_S: gl.constexpr, BITS: gl.constexpr, QG: gl.constexpr,
               HAS_ZERO: gl.constexpr, SUB_STEP: gl.constexpr):
    """(words (BLOCK_S, NG, MPG) int32, scale, offset (BLOCK_S, NG), lane (4,)) of a key tile for the register
    unpackers, in the layouts of _key_word_layout: each thread its two rows' words, lane the position t of the
    thread in its quad."""
    CW: gl.constexpr = words_smem.shape[2]  # words per slot
    MPG: gl.constexpr = QG // (32 // BITS)  # words per quant group
    NG: gl.constexpr = CW // MPG
    l4: gl.constexpr = _key_word_layout(BLOCK_S, NG, MPG)
    w3: gl.constexpr = gl.SliceLayout(3, l4)
    s2: gl.constexpr = gl.SliceLayout(2, w3)
    w2: gl.constexpr = _key_word_layout(BLOCK_S, NG, MPG, flat=True)
    words = words_smem.reshape([BLOCK_S, CW]).load(w2)
    words = gl.convert_layout(gl.reshape(words, (BLOCK_S, NG, MPG)), w3)  # the same mapping, named
    scale, offset = _scale_offset(scale_smem, zero_smem, 0, sub, NG, s2, BLOCK_S, SUB_STEP, HAS_ZERO, BITS)
    lane = gl.arange(0, 4, layout=gl.SliceLayout(0, gl.SliceLayout(1, gl.SliceLayout(2, l4))))
    return words, scale, offset, lane


@gluon.jit
def _unpack_key_regs(words_smem, scale_smem, zero_smem, sub, BLOCK_S: gl.constexpr, BITS: gl.constexpr,
                     QG: gl.constexpr, HAS_ZERO: gl.constexpr, SUB_STEP: gl.constexpr, DTYPE: gl.constexpr,
                     A_LAYOUT: gl.constexpr):
    """A key tile of 4- or 2-bit codes as the A operand of the score wgmma: (BLOCK_S, R) in DTYPE and A_LAYOUT,
    the DotOperandLayout (k_width 2) of an m64 wgmma over 4 warps. words_smem (1, BLOCK_S, R / VPW) int32;
    scales (and zero-points) of the slot's quant groups at columns sub + [0, R / QG) of scale_smem / zero_smem
    (1, BLOCK_S, SB) (sub as for _unpack_chunk).

    In that layout lane t of a quad holds, of each of its two rows, channels 8m + 2t and 8m + 2t + 1 for every
    octet m. With 4 bits those are byte t of word m; with 2 bits, the 4 bits at 16 (m % 2) + 4t of word m / 2. So
    each thread loads its rows' words (the four lanes of a quad the same ones) and keeps its bits of each: each
    pair of codes becomes one fp16x2 register of the operand."""
    VPW: gl.constexpr = 32 // BITS
    R: gl.constexpr = words_smem.shape[2] * VPW
    words, scale, offset, lane = _key_words(words_smem, scale_smem, zero_smem, sub, BLOCK_S, BITS, QG, HAS_ZERO,
                                            SUB_STEP)
    scale = scale[:, :, None, None]
    offset = offset[:, :, None, None]
    x = words[:, :, :, None] >> (lane * (2 * BITS))[None, None, None, :]  # this lane's bits at the bottom
    MAGIC: gl.constexpr = _magic_bits(DTYPE) * 0x10001
    if BITS == 4:
        t = (x & 0xF) | ((x & 0xF0) << 12) | MAGIC  # code 2t of the byte in bits [0, 16), code 2t + 1 above
        a = _code_pair(t, scale, offset, DTYPE)  # (BLOCK_S, NG, MPG, 4, 2): channel order
    else:
        t0 = (x & 0x3) | ((x & 0xC) << 14) | MAGIC  # octet 2w: bits [0, 4) of x
        t1 = ((x >> 16) & 0x3) | ((x >> 2) & 0x30000) | MAGIC  # octet 2w + 1: bits [16, 20) of x
        pairs = gl.join(_code_pair(t0, scale, offset, DTYPE), _code_pair(t1, scale, offset, DTYPE))
        a = gl.permute(pairs, (0, 1, 2, 5, 3, 4))  # (BLOCK_S, NG, MPG, octet, 4, 2): channel order
    return gl.convert_layout(gl.reshape(a, (BLOCK_S, R)), A_LAYOUT)


@gluon.jit
def _code_pair(t, scale, offset, DTYPE: gl.constexpr):
    """The two codes OR-ed into the magic number's halves of int32 ``t`` as values, joined as a last axis."""
    lo = _magic_code(t, DTYPE)
    hi = _magic_code(t >> 16, DTYPE)
    return gl.join(lo * scale + offset, hi * scale + offset)


# Nibble pairs (SPQ_NIBBLE_PAIRS in kernels.single_pass_ws_quant; 4-bit codes, fp16): code c of a word at bits
# [4c, 4c + 4) and code c + 4 at [16 + 4c, 20 + 4c) sit at the same place in the word's two 16-bit halves, so one
# AND-OR (lop3) puts both into the mantissas of an fp16x2 1024, and packed fp16x2 instructions finish the pair: a
# word's eight codes in 13 instructions (a shift, four lop3, two exact subtractions of the magic, two exact
# rescales of the pairs read 16 times too large, four fp16x2 FMAs with the scale and offset), where the channel-order
# unpacking above spends about 4 per code (offline sm_90 build: 808 instructions per tile in the dequant loop).
# The pairs come out as channels (c, c + 4), not (2c, 2c + 1): within each octet the kernel works in the order
# NIBBLE_PAIR_ORDER (logical channel j is code nibble_pair_channel(j) of its word), and whatever meets those
# channels follows it: the folded rows' rank columns are permuted the same way (the score wgmma's K), the value
# accumulators' rows are stored to the channels they hold.
NIBBLE_PAIR_ORDER = (0, 4, 1, 5, 2, 6, 3, 7)


def nibble_pair_channel(j):
    """The code (channel) at logical position j in nibble-pair order, NIBBLE_PAIR_ORDER within each octet: of an int
    or elementwise of an integer tensor (the host's rows permutation)."""
    return j // 8 * 8 + (j % 8) // 2 + (j % 2) * 4


@gluon.jit
def _nibble_pair_channel(j):
    """nibble_pair_channel inside a kernel (the value accumulators' channels)."""
    return j // 8 * 8 + (j % 8) // 2 + (j % 2) * 4


@gluon.jit
def _pack_pair(x):
    """An fp16 tensor as int32 words holding it twice (an fp16x2 operand)."""
    return gl.inline_asm_elementwise("mov.b32 $0, {$1, $1};", "=r,h", [x], dtype=gl.int32, is_pure=True, pack=1)


@gluon.jit
def _word_pairs(w, s2, o2):
    """The eight 4-bit codes of int32 words w as four fp16x2 words (int32), code * scale + offset with s2 / o2
    (fp16x2 of _pack_pair): codes (0, 4), (1, 5), (2, 6), (3, 7). Codes 1, 3, 5, 7 land 16 times too large in
    the magic's mantissa (bits 4-7 of a half): 1024 + 16 c, brought back exactly as x / 16 - 64."""
    return gl.inline_asm_elementwise(
        """{
        .reg .b32 m, k16, k64, w8, a, b, c, d;
        mov.b32 m, 0x64006400;
        mov.b32 k16, 0x2C002C00;
        mov.b32 k64, 0xD400D400;
        shr.u32 w8, $4, 8;
        lop3.b32 a, $4, 0x000F000F, 0x64006400, 0xEA;
        lop3.b32 b, $4, 0x00F000F0, 0x64006400, 0xEA;
        lop3.b32 c, w8, 0x000F000F, 0x64006400, 0xEA;
        lop3.b32 d, w8, 0x00F000F0, 0x64006400, 0xEA;
        sub.f16x2 a, a, m;
        sub.f16x2 c, c, m;
        fma.rn.f16x2 b, b, k16, k64;
        fma.rn.f16x2 d, d, k16, k64;
        fma.rn.f16x2 $0, a, $5, $6;
        fma.rn.f16x2 $1, b, $5, $6;
        fma.rn.f16x2 $2, c, $5, $6;
        fma.rn.f16x2 $3, d, $5, $6;
        }""",
        "=r,=r,=r,=r,r,r,r", [w, s2, o2], dtype=(gl.int32, gl.int32, gl.int32, gl.int32), is_pure=True, pack=1)


@gluon.jit
def _lane_pair(x, s2, o2):
    """Codes 0 and 4 of int32 words x (a word shifted right by 4 t for lane t: its codes t and t + 4) as two fp16
    values, code * scale + offset with s2 / o2 (fp16x2 of _pack_pair)."""
    return gl.inline_asm_elementwise(
        """{
        .reg .b32 m, a;
        mov.b32 m, 0x64006400;
        lop3.b32 a, $2, 0x000F000F, 0x64006400, 0xEA;
        sub.f16x2 a, a, m;
        fma.rn.f16x2 a, a, $3, $4;
        mov.b32 {$0, $1}, a;
        }""",
        "=h,=h,r,r,r", [x, s2, o2], dtype=(gl.float16, gl.float16), is_pure=True, pack=1)


@gluon.jit
def _unpack_chunk_pairs(words_smem, scale_smem, zero_smem, g0, sub, dst, BLOCK_S: gl.constexpr, BITS: gl.constexpr,
                        QG: gl.constexpr, HAS_ZERO: gl.constexpr, SUB_STEP: gl.constexpr, ROW0: gl.constexpr = 0):
    """_unpack_chunk for 4-bit codes into fp16, in nibble-pair order (see NIBBLE_PAIR_ORDER): each word's four
    fp16x2 pairs from _word_pairs, stored as 16 bytes (dst seen as int32 pairs of channels)."""
    gl.static_assert(BITS == 4, "nibble pairs are 4-bit codes")
    CW: gl.constexpr = words_smem.shape[2]
    FULL: gl.constexpr = words_smem.shape[1]
    words, scale, offset = _chunk_words(words_smem, scale_smem, zero_smem, g0, sub, BLOCK_S, BITS, QG, HAS_ZERO,
                                        SUB_STEP, ROW0)
    p0, p1, p2, p3 = _word_pairs(words, _pack_pair(scale)[:, :, None], _pack_pair(offset)[:, :, None])
    pairs = gl.join(gl.join(p0, p2), gl.join(p1, p3))  # (.., 2, 2): element [i][j] is pair 2 i + j
    dst32 = dst._reinterpret(gl.int32, [dst.shape[0], FULL, CW * 4],
                             gl.NVMMASharedLayout(swizzle_byte_width=dst.layout.swizzle_byte_width,
                                                  element_bitwidth=32, rank=3))
    dst32.reshape([FULL, CW * 4]).slice(ROW0, BLOCK_S, dim=0).store(gl.reshape(pairs, (BLOCK_S, CW * 4)))


@gluon.jit
def _unpack_key_regs_pairs(words_smem, scale_smem, zero_smem, sub, BLOCK_S: gl.constexpr, QG: gl.constexpr,
                           HAS_ZERO: gl.constexpr, SUB_STEP: gl.constexpr, A_LAYOUT: gl.constexpr):
    """_unpack_key_regs for 4-bit codes into fp16, in nibble-pair order: lane t of a quad holds logical channels
    8m + 2t, 8m + 2t + 1 of octet (word) m, codes t and t + 4 of the word (_lane_pair of the word shifted by 4 t)."""
    R: gl.constexpr = words_smem.shape[2] * 8
    words, scale, offset, lane = _key_words(words_smem, scale_smem, zero_smem, sub, BLOCK_S, 4, QG, HAS_ZERO, SUB_STEP)
    x = words[:, :, :, None] >> (lane * 4)[None, None, None, :]
    lo, hi = _lane_pair(x, _pack_pair(scale)[:, :, None, None], _pack_pair(offset)[:, :, None, None])
    return gl.convert_layout(gl.reshape(gl.join(lo, hi), (BLOCK_S, R)), A_LAYOUT)
