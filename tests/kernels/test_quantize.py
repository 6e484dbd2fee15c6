"""kernels.quantize (one-launch latent quantization) against palu.quant.quantize, bit for bit."""
from __future__ import annotations

import pytest
import torch

from kernels.quantize import quantize_into
from palu.config import LatentQuantConfig
from palu.quant import quantize


def _run(x: torch.Tensor, cfg: LatentQuantConfig, slack: int = 0):
    """Kernel output written into views of larger buffers (slack extra token slots, like a cache)."""
    ref = quantize(x, cfg)
    b, n, _ = x.shape
    codes = torch.full((b, n + slack, ref.codes.shape[-1]), -7, dtype=torch.int32, device=x.device)
    scale = torch.full((b, n + slack, ref.scale.shape[-1]), 9.0, dtype=x.dtype, device=x.device)
    zero = None if cfg.sym else torch.full_like(scale, 9.0)
    quantize_into(x, cfg.bits, cfg.group_size, cfg.sym, cfg.clip_ratio, codes[:, :n], scale[:, :n],
                  None if zero is None else zero[:, :n])
    if slack:  # slots past the view untouched
        assert (codes[:, n:] == -7).all() and (scale[:, n:] == 9.0).all()
    return ref, codes[:, :n], scale[:, :n], None if zero is None else zero[:, :n]


def _assert_same(ref, codes, scale, zero):
    assert torch.equal(codes, ref.codes), f"{(codes != ref.codes).sum().item()} words differ"
    assert torch.equal(scale, ref.scale)
    if ref.zero is not None:
        assert torch.equal(zero, ref.zero)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("sym", [False, True], ids=["asym", "sym"])
@pytest.mark.parametrize("rank,group", [(64, 32), (100, 16), (57, 24)])
def test_interpreter_quantize_matches_torch(device, bits, sym, rank, group):
    """Awkward ranks (partial last group, 3-bit words crossing groups, a group size not a power of two)."""
    cfg = LatentQuantConfig(bits=bits, group_size=group, sym=sym, clip_ratio=0.9 if sym else 1.0)
    gen = torch.Generator().manual_seed(bits * 1000 + rank)
    x = (torch.randn(2, 3, rank, generator=gen) * 3).to(torch.float16).to(device)
    x[0, 0, :group] = 0.25  # a constant group: the scale floor (not 0 in fp16: no NaN codes)
    x[1, 2, -group:] = 0.0
    _assert_same(*_run(x, cfg, slack=2))


def test_constant_groups_round_trip_without_nan():
    """A group of equal values (all-zero latents, e.g. padding) dequantizes to finite values near it."""
    from palu.quant import dequantize

    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        x = torch.zeros(1, 2, 64, dtype=dtype)
        x[0, 1] = 0.3
        for sym in (False, True):
            cfg = LatentQuantConfig(bits=4, group_size=32, sym=sym)
            back = dequantize(quantize(x, cfg), 32, dtype)
            assert torch.isfinite(back).all()
            torch.testing.assert_close(back.float(), x.float(), atol=2e-3, rtol=0)


def test_interpreter_quantize_fp32_strided_input(device):
    cfg = LatentQuantConfig(bits=4, group_size=32)
    x = torch.randn(2, 5, 160, generator=torch.Generator().manual_seed(1)).to(device)[:, ::2, :96]  # strided rows
    _assert_same(*_run(x, cfg))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("sym", [False, True], ids=["asym", "sym"])
def test_gpu_quantize_matches_torch(dtype, bits, sym):
    """Compiled: IEEE division and round-half-even must survive code generation (bit equality)."""
    cfg = LatentQuantConfig(bits=bits, group_size=32, sym=sym)
    gen = torch.Generator(device="cuda").manual_seed(bits)
    for rank in (1024, 3072, 100):
        x = (torch.randn(3, 257, rank, generator=gen, device="cuda") * 2).to(dtype)
        _assert_same(*_run(x, cfg, slack=3))


@pytest.mark.gpu
@pytest.mark.parametrize("residual", [0, 3])
@pytest.mark.parametrize("bits", [3, 4])
def test_gpu_cache_store_quantizes_like_the_cpu_store(residual, bits):
    """LatentStore on CUDA (one kernel launch per append, writing into the buffers) holds the same
    codes, scales and zero-points as on CPU (palu.quant.quantize), prompt and decode steps alike."""
    from palu.modules.cache import LatentStore

    cfg = LatentQuantConfig(bits=bits, group_size=32, residual_length=residual)
    gen = torch.Generator().manual_seed(0)
    steps = [torch.randn(2, 300, 96, generator=gen).half()] + [torch.randn(2, 1, 96, generator=gen).half()
                                                                for _ in range(5)]
    stores = {dev: LatentStore(cfg) for dev in ("cpu", "cuda")}
    for x in steps:
        for dev, store in stores.items():
            store.append(x.to(dev))
    cpu, gpu = stores["cpu"], stores["cuda"]
    assert gpu.n_quantized == cpu.n_quantized == 305 - residual
    for a, b in ((cpu.codes, gpu.codes), (cpu.scale, gpu.scale), (cpu.zero, gpu.zero), (cpu.fp, gpu.fp)):
        if a.length:
            assert torch.equal(a.view(), b.view().cpu())
