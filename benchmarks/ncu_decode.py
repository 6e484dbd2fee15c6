"""One decode call of the latent attention kernels under Nsight Compute: the call is compiled and
autotuned first, and only the last one runs between cudaProfilerStart/Stop, so that
`ncu --profile-from-start off` measures the kernels as the benchmark runs them.
Usage (CUDA machine, repo root):
  ncu --profile-from-start off --clock-control none --set full -o rep \
      python benchmarks/ncu_decode.py <seq_len> [batch] [bits] [ws|ws:<stages>]
"""
import sys

import torch

from kernels import latent_decode_attention
from kernels.bench import KernelBenchConfig, make_problem


def main() -> int:
    seq_len = int(sys.argv[1])
    batch = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    bits = int(sys.argv[3]) if len(sys.argv) > 3 else 16
    # optional 4th argument: "ws" (the Gluon score kernel) or "ws:<stages>"
    kw = {}
    if len(sys.argv) > 4 and sys.argv[4].startswith("ws"):
        import kernels.fold_scores_ws as ws
        kw = dict(warp_specialized=True)
        if ":" in sys.argv[4]:
            ws.WS_STAGES = int(sys.argv[4].split(":")[1])
    cfg = KernelBenchConfig(total_rank=1024, total_rank_v=3072, batch_size=batch, bits=bits, target_seq_lens=(seq_len,))
    p = make_problem(cfg, seq_len, torch.device("cuda"))
    for _ in range(3):
        latent_decode_attention(**p, **kw)
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    latent_decode_attention(**p, **kw)
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
