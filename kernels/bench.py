"""Decode-attention latency: full-KV SDPA vs. unfused latent reconstruction vs. the fused kernel.

Library side of ``run_latency_kernel.py`` (paper Sec. 4, Fig. 5 "attention module speedup"): builds
random caches on a CUDA device, measures the device's two ceilings (copy bandwidth and fp16 matmul
rate), times the three paths per sequence length and returns plain dicts; no printing, no files.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F
import triton
import triton.testing

from .latent_attention import FUSED_KERNELS, LatentView, _host_offsets, latent_decode_attention

logger = logging.getLogger(__name__)

L2_ROTATE_BYTES = 256 * 2**20  # rotate input sets until one pass touches more than this (H100 L2 is 50 MB)


@dataclasses.dataclass(frozen=True)
class KernelBenchConfig:
    total_rank: int  # key latent channels summed over groups
    total_rank_v: int  # value latent channels summed over groups
    num_heads: int = 32
    num_kv_heads: int = 32
    head_dim: int = 128
    group_size: int = 4  # KV heads per group
    target_seq_lens: tuple[int, ...] = (4096, 16384, 65536)
    batch_size: int = 1
    bits: int = 16  # 16 = fp latents, else 2/3/4/8-bit latents (quant group 32, asymmetric)
    dtype: str = "float16"
    rope_theta: float = 5e5
    quant_group_size: int = 32
    fused_kernel: str = "auto"  # the timed "fused" path: a key of latent_attention.FUSED_KERNELS

    def __post_init__(self) -> None:
        if self.fused_kernel not in FUSED_KERNELS:
            raise ValueError(f"fused_kernel must be one of {sorted(FUSED_KERNELS)}, got {self.fused_kernel!r}")
        if self.num_kv_heads % self.group_size or self.num_heads % self.num_kv_heads:
            raise ValueError("group_size must divide num_kv_heads, which must divide num_heads")
        groups = self.num_kv_heads // self.group_size
        if self.total_rank % groups or self.total_rank_v % groups:
            raise ValueError(f"total ranks must split evenly over {groups} groups")
        if self.bits not in (2, 3, 4, 8, 16):
            raise ValueError(f"bits must be 2, 3, 4, 8 or 16, got {self.bits}")

    @property
    def decode_kwargs(self) -> dict:
        """latent_decode_attention keyword arguments of the timed "fused" path."""
        return dict(FUSED_KERNELS[self.fused_kernel])

    @property
    def num_groups(self) -> int:
        return self.num_kv_heads // self.group_size

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)


def measure_ceilings(device: torch.device) -> dict[str, float]:
    """Copy bandwidth (bytes read + written per second) and dense fp16 matmul FLOP/s, measured."""
    src = torch.empty(2**30, dtype=torch.uint8, device=device).random_()
    dst = torch.empty_like(src)
    copy_ms = triton.testing.do_bench(lambda: dst.copy_(src), return_mode="median")
    n = 8192
    a = torch.randn(n, n, dtype=torch.float16, device=device)
    b = torch.randn(n, n, dtype=torch.float16, device=device)
    mm_ms = triton.testing.do_bench(lambda: a @ b, return_mode="median")
    del src, dst, a, b
    return {"bandwidth_Bps": 2 * 2**30 / (copy_ms * 1e-3), "fp16_flops": 2 * n**3 / (mm_ms * 1e-3)}


def _quantize(x: torch.Tensor, bits: int, group: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random codes with plausible scale/zero in palu.quant's layout (values don't matter for timing)."""
    b, s, r = x.shape
    words = torch.randint(-(2**31), 2**31 - 1, (b, s, triton.cdiv(r, 32 // bits)), dtype=torch.int32, device=x.device,
                          generator=gen)
    scale = torch.rand(b, s, triton.cdiv(r, group), dtype=x.dtype, device=x.device, generator=gen) * 0.1 + 0.01
    zero = torch.full_like(scale, float(1 << (bits - 1)))
    return words, scale, zero


def make_problem(cfg: KernelBenchConfig, seq_len: int, device: torch.device, seed: int = 0) -> dict:
    """Kernel inputs (latents, up-projection, RoPE tables) for one sequence length."""
    gen = torch.Generator(device=device).manual_seed(seed)
    dt, B, D = cfg.torch_dtype, cfg.batch_size, cfg.head_dim
    rk, rv = cfg.total_rank // cfg.num_groups, cfg.total_rank_v // cfg.num_groups

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, device=device, dtype=torch.float32).to(dt)

    if cfg.bits == 16:
        k_view = LatentView(fp=randn(B, seq_len, cfg.total_rank), codes=None, scale=None, zero=None)
        v_view = LatentView(fp=randn(B, seq_len, cfg.total_rank_v), codes=None, scale=None, zero=None)
    else:
        views = []
        for r in (cfg.total_rank, cfg.total_rank_v):
            codes, scale, zero = _quantize(randn(B, 1, r).expand(B, seq_len, r), cfg.bits, cfg.quant_group_size, gen)
            views.append(LatentView(fp=None, codes=codes, scale=scale, zero=zero, bits=cfg.bits,
                                    quant_group_size=cfg.quant_group_size))
        k_view, v_view = views
    inv_freq = 1.0 / cfg.rope_theta ** (torch.arange(0, D, 2, dtype=torch.float32, device=device) / D)
    offsets = lambda r: torch.arange(0, cfg.num_groups + 1, dtype=torch.int32, device=device) * r  # noqa: E731
    return dict(
        q=randn(B, cfg.num_heads, D),
        k_latent=k_view,
        v_latent=v_view,
        k_up=randn(cfg.num_groups, cfg.group_size * D, rk) / math.sqrt(rk),
        k_offsets=offsets(rk),
        v_offsets=offsets(rv),
        positions=torch.arange(seq_len, dtype=torch.int32, device=device)[None].expand(B, seq_len).contiguous(),
        kv_start=torch.zeros(B, dtype=torch.int32, device=device),
        inv_freq=inv_freq,
        rope_scale=1.0,
        sm_scale=D**-0.5,
        head_group_size=cfg.group_size,
    )


def _dequant_torch(view: LatentView, rank: int, dtype: torch.dtype) -> torch.Tensor:
    if view.codes is None:
        return view.fp
    vpw = 32 // view.bits
    shifts = torch.arange(vpw, device=view.codes.device, dtype=torch.int32) * view.bits
    codes = ((view.codes[..., None] >> shifts) & ((1 << view.bits) - 1)).flatten(-2)[..., :rank]
    codes = codes.unflatten(-1, (-1, view.quant_group_size)).to(dtype)
    return ((codes - view.zero[..., None]) * view.scale[..., None]).flatten(-2)


def unfused_decode(p: dict) -> torch.Tensor:
    """The PyTorch path in the inputs' dtype: reconstruct all keys, RoPE, scores, softmax, p @ latent_v.

    Uniform ranks per group only (the benchmark's case). Returns (B, H, rv) like the kernel.
    """
    q, k_up = p["q"], p["k_up"]
    B, H, D = q.shape
    G, gs_d, rk = k_up.shape
    gs = gs_d // D
    # Host copy cached before capture: a .item()/int() of a CUDA tensor cannot run in a CUDA graph.
    v_off = _host_offsets(p["v_offsets"])
    rv = v_off[1] - v_off[0]
    latent_k = _dequant_torch(p["k_latent"], G * rk, q.dtype)  # (B, S, G*rk)
    latent_v = _dequant_torch(p["v_latent"], G * rv, q.dtype)
    S = latent_k.shape[1]
    keys = torch.einsum("bsgr,gnr->bgsn", latent_k.view(B, S, G, rk), k_up)  # (B, G, S, gs*D)
    keys = keys.view(B, G, S, gs, D).transpose(2, 3).reshape(B, G * gs, S, D)  # (B, H_kv, S, D)
    freqs = p["positions"].float()[..., None] * p["inv_freq"]  # (B, S, D/2)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = (emb.cos() * p["rope_scale"]).to(q.dtype)[:, None], (emb.sin() * p["rope_scale"]).to(q.dtype)[:, None]
    keys = keys * cos + torch.cat((-keys[..., D // 2 :], keys[..., : D // 2]), dim=-1) * sin
    n_rep = H // (G * gs)
    scores = torch.matmul(q.view(B, G * gs, n_rep, D), keys.transpose(-1, -2)) * p["sm_scale"]  # (B, H_kv, n_rep, S)
    probs = scores.float().softmax(-1).to(q.dtype).view(B, G, gs * n_rep, S)
    z = torch.matmul(probs, latent_v.view(B, S, G, rv).transpose(1, 2))  # (B, G, heads per group, rv)
    return z.view(B, H, rv)


def _bench(fns: list[Callable[[], object]]) -> float:
    """Median ms of one call, replayed from a CUDA graph (a decode step runs as one graph, so
    Python launch overhead is not the kernels' time); one call per input set in the graph so that
    L2 does not hold them, and the time divided by the number of sets. Falls back to eager
    ``do_bench`` (logged) if the path cannot be captured."""
    for fn in fns:  # compile and autotune outside the capture
        fn()
    try:
        ms = triton.testing.do_bench_cudagraph(lambda: [fn() for fn in fns], rep=300, return_mode="median")
        return ms / len(fns)
    except RuntimeError as err:
        logger.warning("CUDA-graph capture failed (%s); timing eagerly", err)
        state = {"i": 0}

        def step() -> None:
            fns[state["i"] % len(fns)]()
            state["i"] += 1

        return triton.testing.do_bench(step, warmup=50, rep=300, return_mode="median")


def kernel_breakdown(fn: Callable[[], object], iters: int = 20) -> dict[str, float]:
    """Average device microseconds per call of each CUDA kernel ``fn`` launches (torch profiler)."""
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    return {e.key: e.device_time_total / iters for e in prof.key_averages() if e.device_time_total > 0}


def fused_traffic(cfg: KernelBenchConfig, seq_len: int) -> tuple[float, float]:
    """(bytes, flops) one fused decode step must move/do at least."""
    B, S, elt = cfg.batch_size, seq_len, torch.finfo(cfg.torch_dtype).bits // 8
    if cfg.bits == 16:
        latent = (cfg.total_rank + cfg.total_rank_v) * elt
    else:
        latent = sum(4 * triton.cdiv(r, 32 // cfg.bits) + 2 * elt * triton.cdiv(r, cfg.quant_group_size)
                     for r in (cfg.total_rank, cfg.total_rank_v))
    rk, rv = cfg.total_rank // cfg.num_groups, cfg.total_rank_v // cfg.num_groups
    bytes_ = B * S * (latent + 4) + cfg.num_groups * cfg.group_size * cfg.head_dim * rk * elt
    flops = 2 * B * S * (cfg.num_kv_heads * cfg.head_dim * rk + cfg.num_heads * (cfg.head_dim + rv))
    return float(bytes_), float(flops)


def sdpa_traffic(cfg: KernelBenchConfig, seq_len: int) -> tuple[float, float]:
    elt = torch.finfo(cfg.torch_dtype).bits // 8
    bytes_ = 2 * cfg.batch_size * seq_len * cfg.num_kv_heads * cfg.head_dim * elt
    flops = 4 * cfg.batch_size * cfg.num_heads * seq_len * cfg.head_dim
    return float(bytes_), float(flops)


def _entry(ms: Optional[float], traffic: tuple[float, float], ceilings: dict[str, float]) -> dict:
    bytes_, flops = traffic
    floor_s = max(bytes_ / ceilings["bandwidth_Bps"], flops / ceilings["fp16_flops"])
    out = {"bytes": bytes_, "flops": flops, "roofline_us": floor_s * 1e6, "time_us": None}
    if ms is not None:
        t = ms * 1e-3
        out.update(time_us=t * 1e6, GBps=bytes_ / t / 1e9, TFLOPs=flops / t / 1e12, pct_roofline=100 * floor_s / t)
    return out


def _try(fn: Callable[[], float]) -> Optional[float]:
    try:
        return fn()
    except torch.OutOfMemoryError:
        logger.warning("out of memory; skipped")
        torch.cuda.empty_cache()
        return None


def run_seq_len(cfg: KernelBenchConfig, seq_len: int, ceilings: dict[str, float], device: torch.device) -> dict:
    """Times SDPA on full K/V, the unfused latent path and the fused kernel at one length."""
    B, H, Hkv, D, dt = cfg.batch_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.torch_dtype
    result: dict = {"seq_len": seq_len}

    full_bytes = sdpa_traffic(cfg, seq_len)[0]
    sets = max(1, min(4, math.ceil(L2_ROTATE_BYTES / full_bytes)))
    # A private generator: a failed graph capture would leave the default CUDA generator unusable.
    gen = torch.Generator(device=device).manual_seed(seq_len)
    q = torch.randn(B, H, 1, D, dtype=dt, device=device, generator=gen)
    kv = [(torch.randn(B, Hkv, seq_len, D, dtype=dt, device=device, generator=gen),
           torch.randn(B, Hkv, seq_len, D, dtype=dt, device=device, generator=gen)) for _ in range(sets)]
    sdpa = [lambda k=k, v=v: F.scaled_dot_product_attention(q, k, v, enable_gqa=H != Hkv) for k, v in kv]
    result["sdpa"] = _entry(_try(lambda: _bench(sdpa)), sdpa_traffic(cfg, seq_len), ceilings)
    del kv, sdpa
    torch.cuda.empty_cache()

    latent_bytes = fused_traffic(cfg, seq_len)[0]
    sets = max(1, min(4, math.ceil(L2_ROTATE_BYTES / latent_bytes)))
    problems = [make_problem(cfg, seq_len, device, seed=i) for i in range(sets)]
    kw = cfg.decode_kwargs
    latent_decode_attention(**problems[0], **kw)  # autotune outside the timed region
    fused = [lambda p=p: latent_decode_attention(**p, **kw) for p in problems]
    result["fused"] = _entry(_try(lambda: _bench(fused)), fused_traffic(cfg, seq_len), ceilings)
    result["fused_kernels_us"] = kernel_breakdown(fused[0])
    if cfg.num_heads == cfg.num_kv_heads:  # the reconstruction kernel (the fold path's alternative)
        recon = [lambda p=p: latent_decode_attention(**p, method="rope_qk") for p in problems]
        result["fused_rope_qk"] = _entry(_try(lambda: _bench(recon)), fused_traffic(cfg, seq_len), ceilings)
    unfused = [lambda p=p: unfused_decode(p) for p in problems]
    result["unfused"] = _entry(_try(lambda: _bench(unfused)), fused_traffic(cfg, seq_len), ceilings)
    if cfg.bits == 16:  # the unfused path computes the same function: keep it honest
        ref, out = unfused_decode(problems[0]).float(), latent_decode_attention(**problems[0], **kw)
        result["fused_vs_unfused_rel_err"] = ((out - ref).norm() / ref.norm()).item()
    del problems, fused, unfused
    torch.cuda.empty_cache()
    for name in ("unfused", "fused", "fused_rope_qk"):
        if name in result and result[name]["time_us"] and result["sdpa"]["time_us"]:
            result[name]["speedup_vs_sdpa"] = result["sdpa"]["time_us"] / result[name]["time_us"]
    return result


def run_kernel_bench(cfg: KernelBenchConfig, device: torch.device) -> dict:
    """All sequence lengths of ``cfg``; returns config, device, ceilings and per-length results."""
    ceilings = measure_ceilings(device)
    results = [run_seq_len(cfg, s, ceilings, device) for s in cfg.target_seq_lens]
    return {
        "config": dataclasses.asdict(cfg),
        "device": torch.cuda.get_device_name(device),
        "ceilings": ceilings,
        "results": results,
    }
