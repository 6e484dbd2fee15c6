"""Run pytest with kernel module constants set for the whole process, before anything compiles.

The GPU tests of a kernel variant that is not the default yet (a Gluon constexpr global read at build time,
see benchmarks/fold_heads_sweep.py). Usage (CUDA machine, repo root):
  PYTHONPATH=. python benchmarks/pytest_constants.py sp.SP_P_SPLIT=True,sp.SP_TILE_RELEASE=True -- <pytest args>
Names as in fold_heads_sweep.py (ws., sp., spq., wu. prefixes, none for kernels.latent_attention).
"""
import sys

import pytest

from fold_heads_sweep import _set_process_constants


def main() -> int:
    if len(sys.argv) < 3 or sys.argv[2] != "--":
        raise SystemExit("usage: pytest_constants.py NAME=VALUE[,NAME=VALUE] -- <pytest args>")
    done = _set_process_constants(sys.argv[1])
    print(f"module constants: {done}", flush=True)
    return int(pytest.main(sys.argv[3:]))


if __name__ == "__main__":
    raise SystemExit(main())
