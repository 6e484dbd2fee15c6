"""The timing-ablation patch of the 4-bit kernel (benchmarks/ablations/spq_time_split.patch, which
`gpu_kernels.sh spq_ablate` applies to a copy of the tree) still applies to the kernels, leaves them building
for sm_90 without its constants, and builds with them. A patch that went stale as the kernels changed would
otherwise cost a device call to find out."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .offline import build_in_subprocess

REPO = Path(__file__).resolve().parents[2]
PATCH = REPO / "benchmarks" / "ablations" / "spq_time_split.patch"
sys.path.insert(0, str(PATCH.parent))
import apply_patch  # noqa: E402

# In the patched copy: the Llama-shape 4-bit build with one set of ablation constants, set as gpu_kernels.sh
# spq_ablate sets them (fold_heads_sweep.py's NAME=VALUE list), one JSON line.
_BUILD = """
import json, sys
import torch
sys.path[:0] = ["tests/kernels", "benchmarks"]
import gluon_builds
from fold_heads_sweep import _set_process_constants
done = _set_process_constants(sys.argv[1])
out = gluon_builds.build_single_pass_quant(128, 4, 128, 384, 4, False, 32, torch.float16)
print(json.dumps({"spec": done, **out}), flush=True)
"""

# Every branch the patch adds: the constant fp16 key tile with half the score wgmmas and no RoPE, and the int8
# score wgmmas with the value unpacking skipped (each set built in a process of its own: a Gluon kernel refuses a
# constexpr global that changed after its first build in a process)
SETS = [{"sp.SP_ABL_KEYS": True, "sp.SP_ABL_HALF_MMA": True, "sp.SP_ABL_ROPE": True},
        {"sp.SP_ABL_KEYS": True, "sp.SP_ABL_INT8": True, "spq.SPQ_ABL_VDEQ": True}]


@pytest.fixture(scope="module")
def patched(tmp_path_factory) -> Path:
    tree = tmp_path_factory.mktemp("ablation_tree")
    shutil.copytree(REPO / "kernels", tree / "kernels", ignore=shutil.ignore_patterns("__pycache__"))
    for script in ("tests/kernels/gluon_builds.py", "benchmarks/fold_heads_sweep.py"):
        (tree / script).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / script, tree / script)
    changed = apply_patch.apply(PATCH.read_text(), tree)  # what gpu_kernels.sh spq_ablate runs (no git there)
    assert sorted(changed) == ["kernels/single_pass_ws.py", "kernels/single_pass_ws_quant.py"]
    return tree


def test_python_applier_agrees_with_git(patched, tmp_path):
    if shutil.which("git") is None:
        pytest.skip("no git here")
    shutil.copytree(REPO / "kernels", tmp_path / "kernels", ignore=shutil.ignore_patterns("__pycache__"))
    proc = subprocess.run(["git", "apply", str(PATCH)], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, f"{PATCH.name} no longer applies to kernels/: {proc.stderr}"
    for name in ("single_pass_ws.py", "single_pass_ws_quant.py"):
        assert (tmp_path / "kernels" / name).read_text() == (patched / "kernels" / name).read_text()


def test_a_stale_hunk_is_refused_and_nothing_written(tmp_path):
    shutil.copytree(REPO / "kernels", tmp_path / "kernels", ignore=shutil.ignore_patterns("__pycache__"))
    quant = tmp_path / "kernels" / "single_pass_ws_quant.py"
    quant.write_text(quant.read_text().replace("SPQ_NIBBLE_PAIRS = False", "SPQ_NIBBLE_PAIRS = None"))
    before = (tmp_path / "kernels" / "single_pass_ws.py").read_text()
    with pytest.raises(ValueError, match="single_pass_ws_quant.py: the hunk at line"):
        apply_patch.apply(PATCH.read_text(), tmp_path)
    assert (tmp_path / "kernels" / "single_pass_ws.py").read_text() == before


def test_patch_touches_only_the_kernels_it_names(patched):
    changed = {p.relative_to(patched).as_posix() for p in (patched / "kernels").glob("*.py")
               if p.read_bytes() != (REPO / "kernels" / p.name).read_bytes()}
    assert changed == {"kernels/single_pass_ws.py", "kernels/single_pass_ws_quant.py"}


@pytest.mark.parametrize("spec", SETS, ids=["fp16_keys_half_mma_no_rope", "int8_scores_no_value_unpack"])
def test_patched_kernel_builds_with_its_ablations(patched, spec, tmp_path):
    constants = ",".join(f"{name}={value}" for name, value in spec.items())
    out = build_in_subprocess(_BUILD, tmp_path / "cache", (constants,), patched, timeout=900)
    assert out["spec"] == spec
    assert out["name"] == "_ws_single_pass_quant_kernel" and out["fold_heads"] == 4
    assert out["shared"] <= 232448  # sm_90's opt-in limit: the ablations add no buffer
