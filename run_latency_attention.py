#!/usr/bin/env python
"""Decode latency of Palu vs the uncompressed baseline: one attention module or the whole model.

Attention scope (Llama-2-7B shape, one decode step, CUDA events, median of --reps):
    python run_latency_attention.py --prompt_len 65536 --rank_k 1024 --rank_v 3072 --group_size 4 --palu
Model scope (whole-model decoding with a pre-filled cache; tokens/s and peak memory):
    python run_latency_attention.py --scope model --prompt_len 32768 --batch_size 1 2 --palu --find_max_batch
Whole model without the host: --scope model --cuda_graph replays every layer's step in one CUDA graph (baseline
over a static cache), so the time per token is the GPU's work alone, as in a serving engine that graphs its decode.
Palu decoding as palu.graph_decode replays it (what graph_generate runs after its prefill: every step appends its
token, one CUDA graph per span of slots): --scope model --graph_decode --palu, against the eager baseline
(DynamicCache, what model.generate runs) and the baseline's static-cache step in one CUDA graph.
Run-to-run spread: --rounds 5 repeats the comparison with a fresh model and cache each time and prints each round's
speed-up with their median / min / max. Each run's "host" time is what Python spent enqueueing a step: close to the
step's time, the step is bound by the host (eager decoding of the whole model is), not by the GPU.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys

import torch

from palu import cli
from palu.bench.latency import (LatencyConfig, attention_decode, graph_decoder_decode, max_batch, model_decode,
                                run_rounds, speedup_summary)


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
    p.add_argument("--cuda_graph", action="store_true", help="replay the decode step (over a fixed cache, rewriting its last slot) in a CUDA graph: one module "
                        "(attention scope) or every layer of the model (model scope; the baseline then uses a static "
                        "cache instead of a DynamicCache)")
    p.add_argument("--graph_decode", action="store_true",
                   help="model scope, with --palu: time Palu through palu.graph_decode.GraphDecoder (fp or --lt_bits latents), "
                        "against the eager DynamicCache baseline and the baseline's static step in one CUDA graph")
    p.add_argument("--bucket", type=int, default=None, help="--graph_decode: slots by which a graph's span grows (256)")
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
    p.add_argument("--rounds", type=int, default=1,
                   help="repeat the whole comparison this many times (fresh model and cache each, every other round "
                        "Palu first) and report each round's speed-up with their median / min / max")
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
    if args.rounds < 1:
        cli.fail(f"--rounds must be >= 1, got {args.rounds}")
    if args.rounds > 1 and not args.palu:
        cli.fail("--rounds compares Palu with the baseline: add --palu")
    if args.graph_decode:
        why = next((msg for bad, msg in [
            (args.scope != "model", "--graph_decode times whole-model decoding: add --scope model"),
            (not args.palu, "--graph_decode times Palu's decoding: add --palu"),
            (args.cuda_graph, "--graph_decode already replays graphs and adds the static-graph baseline: drop --cuda_graph"),
            (args.bucket is not None and args.bucket < 1, f"--bucket must be >= 1, got {args.bucket}"),
        ] if bad), None)
        if why:
            cli.fail(why)
    elif args.bucket is not None:
        cli.fail("--bucket sets --graph_decode's span: add --graph_decode, or drop --bucket")
    rows = []
    for prompt_len in args.prompt_len:
        for batch in args.batch_size:
            cfg = dataclasses.replace(base, prompt_len=prompt_len, batch_size=batch)
            rounds = run_rounds(_runs(cfg, args), args.rounds)
            row = {"prompt_len": prompt_len, "batch_size": batch, "runs": rounds[0]}
            if args.palu:
                row["speedup"] = speedup_summary(rounds, _key(args.scope))
            if args.graph_decode and len(rounds[0]) == 3:  # Palu's graphs against the baseline's graphed step too
                row["speedup_vs_graph_baseline"] = speedup_summary([runs[1:] for runs in rounds], _key(args.scope))
            if args.rounds > 1:
                row["rounds"] = rounds
            rows.append(row)
            for runs in rounds:
                print(_line({**row, "runs": runs}, args.scope), flush=True)
            if "speedup_vs_graph_baseline" in row:
                s = row["speedup_vs_graph_baseline"]
                print(f"  Palu graph decoding vs the baseline's graphed static step: median {s['median']:.2f}x", flush=True)
            if args.rounds > 1:
                s = row["speedup"]
                print(f"  speed-up over {args.rounds} rounds: median {s['median']:.2f}x, min {s['min']:.2f}x, "
                      f"max {s['max']:.2f}x", flush=True)
        if args.find_max_batch and args.scope == "model":
            rows.append({"prompt_len": prompt_len, "max_batch": [max_batch(dataclasses.replace(base, prompt_len=prompt_len), p)
                                                                 for p in ([False, True] if args.palu else [False])]})
            print(rows[-1], flush=True)
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    config = {**dataclasses.asdict(base), "prompt_len": args.prompt_len, "batch_size": args.batch_size,
              "rounds": args.rounds}
    out = {"argv": sys.argv, "config": config, "scope": args.scope, "device": device, "rows": rows}
    if args.output_json:
        cli.write_json_atomic(args.output_json, out)
    return 0


def _runs(cfg: LatencyConfig, args) -> list:
    """The timings of one round, baseline first, as zero-argument callables (run_rounds orders them)."""
    if args.scope == "attention":
        runs = [lambda: attention_decode(cfg, False, "static")]
        if not args.cuda_graph:
            runs.append(lambda: attention_decode(cfg, False, "dynamic"))
        if args.palu:
            runs.append(lambda: attention_decode(cfg, True))
    elif args.graph_decode:  # eager baseline, its static step in one graph (CUDA only), Palu's graph decoder
        runs = [lambda: model_decode(cfg, False, "dynamic")]
        if str(cfg.device).startswith("cuda"):
            runs.append(lambda: model_decode(dataclasses.replace(cfg, cuda_graph=True), False))
        runs.append(lambda: graph_decoder_decode(cfg, args.bucket or 256))
    else:
        runs = [lambda: model_decode(cfg, False, "dynamic")]
        if args.palu:
            runs.append(lambda: model_decode(cfg, True))
    return runs


def _key(scope: str) -> str:
    return "time_ms" if scope == "attention" else "time_per_token_ms"


def _line(row: dict, scope: str) -> str:
    key = _key(scope)
    parts = [f"len {row['prompt_len']} batch {row['batch_size']}:"]
    base = row["runs"][0][key]
    for r in row["runs"]:
        host = r["timing"]["host_median_ms"]
        label = r["cache"] + ("+graph" if r.get("cuda_graph") and r["cache"] == "static" else "")
        parts.append(f"{label} {r[key]:.3f} ms (x{base / r[key]:.2f}, host {host:.3f} ms, "
                     f"cache {r['cache_bytes'] / 2**20:.0f} MiB)")
    return " | ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
