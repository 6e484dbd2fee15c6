"""Folded attention scores as a warp-specialized Gluon kernel for sm_90 (fp16/bf16 latents, n_rep = 1).

Same scores as :mod:`kernels.fold_scores` (see there for the fold: per slot s and frequency i,
q . RoPE(U x_s) = sum_i cos(a_si) (Mc[i] . x_s) + sin(a_si) (Ms[i] . x_s)), computed by three
partitions of one CTA per SM instead of one software-pipelined loop:

- a producer warp loads the program's folded rows once, then the group's latent tiles
  (BLOCK_S, R) into a ring of NUM_STAGES shared-memory buffers by TMA;
- two consumer warpgroups take alternate tiles. For each tile a consumer runs NDOT wgmmas,
  (BLOCK_S, R) x (R, HD * D), one per HD heads of its program's HP, and computes cos/sin of the
  slots' angles once while the first runs; after each wgmma, the products with cos/sin, the row
  sums per head and the score stores. While one warpgroup does that CUDA-core and MUFU work, the
  other's wgmmas run: the Triton kernel waits for each dot and overlaps only what the other
  program on its SM happens to issue.

The folded rows are interleaved per frequency (row 2i = Mc[i], row 2i + 1 = Ms[i];
``_fold_rows_kernel(..., INTERLEAVE=True)``): the wgmma accumulator gives each thread adjacent
column pairs, so a thread holds both terms of a frequency, and one cos and one sin per (slot,
frequency) serve all HP heads of the program (four for a Llama group: WS_FOLD_COLS).

Scope (checked by :func:`ws_unsupported`): plain fp16/bf16 latents (no quantized slots, no key bias),
one KV head per query head, D/2 a power of two >= 8 with D <= 256, every group of the same rank R
(a power of two in [16, 256]), and an sm_90 GPU. Anything else uses :mod:`kernels.fold_scores`.
Gluon does not run in the interpreter: this kernel is tested on the GPU only.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma, warpgroup_mma, warpgroup_mma_wait

from .host_math import cdiv

WS_BLOCK_S = 64  # slots per tile: the wgmma's M (one warpgroup: 4 warps x 16 rows)
WS_STAGES = 4  # latent tiles in flight (16 KB each at R = 128; 5 and 6 measured no faster)
WS_CONSUMER_REGS = gl.constexpr(232)  # registers per thread of the second consumer warpgroup (setmaxnreg);
# the default (first) consumer gets the rest: 3 * WS_MAXNREG - 232 - 24 = 248
WS_PRODUCER_REGS = gl.constexpr(24)  # the producer warp only issues TMA and barrier operations
WS_MAXNREG = 168  # 3 warpgroups x 128 threads x 168 <= 64K registers: one CTA per SM
WS_EARLY_TRIG = True  # cos/sin between the wgmma's issue and its wait (False: after the wait; a variant)
WS_MAX_COLS = 256  # wgmma N limit: folded rows per wgmma
# Folded rows per program (HP * head_dim), in wgmmas of at most WS_MAX_COLS one after the other per tile:
# 512 (all four heads of a Llama group, one cos/sin per slot and frequency for the group) measured faster
# than 256 (two programs per group, each computing cos/sin): score kernel 117.0 vs 129.8 us at 64K.
WS_FOLD_COLS = 512

TWO_PI_HI = gl.constexpr(6.2831854820251465)  # float32(2*pi)
TWO_PI_LO = gl.constexpr(-1.7484556025237907e-07)  # 2*pi - TWO_PI_HI
ROUND_MAGIC = gl.constexpr(12582912.0)  # 1.5 * 2^23: x + M - M rounds x to an integer for |x| < 2^22


@gluon.jit
def _cos_sin(x):
    """cos(x), sin(x) of fp32 angles |x| < 2^22 turns (positions up to ~26M): Cody-Waite reduction to
    [-pi, pi], then the hardware approximations (as kernels.rope_qk.cos_sin). The turn count is rounded
    by adding and subtracting 1.5 * 2^23 (the add fuses into the FFMA of the scaling) instead of FRND:
    under ncu the cos/sin work was the largest share of the consumers' samples (MUFU 15%, FRND 7%), and
    without FRND the kernel measured 129.8 instead of 154.6 us at 64K (kernels/NOTES.md, ninth session)."""
    k = (x * 0.15915494309189535 + ROUND_MAGIC) - ROUND_MAGIC
    r = gl.fma(-k, TWO_PI_HI, x)
    r = gl.fma(-k, TWO_PI_LO, r)
    c = gl.inline_asm_elementwise("cos.approx.f32 $0, $1;", "=r,r", [r], dtype=gl.float32, is_pure=True, pack=1)
    s = gl.inline_asm_elementwise("sin.approx.f32 $0, $1;", "=r,r", [r], dtype=gl.float32, is_pure=True, pack=1)
    return c, s


@gluon.jit
def mbarriers(n: gl.constexpr):
    """n mbarriers (n, 1) in shared memory, each initialized for one arrival (the Gluon kernels' rings)."""
    bars = gl.allocate_shared_memory(gl.int64, [n, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(n):
        mbarrier.init(bars.index(i), count=1)
    return bars


@gluon.jit
def rows_buffers(rows_desc, HP: gl.constexpr, HALF: gl.constexpr):
    """(NDOT, rows per wgmma, R): each score wgmma's folded rows a whole swizzled tile (a row slice of one
    (HP * D, R) tile is not one: the swizzle lays out 64-column chunks of all rows one after the other)."""
    return gl.allocate_shared_memory(rows_desc.dtype, [HP * 2 * HALF // rows_desc.block_type.shape[0]]
                                     + rows_desc.block_type.shape, rows_desc.layout)


@gluon.jit
def load_rows(rows_desc, rows_smem, rows_bar, rows_row0, HP: gl.constexpr, HALF: gl.constexpr):
    """TMA of a program's folded rows (HP heads x 2 * HALF rows from rows_row0), one box per score wgmma into
    rows_smem.index(k), all completing rows_bar (the producers of the Gluon kernels, once per program)."""
    ND: gl.constexpr = rows_desc.block_type.shape[0]  # folded rows per wgmma (one TMA box)
    NDOT: gl.constexpr = HP * 2 * HALF // ND
    mbarrier.expect(rows_bar, NDOT * rows_desc.block_type.nbytes)
    for k in gl.static_range(NDOT):
        tma.async_copy_global_to_shared(rows_desc, [rows_row0 + k * ND, 0], rows_bar, rows_smem.index(k))


@gluon.jit
def _producer(lat_desc, rows_desc, bufs, rows_smem, ready, empty, rows_bar, b, rows_row0, k_off, lo, n_blocks,
              pos_ptr, kv_start, inv_freq_ptr, out_ptr, out_sh, hi, ROLE: gl.constexpr, CONSUMERS: gl.constexpr,
              EARLY_TRIG: gl.constexpr, BLOCK_S: gl.constexpr, HP: gl.constexpr, HALF: gl.constexpr,
              NUM_STAGES: gl.constexpr):
    """One warp (the consumers' signature; ROLE unused): the folded rows once, then latent tile j into ring
    buffer j % NUM_STAGES once the consumer of tile j - NUM_STAGES has released it (empty barriers start
    'released': parity 1)."""
    load_rows(rows_desc, rows_smem, rows_bar, rows_row0, HP, HALF)
    for j in range(n_blocks):
        s = j % NUM_STAGES
        mbarrier.wait(empty.index(s), ((j // NUM_STAGES) & 1) ^ 1)
        mbarrier.expect(ready.index(s), lat_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(lat_desc, [b, lo + j * BLOCK_S, k_off], ready.index(s), bufs.index(s))


@gluon.jit
def _consume(lat_desc, rows_desc, bufs, rows_smem, ready, empty, rows_bar, b, rows_row0, k_off, lo, n_blocks,
             pos_ptr, kv_start, inv_freq_ptr, out_ptr, out_sh, hi, ROLE: gl.constexpr, CONSUMERS: gl.constexpr,
             EARLY_TRIG: gl.constexpr, BLOCK_S: gl.constexpr, HP: gl.constexpr, HALF: gl.constexpr,
             NUM_STAGES: gl.constexpr):
    """One warpgroup: tiles ROLE, ROLE + CONSUMERS, ... of the program's slots [lo, hi). Scores of its HP heads
    go to out_ptr + head * out_sh + slot (fp32, log2 units, -inf before kv_start). The heads' rows are
    NDOT wgmmas of HD heads each (N = HD * D <= 256), one after the other; cos/sin once per tile."""
    N: gl.constexpr = rows_desc.block_type.shape[0]
    HD: gl.constexpr = N // (2 * HALF)
    NDOT: gl.constexpr = HP // HD
    R: gl.constexpr = lat_desc.block_type.shape[2]
    mma_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                         instr_shape=[16, N, 16])
    zero = gl.zeros((BLOCK_S, N), gl.float32, mma_layout)
    # The layouts of the accumulator seen as (slot, head, frequency) cos and sin terms: the split of
    # adjacent column pairs is free (both in one thread's registers).
    zc, _ = gl.split(gl.reshape(zero, (BLOCK_S, HD, HALF, 2)))
    l3: gl.constexpr = zc.type.layout
    trig_l: gl.constexpr = gl.SliceLayout(1, l3)  # (slot, frequency)
    score_l: gl.constexpr = gl.SliceLayout(2, l3)  # (slot, head)
    freq = gl.arange(0, HALF, layout=gl.SliceLayout(0, trig_l))
    inv_freq = gl.load(inv_freq_ptr + freq)
    trig_slots = gl.arange(0, BLOCK_S, layout=gl.SliceLayout(1, trig_l))
    out_slots = gl.arange(0, BLOCK_S, layout=gl.SliceLayout(1, score_l))
    heads = gl.arange(0, HD, layout=gl.SliceLayout(0, score_l))
    mbarrier.wait(rows_bar, 0)

    start = lo + ROLE * BLOCK_S
    pos = gl.load(pos_ptr + start + trig_slots, mask=start + trig_slots < hi, other=0)
    for j in range(ROLE, n_blocks, CONSUMERS):
        s = j % NUM_STAGES
        start = lo + j * BLOCK_S
        mbarrier.wait(ready.index(s), (j // NUM_STAGES) & 1)
        tile = bufs.index(s).reshape([BLOCK_S, R])
        for k in gl.static_range(NDOT):
            # (R, N) view of the rows: the wgmma's B operand, K-major in shared memory
            acc = warpgroup_mma(tile, rows_smem.index(k).permute((1, 0)), zero, use_acc=False, is_async=True)
            if k == 0:
                # Next tile's positions, a tile ahead (a plain load whose latency would stall the epilogue).
                nstart = start + CONSUMERS * BLOCK_S
                pos_next = gl.load(pos_ptr + nstart + trig_slots, mask=nstart + trig_slots < hi, other=0)
                if EARLY_TRIG:
                    c, sn = _cos_sin(pos.to(gl.float32)[:, None] * inv_freq[None, :])  # under this tile's wgmma
            acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc, ))
            if k == 0 and not EARLY_TRIG:
                c, sn = _cos_sin(pos.to(gl.float32)[:, None] * inv_freq[None, :])
            if k == NDOT - 1:
                mbarrier.arrive(empty.index(s), count=1)  # the tile is read: the producer may refill it
            yc, ys = gl.split(gl.reshape(acc, (BLOCK_S, HD, HALF, 2)))
            score = gl.sum(yc * c[:, None, :] + ys * sn[:, None, :], axis=2)  # (BLOCK_S, HD)
            slots = start + out_slots
            score = gl.where((slots >= kv_start)[:, None], score, float("-inf"))
            gl.store(out_ptr + (k * HD + heads)[None, :] * out_sh + slots[:, None], score, mask=(slots < hi)[:, None])
        pos = pos_next


@gluon.jit
def _program_slots(batch_groups, head_splits, num_groups, chunk_len, num_slots, HP: gl.constexpr,
                   BLOCK_S: gl.constexpr):
    """(b, g, b * G + g, first local head h0, slots [lo, hi), tiles) of this program of a grid
    (B * G * head_splits * chunks,), chunk slowest (the Gluon score and single-pass kernels)."""
    pid = gl.program_id(0)
    bg = pid % batch_groups
    split = (pid // batch_groups) % head_splits
    chunk = pid // (batch_groups * head_splits)
    lo = chunk * chunk_len
    hi = gl.minimum(lo + chunk_len, num_slots)
    return bg // num_groups, bg % num_groups, bg, split * HP, lo, hi, gl.cdiv(hi - lo, BLOCK_S)


@gluon.jit
def _ws_fold_scores_kernel(
    lat_desc, rows_desc, pos_ptr, pos_sb, kv_start_ptr, inv_freq_ptr, scores_ptr, scores_sb, scores_sh,
    rank, num_slots, num_groups, batch_groups, chunk_len, head_splits,
    HG: gl.constexpr, HP: gl.constexpr, HALF: gl.constexpr, BLOCK_S: gl.constexpr, NUM_STAGES: gl.constexpr,
    EARLY_TRIG: gl.constexpr,
):
    """Grid (B * G * head_splits * num_chunks,): program p scores local heads h0 + [0, HP) of (b, g)
    over slots [chunk * chunk_len, min(+chunk_len, S)), with (b, g, split, chunk) from p (chunk slowest).
    lat_desc: TMA descriptor of the key latents (B, S, G * rank), box (1, BLOCK_S, rank);
    rows_desc: of the interleaved folded rows (B * G * HG * 2 * HALF, rank), box (HD * 2 * HALF, rank): the
    rows of one wgmma, HP / HD boxes per program."""
    b, g, bg, h0, lo, hi, n_blocks = _program_slots(batch_groups, head_splits, num_groups, chunk_len, num_slots, HP,
                                                    BLOCK_S)
    kv_start = gl.load(kv_start_ptr + b)
    rows_row0 = (bg * HG + h0) * 2 * HALF
    k_off = g * rank
    pos_base = pos_ptr + b.to(gl.int64) * pos_sb
    out_base = scores_ptr + b.to(gl.int64) * scores_sb + (g * HG + h0).to(gl.int64) * scores_sh

    bufs = gl.allocate_shared_memory(lat_desc.dtype, [NUM_STAGES] + lat_desc.block_type.shape, lat_desc.layout)
    rows_smem = rows_buffers(rows_desc, HP, HALF)
    ready = mbarriers(NUM_STAGES)
    empty = mbarriers(NUM_STAGES)
    rows_bar = mbarriers(1).index(0)

    # The argument tuples are written out in the call: a tuple assigned to a name first turns its
    # constexprs into run-time scalars. All partitions share one signature; ROLE picks a consumer's tiles.
    # Two consumers: one alone measured slower (235.7 vs 223.7 us at 64K: kernels/NOTES.md, ninth session).
    CONSUMERS: gl.constexpr = 2
    gl.warp_specialize([
        (_consume, (lat_desc, rows_desc, bufs, rows_smem, ready, empty, rows_bar, b, rows_row0, k_off, lo, n_blocks,
                    pos_base, kv_start, inv_freq_ptr, out_base, scores_sh, hi, 0, CONSUMERS, EARLY_TRIG, BLOCK_S,
                    HP, HALF, NUM_STAGES)),
        (_consume, (lat_desc, rows_desc, bufs, rows_smem, ready, empty, rows_bar, b, rows_row0, k_off, lo, n_blocks,
                    pos_base, kv_start, inv_freq_ptr, out_base, scores_sh, hi, 1, CONSUMERS, EARLY_TRIG, BLOCK_S,
                    HP, HALF, NUM_STAGES)),
        (_producer, (lat_desc, rows_desc, bufs, rows_smem, ready, empty, rows_bar, b, rows_row0, k_off, lo,
                     n_blocks, pos_base, kv_start, inv_freq_ptr, out_base, scores_sh, hi, 0, CONSUMERS, EARLY_TRIG,
                     BLOCK_S, HP, HALF, NUM_STAGES)),
    ], [4, 1], [WS_CONSUMER_REGS, WS_PRODUCER_REGS])


# warp_specialized=None (auto) uses this kernel where it applies when WS_AUTO is set: it measured faster
# than the Triton score kernel at every shape (H200, 32x128 heads, gs 4, rank 128: whole decode call
# 222.9 vs 239.1 us at 64K, 868.8 vs 974.4 at 256K, 1704.7 vs 1946.1 at B=8 x 64K, 30.7 vs 31.9 at 4K;
# kernels/NOTES.md, ninth session).
WS_AUTO = True
WS_SMEM_BUDGET = 220 * 1024  # folded rows + latent ring + barriers within sm_90's 227 KB per block


def ws_heads_per_dot(fold_heads: int, head_dim: int) -> int:
    """Heads whose folded rows share one wgmma (N = heads * head_dim <= WS_MAX_COLS)."""
    return max(d for d in range(1, fold_heads + 1) if fold_heads % d == 0 and d * head_dim <= WS_MAX_COLS)


def ws_fold_heads(heads_per_group: int, head_dim: int, rank: int, elt: int, requested: Optional[int] = None) -> int:
    """Query heads per program: ``requested`` if it divides the group's heads and its folded rows and two
    latent tiles fit the shared-memory budget (else a ValueError), or by default the most such heads with at
    most WS_FOLD_COLS folded rows (in whole wgmmas of at most WS_MAX_COLS rows)."""
    def fits(d: int) -> bool:
        return heads_per_group % d == 0 and d * head_dim * rank * elt + 2 * WS_BLOCK_S * rank * elt <= WS_SMEM_BUDGET

    if requested is not None:
        if requested < 1 or not fits(requested):
            raise ValueError(f"fold_heads={requested} must divide the {heads_per_group} query heads per group and "
                             f"fit with two latent tiles in {WS_SMEM_BUDGET // 1024} KB of shared memory")
        return requested
    return max(d for d in range(1, heads_per_group + 1) if fits(d) and (d == 1 or d * head_dim <= WS_FOLD_COLS))


def ws_stages(fold_heads: int, head_dim: int, rank: int, elt: int) -> int:
    """Latent tiles in the ring: up to WS_STAGES within the budget left by the folded rows (>= 2)."""
    left = WS_SMEM_BUDGET - fold_heads * head_dim * rank * elt
    return max(2, min(WS_STAGES, left // (WS_BLOCK_S * rank * elt)))


def tma_aligned(t: torch.Tensor) -> bool:
    """A (B, S, R) tensor a TMA descriptor can read: unit last stride, 16-byte aligned base and rows."""
    return t.stride(2) == 1 and (t.stride(0) * t.element_size()) % 16 == 0 and \
        (t.stride(1) * t.element_size()) % 16 == 0 and t.data_ptr() % 16 == 0


def latent_dtype_unsupported(q: torch.Tensor) -> str:
    if q.dtype not in (torch.float16, torch.bfloat16):
        return f"it reads fp16/bf16 latents, not {q.dtype}"
    return ""


def fold_shape_unsupported(q: torch.Tensor, k_ranks: list, n_rep: int, has_bias: bool) -> str:
    """Why the Gluon kernels cannot fold these heads into these key ranks ('' when they can): the checks that need
    no latent tensor (the quantized single-pass kernel runs them on codes)."""
    head_dim = q.shape[2]
    half = head_dim // 2
    if n_rep != 1:
        return f"it folds one query head per KV head (n_rep == 1), got n_rep={n_rep}"
    if has_bias:
        return "it has no key-bias term"
    if half < 8 or half & (half - 1) or head_dim > WS_MAX_COLS:
        return f"head_dim / 2 must be a power of two >= 8 and head_dim <= {WS_MAX_COLS}, got head_dim={head_dim}"
    rank = k_ranks[0]
    # A power of two: a TMA box and a shared-memory tile have power-of-two sides (48 or 160 fail to build)
    if any(r != rank for r in k_ranks) or rank & (rank - 1) or not 16 <= rank <= 256:
        return f"every group needs the same key rank, a power of two in [16, 256], got {sorted(set(k_ranks))}"
    return ""


def fold_keys_unsupported(q: torch.Tensor, k_fp, num_quantized: int, k_ranks: list, n_rep: int,
                          has_bias: bool) -> str:
    """Why the Gluon kernels cannot read these keys ('' when they can; the GPU is checked apart, last)."""
    why = latent_dtype_unsupported(q)
    if why:
        return why
    if num_quantized or k_fp is None or k_fp.shape[1] == 0:
        return "it reads plain latents only (no quantized slots)"
    why = fold_shape_unsupported(q, k_ranks, n_rep, has_bias)
    if why:
        return why
    if not tma_aligned(k_fp):
        return "the key latents need 16-byte aligned rows (TMA)"
    return ""


def hopper_unsupported(q: torch.Tensor) -> str:
    if q.device.type != "cuda" or torch.cuda.get_device_capability(q.device)[0] != 9:
        return "it needs an sm_90 (Hopper) GPU"
    return ""


def ws_unsupported(q: torch.Tensor, k_fp, num_quantized: int, k_ranks: list, n_rep: int, has_bias: bool) -> str:
    """Why the warp-specialized score kernel cannot serve this call ('' when it can)."""
    return fold_keys_unsupported(q, k_fp, num_quantized, k_ranks, n_rep, has_bias) or hopper_unsupported(q)


def slot_chunks(num_slots: int, block_s: int, chunks: int) -> tuple[int, int]:
    """(chunk_len, chunks): the slot axis cut into at most ``chunks`` (>= 1) runs of whole tiles."""
    blocks = cdiv(num_slots, block_s)
    chunks = max(1, min(blocks, chunks))
    chunk_len = cdiv(blocks, chunks) * block_s
    return chunk_len, cdiv(num_slots, chunk_len)


def nvmma_desc(t: torch.Tensor, block: list):
    """TMA descriptor of fp16/bf16 ``t`` with boxes ``block`` in the default swizzled (NVMMA) layout."""
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    layout = nvmma_layout(tuple(block), t.dtype == torch.float16)
    return TensorDescriptor(t, list(t.shape), list(t.stride()), block, layout)


@functools.lru_cache(maxsize=None)
def nvmma_layout(block: tuple, fp16: bool):
    """The default NVMMA shared layout of fp16 (else bf16) boxes ``block``, built once per box: building one takes
    Triton's constexpr machinery ~10 us of Python, three times per decode call (twenty-third session, host cost)."""
    return gl.NVMMASharedLayout.get_default_for(list(block), gl.float16 if fp16 else gl.bfloat16)


def ws_fold_scores(rows: torch.Tensor, k_fp: torch.Tensor, positions: torch.Tensor, kv_start: torch.Tensor,
                   inv_freq: torch.Tensor, scores: torch.Tensor, rank: int, heads_per_group: int, fold_heads: int,
                   num_sms: int) -> None:
    """Write scores (B, H, S) fp32 of the fold (log2 units, -inf before kv_start) with the Gluon kernel.

    rows: the interleaved folded rows (B, G, heads_per_group * head_dim, rank) (``_fold_rows_kernel(...,
    INTERLEAVE=True)``, HALF_PAD = D/2, RK_PAD = rank); k_fp (B, S, G * rank); positions (B, S) int32;
    kv_start (B,) int32; inv_freq (D/2,) fp32; fold_heads from :func:`ws_fold_heads`. One CTA per SM
    (all its registers; 128 KB of shared memory at R = 128, D = 128):
    the slot axis of each (b, g, head split) is cut into chunks so that the grid about fills the SMs.
    """
    batch, num_slots, _ = k_fp.shape
    num_groups = rows.shape[1]
    half = inv_freq.shape[0]
    cols = ws_heads_per_dot(fold_heads, 2 * half) * 2 * half  # rows per wgmma and TMA box
    lat_desc = nvmma_desc(k_fp, [1, WS_BLOCK_S, rank])
    rows_desc = nvmma_desc(rows.view(-1, rank), [cols, rank])
    head_splits = heads_per_group // fold_heads
    bgs = batch * num_groups
    chunk_len, chunks = slot_chunks(num_slots, WS_BLOCK_S, num_sms // (bgs * head_splits))
    _ws_fold_scores_kernel[(bgs * head_splits * chunks,)](
        lat_desc, rows_desc, positions, positions.stride(0), kv_start, inv_freq, scores, scores.stride(0),
        scores.stride(1), rank, num_slots, num_groups, bgs, chunk_len, head_splits,
        HG=heads_per_group, HP=fold_heads, HALF=half, BLOCK_S=WS_BLOCK_S,
        NUM_STAGES=ws_stages(fold_heads, 2 * half, rank, k_fp.element_size()),
        EARLY_TRIG=WS_EARLY_TRIG, num_warps=4, maxnreg=WS_MAXNREG,
    )
