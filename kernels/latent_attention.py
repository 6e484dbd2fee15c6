"""Decode attention over a low-rank latent KV cache (Palu, arXiv 2407.21118, Sec. 3.2 and 4).

One new token attends to S cached slots whose keys and values are stored as per-group latents.
Three launches, none of which materializes a key or value:

1. Scores (B, H, S) fp32, by one of two kernels: :mod:`kernels.fold_scores` (default when each KV
   head serves one query head) folds the query into the key up-projection and never builds a key;
   :mod:`kernels.rope_qk` (the paper's reconstruction kernel; GQA) rebuilds each block's keys as
   ``latent_k @ k_up^T`` in two dots (one per RoPE half), rotates them in registers and takes
   ``q . k_rot``. Either writes n_rep * 4 bytes per slot and KV head against the r_g * 2 bytes of
   latent it read.
2. :func:`_softmax_v_split_kernel` (flash-decoding): per (batch, group, split of the slots), online
   softmax over the scores of all the group's query heads and ``p @ latent_v``, streaming the
   group's value latents once. Values stay latent: the caller applies their up-projection to the
   weighted sum (or folds it into o_proj).
3. :func:`_merge_splits_kernel` combines the splits' partial (max, sum, accumulator).

Single-pass versions were slower in Triton (kernels/NOTES.md): reconstruction inside the flash-decoding
loop 5-9x (v1), and :mod:`kernels.single_pass` (the fold, softmax and value stream in one loop;
method="single_pass", tested, never chosen by "auto") 2.5-2.8x the default's time on an H200. The
warp-specialized Gluon one (:mod:`kernels.single_pass_ws`, sm_90, method="single_pass",
warp_specialized=True) measured faster than the fold path (200.4 vs 222.5 us at 64K on an H200) and is the
default of "auto" where it applies (SP_AUTO there); quantized latents take its quantized variant
(:mod:`kernels.single_pass_ws_quant`: a dequant warpgroup fills the same consumers' rings; SPQ_AUTO there).
Elsewhere quantized slots are unpacked from int32 words and dequantized in registers by the Triton kernels.
"""
from __future__ import annotations

import dataclasses
import math
import os
import weakref
from typing import Optional

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_wait

from .host_math import cdiv, next_pow2, pdl_launch
from ._autotune import prune_softmax_v_configs, softmax_v_configs
from .rope_qk import load_latent_tile, online_softmax_step, quant_params, rope_qk_tuned, _rope_qk_kernel

LOG2E = 1.4426950408889634
SUPPORTED_BITS = (2, 3, 4, 8)
MIN_SPLIT_LEN = 128  # slots per split: a multiple of the largest autotuned block
MAX_SPLITS = 256

# Decode paths a user can pin by name (PaluAttention.fused_kernel, the scripts' --fused_kernel): keyword
# arguments of latent_decode_attention. "auto" is the dispatcher's choice; "fold" the fold path's score
# kernel (Gluon on sm_90 where it applies) + value kernel; "reconstruct" the paper's reconstruction kernel
# (keys rebuilt per block, RoPE, q.k; any GQA); "single_pass_ws" the Gluon single-pass kernel (sm_90; what
# "auto" runs where it applies: kernels/single_pass_ws.py, SP_AUTO; quantized latents: single_pass_ws_quant.py).
# A path that does not apply raises a ValueError naming what does not fit.
FUSED_KERNELS = {
    "auto": {},
    "fold": {"method": "fold"},
    "reconstruct": {"method": "rope_qk"},
    "single_pass_ws": {"method": "single_pass", "warp_specialized": True},
}


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
def _value_qparams(v_scale, v_scale_ss, v_zero, v_zero_ss, start, hi, num_quantized, v_off, v_rank,
                   HAS_QUANT: tl.constexpr, BITS: tl.constexpr, QUANT_GROUP: tl.constexpr, HAS_ZERO: tl.constexpr,
                   VEC_QUANT: tl.constexpr, RV1: tl.constexpr, RV2: tl.constexpr, BLOCK_S: tl.constexpr,
                   DTYPE: tl.constexpr):
    """quant_params of both value column blocks of slots [start, min(start + BLOCK_S, hi)): loaded by
    the value kernels one block ahead (placeholders 0.0 without quantized word tiles)."""
    if HAS_QUANT and VEC_QUANT:
        slots = start + tl.arange(0, BLOCK_S)
        qs1, qo1 = quant_params(v_scale, v_scale_ss, v_zero, v_zero_ss, slots, slots < hi, num_quantized, v_off,
                                v_rank, RV1, BITS, QUANT_GROUP, HAS_ZERO, DTYPE)
        if RV2 > 0:
            qs2, qo2 = quant_params(v_scale, v_scale_ss, v_zero, v_zero_ss, slots, slots < hi, num_quantized,
                                    v_off + RV1, v_rank - RV1, RV2, BITS, QUANT_GROUP, HAS_ZERO, DTYPE)
        else:
            qs2, qo2 = 0.0, 0.0
    else:
        qs1, qo1, qs2, qo2 = 0.0, 0.0, 0.0, 0.0
    return qs1, qo1, qs2, qo2


@triton.jit
def _softmax_v_block(
    m_i, l_i, acc1, acc2, scores_rows, row_mask,
    v_fp, v_fp_ss, v_codes, v_codes_ss, v_scale, v_scale_ss, v_zero, v_zero_ss,
    start, hi, num_quantized, v_off, v_rank, qs1, qo1, qs2, qo2,
    HAS_QUANT: tl.constexpr, HAS_FP: tl.constexpr, BITS: tl.constexpr, QUANT_GROUP: tl.constexpr,
    HAS_ZERO: tl.constexpr, VEC_QUANT: tl.constexpr, RV1: tl.constexpr, RV2: tl.constexpr, BLOCK_S: tl.constexpr,
    DTYPE: tl.constexpr,
):
    """Slots [start, min(start + BLOCK_S, hi)): update the online softmax and p @ latent_v. qs*/qo*:
    :func:`_value_qparams` of this block, loaded a block ahead."""
    slots = start + tl.arange(0, BLOCK_S)
    slot_mask = slots < hi
    # Scores are already scaled by sm_scale * log2(e), left padding already -inf.
    # .cg: scores are read once, from L2 (they were just written by the score kernel).
    s = tl.load(scores_rows + slots[None, :], mask=row_mask[:, None] & slot_mask[None, :], other=float("-inf"),
                cache_modifier=".cg")
    # Value channels as two power-of-two column blocks (384 = 256 + 128) instead of one padded to 512.
    v1 = load_latent_tile(
        v_fp, v_fp_ss, v_codes, v_codes_ss, v_scale, v_scale_ss, v_zero, v_zero_ss,
        slots, slot_mask, num_quantized, v_off, v_rank,
        HAS_QUANT, HAS_FP, BITS, QUANT_GROUP, HAS_ZERO, VEC_QUANT, RV1, DTYPE, qs1, qo1, HAS_QUANT and VEC_QUANT,
    )  # (BLOCK_S, RV1)
    m_new, alpha, p, l_i = online_softmax_step(m_i, l_i, s)
    p = p.to(DTYPE)
    acc1 = acc1 * alpha[:, None] + tl.dot(p, v1)
    if RV2 > 0:
        v2 = load_latent_tile(
            v_fp, v_fp_ss, v_codes, v_codes_ss, v_scale, v_scale_ss, v_zero, v_zero_ss,
            slots, slot_mask, num_quantized, v_off + RV1, v_rank - RV1,
            HAS_QUANT, HAS_FP, BITS, QUANT_GROUP, HAS_ZERO, VEC_QUANT, RV2, DTYPE, qs2, qo2, HAS_QUANT and VEC_QUANT,
        )  # (BLOCK_S, RV2)
        acc2 = acc2 * alpha[:, None] + tl.dot(p, v2)
    return m_new, l_i, acc1, acc2


@triton.jit
def _softmax_v_item(
    split, g, b, col0, scores_ptr, scores_sb, scores_sh,
    v_fp_ptr, v_fp_sb, v_fp_ss, v_codes_ptr, v_codes_sb, v_codes_ss,
    v_scale_ptr, v_scale_sb, v_scale_ss, v_zero_ptr, v_zero_sb, v_zero_ss,
    v_offsets_ptr, kv_start_ptr, part_m_ptr, part_l_ptr, part_acc_ptr,
    num_heads, num_quantized, num_slots, split_len, num_splits, rv_max,
    HG: tl.constexpr, HG_PAD: tl.constexpr, RV1: tl.constexpr, RV2: tl.constexpr,
    HAS_QUANT: tl.constexpr, HAS_FP: tl.constexpr, BITS: tl.constexpr, QUANT_GROUP: tl.constexpr,
    HAS_ZERO: tl.constexpr, CHAN_ALIGN: tl.constexpr, VEC_QUANT: tl.constexpr, INTERPRET: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    """Partial softmax state (m, l, acc) of split ``split`` of batch row ``b`` (int64) for the HG
    query heads of group ``g``, value channels [col0, col0 + RV1 + RV2) of the group, written to
    part_m/part_l (by the col0 == 0 program) and part_acc."""
    DTYPE = v_fp_ptr.dtype.element_ty
    # Alignment hints let the compiler issue 16-byte (and asynchronous, pipelined) latent loads.
    g_off = tl.multiple_of(tl.load(v_offsets_ptr + g), CHAN_ALIGN)
    v_off = g_off + col0
    # Channels of this program (<= 0 for a column block past a small group's rank: all masked, acc 0).
    v_rank = tl.multiple_of(tl.load(v_offsets_ptr + g + 1) - v_off, CHAN_ALIGN)
    t_idx = tl.arange(0, HG_PAD)
    row_mask = t_idx < HG
    head = g * HG + t_idx
    scores_rows = scores_ptr + b * scores_sb + head.to(tl.int64)[:, None] * scores_sh
    v_fp = v_fp_ptr + b * v_fp_sb
    v_codes = v_codes_ptr + b * v_codes_sb
    v_scale = v_scale_ptr + b * v_scale_sb
    v_zero = v_zero_ptr + b * v_zero_sb

    m_i = tl.full((HG_PAD,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((HG_PAD,), dtype=tl.float32)
    acc1 = tl.zeros((HG_PAD, RV1), dtype=tl.float32)
    acc2 = tl.zeros((HG_PAD, RV2 if RV2 > 0 else 16), dtype=tl.float32)  # a placeholder when RV2 == 0
    lo = split * split_len
    hi = tl.minimum(lo + split_len, num_slots)
    lo = tl.maximum(lo, tl.load(kv_start_ptr + b))  # left padding: skip masked slots entirely
    # Quantization scales and offsets are plain loads (the pipeliner moves only the dots' operands): each
    # block's are loaded one block ahead.
    qs1, qo1, qs2, qo2 = _value_qparams(v_scale, v_scale_ss, v_zero, v_zero_ss, lo, hi, num_quantized, v_off, v_rank,
                                        HAS_QUANT, BITS, QUANT_GROUP, HAS_ZERO, VEC_QUANT, RV1, RV2, BLOCK_S, DTYPE)
    if INTERPRET:  # numpy >= 2.3 rejects the interpreter's run-time range bounds: walk a while loop
        start = lo
        while start < hi:
            nq = _value_qparams(v_scale, v_scale_ss, v_zero, v_zero_ss, start + BLOCK_S, hi, num_quantized, v_off,
                                v_rank, HAS_QUANT, BITS, QUANT_GROUP, HAS_ZERO, VEC_QUANT, RV1, RV2, BLOCK_S, DTYPE)
            m_i, l_i, acc1, acc2 = _softmax_v_block(
                m_i, l_i, acc1, acc2, scores_rows, row_mask,
                v_fp, v_fp_ss, v_codes, v_codes_ss, v_scale, v_scale_ss, v_zero, v_zero_ss,
                start, hi, num_quantized, v_off, v_rank, qs1, qo1, qs2, qo2,
                HAS_QUANT, HAS_FP, BITS, QUANT_GROUP, HAS_ZERO, VEC_QUANT, RV1, RV2, BLOCK_S, DTYPE,
            )
            qs1, qo1, qs2, qo2 = nq
            start += BLOCK_S
    else:  # a `for` loop, which the compiler software-pipelines (num_stages)
        for start in range(lo, hi, BLOCK_S):
            nq = _value_qparams(v_scale, v_scale_ss, v_zero, v_zero_ss, start + BLOCK_S, hi, num_quantized, v_off,
                                v_rank, HAS_QUANT, BITS, QUANT_GROUP, HAS_ZERO, VEC_QUANT, RV1, RV2, BLOCK_S, DTYPE)
            m_i, l_i, acc1, acc2 = _softmax_v_block(
                m_i, l_i, acc1, acc2, scores_rows, row_mask,
                v_fp, v_fp_ss, v_codes, v_codes_ss, v_scale, v_scale_ss, v_zero, v_zero_ss,
                start, hi, num_quantized, v_off, v_rank, qs1, qo1, qs2, qo2,
                HAS_QUANT, HAS_FP, BITS, QUANT_GROUP, HAS_ZERO, VEC_QUANT, RV1, RV2, BLOCK_S, DTYPE,
            )
            qs1, qo1, qs2, qo2 = nq

    # Partial state of (b, head, split); m is in log2 units (scores were scaled by log2(e)).
    row = (b * num_heads + head.to(tl.int64)) * num_splits + split  # (HG_PAD,)
    tl.store(part_m_ptr + row, m_i, mask=row_mask & (col0 == 0))  # every column block has the same m, l
    tl.store(part_l_ptr + row, l_i, mask=row_mask & (col0 == 0))
    v_idx1 = col0 + tl.arange(0, RV1)
    acc_rows = part_acc_ptr + row[:, None] * rv_max
    tl.store(acc_rows + v_idx1[None, :], acc1, mask=row_mask[:, None] & (v_idx1 < rv_max)[None, :])
    if RV2 > 0:
        v_idx2 = col0 + RV1 + tl.arange(0, RV2)
        tl.store(acc_rows + v_idx2[None, :], acc2, mask=row_mask[:, None] & (v_idx2 < rv_max)[None, :])


# The slot counts (and the scores' strides, (H * S, S)) change every decode step. Not specialized, one build serves
# every step; the sm_90 builds are the same instructions either way (kernels/NOTES.md, twenty-second session).
@triton.jit(do_not_specialize=["scores_sb", "scores_sh", "num_quantized", "num_slots", "num_splits"])
def _softmax_v_split_kernel(
    scores_ptr, scores_sb, scores_sh,
    v_fp_ptr, v_fp_sb, v_fp_ss, v_codes_ptr, v_codes_sb, v_codes_ss,
    v_scale_ptr, v_scale_sb, v_scale_ss, v_zero_ptr, v_zero_sb, v_zero_ss,
    v_offsets_ptr, kv_start_ptr, part_m_ptr, part_l_ptr, part_acc_ptr,
    num_heads, num_quantized, num_slots, split_len, num_splits, rv_max, col_programs, tune_bucket,
    HG: tl.constexpr, HG_PAD: tl.constexpr, RV1: tl.constexpr, RV2: tl.constexpr,
    HAS_QUANT: tl.constexpr, HAS_FP: tl.constexpr, BITS: tl.constexpr, QUANT_GROUP: tl.constexpr,
    HAS_ZERO: tl.constexpr, CHAN_ALIGN: tl.constexpr, VEC_QUANT: tl.constexpr, INTERPRET: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    """Grid (num_splits, G * col_programs, B): partial softmax state of one split for the HG query heads
    of a group, over one block of RV1 + RV2 of the group's value channels (col_programs blocks)."""
    col = tl.program_id(1) % col_programs
    _softmax_v_item(
        tl.program_id(0), tl.program_id(1) // col_programs, tl.program_id(2).to(tl.int64), col * (RV1 + RV2),
        scores_ptr, scores_sb, scores_sh,
        v_fp_ptr, v_fp_sb, v_fp_ss, v_codes_ptr, v_codes_sb, v_codes_ss,
        v_scale_ptr, v_scale_sb, v_scale_ss, v_zero_ptr, v_zero_sb, v_zero_ss,
        v_offsets_ptr, kv_start_ptr, part_m_ptr, part_l_ptr, part_acc_ptr,
        num_heads, num_quantized, num_slots, split_len, num_splits, rv_max,
        HG, HG_PAD, RV1, RV2, HAS_QUANT, HAS_FP, BITS, QUANT_GROUP, HAS_ZERO, CHAN_ALIGN, VEC_QUANT, INTERPRET,
        BLOCK_S,
    )


_softmax_v_split_tuned = triton.autotune(
    configs=softmax_v_configs(),
    key=["HG", "RV1", "RV2", "HAS_QUANT", "HAS_FP", "BITS", "col_programs", "tune_bucket"],
    prune_configs_by={"early_config_prune": prune_softmax_v_configs},
    cache_results=True,  # best configs persist in Triton's cache dir: later processes skip tuning
)(_softmax_v_split_kernel)


@triton.jit
def _split_weights(part_m_ptr, part_l_ptr, row, num_splits, SPLITS_PAD: tl.constexpr):
    """(splits (SPLITS_PAD,), their mask, 2^(m_i - M), l_i) of row ``row`` (b * H + h) of the partials."""
    split = tl.arange(0, SPLITS_PAD)
    split_mask = split < num_splits
    m = tl.load(part_m_ptr + row * num_splits + split, mask=split_mask, other=float("-inf"))
    l = tl.load(part_l_ptr + row * num_splits + split, mask=split_mask, other=0.0)
    m_max = tl.max(m, axis=0)
    weight = tl.exp2(m - tl.where(m_max == float("-inf"), 0.0, m_max))  # empty splits weigh 0
    return split, split_mask, weight, l


@triton.jit(do_not_specialize=["num_splits"])  # changes as the cache grows: one build for every step
def _merge_splits_kernel(
    part_m_ptr, part_l_ptr, part_acc_ptr, out_ptr, num_splits, rv_max,
    SPLITS_PAD: tl.constexpr, BLOCK_RV: tl.constexpr, PDL: tl.constexpr = False,
):
    """Grid (B*H, cdiv(rv_max, BLOCK_RV)): z = sum_i 2^(m_i - M) acc_i / sum_i 2^(m_i - M) l_i. PDL: launched as a
    dependent of the kernel that writes the partials: waits for it before anything else."""
    if PDL:
        gdc_wait()
    row = tl.program_id(0).to(tl.int64)
    col = tl.program_id(1) * BLOCK_RV + tl.arange(0, BLOCK_RV)
    split, split_mask, weight, l = _split_weights(part_m_ptr, part_l_ptr, row, num_splits, SPLITS_PAD)
    acc_ptrs = part_acc_ptr + (row * num_splits + split)[:, None] * rv_max + col[None, :]
    acc = tl.load(acc_ptrs, mask=split_mask[:, None] & (col < rv_max)[None, :], other=0.0)
    out = tl.sum(acc * weight[:, None], axis=0) / tl.sum(l * weight, axis=0)
    tl.store(out_ptr + row * rv_max + col, out, mask=col < rv_max)


@triton.jit(do_not_specialize=["num_splits"])
def _merge_up_kernel(
    part_m_ptr, part_l_ptr, part_acc_ptr, up_ptr, up_sg, up_sr, out_ptr, num_splits, rv_max, num_heads,
    HEAD_DIM: tl.constexpr, GS: tl.constexpr, N_REP: tl.constexpr, SPLITS_PAD: tl.constexpr,
    RV_CEIL: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, PDL: tl.constexpr = False,
):
    """Grid (B*H, cdiv(D, BLOCK_D)): values out[b, h, d] = sum_r U_h[d, r] z[b, h, r], z the merge of the splits
    (as :func:`_merge_splits_kernel`, kept in fp32) and U_h the up-projection rows of head h's KV head
    (up: (G, GS * D, rv_max)). Replaces the merge's z and the module's per-head einsum (a bmm and its copies).
    PDL: as :func:`_merge_splits_kernel`."""
    if PDL:
        gdc_wait()
    row = tl.program_id(0).to(tl.int64)
    kv_head = (tl.program_id(0) % num_heads) // N_REP
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_mask = d < HEAD_DIM
    split, split_mask, weight, l = _split_weights(part_m_ptr, part_l_ptr, row, num_splits, SPLITS_PAD)
    weight = weight / tl.sum(l * weight, axis=0)
    up_rows = (up_ptr + (kv_head // GS).to(tl.int64) * up_sg
               + ((kv_head % GS) * HEAD_DIM + d).to(tl.int64)[:, None] * up_sr)
    acc_rows = part_acc_ptr + (row * num_splits + split)[:, None] * rv_max
    out = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for r0 in tl.static_range(0, RV_CEIL, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        r_mask = r < rv_max
        acc = tl.load(acc_rows + r[None, :], mask=split_mask[:, None] & r_mask[None, :], other=0.0)
        z = tl.sum(acc * weight[:, None], axis=0)  # (BLOCK_R,)
        u = tl.load(up_rows + r[None, :], mask=d_mask[:, None] & r_mask[None, :], other=0.0).to(tl.float32)
        out += tl.sum(u * z[None, :], axis=1)
    tl.store(out_ptr + row * HEAD_DIM + d, out.to(out_ptr.dtype.element_ty), mask=d_mask)


WAVE_EFFICIENCY = 0.95  # the fewest splits whose last wave of value programs is at least this full


def choose_num_splits(num_slots: int, units: int, num_sms: int, programs_per_sm: int = 2) -> int:
    """Splits of the slot axis for ``units`` = B * G * column blocks value programs per split.

    The fewest splits whose programs fill whole waves of ``num_sms * programs_per_sm`` resident
    programs to WAVE_EFFICIENCY (else the best filling), without splits shorter than MIN_SPLIT_LEN
    slots. Counting waves matters once each program is long: at B = 8 x 64K with 4-bit latents, 5
    splits (320 programs, 1.2 waves of 264) took 3321 us in the value kernel and 960 programs in
    128-channel blocks (1.8 waves of 528) 2588 us (H200, value_cols_sweep).

    Runs on every decode call: it walks the ranges of split counts that need the same number of
    waves (the filling grows within a range), not every count up to MAX_SPLITS."""
    max_splits = max(1, min(cdiv(num_slots, MIN_SPLIT_LEN), MAX_SPLITS))
    cap = num_sms * programs_per_sm
    fill = lambda n: units * n / (cap * cdiv(units * n, cap))  # noqa: E731
    best, best_fill, n = 1, -1.0, 1
    while n <= max_splits:
        waves = cdiv(units * n, cap)
        last = min(waves * cap // units, max_splits)  # the most splits that still need `waves` waves
        m = max(n, math.ceil(WAVE_EFFICIENCY * waves * cap / units) - 1)  # within one of the first that fills
        while m <= last and fill(m) < WAVE_EFFICIENCY:
            m += 1
        if m <= last:
            return m
        if fill(last) > best_fill:
            best, best_fill = last, fill(last)
        n = last + 1
    return best


def _split_len(num_slots: int, num_splits: int, interpret: bool) -> tuple[int, int]:
    """(split_len, num_splits): splits of a multiple of MIN_SPLIT_LEN slots (any length in the
    interpreter, so that tests get several splits of small caches)."""
    split_len = cdiv(num_slots, num_splits)
    if not interpret:
        split_len = cdiv(split_len, MIN_SPLIT_LEN) * MIN_SPLIT_LEN
    return split_len, cdiv(num_slots, split_len)


RECON_UNIT = 128  # slots per reconstruction program are a multiple of every autotuned BLOCK_S
MAX_RECON_SLOTS = 4096


def choose_slots_per_program(num_slots: int, programs_per_range: int, num_sms: int, block_s: Optional[int]) -> int:
    """Slots each reconstruction program covers: about four programs per SM in all (latency
    hiding), each as long as possible so its up-projection load is amortized over many blocks,
    capped at MAX_RECON_SLOTS. ``programs_per_range`` = GS * B * G programs share a slot range.
    With a fixed ``block_s`` (interpreter, tests) two blocks per program, so the loop is exercised."""
    if block_s is not None:
        return 2 * block_s
    along = max(1, (4 * num_sms) // max(1, programs_per_range))
    per = cdiv(cdiv(num_slots, along), RECON_UNIT) * RECON_UNIT
    return max(RECON_UNIT, min(per, MAX_RECON_SLOTS))


_HOST_OFFSETS: dict[int, tuple[weakref.ref, int, list[int]]] = {}


def _host_offsets(offsets: torch.Tensor) -> list[int]:
    """Host copy of a (G+1,) offsets tensor, cached per tensor object and version counter.

    Offsets are fixed per layer, and ``.tolist()`` on a CUDA tensor synchronizes the device every
    decode step (and cannot run inside CUDA-graph capture). The entry is keyed by the object itself
    (a weak reference, so a new tensor at a recycled address never hits) and its version counter
    (so in-place writes are seen).
    """
    hit = _HOST_OFFSETS.get(id(offsets))
    if hit is not None and hit[0]() is offsets and hit[1] == offsets._version:
        return hit[2]
    if len(_HOST_OFFSETS) > 4096:
        _HOST_OFFSETS.clear()
    values = offsets.tolist()
    _HOST_OFFSETS[id(offsets)] = (weakref.ref(offsets), offsets._version, values)
    return values


def _group_ranks(offsets: list[int]) -> list[int]:
    """Latent channels of each group from the host copy of its (G+1,) cumulative offsets."""
    return [b - a for a, b in zip(offsets, offsets[1:])]


def _channel_alignment(offsets: list[int]) -> int:
    """8 when every group's latent channels start (and so end) on a multiple of 8, else 1."""
    return 8 if all(o % 8 == 0 for o in offsets) else 1


def _words_aligned(view: LatentView, offsets: list[int], tile_widths: list[int]) -> bool:
    """Whether latent tiles can be dequantized from whole words and whole quant groups: codes per word
    a power of two, every group's channels and every column tile starting on a quant-group boundary."""
    if view.num_quantized == 0 or view.bits == 3:
        return False
    qg = view.quant_group_size
    vpw = 32 // view.bits
    return (
        qg & (qg - 1) == 0 and qg % vpw == 0
        and all(o % qg == 0 for o in offsets) and all(w % qg == 0 for w in tile_widths)
    )


def _split_value_columns(rv_max: int) -> tuple[int, int]:
    """Value columns as one or two power-of-two blocks (>= 16 each) covering rv_max with little padding."""
    full = max(16, next_pow2(rv_max))
    low = full // 2
    if low >= 16 and rv_max > low and full - rv_max >= full // 4:  # e.g. 384 -> 256 + 128, 160 -> 128 + 32
        return low, max(16, next_pow2(rv_max - low))
    return full, 0


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
        words = cdiv(rank, 32 // view.bits)
        assert codes.dtype == torch.int32 and codes.dim() == 3 and codes.shape[0] == batch, (
            f"{name}.codes must be (B, S_q, W) int32, got {tuple(codes.shape)} {codes.dtype}"
        )
        assert codes.shape[2] >= words and codes.stride(2) == 1, f"{name}.codes needs {words} contiguous words"
        assert scale is not None and scale.shape[:2] == codes.shape[:2], f"{name}.scale must be (B, S_q, n_groups)"
        assert scale.shape[2] >= cdiv(rank, view.quant_group_size) and scale.stride(2) == 1
        assert scale.dtype == dtype, f"{name}.scale dtype {scale.dtype} != q dtype {dtype}"
        if view.zero is not None:
            assert view.zero.shape == scale.shape and view.zero.dtype == dtype and view.zero.stride(2) == 1


def _pad(n: int) -> int:
    """Power-of-two tile extent, at least 16 (tl.dot needs >= 16)."""
    return max(16, next_pow2(n))


def _quant_consts(view: LatentView) -> dict:
    """Storage constexprs of a latent view (keys and values share them: checked by the launcher)."""
    n_q = view.num_quantized
    return dict(HAS_QUANT=n_q > 0, HAS_FP=view.num_fp > 0, BITS=view.bits if n_q else 16,
                QUANT_GROUP=view.quant_group_size)


# value_cols="auto" keeps all of a group's value channels in one split-kernel program. Blocks of 128
# channels (value_cols=128: 122 instead of ~210 registers, 4 instead of 2 programs per SM, scores and
# softmax redone per block) measured slower once the splits fill whole waves (H200, 32x128 heads,
# rank_v 384 per group, value_cols_sweep): 4-bit 630 vs 592 us at 64K, 4828 vs 4709 us at B=8 x 64K,
# 54.6 vs 51.5 us at 4K; fp16 266.7 vs 264.5 us at 64K. They won only against a badly filled last wave
# (B=8, 4-bit, 5 splits: 5056 vs 5844 us), which choose_num_splits now avoids. An option for other shapes.
VALUE_COLS_BLOCK = 128


def _choose_value_splits(num_slots: int, batch_groups: int, rv_max: int, value_cols: Optional[int],
                         num_sms: int) -> int:
    """choose_num_splits for the split value kernel: its programs per split (column blocks included)
    and per SM, as sm_90 builds of the benchmark shape use registers (4 warps): 384 channels in one
    program 209-247 registers (2 per SM), 128-channel blocks 122 (4)."""
    col_programs = 1 if value_cols is None else cdiv(rv_max, value_cols)
    per_sm = 2 if value_cols is None or value_cols > VALUE_COLS_BLOCK else 4
    return choose_num_splits(num_slots, batch_groups * col_programs, num_sms, per_sm)


def _value_consts(v_latent: LatentView, v_off_host: list[int], heads_per_group: int, rv_max: int,
                  interpret: bool, value_cols: Optional[int] = None) -> dict:
    """Constexprs of the split value kernel; ``value_cols`` (a power of two >= 16) channels per program
    (checked by latent_decode_attention), else all of rv_max."""
    if value_cols is not None:
        rv1, rv2 = min(value_cols, _pad(rv_max)), 0
    else:
        rv1, rv2 = _split_value_columns(rv_max)
    return dict(HG=heads_per_group, HG_PAD=_pad(heads_per_group), RV1=rv1, RV2=rv2,
                HAS_ZERO=v_latent.zero is not None, CHAN_ALIGN=_channel_alignment(v_off_host),
                VEC_QUANT=_words_aligned(v_latent, v_off_host, [rv1, rv2] if rv2 else [rv1]),
                INTERPRET=interpret, **_quant_consts(v_latent))


def _partials(batch: int, num_heads: int, num_splits: int, rv_max: int, device: torch.device) -> tuple:
    """Per-split softmax state (m, l, acc) the value kernels write and the merge reads."""
    part_m = torch.empty(batch, num_heads, num_splits, dtype=torch.float32, device=device)
    part_acc = torch.empty(batch, num_heads, num_splits, rv_max, dtype=torch.float32, device=device)
    return part_m, torch.empty_like(part_m), part_acc


def _fixed_config(interpret: bool, block_s: Optional[int]) -> Optional[dict]:
    """The launch config that replaces autotuning (4 warps, ``block_s`` slots per block, 16 in the
    interpreter), or None when the kernel is autotuned (on a GPU without a given block_s)."""
    if not interpret and block_s is None:
        return None
    return dict(BLOCK_S=block_s or 16, num_warps=4, num_stages=1 if interpret else 2)


def _split_values(q, scores, v_latent, v_offsets, kv_start, parts, split_len, consts, fixed) -> None:
    """Online softmax and p @ latent_v per (split, group, batch): the autotuned split kernel, or
    the ``fixed`` config (a dict with BLOCK_S, num_warps, num_stages) when given."""
    batch, num_heads, num_slots = scores.shape
    num_splits, rv_max = parts[2].shape[2], parts[2].shape[3]
    col_programs = cdiv(rv_max, consts["RV1"] + consts["RV2"])
    args = [
        scores, scores.stride(0), scores.stride(1), *_view_args(v_latent, q), v_offsets, kv_start, *parts,
        num_heads, v_latent.num_quantized, num_slots, split_len, num_splits, rv_max, col_programs,
        int(split_len >= 1024),
    ]
    grid = (num_splits, (v_offsets.shape[0] - 1) * col_programs, batch)
    if fixed is not None:
        _softmax_v_split_kernel[grid](*args, **consts, **fixed)
    else:
        _softmax_v_split_tuned[grid](*args, **consts)


@dataclasses.dataclass(frozen=True)
class DecodeEnds:
    """The two ends of a decode call that would otherwise be separate launches in the module, resolved by
    :func:`latent_decode_attention` from its q_cos / q_sin / v_up arguments.

    q_cos, q_sin: (B or 1, D) of q's dtype, the new token's RoPE cos / sin; q is then given before RoPE and the
        fold rows rotate it (the reconstruction path rotates it in torch first). rope_sb: their batch stride
        (0 to broadcast one row).
    v_up: (G, gs * D, rv_max) value up-projection; the merge then applies it per head and the call returns values
        (B, H, D) instead of z (B, H, rv_max). head_dim, gs, n_rep map a query head to its rows.
    """

    q_cos: Optional[torch.Tensor] = None
    q_sin: Optional[torch.Tensor] = None
    rope_sb: int = 0
    v_up: Optional[torch.Tensor] = None
    head_dim: int = 0
    gs: int = 1
    n_rep: int = 1


NO_ENDS = DecodeEnds()
MERGE_UP_BLOCK_D = 32  # head_dim rows per merge-up program: 4 programs per head at D = 128 (128 at B = 1 x 32 heads)
MERGE_UP_BLOCK_R = 512  # one iteration over the value ranks: all loads in flight at once (64: 6.1 vs 4.4 us, H100)
MERGE_UP_WARPS = 4
MERGE_BLOCK_RV = 64  # z columns per merge program (no up-projection)
MERGE_WARPS = 4
# Programmatic dependent launch (sm_90+) along the fp16 Gluon path's three launches: fold rows -> single pass ->
# merge. The single pass is scheduled while the fold rows still run and reads its first key tiles before it waits
# for them (griddepcontrol.wait, only in its producer warp: the rows are the one input the fold rows write, and every
# write of the single pass comes after that wait); the merge waits at its start, its launch hidden behind the single
# pass's tail. Bit-equal to the default launches on an H100 (twenty-eighth session), but off: the whole model at 32K
# gained 0.3-1.3% per token over two calls, the lone decode call at 16K lost 2 us of 58
# (benchmarks/results/kernel/h100/session28/).
DECODE_PDL = False


def decode_pdl(device: torch.device) -> bool:
    """Whether this decode call's launches use programmatic dependent launch (DECODE_PDL on a CUDA device of
    compute capability 9.0 or more; never in the interpreter)."""
    return (DECODE_PDL and device.type == "cuda" and not _interpreting()
            and torch.cuda.get_device_capability(device)[0] >= 9)


def rotate_query(q: torch.Tensor, ends: DecodeEnds) -> torch.Tensor:
    """q (B, H, D) rotated by ends' cos / sin as transformers rotates it (q * cos + rotate_half(q) * sin, in q's
    dtype); q itself without them."""
    if ends.q_cos is None:
        return q
    from .reference import rotate_half_ref

    return q * ends.q_cos[:, None] + rotate_half_ref(q) * ends.q_sin[:, None]


def _merge(part_m, part_l, part_acc, out_dtype: torch.dtype = torch.float32, ends: DecodeEnds = NO_ENDS,
           pdl: bool = False) -> torch.Tensor:
    """z (B, H, rv_max) in out_dtype from the splits' partial states (fp32 math, one rounding); with ends.v_up the
    values (B, H, D) of :func:`_merge_up_kernel` instead. pdl: launched as a programmatic dependent of the launch
    before it, which wrote the partials (:func:`decode_pdl`)."""
    batch, num_heads, num_splits, rv_max = part_acc.shape
    if ends.v_up is not None:
        up, d = ends.v_up, ends.head_dim
        out = torch.empty(batch, num_heads, d, dtype=out_dtype, device=part_acc.device)
        block_d, block_r = min(MERGE_UP_BLOCK_D, _pad(d)), min(MERGE_UP_BLOCK_R, _pad(rv_max))
        _merge_up_kernel[(batch * num_heads, cdiv(d, block_d))](
            part_m, part_l, part_acc, up, up.stride(0), up.stride(1), out, num_splits, rv_max, num_heads,
            HEAD_DIM=d, GS=ends.gs, N_REP=ends.n_rep, SPLITS_PAD=next_pow2(num_splits),
            RV_CEIL=cdiv(rv_max, block_r) * block_r, BLOCK_R=block_r, BLOCK_D=block_d, PDL=pdl,
            num_warps=MERGE_UP_WARPS, **pdl_launch(pdl),
        )
        return out
    out = torch.empty(batch, num_heads, rv_max, dtype=out_dtype, device=part_acc.device)
    block_rv = min(MERGE_BLOCK_RV, _pad(rv_max))
    _merge_splits_kernel[(batch * num_heads, cdiv(rv_max, block_rv))](
        part_m, part_l, part_acc, out, num_splits, rv_max,
        SPLITS_PAD=next_pow2(num_splits), BLOCK_RV=block_rv, PDL=pdl, num_warps=MERGE_WARPS, **pdl_launch(pdl),
    )
    return out


def _decode_ends(q, q_cos, q_sin, v_up, num_groups: int, gs: int, rv_max: int) -> DecodeEnds:
    """Check latent_decode_attention's q_cos / q_sin / v_up and resolve them into a DecodeEnds."""
    batch, num_heads, head_dim = q.shape
    if (q_cos is None) != (q_sin is None):
        raise ValueError("q_cos and q_sin go together: pass both (q before RoPE) or neither (q rotated)")
    rope_sb = 0
    if q_cos is not None:
        for name, t in (("q_cos", q_cos), ("q_sin", q_sin)):
            if not (t.dim() == 2 and t.shape[0] in (1, batch) and t.shape[1] == head_dim and t.dtype == q.dtype
                    and t.stride(1) == 1 and t.device == q.device):
                raise ValueError(f"{name} must be (B or 1, D) = ({batch}, {head_dim}) of q's dtype {q.dtype} with a "
                                 f"contiguous last dim, on q's device; got {tuple(t.shape)} {t.dtype}")
        if q_cos.stride(0) != q_sin.stride(0) or q_cos.shape[0] != q_sin.shape[0]:
            raise ValueError("q_cos and q_sin must have the same shape and strides")
        rope_sb = q_cos.stride(0) if q_cos.shape[0] == batch and batch > 1 else 0
    if v_up is not None:
        want = (num_groups, gs * head_dim, rv_max)
        if tuple(v_up.shape) != want or v_up.dtype != q.dtype or v_up.stride(2) != 1 or v_up.device != q.device:
            raise ValueError(f"v_up must be (G, gs*D, rv_max) = {want} of q's dtype with a contiguous last dim, got "
                             f"{tuple(v_up.shape)} {v_up.dtype}")
    if q_cos is None and v_up is None:
        return NO_ENDS
    return DecodeEnds(q_cos, q_sin, rope_sb, v_up, head_dim, gs, num_heads // (num_groups * gs))


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
    block_s: Optional[int] = None,
    method: str = "auto",
    fold_heads: Optional[int] = None,
    value_cols: "int | str" = "auto",
    warp_specialized: Optional[bool] = None,
    out_dtype: torch.dtype = torch.float32,
    q_cos: Optional[torch.Tensor] = None,
    q_sin: Optional[torch.Tensor] = None,
    v_up: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Decode attention of one new token over latent keys/values; returns z (B, H, rv_max) in out_dtype, or with
    v_up the values (B, H, D).

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
      block_s    optional fixed slots per block (skips autotuning; tests compile fewer variants).
      method     "fold" (queries folded into k_up, :mod:`kernels.fold_scores`, or on sm_90 with plain
                 latents :mod:`kernels.fold_scores_ws`: see warp_specialized; n_rep == 1), "single_pass"
                 (the fold, softmax and value stream in one loop, :mod:`kernels.single_pass`; n_rep == 1;
                 measured 2.5-2.8x slower than "fold", never chosen by "auto"), "rope_qk"
                 (keys reconstructed, :mod:`kernels.rope_qk`; any n_rep) or "auto" (fold where it
                 applies: n_rep == 1 and one head's folded matrices fit in shared memory).
      fold_heads fold and single_pass only (a ValueError elsewhere): query heads per score program (a
                 divisor of gs * n_rep); default from :func:`choose_fold_heads` (the most heads whose
                 program fits twice on an SM), or for the Gluon score kernel from
                 :func:`kernels.fold_scores_ws.ws_fold_heads`.
      value_cols value channels per value-kernel program: a power of two >= 16, "all" (one program
                 per group and split) or "auto" (all: measured fastest, see VALUE_COLS_BLOCK).
      warp_specialized  fold and single_pass only. Fold: scores from the warp-specialized Gluon kernel
                 (:mod:`kernels.fold_scores_ws`; sm_90, fp16/bf16 plain latents, equal key ranks, no key bias);
                 True forces it (a ValueError naming what does not fit), False keeps the Triton kernel, None
                 (auto) uses it where it applies (measured faster at every shape: WS_AUTO there). single_pass:
                 True runs the Gluon single-pass kernel (:mod:`kernels.single_pass_ws`; also equal value ranks, a
                 multiple of 64; quantized slots through :mod:`kernels.single_pass_ws_quant`; a ValueError naming
                 what does not fit), False or None the Triton one (None: the Gluon one where it applies, as for
                 "auto", while SP_AUTO / SPQ_AUTO is set).
      out_dtype  dtype of z (the merge writes it directly; fp32 by default).
      q_cos, q_sin  optional (B or 1, D) cos / sin of the new token's position (transformers' rotary output at
                 that position), q's dtype, both or neither: q is then given *before* RoPE, and the fold rows rotate
                 it as transformers does (its roundings: exact in the interpreter, fp16-level compiled), saving the
                 module RoPE's launches on q.
      v_up       optional (G, gs*D, rv_max) value up-projection (zero past each group's rank): the merge applies it
                 per head and the call returns the values (B, H, D) in out_dtype (z kept in fp32 in between).

    Query head h reads KV head h // (H // H_kv) of group (h // (H // H_kv)) // gs. Output column
    c >= rv_g of a head in group g is 0. D must be even and <= 256; S >= 1.
    Runs on CPU tensors only under TRITON_INTERPRET=1 (set before `kernels` is imported), with a
    fixed small config instead of autotuning.
    """
    assert q.dim() == 3 and q.stride(2) == 1, f"q must be (B, H, D) with contiguous last dim, got {tuple(q.shape)}"
    batch, num_heads, head_dim = q.shape
    dtype, device = q.dtype, q.device
    assert dtype in (torch.float16, torch.bfloat16, torch.float32), f"unsupported q dtype {dtype}"
    assert head_dim % 2 == 0 and 2 <= head_dim <= 256, f"head_dim must be even and <= 256, got {head_dim}"
    assert k_up.dim() == 3 and k_up.dtype == dtype and k_up.stride(2) == 1, (
        "k_up must be (G, gs*D, rk_max) of q's dtype with contiguous last dim"
    )
    num_groups, gs = k_up.shape[0], head_group_size
    assert k_up.shape[1] == gs * head_dim, f"k_up dim 1 must be gs*D = {gs * head_dim}, got {k_up.shape[1]}"
    num_kv_heads = num_groups * gs
    assert num_heads % num_kv_heads == 0, f"H={num_heads} is not a multiple of H_kv={num_kv_heads}"
    n_rep = num_heads // num_kv_heads
    assert k_offsets.shape == (num_groups + 1,) and v_offsets.shape == (num_groups + 1,), "offsets must be (G+1,)"
    assert k_offsets.dtype == torch.int32 and v_offsets.dtype == torch.int32, "offsets must be int32"
    k_off_host, v_off_host = _host_offsets(k_offsets), _host_offsets(v_offsets)
    k_ranks, v_ranks = _group_ranks(k_off_host), _group_ranks(v_off_host)
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
    assert kv_start.shape == (batch,) and kv_start.dtype == torch.int32 and kv_start.is_contiguous(), (
        "kv_start must be a contiguous (B,) int32 tensor (the kernels read kv_start[b] at offset b)")
    assert inv_freq.shape == (head_dim // 2,) and inv_freq.dtype == torch.float32, "inv_freq must be (D/2,) fp32"
    if k_bias is not None:
        assert k_bias.shape == (num_kv_heads * head_dim,) and k_bias.is_contiguous(), "k_bias must be (H_kv*D,)"
    for t in (k_up, k_offsets, v_offsets, positions, kv_start, inv_freq):
        assert t.device == device, "all tensors must be on q's device"
    ends = _decode_ends(q, q_cos, q_sin, v_up, num_groups, gs, rv_max)

    interpret = _interpreting()
    assert interpret == (device.type == "cpu"), (
        "CPU tensors need TRITON_INTERPRET=1 set before `kernels` is imported; CUDA tensors need it unset"
    )
    num_sms = 4 if interpret else torch.cuda.get_device_properties(device).multi_processor_count
    if method not in ("auto", "fold", "single_pass", "rope_qk"):
        raise ValueError(f"method must be 'auto', 'fold', 'single_pass' or 'rope_qk', got {method!r}")
    if value_cols in ("auto", "all"):  # auto: all (VALUE_COLS_BLOCK's comment)
        value_cols = None
    elif not (isinstance(value_cols, int) and value_cols >= 16 and value_cols & (value_cols - 1) == 0):
        raise ValueError(f"value_cols must be 'auto', 'all' or a power of two >= 16, got {value_cols!r}")
    elt = q.element_size()
    fold_fits = fold_shared_bytes(1, _pad(head_dim // 2), _pad(max(k_ranks)), elt) <= FOLD_SMEM_BUDGET
    # auto: fold where it measured faster (H200, 32x128 heads, gs 4, 2 heads per program: 31.9 vs 39.1 us
    # at 4K, 277 vs 363 us at 64K, 1158 vs 1403 us at 256K, 2305 vs 2824 us at B=8 x 64K, 4-bit 652 vs 814 us).
    # With GQA its dots grow n_rep-fold (each query head folds its own matrix): reconstruction there.
    fold_auto = n_rep == 1 and fold_fits
    uses_fold = method == "fold" or (method == "auto" and fold_auto)
    if warp_specialized and not (uses_fold or method == "single_pass"):
        raise ValueError(f"warp_specialized applies to the fold and single-pass paths only (method={method!r}, "
                         f"n_rep={n_rep})")
    if fold_heads is not None and not (uses_fold or method == "single_pass"):
        raise ValueError(f"fold_heads applies to the fold and single-pass paths only (method={method!r}, "
                         f"n_rep={n_rep}); leave it unset for the reconstruction kernel")
    if method == "single_pass" and n_rep != 1:
        raise ValueError(f"method='single_pass' folds one query head per KV head (n_rep == 1), got n_rep={n_rep}; "
                         "use method='rope_qk'")
    # The Gluon single-pass kernel (sm_90): method="single_pass" with warp_specialized=True, and where it applies
    # the default of "single_pass" and "auto" while SP_AUTO is set (single_pass_ws.py), unless the call asks for
    # what only the fold path has (value_cols).
    # Quantized slots: the quantized Gluon kernel (single_pass_ws_quant.py; SPQ_AUTO there), with any
    # full-precision window through the fp16 one.
    single_ws = method == "single_pass" or (method == "auto" and fold_auto and value_cols is None)
    if single_ws and warp_specialized is not False and not interpret:
        from . import single_pass_ws as sp
        from . import single_pass_ws_quant as spq

        if num_quantized:
            why = spq.single_pass_ws_quant_unsupported(q, k_latent, v_latent, k_ranks, v_ranks, n_rep,
                                                       k_bias is not None, block_s)
            auto = spq.SPQ_AUTO
        else:
            why = sp.single_pass_ws_unsupported(q, k_latent, v_latent, k_ranks, v_ranks, n_rep, k_bias is not None,
                                                block_s)
            auto = sp.SP_AUTO
        if warp_specialized and why and method == "single_pass":
            raise ValueError(f"warp_specialized=True: the Gluon single-pass kernel does not apply: {why}")
        if not why and (auto or (method == "single_pass" and warp_specialized)):
            return _single_pass_decode_ws(q, k_latent, v_latent, k_up, k_offsets, positions, kv_start, inv_freq,
                                          rope_scale, sm_scale, gs, k_ranks[0], v_ranks[0], num_sms, num_splits,
                                          fold_heads, out_dtype, ends=ends)
    elif method == "single_pass" and warp_specialized:
        raise ValueError("warp_specialized=True needs an sm_90 GPU; the interpreter does not run Gluon kernels")
    if method == "single_pass":
        return _single_pass_decode(
            q, k_latent, v_latent, k_up, k_offsets, v_offsets, positions, kv_start, inv_freq, rope_scale, sm_scale,
            gs, k_bias, k_off_host, v_off_host, num_sms, interpret, block_s, num_splits, fold_heads, out_dtype,
            ends=ends,
        )
    if uses_fold:
        return _fold_decode(
            q, k_latent, v_latent, k_up, k_offsets, v_offsets, positions, kv_start, inv_freq, rope_scale, sm_scale,
            gs, n_rep, k_bias, k_off_host, v_off_host, num_sms, interpret, block_s, num_splits,
            fold_heads, value_cols, warp_specialized, out_dtype, ends=ends,
        )
    if num_splits is None:
        num_splits = _choose_value_splits(num_slots, batch * num_groups, rv_max, value_cols, num_sms)
    split_len, num_splits = _split_len(num_slots, num_splits, interpret)

    quant = _quant_consts(k_latent)
    fixed = _fixed_config(interpret, block_s)

    slots_per_program = choose_slots_per_program(num_slots, gs * batch * num_groups, num_sms,
                                                 None if fixed is None else fixed["BLOCK_S"])
    q = rotate_query(q, ends)  # the reconstruction kernel takes the rotated query
    # 1. Scores (B, H, S) fp32 in log2 units: sm_scale * log2(e) * q . RoPE(k_up @ latent_k).
    scores = torch.empty(batch, num_heads, num_slots, dtype=torch.float32, device=device)
    rope_args = [
        q, q.stride(0), q.stride(1), *_view_args(k_latent, q),
        k_up, k_up.stride(0), k_up.stride(1), k_offsets, k_bias if k_bias is not None else q,
        positions, positions.stride(0), kv_start, inv_freq,
        scores, scores.stride(0), scores.stride(1),
        float(rope_scale), float(sm_scale) * LOG2E, num_quantized, num_slots, num_groups,
        slots_per_program, int(slots_per_program >= 1024),  # the second is the autotune bucket
    ]
    rope_consts = dict(
        HEAD_DIM=head_dim, HALF_PAD=_pad(head_dim // 2), GS=gs, N_REP=n_rep, REP_PAD=_pad(n_rep),
        RK_PAD=_pad(max(k_ranks)), HAS_ZERO=k_latent.zero is not None, HAS_BIAS=k_bias is not None,
        CHAN_ALIGN=_channel_alignment(k_off_host + [k_up.shape[2]]),
        VEC_QUANT=_words_aligned(k_latent, k_off_host, [_pad(max(k_ranks))]), INTERPRET=interpret, **quant,
    )
    rope_grid = (gs, cdiv(num_slots, slots_per_program), batch * num_groups)
    if fixed is not None:
        _rope_qk_kernel[rope_grid](*rope_args, **rope_consts, **fixed)
    else:
        rope_qk_tuned[rope_grid](*rope_args, **rope_consts)

    # 2. Online softmax and p @ latent_v per (split, group, batch); 3. merge the splits.
    parts = _partials(batch, num_heads, num_splits, rv_max, device)
    consts = _value_consts(v_latent, v_off_host, gs * n_rep, rv_max, interpret, value_cols)
    _split_values(q, scores, v_latent, v_offsets, kv_start, parts, split_len, consts,
                  fixed)
    return _merge(*parts, out_dtype, ends)


# ------------------------------------------------------------------------------------------------
# Fold path: folded-query score kernel, then the value kernel.
# ------------------------------------------------------------------------------------------------

# Rank columns per fold-rows program (0: the whole padded rank). Its grid is one program per query head, 32
# at the Llama shape and batch 1, which leaves most SMs idle: 3.5 of the 27.9 us of a 4K fp16 decode call (H200,
# seventeenth session). A block of 32 gives four programs per head. Timed (gpu_kernels.sh sweep_fold_rows, nineteenth
# session): 32 and 64 won at some shapes and lost at others (4K fp16 23.9 / 23.9 vs 23.7 us). Replayed from CUDA
# graphs on an H100 (small_kernels_sweep.py, twenty-sixth session) at 32K, B = 1 / 2: 64 ranks with 8 warps 2.6 /
# 2.9 us, the whole rank with 4 warps 3.8 / 3.9 us; the graph decoder's step was faster with them too.
FOLD_ROWS_RANK_BLOCK = 64
FOLD_ROWS_WARPS = 8
FOLD_BLOCK_S = 64  # score kernel: slots per dot (wgmma M)
FOLD_SMEM_BUDGET = 160 * 1024  # score kernel: folded matrices + latent stages (choose_fold_heads measured within it)


def fold_shared_bytes(heads_per_group: int, half_pad: int, rk_pad: int, elt: int, stages: int = 2) -> int:
    """Shared memory the score kernel needs: 2 folded (D/2, r) matrices per head + latent stages."""
    return 2 * heads_per_group * half_pad * rk_pad * elt + stages * FOLD_BLOCK_S * rk_pad * elt


SMEM_PER_SM = 227 * 1024  # sm_90 shared memory per SM available to blocks
FOLD_WARPS = 4  # score kernel warps (8 measured slower for 1 and 4 heads per program: fold_heads_sweep)
FOLD_STAGES = 3  # latent tiles in flight per score program when they fit (3 vs 2 at 64K: 262 vs 277 us, fold_tiles_sweep)


FOLD_DOT_COLS = 256  # score kernel: folded rows per dot, the widest wgmma (fp32 accumulator: 128 registers at 4 warps)


def fold_heads_per_dot(fold_heads: int, half_pad: int) -> int:
    """Heads whose folded rows (2 * half_pad each) share one dot of the score kernel: the most that
    divide ``fold_heads`` within FOLD_DOT_COLS rows (at least one)."""
    return max(d for d in range(1, fold_heads + 1)
               if fold_heads % d == 0 and (d == 1 or 2 * d * half_pad <= FOLD_DOT_COLS))


def _resident_programs(shared_bytes: int) -> int:
    """Programs of a fold or single-pass kernel resident on one SM: by shared memory (1 KB driver
    reserve each), and at most 2 by registers (sm_90 builds use 176-255 registers per thread)."""
    return max(1, min(2, SMEM_PER_SM // (shared_bytes + 1024)))


def _fold_programs_per_sm(heads: int, half_pad: int, rk_pad: int, elt: int, stages: int = 2) -> int:
    """Score programs of ``heads`` query heads resident on one SM (:func:`_resident_programs`)."""
    return _resident_programs(fold_shared_bytes(heads, half_pad, rk_pad, elt, stages))


def _fold_stages(heads: int, half_pad: int, rk_pad: int, elt: int) -> int:
    """FOLD_STAGES latent tiles in flight when they fit the budget without costing a program per SM
    (the 2-stage count), else 2, else 1."""
    fits = lambda n: fold_shared_bytes(heads, half_pad, rk_pad, elt, n) <= FOLD_SMEM_BUDGET  # noqa: E731
    if fits(FOLD_STAGES) and (_fold_programs_per_sm(heads, half_pad, rk_pad, elt, FOLD_STAGES)
                              >= _fold_programs_per_sm(heads, half_pad, rk_pad, elt, 2)):
        return FOLD_STAGES
    return 2 if fits(2) else 1


def choose_fold_heads(heads_per_group: int, half_pad: int, rk_pad: int, elt: int) -> int:
    """Query heads per score program: the most whose program still fits twice on an SM, else the
    most that fit once. Measured on an H200 (32x128 heads, 4 per group, rank 128; fold_heads_sweep):
    2 heads per program (two programs per SM: 97 KB each at 2 stages) beat 4 (one 164-KB program, no latency hiding
    across programs) and 1 (cos/sin and latent tile loaded per head) at every length and batch, e.g.
    64K: 277 vs 331 / 375 us; 4K: 31.9 vs 36.2 / 35.7 us; B=8 x 64K: 2305 vs 2904 / 2788 us."""
    fitting = [d for d in range(1, heads_per_group + 1) if heads_per_group % d == 0
               and fold_shared_bytes(d, half_pad, rk_pad, elt, 1) <= FOLD_SMEM_BUDGET]
    if not fitting:
        raise ValueError("no fold program fits in shared memory; use method='rope_qk'")
    twice = [d for d in fitting if _fold_programs_per_sm(d, half_pad, rk_pad, elt) >= 2]
    return max(twice) if twice else max(fitting)


def choose_fold_chunks(num_slots: int, batch_groups: int, num_sms: int) -> tuple[int, int]:
    """(chunk_len, num_chunks): the score kernel's chunks of a multiple of MIN_SPLIT_LEN slots, about
    two per SM in all (its programs, up to two per SM, take chunks in turn), at most MAX_SPLITS per
    sequence."""
    wanted = max(1, cdiv(2 * num_sms, batch_groups))
    chunk_len = cdiv(cdiv(num_slots, wanted), MIN_SPLIT_LEN) * MIN_SPLIT_LEN
    chunk_len = max(chunk_len, cdiv(cdiv(num_slots, MAX_SPLITS), MIN_SPLIT_LEN) * MIN_SPLIT_LEN)
    return chunk_len, cdiv(num_slots, chunk_len)


def _folded_rows(q, k_up, k_offsets, k_bias, sm_scale, rope_scale, gs, n_rep, half_pad, rk_pad,
                 interleave=False, ends: DecodeEnds = NO_ENDS, pdl: bool = False, pair_cols: bool = False) -> tuple:
    """(rows, brows, brows strides (b, g)): the folded query rows of every head, once per call
    (:func:`kernels.fold_scores._fold_rows_kernel`; read by all score programs of their (b, g)),
    (B, G, HG * 2 * half_pad, rk_pad) in q's dtype, and the folded key bias (B, G, HG * 2 * half_pad)
    fp32, or without a bias a pointer that is never read (the rows) and zero strides. With ends' cos / sin, q is
    the query before RoPE (rotated by the kernel). pdl: the kernel lets the next launch (a programmatic dependent)
    start at once. pair_cols: the rank columns in nibble-pair order (_fold_rows_kernel's PAIR_COLS)."""
    from .fold_scores import _fold_rows_kernel

    batch, _, head_dim = q.shape
    num_groups, hg = k_up.shape[0], gs * n_rep
    rows = torch.empty(batch, num_groups, hg * 2 * half_pad, rk_pad, dtype=q.dtype, device=q.device)
    has_bias = k_bias is not None
    brows = rows
    if has_bias:
        brows = torch.empty(batch, num_groups, hg * 2 * half_pad, dtype=torch.float32, device=q.device)
    brows_strides = (brows.stride(0), brows.stride(1)) if has_bias else (0, 0)
    rk_block = fold_rows_rank_block(rk_pad)
    _fold_rows_kernel[(batch * num_groups * hg, rk_pad // rk_block)](
        q, q.stride(0), q.stride(1), k_up, k_up.stride(0), k_up.stride(1), k_offsets, k_bias if has_bias else q,
        rows, rows.stride(0), rows.stride(1), brows, *brows_strides, float(sm_scale) * LOG2E * float(rope_scale),
        num_groups, q if ends.q_cos is None else ends.q_cos, q if ends.q_sin is None else ends.q_sin, ends.rope_sb,
        HEAD_DIM=head_dim, HALF_PAD=half_pad, GS=gs, HG=hg, N_REP=n_rep, RK_PAD=rk_pad, RK_BLOCK=rk_block,
        HAS_BIAS=has_bias, INTERLEAVE=interleave, Q_ROPE=ends.q_cos is not None, PDL_TRIGGER=pdl,
        PAIR_COLS=pair_cols, num_warps=FOLD_ROWS_WARPS,
    )
    return rows, brows, brows_strides


def fold_rows_rank_block(rk_pad: int) -> int:
    """Rank columns per _fold_rows_kernel program: FOLD_ROWS_RANK_BLOCK where it divides rk_pad into more than one
    block, else all rk_pad."""
    block = FOLD_ROWS_RANK_BLOCK
    return block if block and block < rk_pad and rk_pad % block == 0 else rk_pad


def _fold_decode(q, k_latent, v_latent, k_up, k_offsets, v_offsets, positions, kv_start, inv_freq, rope_scale,
                 sm_scale, gs, n_rep, k_bias, k_off_host, v_off_host, num_sms, interpret, block_s, num_splits,
                 fold_heads, value_cols, warp_specialized, out_dtype, ends: DecodeEnds = NO_ENDS):
    """latent_decode_attention through :mod:`kernels.fold_scores` (same arguments and result)."""
    from .fold_scores import _fold_scores_kernel

    if warp_specialized is not False and not interpret:
        from . import fold_scores_ws as ws

        why = ws.ws_unsupported(q, k_latent.fp, k_latent.num_quantized, _group_ranks(k_off_host), n_rep,
                                k_bias is not None)
        if warp_specialized and why:
            raise ValueError(f"warp_specialized=True: the Gluon score kernel does not apply: {why}")
        if not why and (warp_specialized or ws.WS_AUTO):
            return _fold_decode_ws(q, k_latent, v_latent, k_up, k_offsets, v_offsets, positions, kv_start, inv_freq,
                                   rope_scale, sm_scale, gs, k_off_host, v_off_host, num_sms, block_s, num_splits,
                                   fold_heads, value_cols, out_dtype, ends=ends)
    elif warp_specialized:
        raise ValueError("warp_specialized=True needs an sm_90 GPU; the interpreter does not run Gluon kernels")

    batch, num_heads, head_dim = q.shape
    num_groups = k_up.shape[0]
    device = q.device
    num_quantized, num_fp = k_latent.num_quantized, k_latent.num_fp
    num_slots = num_quantized + num_fp
    k_ranks = _group_ranks(k_off_host)
    hg, bgs = gs * n_rep, batch * num_groups
    if num_splits is not None:  # tests: a given number of chunks
        chunk_len = cdiv(num_slots, num_splits)
        num_chunks = cdiv(num_slots, chunk_len)
    else:
        chunk_len, num_chunks = choose_fold_chunks(num_slots, bgs, num_sms)
    half_pad, rk_pad = _pad(head_dim // 2), _pad(max(k_ranks))
    elt = q.element_size()
    if fold_heads is None:
        fold_heads = choose_fold_heads(hg, half_pad, rk_pad, elt)
    if fold_heads < 1 or hg % fold_heads or fold_shared_bytes(fold_heads, half_pad, rk_pad, elt, 1) > FOLD_SMEM_BUDGET:
        raise ValueError(f"fold_heads={fold_heads} must divide the {hg} query heads per group and fit in shared memory")
    head_splits = hg // fold_heads
    stages = 1 if interpret else _fold_stages(fold_heads, half_pad, rk_pad, elt)
    per_sm = _fold_programs_per_sm(fold_heads, half_pad, rk_pad, elt, stages)
    ctas_per_bg = max(1, min(num_chunks, (num_sms * per_sm) // (bgs * head_splits)))
    if interpret:
        key_cfg = dict(BLOCK_S=block_s or 16, num_warps=4, num_stages=1)
    else:
        key_cfg = dict(BLOCK_S=block_s or FOLD_BLOCK_S, num_warps=FOLD_WARPS, num_stages=stages)

    scores = torch.empty(batch, num_heads, num_slots, dtype=torch.float32, device=device)
    has_bias = k_bias is not None
    rows, brows, brows_strides = _folded_rows(q, k_up, k_offsets, k_bias, sm_scale, rope_scale, gs, n_rep, half_pad,
                                              rk_pad, ends=ends)
    key_args = [
        rows, rows.stride(0), rows.stride(1), brows, *brows_strides, *_view_args(k_latent, q), k_offsets,
        positions, positions.stride(0), kv_start, inv_freq,
        scores, scores.stride(0), scores.stride(1),
        num_quantized, num_slots, num_groups, bgs, chunk_len, num_chunks, ctas_per_bg, head_splits,
    ]
    key_consts = dict(
        HEAD_DIM=head_dim, HALF_PAD=half_pad, HG=hg, HP=fold_heads, HD=fold_heads_per_dot(fold_heads, half_pad),
        RK_PAD=rk_pad, HAS_ZERO=k_latent.zero is not None, HAS_BIAS=has_bias,
        CHAN_ALIGN=_channel_alignment(k_off_host + [k_up.shape[2]]),
        VEC_QUANT=_words_aligned(k_latent, k_off_host, [rk_pad]), INTERPRET=interpret, **_quant_consts(k_latent),
    )
    key_grid = (bgs * head_splits * ctas_per_bg,)
    # The two kernels one after the other on this stream: running them concurrently (a flag-waiting
    # value kernel, or stages on two streams) measured slower, and the flag version could hang
    # (kernels/NOTES.md, eighth session). With all scores written first, the value kernel's splits
    # need not be the score chunks: chosen for its own waves.
    _fold_scores_kernel[key_grid](*key_args, **key_consts, **key_cfg)
    return _fold_values(q, scores, v_latent, v_offsets, v_off_host, kv_start, num_groups, hg, num_sms, interpret,
                        block_s, num_splits, value_cols, out_dtype, ends=ends)


def _fold_values(q, scores, v_latent, v_offsets, v_off_host, kv_start, num_groups, hg, num_sms, interpret, block_s,
                 num_splits, value_cols, out_dtype, ends: DecodeEnds = NO_ENDS):
    """The fold paths' second half: online softmax and p @ latent_v over the written scores (B, H, S),
    in splits chosen for the value kernel's own waves, then the merge; returns z (B, H, rv_max)."""
    batch, num_heads, num_slots = scores.shape
    rv_max = max(_group_ranks(v_off_host))
    if num_splits is None:
        num_splits = _choose_value_splits(num_slots, batch * num_groups, rv_max, value_cols, num_sms)
    split_len, num_splits = _split_len(num_slots, num_splits, interpret)
    parts = _partials(batch, num_heads, num_splits, rv_max, q.device)
    split_consts = _value_consts(v_latent, v_off_host, hg, rv_max, interpret, value_cols)
    _split_values(q, scores, v_latent, v_offsets, kv_start, parts, split_len, split_consts,
                  _fixed_config(interpret, block_s))
    return _merge(*parts, out_dtype, ends)


def _fold_decode_ws(q, k_latent, v_latent, k_up, k_offsets, v_offsets, positions, kv_start, inv_freq, rope_scale,
                    sm_scale, gs, k_off_host, v_off_host, num_sms, block_s, num_splits, fold_heads, value_cols,
                    out_dtype, ends: DecodeEnds = NO_ENDS):
    """The fold path with its scores from :mod:`kernels.fold_scores_ws` (n_rep == 1, checked by the caller);
    the value kernel and the merge are the fold path's."""
    from .fold_scores_ws import ws_fold_heads, ws_fold_scores

    batch, num_heads, head_dim = q.shape
    num_groups = k_up.shape[0]
    num_slots = k_latent.num_fp
    rank = _group_ranks(k_off_host)[0]
    fold_heads = ws_fold_heads(gs, head_dim, rank, q.element_size(), fold_heads)
    rows, _, _ = _folded_rows(q, k_up, k_offsets, None, sm_scale, rope_scale, gs, 1, head_dim // 2, rank,
                              interleave=True, ends=ends)
    scores = torch.empty(batch, num_heads, num_slots, dtype=torch.float32, device=q.device)
    ws_fold_scores(rows, k_latent.fp, positions, kv_start, inv_freq, scores, rank, gs, fold_heads, num_sms)
    # The interpreter flag reaches here only from tests that stand in a torch version for the Gluon kernel.
    return _fold_values(q, scores, v_latent, v_offsets, v_off_host, kv_start, num_groups, gs, num_sms, _interpreting(),
                        block_s, num_splits, value_cols, out_dtype, ends=ends)


# ------------------------------------------------------------------------------------------------
# Single-pass path: folded scores, online softmax and p @ latent_v in one loop (kernels.single_pass).
# ------------------------------------------------------------------------------------------------

SINGLE_PASS_BLOCK_S = 32  # slots per block: the dots' N (64 spilled registers at 8 warps in the sm_90 build)
SINGLE_PASS_WARPS = 8  # two warpgroups share the folded rows' 256-row M side; 4 warps spilled
SINGLE_PASS_STAGES = 2
SINGLE_PASS_SMEM_BUDGET = 200 * 1024


def single_pass_shared_bytes(heads: int, half_pad: int, rk_pad: int, rv_cols: int, elt: int, block_s: int,
                             stages: int) -> int:
    """Shared memory of one single-pass program: its heads' folded rows + ``stages`` key and value tiles."""
    return 2 * heads * half_pad * rk_pad * elt + stages * block_s * (rk_pad + rv_cols) * elt


def choose_single_pass_heads(heads_per_group: int, half_pad: int, rk_pad: int, rv_cols: int, elt: int,
                             block_s: int, stages: int) -> int:
    """Query heads per single-pass program: the most (a divisor of the group's) that fit the budget. All
    of a group's heads in one program read its value tiles once; fewer read them once per program (L2)."""
    fitting = [d for d in range(1, heads_per_group + 1) if heads_per_group % d == 0
               and single_pass_shared_bytes(d, half_pad, rk_pad, rv_cols, elt, block_s, stages)
               <= SINGLE_PASS_SMEM_BUDGET]
    if not fitting:
        raise ValueError("no single-pass program fits in shared memory; use method='fold' or 'rope_qk'")
    return max(fitting)


def _single_pass_decode_ws(q, k_latent, v_latent, k_up, k_offsets, positions, kv_start, inv_freq, rope_scale,
                           sm_scale, gs, rank, rank_v, num_sms, num_splits, fold_heads, out_dtype,
                           ends: DecodeEnds = NO_ENDS):
    """latent_decode_attention through :mod:`kernels.single_pass_ws` (checked by the caller to apply); quantized
    slots through :mod:`kernels.single_pass_ws_quant`, a full-precision window after them through the fp16
    kernel (its own launch: positions and kv_start shifted by S_q), the partials of both merged together.
    fold_heads, when given, applies to each kernel (and must fit both)."""
    from .single_pass_ws import sp_fold_heads, ws_single_pass
    from .single_pass_ws_quant import spq_fold_heads, spq_nibble_pairs, ws_single_pass_quant

    batch, num_heads, head_dim = q.shape
    elt = q.element_size()
    n_q, n_fp = k_latent.num_quantized, k_latent.num_fp
    pdl = not n_q and decode_pdl(q.device)  # fp16 slots only: three launches, each the next one's primary
    # Rows in the quantized kernel's nibble-pair column order straight from the fold (no gather per call), unless
    # a full-precision window's fp16 kernel needs them in channel order too (the quantized launch gathers then)
    pair_rows = bool(n_q) and not n_fp and spq_nibble_pairs(k_latent.bits, q.dtype)
    rows, _, _ = _folded_rows(q, k_up, k_offsets, None, sm_scale, rope_scale, gs, 1, head_dim // 2, rank,
                              interleave=True, ends=ends, pdl=pdl, pair_cols=pair_rows)

    def parts_fn(n: int) -> tuple:
        return _partials(batch, num_heads, n, rank_v, q.device)

    parts = []
    if n_q:
        heads_q = spq_fold_heads(gs, head_dim, rank, rank_v, elt, k_latent.bits, k_latent.quant_group_size,
                                 k_latent.zero is not None, fold_heads)
        parts.append(ws_single_pass_quant(rows, k_latent, v_latent, positions[:, :n_q], kv_start, inv_freq,
                                          num_heads, rank, rank_v, gs, heads_q, num_sms, num_splits, parts_fn,
                                          rows_pair_order=pair_rows))
    if n_fp:
        heads_fp = sp_fold_heads(gs, head_dim, rank, rank_v, elt, fold_heads)
        # A small window after quantized slots: a few splits (each launch fills the GPU by itself otherwise)
        splits_fp = num_splits if not n_q else min(8, cdiv(n_fp, 64) * 2)
        # kv_start is shifted only behind quantized slots: "kv_start - 0" would be one more kernel in every fp16
        # decode step (1.2 us of a 27.9 us step at 4K on an H200, seventeenth session's sweep_splits breakdown)
        fp_start = kv_start - n_q if n_q else kv_start
        parts.append(ws_single_pass(rows, k_latent.fp, v_latent.fp, positions[:, n_q:], fp_start, inv_freq,
                                    num_heads, rank, rank_v, gs, heads_fp, num_sms, splits_fp, parts_fn, pdl=pdl))
    if len(parts) == 1:
        return _merge(*parts[0], out_dtype, ends, pdl=pdl)
    return _merge(*(torch.cat(p, dim=2) for p in zip(*parts)), out_dtype, ends)


def _single_pass_decode(q, k_latent, v_latent, k_up, k_offsets, v_offsets, positions, kv_start, inv_freq,
                        rope_scale, sm_scale, gs, k_bias, k_off_host, v_off_host, num_sms, interpret, block_s,
                        num_splits, fold_heads, out_dtype, ends: DecodeEnds = NO_ENDS):
    """latent_decode_attention through :mod:`kernels.single_pass` (n_rep == 1; same arguments and result)."""
    from .single_pass import _single_pass_kernel

    batch, num_heads, head_dim = q.shape
    num_groups = k_up.shape[0]
    device = q.device
    num_quantized, num_fp = k_latent.num_quantized, k_latent.num_fp
    num_slots = num_quantized + num_fp
    k_ranks, rv_max = _group_ranks(k_off_host), max(_group_ranks(v_off_host))
    hg, bgs = gs, batch * num_groups
    half_pad, rk_pad = _pad(head_dim // 2), _pad(max(k_ranks))
    rv1, rv2 = _split_value_columns(rv_max)
    elt = q.element_size()
    bs = block_s or (16 if interpret else SINGLE_PASS_BLOCK_S)
    stages = 1 if interpret else SINGLE_PASS_STAGES
    if fold_heads is None:
        fold_heads = choose_single_pass_heads(hg, half_pad, rk_pad, rv1 + rv2, elt, bs, stages)
    if fold_heads < 1 or hg % fold_heads:
        raise ValueError(f"fold_heads={fold_heads} must divide the {hg} query heads per group")
    smem = single_pass_shared_bytes(fold_heads, half_pad, rk_pad, rv1 + rv2, elt, bs, stages)
    if smem > SINGLE_PASS_SMEM_BUDGET:
        raise ValueError(f"fold_heads={fold_heads}: a single-pass program would need {smem // 1024} KB of shared "
                         f"memory (budget {SINGLE_PASS_SMEM_BUDGET // 1024} KB); use fewer heads or method='fold'")
    head_splits = hg // fold_heads
    per_sm = _resident_programs(smem)
    if num_splits is None:
        num_splits = choose_num_splits(num_slots, bgs * head_splits, num_sms, per_sm)
    split_len, num_splits = _split_len(num_slots, num_splits, interpret)
    if not interpret:  # whole blocks per split
        split_len = cdiv(split_len, bs) * bs
        num_splits = cdiv(num_slots, split_len)

    has_bias = k_bias is not None
    rows, brows, brows_strides = _folded_rows(q, k_up, k_offsets, k_bias, sm_scale, rope_scale, gs, 1, half_pad, rk_pad,
                                              ends=ends)
    parts = _partials(batch, num_heads, num_splits, rv_max, device)
    consts = dict(
        HEAD_DIM=head_dim, HALF_PAD=half_pad, HG=hg, HP=fold_heads, HD=fold_heads_per_dot(fold_heads, half_pad),
        HP_PAD=_pad(fold_heads), RK_PAD=rk_pad, RV1=rv1, RV2=rv2, HAS_ZERO=k_latent.zero is not None,
        HAS_BIAS=has_bias, K_ALIGN=_channel_alignment(k_off_host + [k_up.shape[2]]),
        V_ALIGN=_channel_alignment(v_off_host),
        K_VEC_QUANT=_words_aligned(k_latent, k_off_host, [rk_pad]),
        V_VEC_QUANT=_words_aligned(v_latent, v_off_host, [rv1, rv2] if rv2 else [rv1]),
        INTERPRET=interpret, **_quant_consts(k_latent),
    )
    _single_pass_kernel[(num_splits * bgs * head_splits,)](
        rows, rows.stride(0), rows.stride(1), brows, *brows_strides,
        *_view_args(k_latent, q), *_view_args(v_latent, q), k_offsets, v_offsets,
        positions, positions.stride(0), kv_start, inv_freq, *parts,
        num_heads, num_quantized, num_slots, num_groups, bgs, split_len, num_splits, head_splits, rv_max,
        **consts, BLOCK_S=bs, num_warps=4 if interpret else SINGLE_PASS_WARPS, num_stages=stages,
    )
    return _merge(*parts, out_dtype, ends)
