"""Per-kernel device time of one attention-module decode step (the body `--cuda_graph` replays),
Palu vs the static-cache baseline, from torch.profiler (CUPTI), plus the graph replay time.

The sum of kernel times against the replay time shows how much of a step is launch gaps.
Usage (CUDA machine, repo root): PYTHONPATH=. python benchmarks/profile_step.py 4096 65536 --output_json prof.json
"""
import argparse
import dataclasses
import json
import sys
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from palu.bench.latency import LatencyConfig, attention_setup, graphed_step, static_step_body
from palu.bench.timing import time_fn


def kernel_table(body, steps: int) -> dict:
    """{kernel name: mean us per step} over ``steps`` eager calls of ``body``."""
    for _ in range(3):
        body()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            body()
        torch.cuda.synchronize()
    per = defaultdict(float)
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            per[ev.name] += ev.device_time_total / steps
    return dict(sorted(per.items(), key=lambda kv: -kv[1]))


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("prompt_len", type=int, nargs="+")
    p.add_argument("--batch_size", type=int, default=1)
    p.add_argument("--lt_bits", type=int, default=16)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--output_json", default=None)
    args = p.parse_args()
    rows = []
    with torch.no_grad():
        for n in args.prompt_len:
            cfg = LatencyConfig(prompt_len=n, batch_size=args.batch_size, lt_bits=args.lt_bits, cuda_graph=True)
            for palu in (False, True):
                model, attn, rotary, cache, x = attention_setup(cfg, palu)
                kernels = kernel_table(static_step_body(attn, cache, x, rotary, cfg, palu), args.steps)
                graph_ms = time_fn(graphed_step(attn, cache, x, rotary, cfg, palu), 5, 100)["median_ms"]
                total = sum(kernels.values())
                rows.append({"prompt_len": n, "batch_size": args.batch_size, "palu": palu, "lt_bits": args.lt_bits,
                             "graph_us": graph_ms * 1e3, "kernel_sum_us": total, "kernels_us": kernels})
                print(f"len {n} {'palu' if palu else 'static'}: graph {graph_ms * 1e3:.1f} us, kernels {total:.1f} us "
                      f"({len(kernels)} kinds)", flush=True)
                for name, us in kernels.items():
                    print(f"    {us:8.2f} us  {name[:110]}", flush=True)
                del model, attn, cache
                torch.cuda.empty_cache()
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump({"argv": sys.argv, "device": torch.cuda.get_device_name(),
                       "config": dataclasses.asdict(cfg), "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
