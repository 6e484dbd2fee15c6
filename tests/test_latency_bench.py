"""The static decode step the latency benchmark replays as a CUDA graph does what a real decode step does:
its output equals the attention module's own forward appending the same token to the same cache."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import DynamicCache

from palu.bench.latency import LatencyConfig, attention_setup, static_step_body
from palu.modules.cache import PaluCache, latent_layer_for

CFG = LatencyConfig(num_heads=4, num_kv_heads=4, head_dim=32, hidden_size=128, intermediate_size=256, num_layers=1,
                    rank_k=64, rank_v=96, group_size=2, prompt_len=40, dtype="float32", warmup=0, reps=1, device="cpu")


def _module_step(attn, rotary, x, cache, pos: int):
    p = torch.full((x.shape[0], 1), pos, dtype=torch.long)
    return attn(x, position_embeddings=rotary(x, p), attention_mask=None, past_key_values=cache, position_ids=p)[0]


def test_static_step_matches_the_baseline_module():
    cfg = dataclasses.replace(CFG, batch_size=2)
    _, attn, rotary, cache, x = attention_setup(cfg, palu=False)
    layer, n = cache.layers[0], cfg.prompt_len - 1
    prefix = DynamicCache()
    prefix.update(layer.keys[:, :, :n].clone(), layer.values[:, :, :n].clone(), 0)
    with torch.no_grad():
        want = _module_step(attn, rotary, x, prefix, n)
        got = static_step_body(attn, cache, x, rotary, cfg, palu=False)()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("bits", [16, 4])
def test_static_step_matches_the_palu_module(bits):
    """Palu: the body writes the token's latents into the last slot (4-bit with no fp window: quantized
    into the packed part) and runs the Triton decode (interpreter here) against the module's own
    append + torch attention."""
    cfg = dataclasses.replace(CFG, lt_bits=bits, lt_group_size=16)
    _, attn, rotary, cache, x = attention_setup(cfg, palu=True)
    layer, n = cache.layers[0], cfg.prompt_len - 1
    prefix = PaluCache()
    _copy_prefix(layer, latent_layer_for(prefix, 0, attn.quant), n, x)
    with torch.no_grad():
        want = _module_step(attn, rotary, x, prefix, n)
        got = static_step_body(attn, cache, x, rotary, cfg, palu=True)()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def _copy_prefix(layer, short, n: int, x) -> None:
    """Give the Palu cache layer ``short`` the first n slots of ``layer``, as stored."""
    for store, dst in ((layer.k, short.k), (layer.v, short.v)):
        for part, other in zip(store.parts(), dst.parts()):
            if part.length:
                other.append(part.view()[:, :n].clone())
    short.positions.append(layer.positions.view()[:, :n].clone())
    short.lazy_initialization(x, x)
    short.kv_start = layer.kv_start


@pytest.mark.parametrize("palu,bits", [(False, 16), (True, 16), (True, 4)])
def test_static_model_step_matches_model_forward(palu, bits):
    """The whole-model step that --scope model --cuda_graph replays (every layer's static step composed by hand)
    gives the logits of model.forward appending the same token to a cache of the first prompt_len - 1 slots."""
    from palu.bench.latency import build_model, filled_baseline_cache, filled_palu_cache
    from palu.bench.model_step import static_model_step

    cfg = dataclasses.replace(CFG, num_layers=2, batch_size=2, lt_bits=bits, lt_group_size=16)
    torch.manual_seed(0)
    model = build_model(cfg, palu=palu)
    extra = 3  # spare slots past prompt_len, as in a timed run: the step must use only the first prompt_len
    cache = filled_palu_cache(model, cfg, extra) if palu else filled_baseline_cache(cfg, 2, "static", extra)
    n = cfg.prompt_len - 1
    x = torch.zeros(cfg.batch_size, 1, cfg.hidden_size)
    prefix = PaluCache() if palu else DynamicCache()
    for i, layer in enumerate(cache.layers):
        if palu:
            _copy_prefix(layer, latent_layer_for(prefix, i, model.model.layers[i].self_attn.quant), n, x)
        else:
            prefix.update(layer.keys[:, :, :n].clone(), layer.values[:, :, :n].clone(), i)
    token = torch.randint(0, 32000, (cfg.batch_size, 1))
    with torch.no_grad():
        want = model(token, position_ids=torch.full((cfg.batch_size, 1), n), past_key_values=prefix).logits
        got = static_model_step(model, cache, token, cfg, palu)()
    assert got.shape == (cfg.batch_size, 1, 32000)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_rounds_alternate_order_and_keep_baseline_first():
    from palu.bench.latency import run_rounds, speedup_summary

    calls = []

    def run(name, ms):
        def fn():
            calls.append(name)
            return {"name": name, "time_ms": ms[len([c for c in calls if c == name]) - 1]}
        return fn

    rounds = run_rounds([run("base", [2.0, 3.0, 2.0]), run("palu", [1.0, 1.0, 2.0])], 3)
    assert calls == ["base", "palu", "palu", "base", "base", "palu"]  # every other round Palu first
    assert [[r["name"] for r in runs] for runs in rounds] == [["base", "palu"]] * 3
    s = speedup_summary(rounds, "time_ms")
    assert s["per_round"] == [2.0, 3.0, 1.0] and (s["median"], s["min"], s["max"]) == (2.0, 1.0, 3.0)
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        run_rounds([run("base", [1.0])], 0)


def test_time_fn_reports_spread_and_host_time():
    from palu.bench.timing import time_fn

    t = time_fn(lambda: sum(range(20000)), warmup=1, reps=9, device="cpu")
    assert t["min_ms"] <= t["p10_ms"] <= t["median_ms"] <= t["p90_ms"] <= t["max_ms"]
    assert t["host_median_ms"] == t["median_ms"] and t["reps"] == 9  # on the CPU the host time is the time
