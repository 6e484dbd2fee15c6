"""On the GPU: PYTHONPATH=.:benchmarks/results/kernel/h200/session10/experiments python .../run_fused.py MODE [HP NS]
MODE correct: the draft fused kernel against the torch reference; MODE time: against the default path.
Prints one JSON line per measurement."""
import json
import sys

import torch
from fused_draft import ws_fused_decode
from kernels import latent_decode_attention
from kernels.bench import KernelBenchConfig, _bench, kernel_breakdown, make_problem
from kernels.reference import latent_decode_attention_ref
from tests.kernels.latent_cases import Case, make_inputs, rel_error

dev = torch.device("cuda")
mode = sys.argv[1]
hp, st = (int(sys.argv[2]), int(sys.argv[3])) if len(sys.argv) > 3 else (2, 2)
emit = lambda **kw: print(json.dumps(kw), flush=True)  # noqa: E731
if mode == "correct":
    for slots, batch, left_pad in ((37, 2, True), (64, 1, False), (2049, 2, True), (5000, 1, True), (70000, 1, False)):
        case = Case(num_heads=8, num_kv_heads=8, head_dim=128, group_size=4, k_ranks=(128, 128), v_ranks=(384, 384),
                    num_slots=slots, batch=batch, dtype=torch.float16, left_pad=left_pad)
        p = make_inputs(case, dev)
        out = ws_fused_decode(p, fold_heads=hp, stages=st)
        torch.cuda.synchronize()
        emit(mode=mode, hp=hp, stages=st, slots=slots, batch=batch,
             rel_err=rel_error(out, latent_decode_attention_ref(**p)),
             rel_err_default=rel_error(latent_decode_attention(**p), latent_decode_attention_ref(**p)))
elif mode == "ablate":
    cfg = KernelBenchConfig(total_rank=1024, total_rank_v=3072, target_seq_lens=(65536,))
    p = make_problem(cfg, 65536, dev)
    ranks = (128, 384)
    for ab in (0, 1, 2):
        us = _bench([lambda: ws_fused_decode(p, hp, st, ablate=ab, ranks=ranks)]) * 1e3
        emit(mode=mode, hp=hp, stages=st, ablate=ab, us=us,
             kernel_us=kernel_breakdown(lambda: ws_fused_decode(p, hp, st, ablate=ab, ranks=ranks))["_ws_fused_kernel"])
    emit(mode=mode, default_us=_bench([lambda: latent_decode_attention(**p)]) * 1e3,
         default_kernels={k[:40]: v for k, v in kernel_breakdown(lambda: latent_decode_attention(**p)).items()})
elif mode == "ncu":
    cfg = KernelBenchConfig(total_rank=1024, total_rank_v=3072, target_seq_lens=(65536,))
    p = make_problem(cfg, 65536, dev)
    for _ in range(3):
        ws_fused_decode(p, hp, st)
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    ws_fused_decode(p, hp, st)
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()
else:
    for seq, batch in ((4096, 1), (16384, 1), (65536, 1), (262144, 1), (65536, 8)):
        cfg = KernelBenchConfig(total_rank=1024, total_rank_v=3072, target_seq_lens=(seq,), batch_size=batch)
        p = make_problem(cfg, seq, dev)
        ref = latent_decode_attention(**p)
        err = ((ws_fused_decode(p, hp, st) - ref).norm() / ref.norm()).item()
        fused = _bench([lambda: ws_fused_decode(p, hp, st)]) * 1e3
        default = _bench([lambda: latent_decode_attention(**p)]) * 1e3
        emit(mode=mode, hp=hp, stages=st, seq=seq, batch=batch, fused_us=fused, default_us=default, rel_err=err,
             fused_kernels=kernel_breakdown(lambda: ws_fused_decode(p, hp, st)))
        del p, ref
        torch.cuda.empty_cache()
