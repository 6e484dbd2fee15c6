"""Per-kernel device time of one decode step (the body `--cuda_graph` replays), Palu vs the static-cache baseline,
from torch.profiler (CUPTI), plus the graph replay time.

``--scope module`` (default): one attention module (layer 0 of a 1-layer model). ``--scope model``: the whole model's
step (:func:`palu.bench.model_step.static_model_step`, ``--num_layers`` layers). ``--scope decoder``: Palu's step as
:class:`palu.graph_decode.GraphDecoder` runs it (its body eagerly; the baseline row stays the static model step).
The sum of kernel times against the replay time shows how much of a step is launch gaps; the launch count per step is
what an eager step pays the host for.
Usage (CUDA machine, repo root):
    PYTHONPATH=. python benchmarks/profile_step.py 4096 65536 --output_json prof.json
    PYTHONPATH=. python benchmarks/profile_step.py 32768 --scope model --batch_size 2 --output_json prof_model.json
    PYTHONPATH=. python benchmarks/profile_step.py 32768 --scope decoder --batch_size 2 --output_json prof_dec.json
"""
import argparse
import dataclasses
import json
import sys
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from palu.bench.latency import (LatencyConfig, attention_setup, build_model, filled_baseline_cache, filled_palu_cache,
                                graph_replay, static_step_body)
from palu.bench.model_step import static_model_step
from palu.bench.timing import time_fn


def kernel_table(body, steps: int) -> tuple[dict, dict]:
    """({kernel name: mean us per step}, {kernel name: launches per step}) over ``steps`` eager calls of ``body``."""
    for _ in range(3):
        body()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            body()
        torch.cuda.synchronize()
    per, count = defaultdict(float), defaultdict(float)
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            per[ev.name] += ev.device_time_total / steps
            count[ev.name] += 1 / steps
    order = sorted(per, key=lambda k: -per[k])
    return {k: per[k] for k in order}, {k: count[k] for k in order}


def step_body(cfg: LatencyConfig, palu: bool, scope: str, num_layers: int):
    """(body, things to keep alive) of one static decode step."""
    if scope == "module":
        model, attn, rotary, cache, x = attention_setup(cfg, palu)
        return static_step_body(attn, cache, x, rotary, cfg, palu), (model, cache)
    model = build_model(cfg, num_layers, palu)
    if scope == "decoder" and palu:
        return decoder_step(model, cfg), (model,)
    extra = cfg.decode_slots
    cache = filled_palu_cache(model, cfg, extra) if palu else filled_baseline_cache(cfg, num_layers, "static", extra)
    token = torch.randint(0, model.config.vocab_size, (cfg.batch_size, 1), device=cfg.device)
    return static_model_step(model, cache, token, cfg, palu), (model, cache)


def decoder_step(model, cfg: LatencyConfig):
    """GraphDecoder.step without graphs over a random prompt_len-slot cache (room for 400 steps in its span)."""
    from palu.graph_decode import GraphDecodeConfig, GraphDecoder

    cache = filled_palu_cache(model, cfg, 0)
    token = torch.randint(0, model.config.vocab_size, (cfg.batch_size, 1), device=cfg.device)
    position = torch.full((cfg.batch_size,), cfg.prompt_len, dtype=torch.long, device=cfg.device)
    decoder = GraphDecoder(model, cache, token, position, cfg.prompt_len + 400,
                           GraphDecodeConfig(max_new_tokens=400, bucket=512, use_graph=False), consume=True)
    decoder.step()  # sets the span (512-slot buckets: the profile's steps stay in one)
    return decoder.step


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("prompt_len", type=int, nargs="+")
    p.add_argument("--batch_size", type=int, default=1)
    p.add_argument("--lt_bits", type=int, default=16)
    p.add_argument("--scope", choices=("module", "model", "decoder"), default="module")
    p.add_argument("--num_layers", type=int, default=32, help="--scope model: decoder layers")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--output_json", default=None)
    args = p.parse_args()
    rows = []
    with torch.no_grad():
        for n in args.prompt_len:
            cfg = LatencyConfig(prompt_len=n, batch_size=args.batch_size, lt_bits=args.lt_bits, cuda_graph=True)
            for palu in (False, True):
                body, keep = step_body(cfg, palu, args.scope, args.num_layers)
                kernels, launches = kernel_table(body, args.steps)
                graph_us = (None if palu and args.scope == "decoder"  # its graphs: --graph_decode timings
                            else time_fn(graph_replay(body), 5, 50)["median_ms"] * 1e3)
                total, n_launch = sum(kernels.values()), sum(launches.values())
                rows.append({"prompt_len": n, "batch_size": args.batch_size, "palu": palu, "lt_bits": args.lt_bits,
                             "scope": args.scope, "graph_us": graph_us, "kernel_sum_us": total,
                             "launches_per_step": n_launch, "kernels_us": kernels, "kernel_launches": launches})
                graph = "n/a" if graph_us is None else f"{graph_us:.1f} us"
                print(f"len {n} B={args.batch_size} {args.scope} {'palu' if palu else 'static'}: graph {graph}, "
                      f"kernels {total:.1f} us, {n_launch:.0f} launches per step ({len(kernels)} kinds)", flush=True)
                for name, us in kernels.items():
                    print(f"    {us:9.2f} us {launches[name]:6.1f}x  {name[:100]}", flush=True)
                del body, keep
                torch.cuda.empty_cache()
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump({"argv": sys.argv, "device": torch.cuda.get_device_name(),
                       "config": dataclasses.asdict(cfg), "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
