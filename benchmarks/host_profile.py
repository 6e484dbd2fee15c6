"""Where the host's time goes in eager whole-model decoding: Palu's latent cache vs the DynamicCache baseline.

Eager decoding of the whole model is bound by the host on the GPUs measured (run_latency_attention.py prints each
run's host time). This script times the Python of one decode step per function (wall time inside each wrapped
function, per layer and step; the GPU runs behind, so a function's time is its Python and launch cost, unless it
synchronizes), per Triton/Gluon launch (``JITFunction.run``: binding, specialization, cache lookup and the launch),
and the aten ops' host time from torch.profiler (CPU activity only). Calibration: the host time of one small aten op
and of one Triton launch on this machine.

Usage (CUDA machine, repo root):
    PYTHONPATH=. python benchmarks/host_profile.py --prompt_len 4096 --num_layers 8 --output_json host.json
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import functools
import json
import statistics
import sys
import time

import torch


def _wrap_all(targets: list[tuple[object, str, str]], totals: collections.Counter, calls: collections.Counter):
    """Replace each (owner, attribute) with a wrapper adding its wall time to totals[label]; returns an undo."""
    saved = []
    for owner, name, label in targets:
        fn = getattr(owner, name)

        @functools.wraps(fn)
        def timed(*a, __fn=fn, __label=label, **k):
            t0 = time.perf_counter()
            try:
                return __fn(*a, **k)
            finally:
                totals[__label] += time.perf_counter() - t0
                calls[__label] += 1

        saved.append((owner, name, fn))
        setattr(owner, name, timed)

    def undo():
        for owner, name, fn in saved:
            setattr(owner, name, fn)

    return undo


def _targets() -> list[tuple[object, str, str]]:
    import kernels
    import kernels.latent_attention as la
    import kernels.single_pass_ws as sp
    import kernels.single_pass_ws_quant as spq
    from transformers.models.llama import modeling_llama as ml

    from palu.modules import attention as pa
    from palu.modules import cache as pc

    out = [(ml.LlamaDecoderLayer, "forward", "LlamaDecoderLayer.forward"),
           (ml.LlamaAttention, "forward", "LlamaAttention.forward"), (ml.LlamaMLP, "forward", "LlamaMLP.forward"),
           (ml.LlamaRMSNorm, "forward", "LlamaRMSNorm.forward"),
           (pc.PaluLatentLayer, "append_latents", "PaluLatentLayer.append_latents"),
           (kernels, "latent_decode_attention", "latent_decode_attention"),
           (la, "_single_pass_decode_ws", "_single_pass_decode_ws"), (la, "_folded_rows", "_folded_rows"),
           (la, "_merge", "_merge"), (sp, "ws_single_pass", "ws_single_pass"),
           (spq, "ws_single_pass_quant", "ws_single_pass_quant")]
    for name in ("forward", "_forward_latent", "decode_output", "_triton_decode", "_output"):
        out.append((pa.PaluAttention, name, f"PaluAttention.{name}"))
    return out


def _launch_timer(totals: collections.Counter, calls: collections.Counter):
    """Time every Triton/Gluon launch by kernel name (JITFunction.run); returns an undo."""
    from triton.runtime.jit import JITFunction

    original = JITFunction.run

    def run(self, *a, **k):
        t0 = time.perf_counter()
        try:
            return original(self, *a, **k)
        finally:
            key = f"launch {self.fn.__name__}"
            totals[key] += time.perf_counter() - t0
            calls[key] += 1

    JITFunction.run = run
    return lambda: setattr(JITFunction, "run", original)


def _calibrate() -> dict:
    """Host microseconds of one small aten op and of one launch of a trivial Triton kernel, on this machine."""
    import triton
    import triton.language as tl

    @triton.jit
    def _one(x_ptr, n, BLOCK: tl.constexpr):
        i = tl.arange(0, BLOCK)
        tl.store(x_ptr + i, tl.load(x_ptr + i, mask=i < n) + 1, mask=i < n)

    x = torch.zeros(64, device="cuda")

    def per_call(fn, n=2000):
        fn()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        dt = (time.perf_counter() - t0) / n * 1e6
        torch.cuda.synchronize()
        return dt

    return {"aten_add_us": per_call(lambda: x.add_(1)), "aten_empty_us": per_call(lambda: torch.empty(64, device="cuda")),
            "triton_launch_us": per_call(lambda: _one[(1,)](x, 64, BLOCK=64))}


def profile_side(cfg, palu: bool, steps: int) -> dict:
    from torch.profiler import ProfilerActivity, profile

    from palu.bench.latency import _decode_step, build_model, filled_baseline_cache, filled_palu_cache

    model = build_model(cfg, palu=palu)
    extra = 3 * steps + 16
    cache = filled_palu_cache(model, cfg, extra) if palu else filled_baseline_cache(cfg, cfg.num_layers, "dynamic", extra)
    step = _decode_step(model, cache, cfg, cfg.prompt_len)
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    walls = []
    for _ in range(steps):  # plain: host time per step, device synchronized after each (as time_fn)
        t0 = time.perf_counter()
        step()
        walls.append(time.perf_counter() - t0)
        torch.cuda.synchronize()
    totals, calls = collections.Counter(), collections.Counter()
    undo = [_wrap_all(_targets(), totals, calls), _launch_timer(totals, calls)]
    try:
        for _ in range(steps):
            step()
            torch.cuda.synchronize()
    finally:
        for u in undo:
            u()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    ops = collections.Counter()
    counts = collections.Counter()
    for ev in prof.key_averages():
        if ev.key.startswith("aten::") or ev.key.startswith("cuda"):
            ops[ev.key] += ev.self_cpu_time_total
            counts[ev.key] += ev.count
    n_layers = cfg.num_layers
    per = steps * n_layers
    del model, cache
    torch.cuda.empty_cache()
    return {
        "palu": palu, "host_ms_per_step": statistics.median(walls) * 1e3,
        "host_us_per_layer": statistics.median(walls) * 1e6 / n_layers,
        "functions_us_per_layer": {k: v * 1e6 / per for k, v in totals.most_common()},
        "calls_per_layer": {k: calls[k] / per for k in totals},
        "aten_self_cpu_us_per_layer": {k: v / per for k, v in ops.most_common(25)},
        "aten_calls_per_layer": {k: counts[k] / per for k, _ in ops.most_common(25)},
        "aten_total_self_cpu_us_per_layer": sum(ops.values()) / per,
        "aten_total_calls_per_layer": sum(counts.values()) / per,
    }


def main() -> int:
    from palu.bench.latency import LatencyConfig
    from palu.cli import write_json_atomic

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompt_len", type=int, default=4096)
    p.add_argument("--num_layers", type=int, default=8)
    p.add_argument("--batch_size", type=int, default=1)
    p.add_argument("--lt_bits", type=int, nargs="+", default=[16, 4])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--output_json", required=True)
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("host_profile.py needs a CUDA GPU (it times launches)")
    base = LatencyConfig(num_layers=args.num_layers, prompt_len=args.prompt_len, batch_size=args.batch_size)
    out = {"argv": sys.argv, "device": torch.cuda.get_device_name(), "config": dataclasses.asdict(base),
           "calibration": _calibrate(), "runs": []}
    out["runs"].append({"side": "baseline (DynamicCache)", **profile_side(base, False, args.steps)})
    for bits in args.lt_bits:
        cfg = dataclasses.replace(base, lt_bits=bits)
        out["runs"].append({"side": f"palu {bits}-bit latents", **profile_side(cfg, True, args.steps)})
    print(json.dumps(out["calibration"]))
    for run in out["runs"]:
        print(f"== {run['side']}: {run['host_us_per_layer']:.0f} us host per layer "
              f"({run['aten_total_calls_per_layer']:.0f} aten calls, {run['aten_total_self_cpu_us_per_layer']:.0f} us)")
        for k, v in run["functions_us_per_layer"].items():
            print(f"   {k}: {v:.1f} us ({run['calls_per_layer'][k]:.2f} calls)")
        for k, v in list(run["aten_self_cpu_us_per_layer"].items())[:12]:
            print(f"   {k}: {v:.1f} us self ({run['aten_calls_per_layer'][k]:.2f} calls)")
    write_json_atomic(args.output_json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
