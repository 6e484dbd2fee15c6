"""Autotune configs for the latent decode kernels: generated from a small grid, then pruned.

Nothing here is chosen by commenting lines in or out: :func:`decode_configs` spans the grid
and :func:`prune_decode_configs` drops what cannot fit or cannot help, given the launch's
constexprs (padded ranks, head_dim, heads per group) and the slots each split covers.
"""
from __future__ import annotations

import itertools
from typing import Any

import triton

# Hopper gives a block up to 227 KB of shared memory; keep headroom for Triton's own scratch.
SHARED_MEMORY_BUDGET = 200 * 1024

BLOCK_S_CHOICES = (32, 64, 128)
NUM_WARPS_CHOICES = (4, 8)
NUM_STAGES_CHOICES = (1, 2, 3)


def decode_configs() -> list[triton.Config]:
    """The full grid over slots per block, warps and software-pipelining depth."""
    return [
        triton.Config({"BLOCK_S": block_s}, num_warps=warps, num_stages=stages)
        for block_s, warps, stages in itertools.product(BLOCK_S_CHOICES, NUM_WARPS_CHOICES, NUM_STAGES_CHOICES)
    ]


def estimate_shared_bytes(block_s: int, num_stages: int, args: dict[str, Any]) -> int:
    """Rough shared memory of one program: the streamed latent tiles once per pipeline stage,
    plus the per-head up-projection halves and the operands of the two small dots."""
    elt = 4 if args["IS_FP32"] else 2
    latent = block_s * (args["RK_PAD"] + args["RV_PAD"]) * elt
    up = 2 * args["RK_PAD"] * args["HALF_PAD"] * elt
    small = (args["HG_PAD"] + block_s) * 2 * args["HALF_PAD"] * elt
    return max(num_stages - 1, 1) * (latent + up) + up + small


def prune_decode_configs(configs: list[triton.Config], named_args: dict[str, Any], **kwargs: Any) -> list[triton.Config]:
    """Keep configs that fit in shared memory and whose block is not much longer than a split.

    A block longer than the slots one split covers only adds masked work; deep pipelines are
    pointless when a split holds fewer than two blocks.
    """
    args = {**named_args, **kwargs}
    split_len = int(args["split_len"])
    kept = []
    for cfg in configs:
        block_s = cfg.kwargs["BLOCK_S"]
        if block_s > max(split_len, BLOCK_S_CHOICES[0]):
            continue
        if cfg.num_stages > 1 and split_len < 2 * block_s:
            continue
        if estimate_shared_bytes(block_s, cfg.num_stages, args) > SHARED_MEMORY_BUDGET:
            continue
        kept.append(cfg)
    if not kept:  # always leave one: the smallest block, no pipelining
        kept = [triton.Config({"BLOCK_S": BLOCK_S_CHOICES[0]}, num_warps=4, num_stages=1)]
    return kept
