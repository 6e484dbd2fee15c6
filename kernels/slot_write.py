"""One launch that stores each sequence's new token at a slot held on the device (graph decoding's cache write).

:class:`palu.graph_decode.GraphDecoder` writes every layer's new key latent, value latent and position at
``slot[b]`` of right-aligned buffers, a device tensor that advances inside a CUDA graph. ``Tensor.scatter_`` does
it in one launch per tensor with an index expanded to every element (3 launches and ~4 us each per layer on an
H200, twenty-fifth session); this kernel stores up to MAX_PAIRS tensors of any dtypes in one launch.
The reference is :func:`write_slots_ref` (plain indexing).
"""
from __future__ import annotations

from typing import Sequence

import torch
import triton
import triton.language as tl

from .host_math import cdiv

MAX_PAIRS = 4  # (src, dst) pairs per launch; more are launched in groups
BLOCK = 1024  # elements of one row per program (a program stores column block j of every pair)


@triton.jit
def _store_row(slot, b, j, src, src_sb, dst, dst_sb, dst_ss, width, BLOCK: tl.constexpr):
    """dst[b, slot, j*BLOCK : (j+1)*BLOCK] = src[b, j*BLOCK : ...] (masked to width; width 0 stores nothing)."""
    col = j * BLOCK + tl.arange(0, BLOCK)
    mask = col < width
    x = tl.load(src + b * src_sb + col, mask=mask)
    tl.store(dst + b * dst_sb + slot * dst_ss + col, x.to(dst.dtype.element_ty), mask=mask)


@triton.jit
def _write_slots_kernel(
    slot_ptr,
    s0, s0_b, d0, d0_b, d0_s, w0,
    s1, s1_b, d1, d1_b, d1_s, w1,
    s2, s2_b, d2, d2_b, d2_s, w2,
    s3, s3_b, d3, d3_b, d3_s, w3,
    NUM_PAIRS: tl.constexpr, BLOCK: tl.constexpr,
):
    """Grid (B, cdiv(max width, BLOCK)): pair i's row b goes to dst_i[b, slot[b]] (int64 offsets: buffers of
    many slots exceed 2^31 elements)."""
    b = tl.program_id(0).to(tl.int64)
    j = tl.program_id(1)
    slot = tl.load(slot_ptr + b).to(tl.int64)
    _store_row(slot, b, j, s0, s0_b, d0, d0_b, d0_s, w0, BLOCK)
    if NUM_PAIRS > 1:
        _store_row(slot, b, j, s1, s1_b, d1, d1_b, d1_s, w1, BLOCK)
    if NUM_PAIRS > 2:
        _store_row(slot, b, j, s2, s2_b, d2, d2_b, d2_s, w2, BLOCK)
    if NUM_PAIRS > 3:
        _store_row(slot, b, j, s3, s3_b, d3, d3_b, d3_s, w3, BLOCK)


def _check(slot: torch.Tensor, pairs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> int:
    """Batch size, after checking the shapes, dtypes and devices write_slots needs."""
    if slot.dim() != 1 or slot.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"slot must be (B,) int32/int64, got {tuple(slot.shape)} {slot.dtype}")
    batch = slot.shape[0]
    for i, (src, dst) in enumerate(pairs):
        if dst.dim() != 3 or dst.shape[0] != batch or dst.stride(2) != 1:
            raise ValueError(f"pair {i}: dst must be (B={batch}, slots, W) with a contiguous last dim, got "
                             f"{tuple(dst.shape)} strides {dst.stride()}")
        if src.numel() != batch * dst.shape[2] or src.stride(-1) != 1 or (src.dim() == 3 and src.shape[1] != 1):
            raise ValueError(f"pair {i}: src must be (B, W) or (B, 1, W) = ({batch}, {dst.shape[2]}) with a "
                             f"contiguous last dim, got {tuple(src.shape)}")
        if src.device != slot.device or dst.device != slot.device:
            raise ValueError(f"pair {i}: src, dst and slot must be on one device")
    return batch


def write_slots_ref(slot: torch.Tensor, pairs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """dst[b, slot[b]] = src[b] for every (src (B, W) or (B, 1, W), dst (B, C, W)) pair."""
    _check(slot, pairs)
    rows = torch.arange(slot.shape[0], device=slot.device)
    for src, dst in pairs:
        dst[rows, slot.long()] = src.reshape(dst.shape[0], dst.shape[2]).to(dst.dtype)


def write_slots(slot: torch.Tensor, pairs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """As :func:`write_slots_ref` in ceil(len(pairs) / MAX_PAIRS) launches (no host sync: graph-safe)."""
    batch = _check(slot, pairs)
    for start in range(0, len(pairs), MAX_PAIRS):
        group = list(pairs[start:start + MAX_PAIRS])
        width = max(dst.shape[2] for _, dst in group)
        args = []
        for src, dst in group + [group[0]] * (MAX_PAIRS - len(group)):  # unused pairs: never read (NUM_PAIRS)
            args += [src, src.stride(0), dst, dst.stride(0), dst.stride(1), dst.shape[2]]
        _write_slots_kernel[(batch, cdiv(width, BLOCK))](slot, *args, NUM_PAIRS=len(group), BLOCK=BLOCK,
                                                       num_warps=4)
