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
    short = latent_layer_for(prefix, 0, attn.quant)
    for store, dst in ((layer.k, short.k), (layer.v, short.v)):  # the same first n slots, as stored
        for part, other in zip(store.parts(), dst.parts()):
            if part.length:
                other.append(part.view()[:, :n].clone())
    short.positions.append(layer.positions.view()[:, :n].clone())
    short.lazy_initialization(x, x)
    short.kv_start = layer.kv_start
    with torch.no_grad():
        want = _module_step(attn, rotary, x, prefix, n)
        got = static_step_body(attn, cache, x, rotary, cfg, palu=True)()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


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
