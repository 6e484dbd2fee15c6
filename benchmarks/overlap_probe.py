"""Probe of the experimental overlap mode (score and value kernels on two streams): eager calls,
then a CUDA-graph capture and replays, at one benchmark shape. Prints a line after each stage, so a
hang shows where it happened. Usage: timeout 90 python benchmarks/overlap_probe.py 65536"""
import sys
import time

import torch

from kernels import latent_decode_attention
from kernels.bench import KernelBenchConfig, make_problem

seq_len = int(sys.argv[1])
cfg = KernelBenchConfig(total_rank=1024, total_rank_v=3072, target_seq_lens=(seq_len,))
p = make_problem(cfg, seq_len, torch.device("cuda"))
ref = latent_decode_attention(**p, overlap=False)
torch.cuda.synchronize()
print("sequential ok", flush=True)
for i in range(50):
    out = latent_decode_attention(**p, overlap=True)
torch.cuda.synchronize()
print("eager overlap x50 ok, max diff", (out - ref).abs().max().item(), flush=True)
for n in (1, 10, 200):
    g = torch.cuda.CUDAGraph()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        with torch.cuda.graph(g):
            for _ in range(n):
                out = latent_decode_attention(**p, overlap=True)
    torch.cuda.synchronize()
    print(f"captured {n} calls", flush=True)
    t = time.perf_counter()
    for _ in range(5):
        g.replay()
    torch.cuda.synchronize()
    print(f"replayed {n} calls x5 in {(time.perf_counter() - t) * 1e3:.1f} ms, max diff "
          f"{(out - ref).abs().max().item()}", flush=True)
