"""SM clock and power while a decode call runs back to back: SDPA on full K/V, then the fused latent kernel.

ncu times one fused call in isolation (158.6 us at 64K on an H200, twentieth session) while the CUDA-graph
benchmark, which replays hundreds of calls back to back, measures about 180 us, while SDPA barely moves.
This prints per phase the wall-clock interval, the median call time and the calls run, so that the samples of
``nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,clocks_event_reasons.active --format=csv -lms 100``
taken beside it can be cut by phase (benchmarks/gpu_kernels.sh clocks does both).
Usage (CUDA machine, repo root): python benchmarks/clock_probe.py <seq_len> [batch] [seconds per phase]
"""
from __future__ import annotations

import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from kernels import latent_decode_attention
from kernels.bench import KernelBenchConfig, make_problem


def sustain(fn, seconds: float) -> dict:
    """Replay ``fn`` from a CUDA graph of 20 calls for about ``seconds``; wall interval and per-call times."""
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(20):
            fn()
    times, t0 = [], time.time()
    while time.time() - t0 < seconds:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / 20)
    return {"start": t0, "end": time.time(), "calls": 20 * len(times), "median_us": statistics.median(times),
            "first_us": times[0], "last_us": times[-1]}


def main() -> int:
    if not 2 <= len(sys.argv) <= 4:
        sys.exit(__doc__)
    if not torch.cuda.is_available():
        sys.exit("clock_probe.py needs a CUDA GPU (it times kernels and samples the GPU's clock)")
    seq_len = int(sys.argv[1])
    batch = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 3.0
    dev = torch.device("cuda")
    cfg = KernelBenchConfig(total_rank=1024, total_rank_v=3072, batch_size=batch, target_seq_lens=(seq_len,))
    H, D, dt = cfg.num_heads, cfg.head_dim, cfg.torch_dtype  # the Llama-2-7B shape of run_latency_kernel.py
    q = torch.randn(batch, H, 1, D, dtype=dt, device=dev)
    k, v = (torch.randn(batch, H, seq_len, D, dtype=dt, device=dev) for _ in range(2))
    out = {"seq_len": seq_len, "batch": batch}
    out["sdpa"] = sustain(lambda: F.scaled_dot_product_attention(q, k, v), seconds)
    del k, v
    time.sleep(1.0)
    p = make_problem(cfg, seq_len, dev)
    out["fused"] = sustain(lambda: latent_decode_attention(**p, **cfg.decode_kwargs), seconds)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
