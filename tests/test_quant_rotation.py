import copy

import pytest
import torch

from palu import LatentQuantConfig, configure
from palu.quant import bits_per_element, dequantize, fake_quant, pack_codes, quantize, unpack_codes
from palu.rotation import hadamard_matrix

from .helpers import compress_plain, tiny_model


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_pack_unpack_roundtrip(bits):
    codes = torch.randint(0, 2**bits, (3, 5, 37))
    words = pack_codes(codes, bits)
    assert words.dtype == torch.int32 and words.shape[-1] == -(-37 // (32 // bits))
    assert torch.equal(unpack_codes(words, bits, 37), codes.to(torch.int32))


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("sym", [False, True])
def test_quant_error_shrinks_with_bits_and_is_bounded(bits, sym):
    x = torch.randn(4, 9, 70)
    cfg = LatentQuantConfig(bits=bits, group_size=16, sym=sym)
    q = quantize(x, cfg)
    deq = dequantize(q, 16, x.dtype)
    assert deq.shape == x.shape
    step = (x.unflatten(-1, (-1, 14)).abs().amax() * 2) / (2**bits - 1)
    assert (deq - x).abs().max() <= step  # within one quantization step of the widest group
    assert torch.equal(fake_quant(x, cfg), deq)


def test_more_bits_less_error_and_identity_at_16():
    x = torch.randn(2, 8, 64)
    errs = [(fake_quant(x, LatentQuantConfig(bits=b)) - x).norm().item() for b in (2, 3, 4, 8)]
    assert errs == sorted(errs, reverse=True)
    assert fake_quant(x, LatentQuantConfig(bits=16)) is x


def test_bits_per_element_counts_overhead():
    assert bits_per_element(LatentQuantConfig(bits=4, group_size=32)) == 4 + 2 * 16 / 32
    assert bits_per_element(LatentQuantConfig(bits=3, group_size=32, sym=True)) == 3.2 + 16 / 32
    assert bits_per_element(LatentQuantConfig()) == 16


@pytest.mark.parametrize("n", [1, 2, 4, 12, 16, 20, 28, 32, 36, 64, 96, 160, 224, 288, 40, 24])
def test_hadamard_is_orthonormal_and_plus_minus(n):
    h = hadamard_matrix(n)
    torch.testing.assert_close(h @ h.T, torch.eye(n, dtype=torch.float64), rtol=0, atol=1e-12)
    if n in (1, 2, 4, 12, 16, 20, 28, 32, 64, 96, 160):  # true Hadamard orders: all entries ±1/√n
        torch.testing.assert_close(h.abs(), torch.full_like(h, n**-0.5))


def test_hadamard_fusion_leaves_outputs_unchanged():
    base = compress_plain(tiny_model("qwen2"), ratio=0.5, multiple=4)
    rotated = copy.deepcopy(base)
    configure(rotated, quant=LatentQuantConfig(bits=16, hadamard=True))
    assert rotated.config.palu["hadamard_fused"]
    x = torch.randint(0, 128, (2, 24))
    with torch.no_grad():
        torch.testing.assert_close(rotated(x).logits, base(x).logits, rtol=1e-4, atol=1e-4)
    down_before = base.model.layers[0].self_attn.k_proj.down.weight
    assert not torch.allclose(rotated.model.layers[0].self_attn.k_proj.down.weight, down_before)
    configure(rotated, quant=LatentQuantConfig(bits=16, hadamard=True))  # idempotent: no second rotation
    with torch.no_grad():
        torch.testing.assert_close(rotated(x).logits, base(x).logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("offset", [10.0, -10.0])
def test_groups_that_do_not_straddle_zero_do_not_saturate(offset):
    x = offset + torch.rand(2, 32)
    err = (fake_quant(x, LatentQuantConfig(bits=4)) - x).abs().max()
    assert err <= 1.0 / 15 / 2 + 1e-2  # half a step of the group's range (plus fp rounding of the zero-point)


def test_partial_trailing_group_uses_its_own_range():
    x = torch.cat([torch.randn(1, 32), 5 + 0.01 * torch.rand(1, 3)], -1)  # 35 channels, last group = 3 values near 5
    deq = fake_quant(x, LatentQuantConfig(bits=4, group_size=32))
    assert (deq[:, 32:] - x[:, 32:]).abs().max() < 0.01
