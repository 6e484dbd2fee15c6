"""Run a script that builds Triton kernels for sm_90 without a GPU (kernels.offline_build) in its own process."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def build_in_subprocess(script: str, cache_dir: Path, args: tuple = (), tree: Path = REPO, timeout: int = 600):
    """The JSON value the script prints last (its builds' resource_usage), after running it with ``args`` in
    ``tree`` (the repository, or a copy of it) without TRITON_INTERPRET (the interpreter never compiles) with a
    Triton cache of its own; a failed script fails the calling test."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(cache_dir)
    env["PYTHONPATH"] = os.pathsep.join([str(tree), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", script, *args], cwd=tree, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
