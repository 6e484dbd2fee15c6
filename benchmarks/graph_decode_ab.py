"""Palu's whole-model graph decoding (palu.graph_decode, as ``run_latency_attention.py --scope model --graph_decode``
times it) under sets of kernel module constants, one after the other in one process: an A/B of the small kernels'
launch constants on the same machine, after the baseline's static step in one CUDA graph per batch (the eager
DynamicCache baseline is not timed here: run_latency_attention.py does).
Usage (CUDA machine, repo root):
    PYTHONPATH=. python benchmarks/graph_decode_ab.py OUT.json "" "MERGE_UP_BLOCK_D=16,FOLD_ROWS_WARPS=2" \\
        [--batch_size 1 2] [--prompt_len 32768]
The first set is usually "" (the defaults); names as in benchmarks/fold_heads_sweep.py; a set given as @FILE is read
from FILE (small_kernels_sweep.py writes OUT.json.consts).
"""
import argparse
import dataclasses
import json
import sys

import torch

from fold_heads_sweep import _target, parse_constants
from kernels.offline_build import set_constant
from palu.bench.latency import LatencyConfig, graph_decoder_decode, model_decode


def parse(spec: str) -> dict:
    """parse_constants of spec, or of the contents of FILE for "@FILE"."""
    if spec.startswith("@"):
        with open(spec[1:]) as f:
            spec = f.read().strip()
    return parse_constants(spec)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("output_json")
    p.add_argument("sets", nargs="+")
    p.add_argument("--batch_size", type=int, nargs="+", default=[1, 2])
    p.add_argument("--prompt_len", type=int, default=32768)
    p.add_argument("--reps", type=int, default=20)
    args = p.parse_args()
    sets = [parse(s) for s in args.sets]
    defaults = {name: getattr(*_target(name)) for consts in sets for name in consts}
    rows, baseline = [], {}
    with torch.no_grad():
        for b in args.batch_size:
            cfg = LatencyConfig(prompt_len=args.prompt_len, batch_size=b, reps=args.reps, warmup=3, cuda_graph=True)
            baseline[b] = model_decode(cfg, False)["time_per_token_ms"]
            print(f"baseline static step in one graph B={b}: {baseline[b]:.3f} ms per token", flush=True)
        for consts in sets:
            for name, value in {**defaults, **consts}.items():
                set_constant(*_target(name), value)
            for b in args.batch_size:
                cfg = LatencyConfig(prompt_len=args.prompt_len, batch_size=b, reps=args.reps, warmup=3)
                out = graph_decoder_decode(cfg)
                ms = out["time_per_token_ms"]
                rows.append({"constants": consts, "batch_size": b, "time_per_token_ms": ms,
                             "speedup_vs_graph_baseline": baseline[b] / ms, "timing": out["timing"]})
                print(f"{consts or 'defaults'} B={b}: {ms:.3f} ms per token, {baseline[b] / ms:.3f}x the graphed "
                      "baseline", flush=True)
    with open(args.output_json, "w") as f:
        json.dump({"argv": sys.argv, "device": torch.cuda.get_device_name(), "defaults": defaults,
                   "baseline_graph_ms": baseline,
                   "config": dataclasses.asdict(cfg), "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
