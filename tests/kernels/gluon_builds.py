"""Build (never run) the sm_90 Gluon kernels for the shapes their GPU tests cover; one JSON line per build.

Run as a script in a process without TRITON_INTERPRET (test_gluon_builds.py does): kernels.offline_build
replaces Triton's driver for the whole process.
"""
from __future__ import annotations

import json
import sys

import torch

# (head_dim, heads per group, key rank[, value rank]): the GPU tests' shapes, the backend test's shape, and two
# edges of the scope (head_dim 256 and 16). A scratch sweep of the whole scope (head_dim 16-256, 1-8 heads per
# group, key ranks 16-256, value ranks 64/192/512: 396 builds, eleventh session) built every accepted shape.
SINGLE_PASS_SHAPES = [(128, 4, 128, 384), (128, 1, 64, 128), (128, 2, 256, 64), (64, 4, 128, 192), (64, 2, 32, 512),
                      (64, 8, 16, 64), (64, 4, 64, 320), (256, 2, 64, 192), (16, 8, 32, 64)]
FOLD_SHAPES = [(128, 4, 128), (128, 1, 64), (128, 2, 256), (64, 4, 128), (64, 2, 32), (64, 1, 16), (256, 1, 128),
               (16, 8, 16)]
# The variants the GPU tests and benchmarks/fold_heads_sweep.py run (module constants), on the Llama shape
VARIANTS = [("single_pass_ws", {"SP_THREAD_L": False}), ("single_pass_ws", {"SP_DOT_COLS": 256}),
            ("single_pass_ws", {"SP_DOT_COLS": 128, "SP_SCORE_PIPE": False, "SP_ROWS_PER_TILE": False}),
            ("single_pass_ws_quant", {"SPQ_SCORE_PIPE": True}),
            ("single_pass_ws", {"SP_KEY_STAGES": 4}), ("single_pass_ws", {"SP_L2_PREFETCH": 2}),
            ("single_pass_ws", {"SP_ROPE_CHAIN": 0, "SP_CONSUMER_REGS": 248}),
            ("fold_scores_ws", {"WS_FOLD_COLS": 256}),
            ("fold_scores_ws", {"WS_EARLY_TRIG": False}), ("fold_scores_ws", {"WS_STAGES": 8, "WS_FOLD_COLS": 256}),
            ("single_pass_ws_quant", {"SPQ_REG_KEYS": False})]
# The quantized single-pass kernel: (head_dim, heads per group, key rank, value rank, bits, sym, quant group), the
# shapes and codes of its GPU tests (test_single_pass_ws_quant.py; bf16 with 2/4 bits only)
QUANT_SHAPES = [(128, 4, 128, 384, 4, False, 32), (64, 2, 64, 128, 2, False, 32), (128, 2, 256, 192, 4, True, 64),
                (64, 8, 64, 512, 8, False, 32), (128, 4, 128, 384, 2, False, 32)]
BATCH, GROUPS, SLOTS = 2, 2, 1000  # the build depends on shapes only through constexprs and alignment


def _common(head_dim: int, gs: int, rank: int, dtype: torch.dtype) -> dict:
    return dict(rows=torch.zeros(BATCH, GROUPS, gs * head_dim, rank, dtype=dtype),
                k_fp=torch.zeros(BATCH, SLOTS, GROUPS * rank, dtype=dtype),
                positions=torch.zeros(BATCH, SLOTS, dtype=torch.int32), kv_start=torch.zeros(BATCH, dtype=torch.int32),
                inv_freq=torch.zeros(head_dim // 2, dtype=torch.float32))


def build_single_pass(head_dim: int, gs: int, rank: int, rank_v: int, dtype: torch.dtype) -> dict:
    from kernels import single_pass_ws as sp
    from kernels.offline_build import compile_only, resource_usage

    elt = torch.empty(0, dtype=dtype).element_size()
    fold_heads = sp.sp_fold_heads(gs, head_dim, rank, rank_v, elt)
    c = _common(head_dim, gs, rank, dtype)
    v_fp = torch.zeros(BATCH, SLOTS, GROUPS * rank_v, dtype=dtype)
    heads = GROUPS * gs

    def parts(n: int):
        return (torch.zeros(BATCH, heads, n), torch.zeros(BATCH, heads, n), torch.zeros(BATCH, heads, n, rank_v))

    with compile_only(90) as built:
        sp.ws_single_pass(c["rows"], c["k_fp"], v_fp, c["positions"], c["kv_start"], c["inv_freq"], heads, rank,
                          rank_v, gs, fold_heads, 132, None, parts)
    (kernel,) = built
    return {"kernel": "single_pass_ws", "shape": [head_dim, gs, rank, rank_v], "dtype": str(dtype),
            "fold_heads": fold_heads, "estimate": sp.sp_shared_bytes(fold_heads, head_dim, rank, rank_v, elt),
            **resource_usage(kernel)}


def build_single_pass_quant(head_dim: int, gs: int, rank: int, rank_v: int, bits: int, sym: bool, quant_group: int,
                            dtype: torch.dtype) -> dict:
    from kernels import single_pass_ws_quant as spq
    from kernels.latent_attention import LatentView
    from kernels.offline_build import compile_only, resource_usage

    elt = torch.empty(0, dtype=dtype).element_size()
    fold_heads = spq.spq_fold_heads(gs, head_dim, rank, rank_v, elt, bits, quant_group, not sym)
    groups = 8  # 16-byte scale rows at every shape here
    c = _common(head_dim, gs, rank, dtype)
    rows = torch.zeros(BATCH, groups, gs * head_dim, rank, dtype=dtype)

    def view(r: int) -> LatentView:
        meta = torch.zeros(BATCH, SLOTS, groups * r // quant_group, dtype=dtype)
        return LatentView(fp=None, codes=torch.zeros(BATCH, SLOTS, groups * r * bits // 32, dtype=torch.int32),
                          scale=meta, zero=None if sym else meta.clone(), bits=bits, quant_group_size=quant_group)

    heads = groups * gs

    def parts(n: int):
        return (torch.zeros(BATCH, heads, n), torch.zeros(BATCH, heads, n), torch.zeros(BATCH, heads, n, rank_v))

    with compile_only(90) as built:
        spq.ws_single_pass_quant(rows, view(rank), view(rank_v), c["positions"], c["kv_start"], c["inv_freq"], heads,
                                 rank, rank_v, gs, fold_heads, 132, None, parts)
    (kernel,) = built
    return {"kernel": "single_pass_ws_quant", "shape": [head_dim, gs, rank, rank_v, bits, sym, quant_group],
            "dtype": str(dtype), "fold_heads": fold_heads,
            "estimate": spq.spq_shared_bytes(fold_heads, head_dim, rank, rank_v, elt, bits, quant_group, not sym),
            **resource_usage(kernel)}


def build_fold(head_dim: int, gs: int, rank: int, dtype: torch.dtype) -> dict:
    from kernels import fold_scores_ws as ws
    from kernels.offline_build import compile_only, resource_usage

    elt = torch.empty(0, dtype=dtype).element_size()
    fold_heads = ws.ws_fold_heads(gs, head_dim, rank, elt)
    c = _common(head_dim, gs, rank, dtype)
    scores = torch.zeros(BATCH, GROUPS * gs, SLOTS)
    with compile_only(90) as built:
        ws.ws_fold_scores(c["rows"], c["k_fp"], c["positions"], c["kv_start"], c["inv_freq"], scores, rank, gs,
                          fold_heads, 132)
    (kernel,) = built
    stages = ws.ws_stages(fold_heads, head_dim, rank, elt)
    ring = fold_heads * head_dim * rank * elt + stages * ws.WS_BLOCK_S * rank * elt
    return {"kernel": "fold_scores_ws", "shape": [head_dim, gs, rank], "dtype": str(dtype), "fold_heads": fold_heads,
            "estimate": ring, **resource_usage(kernel)}


def build_variant(kernel: str, constants: dict) -> dict:
    """The Llama shape (head_dim 128, 4 heads per group, ranks 128 / 384; 4-bit codes for the quantized kernel)
    with module constants changed."""
    import importlib

    from kernels.offline_build import set_constant

    module = importlib.import_module(f"kernels.{kernel}")
    saved = {name: getattr(module, name) for name in constants}
    try:
        for name, value in constants.items():
            set_constant(module, name, value)
        if kernel == "single_pass_ws":
            out = build_single_pass(128, 4, 128, 384, torch.float16)
        elif kernel == "single_pass_ws_quant":
            out = build_single_pass_quant(128, 4, 128, 384, 4, False, 32, torch.float16)
        else:
            out = build_fold(128, 4, 128, torch.float16)
    finally:
        for name, value in saved.items():
            setattr(module, name, value)
    return {**out, "variant": constants}


def main() -> int:
    for dtype in (torch.float16, torch.bfloat16):
        for shape in SINGLE_PASS_SHAPES:
            print(json.dumps(build_single_pass(*shape, dtype)), flush=True)
        for shape in FOLD_SHAPES:
            print(json.dumps(build_fold(*shape, dtype)), flush=True)
        for shape in QUANT_SHAPES:
            if dtype == torch.float16 or shape[4] <= 4:
                print(json.dumps(build_single_pass_quant(*shape, dtype)), flush=True)
    for kernel, constants in VARIANTS:
        print(json.dumps(build_variant(kernel, constants)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
