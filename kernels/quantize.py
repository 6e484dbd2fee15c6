"""Latent quantization in one launch: per-token groups, codes packed in int32 (the cache's write path).

Computes exactly what :func:`palu.quant.quantize` computes (the reference, bit for bit: same fp32
operations in the same order, IEEE division, round half to even, scales and zero-points rounded to
the latent dtype before the codes are taken) and writes codes, scales and zero-points straight
into the cache's buffers. The torch version takes ~25 launches and fp32 copies of its input per
call, which dominated a quantized decode step (one token per layer and projection).

Layout (see palu.quant): codes (.., ceil(R / vpw)) int32 with vpw = 32 // bits codes per word, code
i at bit (i % vpw) * bits of word i // vpw; scale and zero (.., ceil(R / group_size)) in the dtype of x.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from .host_math import cdiv, next_pow2

MAX_CHANNELS = 16384  # one program per token holds the token's channels in registers
_RINT_MAGIC = tl.constexpr(12582912.0)  # 1.5 * 2**23: (v + M) - M rounds fp32 v to an integer, half to even, for |v| < 2**22


@triton.jit
def _rint(v):
    """Round half to even like torch.round. Beyond 2**22 the result is still >= 2**22 in magnitude,
    which the callers clamp to [0, 2^bits - 1] anyway."""
    return (v + _RINT_MAGIC) - _RINT_MAGIC


@triton.jit
def _quantize_rows_kernel(
    x_ptr, x_sb, x_st, codes_ptr, codes_sb, codes_st, scale_ptr, scale_sb, scale_st, zero_ptr, zero_sb, zero_st,
    n_tokens, rank, group_size, clip_ratio, floor,
    BITS: tl.constexpr, SYM: tl.constexpr, NG_PAD: tl.constexpr, GROUP_PAD: tl.constexpr,
    W_PAD: tl.constexpr, VPW_PAD: tl.constexpr,
):
    """Grid (B * n_tokens,): token t of batch row b. Phase 1: per-group scale (and zero), stored in the
    dtype of x; phase 2 (after a CTA barrier, reading them back): codes in word layout, packed."""
    row = tl.program_id(0)
    b = (row // n_tokens).to(tl.int64)
    t = (row % n_tokens).to(tl.int64)
    x_row = x_ptr + b * x_sb + t * x_st
    scale_row = scale_ptr + b * scale_sb + t * scale_st
    zero_row = zero_ptr + b * zero_sb + t * zero_st
    DTYPE = scale_ptr.dtype.element_ty
    QMAX: tl.constexpr = (1 << BITS) - 1
    HALF: tl.constexpr = 1 << (BITS - 1)

    g_idx = tl.arange(0, NG_PAD)
    j_idx = tl.arange(0, GROUP_PAD)
    chan = g_idx[:, None] * group_size + j_idx[None, :]
    real = (j_idx[None, :] < group_size) & (chan < rank)
    n_groups = tl.cdiv(rank, group_size)
    g_mask = g_idx < n_groups
    x = tl.load(x_row + chan, mask=real, other=0.0).to(tl.float32)
    if SYM:
        amax = tl.max(tl.abs(x), axis=1) * clip_ratio
        DIV: tl.constexpr = HALF - 1 if BITS > 1 else 1
        scale = tl.maximum(tl.math.div_rn(amax, tl.full(amax.shape, DIV, tl.float32)), floor)
        tl.store(scale_row + g_idx, scale.to(DTYPE), mask=g_mask)
    else:
        gmax = tl.max(tl.where(real, x, float("-inf")), axis=1) * clip_ratio
        gmin = tl.min(tl.where(real, x, float("inf")), axis=1) * clip_ratio
        scale = tl.maximum(tl.math.div_rn(gmax - gmin, tl.full(gmax.shape, QMAX, tl.float32)), floor)
        scale_q = scale.to(DTYPE)
        zero = tl.math.div_rn(-gmin, scale_q.to(tl.float32))
        tl.store(scale_row + g_idx, scale_q, mask=g_mask)
        tl.store(zero_row + g_idx, zero.to(DTYPE), mask=g_mask)
    tl.debug_barrier()  # phase 2 reads the rounded scales/zeros other threads of this program wrote

    VPW: tl.constexpr = 32 // BITS
    w_idx = tl.arange(0, W_PAD)
    k_idx = tl.arange(0, VPW_PAD)
    wchan = w_idx[:, None] * VPW + k_idx[None, :]  # channel of each code of each word
    in_rank = (k_idx[None, :] < VPW) & (wchan < rank)
    xw = tl.load(x_row + wchan, mask=in_rank, other=0.0).to(tl.float32)
    grp = wchan // group_size
    s = tl.load(scale_row + grp, mask=in_rank, other=1.0).to(tl.float32)
    if SYM:
        code = _rint(tl.math.div_rn(xw, s)) + HALF
    else:
        z = tl.load(zero_row + grp, mask=in_rank, other=0.0).to(tl.float32)
        code = _rint(tl.math.div_rn(xw, s) + z)
    code = tl.minimum(tl.maximum(code, 0.0), QMAX).to(tl.uint32)
    code = tl.where(in_rank, code, 0)  # channels past the rank pack as 0, as pack_codes pads them
    # Padding lanes (k >= VPW, 3-bit: VPW_PAD 16 > 10) shift by 0, not k * BITS >= 32: a shift past the
    # width is poison in LLVM and turned whole 3-bit words into garbage on the GPU (the interpreter's
    # numpy shift hid it).
    shift = tl.where(k_idx < VPW, k_idx * BITS, 0).to(tl.uint32)
    word = tl.sum(code << shift[None, :], axis=1)  # disjoint bits: sum == or
    n_words = tl.cdiv(rank, VPW)
    tl.store(codes_ptr + b * codes_sb + t * codes_st + w_idx, word.to(tl.int32, bitcast=True), mask=w_idx < n_words)


def quantize_into(
    x: torch.Tensor, bits: int, group_size: int, sym: bool, clip_ratio: float,
    codes: torch.Tensor, scale: torch.Tensor, zero: Optional[torch.Tensor],
) -> None:
    """Quantize x (B, n, R) into codes (B, n, ceil(R / (32 // bits))) int32 and scale / zero
    (B, n, ceil(R / group_size)) of x's dtype (zero None when ``sym``); outputs may be views into
    larger buffers (any batch/token strides, contiguous last dim). Same result as palu.quant.quantize."""
    assert x.dim() == 3 and x.stride(2) == 1, f"x must be (B, n, R) with contiguous last dim, got {tuple(x.shape)}"
    batch, n, rank = x.shape
    assert 1 <= rank <= MAX_CHANNELS, f"rank {rank} outside [1, {MAX_CHANNELS}]"
    assert bits in (1, 2, 3, 4, 8), f"bits must be 1, 2, 3, 4 or 8, got {bits}"
    vpw, n_groups = 32 // bits, cdiv(rank, group_size)
    assert codes.shape == (batch, n, cdiv(rank, vpw)) and codes.dtype == torch.int32 and codes.stride(2) == 1
    assert scale.shape == (batch, n, n_groups) and scale.dtype == x.dtype and scale.stride(2) == 1
    assert sym == (zero is None), "zero must be given exactly when quantization is asymmetric"
    if zero is not None:
        assert zero.shape == scale.shape and zero.dtype == x.dtype and zero.stride(2) == 1
    if batch * n == 0:
        return
    z = zero if zero is not None else scale  # never written when symmetric
    _quantize_rows_kernel[(batch * n,)](
        x, x.stride(0), x.stride(1), codes, codes.stride(0), codes.stride(1), scale, scale.stride(0), scale.stride(1),
        z, z.stride(0), z.stride(1), n, rank, group_size, float(clip_ratio),
        max(1e-8, torch.finfo(x.dtype).tiny),  # palu.quant.scale_floor (kernels do not import palu)
        BITS=bits, SYM=sym, NG_PAD=next_pow2(n_groups), GROUP_PAD=next_pow2(group_size),
        W_PAD=next_pow2(cdiv(rank, vpw)), VPW_PAD=next_pow2(vpw),
        num_warps=4,
    )
