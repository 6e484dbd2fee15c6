"""On the GPU: PYTHONPATH=.:.exp/fused python .exp/fused/run3.py
Correctness of fused3 variants against the torch reference, then whole-call time (CUDA graph) at 64K and more."""
import json
import sys

import torch
from fused3 import ws_fused3_decode
from kernels import latent_decode_attention
from kernels.bench import KernelBenchConfig, _bench, kernel_breakdown, make_problem
from kernels.reference import latent_decode_attention_ref
from tests.kernels.latent_cases import Case, make_inputs, rel_error

dev = torch.device("cuda")
emit = lambda **kw: print(json.dumps(kw), flush=True)  # noqa: E731
VARIANTS = [dict(dot_cols=256, kst=4, vst=2, lead=2), dict(dot_cols=128, kst=4, vst=2, lead=2),
            dict(dot_cols=128, kst=3, vst=2, lead=1), dict(dot_cols=256, kst=3, vst=2, lead=1)]
ok = []
for v in (VARIANTS if sys.argv[1] == 'correct' else []):
    errs = []
    for slots, batch, left_pad, dt in ((37, 2, True, torch.float16), (2049, 2, True, torch.bfloat16),
                                       (5000, 1, True, torch.float16), (70000, 1, False, torch.float16)):
        case = Case(num_heads=8, num_kv_heads=8, head_dim=128, group_size=4, k_ranks=(128, 128), v_ranks=(384, 384),
                    num_slots=slots, batch=batch, dtype=dt, left_pad=left_pad)
        p = make_inputs(case, dev)
        out = ws_fused3_decode(p, **v)
        torch.cuda.synchronize()
        errs.append(rel_error(out, latent_decode_attention_ref(**p)))
    emit(mode="correct", **v, rel_errs=errs)
    ok.append(max(errs) < 2e-2)
ok = ok or [True] * len(VARIANTS)
for seq, batch in [] if sys.argv[1] == 'correct' else ((65536, 1), (4096, 1), (16384, 1), (262144, 1), (65536, 8)):
    cfg = KernelBenchConfig(total_rank=1024, total_rank_v=3072, target_seq_lens=(seq,), batch_size=batch)
    p = make_problem(cfg, seq, dev)
    ref = latent_decode_attention(**p)
    row = dict(seq=seq, batch=batch, default_us=_bench([lambda: latent_decode_attention(**p)]) * 1e3)
    for v, good in zip(VARIANTS, ok):
        if not good:
            continue
        key = "c{dot_cols}_k{kst}_v{vst}_l{lead}".format(**v)
        err = ((ws_fused3_decode(p, **v, ranks=(128, 384)) - ref).norm() / ref.norm()).item()
        row[key] = _bench([lambda: ws_fused3_decode(p, **v, ranks=(128, 384))]) * 1e3
        row[key + "_err"] = err
        if seq == 65536 and batch == 1:
            row[key + "_kernel"] = kernel_breakdown(lambda: ws_fused3_decode(p, **v, ranks=(128, 384)))["_ws_fused3_kernel"]
    emit(mode="time", **row)
    del p, ref
    torch.cuda.empty_cache()
