"""The latent cache reports the bytes it holds, and holds far fewer than DynamicCache."""
import torch
from transformers import DynamicCache

from palu import LatentQuantConfig, PaluCache, cache_nbytes, configure
from palu.modules import PaluLatentLayer

from .helpers import compress_plain, tiny_model


def _held_bytes(layer: PaluLatentLayer, used_only: bool) -> int:
    """Independent count: walk every tensor the layer holds."""
    total = 0
    for store in (layer.k, layer.v):
        for part in store.parts():
            if part.buf is not None:
                n = part.length if used_only else part.buf.shape[1]
                total += part.buf[:, :n].numel() * part.buf.element_size()
    if layer.positions.buf is not None:
        n = layer.positions.length if used_only else layer.positions.buf.shape[1]
        total += layer.positions.buf[:, :n].numel() * 4
    return total


def _fill(model, quant, prompt_len=40, steps=30):
    configure(model, quant=quant)
    cache = PaluCache()
    x = torch.randint(3, 128, (2, prompt_len))
    with torch.no_grad():
        out = model(x, past_key_values=cache, use_cache=True)
        tok = out.logits[:, -1:].argmax(-1)
        for _ in range(steps):
            tok = model(tok, past_key_values=cache, use_cache=True).logits[:, -1:].argmax(-1)
    return cache


def test_nbytes_matches_held_tensors_fp_and_quantized():
    model = compress_plain(tiny_model(num_kv_heads=2, head_dim=32), ratio=0.5, multiple=8)
    for quant in (LatentQuantConfig(), LatentQuantConfig(bits=4, group_size=8, residual_length=5)):
        cache = _fill(model, quant)
        for layer in cache.layers:
            assert layer.get_seq_length() == 70
            assert layer.nbytes(True) == _held_bytes(layer, True)
            assert layer.nbytes(False) == _held_bytes(layer, False) >= layer.nbytes(True)
            if quant.enabled:
                assert layer.k.n_quantized == 65 and layer.k.fp.length == 5
        assert cache_nbytes(cache) == sum(layer.nbytes() for layer in cache.layers)


def test_latent_cache_is_smaller_than_dynamic_cache():
    base = tiny_model(num_kv_heads=2, head_dim=32)
    x = torch.randint(3, 128, (2, 70))
    with torch.no_grad():
        dyn = DynamicCache()
        base(x, past_key_values=dyn, use_cache=True)
    full = cache_nbytes(dyn)
    model = compress_plain(base, ratio=0.5, multiple=8)
    fp = cache_nbytes(_fill(model, LatentQuantConfig(), 40, 30))
    q4 = cache_nbytes(_fill(model, LatentQuantConfig(bits=4, group_size=8), 40, 30))
    # 50% of K+V dims in fp32 latents plus one int32 position per slot and layer.
    assert fp == full * 0.5 + 2 * 70 * 2 * 4
    # Per slot, layer and projection (R = 32 latents): 4 int32 words of 4-bit codes + 4 fp32 scales + 4 zeros.
    assert q4 == 2 * 70 * 2 * (2 * (4 + 4 + 4) * 4 + 4)


def test_quantized_prompt_leaves_a_small_fp_window():
    """A long prompt goes straight to the packed part: the fp window's capacity stays bounded by the
    residual window plus one growth step, not the prompt length (it used to keep the whole prompt's)."""
    from palu.modules.cache import _MIN_GROW, LatentStore

    for residual in (0, 5):
        store = LatentStore(LatentQuantConfig(bits=4, group_size=8, residual_length=residual))
        x = torch.randn(2, 3000, 16)
        store.append(x)
        for i in range(3):
            store.append(torch.randn(2, 1, 16))
        assert store.fp.length == residual and store.n_quantized == 3003 - residual
        assert store.fp.buf.shape[1] <= residual + _MIN_GROW
        full = store.materialize(torch.float32)
        assert full.shape == (2, 3003, 16)
        torch.testing.assert_close(full[:, :3000], x, atol=0.5, rtol=0)  # 4-bit round trip of the prompt


def test_reserved_cache_allocates_once_and_decodes_the_same():
    """PaluCache(max_len=N): each buffer is allocated once at N slots (no growth chain while filling in
    chunks or decoding), the fp window of a quantized cache stays small, and logits do not change."""
    model = compress_plain(tiny_model(num_kv_heads=2, head_dim=32), ratio=0.5, multiple=8)
    x = torch.randint(3, 128, (2, 40))
    for quant in (LatentQuantConfig(), LatentQuantConfig(bits=4, group_size=8, residual_length=5)):
        configure(model, quant=quant)
        logits = []
        for cache in (PaluCache(), PaluCache(max_len=60)):
            with torch.no_grad():
                out = [model(x[:, :25], past_key_values=cache, use_cache=True).logits]
                out.append(model(x[:, 25:], past_key_values=cache, use_cache=True).logits)  # a second chunk
                for i in range(10):
                    out.append(model(x[:, i : i + 1], past_key_values=cache, use_cache=True).logits)
            logits.append(torch.cat(out, dim=1))
        torch.testing.assert_close(logits[0], logits[1], rtol=0, atol=0)
        for layer in cache.layers:
            held = [layer.positions] + ([layer.k.codes, layer.v.codes] if quant.enabled else [layer.k.fp, layer.v.fp])
            assert all(part.buf.shape[1] == 60 for part in held)
            if quant.enabled:
                assert layer.k.fp.buf.shape[1] < 60


def test_reserve_rejects_a_bad_length():
    import pytest

    with pytest.raises(ValueError, match="max_len"):
        PaluCache(max_len=0)
