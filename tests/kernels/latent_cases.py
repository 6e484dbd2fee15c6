"""Random decode problems for the latent-attention kernel tests (inputs only; no assertions)."""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

import torch

from kernels import LatentView
from palu.config import LatentQuantConfig
from palu.quant import quantize


def rope_inv_freq(head_dim: int, theta: float, llama3: bool = False) -> torch.Tensor:
    """(D/2,) fp32 inverse frequencies; `llama3` applies Llama-3.1's frequency-dependent scaling."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    if not llama3:
        return inv_freq
    factor, low, high, original = 8.0, 1.0, 4.0, 8192
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > original / low, inv_freq / factor, inv_freq)
    smooth = (original / wavelen - low) / (high - low)
    mid = (1 - smooth) * scaled / factor + smooth * scaled
    is_mid = (wavelen >= original / high) & (wavelen <= original / low)
    return torch.where(is_mid, mid, scaled)


def offsets_of(ranks: list[int]) -> torch.Tensor:
    return torch.tensor([0, *torch.tensor(ranks).cumsum(0).tolist()], dtype=torch.int32)


@dataclasses.dataclass
class Case:
    num_heads: int = 4
    num_kv_heads: int = 4
    head_dim: int = 64
    group_size: int = 2
    k_ranks: tuple[int, ...] = (24, 40)
    v_ranks: tuple[int, ...] = (17, 32)
    num_slots: int = 37
    batch: int = 2
    dtype: torch.dtype = torch.float16
    theta: float = 1e4
    llama3: bool = False
    rope_scale: float = 1.0
    bits: int = 16
    sym: bool = False
    num_quantized: Optional[int] = None  # default: all but 5 slots when bits < 16
    quant_group_size: int = 32
    left_pad: bool = True
    bias: bool = False
    row_pad: int = 0  # extra capacity per fp row (row stride > R)
    seed: int = 0


def _view(x: torch.Tensor, case: Case, num_quantized: int) -> LatentView:
    """(B, S, R) fp32 latents -> LatentView with slots [0, num_quantized) quantized."""
    fp_part = x[:, num_quantized:].to(case.dtype)
    if case.row_pad:
        buf = torch.randn(*fp_part.shape[:2], fp_part.shape[2] + case.row_pad, dtype=case.dtype, device=x.device)
        buf[..., : fp_part.shape[2]] = fp_part
        fp_part = buf[..., : fp_part.shape[2]]
    if num_quantized == 0:
        return LatentView(fp=fp_part, codes=None, scale=None, zero=None)
    cfg = LatentQuantConfig(bits=case.bits, group_size=case.quant_group_size, sym=case.sym)
    packed = quantize(x[:, :num_quantized].to(case.dtype), cfg)
    return LatentView(
        fp=fp_part if fp_part.shape[1] else None,
        codes=packed.codes, scale=packed.scale, zero=packed.zero,
        bits=case.bits, quant_group_size=case.quant_group_size,
    )


def make_inputs(case: Case, device: torch.device) -> dict:
    """Keyword arguments of latent_decode_attention for `case`, on `device`."""
    gen = torch.Generator().manual_seed(case.seed)
    B, H, D, S = case.batch, case.num_heads, case.head_dim, case.num_slots
    num_groups = case.num_kv_heads // case.group_size
    assert len(case.k_ranks) == num_groups and len(case.v_ranks) == num_groups
    rk_max = max(case.k_ranks)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen)

    k_up = torch.zeros(num_groups, case.group_size * D, rk_max)
    for g, r in enumerate(case.k_ranks):
        k_up[g, :, :r] = randn(case.group_size * D, r) / math.sqrt(r)  # keys ~ N(0, 1)
    latent_k = randn(B, S, sum(case.k_ranks))
    latent_v = randn(B, S, sum(case.v_ranks))
    num_quantized = 0
    if case.bits < 16:
        num_quantized = case.num_quantized if case.num_quantized is not None else max(S - 5, 0)
    kv_start = torch.zeros(B, dtype=torch.int32)
    if case.left_pad and B > 1:
        kv_start[1] = min(S - 1, max(1, S // 3))
    base = torch.randint(0, 20000, (B, 1), generator=gen, dtype=torch.int32)
    positions = (base + torch.arange(S, dtype=torch.int32)[None]).to(torch.int32)
    to = dict(device=device)
    return dict(
        q=randn(B, H, D).to(case.dtype).to(**to),
        k_latent=_view(latent_k.to(**to), case, num_quantized),
        v_latent=_view(latent_v.to(**to), case, num_quantized),
        k_up=k_up.to(case.dtype).to(**to),
        k_offsets=offsets_of(list(case.k_ranks)).to(**to),
        v_offsets=offsets_of(list(case.v_ranks)).to(**to),
        positions=positions.to(**to),
        kv_start=kv_start.to(**to),
        inv_freq=rope_inv_freq(D, case.theta, case.llama3).to(**to),
        rope_scale=case.rope_scale,
        sm_scale=D**-0.5,
        head_group_size=case.group_size,
        k_bias=(randn(case.num_kv_heads * D) * 0.5).to(case.dtype).to(**to) if case.bias else None,
    )


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def tolerance(dtype: torch.dtype, device: torch.device) -> float:
    """‖out − ref‖/‖ref‖ bound: fp32 inputs meet tf32 dots on a GPU (Triton's default), exact numpy on CPU."""
    if dtype == torch.float32:
        return 5e-3 if device.type == "cuda" else 1e-4
    return {torch.float16: 3e-3, torch.bfloat16: 1.5e-2}[dtype]
