"""One decode call of the latent attention kernels under Nsight Compute: the call is compiled and
autotuned first, and only the last one runs between cudaProfilerStart/Stop, so that
`ncu --profile-from-start off` measures the kernels as the benchmark runs them.
Usage (CUDA machine, repo root):
  ncu --profile-from-start off --clock-control none --set full -o rep \
      python benchmarks/ncu_decode.py <seq_len> [batch] [bits]
"""
import sys

import torch

from kernels import latent_decode_attention
from kernels.bench import KernelBenchConfig, make_problem


def main() -> int:
    seq_len = int(sys.argv[1])
    batch = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    bits = int(sys.argv[3]) if len(sys.argv) > 3 else 16
    cfg = KernelBenchConfig(total_rank=1024, total_rank_v=3072, batch_size=batch, bits=bits, target_seq_lens=(seq_len,))
    p = make_problem(cfg, seq_len, torch.device("cuda"))
    for _ in range(3):
        latent_decode_attention(**p)
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    latent_decode_attention(**p)
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
