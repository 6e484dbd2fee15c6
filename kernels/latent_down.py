"""The decode step's key and value down-projections in one launch, storing the latents straight into the cache.

Per decoded token, Palu projects the hidden state x (B, d_model) to its key latent (B, R_k) and value latent (B, R_v)
and stores both at the sequence's write slot. With cuBLAS that is two skinny GEMMs (batch rows only: bound by the
weight reads), their split-K reductions and a slot write: 5 launches and ~23 us per layer at 32K, B=2 on an H100
(twenty-sixth session's profile, ``benchmarks/results/kernel/h100/session26/``), for 33.5 MB of weights that take
~11 us at 3 TB/s. This kernel reads both weights in one launch (each program a block of one weight's rows, over the
whole d_model: no split-K reduction) and stores each sequence's row at ``dst[b, slot[b]]``; optionally it also
stores one more per-sequence value (the position) at the same slot.

The reference is :func:`project_latents_ref` (``F.linear`` and plain indexing). Rounding: fp32 accumulation, one
rounding to the destination's dtype (cuBLAS's split-K rounds the same fp32 sum, summed in another order).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import triton
import triton.language as tl

from .host_math import cdiv, next_pow2
from .latent_attention import _interpreting

MAX_WEIGHTS = 2
# Launch constants (benchmarks/latent_down_sweep.py times variants; offline sm_90 builds of four: no spills).
DOWN_BLOCK_N = 32  # weight rows per program: 4096 latents -> 128 programs, about one per H100 SM
DOWN_BLOCK_K = 256  # d_model columns per step (a 32 x 256 fp16 tile is 16 KB)
DOWN_WARPS = 4
DOWN_STAGES = 4  # tiles in flight per program at most: the kernel is bound by the weights' read latency per SM
DOWN_MAX_BLOCK_B = 32  # sequences per program at most (64 needs twice the shared memory its tiles suggest)
DOWN_SMEM_BUDGET = 227 * 1024  # sm_90's shared memory per block


def down_shared_bytes(block_b: int, block_n: int, block_k: int, elt: int, stages: int) -> int:
    """Shared memory of a build with these tiles and stages: 2 * (stages - 1) * (BLOCK_B + BLOCK_N) * BLOCK_K * elt,
    equal to offline sm_90 builds at BLOCK_B 16 and 32 (fp16 and fp32, 2 to 4 stages). BLOCK_B 64 took twice that:
    fp16 at 4 stages needed 384 KB and failed to launch on the H100 (twenty-eighth session), hence
    DOWN_MAX_BLOCK_B."""
    return 2 * (stages - 1) * (block_b + block_n) * block_k * elt


def down_launch(batch: int, elt: int, block_n: int, block_k: int, max_stages: int) -> tuple[int, int]:
    """(BLOCK_B, num_stages) for ``batch`` sequences of ``elt``-byte elements: the fewest sequences per program the
    dot allows (16), up to DOWN_MAX_BLOCK_B, and the most stages up to ``max_stages`` whose tiles fit
    ``DOWN_SMEM_BUDGET`` (:func:`down_shared_bytes`)."""
    block_b = min(DOWN_MAX_BLOCK_B, max(16, next_pow2(batch)))
    stages = max_stages
    while stages > 1 and down_shared_bytes(block_b, block_n, block_k, elt, stages) > DOWN_SMEM_BUDGET:
        stages -= 1
    return block_b, stages


@triton.jit
def _dot_step(acc, x_ptr, x_sb, rb, b_mask, K, w_ptr, w_sn, rn, n_mask, k0, IEEE: tl.constexpr,
              INTERPRET: tl.constexpr, BLOCK_K: tl.constexpr):
    """acc (BLOCK_B, BLOCK_N) += x[rb, k0:k0+BLOCK_K] @ w[rn, k0:k0+BLOCK_K].T (masked)."""
    rk = k0 + tl.arange(0, BLOCK_K)
    k_mask = rk < K
    xt = tl.load(x_ptr + rb.to(tl.int64)[:, None] * x_sb + rk[None, :], mask=b_mask[:, None] & k_mask[None, :],
                 other=0.0)
    wt = tl.load(w_ptr + rn.to(tl.int64)[:, None] * w_sn + rk[None, :], mask=n_mask[:, None] & k_mask[None, :],
                 other=0.0)
    if INTERPRET:  # the interpreter's bf16 dot is wrong (numpy has no bf16); fp32 holds the same exact products
        xt, wt = xt.to(tl.float32), wt.to(tl.float32)
    if IEEE or INTERPRET:  # fp32 inputs: no TF32 rounding
        return acc + tl.dot(xt, tl.trans(wt), input_precision="ieee")
    return acc + tl.dot(xt, tl.trans(wt))


@triton.jit
def _project_block(x_ptr, x_sb, batch, K, w_ptr, w_sn, n, n_start, dst_ptr, dst_sb, dst_ss, slot_ptr, b0,
                   HAS_SLOT: tl.constexpr, IEEE: tl.constexpr, INTERPRET: tl.constexpr,
                   BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """dst[b, slot[b], n_start:n_start+BLOCK_N] = x[b] @ w[n_start:n_start+BLOCK_N].T for b in [b0, b0 + BLOCK_B)
    (masked to batch and n)."""
    rb = b0 + tl.arange(0, BLOCK_B)
    rn = n_start + tl.arange(0, BLOCK_N)
    b_mask, n_mask = rb < batch, rn < n
    acc = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
    if INTERPRET:  # the interpreter cannot range() over run-time bounds: same steps, same order
        k0 = 0
        while k0 < K:
            acc = _dot_step(acc, x_ptr, x_sb, rb, b_mask, K, w_ptr, w_sn, rn, n_mask, k0, IEEE, INTERPRET, BLOCK_K)
            k0 += BLOCK_K
    else:  # a `for` loop, which the compiler software-pipelines (num_stages: weight tiles in flight)
        for k0 in range(0, K, BLOCK_K):
            acc = _dot_step(acc, x_ptr, x_sb, rb, b_mask, K, w_ptr, w_sn, rn, n_mask, k0, IEEE, INTERPRET, BLOCK_K)
    row = rb.to(tl.int64) * dst_sb
    if HAS_SLOT:
        row += tl.load(slot_ptr + rb, mask=b_mask, other=0).to(tl.int64) * dst_ss
    tl.store(dst_ptr + row[:, None] + rn[None, :], acc.to(dst_ptr.dtype.element_ty),
             mask=b_mask[:, None] & n_mask[None, :])


@triton.jit
def _latent_down_kernel(
    x_ptr, x_sb, batch, K, slot_ptr,
    w0, w0_sn, n0, d0, d0_b, d0_s,
    w1, w1_sn, n1, d1, d1_b, d1_s,
    e_src, e_sb, e_dst, e_db, e_ds,
    NUM_W: tl.constexpr, HAS_SLOT: tl.constexpr, HAS_EXTRA: tl.constexpr, IEEE: tl.constexpr, INTERPRET: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Grid (cdiv(n0, BLOCK_N) + cdiv(n1, BLOCK_N), cdiv(B, BLOCK_B)): the first programs project onto weight 0,
    the rest onto weight 1; program 0 of each batch block also stores the extra value of its sequences."""
    pid = tl.program_id(0)
    b0 = tl.program_id(1) * BLOCK_B
    blocks0 = tl.cdiv(n0, BLOCK_N)
    if pid < blocks0:
        _project_block(x_ptr, x_sb, batch, K, w0, w0_sn, n0, pid * BLOCK_N, d0, d0_b, d0_s, slot_ptr, b0,
                       HAS_SLOT, IEEE, INTERPRET, BLOCK_B, BLOCK_N, BLOCK_K)
    elif NUM_W > 1:
        _project_block(x_ptr, x_sb, batch, K, w1, w1_sn, n1, (pid - blocks0) * BLOCK_N, d1, d1_b, d1_s, slot_ptr,
                       b0, HAS_SLOT, IEEE, INTERPRET, BLOCK_B, BLOCK_N, BLOCK_K)
    if HAS_EXTRA:
        if pid == 0:
            rb = b0 + tl.arange(0, BLOCK_B)
            b_mask = rb < batch
            off = rb.to(tl.int64) * e_db
            if HAS_SLOT:
                off += tl.load(slot_ptr + rb, mask=b_mask, other=0).to(tl.int64) * e_ds
            v = tl.load(e_src + rb.to(tl.int64) * e_sb, mask=b_mask)
            tl.store(e_dst + off, v.to(e_dst.dtype.element_ty), mask=b_mask)


def _rows(t: torch.Tensor, batch: int, width: int, name: str) -> torch.Tensor:
    """t (B, W) or (B, 1, W) with a unit last stride as (B, W) (a view)."""
    if t.dim() == 3 and t.shape[1] == 1:
        t = t[:, 0]
    if t.dim() != 2 or tuple(t.shape) != (batch, width) or t.stride(-1) != 1:
        raise ValueError(f"{name} must be (B, {width}) or (B, 1, {width}) with a contiguous last dim, got "
                         f"{tuple(t.shape)} strides {t.stride()}")
    return t


def _check(x: torch.Tensor, pairs, slot: Optional[torch.Tensor], extra) -> torch.Tensor:
    """x as (B, K) after checking every argument (shapes, dtypes, devices, slots)."""
    if not 1 <= len(pairs) <= MAX_WEIGHTS:
        raise ValueError(f"project_latents takes 1 to {MAX_WEIGHTS} (weight, dst) pairs, got {len(pairs)}")
    batch, k = x.shape[0], x.shape[-1]
    x = _rows(x, batch, k, "x")
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"x must be float16, bfloat16 or float32, got {x.dtype}")
    for i, (w, dst) in enumerate(pairs):
        if w.dim() != 2 or w.shape[1] != k or w.stride(1) != 1 or w.dtype != x.dtype:
            raise ValueError(f"weight {i} must be (N, {k}) {x.dtype} with a contiguous last dim (x's dtype and "
                             f"width), got {tuple(w.shape)} {w.dtype} strides {w.stride()}")
        rows = dst.dim() == 3 and dst.shape[0] == batch and dst.shape[2] == w.shape[0] and dst.stride(2) == 1
        if not rows or (slot is None and dst.shape[1] != 1):
            raise ValueError(f"dst {i} must be (B={batch}, slots, N={w.shape[0]}) with a contiguous last dim (one "
                             f"slot without a slot tensor), got {tuple(dst.shape)} strides {dst.stride()}")
    if slot is not None and (slot.dim() != 1 or slot.shape[0] != batch or slot.dtype not in (torch.int32, torch.int64)):
        raise ValueError(f"slot must be (B={batch},) int32 or int64, got {tuple(slot.shape)} {slot.dtype}")
    if extra is not None:
        src, dst = extra
        if src.numel() != batch or dst.dim() != 3 or dst.shape[0] != batch or dst.shape[2] != 1:
            raise ValueError(f"extra must be (src with B={batch} values, dst (B, slots, 1)), got "
                             f"{tuple(src.shape)}, {tuple(dst.shape)}")
    tensors = [x, *(t for p in pairs for t in p)] + ([slot] if slot is not None else []) + list(extra or [])
    if any(t.device != x.device for t in tensors):
        raise ValueError("x, the weights, the destinations, slot and extra must be on one device")
    return x


def project_latents_ref(x: torch.Tensor, pairs: Sequence[tuple[torch.Tensor, torch.Tensor]],
                        slot: Optional[torch.Tensor] = None, extra=None) -> None:
    """dst[b, slot[b]] = x[b] @ w.T for each (w (N, K), dst (B, C, N)) pair (C = 1 and slot 0 without slot), in fp32
    with one rounding; extra (src (B,) values, dst (B, C, 1)): dst[b, slot[b], 0] = src[b]."""
    x = _check(x, pairs, slot, extra)
    rows = torch.arange(x.shape[0], device=x.device)
    at = slot.long() if slot is not None else torch.zeros_like(rows)
    for w, dst in pairs:
        dst[rows, at] = (x.float() @ w.float().T).to(dst.dtype)
    if extra is not None:
        src, dst = extra
        dst[rows, at, 0] = src.reshape(-1).to(dst.dtype)


def project_latents(x: torch.Tensor, pairs: Sequence[tuple[torch.Tensor, torch.Tensor]],
                    slot: Optional[torch.Tensor] = None, extra=None) -> None:
    """As :func:`project_latents_ref`, in one launch (no host sync: graph-safe). x (B, K) or (B, 1, K)."""
    x = _check(x, pairs, slot, extra)
    batch, k = x.shape
    block_b, stages = down_launch(batch, x.element_size(), DOWN_BLOCK_N, DOWN_BLOCK_K, DOWN_STAGES)
    (w0, d0), (w1, d1) = pairs[0], pairs[-1]
    blocks = sum(cdiv(w.shape[0], DOWN_BLOCK_N) for w, _ in pairs)
    if extra is not None:  # the extra value's pointers and strides (x's, never read, without one)
        src, dst = extra
        src = src.reshape(batch, -1)
        e_args = [src, src.stride(0), dst, dst.stride(0), dst.stride(1)]
    else:
        e_args = [x, 0, x, 0, 0]
    _latent_down_kernel[(blocks, cdiv(batch, block_b))](
        x, x.stride(0), batch, k, slot if slot is not None else x,
        w0, w0.stride(0), w0.shape[0], d0, d0.stride(0), d0.stride(1),
        w1, w1.stride(0), w1.shape[0], d1, d1.stride(0), d1.stride(1),
        *e_args,
        NUM_W=len(pairs), HAS_SLOT=slot is not None, HAS_EXTRA=extra is not None, IEEE=x.dtype == torch.float32,
        INTERPRET=_interpreting(),
        BLOCK_B=block_b, BLOCK_N=DOWN_BLOCK_N, BLOCK_K=DOWN_BLOCK_K, num_warps=DOWN_WARPS, num_stages=stages,
    )
