"""Quantization-only KV baselines (KIVI, per-token) on tiny random models: numerics, wrapper exactness, byte counts."""
from __future__ import annotations

import copy

import pytest
import torch

from palu.kv_quant import (
    KVQuantAttention,
    KVQuantConfig,
    apply_kv_quant,
    bits_per_kv_element,
    fake_quant_groups,
    fake_quant_kv,
    kv_bytes_per_token,
    nominal_bits_per_element,
    remove_kv_quant,
)

from .helpers import tiny_config, tiny_model


def _kv(seed: int = 0, s: int = 40):
    gen = torch.Generator().manual_seed(seed)
    k = torch.randn(2, 2, s, 16, generator=gen)
    k[..., 3] *= 20.0  # an outlier key channel, as post-RoPE keys have
    return k, torch.randn(2, 2, s, 16, generator=gen)


def test_config_validates_and_round_trips():
    cfg = KVQuantConfig("per_token", 3, 16, 0, sym=True)
    assert KVQuantConfig.from_dict(cfg.to_dict()) == cfg
    for bad in ({"bits": 16}, {"bits": 5}, {"group_size": 0}, {"residual_length": -1}, {"clip_ratio": 0.0}, {"method": "x"}):
        with pytest.raises(ValueError):
            KVQuantConfig(**bad)


@pytest.mark.parametrize("method", ["kivi", "per_token"])
def test_error_falls_as_bits_rise(method):
    k, v = _kv()
    errs = []
    for bits in (2, 3, 4, 8):
        kq, vq = fake_quant_kv(k, v, KVQuantConfig(method, bits, 8, 4))
        errs.append(((kq - k).norm() + (vq - v).norm()).item())
    assert errs == sorted(errs, reverse=True) and errs[-1] < 0.05 * errs[0]


def test_kivi_residual_window_is_exact_and_the_rest_is_not():
    k, v = _kv(s=37)
    kq, vq = fake_quant_kv(k, v, KVQuantConfig("kivi", 2, 8, residual_length=5))
    assert torch.equal(kq[..., -5:, :], k[..., -5:, :]) and torch.equal(vq[..., -5:, :], v[..., -5:, :])
    assert not torch.equal(kq[..., :-5, :], k[..., :-5, :]) and not torch.equal(vq[..., :-5, :], v[..., :-5, :])
    short, _ = fake_quant_kv(k[..., :5, :], v[..., :5, :], KVQuantConfig("kivi", 2, 8, residual_length=5))
    assert torch.equal(short, k[..., :5, :])  # context inside the window: nothing quantized


def test_kivi_keys_are_per_channel():
    # An outlier channel widens every per-token group it joins; per-channel groups keep it to itself.
    k, v = _kv()
    normal = [0, 1, 2, 4, 5, 6, 7]  # the outlier's per-token group (channels 0-7), outlier excluded
    err = {m: (fake_quant_kv(k, v, KVQuantConfig(m, 4, 8, 0))[0] - k)[..., normal].norm().item() for m in ("kivi", "per_token")}
    assert err["kivi"] < 0.2 * err["per_token"]


def test_trailing_partial_group_uses_its_own_range():
    x = 10.0 + torch.rand(3, 13)  # 13 = 8 + a partial group of 5, all far from zero
    err = (fake_quant_groups(x, KVQuantConfig("per_token", 8, 8, 0)) - x).abs().max()
    assert err <= 1.0 / 255  # zero padding would stretch the range to [0, 11]


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2"])
def test_wrapper_is_exact_without_quantized_tokens_and_removable(arch):
    base = tiny_model(arch)
    x = torch.randint(0, 128, (2, 24))
    with torch.no_grad():
        ref = base(x).logits
        wrapped = apply_kv_quant(copy.deepcopy(base), KVQuantConfig("kivi", 2, 8, residual_length=24))
        assert isinstance(wrapped.model.layers[0].self_attn, KVQuantAttention)
        assert wrapped.state_dict().keys() == base.state_dict().keys()
        torch.testing.assert_close(wrapped(x).logits, ref, rtol=1e-5, atol=1e-5)
        apply_kv_quant(wrapped, KVQuantConfig("kivi", 2, 8, residual_length=4))  # re-config, not stacked
        assert not isinstance(wrapped.model.layers[0].self_attn.q_proj, KVQuantAttention)
        assert (wrapped(x).logits - ref).abs().max() > 1e-3
        remove_kv_quant(wrapped)
        assert type(wrapped.model.layers[0].self_attn) is type(base.model.layers[0].self_attn)
        torch.testing.assert_close(wrapped(x).logits, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["kivi", "per_token"])
def test_model_error_falls_as_bits_rise(method):
    base = tiny_model("llama")
    x = torch.randint(0, 128, (1, 40))
    with torch.no_grad():
        ref = base(x).logits
        errs = [(apply_kv_quant(base, KVQuantConfig(method, b, 8, 8))(x).logits - ref).norm().item() for b in (2, 4, 8)]
    remove_kv_quant(base)
    assert errs == sorted(errs, reverse=True)


def test_bytes_match_hand_counts():
    cfg = tiny_config()  # 2 layers, 2 KV heads, head_dim 16: 64 K+V elements per token per layer
    assert kv_bytes_per_token(cfg, None, 7) == 2 * 2 * 2 * 32
    # KIVI 4-bit, 8-token key groups, residual 4, context 20 -> 16 quantized tokens per layer:
    #   keys   32 channels x (2 words x 4 B + 2 groups x (scale + zero) x 2 B) = 512
    #   values 16 tokens x 2 heads x (2 words x 4 B + 2 groups x 2 x 2 B)    = 512
    #   residual 4 tokens x 64 elements x 2 B                                = 512
    assert kv_bytes_per_token(cfg, KVQuantConfig("kivi", 4, 8, 4), 20) == 2 * 1536 / 20
    # per-token 3-bit (10 codes per int32: 16 channels -> 2 words), symmetric (scale only), no residual:
    #   K and V: 10 tokens x 2 heads x (2 x 4 B + 2 groups x 2 B) = 240 each
    assert kv_bytes_per_token(cfg, KVQuantConfig("per_token", 3, 8, 0, sym=True), 10) == 2 * 480 / 10
    # everything divides: bytes = elements x bits_per_element / 8
    big = tiny_config(head_dim=64, num_kv_heads=3, num_heads=6, hidden_size=96)
    for method in ("kivi", "per_token"):
        q = KVQuantConfig(method, 4, 32, 0)
        expected = 2 * 2 * 3 * 64 * nominal_bits_per_element(q) / 8  # layers x (K, V) x H_kv x D
        assert kv_bytes_per_token(big, q, 1024) == expected
        assert bits_per_kv_element(big, expected) == 4 + 2 * 16 / 32
    assert bits_per_kv_element(cfg, kv_bytes_per_token(cfg, None, 1)) == 16
