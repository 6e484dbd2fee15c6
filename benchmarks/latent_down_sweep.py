"""The graph decoder's per-layer latent store at the Llama-2-7B shape at 50% (d_model 4096 onto 1024 key and 3072
value latents, fp16, 32K slots), replayed from a CUDA graph as the decoder replays it:
  cublas  F.linear onto the key latents, F.linear onto the value latents, kernels.slot_write.write_slots of both and
          the position (the decoder's path before kernels.latent_down, and its path for quantized latents)
  fused   kernels.latent_down.project_latents (one launch) per DOWN_BLOCK_N / DOWN_BLOCK_K / DOWN_WARPS / DOWN_STAGES
Each row gives the achieved weight bandwidth (33.5 MB of weights per call) and its fraction of the device's peak
(--peak_gbs, default the H100 SXM's 3350 GB/s).
Usage (CUDA machine, repo root): PYTHONPATH=. python benchmarks/latent_down_sweep.py OUT.json [--batch_size 1 2 8]
    [--quick]
OUT.json.consts holds the fastest variant over the batches (summed) as NAME=VALUE,... for
benchmarks/graph_decode_ab.py (names as benchmarks/fold_heads_sweep.py's, prefix ld.).
"""
import argparse
import itertools
import json
import sys

import torch
import torch.nn.functional as F

import kernels.latent_down as ld
from kernels.slot_write import write_slots
from small_kernels_sweep import CALLS, per_call_us

D_MODEL, RK, RV, SLOTS = 4096, 1024, 3072, 33024
NAMES = ("DOWN_BLOCK_N", "DOWN_BLOCK_K", "DOWN_WARPS", "DOWN_STAGES")
GRID = list(itertools.product((16, 32, 64), (128, 256, 512), (4, 8), (3, 5)))
QUICK_GRID = list(itertools.product((16, 32, 64), (256, 512), (4,), (3, 5)))  # --quick: a third of the variants


def sweep(batch: int, peak_gbs: float, grid: list) -> dict:
    dev = "cuda"
    g = torch.Generator(device=dev).manual_seed(batch)
    x = torch.randn(batch, 1, D_MODEL, device=dev, generator=g).half()
    wk = (torch.randn(RK, D_MODEL, device=dev, generator=g) / 64).half()
    wv = (torch.randn(RV, D_MODEL, device=dev, generator=g) / 64).half()
    kb = torch.zeros(batch, SLOTS, RK, dtype=torch.float16, device=dev)
    vb = torch.zeros(batch, SLOTS, RV, dtype=torch.float16, device=dev)
    pb = torch.zeros(batch, SLOTS, 1, dtype=torch.int32, device=dev)
    pos = torch.randint(0, 1 << 20, (batch, 1), dtype=torch.int32, device=dev)
    slot = torch.randint(0, SLOTS, (batch,), device=dev)
    weight_bytes = (wk.numel() + wv.numel()) * 2
    rows = torch.arange(batch, device=dev)

    def cublas():
        write_slots(slot, [(F.linear(x, wk), kb), (F.linear(x, wv), vb), (pos, pb)])

    def row(us: float) -> dict:
        gbs = weight_bytes / us / 1e3
        return {"us": us, "weight_gbs": gbs, "of_peak": gbs / peak_gbs}

    cublas()
    want = (kb[rows, slot].float().clone(), vb[rows, slot].float().clone())
    out = {"batch_size": batch, "cublas": row(per_call_us(cublas)), "fused": []}
    print(f"B={batch} cublas x2 + write_slots: {out['cublas']['us']:.2f} us "
          f"({out['cublas']['weight_gbs']:.0f} GB/s)", flush=True)
    saved = tuple(getattr(ld, n) for n in NAMES)

    def call():
        ld.project_latents(x, [(wk, kb), (wv, vb)], slot, (pos, pb))

    for variant in grid:
        for n, v in zip(NAMES, variant):
            setattr(ld, n, v)
        try:
            kb[rows, slot], vb[rows, slot] = 0, 0
            call()
            diff = max((kb[rows, slot].float() - want[0]).abs().max().item(),
                       (vb[rows, slot].float() - want[1]).abs().max().item())
            r = {**dict(zip(NAMES, variant)), **row(per_call_us(call)), "max_abs_diff_vs_cublas": diff}
        except Exception as exc:  # a variant that does not build (shared memory) is reported, not fatal
            r = {**dict(zip(NAMES, variant)), "error": str(exc)[:300]}
        out["fused"].append(r)
        print(f"B={batch} fused {dict(zip(NAMES, variant))}: "
              + (f"{r['us']:.2f} us ({r['weight_gbs']:.0f} GB/s, {100 * r['of_peak']:.0f}% of peak, "
                 f"diff {r['max_abs_diff_vs_cublas']:.1e})" if "us" in r else r["error"]), flush=True)
    for n, v in zip(NAMES, saved):
        setattr(ld, n, v)
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("output_json")
    p.add_argument("--batch_size", type=int, nargs="+", default=[1, 2, 8])
    p.add_argument("--peak_gbs", type=float, default=3350.0)
    p.add_argument("--quick", action="store_true", help="12 variants instead of 36")
    args = p.parse_args()
    result = {"argv": sys.argv, "device": torch.cuda.get_device_name(), "calls_per_graph": CALLS,
              "peak_gbs": args.peak_gbs, "defaults": {n: getattr(ld, n) for n in NAMES},
              "batches": [sweep(b, args.peak_gbs, QUICK_GRID if args.quick else GRID) for b in args.batch_size]}
    total = {}
    for b in result["batches"]:
        for r in b["fused"]:
            if "us" in r and r["max_abs_diff_vs_cublas"] < 1e-2:
                key = tuple(r[n] for n in NAMES)
                total.setdefault(key, []).append(r["us"])
    best = min((k for k, v in total.items() if len(v) == len(args.batch_size)), key=lambda k: sum(total[k]))
    result["best"] = dict(zip(NAMES, best))
    print(f"best: {result['best']}; per batch: "
          + ", ".join(f"B={b['batch_size']} {us:.2f} us vs cublas {b['cublas']['us']:.2f}"
                      for b, us in zip(result["batches"], total[best])), flush=True)
    with open(args.output_json, "w") as f:
        json.dump(result, f, indent=2)
    with open(args.output_json + ".consts", "w") as f:
        f.write(",".join(f"ld.{k}={v}" for k, v in result["best"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
