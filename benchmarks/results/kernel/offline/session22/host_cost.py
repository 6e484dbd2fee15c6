"""Host-side cost of one decode step, measured on a machine without a GPU (twenty-second session, a scratch measurement
kept with its numbers; not part of the library or the tests).

Part 1: aten ops dispatched by one decode step of a Llama-shaped attention module (32 x 128 heads, hidden size 256,
ranks 1024 / 3072 in groups of 4), Palu through its Triton path (the Gluon launches built for sm_90 by
kernels.offline_build.compile_only, not run) against the baseline module with a static cache.
Part 2: Python time of latent_decode_attention (argument checks, then three launches bound with three TMA
descriptors) and of its inner _single_pass_decode_ws alone, at 4096 slots.

It patches the library in this process only: the dispatcher's "CPU tensors need the interpreter" check is dropped,
the sm_90 check answers yes, and the SM count is 132.

    env -u TRITON_INTERPRET PYTHONPATH=. python benchmarks/results/kernel/offline/session22/host_cost.py
"""
import collections
import inspect
import statistics
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import kernels
import kernels.latent_attention as la
import kernels.single_pass_ws as sp
import kernels.single_pass_ws_quant as spq
from kernels.offline_build import compile_only
from palu.bench.latency import LatencyConfig, attention_setup

la._interpreting = lambda: False
_src = inspect.getsource(la.latent_decode_attention)
_a = _src.index("    assert interpret == (device.type")
_b = _src.index("    num_sms =", _a)
exec(compile(_src[:_a] + _src[_b:], la.__file__, "exec"), la.__dict__)
kernels.latent_decode_attention = la.latent_decode_attention
sp.hopper_unsupported = spq.hopper_unsupported = lambda q: ""
_PROPS = type("Props", (), {"multi_processor_count": 132})()
torch.cuda.get_device_properties = lambda device=None: _PROPS
VIEWS = ("view", "unsqueeze", "expand", "slice", "permute", "transpose", "alias", ".t.", "select", "as_strided")


class _Count(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func)] += 1
        return func(*args, **(kwargs or {}))


def _median_us(fn, n: int = 200) -> float:
    fn()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def module_ops() -> None:
    cfg = LatencyConfig(num_heads=32, num_kv_heads=32, head_dim=128, hidden_size=256, intermediate_size=512,
                        num_layers=1, rank_k=1024, rank_v=3072, group_size=4, prompt_len=1000, dtype="float16",
                        warmup=0, reps=40, device="cpu", backend="torch")
    for palu in (False, True):
        _, attn, rotary, cache, x = attention_setup(cfg, palu, "static")
        if palu:
            attn._use_triton = lambda q, layer: True
        pos = torch.full((1, 1), cfg.prompt_len, dtype=torch.long)
        with torch.no_grad(), compile_only(90), _Count() as count:
            attn(x, position_embeddings=rotary(x, pos), attention_mask=None, past_key_values=cache, position_ids=pos)
        ops = sum(count.ops.values())
        real = sum(v for k, v in count.ops.items() if not any(s in k for s in VIEWS))
        print(f"{'Palu (Triton path)' if palu else 'baseline (static cache)'}: {ops} aten ops, {real} not views")


def decode_call() -> None:
    b, g, gs, d, r, rv, n, dt = 1, 8, 4, 128, 128, 384, 4096, torch.float16
    def view(width: int):
        return la.LatentView(fp=torch.zeros(b, n, g * width, dtype=dt), codes=None, scale=None, zero=None, bits=16,
                             quant_group_size=32)

    kv, vv = view(r), view(rv)
    q, k_up = torch.zeros(b, g * gs, d, dtype=dt), torch.zeros(g, gs * d, r, dtype=dt)
    k_off, v_off = (torch.arange(g + 1, dtype=torch.int32) * w for w in (r, rv))
    pos, kv_start = torch.zeros(b, n, dtype=torch.int32), torch.zeros(b, dtype=torch.int32)
    inv_freq = torch.zeros(d // 2)

    def full():
        return la.latent_decode_attention(q, kv, vv, k_up, k_off, v_off, pos, kv_start, inv_freq, 1.0, 0.088, gs,
                                          out_dtype=dt)

    def inner():
        return la._single_pass_decode_ws(q, kv, vv, k_up, k_off, pos, kv_start, inv_freq, 1.0, 0.088, gs, r, rv, 132,
                                         None, None, dt)

    with compile_only(90):
        print(f"latent_decode_attention: {_median_us(full):.0f} us of Python per call; "
              f"_single_pass_decode_ws alone: {_median_us(inner):.0f} us")


if __name__ == "__main__":
    module_ops()
    decode_call()
