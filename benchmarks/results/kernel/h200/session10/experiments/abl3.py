"""On the GPU: PYTHONPATH=.:.exp/fused python .exp/fused/abl3.py [ncu]
fused3 (256-row dots, key ring 4, value ring 2, lead 2) at 64K: full, no values (1), value loads only (2)."""
import json
import sys

import torch
from fused3 import ws_fused3_decode
from kernels.bench import KernelBenchConfig, _bench, kernel_breakdown, make_problem

dev = torch.device("cuda")
cfg = KernelBenchConfig(total_rank=1024, total_rank_v=3072, target_seq_lens=(65536,))
p = make_problem(cfg, 65536, dev)
kw = dict(ranks=(128, 384))
if len(sys.argv) > 1:
    for _ in range(3):
        ws_fused3_decode(p, **kw)
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    ws_fused3_decode(p, **kw)
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()
    sys.exit(0)
for ab in (0, 1, 2):
    us = _bench([lambda: ws_fused3_decode(p, **kw, ablate=ab)]) * 1e3
    k = kernel_breakdown(lambda: ws_fused3_decode(p, **kw, ablate=ab))["_ws_fused3_kernel"]
    print(json.dumps(dict(ablate=ab, call_us=us, kernel_us=k)), flush=True)
