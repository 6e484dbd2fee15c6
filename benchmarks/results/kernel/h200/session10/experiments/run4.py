"""On the GPU: PYTHONPATH=.:.exp/fused python .exp/fused/run4.py correct|time
fused4 (value ring in single boxes; all four heads of a group per program) against the reference and the default."""
import json
import sys

import torch
from fused4 import ws_fused4_decode
from kernels import latent_decode_attention
from kernels.bench import KernelBenchConfig, _bench, kernel_breakdown, make_problem
from kernels.reference import latent_decode_attention_ref
from tests.kernels.latent_cases import Case, make_inputs, rel_error

dev = torch.device("cuda")
emit = lambda **kw: print(json.dumps(kw), flush=True)  # noqa: E731
VARIANTS = [dict(dot_cols=128, kst=2, vst=4, lead=1), dict(dot_cols=256, kst=2, vst=4, lead=1),
            dict(dot_cols=128, kst=3, vst=3, lead=1), dict(dot_cols=128, kst=2, vst=4, lead=1, fold_heads=2)]
if sys.argv[1] == "correct":
    for v in VARIANTS:
        errs = []
        for slots, batch, left_pad, dt in ((37, 2, True, torch.float16), (2049, 2, True, torch.bfloat16),
                                           (5000, 1, True, torch.float16), (70000, 1, False, torch.float16)):
            case = Case(num_heads=8, num_kv_heads=8, head_dim=128, group_size=4, k_ranks=(128, 128),
                        v_ranks=(384, 384), num_slots=slots, batch=batch, dtype=dt, left_pad=left_pad)
            p = make_inputs(case, dev)
            out = ws_fused4_decode(p, **v)
            torch.cuda.synchronize()
            errs.append(rel_error(out, latent_decode_attention_ref(**p)))
        emit(mode="correct", **v, rel_errs=errs)
    sys.exit(0)
for seq, batch in ((65536, 1), (262144, 1), (65536, 8), (4096, 1)):
    cfg = KernelBenchConfig(total_rank=1024, total_rank_v=3072, target_seq_lens=(seq,), batch_size=batch)
    p = make_problem(cfg, seq, dev)
    ref = latent_decode_attention(**p)
    row = dict(seq=seq, batch=batch, default_us=_bench([lambda: latent_decode_attention(**p)]) * 1e3)
    if seq == 65536 and batch == 1:
        row["default_kernels"] = {k[:24]: v for k, v in kernel_breakdown(lambda: latent_decode_attention(**p)).items()}
    for v in VARIANTS:
        key = "h{}_c{dot_cols}_k{kst}_v{vst}_l{lead}".format(v.get("fold_heads", 4), **v)
        row[key + "_err"] = ((ws_fused4_decode(p, **v, ranks=(128, 384)) - ref).norm() / ref.norm()).item()
        row[key] = _bench([lambda: ws_fused4_decode(p, **v, ranks=(128, 384))]) * 1e3
        if seq == 65536 and batch == 1:
            row[key + "_kernel"] = kernel_breakdown(lambda: ws_fused4_decode(p, **v, ranks=(128, 384)))["_ws_fused4_kernel"]
    emit(mode="time", **row)
    del p, ref
    torch.cuda.empty_cache()
