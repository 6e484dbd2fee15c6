"""Fold path: query heads per score program (fold_heads) against the reconstruction kernel, per shape.

For each (length, batch, bits): CUDA-graph time of the whole decode call with fold_heads = 1, 2, 4
(and 8 warps for 1 and 4), with method="rope_qk" and the default, plus each variant's score-kernel
time (torch profiler); "tiles": stages and slots per tile of the default program; "value_cols": value
channels per value-kernel program. The data behind choose_fold_heads, FOLD_STAGES, value_cols="auto"
and the auto rule in kernels/latent_attention.py; "single_pass": the single-pass kernel's variants;
"ws": the warp-specialized Gluon score kernel (kernels.fold_scores_ws) against the Triton one;
"single_pass_ws": the Gluon single-pass kernel (kernels.single_pass_ws) and its variants against the fold path;
"splits": the single-pass kernels' slot splits at short contexts; "fold_rows": rank columns per fold-rows program;
"pdl": programmatic dependent launch along the Gluon path's three launches (DECODE_PDL) against the default.
Usage (CUDA machine, repo root):
  PYTHONPATH=. python benchmarks/fold_heads_sweep.py out.json \
      [heads|tiles|value_cols|default|reconstruction|single_pass|ws|single_pass_ws|splits|fold_rows|pdl] \
      [seq,batch,bits;...] [NAME=VALUE,...]
The last argument sets module constants (names as in VARIANT_SETS, e.g. sp.SP_CONSUMER_REGS=240) for the
whole process before anything compiles: a Gluon kernel refuses a global that changes after its first
build in a process ("Global variable changed"), so such variants need one process each.
"""
import ast
import dataclasses
import importlib
import json
import math
import sys

import torch

import kernels.latent_attention as la
from kernels import latent_decode_attention
from kernels.bench import L2_ROTATE_BYTES, KernelBenchConfig, _bench, fused_traffic, kernel_breakdown, make_problem
from kernels.offline_build import set_constant

SHAPES = [(4096, 1, 16), (8192, 1, 16), (16384, 1, 16), (32768, 1, 16), (65536, 1, 16), (262144, 1, 16),
          (65536, 8, 16), (16384, 8, 16), (65536, 1, 4), (4096, 1, 4)]
# name -> (latent_decode_attention kwargs, kernels.latent_attention module constants for the run)
VARIANT_SETS = {
    "heads": {
        # the Triton score kernel's variants (warp_specialized=False: on sm_90 the default is the Gluon one)
        **{f"fold_heads={h}": (dict(method="fold", fold_heads=h, warp_specialized=False), {}) for h in (1, 2, 4)},
        "fold_heads=4,warps=8": (dict(method="fold", fold_heads=4, warp_specialized=False), dict(FOLD_WARPS=8)),
        "fold_heads=1,warps=8": (dict(method="fold", fold_heads=1, warp_specialized=False), dict(FOLD_WARPS=8)),
        "rope_qk": (dict(method="rope_qk"), {}),
        "auto": ({}, {}),
    },
    "value_cols": {  # value channels per value-kernel program
        **{f"value_cols={c}": (dict(value_cols=c), {}) for c in ("all", 128)},
    },
    "single_pass": {  # the single-pass kernel (kernels.single_pass): heads per program, slots per block, warps, stages
        "auto": ({}, {}),
        "single_pass,hp=4": (dict(method="single_pass", fold_heads=4), {}),
        "single_pass,hp=2": (dict(method="single_pass", fold_heads=2), {}),
        "single_pass,hp=1": (dict(method="single_pass", fold_heads=1), {}),
        "single_pass,hp=2,stages=3": (dict(method="single_pass", fold_heads=2), dict(SINGLE_PASS_STAGES=3)),
        "single_pass,hp=2,block=64": (dict(method="single_pass", fold_heads=2), dict(SINGLE_PASS_BLOCK_S=64)),
        "single_pass,hp=1,warps=4": (dict(method="single_pass", fold_heads=1), dict(SINGLE_PASS_WARPS=4)),
    },
    "ws": {  # the warp-specialized Gluon score kernel (kernels.fold_scores_ws) against the Triton one
        "triton": (dict(method="fold", warp_specialized=False), {}),
        "gluon": (dict(method="fold", warp_specialized=True), {}),
        "gluon,stages=6": (dict(method="fold", warp_specialized=True), {"ws.WS_STAGES": 6}),
        "gluon,hp=4,stages=4": (dict(method="fold", warp_specialized=True), {"ws.WS_FOLD_COLS": 512}),
        "gluon,hp=4,stages=5": (dict(method="fold", warp_specialized=True),
                                {"ws.WS_STAGES": 5, "ws.WS_FOLD_COLS": 512}),
        "gluon,hp=4,stages=5,late_trig": (dict(method="fold", warp_specialized=True),
                                          {"ws.WS_STAGES": 5, "ws.WS_FOLD_COLS": 512, "ws.WS_EARLY_TRIG": False}),
    },
    "single_pass_ws": {  # session 10 ran these as auto / fold / ... with SP_AUTO set (same kernels)
        "single_pass_ws": (dict(method="single_pass", warp_specialized=True), {}),
        "fold": (dict(method="fold"), {}),
        "thread_l=0": (dict(method="single_pass", warp_specialized=True), {"sp.SP_THREAD_L": False}),
        "dot_cols=256": (dict(method="single_pass", warp_specialized=True), {"sp.SP_DOT_COLS": 256}),
        "fold_heads=2": (dict(method="single_pass", warp_specialized=True, fold_heads=2), {}),
    },
    "single_pass_ws_only": {"single_pass_ws": (dict(method="single_pass", warp_specialized=True), {})},
    "splits": {  # the single-pass kernels' slot splits (two per chunk) against sp_chunks' one program per SM
        "auto": (dict(method="single_pass", warp_specialized=True), {}),
        **{f"num_splits={n}": (dict(method="single_pass", warp_specialized=True, num_splits=n), {})
           for n in (8, 12, 16, 24, 64)},
        "fold_heads=2": (dict(method="single_pass", warp_specialized=True, fold_heads=2), {}),
    },
    "fold_rows": {  # rank columns per fold-rows program (FOLD_ROWS_RANK_BLOCK) under the default decode path
        "auto": ({}, {}),
        **{f"fold_rows_block={n}": ({}, {"FOLD_ROWS_RANK_BLOCK": n}) for n in (32, 64)},
    },
    "pdl": {  # programmatic dependent launch along fold rows -> single pass -> merge (DECODE_PDL)
        "auto": ({}, {"DECODE_PDL": False}),
        "pdl": ({}, {"DECODE_PDL": True}),
    },
    "default": {"auto": ({}, {})},  # the shipped configuration alone (A/B runs of two source trees)
    "reconstruction": {"rope_qk": (dict(method="rope_qk"), {})},  # the GQA path alone, likewise
    "tiles": {  # the Triton score kernel, two heads per program: latent tiles in flight and slots per tile
        "auto": ({}, {}),
        "triton": (dict(warp_specialized=False), {}),
        "stages=3": (dict(warp_specialized=False), dict(FOLD_STAGES=3)),
        "block=128,stages=1": (dict(warp_specialized=False), dict(FOLD_BLOCK_S=128, FOLD_STAGES=1)),
        "block=32,stages=4": (dict(warp_specialized=False), dict(FOLD_BLOCK_S=32, FOLD_STAGES=4)),
    },
}


PREFIXES = {"ws.": "kernels.fold_scores_ws", "sp.": "kernels.single_pass_ws", "spq.": "kernels.single_pass_ws_quant",
            "wu.": "kernels.word_unpack", "ld.": "kernels.latent_down", "gd.": "palu.graph_decode"}


def _target(name: str) -> tuple:
    """(module, attribute) of a variant constant: "ws.X" is kernels.fold_scores_ws.X, "sp.X"
    kernels.single_pass_ws.X, "spq.X" kernels.single_pass_ws_quant.X, "wu.X" kernels.word_unpack.X (the quantized
    kernel's unpacking), "ld.X" kernels.latent_down.X, "gd.X" palu.graph_decode.X, else kernels.latent_attention."""
    for prefix, module in PREFIXES.items():
        if name.startswith(prefix):
            return importlib.import_module(module), name[len(prefix):]
    return la, name


def parse_constants(spec: str) -> dict:
    """{name: value} of "NAME=VALUE,..." (VALUE a Python literal), each name a constant of its module."""
    done = {}
    for item in filter(None, spec.split(",")):
        name, eq, text = item.partition("=")
        if not eq:
            raise SystemExit(f"module constants are NAME=VALUE (e.g. sp.SP_CONSUMER_REGS=240), got {item!r}")
        module, attr = _target(name)
        if not hasattr(module, attr):
            raise SystemExit(f"{name}: {module.__name__} has no constant {attr} (prefixes: "
                             f"{', '.join(PREFIXES)}, or none for kernels.latent_attention)")
        done[name] = ast.literal_eval(text)
    return done


def _set_process_constants(spec: str) -> dict:
    """Apply "NAME=VALUE,..." before the first compile; a constant that is a Gluon constexpr stays one. Returns
    what was set, for the JSON."""
    done = parse_constants(spec)
    for name, value in done.items():
        set_constant(*_target(name), value)
    return done


def main() -> int:
    out_path, variant_set = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "heads"
    process_constants = _set_process_constants(sys.argv[4]) if len(sys.argv) > 4 else {}
    device = torch.device("cuda")
    rows = []
    shapes = {
        "heads": SHAPES,
        "single_pass": [(4096, 1, 16), (16384, 1, 16), (65536, 1, 16), (262144, 1, 16), (65536, 8, 16), (4096, 8, 16),
                  (65536, 1, 4), (4096, 1, 4)],
        "default": [(4096, 1, 16), (65536, 1, 16), (65536, 8, 16), (4096, 8, 16), (65536, 1, 4)],
        "pdl": [(4096, 1, 16), (16384, 1, 16), (65536, 1, 16), (65536, 8, 16), (16384, 8, 16)],
        "ws": [(4096, 1, 16), (16384, 1, 16), (65536, 1, 16), (262144, 1, 16), (65536, 8, 16), (4096, 8, 16)],
        "single_pass_ws": [(4096, 1, 16), (16384, 1, 16), (65536, 1, 16), (262144, 1, 16), (65536, 8, 16),
                           (4096, 8, 16)],
        "reconstruction": [(4096, 1, 16), (65536, 1, 16), (65536, 1, 4)],
        "single_pass_ws_only": [(65536, 1, 16), (65536, 8, 16)],
        "splits": [(4096, 1, 16), (4096, 1, 4), (16384, 1, 16), (16384, 1, 4), (4096, 8, 16)],
        "fold_rows": [(4096, 1, 16), (4096, 1, 4), (16384, 1, 16), (65536, 1, 16), (4096, 8, 16)],
        "tiles": [(4096, 1, 16), (65536, 1, 16), (262144, 1, 16), (65536, 8, 16), (65536, 1, 4)],
        "value_cols": [(4096, 1, 4), (65536, 1, 4), (65536, 8, 4), (4096, 1, 16), (65536, 1, 16), (65536, 8, 16)],
    }[variant_set]
    if len(sys.argv) > 3 and sys.argv[3]:  # shapes given as seq_len,batch,bits;...
        shapes = [tuple(int(v) for v in item.split(",")) for item in sys.argv[3].split(";")]
    for seq_len, batch, bits in shapes:
        cfg = KernelBenchConfig(total_rank=1024, total_rank_v=3072, batch_size=batch, bits=bits,
                                target_seq_lens=(seq_len,))
        sets = max(1, min(4, math.ceil(L2_ROTATE_BYTES / fused_traffic(cfg, seq_len)[0])))  # as run_latency_kernel
        problems = [make_problem(cfg, seq_len, device, seed=i) for i in range(sets)]
        row = {"seq_len": seq_len, "batch": batch, "bits": bits, "variants": {}}
        check = latent_decode_attention(**problems[0], method="rope_qk")  # each variant must agree with it
        for name, (kw, consts) in VARIANT_SETS[variant_set].items():
            saved = {k: getattr(*_target(k)) for k in consts}
            for k, v in consts.items():
                setattr(*_target(k), v)
            try:
                us = _bench([lambda p=p: latent_decode_attention(**p, **kw) for p in problems]) * 1e3
                parts = kernel_breakdown(lambda: latent_decode_attention(**problems[0], **kw))
            except Exception as exc:  # e.g. a variant that needs more shared memory than an SM has
                row["variants"][name] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
                print(f"S={seq_len} B={batch} bits={bits} {name}: FAILED {type(exc).__name__}: {exc}"[:300], flush=True)
            else:
                score = sum(v for k, v in parts.items() if "fold_scores" in k or "rope_qk" in k or "single_pass" in k)
                out = latent_decode_attention(**problems[0], **kw)
                err = ((out - check).norm() / check.norm()).item()
                row["variants"][name] = {"time_us": us, "score_kernel_us": score, "rel_err_vs_rope_qk": err,
                                         "kernels_us": parts}
                print(f"S={seq_len} B={batch} bits={bits} {name}: {us:.1f} us (score kernel {score:.1f}, "
                      f"rel err vs rope_qk {err:.1e})", flush=True)
            for k, v in saved.items():
                setattr(*_target(k), v)
        rows.append(row)
        del problems
        torch.cuda.empty_cache()
    with open(out_path, "w") as f:
        json.dump({"argv": sys.argv, "device": torch.cuda.get_device_name(), "rows": rows,
                   "process_constants": process_constants,
                   "config": dataclasses.asdict(KernelBenchConfig(total_rank=1024, total_rank_v=3072))}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
