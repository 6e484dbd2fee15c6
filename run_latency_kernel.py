"""Decode-attention latency of the fused latent kernel vs. full-KV SDPA and the unfused PyTorch path.

Example (the paper's setting, 50% of K+V kept):
    python run_latency_kernel.py --total_rank 1024 --total_rank_v 3072 --num_heads 32 --head_dim 128 \
        --group_size 4 --target_seq_lens 4096 16384 65536 262144 --batch_size 1
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    from kernels import FUSED_KERNELS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--total_rank", type=int, required=True, help="key latent rank summed over groups")
    p.add_argument("--total_rank_v", type=int, default=None,
                   help="value latent rank summed over groups (default: total_rank)")
    p.add_argument("--num_heads", type=int, default=32)
    p.add_argument("--num_kv_heads", type=int, default=None, help="default: num_heads (MHA)")
    p.add_argument("--head_dim", type=int, default=128)
    p.add_argument("--group_size", type=int, default=4, help="KV heads per low-rank group")
    p.add_argument("--target_seq_lens", type=int, nargs="+", default=[4096, 16384, 65536])
    p.add_argument("--batch_size", type=int, default=1)
    p.add_argument("--bits", type=int, default=16, choices=[2, 3, 4, 8, 16], help="latent bits (16 = fp latents)")
    p.add_argument("--dtype", default="float16", choices=["float16", "bfloat16"])
    p.add_argument("--rope_theta", type=float, default=5e5)
    p.add_argument("--fused_kernel", default="auto", choices=sorted(FUSED_KERNELS),
                   help="the decode path timed as 'fused': the default dispatch, the fold path's kernels, the "
                        "reconstruction kernel, or the Gluon single-pass kernel (sm_90; kernels.FUSED_KERNELS)")
    p.add_argument("--output_json", type=Path, default=None, help="also writes a .md table beside it")
    return p.parse_args(argv)


def markdown_table(report: dict) -> str:
    lines = [
        f"device: {report['device']}; ceilings: {report['ceilings']['bandwidth_Bps'] / 1e12:.2f} TB/s copy, "
        f"{report['ceilings']['fp16_flops'] / 1e12:.0f} TFLOP/s fp16 matmul",
        f"command: `{report['command']}`",
        "",
        "| seq len | SDPA full K/V (us) | unfused (us) | fused (us) | reconstruction kernel instead (us) "
        "| fused roofline (us) | fused % roofline | fused GB/s | fused TFLOP/s | speedup vs SDPA |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    fmt = lambda x, f="{:.1f}": "-" if x is None else f.format(x)  # noqa: E731
    for r in report["results"]:
        s, u, f = r["sdpa"], r["unfused"], r["fused"]
        rq = r.get("fused_rope_qk", {})
        lines.append(
            f"| {r['seq_len']} | {fmt(s['time_us'])} | {fmt(u['time_us'])} | {fmt(f['time_us'])} | "
            f"{fmt(rq.get('time_us'))} | "
            f"{fmt(f['roofline_us'])} | {fmt(f.get('pct_roofline'), '{:.0f}%')} | {fmt(f.get('GBps'), '{:.0f}')} | "
            f"{fmt(f.get('TFLOPs'))} | {fmt(f.get('speedup_vs_sdpa'), '{:.2f}x')} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("run_latency_kernel.py times CUDA kernels: no CUDA device is visible "
              "(torch.cuda.is_available() is False).", file=sys.stderr)
        return 2
    from kernels.bench import KernelBenchConfig, run_kernel_bench

    cfg = KernelBenchConfig(
        total_rank=args.total_rank, total_rank_v=args.total_rank_v or args.total_rank, num_heads=args.num_heads,
        num_kv_heads=args.num_kv_heads or args.num_heads, head_dim=args.head_dim, group_size=args.group_size,
        target_seq_lens=tuple(args.target_seq_lens), batch_size=args.batch_size, bits=args.bits, dtype=args.dtype,
        rope_theta=args.rope_theta, fused_kernel=args.fused_kernel,
    )
    report = run_kernel_bench(cfg, torch.device("cuda"))
    report["command"] = shlex.join(["python", *sys.argv])
    table = markdown_table(report)
    print(table)
    if args.output_json:
        args.output_json.parent.mkdir(parents=True, exist_ok=True)
        args.output_json.write_text(json.dumps(report, indent=2))
        args.output_json.with_suffix(".md").write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
