"""Single-pass decode attention as a warp-specialized Gluon kernel for sm_90 (fp16/bf16 latents, n_rep = 1).

The fold path runs two kernels one after the other: the Gluon score kernel (:mod:`kernels.fold_scores_ws`,
bound by its MMAs) writes (B, H, S) fp32 scores, then the Triton value kernel (bound by memory) reads them
back with the value latents. This kernel does both in one pass over the slots, so that the value latents
stream in while the tensor cores fold the keys (flash-decoding split-K; the splits are merged by
:func:`kernels.latent_attention._merge`). One CTA per SM, three partitions:

- a producer warp loads the program's folded rows once, then per tile of BLOCK_S slots the key latents
  (BLOCK_S, R) into a ring of KEY_STAGES buffers and the value latents as NVB boxes (BLOCK_S, VBOX) into a
  ring of VALUE_STAGES box buffers, the keys one tile ahead of the values;
- two consumer warpgroups take alternate tiles. Per tile a consumer runs the score wgmmas (BLOCK_S, R) x
  (R, DOT_COLS) of its HP heads (cos/sin once per slot and frequency, while the first runs) and releases the
  key tile, updates the online softmax of its heads, writes P (BLOCK_S, NP) to shared memory and runs the
  value wgmmas acc^T (VBOX, NP) += latent_v^T (VBOX, BLOCK_S) @ P (one per box, A read transposed), then
  releases the boxes. It keeps its own softmax state and writes its own split of partials at the end.

Why the two rings: with one ring of (key + value) tiles, the 128 KB of folded rows of a Llama group left room
for one tile per consumer, and each consumer waited for a whole load per tile (session-10 draft: 285 us at
64K, 17% of the stall samples on the consumers' ready barriers). Here a consumer waits for the value boxes only after
its score and softmax work, and a box ring needs no room for a whole second value tile.

Heads are padded to NP = 8 columns (the value wgmma's smallest N): padded columns score -inf, so p = 0.
The folded rows are interleaved per frequency as for :mod:`kernels.fold_scores_ws`.

Scope (:func:`single_pass_ws_unsupported`): plain fp16/bf16 latents, one KV head per query head, no key bias,
D/2 a power of two >= 8 with D <= 256, every group of the same key rank R (a power of two in [16, 256]) and
the same value rank (a multiple of 64, at most 512), at most NP heads per group, 16-byte aligned latent rows,
and an sm_90 GPU. Gluon does not run in the interpreter: the kernel is tested on the GPU.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                               warpgroup_mma_wait)

from .host_math import cdiv, pdl_launch
from .fold_scores_ws import (_cos_sin, _program_slots, fold_keys_unsupported, hopper_unsupported, load_rows,
                             mbarriers, nvmma_desc, rows_buffers, slot_chunks, tma_aligned)
from .word_unpack import _nibble_pair_channel, _unpack_key_regs, _unpack_key_regs_pairs

SP_BLOCK_S = 64  # slots per tile: the score wgmma's M and the value wgmma's K
# Key tiles in the ring (16 KB each at R = 128). Even: tile j's buffer j % 2 then serves one consumer only,
# so its ready barrier never runs two phases ahead of a waiter (see _consume on the value boxes).
SP_KEY_STAGES = 2
# Folded rows per score wgmma. 128 measured faster than 256 (H200, 32 x 128 heads, ranks 128 / 384 per group of 4,
# four heads per program: 216.4 vs 230.5 us at 64K, 1684 vs 1803 us at B=8 x 64K; tenth session): a smaller
# accumulator leaves registers for the value state. 64 (half a head, SP_SPLIT_HEADS) with SP_SCORE_PIPE and
# SP_ROWS_PER_TILE: 178.8 vs 189.4 us at 64K, 1360.5 vs 1457.2 us at B=8 x 64K, 25.7 vs 26.3 us at 4K (one call,
# one process each; kernels/NOTES.md, nineteenth session); 128 with the same two: 177.1, 1358.1, 26.2. 64 keeps
# each accumulator at 32 registers for every head_dim (head_dim 256 would need 128 per accumulator at 128 rows).
SP_DOT_COLS = 64
# Whether a head's folded rows may span several score wgmmas (SP_DOT_COLS smaller than head_dim; see sp_dot_cols).
SP_SPLIT_HEADS = True
SP_NP = gl.constexpr(8)  # heads padded to the value wgmma's N
SP_MAX_RANK_V = 512  # value accumulators: rank_v / 16 registers per thread
SP_SMEM_LIMIT = 232448  # sm_90's largest shared memory per block (227 KB)
# sp_shared_bytes leaves out the compiler's alignment of the buffers: 296 B for the Llama shape (232048 B
# compiled against 231752 estimated), so programs are kept this much under the limit.
SP_SMEM_MARGIN = 512
# Registers per thread of the second consumer; the first gets 3 * 168 - SP_CONSUMER_REGS - 24. 248 (232 for the
# first) measured 1.4-2.4% faster than 232 in six same-call pairs at 64K, B=1 and 8 (240 like 232, 224 slower;
# twelfth session). With SP_ROPE_CHAIN = 2, 240 for both: the Llama build (sm_90, offline) then keeps its
# consumer loops nearly free of spills (1 local load per tile each, against 13 and 7 at 232 / 248).
SP_CONSUMER_REGS = gl.constexpr(240)
SP_PRODUCER_REGS = gl.constexpr(24)
SP_MAXNREG = 168
# Whether method="auto" (and "single_pass" without warp_specialized) takes this kernel where it applies. It
# measured faster than the fold path's two kernels at every measured shape (H200, 32 x 128 heads, ranks 128 /
# 384 per group of 4: 198.6 vs 222.5 us at 64K, 1530 vs 1708 us at B=8 x 64K, 28.4 vs 33.2 us at 4K; kernels/
# NOTES.md, tenth session). Those runs showed a race, fixed by the value-box ready barriers per consumer (see
# _consume); with the fix every GPU test passed, the single-pass ones five times over (twelfth session).
SP_AUTO = True
# The softmax denominator kept per thread (each thread's slots) and summed across the warps once at the end,
# instead of a cross-warp sum (shared memory and barriers) per tile: 198.6 vs 205.9 us at 64K, 1530.2 vs
# 1581.2 us at B=8 x 64K (28.4 vs 27.7 us at 4K, within noise).
SP_THREAD_L = True
# The next four cut the consumers' warpgroup barriers (BAR.SYNC) per tile from 13 to 5 in the Llama build (sm_90,
# offline) and its stack from 288 to 264 B (the 4-bit kernel's from 48 to 8 B). Timed together, one process each
# (H200, 32 x 128 heads, ranks 128 / 384 per group of 4; kernels/NOTES.md, eighteenth session), fp16: 194.3 and
# 195.9 against 203.5 and 207.9 us at 64K, 1480.3 and 1492.0 against 1563.8 and 1575.3 us at B=8 x 64K, 26.2 and
# 27.1 against 27.2 and 27.3 us at 4K; without SP_LAZY_MAX 199.1, 1533.2, 26.6. 4 bits: 211.8 and 214.3 against
# 212.5 and 216.0 at 64K, 1674.5 against 1659.4 and 1673.0 at B=8 (the same within noise).
# The padded (slot, head) softmax tiles (scores, P, l) in the value accumulator's layout, where the four lanes of a
# quad own two of the NP columns each, instead of the score layout, where each lane holds all NP (the quad's sums
# broadcast): the running max then has the value accumulators' column layout (no alpha conversion through shared
# memory and its two warpgroup barriers per tile) and each thread computes a quarter of the exponentials.
SP_P_SPLIT = gl.constexpr(True)
# A consumer releases its tile's value boxes with one arrive on its own empty barrier, instead of one arrive per
# box buffer: each arrive is one thread's, behind a barrier of the warpgroup (three per tile at rank_v 384).
# The filler (producer warp or dequant warps) then waits, per box, for the release of the tile that last held its
# buffer (value_buffer_free).
SP_TILE_RELEASE = gl.constexpr(True)
# The fp16 kernel's producer completes one ready barrier per tile (its consumer's) with all of the tile's value
# boxes, instead of one per (consumer, box buffer): the consumer waits once per tile, not once per box (each wait
# but the first behind a barrier of the warpgroup), and starts its value wgmmas when the last box has landed.
# _consume tells the two apart by the ready barriers' count (2 against 2 * VST >= 4); the quantized kernel's
# dequant warps keep one per box.
SP_TILE_READY = gl.constexpr(True)
# Lazy softmax rescaling (needs SP_P_SPLIT): P of a tile is taken against the running max m_i, and each warp's
# maxima go to shared memory under the P store's barrier, instead of a cross-warp max (two more barriers of the
# warpgroup) before P. Only when a column's tile max exceeds m_i by more than SP_LAZY_SLACK (log2 units: P stays
# below 2^SP_LAZY_SLACK in fp16) are m_i, l, the accumulators and P redone against the new max (a branch taken
# by every thread alike: all read the same maxima). The result is the same softmax with another reference max.
SP_LAZY_MAX = gl.constexpr(True)
SP_LAZY_SLACK = gl.constexpr(8.0)
# A consumer issues the score wgmma of its next rows tile before it waits for the current one, so that the tensor
# cores run while it takes the RoPE products of the one before (two accumulators live: at SP_DOT_COLS = 64 the
# registers of one 128-row accumulator). Without it each wgmma is waited at once, and a consumer's MMAs overlap
# only the other consumer's work (ncu, twelfth session: tensor pipe 43% busy). With SP_DOT_COLS = 64 and
# SP_ROWS_PER_TILE, without it: 180.2 us at 64K, 1378.7 us at B=8 x 64K, 25.3 us at 4K (against 178.8, 1360.5,
# 25.7 with it; nineteenth session). The quantized kernel has its own switch (SPQ_SCORE_PIPE).
SP_SCORE_PIPE = True
# The fp16 consumers' ROWS_PER_TILE (see _consume; SPQ_ROWS_PER_TILE in the quantized kernel). Hoisted out of the
# loop, the eight 64-row tiles' descriptors go to the stack: 504 B and 126 local loads in the Llama build (sm_90,
# offline), 96 B and 37 built per tile (264 B and 54 at the former default, 128 rows hoisted, no SP_SCORE_PIPE).
SP_ROWS_PER_TILE = True
# Tiles ahead of its loads whose key and value latents the producer asks L2 to fetch (a prefetch.global.L2 per
# 128-byte line; 0: none). Tried because the rings hold about one tile and one box ahead of the consumers (the
# folded rows take 128 KB of the 227 at the Llama shape); it made the kernel slower, the more so the farther ahead
# (H200, 32 x 128 heads, ranks 128 / 384 per group of 4, one call, one process each: 0 tiles 179.7 and 179.9 us at
# 64K, 1 tile 196.4, 2 217.2, 4 231.5; batch 8 1392.4 against 1463.2 / 1643.3 / 1864.7; kernels/NOTES.md,
# twentieth session). ncu of the default had the consumers waiting on data in 5% of their samples: they are the
# bound, not the loads in flight (and under the card's 700 W cap their clock: 1.46 GHz while this kernel runs
# back to back, 1.88 GHz under SDPA).
SP_L2_PREFETCH = 0
# A head's RoPE products summed per thread as SP_ROPE_CHAIN chains of FMAs over its frequencies (cos term, sin
# term, next frequency...; _rope_chain), then added, instead of products then a tree of FADDs (0): per (slot, head
# part) and thread 2 FMUL + 14 FFMA + 1 FADD against 8 FMUL, 8 FFMA and 7 FADD at 32 frequencies (a quad's lanes
# hold a quarter of them each; their sums meet by shuffles either way). The Llama build's consumer loops: 1094 /
# 1089 instructions per tile against 1224 / 1206 (sm_90, offline, with SP_CONSUMER_REGS 240). One chain (fewer
# ops still) kept too few independent FMAs for the scheduler, which then held more accumulators live and spilled
# (43 local loads per tile). The twenty-first session's measurements: kernels/NOTES.md.
SP_ROPE_CHAIN = gl.constexpr(2)
# Arguments of the single-pass kernels that change from one decode step to the next (the cache grows by a slot,
# its chunks by one now and then; in quantized decoding the full-precision window's positions start one slot later
# each step). Triton would specialize a build on each integer's divisibility by 16 (and on a value of 1) and on each
# pointer's 16-byte alignment, so one generate() call built the kernel again whenever these changed: three builds in
# 40 steps from 1000 slots (offline, sm_90; ~2.5 s each on a 2-core CPU). Not specialized, every step reuses one
# build. num_slots bounds the tiles' position loads (masks), which a multiple of 16 let the compiler widen: the sm_90
# Llama build has the same instructions either way but for those loads (kernels/NOTES.md, twenty-second session).
DECODE_STEP_ARGS = ["num_splits", "num_slots"]
DECODE_STEP_PTRS = ["pos_ptr"]


def sp_value_box(rank_v: int) -> int:
    """Value channels per TMA box and value wgmma (its M: a multiple of 64; box dims are powers of two)."""
    return 128 if rank_v % 128 == 0 else 64


def sp_value_stages(rank_v: int) -> int:
    """Value boxes in the ring: one tile's boxes plus one of the next (a consumer holds all of its tile's)."""
    return rank_v // sp_value_box(rank_v) + 1


def sp_shared_bytes(fold_heads: int, head_dim: int, rank: int, rank_v: int, elt: int,
                    tile_ready: Optional[bool] = None) -> int:
    """Shared memory of one program: folded rows, key and value rings, the two P buffers (and under SP_LAZY_MAX
    the consumers' warp maxima), barriers. ``tile_ready``: one value ready barrier per consumer (default
    SP_TILE_READY; the quantized kernel's dequant warps keep one per box buffer)."""
    rows = fold_heads * head_dim * rank * elt
    keys = SP_KEY_STAGES * SP_BLOCK_S * rank * elt
    vst = sp_value_stages(rank_v)
    values = vst * SP_BLOCK_S * sp_value_box(rank_v) * elt
    p_bufs = 2 * SP_BLOCK_S * SP_NP.value * elt + (2 * 4 * SP_NP.value * 4 if SP_LAZY_MAX.value else 0)
    ready = 2 if (SP_TILE_READY.value if tile_ready is None else tile_ready) else 2 * vst
    empty = 2 if SP_TILE_RELEASE.value else vst
    return rows + keys + values + p_bufs + 8 * (2 * SP_KEY_STAGES + ready + empty + 1)


def sp_dot_cols(head_dim: int) -> int:
    """Folded rows per score wgmma (its N): SP_DOT_COLS, or one head's rows when a head has more (under
    SP_SPLIT_HEADS, SP_DOT_COLS if it divides them: a head's scores then summed over head_dim / SP_DOT_COLS)."""
    if SP_SPLIT_HEADS and SP_DOT_COLS < head_dim and head_dim % SP_DOT_COLS == 0:
        return SP_DOT_COLS
    return max(SP_DOT_COLS, head_dim)


def pick_fold_heads(heads_per_group: int, head_dim: int, program_bytes, budget: int, buffers: str, kernel: str,
                    requested: Optional[int] = None) -> int:
    """Query heads per program of a Gluon single-pass kernel: ``requested`` if it divides the group's heads, fills
    whole score wgmmas and ``program_bytes(heads)`` fits in ``budget`` bytes of shared memory (else a ValueError
    naming ``buffers``), or by default the most such heads (all of a group's heads in one program read its value
    tiles once and compute cos/sin once; none fitting is a ValueError naming ``kernel``)."""
    cols = sp_dot_cols(head_dim)

    def fits(d: int) -> bool:
        return (heads_per_group % d == 0 and (d * head_dim) % min(cols, d * head_dim) == 0
                and program_bytes(d) <= budget)

    if requested is not None:
        if requested < 1 or not fits(requested):
            raise ValueError(f"fold_heads={requested} must divide the {heads_per_group} query heads per group and "
                             f"fit in {SP_SMEM_LIMIT // 1024} KB of shared memory with {buffers}")
        return requested
    fitting = [d for d in range(1, heads_per_group + 1) if fits(d)]
    if not fitting:
        raise ValueError(f"no program of {kernel} fits in shared memory")
    return max(fitting)


def sp_fold_heads(heads_per_group: int, head_dim: int, rank: int, rank_v: int, elt: int,
                  requested: Optional[int] = None) -> int:
    """Query heads per program (:func:`pick_fold_heads` with this kernel's shared memory)."""
    return pick_fold_heads(heads_per_group, head_dim, lambda d: sp_shared_bytes(d, head_dim, rank, rank_v, elt),
                           SP_SMEM_LIMIT - SP_SMEM_MARGIN, "the key and value rings", "the Gluon single-pass kernel",
                           requested)


def sp_shape_unsupported(q: torch.Tensor, k_ranks: list, v_ranks: list, block_s: Optional[int]) -> str:
    """Why the single-pass kernels' tiles cannot hold these value ranks and heads ('' when they can): the
    checks beyond the fold's that need no latent tensor."""
    if block_s is not None and block_s != SP_BLOCK_S:
        return f"its tiles are {SP_BLOCK_S} slots, block_s={block_s} was given"
    rank_v = v_ranks[0]
    if any(r != rank_v for r in v_ranks) or rank_v % 64 or not 64 <= rank_v <= SP_MAX_RANK_V:
        return (f"every group needs the same value rank, a multiple of 64 in [64, {SP_MAX_RANK_V}], "
                f"got {sorted(set(v_ranks))}")
    heads_per_group = q.shape[1] // len(k_ranks)
    if heads_per_group > SP_NP.value:
        return f"it pads a group's heads to {SP_NP.value} columns, got {heads_per_group} heads per group"
    return ""


def single_pass_ws_unsupported(q: torch.Tensor, k_latent, v_latent, k_ranks: list, v_ranks: list, n_rep: int,
                               has_bias: bool, block_s: Optional[int] = None) -> str:
    """Why the Gluon single-pass kernel cannot serve this call ('' when it can)."""
    why = (fold_keys_unsupported(q, k_latent.fp, k_latent.num_quantized, k_ranks, n_rep, has_bias)
           or sp_shape_unsupported(q, k_ranks, v_ranks, block_s))
    if why:
        return why
    rank, rank_v = k_ranks[0], v_ranks[0]
    heads_per_group = q.shape[1] // len(k_ranks)
    if not tma_aligned(v_latent.fp):
        return "the value latents need 16-byte aligned rows (TMA)"
    try:
        sp_fold_heads(heads_per_group, q.shape[2], rank, rank_v, q.element_size())
    except ValueError as err:
        return str(err)
    return hopper_unsupported(q)


@gluon.jit
def value_empty_barriers(VST: gl.constexpr):
    """The value ring's empty barriers: one per consumer under SP_TILE_RELEASE, else one per box buffer."""
    if SP_TILE_RELEASE:
        return mbarriers(2)
    else:
        return mbarriers(VST)


@gluon.jit
def value_buffer_free(vempty, box, VST: gl.constexpr, NVB: gl.constexpr):
    """Wait until the ring buffer of value box ``box`` (tile box // NVB, buffer box % VST) is free.

    SP_TILE_RELEASE: the box VST earlier in the same buffer belongs to tile t, released by consumer t % 2 in its
    phase t // 2. One phase ahead at most: that consumer's next release (tile t + 2) needs this box, or a later
    one of tile t + 2, loaded first (VST = NVB + 1 puts box in tile t + 1 or at the start of t + 2). Otherwise
    the buffer's own barrier; both start released (no wait for the first VST boxes, parity 1)."""
    if SP_TILE_RELEASE:
        t = gl.maximum(box - VST, 0) // NVB  # (clamped: the first VST boxes skip the wait)
        mbarrier.wait(vempty.index(t % 2), (t // 2) & 1, pred=box >= VST)
    else:
        mbarrier.wait(vempty.index(box % VST), ((box // VST) & 1) ^ 1)


@gluon.jit
def l2_prefetch_rows(base, slot0, hi, row_stride, nbytes: gl.constexpr, BLOCK_S: gl.constexpr):
    """Ask L2 for the nbytes at base + slot * row_stride (elements) of the BLOCK_S slots from slot0, those past
    hi clamped to hi - 1 (one warp): a prefetch.global.L2 per 128-byte line at offsets min(128 i, nbytes - 1),
    which also reach a row's last line when it does not start on one. (A cp.async.bulk.prefetch per row is a
    warp-uniform instruction: the compiler loops it over the lanes' addresses, 309 us against 217 at 64K.)"""
    layout: gl.constexpr = gl.BlockedLayout([1], [32], [1], [0])
    NL: gl.constexpr = triton.next_power_of_2(triton.cdiv(nbytes, 128))
    ELT: gl.constexpr = base.dtype.element_ty.primitive_bitwidth // 8
    i = gl.arange(0, BLOCK_S * NL, layout=layout)
    slots = gl.minimum(slot0 + i // NL, hi - 1)
    offs = gl.minimum((i % NL) * 128, nbytes - 1) // ELT
    gl.inline_asm_elementwise("prefetch.global.L2 [$1];\n\tmov.u32 $0, 0;", "=r,l",
                              [base + slots.to(gl.int64) * row_stride + offs], dtype=gl.int32, is_pure=False, pack=1)


@gluon.jit
def l2_prefetch_tile(prefetch, t, lo, hi, BLOCK_S: gl.constexpr, KB: gl.constexpr, VB: gl.constexpr):
    """L2 prefetch of tile t's key (KB bytes per slot) and value (VB) latents; prefetch = (key base, value base,
    key slot stride, value slot stride), the bases at this program's batch row and group."""
    k_base, v_base, k_ss, v_ss = prefetch
    l2_prefetch_rows(k_base, lo + t * BLOCK_S, hi, k_ss, KB, BLOCK_S)
    l2_prefetch_rows(v_base, lo + t * BLOCK_S, hi, v_ss, VB, BLOCK_S)


@gluon.jit
def gdc_wait_gl():
    """griddepcontrol.wait: until the grid this one was launched as a programmatic dependent of has completed and
    its writes are visible (a no-op without such a launch)."""
    gl.inline_asm_elementwise("griddepcontrol.wait; // dummy $0", "=r", [], dtype=gl.int32, is_pure=False, pack=1)


@gluon.jit
def gdc_launch_dependents_gl():
    """griddepcontrol.launch_dependents: the next grid, if launched as a programmatic dependent, may start once
    every program of this one has said so (or exited)."""
    gl.inline_asm_elementwise("griddepcontrol.launch_dependents; // dummy $0", "=r", [], dtype=gl.int32,
                              is_pure=False, pack=1)


@gluon.jit
def _key_tile(lat_desc, kbufs, kready, kempty, b, lo, k_off, j, BLOCK_S: gl.constexpr, KST: gl.constexpr):
    """TMA of key tile j into ring buffer j % KST once the consumer of tile j - KST released it."""
    s = j % KST
    mbarrier.wait(kempty.index(s), ((j // KST) & 1) ^ 1)
    mbarrier.expect(kready.index(s), lat_desc.block_type.nbytes)
    tma.async_copy_global_to_shared(lat_desc, [b, lo + j * BLOCK_S, k_off], kready.index(s), kbufs.index(s))


@gluon.jit
def _producer(lat_desc, val_desc, rows_desc, kbufs, vbufs, rows_smem, p_smem, kready, kempty, vready, vempty,
              rows_bar, b, rows_row0, k_off, v_off, lo, n_blocks, pos_ptr, kv_start, inv_freq_ptr, part_ptrs, split0,
              hi, ROLE: gl.constexpr, BLOCK_S: gl.constexpr, HP: gl.constexpr, HALF: gl.constexpr, RV: gl.constexpr,
              KST: gl.constexpr, VST: gl.constexpr, THREAD_L: gl.constexpr, prefetch, PF: gl.constexpr,
              PDL: gl.constexpr):
    """One warp (the consumers' signature, then the L2 prefetch's bases and distance PF): the rows once; then per
    step j tile j + PF into L2 (SP_L2_PREFETCH), the key tile j (once tile j - KST released it) and the value
    boxes of tile j - 1 (once box i - VST was released). Empty barriers start released (parity 1). Keys run one
    tile ahead: a consumer needs them first.

    PDL (a programmatic dependent of the fold rows' launch): the first KST key tiles are asked for before waiting
    for that launch (the latents were written before it started), then the rows; once every load is issued, the
    merge's launch may start."""
    VB: gl.constexpr = val_desc.block_type.shape[2]
    NVB: gl.constexpr = RV // VB
    KBYTES: gl.constexpr = lat_desc.block_type.nbytes // BLOCK_S
    VBYTES: gl.constexpr = RV * (val_desc.dtype.primitive_bitwidth // 8)
    if PF > 0:  # tiles 1 .. PF - 1 (tile 0 is loaded at once)
        for t in range(1, gl.minimum(PF, n_blocks)):
            l2_prefetch_tile(prefetch, t, lo, hi, BLOCK_S, KBYTES, VBYTES)
    first = 0  # key tiles already asked for
    if PDL:
        first = gl.minimum(n_blocks, KST)
        for j in range(first):
            _key_tile(lat_desc, kbufs, kready, kempty, b, lo, k_off, j, BLOCK_S, KST)
        gdc_wait_gl()
    load_rows(rows_desc, rows_smem, rows_bar, rows_row0, HP, HALF)
    for j in range(n_blocks + 1):
        if PF > 0:
            if j + PF < n_blocks:
                l2_prefetch_tile(prefetch, j + PF, lo, hi, BLOCK_S, KBYTES, VBYTES)
        if j < n_blocks:
            if j >= first:
                _key_tile(lat_desc, kbufs, kready, kempty, b, lo, k_off, j, BLOCK_S, KST)
        jv = j - 1
        if jv >= 0:
            for k in gl.static_range(NVB):
                box = jv * NVB + k
                sb = box % VST
                value_buffer_free(vempty, box, VST, NVB)
                if SP_TILE_READY:
                    # Tile jv's consumer's barrier, armed once for the whole tile. Not before the first box's
                    # buffer is free: that wait means the consumer finished tile jv - 2, so it has waited on the
                    # barrier's previous phase (an arrive while that phase's bytes are in flight would count in it).
                    ready = vready.index(jv % 2)
                    if k == 0:
                        mbarrier.expect(ready, NVB * val_desc.block_type.nbytes)
                else:
                    ready = vready.index((jv % 2) * VST + sb)  # the ready barrier of tile jv's consumer
                    mbarrier.expect(ready, val_desc.block_type.nbytes)
                tma.async_copy_global_to_shared(val_desc, [b, lo + jv * BLOCK_S, v_off + k * VB], ready,
                                                vbufs.index(sb))
    if PDL:
        gdc_launch_dependents_gl()


@gluon.jit
def _against_max(s_pad, m_i, m_new):
    """(alpha, p) of the online softmax moving from max m_i to m_new (NP,): alpha = 2^(m_i - m_new), p = 2^(s_pad -
    m_new) (BLOCK_S, NP), log2 units; a column still at -inf (padding, every slot masked) takes 0 as its max."""
    m_safe = gl.where(m_new == float("-inf"), 0.0, m_new)
    return gl.exp2(m_i - m_safe), gl.exp2(s_pad - m_safe[None, :])


@gluon.jit
def _score_mma(tile, rows_smem, i, zero):
    """The score wgmma of rows tile i, issued (not waited): tile (BLOCK_S, R) x the (R, N) view of rows_smem[i],
    the B operand K-major in shared memory; zero (BLOCK_S, N) gives the accumulator's layout."""
    return warpgroup_mma(tile, rows_smem.index(i).permute((1, 0)), zero, use_acc=False, is_async=True)


@gluon.jit
def _add_to_l(l_s, p, alpha, THREAD_L: gl.constexpr):
    """The denominator after a tile: l * alpha + the tile's p, kept per thread (BLOCK_S, NP) under THREAD_L, else
    summed over the slots (NP,)."""
    if THREAD_L:
        return l_s * alpha[None, :] + p
    else:
        return l_s * alpha + gl.sum(p, axis=0)


@gluon.jit
def _unstack(x, N: gl.constexpr):
    """The N (a power of 2) slices x[..., i] of a rank-4 x (A, B, C, N) whose last dim each thread holds in
    registers, as a tuple (in bit-reversed order of i: the order of a sum over them is free)."""
    A: gl.constexpr = x.shape[0]
    B: gl.constexpr = x.shape[1]
    C: gl.constexpr = x.shape[2]
    parts = (x,)
    for lvl in gl.static_range(N.bit_length() - 1):
        halves = ()
        for i in gl.static_range(1 << lvl):
            lo, hi = gl.split(gl.reshape(parts[i], (A, B, C, N >> (lvl + 1), 2)))
            halves = halves + (lo, hi)
        parts = halves
    out = ()
    for i in gl.static_range(N):
        out = out + (gl.reshape(parts[i], (A, B, C)),)
    return out


@gluon.jit
def _rope_chain(acc, c, sn, HD: gl.constexpr, FC: gl.constexpr, NCH: gl.constexpr):
    """(BLOCK_S, HD) sums over f of acc[:, h, f, 0] * c[:, f] + acc[:, h, f, 1] * sn[:, f] for acc (BLOCK_S, HD *
    FC * 2) in the wgmma accumulator's layout (columns 8 i + 2 q + {0, 1} at lane q of a quad) and c, sn
    (BLOCK_S, FC): NCH FMA chains per thread over its FC / 4 frequencies f = 4 i + q (FC a power of two >= 8, as
    fold_keys_unsupported admits: head_dim / 2 and its parts), added, then a sum over q."""
    BLOCK_S: gl.constexpr = acc.shape[0]
    G: gl.constexpr = FC // 4
    NC: gl.constexpr = NCH if NCH < G else G
    y = gl.permute(gl.reshape(acc, (BLOCK_S, HD, G, 4, 2)), (0, 1, 3, 2, 4))  # (slot, head, q, i, cos|sin)
    yc, ys = gl.split(y)
    ycs = _unstack(yc, G)
    yss = _unstack(ys, G)
    tl: gl.constexpr = gl.SliceLayout(1, ycs[0].type.layout)  # (slot, q)
    cs = _unstack(gl.reshape(gl.permute(gl.reshape(c, (BLOCK_S, G, 4)), (0, 2, 1)), (BLOCK_S, 1, 4, G)), G)
    ss = _unstack(gl.reshape(gl.permute(gl.reshape(sn, (BLOCK_S, G, 4)), (0, 2, 1)), (BLOCK_S, 1, 4, G)), G)
    chains = ()  # NC independent chains (frequency groups i = r mod NC): latency to hide for the scheduler
    for r in gl.static_range(NC):
        t = ycs[r] * gl.convert_layout(gl.reshape(cs[r], (BLOCK_S, 4)), tl)[:, None, :]
        t = gl.fma(yss[r], gl.convert_layout(gl.reshape(ss[r], (BLOCK_S, 4)), tl)[:, None, :], t)
        for i in gl.static_range(r + NC, G, NC):
            t = gl.fma(ycs[i], gl.convert_layout(gl.reshape(cs[i], (BLOCK_S, 4)), tl)[:, None, :], t)
            t = gl.fma(yss[i], gl.convert_layout(gl.reshape(ss[i], (BLOCK_S, 4)), tl)[:, None, :], t)
        chains = chains + (t,)
    total = chains[0]
    for r in gl.static_range(1, NC):
        total = total + chains[r]
    return gl.sum(total, axis=2)


@gluon.jit
def _consume(lat_desc, val_desc, rows_desc, kbufs, vbufs, rows_smem, p_smem, kready, kempty, vready, vempty,
             rows_bar, b, rows_row0, k_off, v_off, lo, n_blocks, pos_ptr, kv_start, inv_freq_ptr, part_ptrs, split0,
             hi, ROLE: gl.constexpr, BLOCK_S: gl.constexpr, HP: gl.constexpr, HALF: gl.constexpr, RV: gl.constexpr,
             KST: gl.constexpr, VST: gl.constexpr, THREAD_L: gl.constexpr, KEY_CODES: gl.constexpr = 0,
             KQG: gl.constexpr = 0, KZERO: gl.constexpr = False, KSTEP: gl.constexpr = 1,
             ROWS_PER_TILE: gl.constexpr = False, SCORE_PIPE: gl.constexpr = False, PAIRS: gl.constexpr = False):
    """One warpgroup: tiles ROLE, ROLE + 2, ... of [lo, hi); writes split split0 + ROLE of its HP heads'
    partials (m, l in log2 units; acc fp32).

    KEY_CODES (the quantized kernel: the key codes' bits, 0 for none): kbufs is a ring of 4- or 2-bit key words
    (KST, 1, BLOCK_S, R * KEY_CODES / 32) whose TMA completes kready, lat_desc / val_desc are its rings of
    scales / zero-points (quant group KQG, KZERO: asymmetric; k_off: where a slot's scales start in their box,
    a multiple of KSTEP); the consumer unpacks each key tile into the score wgmma's register operand
    (word_unpack._unpack_key_regs).

    ROWS_PER_TILE: the folded rows' wgmma descriptors are built in each tile instead of hoisted out of the loop
    as invariants, which the compiler keeps on the stack when registers run short (SP_ROWS_PER_TILE, and always
    in the quantized kernel). SCORE_PIPE: each score wgmma is issued before the one before it is waited (two
    accumulators live; SP_SCORE_PIPE / SPQ_SCORE_PIPE). PAIRS (4-bit fp16 codes, SPQ_NIBBLE_PAIRS): the key words
    unpacked in nibble-pair order (word_unpack.NIBBLE_PAIR_ORDER; the folded rows' rank columns come in that order)
    and the value boxes hold their channels in it too, so each value accumulator row is stored to the channel it
    holds."""
    part_m_ptr, part_l_ptr, part_acc_ptr, h_stride_m, h_stride_acc = part_ptrs
    N: gl.constexpr = rows_desc.block_type.shape[0]
    # A rows tile holds HD whole heads, or (CPH > 1) the FC frequencies of one head's CPH-th part (sp_dot_cols)
    CPH: gl.constexpr = (2 * HALF + N - 1) // N
    HD: gl.constexpr = (N * CPH) // (2 * HALF)
    FC: gl.constexpr = HALF // CPH
    NDOT: gl.constexpr = (HP * 2 * HALF) // N
    # Tile sides from the rings, not the descriptors: the quantized kernel (single_pass_ws_quant.py) fills the
    # same fp16/bf16 rings from packed words (or, KEY_CODES, passes its ring of key words) and word descriptors.
    if KEY_CODES:
        R: gl.constexpr = kbufs.shape[3] * (32 // KEY_CODES)
    else:
        R: gl.constexpr = kbufs.shape[3]
    VB: gl.constexpr = vbufs.shape[3]
    NVB: gl.constexpr = RV // VB
    NP: gl.constexpr = SP_NP
    TILE_READY: gl.constexpr = vready.shape[0] == 2  # one ready barrier per consumer (SP_TILE_READY)
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, N, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, NP, 16])
    a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=s_layout, k_width=2)
    zero = gl.zeros((BLOCK_S, N), gl.float32, s_layout)
    # The accumulator seen as (slot, head, frequency) cos and sin terms (a free split: column pairs per thread).
    zc, _ = gl.split(gl.reshape(zero, (BLOCK_S, HD, FC, 2)))
    l3: gl.constexpr = zc.type.layout
    trig_l: gl.constexpr = gl.SliceLayout(1, l3)  # (slot, frequency)
    score_l: gl.constexpr = gl.SliceLayout(2, l3)  # (slot, head)
    if SP_P_SPLIT:
        pad_l: gl.constexpr = o_layout  # the padded (slot, NP) tiles, see SP_P_SPLIT
    else:
        pad_l: gl.constexpr = score_l
    cols_l: gl.constexpr = gl.SliceLayout(0, score_l)
    pcols_l: gl.constexpr = gl.SliceLayout(0, pad_l)
    ocol_l: gl.constexpr = gl.SliceLayout(0, o_layout)
    freq = gl.arange(0, FC, layout=gl.SliceLayout(0, trig_l))
    inv_freqs = ()
    for f in gl.static_range(CPH):
        inv_freqs = inv_freqs + (gl.load(inv_freq_ptr + f * FC + freq),)
    trig_slots = gl.arange(0, BLOCK_S, layout=gl.SliceLayout(1, trig_l))
    out_slots = gl.arange(0, BLOCK_S, layout=gl.SliceLayout(1, pad_l))
    heads = gl.arange(0, HD, layout=cols_l)
    cols = gl.arange(0, NP, layout=pcols_l)
    p_all, m_all = p_smem
    p_buf = p_all.index(ROLE)
    if SP_LAZY_MAX:
        m_buf = m_all.slice(ROLE * 4, 4)  # (4 warps, NP)
    else:
        m_buf = p_buf  # (unused)
    # (warp, padded head), each thread the maxima of all four warps for its two columns: the max over warps then
    # has SliceLayout(0, o_layout) (lanes 0-1 pick the column pair, no warp dimension)
    wmax_layout: gl.constexpr = gl.DistributedLinearLayout(
        reg_bases=[[1, 0], [2, 0], [0, 1]], lane_bases=[[0, 2], [0, 4], [0, 0], [0, 0], [0, 0]],
        warp_bases=[[0, 0], [0, 0]], block_bases=[], shape=[4, NP])
    m_i = gl.full((NP,), float("-inf"), gl.float32, pcols_l)
    if THREAD_L:
        l_s = gl.zeros((BLOCK_S, NP), gl.float32, pad_l)  # per thread: its slots' share of l
    else:
        l_s = gl.zeros((NP,), gl.float32, pcols_l)
    accs = ()
    for k in gl.static_range(NVB):
        accs = accs + (gl.zeros((VB, NP), gl.float32, o_layout),)
    # Phase bit per value box buffer of this consumer's own ready barriers (bit sb: buffer sb). The ring holds
    # fewer boxes than two tiles, so a buffer's consecutive boxes can belong to the two consumers; with one
    # shared ready barrier per buffer, a consumer running ahead could wait two phases ahead of it, where the
    # parity check passes at once (the buffer still holding the other consumer's box): GPU tests gave
    # non-finite outputs now and then. Each consumer's barriers see only its own boxes, one phase each.
    vphase = n_blocks * 0
    mbarrier.wait(rows_bar, 0)
    start = lo + ROLE * BLOCK_S
    pos = gl.load(pos_ptr + start + trig_slots, mask=start + trig_slots < hi, other=0)
    for j in range(ROLE, n_blocks, 2):
        sk = j % KST
        start = lo + j * BLOCK_S
        slots = start + out_slots
        valid = (slots >= kv_start) & (slots < hi)
        mbarrier.wait(kready.index(sk), (j // KST) & 1)
        if KEY_CODES:
            if PAIRS:
                tile = _unpack_key_regs_pairs(kbufs.index(sk), lat_desc.index(sk), val_desc.index(sk), k_off,
                                              BLOCK_S, KQG, KZERO, KSTEP, a_layout)
            else:
                tile = _unpack_key_regs(kbufs.index(sk), lat_desc.index(sk), val_desc.index(sk), k_off, BLOCK_S,
                                        KEY_CODES, KQG, KZERO, KSTEP, vbufs.dtype, a_layout)
            mbarrier.arrive(kempty.index(sk), count=1)  # the words are in registers
        else:
            tile = kbufs.index(sk).reshape([BLOCK_S, R])
        if CPH == 1:
            s_pad = gl.full((BLOCK_S, NP), float("-inf"), gl.float32, pad_l)
        else:  # a head's parts are summed; the padded columns get -inf after the last
            s_pad = gl.zeros((BLOCK_S, NP), gl.float32, pad_l)
        if ROWS_PER_TILE:
            kz = j >> 30  # 0 (j < 2^30), but opaque to the compiler: the descriptors are not loop invariants
        else:
            kz = 0
        acc = _score_mma(tile, rows_smem, kz, zero)
        nstart = start + 2 * BLOCK_S  # the next tile's positions, a tile ahead
        pos_next = gl.load(pos_ptr + nstart + trig_slots, mask=nstart + trig_slots < hi, other=0)
        trigs = ()  # (cos, sin) per frequency part, under the first wgmma
        for f in gl.static_range(CPH):
            trigs = trigs + (_cos_sin(pos.to(gl.float32)[:, None] * inv_freqs[f][None, :]),)
        for k in gl.static_range(NDOT):
            if SCORE_PIPE and k + 1 < NDOT:
                acc_next = _score_mma(tile, rows_smem, kz + k + 1, zero)
                acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc, ))
            else:
                acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc, ))
            if k == NDOT - 1 and not KEY_CODES:
                mbarrier.arrive(kempty.index(sk), count=1)  # the key tile is read
            c, sn = trigs[k % CPH]
            if SP_ROPE_CHAIN:
                sc = gl.convert_layout(_rope_chain(acc, c, sn, HD, FC, SP_ROPE_CHAIN), score_l)  # (the same elements per thread)
            else:
                yc, ys = gl.split(gl.reshape(acc, (BLOCK_S, HD, FC, 2)))
                sc = gl.sum(yc * c[:, None, :] + ys * sn[:, None, :], axis=2)  # (BLOCK_S, HD), log2 units
            for h in gl.static_range(HD):
                s_h = gl.convert_layout(gl.sum(gl.where(heads[None, :] == h, sc, 0.0), axis=1),
                                        gl.SliceLayout(1, pad_l))  # the same rows per thread: no data moves
                col = (k // CPH) * HD + h
                if CPH == 1:
                    s_pad = gl.where(cols[None, :] == col, s_h[:, None], s_pad)
                else:
                    s_pad = gl.where(cols[None, :] == col, s_pad + s_h[:, None], s_pad)
            if k + 1 < NDOT:
                if SCORE_PIPE:
                    acc = acc_next
                else:
                    acc = _score_mma(tile, rows_smem, kz + k + 1, zero)
        if CPH > 1:
            s_pad = gl.where(cols[None, :] < HP, s_pad, float("-inf"))
        s_pad = gl.where(valid[:, None], s_pad, float("-inf"))
        if SP_LAZY_MAX:
            p = _against_max(s_pad, m_i, m_i)[1]  # (its alpha, 1 here, is not used)
            p_buf.store(p.to(vbufs.dtype))
            m_buf.store(gl.max(gl.reshape(s_pad, (4, BLOCK_S // 4, NP)), axis=1))
            fence_async_shared()
            gl.thread_barrier()  # P and every warp's maxima written
            m_tile = gl.convert_layout(gl.max(m_buf.load(wmax_layout), axis=0), pcols_l)
            if gl.max(gl.where(m_tile > m_i + SP_LAZY_SLACK, 1, 0), axis=0) > 0:
                m_new = gl.maximum(m_i, m_tile)
                alpha, p = _against_max(s_pad, m_i, m_new)
                l_s = _add_to_l(l_s, p, alpha, THREAD_L)
                m_i = m_new
                alpha_o = gl.convert_layout(alpha, ocol_l)
                rescaled = ()
                for k in gl.static_range(NVB):
                    rescaled = rescaled + (accs[k] * alpha_o[None, :],)
                accs = rescaled
                # Not needed by the data (each thread rewrites the P elements it stored above, no wgmma has read
                # them; the compiler adds none without it, offline build), kept as the GPU tests ran it
                gl.thread_barrier()
                p_buf.store(p.to(vbufs.dtype))
                fence_async_shared()
                gl.thread_barrier()
            else:
                l_s = _add_to_l(l_s, p, gl.full((NP,), 1.0, gl.float32, pcols_l), THREAD_L)
        else:
            # Online softmax per padded column; padding and masked slots stay -inf (p = 0).
            m_new = gl.maximum(m_i, gl.max(s_pad, axis=0))
            alpha, p = _against_max(s_pad, m_i, m_new)
            l_s = _add_to_l(l_s, p, alpha, THREAD_L)
            m_i = m_new
            alpha_o = gl.convert_layout(alpha, ocol_l)  # a no-op under SP_P_SPLIT
            p_buf.store(p.to(vbufs.dtype))
            fence_async_shared()
            gl.thread_barrier()  # every warp's rows of P written before the warpgroup's wgmmas read them
        new = ()
        if TILE_READY:
            mbarrier.wait(vready.index(ROLE), (j // 2) & 1)  # this consumer's (j // 2)-th tile
        for k in gl.static_range(NVB):
            sb = (j * NVB + k) % VST
            if not TILE_READY:
                mbarrier.wait(vready.index(ROLE * VST + sb), (vphase >> sb) & 1)
                vphase = vphase ^ (1 << sb)
            if SP_LAZY_MAX:
                prior = accs[k]  # rescaled above when the max moved
            else:
                prior = accs[k] * alpha_o[None, :]
            a = warpgroup_mma(vbufs.index(sb).reshape([BLOCK_S, VB]).permute((1, 0)), p_buf, prior, is_async=True)
            new = new + (a,)
        # All boxes are released after the last wgmma: releasing each after its own wait (wgmma waits with
        # NVB - 1 - k outstanding) measured the same (198.6 vs 199.8 us at 64K, 1530.2 vs 1528.7 at B=8 x 64K),
        # and one of its GPU test runs gave a non-finite output that the other runs did not reproduce.
        waited = warpgroup_mma_wait(num_outstanding=0, deps=new)
        if NVB == 1:
            accs = (waited,)  # the wait returns a lone tensor for one dependency
        else:
            accs = waited
        if SP_TILE_RELEASE:
            mbarrier.arrive(vempty.index(ROLE), count=1)
        else:
            for k in gl.static_range(NVB):
                mbarrier.arrive(vempty.index((j * NVB + k) % VST), count=1)
        pos = pos_next
    if THREAD_L:
        l_i = gl.sum(l_s, axis=0)
    else:
        l_i = l_s
    split = split0 + ROLE
    gl.store(part_m_ptr + cols * h_stride_m + split, m_i, mask=cols < HP)
    gl.store(part_l_ptr + cols * h_stride_m + split, l_i, mask=cols < HP)
    ch = gl.arange(0, VB, layout=gl.SliceLayout(1, o_layout))
    if PAIRS:  # accumulator row i holds channel _nibble_pair_channel(i) of its box
        ch = _nibble_pair_channel(ch)
    hc = gl.arange(0, NP, layout=ocol_l)
    for k in gl.static_range(NVB):
        gl.store(part_acc_ptr + hc[None, :] * h_stride_acc + split * RV + k * VB + ch[:, None], accs[k],
                 mask=(hc < HP)[None, :])


@gluon.jit
def sp_program(kv_start_ptr, part_m_ptr, part_l_ptr, part_acc_ptr, num_heads, num_splits, num_slots, num_groups,
               batch_groups, chunk_len, head_splits, HG: gl.constexpr, HP: gl.constexpr, HALF: gl.constexpr,
               RV: gl.constexpr, BLOCK_S: gl.constexpr):
    """This program's (b, g, slots [lo, hi), tiles, first of its two splits, kv_start, first folded row, the
    consumers' partial pointers and strides) in a single-pass grid (see _ws_single_pass_kernel)."""
    b, g, bg, h0, lo, hi, n_blocks = _program_slots(batch_groups, head_splits, num_groups, chunk_len, num_slots, HP,
                                                    BLOCK_S)
    kv_start = gl.load(kv_start_ptr + b)
    rows_row0 = (bg * HG + h0) * 2 * HALF
    head0 = (b * num_heads + g * HG + h0).to(gl.int64)
    part_ptrs = (part_m_ptr + head0 * num_splits, part_l_ptr + head0 * num_splits,
                 part_acc_ptr + head0 * num_splits * RV, num_splits, num_splits * RV)
    return b, g, lo, hi, n_blocks, (lo // chunk_len) * 2, kv_start, rows_row0, part_ptrs


@gluon.jit
def p_buffers(dtype: gl.constexpr, BLOCK_S: gl.constexpr):
    """(P of each consumer (2, BLOCK_S, NP), the value wgmmas' B operand; under SP_LAZY_MAX the consumers' warp
    column maxima (2 * 4, NP) fp32, else P again): the consumers' ``p_smem`` argument."""
    p_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_S, SP_NP], gl.float16)
    p_smem = gl.allocate_shared_memory(dtype, [2, BLOCK_S, SP_NP], p_layout)
    if SP_LAZY_MAX:  # and each consumer's per-warp column maxima (2 * 4 warps, NP) fp32
        m_layout: gl.constexpr = gl.SwizzledSharedLayout(vec=1, per_phase=1, max_phase=1, order=[1, 0])
        return p_smem, gl.allocate_shared_memory(gl.float32, [2 * 4, SP_NP], m_layout)
    else:
        return p_smem, p_smem


@gluon.jit(do_not_specialize=DECODE_STEP_ARGS, do_not_specialize_on_alignment=DECODE_STEP_PTRS)
def _ws_single_pass_kernel(lat_desc, val_desc, rows_desc, pos_ptr, pos_sb, kv_start_ptr, inv_freq_ptr,
                           part_m_ptr, part_l_ptr, part_acc_ptr, num_heads, num_splits, rank, rank_v, num_slots,
                           num_groups, batch_groups, chunk_len, head_splits, lat_ptr, val_ptr,
                           HG: gl.constexpr, HP: gl.constexpr, HALF: gl.constexpr, RV: gl.constexpr,
                           BLOCK_S: gl.constexpr, KST: gl.constexpr, VST: gl.constexpr, THREAD_L: gl.constexpr,
                           ROWS_PER_TILE: gl.constexpr, SCORE_PIPE: gl.constexpr, PF: gl.constexpr,
                           PDL: gl.constexpr = False):
    """Grid (B * G * head_splits * chunks,): program p covers local heads h0 + [0, HP) of (b, g) over slots
    [chunk * chunk_len, +chunk_len) (chunk slowest); part_*: (B, H, num_splits = 2 * chunks[, RV]) fp32.
    lat_desc / val_desc: TMA descriptors of the key / value latents (B, S, G * rank[_v]), boxes
    (1, BLOCK_S, rank) / (1, BLOCK_S, VBOX); rows_desc: of the interleaved folded rows, box (DOT_COLS, rank).
    lat_ptr / val_ptr: the same latents' data (strides from the descriptors), for the L2 prefetch of PF tiles ahead.
    PDL: launched as a programmatic dependent of the fold rows (see _producer)."""
    b, g, lo, hi, n_blocks, split0, kv_start, rows_row0, part_ptrs = sp_program(
        kv_start_ptr, part_m_ptr, part_l_ptr, part_acc_ptr, num_heads, num_splits, num_slots, num_groups, batch_groups,
        chunk_len, head_splits, HG, HP, HALF, RV, BLOCK_S)
    kbufs = gl.allocate_shared_memory(lat_desc.dtype, [KST] + lat_desc.block_type.shape, lat_desc.layout)
    vbufs = gl.allocate_shared_memory(val_desc.dtype, [VST] + val_desc.block_type.shape, val_desc.layout)
    rows_smem = rows_buffers(rows_desc, HP, HALF)
    p_smem = p_buffers(val_desc.dtype, BLOCK_S)
    kready = mbarriers(KST)
    kempty = mbarriers(KST)
    # value boxes: one ready barrier per (consumer, buffer), one empty barrier per buffer (see _consume)
    vready = mbarriers(2 if SP_TILE_READY else 2 * VST)
    vempty = value_empty_barriers(VST)
    rows_bar = mbarriers(1).index(0)
    pos_base = pos_ptr + b.to(gl.int64) * pos_sb
    k_off = g * rank
    v_off = g * rank_v
    prefetch = (lat_ptr + b.to(gl.int64) * lat_desc.strides[0] + k_off,
                val_ptr + b.to(gl.int64) * val_desc.strides[0] + v_off, lat_desc.strides[1], val_desc.strides[1])
    # The argument tuples are written out in the call: a tuple assigned to a name first turns its
    # constexprs into run-time scalars. All partitions share one signature; ROLE picks a consumer's tiles.
    gl.warp_specialize([
        (_consume, (lat_desc, val_desc, rows_desc, kbufs, vbufs, rows_smem, p_smem, kready, kempty, vready, vempty,
                    rows_bar, b, rows_row0, k_off, v_off, lo, n_blocks, pos_base, kv_start, inv_freq_ptr, part_ptrs,
                    split0, hi, 0, BLOCK_S, HP, HALF, RV, KST, VST, THREAD_L, 0, 0, False, 1, ROWS_PER_TILE,
                    SCORE_PIPE)),
        (_consume, (lat_desc, val_desc, rows_desc, kbufs, vbufs, rows_smem, p_smem, kready, kempty, vready, vempty,
                    rows_bar, b, rows_row0, k_off, v_off, lo, n_blocks, pos_base, kv_start, inv_freq_ptr, part_ptrs,
                    split0, hi, 1, BLOCK_S, HP, HALF, RV, KST, VST, THREAD_L, 0, 0, False, 1, ROWS_PER_TILE,
                    SCORE_PIPE)),
        (_producer, (lat_desc, val_desc, rows_desc, kbufs, vbufs, rows_smem, p_smem, kready, kempty, vready, vempty,
                     rows_bar, b, rows_row0, k_off, v_off, lo, n_blocks, pos_base, kv_start, inv_freq_ptr, part_ptrs,
                     split0, hi, 0, BLOCK_S, HP, HALF, RV, KST, VST, THREAD_L, prefetch, PF, PDL)),
    ], [4, 1], [SP_CONSUMER_REGS, SP_PRODUCER_REGS])


def sp_chunks(num_slots: int, programs_per_chunk: int, num_sms: int, num_splits: Optional[int]) -> tuple[int, int]:
    """(chunk_len, chunks): whole tiles per chunk; by default about one program per SM (one CTA fits per SM),
    else ceil(num_splits / 2) chunks (each chunk writes two splits, one per consumer)."""
    wanted = num_sms // programs_per_chunk if num_splits is None else cdiv(num_splits, 2)
    return slot_chunks(num_slots, SP_BLOCK_S, wanted)


def sp_launch(rows: torch.Tensor, half: int, heads_per_group: int, fold_heads: int, num_slots: int, num_sms: int,
              num_splits: Optional[int], parts_fn) -> tuple:
    """What both single-pass kernels' launches share: (rows descriptor (box of sp_dot_cols rows), head_splits,
    batch * groups, chunk_len, chunks, partials from ``parts_fn(2 * chunks)``); rows (B, G, HG * D, rank)."""
    if SP_LAZY_MAX.value and not SP_P_SPLIT.value:
        raise ValueError("SP_LAZY_MAX needs SP_P_SPLIT: the warps' maxima are read in the value accumulators' columns")
    batch, num_groups, _, rank = rows.shape
    cols = min(sp_dot_cols(2 * half), fold_heads * 2 * half)
    rows_desc = nvmma_desc(rows.view(-1, rank), [cols, rank])
    head_splits = heads_per_group // fold_heads
    bgs = batch * num_groups
    chunk_len, chunks = sp_chunks(num_slots, bgs * head_splits, num_sms, num_splits)
    return rows_desc, head_splits, bgs, chunk_len, chunks, parts_fn(2 * chunks)


def ws_single_pass(rows: torch.Tensor, k_fp: torch.Tensor, v_fp: torch.Tensor, positions: torch.Tensor,
                   kv_start: torch.Tensor, inv_freq: torch.Tensor, num_heads: int, rank: int, rank_v: int,
                   heads_per_group: int, fold_heads: int, num_sms: int, num_splits: Optional[int], parts_fn,
                   pdl: bool = False) -> tuple:
    """Partials (m, l, acc) of the whole call from the Gluon kernel; ``parts_fn(num_splits)`` allocates them.
    pdl: launched as a programmatic dependent of the fold rows' launch just before it.

    rows: interleaved folded rows (B, G, heads_per_group * D, rank) (``_fold_rows_kernel(..., INTERLEAVE=True)``);
    k_fp (B, S, G * rank), v_fp (B, S, G * rank_v) in rows' dtype; positions (B, S) int32; kv_start (B,) int32;
    inv_freq (D/2,) fp32; fold_heads from :func:`sp_fold_heads`.
    """
    if SP_KEY_STAGES % 2:  # see SP_KEY_STAGES: an odd ring would share key buffers between the consumers
        raise ValueError(f"SP_KEY_STAGES must be even (one key buffer per consumer per use), got {SP_KEY_STAGES}")
    batch, num_slots, _ = k_fp.shape
    num_groups = rows.shape[1]
    half = inv_freq.shape[0]
    lat_desc = nvmma_desc(k_fp, [1, SP_BLOCK_S, rank])
    val_desc = nvmma_desc(v_fp, [1, SP_BLOCK_S, sp_value_box(rank_v)])
    rows_desc, head_splits, bgs, chunk_len, chunks, parts = sp_launch(rows, half, heads_per_group, fold_heads,
                                                                      num_slots, num_sms, num_splits, parts_fn)
    _ws_single_pass_kernel[(bgs * head_splits * chunks,)](
        lat_desc, val_desc, rows_desc, positions, positions.stride(0), kv_start, inv_freq, *parts,
        num_heads, 2 * chunks, rank, rank_v, num_slots, num_groups, bgs, chunk_len, head_splits,
        k_fp, v_fp,
        HG=heads_per_group, HP=fold_heads, HALF=half, RV=rank_v, BLOCK_S=SP_BLOCK_S, KST=SP_KEY_STAGES,
        VST=sp_value_stages(rank_v), THREAD_L=SP_THREAD_L, ROWS_PER_TILE=SP_ROWS_PER_TILE, SCORE_PIPE=SP_SCORE_PIPE,
        PF=SP_L2_PREFETCH, PDL=pdl, num_warps=4, maxnreg=SP_MAXNREG, **pdl_launch(pdl),
    )
    return parts
