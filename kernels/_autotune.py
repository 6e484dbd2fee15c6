"""Autotune configs for the latent decode kernels: generated from small grids, then pruned.

Nothing here is chosen by commenting lines in or out: each ``*_configs`` function spans a grid
and the matching ``prune_*`` drops what cannot fit in shared memory or cannot help, given the
launch's constexprs (padded ranks, heads per group) and the slots one split covers.
"""
from __future__ import annotations

import itertools
from typing import Any

import triton

# Hopper gives a block up to 227 KB of shared memory; keep headroom for Triton's own scratch.
SHARED_MEMORY_BUDGET = 200 * 1024


def _grid(block_s: tuple[int, ...], warps: tuple[int, ...], stages: tuple[int, ...]) -> list[triton.Config]:
    return [
        triton.Config({"BLOCK_S": bs}, num_warps=w, num_stages=st)
        for bs, w, st in itertools.product(block_s, warps, stages)
    ]


def reconstruction_configs() -> list[triton.Config]:
    """rope_qk: the slot block is the dots' M; stages pipeline the loop over a program's blocks
    (its length, ``slots_per_program``, is set on the host from the GPU's size)."""
    return _grid((64, 128), (4, 8), (1, 3))


def prune_reconstruction_configs(
    configs: list[triton.Config], named_args: dict[str, Any], **kwargs: Any
) -> list[triton.Config]:
    """Drop configs whose pipelined latent tiles plus the resident up-projection halves overflow
    shared memory, and pipelines deeper than a program's loop."""
    args = {**named_args, **kwargs}
    elt = 2  # fp16/bf16; fp32 inputs only run in tests
    kept = []
    for cfg in configs:
        block_s = cfg.kwargs["BLOCK_S"]
        if cfg.num_stages > 1 and int(args["slots_per_program"]) // block_s < 2 * cfg.num_stages:
            continue
        latent = max(1, cfg.num_stages) * block_s * args["RK_PAD"] * elt
        up = 2 * args["RK_PAD"] * args["HALF_PAD"] * elt
        rot = 2 * block_s * args["HALF_PAD"] * elt
        if latent + up + rot <= SHARED_MEMORY_BUDGET:
            kept.append(cfg)
    return kept or [triton.Config({"BLOCK_S": 64}, num_warps=4, num_stages=1)]


def softmax_v_configs() -> list[triton.Config]:
    """softmax @ latent_v: a streaming loop, so pipelining depth matters."""
    return _grid((32, 64, 128), (4, 8), (2, 3, 4))


def prune_softmax_v_configs(
    configs: list[triton.Config], named_args: dict[str, Any], **kwargs: Any
) -> list[triton.Config]:
    """Keep configs whose pipelined value tiles fit in shared memory and whose block is not longer
    than a split (that would only add masked work)."""
    args = {**named_args, **kwargs}
    split_len = int(args["split_len"])
    elt = 2
    kept = []
    for cfg in configs:
        block_s = cfg.kwargs["BLOCK_S"]
        if block_s > max(split_len, 32):
            continue
        per_stage = block_s * ((args["RV1"] + args["RV2"]) * elt + args["HG_PAD"] * 4)
        if cfg.num_stages * per_stage > SHARED_MEMORY_BUDGET:
            continue
        if block_s == 32 and cfg.num_warps == 8:
            continue  # too little work per warp
        kept.append(cfg)
    return kept or [triton.Config({"BLOCK_S": 32}, num_warps=4, num_stages=2)]
