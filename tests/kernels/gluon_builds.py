"""Build (never run) the sm_90 Gluon kernels for the shapes their GPU tests cover; one JSON line per build.

Run as a script in a process without TRITON_INTERPRET (test_gluon_builds.py does): kernels.offline_build
replaces Triton's driver for the whole process.
"""
from __future__ import annotations

import json
import subprocess
import sys
from typing import Optional

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
            ("single_pass_ws_quant", {"SPQ_REG_KEYS": False}), ("single_pass_ws_quant", {"SPQ_NIBBLE_PAIRS": True})]
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
                            dtype: torch.dtype, kernels: Optional[list] = None) -> dict:
    """The build's resource_usage (and the compiled kernel appended to ``kernels`` when given)."""
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
    if kernels is not None:
        kernels.append(kernel)
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


def decode_steps() -> dict:
    """{phase: {kernel name: builds}} over simulated decode steps through the single-pass decode path (fold rows,
    the Gluon kernel, the merge) at the Llama shape: fp16 latents from 1000 slots for 40 steps (slot counts that are
    and are not multiples of 16, and one more chunk from 1025 slots), then 4-bit slots behind a 16-slot
    full-precision window, the quantized part one slot longer each step (the window's positions start one slot later
    each time); fp16 steps again with programmatic dependent launch (DECODE_PDL on an sm_90 device); then the Triton
    value kernel and merge of the other paths over the same fp16 steps."""
    import kernels.latent_attention as la
    from kernels.latent_attention import LatentView, _fold_values, _single_pass_decode_ws, decode_pdl
    from kernels.offline_build import compile_only

    batch, groups, gs, head_dim, rank, rank_v, cap, window, bits, qg = 1, 8, 4, 128, 128, 384, 1200, 16, 4, 32
    dt = torch.float16
    q = torch.zeros(batch, groups * gs, head_dim, dtype=dt)
    k_up = torch.zeros(groups, gs * head_dim, rank, dtype=dt)
    k_off = torch.arange(groups + 1, dtype=torch.int32) * rank
    kv_start, inv_freq = torch.zeros(batch, dtype=torch.int32), torch.zeros(head_dim // 2)
    positions = torch.zeros(batch, cap, dtype=torch.int32)

    def view(r: int, n_q: int, n_fp: int) -> LatentView:  # views into buffers of cap slots, as a PaluLatentLayer's
        meta = torch.zeros(batch, cap, groups * r // qg, dtype=dt)[:, :n_q]
        codes = torch.zeros(batch, cap, groups * r * bits // 32, dtype=torch.int32)[:, :n_q]
        fp = torch.zeros(batch, cap, groups * r, dtype=dt)[:, :n_fp]
        return LatentView(fp=fp, codes=codes if n_q else None, scale=meta if n_q else None,
                          zero=meta.clone() if n_q else None, bits=bits, quant_group_size=qg)

    phases = {"fp16": [(0, n) for n in range(1000, 1040)], "quantized": [(n, window) for n in range(1000, 1020)],
              "fp16_pdl": [(0, n) for n in range(1000, 1010)]}
    out = {}
    for phase, steps in phases.items():
        # decode_pdl asks the device (a CPU tensor here); the phase stands for an sm_90 device with DECODE_PDL on
        la.decode_pdl = (lambda device: True) if phase == "fp16_pdl" else decode_pdl
        with compile_only(90) as built:
            for n_q, n_fp in steps:
                _single_pass_decode_ws(q, view(rank, n_q, n_fp), view(rank_v, n_q, n_fp), k_up, k_off,
                                       positions[:, : n_q + n_fp], kv_start, inv_freq, 1.0, 0.1, gs, rank, rank_v,
                                       132, None, None, dt)
        la.decode_pdl = decode_pdl
        out[phase] = _builds_per_kernel(built)
        if phase.endswith("pdl"):  # per kernel: launched as a dependent, and its griddepcontrol instructions
            out["pdl_launches"] = {k.metadata.name: [bool(k.metadata.launch_pdl), k.asm["ptx"].count("griddepcontrol")]
                                   for k in built}
    # The Triton value kernel and the merge (GQA and the shapes outside the Gluon kernels' scope): their scores'
    # strides follow the slot count too. A fixed block and split count: no autotuning (it would time the kernels).
    v_off = torch.arange(groups + 1, dtype=torch.int32) * rank_v
    with compile_only(90) as built:
        for n in range(1000, 1040):
            scores = torch.zeros(batch, groups * gs, n)
            _fold_values(q, scores, view(rank_v, 0, n), v_off, v_off.tolist(), kv_start, groups, gs, 132, False, 64, 8,
                         None, dt)
    out["triton_values"] = _builds_per_kernel(built)
    return out


def _builds_per_kernel(built: list) -> dict:
    """{kernel name: distinct builds} of the kernels compile_only collected."""
    seen: dict = {}
    for kernel in built:
        seen.setdefault(kernel.metadata.name, set()).add(kernel.hash)
    return {name: len(hashes) for name, hashes in seen.items()}


def own_process(kernel: str, constants: dict) -> bool:
    """Whether a variant sets a Gluon ``gl.constexpr`` global: a kernel reads those at compile time and Triton
    refuses to launch (or build) it again in a process where the global has changed, so such a variant is built
    in a process of its own."""
    import importlib

    module = importlib.import_module(f"kernels.{kernel}")
    return any(type(getattr(module, name)).__name__ == "constexpr" for name in constants)


def main(argv: list[str]) -> int:
    """No arguments: every shape, the variants that can share the process, then each other variant in a child
    process (``gluon_builds.py variant N``, N an index into VARIANTS); ``decode``: :func:`decode_steps`."""
    if argv[:1] == ["decode"]:
        print(json.dumps(decode_steps()), flush=True)
        return 0
    if argv[:1] == ["variant"]:
        print(json.dumps(build_variant(*VARIANTS[int(argv[1])])), flush=True)
        return 0
    for dtype in (torch.float16, torch.bfloat16):
        for shape in SINGLE_PASS_SHAPES:
            print(json.dumps(build_single_pass(*shape, dtype)), flush=True)
        for shape in FOLD_SHAPES:
            print(json.dumps(build_fold(*shape, dtype)), flush=True)
        for shape in QUANT_SHAPES:
            if dtype == torch.float16 or shape[4] <= 4:
                print(json.dumps(build_single_pass_quant(*shape, dtype)), flush=True)
    alone = []
    for i, (kernel, constants) in enumerate(VARIANTS):
        if own_process(kernel, constants):
            alone.append(i)
        else:
            print(json.dumps(build_variant(kernel, constants)), flush=True)
    for i in alone:
        subprocess.run([sys.executable, __file__, "variant", str(i)], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
