"""Latent-cache path == simulation path == original model (at full rank), for prefill and decode."""
import copy

import pytest
import torch
from transformers import DynamicCache

from palu import LatentQuantConfig, PaluCache, configure
from palu.modules import PaluLatentLayer

from .helpers import compress_plain, tiny_model

CASES = [
    dict(arch="llama", num_heads=4, num_kv_heads=4, head_dim=16),  # MHA
    dict(arch="llama", num_heads=4, num_kv_heads=2, head_dim=16),  # GQA
    dict(arch="mistral", num_heads=8, num_kv_heads=2, head_dim=16),
    dict(arch="qwen2", num_heads=4, num_kv_heads=2, head_dim=16),  # k/v bias
    dict(arch="llama", num_heads=2, num_kv_heads=2, head_dim=64),
    dict(arch="llama", num_heads=2, num_kv_heads=1, head_dim=128, hidden_size=128),
    dict(arch="llama", num_heads=4, num_kv_heads=2, head_dim=16,
         rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                          "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
]


def _ids(case):
    return "-".join(f"{v}" for k, v in case.items() if k != "rope_parameters") + ("-llama3" if "rope_parameters" in case else "")


@pytest.mark.parametrize("case", CASES, ids=_ids)
@pytest.mark.parametrize("group_size", [1, 2])
def test_full_rank_matches_original_both_modes(case, group_size):
    case = dict(case)
    arch = case.pop("arch")
    if case["num_kv_heads"] % group_size:
        pytest.skip("group size does not divide KV heads")
    base = tiny_model(arch, **case)
    model = compress_plain(copy.deepcopy(base), head_group_size=group_size, ratio=1.0)
    x = torch.randint(3, 128, (2, 19))
    with torch.no_grad():
        ref = base(x).logits
        latent = model(x).logits
        configure(model, cache_mode="simulate")
        sim = model(x).logits
    torch.testing.assert_close(latent, ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(sim, ref, rtol=1e-4, atol=1e-4)


def _decode(model, x, steps, mask=None, cache=None):
    """Greedy decode returning stacked per-step logits (B, steps, V) through the given cache."""
    cache = cache if cache is not None else DynamicCache()
    pos = (mask.cumsum(-1) - 1).clamp(min=0) if mask is not None else None
    out = model(x, attention_mask=mask, past_key_values=cache, use_cache=True, position_ids=pos)
    logits = [out.logits[:, -1]]
    tok = out.logits[:, -1:].argmax(-1)
    for _ in range(steps - 1):
        if mask is not None:
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            pos = (mask.cumsum(-1) - 1)[:, -1:]
        else:
            pos = None
        out = model(tok, attention_mask=mask, past_key_values=cache, use_cache=True, position_ids=pos)
        logits.append(out.logits[:, -1])
        tok = out.logits[:, -1:].argmax(-1)
    return torch.stack(logits, 1), cache


@pytest.mark.parametrize("bits", [16, 4, 2])
def test_latent_decode_matches_simulation_64_steps(compressed_pair, bits):
    _, model = compressed_pair
    quant = LatentQuantConfig(bits=bits, group_size=8)
    x = torch.randint(3, 128, (2, 11))
    with torch.no_grad():
        configure(model, quant=quant, cache_mode="latent")
        lat, cache = _decode(model, x, 64)
        configure(model, cache_mode="simulate")
        sim, _ = _decode(model, x, 64)
    assert all(isinstance(layer, PaluLatentLayer) for layer in cache.layers)
    torch.testing.assert_close(lat, sim, rtol=1e-4, atol=1e-4)


def test_left_padded_batch_matches_unpadded_rows(compressed_pair):
    _, model = compressed_pair
    a = torch.randint(3, 128, (1, 12))
    b = torch.randint(3, 128, (1, 7))
    padded = torch.cat([torch.cat([torch.zeros(1, 5, dtype=torch.long), b], 1), a], 0)
    mask = torch.cat([torch.cat([torch.zeros(1, 5), torch.ones(1, 7)], 1), torch.ones(1, 12)], 0).long()
    with torch.no_grad():
        both, _ = _decode(model, padded, 8, mask)
        only_b, _ = _decode(model, b, 8)
        only_a, _ = _decode(model, a, 8)
    torch.testing.assert_close(both[1], only_a[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(both[0], only_b[0], rtol=1e-4, atol=1e-4)


def test_generate_uses_latent_cache_and_matches_simulation(compressed_pair):
    _, model = compressed_pair
    x = torch.randint(3, 128, (2, 9))
    mask = torch.ones_like(x)
    with torch.no_grad():
        cache = PaluCache()
        lat = model.generate(x, attention_mask=mask, past_key_values=cache, max_new_tokens=20, do_sample=False)
        assert all(isinstance(layer, PaluLatentLayer) for layer in cache.layers)
        default = model.generate(x, attention_mask=mask, max_new_tokens=20, do_sample=False)  # generate's DynamicCache
        configure(model, cache_mode="simulate")
        sim = model.generate(x, attention_mask=mask, max_new_tokens=20, do_sample=False)
    assert torch.equal(lat, sim) and torch.equal(default, sim)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_latent_close_to_simulation(compressed_pair, dtype):
    _, model = compressed_pair
    model = model.to(dtype)
    x = torch.randint(3, 128, (2, 16))
    with torch.no_grad():
        lat, _ = _decode(model, x, 8)
        configure(model, cache_mode="simulate")
        sim, _ = _decode(model, x, 8)
    rel = (lat.float() - sim.float()).norm() / sim.float().norm()
    assert rel < 2e-2


def test_unfolded_and_folded_value_paths_agree(compressed_pair):
    _, model = compressed_pair
    x = torch.randint(3, 128, (2, 10))
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "fold_value_up"):
                m.fold_value_up = True
        folded = model(x).logits
        for m in model.modules():
            if hasattr(m, "fold_value_up"):
                m.fold_value_up = False
        unfolded = model(x).logits
    torch.testing.assert_close(folded, unfolded, rtol=1e-4, atol=1e-4)
