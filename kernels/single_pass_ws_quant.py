"""Single-pass decode attention over quantized latents: the Gluon kernel of :mod:`kernels.single_pass_ws`
with its rings filled from packed codes (sm_90; 2/4/8-bit codes in int32 words, per-token quant groups).

The fp16 kernel is bound by its consumers' chain per tile (score wgmmas, RoPE products, softmax, value
wgmmas), not by memory; the Triton kernels that served quantized latents so far unpack codes in the same
warps that run the dots and measured 0.45x SDPA at 64K (H200, 4 bits). Here the unpacking has warps of its
own, so the consumers run unchanged (:func:`kernels.single_pass_ws._consume`) on the same fp16/bf16 rings:

- a TMA warp loads the folded rows once, then per tile of BLOCK_S slots the key words (BLOCK_S, R / VPW)
  with their scales and zero-points into a ring of KWS word stages, and the tile's value words (NVB boxes of
  VB / VPW words) with theirs into a ring of VWS stages;
- a dequant warpgroup unpacks each stage in registers (code * scale + offset in the latent dtype, as the
  Triton kernels do: within ~1 unit in the last place of palu.quant's fp32 dequantization), writes the
  fp16/bf16 key tile and value boxes into the consumers' rings (keys one tile ahead of values, as the fp16
  kernel's producer: a consumer needs its keys first) and hands the word stage back;
- two consumer warpgroups as in the fp16 kernel.

With 4- and 2-bit codes (:func:`spq_reg_keys`) the consumers unpack the key words themselves, straight into the
registers of their score wgmmas' A operand (:func:`kernels.word_unpack._unpack_key_regs`), and the dequant
warps do the values only. Why: the rings of both kernels plus the word stages do not fit beside four heads'
folded rows (128 KB for a Llama group), and with two heads per program each tile is unpacked twice per group
and the consumers' chain (the bound) runs twice per tile. Without the fp16 key ring four heads fit (227,480 B
with two key word stages, one per consumer, and one value word stage). 8-bit codes keep the dequant warps for
keys too, and :func:`spq_fold_heads` takes fewer heads per program where the rings do not fit.

Measured (H200, 32 x 128 heads, ranks 128 / 384 per group of 4, 4 bits, SDPA over fp16 K/V in the same call;
kernels/NOTES.md): 212.6 us against 237.9 us for SDPA at 64K (1.12x, 49% of the roofline), 817.3 vs 923.8 us at
256K, 25.5 vs 21.7 us at 4K (seventeenth session, with the scale slices picked by gl.where: SPQ_SCALE_WHERE).
Sixteenth session, with the value boxes unpacked in halves (SPQ_VALUE_PARTS): 222.6 us. Fifteenth session,
with the rows' descriptors built per tile (SPQ_ROWS_PER_TILE): 233.2 us. Before: 285.6 us at
64K with the keys unpacked by the consumers (fourteenth session), 332.5 us with the keys unpacked by the dequant
warps and two heads per program (thirteenth), 545.2 us for the Triton kernels. 2-bit
codes: 216.8 us at 64K (1.10x; 227.6 us before SPQ_SCALE_WHERE) with 56 registers for the dequant warps
(spq_registers); 537.4 us before the halves (fifteenth session), 684.9 with the keys unpacked by the dequant warps.

Scope (:func:`single_pass_ws_quant_unsupported`): that of the fp16 kernel (fp16/bf16, n_rep == 1, equal
power-of-two key ranks, equal value ranks; a full-precision window after the quantized slots goes through the
fp16 kernel in a launch of its own, merged with these partials), 2, 4 or 8 bits
(bf16: 2 or 4, whose codes its 7-bit mantissa holds exactly), a power-of-two quant group of whole words that
divides the key rank and the value box, and 16-byte aligned word and scale rows (TMA).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Optional

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, mbarrier, tma

from .host_math import next_pow2
from .fold_scores_ws import (fold_shape_unsupported, hopper_unsupported, latent_dtype_unsupported,
                             load_rows, mbarriers, rows_buffers, tma_aligned)
from .single_pass_ws import (DECODE_STEP_ARGS, DECODE_STEP_PTRS, SP_BLOCK_S, SP_KEY_STAGES, SP_SMEM_LIMIT,
                             SP_THREAD_L, _consume, p_buffers, pick_fold_heads, single_pass_ws_unsupported, sp_launch,
                             sp_program, sp_shape_unsupported, sp_shared_bytes, sp_value_box, sp_value_stages,
                             value_buffer_free, value_empty_barriers)
from .word_unpack import SPQ_SCALE_ALIGN, _scale_start, _unpack_chunk, _unpack_chunk_pairs, nibble_pair_channel

SPQ_BITS = (2, 4, 8)
# Whether method="auto" takes this kernel for quantized latents where it applies (else the Triton kernels):
# 332.5 vs 545.2 us at 64K, 32.9 vs 51.4 us at 4K in one call (H200, 4 bits; kernels/NOTES.md, thirteenth
# session), before the key unpacking moved into the consumers (below), which made it faster still.
SPQ_AUTO = True
SPQ_KEY_WORD_STAGES = 3  # key word stages: the TMA warp refills one as soon as the dequant warps have read it
SPQ_VALUE_WORD_STAGES = 2  # value word stages (a whole tile's boxes each)
# 4- and 2-bit keys unpacked by the consumers into their score wgmmas' registers (word_unpack._unpack_key_regs):
# no fp16 key ring, so that a Llama group's four heads fit in one program, with two key word stages (one per
# consumer, as the fp16 key ring) and one value word stage. 278.0 vs 334.2 us at 64K, 2265.9 vs 2818.7 us at
# B=8 x 64K, 33.5 vs 34.2 us at 4K against the keys unpacked by the dequant warps, two heads per program
# (H200, 4 bits, one call; kernels/NOTES.md, fourteenth session). 2 bits: 537.4 vs 684.9 us at 64K, 4251.2 vs
# 5475.4 us at B=8 x 64K (fifteenth session).
SPQ_REG_KEYS = True
SPQ_REG_KEY_BITS = (2, 4)  # _unpack_key_regs: a thread's codes are whole bytes (4 bits) or nibbles (2 bits)
SPQ_REG_KEY_WORD_STAGES = 2
SPQ_REG_VALUE_WORD_STAGES = 1
# The folded rows' wgmma descriptors built per tile (_consume's ROWS_PER_TILE) instead of hoisted out of the loop
# and spilled (208 vs 624 B of stack, 109 vs 277 local loads in the 4-bit offline build; ncu counted 6.2 M spill
# requests in one 64K call without it): 233.9 vs 281.1 us at 64K, 1828.7 vs 2298.6 us at B=8 x 64K, 28.4 vs 33.3
# us at 4K (H200, 4 bits, one call; kernels/NOTES.md, fifteenth session). The fp16 kernel measured 2% slower with
# it at 128 rows per score wgmma (fourteenth session); at 64 rows it builds them per tile too (SP_ROWS_PER_TILE).
SPQ_ROWS_PER_TILE = gl.constexpr(True)
# The fp16 kernel's SP_SCORE_PIPE for these consumers. Off: with it the 4-bit kernel measured 219.7 vs 213.1 us at
# 64K and 1788.6 vs 1662.5 us at B=8 x 64K (64-row score wgmmas; with 128 rows 337.5 us at 64K: 198 local loads per
# consumer in the offline build, against 10 and 1). H200, one call, one process each; nineteenth session.
SPQ_SCORE_PIPE = False
# The dequant warps unpack each value box in this many parts of BLOCK_S / parts slots: half a box's codes live in
# their 40 or 56 registers at a time (local loads in the offline build's dequant partition: 2 bits 147 -> 84, 0
# with 56 registers; 4 bits 27 -> 0). 220.7 vs 232.1 us at 64K, 1700.4 vs 1797.5 us at B=8 x 64K, 4 bits; 2 bits
# (with 56 registers) 225.0 vs 538.9 us and 1697.2 vs 4293.0 us (H200, one call; kernels/NOTES.md, sixteenth
# session). Four parts spill more offline (590 local loads at 2 bits).
SPQ_VALUE_PARTS = gl.constexpr(2)
# The compiler aligns each buffer: 448-520 B over spq_shared_bytes at the built shapes (more buffers than the
# fp16 kernel), so programs are kept this much under the limit.
SPQ_SMEM_MARGIN = 1024
# 4-bit codes with fp16 latents: unpack in nibble pairs (kernels.word_unpack.NIBBLE_PAIR_ORDER): codes c and c + 4
# of a word with one AND-OR and packed fp16x2 instructions, the consumers' key operand and the dequant warps' value
# boxes in that channel order within each octet, the folded rows' rank columns permuted to match (written so by
# _fold_rows_kernel's PAIR_COLS; gathered per call beside a full-precision window, whose fp16 launch keeps the
# channel order) and the value accumulators stored to the channels they hold. Offline SASS (sm_90,
# Llama shape, 4 bits): per tile and warp the dequant loop goes from 808 to 474 instructions and the consumer
# loops from 1479 / 1509 to 1301 / 1319, stack 96 -> 80 B, no local memory (twenty-ninth session,
# benchmarks/results/kernel/offline/session29/). Its PTX is
# checked on the CPU (tests/kernels/test_nibble_pairs.py); not yet run on a GPU (test_gpu_nibble_pairs), so off.
SPQ_NIBBLE_PAIRS = False
# 13 warps in four warpgroups (two consumers, the dequant warps, the TMA warp): 128 registers per thread at
# launch, then per warpgroup at most 4 x 128 in all (setmaxnreg moves registers between warpgroups). 4 and 8 bits:
# 224 for each consumer, 40 for the dequant warps, 24 for the TMA warp; with the keys unpacked by the consumers and
# per-tile rows descriptors, 232 for the consumers measured the same (233.1 vs 233.9 us at 64K, 1819.8 vs 1828.7
# us at B=8 x 64K; fifteenth session). 2 bits: a word holds twice the codes, and the dequant warps need 56 to
# unpack half a value box without spilling (225.0 vs 373.8 us at 64K with 40, two value parts; sixteenth
# session). spq_registers keeps 2 x consumers + dequant + TMA warp within 4 x 128, so 56 comes with 216 per
# consumer. That sum is stricter than what runs: 232 / 40 / 24 (528) ran in the fifteenth session; counted per warp
# (4 + 4 + 4 + 1 of the 16 launched) it is 2040 of 2048 registers. 224 / 56 was not tried.
SPQ_MAXNREG = 128
SPQ_CONSUMER_REGS = 224
SPQ_DEQUANT_REGS = 40
SPQ_PRODUCER_REGS = 24
SPQ_2BIT_CONSUMER_REGS = 216
SPQ_2BIT_DEQUANT_REGS = 56


def _scale_step(channels: int, quant_group: int) -> int:
    """Scale columns between the possible starts of a group's scales within a 16-byte aligned box start."""
    return math.gcd(channels // quant_group, SPQ_SCALE_ALIGN.value)


def _scale_box(channels: int, quant_group: int) -> int:
    """Scales per TMA box row: a group's scales start at a multiple of _scale_step past the box start, which
    TMA needs 16-byte aligned (an unaligned innermost start coordinate is an illegal instruction on sm_90)."""
    n = channels // quant_group
    align = SPQ_SCALE_ALIGN.value
    return next_pow2(max(align, n + align - _scale_step(channels, quant_group)))


def spq_reg_keys(bits: int) -> bool:
    """Whether the consumers unpack the key codes themselves (SPQ_REG_KEYS; codes of SPQ_REG_KEY_BITS)."""
    return SPQ_REG_KEYS and bits in SPQ_REG_KEY_BITS


def spq_nibble_pairs(bits: int, dtype: torch.dtype) -> bool:
    """Whether a launch unpacks in nibble pairs (SPQ_NIBBLE_PAIRS: 4-bit codes, fp16, keys in the consumers)."""
    return SPQ_NIBBLE_PAIRS and bits == 4 and dtype == torch.float16 and spq_reg_keys(bits)


@functools.lru_cache(maxsize=None)
def _pair_columns(rank: int, device: torch.device) -> torch.Tensor:
    """Rank columns in nibble-pair order: column j of the permuted rows is column nibble_pair_channel(j). Built
    by device arithmetic, not copied from the host: the first call may be inside a CUDA graph's capture."""
    return nibble_pair_channel(torch.arange(rank, device=device))


def spq_registers(bits: int) -> tuple[int, int, int]:
    """Registers per thread of the consumers, the dequant warps and the TMA warp after setmaxnreg, for ``bits``-bit
    codes. Two consumer warpgroups, one dequant warpgroup and the TMA warp's warpgroup share the 4 x SPQ_MAXNREG
    that the launch gives four warpgroups."""
    if bits == 2:
        regs = SPQ_2BIT_CONSUMER_REGS, SPQ_2BIT_DEQUANT_REGS, SPQ_PRODUCER_REGS
    else:
        regs = SPQ_CONSUMER_REGS, SPQ_DEQUANT_REGS, SPQ_PRODUCER_REGS
    if 2 * regs[0] + regs[1] + regs[2] > 4 * SPQ_MAXNREG or any(r % 8 for r in regs):
        raise ValueError(f"register split {regs} for {bits}-bit codes: setmaxnreg needs multiples of 8 whose sum "
                         f"(consumers twice) is at most {4 * SPQ_MAXNREG}")
    return regs


def spq_word_stages(bits: int) -> tuple[int, int]:
    """(key, value) word stages of a program."""
    if spq_reg_keys(bits):
        return SPQ_REG_KEY_WORD_STAGES, SPQ_REG_VALUE_WORD_STAGES
    return SPQ_KEY_WORD_STAGES, SPQ_VALUE_WORD_STAGES


def spq_shared_bytes(fold_heads: int, head_dim: int, rank: int, rank_v: int, elt: int, bits: int,
                     quant_group: int, has_zero: bool) -> int:
    """Shared memory of one program: the fp16 kernel's (folded rows, key and value rings, P, their barriers) less
    the key ring where the consumers unpack the keys (spq_reg_keys), plus the word stages and their barriers."""
    vpw = 32 // bits
    meta = 2 if has_zero else 1
    shared = sp_shared_bytes(fold_heads, head_dim, rank, rank_v, elt, tile_ready=False)
    if spq_reg_keys(bits):  # no fp16 key ring, nor its ready and empty barriers
        shared -= SP_KEY_STAGES * (SP_BLOCK_S * rank * elt + 2 * 8)
    kword = SP_BLOCK_S * (4 * rank // vpw + meta * elt * _scale_box(rank, quant_group))
    vword = SP_BLOCK_S * (4 * rank_v // vpw + meta * elt * _scale_box(rank_v, quant_group))
    kws, vws = spq_word_stages(bits)
    return shared + kws * kword + vws * vword + 2 * 8 * (kws + vws)  # a ready and an empty barrier per stage


def spq_fold_heads(heads_per_group: int, head_dim: int, rank: int, rank_v: int, elt: int, bits: int,
                   quant_group: int, has_zero: bool, requested: Optional[int] = None) -> int:
    """Query heads per program (:func:`kernels.single_pass_ws.pick_fold_heads` with the word stages)."""
    return pick_fold_heads(
        heads_per_group, head_dim,
        lambda d: spq_shared_bytes(d, head_dim, rank, rank_v, elt, bits, quant_group, has_zero),
        SP_SMEM_LIMIT - SPQ_SMEM_MARGIN, "the rings and word stages", "the quantized Gluon single-pass kernel",
        requested)


def _quant_view_unsupported(view, chunk: int, name: str) -> str:
    """Why TMA cannot read this view's tiles of ``chunk`` channels ('' when it can)."""
    vpw = 32 // view.bits
    if (chunk // vpw) * 4 < 16:
        return f"{name}: a tile row of {chunk} channels is {(chunk // vpw) * 4} bytes of words, TMA needs >= 16"
    for t, what in ((view.codes, "codes"), (view.scale, "scale"), (view.zero, "zero")):
        if t is not None and not tma_aligned(t):
            return f"{name}.{what} needs 16-byte aligned rows (TMA)"
    return ""


def single_pass_ws_quant_unsupported(q: torch.Tensor, k_latent, v_latent, k_ranks: list, v_ranks: list,
                                     n_rep: int, has_bias: bool, block_s: Optional[int] = None) -> str:
    """Why the quantized Gluon single-pass kernel cannot serve this call ('' when it can)."""
    if k_latent.num_quantized == 0:
        return "it reads quantized latents (no quantized slots here)"
    bits, qg = k_latent.bits, k_latent.quant_group_size
    if bits not in SPQ_BITS or (q.dtype == torch.bfloat16 and bits > 4):
        return f"it unpacks 2/4/8-bit codes (bf16: 2/4), got {bits} bits with {q.dtype}"
    # The fp16 kernel's scope on shapes (its latent and shared-memory checks are this kernel's own, below)
    why = (latent_dtype_unsupported(q) or fold_shape_unsupported(q, k_ranks, n_rep, has_bias)
           or sp_shape_unsupported(q, k_ranks, v_ranks, block_s))
    if why:
        return why
    rank, rank_v = k_ranks[0], v_ranks[0]
    vbox = sp_value_box(rank_v)
    vpw = 32 // bits
    if qg & (qg - 1) or qg % vpw or rank % qg or vbox % qg or (rank // qg) > 32 or (vbox // qg) > 32:
        return (f"its quant group ({qg}) must be a power of two of whole {vpw}-code words dividing the key rank "
                f"({rank}) and the value box ({vbox})")
    why = _quant_view_unsupported(k_latent, rank, "k_latent") or _quant_view_unsupported(v_latent, vbox, "v_latent")
    if why:
        return why
    if k_latent.num_fp:  # the window after the quantized slots goes through the fp16 kernel
        plain = [dataclasses.replace(view, codes=None, scale=None, zero=None) for view in (k_latent, v_latent)]
        why = single_pass_ws_unsupported(q, *plain, k_ranks, v_ranks, n_rep, has_bias, block_s)
        if why and why != hopper_unsupported(q):
            return f"its full-precision window does not fit the fp16 kernel: {why}"
    try:
        spq_fold_heads(q.shape[1] // len(k_ranks), q.shape[2], rank, rank_v, q.element_size(), bits, qg,
                       k_latent.zero is not None)
    except ValueError as err:
        return str(err)
    return hopper_unsupported(q)


@gluon.jit
def _issue_words(desc_w, desc_s, desc_z, bar, w_ring, w0, s_buf, z_buf, b, row, w_col, s_col, NBOX: gl.constexpr,
                 HAS_ZERO: gl.constexpr):
    """TMA of one tile's words (NBOX boxes of one width, into w_ring buffers w0 + [0, NBOX)) and its scale /
    zero rows into one stage."""
    CW: gl.constexpr = desc_w.block_type.shape[2]
    META: gl.constexpr = 2 if HAS_ZERO else 1  # zero-points have the scales' boxes
    NBYTES: gl.constexpr = NBOX * desc_w.block_type.nbytes + META * desc_s.block_type.nbytes
    mbarrier.expect(bar, NBYTES)
    for k in gl.static_range(NBOX):
        tma.async_copy_global_to_shared(desc_w, [b, row, w_col + k * CW], bar, w_ring.index(w0 + k))
    tma.async_copy_global_to_shared(desc_s, [b, row, s_col], bar, s_buf)
    if HAS_ZERO:
        tma.async_copy_global_to_shared(desc_z, [b, row, s_col], bar, z_buf)


@gluon.jit
def _dequant(kw, ks, kz, vw, vs, vz, kwbar, vwbar, kwempty, vwempty, kbufs, vbufs, kready, kempty, vready, vempty, g,
             rank, rank_v, n_blocks, RV: gl.constexpr, BLOCK_S: gl.constexpr, KST: gl.constexpr, VST: gl.constexpr,
             KWS: gl.constexpr, VWS: gl.constexpr, BITS: gl.constexpr, QG: gl.constexpr, HAS_ZERO: gl.constexpr,
             K_STEP: gl.constexpr, V_STEP: gl.constexpr, REG_KEYS: gl.constexpr, PAIRS: gl.constexpr):
    """One warpgroup: per step j the key tile j (unless REG_KEYS: the consumers unpack keys) and the value
    boxes of tile j - 1, unpacked from their word stages into the consumers' rings once their buffers are
    released (empty barriers start released, parity 1); each word stage is handed back to the producer warp
    once read. PAIRS: the value boxes in nibble-pair order (word_unpack._unpack_chunk_pairs)."""
    VB: gl.constexpr = vbufs.shape[3]
    NVB: gl.constexpr = RV // VB
    NGV: gl.constexpr = VB // QG
    _, k_sub = _scale_start(g, rank // QG)
    _, v_sub = _scale_start(g, rank_v // QG)
    PS: gl.constexpr = BLOCK_S // SPQ_VALUE_PARTS
    for j in range(n_blocks + 1):
        if j < n_blocks and not REG_KEYS:
            st = j % KWS
            sk = j % KST
            mbarrier.wait(kwbar.index(st), (j // KWS) & 1)
            mbarrier.wait(kempty.index(sk), ((j // KST) & 1) ^ 1)
            _unpack_chunk(kw.index(st), ks.index(st), kz.index(st), 0, k_sub, kbufs.index(sk), BLOCK_S, BITS, QG,
                          HAS_ZERO, K_STEP)
            fence_async_shared()  # the generic-proxy stores before the consumers' wgmmas read the tile
            mbarrier.arrive(kready.index(sk), count=1)
            mbarrier.arrive(kwempty.index(st), count=1)
        jv = j - 1
        if jv >= 0:
            sv = jv % VWS
            mbarrier.wait(vwbar.index(sv), (jv // VWS) & 1)
            for k in gl.static_range(NVB):
                box = jv * NVB + k
                sb = box % VST
                value_buffer_free(vempty, box, VST, NVB)
                for h in gl.static_range(SPQ_VALUE_PARTS):
                    if PAIRS:
                        _unpack_chunk_pairs(vw.index(sv * NVB + k), vs.index(sv), vz.index(sv), k * NGV, v_sub,
                                            vbufs.index(sb), PS, BITS, QG, HAS_ZERO, V_STEP, h * PS)
                    else:
                        _unpack_chunk(vw.index(sv * NVB + k), vs.index(sv), vz.index(sv), k * NGV, v_sub,
                                      vbufs.index(sb), PS, BITS, QG, HAS_ZERO, V_STEP, h * PS)
                fence_async_shared()
                mbarrier.arrive(vready.index((jv % 2) * VST + sb), count=1)  # tile jv's consumer's barrier
            mbarrier.arrive(vwempty.index(sv), count=1)


@gluon.jit
def _word_producer(kw_desc, ks_desc, kz_desc, vw_desc, vs_desc, vz_desc, rows_desc, kw, ks, kz, vw, vs, vz, kwbar,
                   vwbar, kwempty, vwempty, rows_smem, rows_bar, b, rows_row0, g, rank, rank_v, lo, n_blocks,
                   HP: gl.constexpr, HALF: gl.constexpr, RV: gl.constexpr, VB: gl.constexpr, BLOCK_S: gl.constexpr,
                   KWS: gl.constexpr, VWS: gl.constexpr, BITS: gl.constexpr, QG: gl.constexpr,
                   HAS_ZERO: gl.constexpr):
    """One warp: the folded rows once, then per tile its key and value word stages, each once the dequant warps
    released it (empty barriers start released, parity 1). Issued from the dequant warpgroup instead (one
    partition fewer: 12 warps, consumers at 232 registers) it measured the same (349.2 vs 350.3 us at 64K,
    H200, 4 bits)."""
    VPW: gl.constexpr = 32 // BITS
    NVB: gl.constexpr = RV // VB
    load_rows(rows_desc, rows_smem, rows_bar, rows_row0, HP, HALF)
    ks_col, _ = _scale_start(g, rank // QG)
    vs_col, _ = _scale_start(g, rank_v // QG)
    for j in range(n_blocks):
        st = j % KWS
        mbarrier.wait(kwempty.index(st), ((j // KWS) & 1) ^ 1)
        _issue_words(kw_desc, ks_desc, kz_desc, kwbar.index(st), kw, st, ks.index(st), kz.index(st), b,
                     lo + j * BLOCK_S, g * (rank // VPW), ks_col, 1, HAS_ZERO)
        sv = j % VWS
        mbarrier.wait(vwempty.index(sv), ((j // VWS) & 1) ^ 1)
        _issue_words(vw_desc, vs_desc, vz_desc, vwbar.index(sv), vw, sv * NVB, vs.index(sv), vz.index(sv), b,
                     lo + j * BLOCK_S, g * (rank_v // VPW), vs_col, NVB, HAS_ZERO)


@gluon.jit(do_not_specialize=DECODE_STEP_ARGS, do_not_specialize_on_alignment=DECODE_STEP_PTRS)
def _ws_single_pass_quant_kernel(kw_desc, ks_desc, kz_desc, vw_desc, vs_desc, vz_desc, rows_desc, pos_ptr, pos_sb,
                                 kv_start_ptr, inv_freq_ptr, part_m_ptr, part_l_ptr, part_acc_ptr, num_heads,
                                 num_splits, rank, rank_v, num_slots, num_groups, batch_groups, chunk_len, head_splits,
                                 HG: gl.constexpr, HP: gl.constexpr, HALF: gl.constexpr, RV: gl.constexpr,
                                 VB: gl.constexpr, BLOCK_S: gl.constexpr, KST: gl.constexpr, VST: gl.constexpr,
                                 KWS: gl.constexpr, VWS: gl.constexpr, BITS: gl.constexpr, QG: gl.constexpr,
                                 HAS_ZERO: gl.constexpr, THREAD_L: gl.constexpr, K_STEP: gl.constexpr,
                                 V_STEP: gl.constexpr, REG_KEYS: gl.constexpr, CONSUMER_REGS: gl.constexpr,
                                 DEQUANT_REGS: gl.constexpr, PRODUCER_REGS: gl.constexpr, SCORE_PIPE: gl.constexpr,
                                 PAIRS: gl.constexpr):
    """Grid and partials as :func:`kernels.single_pass_ws._ws_single_pass_kernel`. kw_desc / vw_desc: TMA
    descriptors of the key / value codes (B, S, G * rank[_v] / VPW) int32, boxes (1, BLOCK_S, rank / VPW) /
    (1, BLOCK_S, VB / VPW); ks/kz_desc, vs/vz_desc: of the scales / zero-points (B, S, G * rank[_v] / QG),
    boxes (1, BLOCK_S, _scale_box) starting at the 16-byte aligned column at or below the group's first quant
    group (kz/vz = ks/vs when symmetric); K_STEP / V_STEP: _scale_step of the key / value scales. REG_KEYS: the
    consumers unpack the key words into their wgmmas' registers (KWS = KST word stages, one per consumer as
    the fp16 key ring; no fp16 key ring): the codes' bits, else 0. *_REGS: :func:`spq_registers`. PAIRS:
    :func:`spq_nibble_pairs` (the folded rows' rank columns then come in nibble-pair order)."""
    b, g, lo, hi, n_blocks, split0, kv_start, rows_row0, part_ptrs = sp_program(
        kv_start_ptr, part_m_ptr, part_l_ptr, part_acc_ptr, num_heads, num_splits, num_slots, num_groups, batch_groups,
        chunk_len, head_splits, HG, HP, HALF, RV, BLOCK_S)
    R: gl.constexpr = kw_desc.block_type.shape[2] * (32 // BITS)
    NVB: gl.constexpr = RV // VB
    DTYPE: gl.constexpr = rows_desc.dtype
    kw = gl.allocate_shared_memory(gl.int32, [KWS] + kw_desc.block_type.shape, kw_desc.layout)
    ks = gl.allocate_shared_memory(DTYPE, [KWS] + ks_desc.block_type.shape, ks_desc.layout)
    vw = gl.allocate_shared_memory(gl.int32, [VWS * NVB] + vw_desc.block_type.shape, vw_desc.layout)
    vs = gl.allocate_shared_memory(DTYPE, [VWS] + vs_desc.block_type.shape, vs_desc.layout)
    if HAS_ZERO:
        kz = gl.allocate_shared_memory(DTYPE, [KWS] + kz_desc.block_type.shape, kz_desc.layout)
        vz = gl.allocate_shared_memory(DTYPE, [VWS] + vz_desc.block_type.shape, vz_desc.layout)
    else:
        kz = ks
        vz = vs
    k_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([1, BLOCK_S, R], DTYPE)
    v_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([1, BLOCK_S, VB], DTYPE)
    if not REG_KEYS:  # (else no fp16 key ring)
        kbufs = gl.allocate_shared_memory(DTYPE, [KST, 1, BLOCK_S, R], k_layout)
    vbufs = gl.allocate_shared_memory(DTYPE, [VST, 1, BLOCK_S, VB], v_layout)
    rows_smem = rows_buffers(rows_desc, HP, HALF)
    p_smem = p_buffers(DTYPE, BLOCK_S)
    vready = mbarriers(2 * VST)  # per (consumer, buffer), as in the fp16 kernel
    vempty = value_empty_barriers(VST)
    kwbar = mbarriers(KWS)
    vwbar = mbarriers(VWS)
    kwempty = mbarriers(KWS)
    vwempty = mbarriers(VWS)
    rows_bar = mbarriers(1).index(0)
    pos_base = pos_ptr + b.to(gl.int64) * pos_sb
    if REG_KEYS:  # the consumers read the key word stages, with the TMA's barriers
        gl.static_assert(KST == KWS, "one key word stage per consumer and use, as the fp16 key ring")
        kbufs = kw
        kready = kwbar
        kempty = kwempty
    else:
        kready = mbarriers(KST)
        kempty = mbarriers(KST)
    _, k_sub = _scale_start(g, rank // QG)
    # The consumers are the fp16 kernel's. Their first two arguments (latent descriptors, unused by them) get the
    # key scales and zero-points, read when they unpack the key words themselves (REG_KEYS). Argument tuples are
    # written out: a tuple assigned to a name turns constexprs into scalars.
    gl.warp_specialize([
        (_consume, (ks, kz, rows_desc, kbufs, vbufs, rows_smem, p_smem, kready, kempty, vready, vempty, rows_bar, b,
                    rows_row0, k_sub, 0, lo, n_blocks, pos_base, kv_start, inv_freq_ptr, part_ptrs, split0, hi, 0,
                    BLOCK_S, HP, HALF, RV, KST, VST, THREAD_L, REG_KEYS, QG, HAS_ZERO, K_STEP,
                    SPQ_ROWS_PER_TILE, SCORE_PIPE, PAIRS)),
        (_consume, (ks, kz, rows_desc, kbufs, vbufs, rows_smem, p_smem, kready, kempty, vready, vempty, rows_bar, b,
                    rows_row0, k_sub, 0, lo, n_blocks, pos_base, kv_start, inv_freq_ptr, part_ptrs, split0, hi, 1,
                    BLOCK_S, HP, HALF, RV, KST, VST, THREAD_L, REG_KEYS, QG, HAS_ZERO, K_STEP,
                    SPQ_ROWS_PER_TILE, SCORE_PIPE, PAIRS)),
        (_dequant, (kw, ks, kz, vw, vs, vz, kwbar, vwbar, kwempty, vwempty, kbufs, vbufs, kready, kempty, vready,
                    vempty, g, rank, rank_v, n_blocks, RV, BLOCK_S, KST, VST, KWS, VWS, BITS, QG, HAS_ZERO, K_STEP,
                    V_STEP, REG_KEYS, PAIRS)),
        (_word_producer, (kw_desc, ks_desc, kz_desc, vw_desc, vs_desc, vz_desc, rows_desc, kw, ks, kz, vw, vs, vz,
                          kwbar, vwbar, kwempty, vwempty, rows_smem, rows_bar, b, rows_row0, g, rank, rank_v, lo,
                          n_blocks, HP, HALF, RV, VB, BLOCK_S, KWS, VWS, BITS, QG, HAS_ZERO)),
    ], [4, 4, 1], [CONSUMER_REGS, DEQUANT_REGS, PRODUCER_REGS])


def _plain_desc(t: torch.Tensor, block: list):
    """TMA descriptor of ``t`` (int32 words or fp16/bf16 scales) into an unswizzled tile: the dequant warps
    read whole words (or one scale) per thread, which no swizzle helps."""
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    gdt = {torch.int32: gl.int32, torch.float16: gl.float16, torch.bfloat16: gl.bfloat16}[t.dtype]
    return TensorDescriptor(t, list(t.shape), list(t.stride()), block, _plain_layout(gdt.primitive_bitwidth, len(block)))


@functools.lru_cache(maxsize=None)
def _plain_layout(bits: int, rank: int):
    """The unswizzled shared layout of ``bits``-wide elements in ``rank``-d boxes, built once (see nvmma_layout)."""
    return gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=bits, rank=rank)


def ws_single_pass_quant(rows: torch.Tensor, k_latent, v_latent, positions: torch.Tensor, kv_start: torch.Tensor,
                         inv_freq: torch.Tensor, num_heads: int, rank: int, rank_v: int, heads_per_group: int,
                         fold_heads: int, num_sms: int, num_splits: Optional[int], parts_fn,
                         rows_pair_order: bool = False) -> tuple:
    """Partials (m, l, acc) of the whole call; ``parts_fn(num_splits)`` allocates them.

    rows: interleaved folded rows (B, G, heads_per_group * D, rank); k_latent / v_latent: LatentViews with
    every slot quantized (codes (B, S, G * rank[_v] / VPW) int32, scale [zero] (B, S, G * rank[_v] / QG));
    positions (B, S) int32; kv_start (B,) int32; inv_freq (D/2,) fp32; fold_heads from :func:`spq_fold_heads`.
    rows_pair_order: the rows' rank columns are already in nibble-pair order (_folded_rows(pair_cols=True)), else
    they are gathered into it here when the launch unpacks in nibble pairs (:func:`spq_nibble_pairs`).
    """
    batch, num_slots, _ = k_latent.codes.shape
    num_groups = rows.shape[1]
    half = inv_freq.shape[0]
    bits, qg = k_latent.bits, k_latent.quant_group_size
    vpw = 32 // bits
    has_zero = k_latent.zero is not None
    vbox = sp_value_box(rank_v)
    kw_desc = _plain_desc(k_latent.codes, [1, SP_BLOCK_S, rank // vpw])
    vw_desc = _plain_desc(v_latent.codes, [1, SP_BLOCK_S, vbox // vpw])
    sbk, sbv = [1, SP_BLOCK_S, _scale_box(rank, qg)], [1, SP_BLOCK_S, _scale_box(rank_v, qg)]
    ks_desc, vs_desc = _plain_desc(k_latent.scale, sbk), _plain_desc(v_latent.scale, sbv)
    kz_desc = _plain_desc(k_latent.zero, sbk) if has_zero else ks_desc
    vz_desc = _plain_desc(v_latent.zero, sbv) if has_zero else vs_desc
    pairs = spq_nibble_pairs(bits, rows.dtype)
    if rows_pair_order and not pairs:
        raise ValueError("rows in nibble-pair column order for a launch that unpacks in channel order")
    if pairs and not rows_pair_order:  # the score wgmma's K in the order the consumers unpack the key codes
        rows = rows.index_select(-1, _pair_columns(rank, rows.device))
    rows_desc, head_splits, bgs, chunk_len, chunks, parts = sp_launch(rows, half, heads_per_group, fold_heads,
                                                                      num_slots, num_sms, num_splits, parts_fn)
    kws, vws = spq_word_stages(bits)
    consumer_regs, dequant_regs, producer_regs = spq_registers(bits)
    _ws_single_pass_quant_kernel[(bgs * head_splits * chunks,)](
        kw_desc, ks_desc, kz_desc, vw_desc, vs_desc, vz_desc, rows_desc, positions, positions.stride(0), kv_start,
        inv_freq, *parts, num_heads, 2 * chunks, rank, rank_v, num_slots, num_groups, bgs, chunk_len, head_splits,
        HG=heads_per_group, HP=fold_heads, HALF=half, RV=rank_v, VB=vbox, BLOCK_S=SP_BLOCK_S, KST=SP_KEY_STAGES,
        VST=sp_value_stages(rank_v), KWS=kws, VWS=vws, BITS=bits, QG=qg,
        HAS_ZERO=has_zero, THREAD_L=SP_THREAD_L, K_STEP=_scale_step(rank, qg), V_STEP=_scale_step(rank_v, qg),
        REG_KEYS=bits if spq_reg_keys(bits) else 0, CONSUMER_REGS=consumer_regs, DEQUANT_REGS=dequant_regs,
        PRODUCER_REGS=producer_regs, SCORE_PIPE=SPQ_SCORE_PIPE, PAIRS=pairs, num_warps=4, maxnreg=SPQ_MAXNREG,
    )
    return parts
