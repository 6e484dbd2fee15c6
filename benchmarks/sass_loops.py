"""Instructions per tile in each partition of the quantized Gluon single-pass kernel, from an offline sm_90 build
(no GPU): Llama-2-7B shape (head_dim 128, 4 heads per group, key / value ranks 128 / 384), 4-bit asymmetric codes
in quant groups of 32, fp16. One loop iteration of a partition is one tile of 64 slots, so the loop's instruction
count is what a tile costs the warp scheduler that runs that partition's warp (kernels/NOTES.md, twenty-ninth
session). A static count: it says nothing of stalls, which only a GPU run shows.

Usage (repo root, a process without TRITON_INTERPRET):
  PYTHONPATH=. python benchmarks/sass_loops.py out.json [NAME=VALUE,...]
The constants as benchmarks/fold_heads_sweep.py takes them (e.g. spq.SPQ_NIBBLE_PAIRS=True), set before the build.
"""
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "kernels"))
import gluon_builds  # noqa: E402
from fold_heads_sweep import _set_process_constants  # noqa: E402

from kernels.offline_build import partition_loops, sass  # noqa: E402

SHAPE = (128, 4, 128, 384, 4, False, 32)  # head_dim, heads per group, rank, rank_v, bits, symmetric, quant group


def main() -> int:
    if len(sys.argv) not in (2, 3):
        raise SystemExit("usage: PYTHONPATH=. python benchmarks/sass_loops.py out.json [NAME=VALUE,...]")
    constants = _set_process_constants(sys.argv[2]) if len(sys.argv) == 3 else {}
    kernels = []
    usage = gluon_builds.build_single_pass_quant(*SHAPE, torch.float16, kernels=kernels)
    loops = partition_loops(sass(kernels[0]))
    result = {"argv": sys.argv, "constants": constants, "shape": list(SHAPE), "dtype": "float16", "target": "sm_90",
              "resources": usage, "partitions": loops}
    for p in loops:
        top = ", ".join(f"{op} {n}" for op, n in list(p["ops"].items())[:10])
        print(f"loop {p['loop']:5d} of {p['instructions']:5d} instructions: {top}")
    with open(sys.argv[1], "w") as f:
        json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
