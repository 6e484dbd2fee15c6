#!/usr/bin/env python
"""Decode latency of Palu vs the uncompressed baseline: one attention module or the whole model.

Attention scope (Llama-2-7B shape, one decode step, CUDA events, median of --reps):
    python run_latency_attention.py --prompt_len 65536 --rank_k 1024 --rank_v 3072 --group_size 4 --palu
Model scope (whole-model decoding with a pre-filled cache; tokens/s and peak memory):
    python run_latency_attention.py --scope model --prompt_len 32768 --batch_size 1 2 --palu --find_max_batch
"""
from __future__ import annotations

import argparse
import dataclasses
import sys

import torch

from palu import cli
from palu.bench.latency import LatencyConfig, attention_decode, max_batch, model_decode


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scope", choices=["attention", "model"], default="attention")
    p.add_argument("--rank_k", type=int, default=1024, help="key rank per layer, summed over groups")
    p.add_argument("--rank_v", type=int, default=3072, help="value rank per layer, summed over groups")
    p.add_argument("--group_size", type=int, default=4, help="KV heads per group")
    p.add_argument("--prompt_len", type=int, nargs="+", default=[65536], help="cached tokens before the timed step")
    p.add_argument("--batch_size", type=int, nargs="+", default=[1])
    p.add_argument("--palu", action="store_true", help="also time Palu (without it only the baseline runs)")
    p.add_argument("--lt_bits", type=int, default=16, choices=[2, 3, 4, 8, 16], help="latent bits (16 = fp latents)")
    p.add_argument("--lt_group_size", type=int, default=32)
    p.add_argument("--cuda_graph", action="store_true", help="attention scope: replay the decode step (over a fixed cache, rewriting its last slot) in a CUDA graph")
    p.add_argument("--backend", choices=["auto", "torch", "triton"], default="auto")
    cli.add_fused_kernel_arg(p)
    p.add_argument("--num_layers", type=int, default=32, help="model scope: decoder layers")
    p.add_argument("--num_heads", type=int, default=32)
    p.add_argument("--num_kv_heads", type=int, default=32)
    p.add_argument("--head_dim", type=int, default=128)
    p.add_argument("--hidden_size", type=int, default=4096)
    p.add_argument("--dtype", choices=["float16", "bfloat16"], default="float16")
    p.add_argument("--find_max_batch", action="store_true", help="model scope: largest batch that fits at each prompt_len")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--reps", type=int, default=50)
    p.add_argument("--device", default="cuda")
    p.add_argument("--output_json", default=None)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        cli.fail("no CUDA device: latency benchmarks need a GPU (or pass --device cpu for a slow smoke run)")
    try:
        base = LatencyConfig(num_heads=args.num_heads, num_kv_heads=args.num_kv_heads, head_dim=args.head_dim,
                             hidden_size=args.hidden_size, num_layers=args.num_layers, rank_k=args.rank_k,
                             rank_v=args.rank_v, group_size=args.group_size, lt_bits=args.lt_bits,
                             lt_group_size=args.lt_group_size, dtype=args.dtype, backend=args.backend,
                             fused_kernel=args.fused_kernel,
                             cuda_graph=args.cuda_graph, warmup=args.warmup, reps=args.reps, device=args.device)
    except ValueError as err:
        cli.fail(str(err))
    rows = []
    for prompt_len in args.prompt_len:
        for batch in args.batch_size:
            cfg = dataclasses.replace(base, prompt_len=prompt_len, batch_size=batch)
            runs = _runs(cfg, args)
            rows.append({"prompt_len": prompt_len, "batch_size": batch, "runs": runs})
            print(_line(rows[-1], args.scope), flush=True)
        if args.find_max_batch and args.scope == "model":
            rows.append({"prompt_len": prompt_len, "max_batch": [max_batch(dataclasses.replace(base, prompt_len=prompt_len), p)
                                                                 for p in ([False, True] if args.palu else [False])]})
            print(rows[-1], flush=True)
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    out = {"argv": sys.argv, "config": dataclasses.asdict(base), "scope": args.scope, "device": device, "rows": rows}
    if args.output_json:
        cli.write_json_atomic(args.output_json, out)
    return 0


def _runs(cfg: LatencyConfig, args) -> list[dict]:
    if args.scope == "attention":
        runs = [attention_decode(cfg, False, "static")]
        if not args.cuda_graph:
            runs.append(attention_decode(cfg, False, "dynamic"))
        if args.palu:
            runs.append(attention_decode(cfg, True))
    else:
        runs = [model_decode(cfg, False, "dynamic")]
        if args.palu:
            runs.append(model_decode(cfg, True))
    return runs


def _line(row: dict, scope: str) -> str:
    key = "time_ms" if scope == "attention" else "time_per_token_ms"
    parts = [f"len {row['prompt_len']} batch {row['batch_size']}:"]
    base = row["runs"][0][key]
    for r in row["runs"]:
        parts.append(f"{r['cache']} {r[key]:.3f} ms (x{base / r[key]:.2f}, cache {r['cache_bytes'] / 2**20:.0f} MiB)")
    return " | ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
