"""The sm_90 Gluon kernels build, without a GPU, for every shape and variant their GPU tests run, and reserve the shared
memory their host-side estimates plan for (a wrong estimate would pick heads per program that do not fit).
A compile error such as the tenth session's one-value-box build shows up here, on CI, before a device run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kernels import single_pass_ws as sp

from . import gluon_builds

REPO = Path(__file__).resolve().parents[2]


def _run_builds(tmp_path_factory, *args: str) -> list[dict]:
    """The JSON lines of ``gluon_builds.py *args`` in a process of its own, with an empty Triton cache."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the interpreter never compiles
    env["TRITON_CACHE_DIR"] = str(tmp_path_factory.mktemp("triton_cache"))  # really build, not a cached build
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, str(Path(gluon_builds.__file__)), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def builds(tmp_path_factory) -> list[dict]:
    return _run_builds(tmp_path_factory)


def test_decode_steps_reuse_one_build(tmp_path_factory):
    """As the cache grows during decoding (slot counts on and off multiples of 16, one more chunk, the fp window's
    positions one slot later each step), every kernel of the decode path is built once: a build per specialization
    of those arguments took seconds in the middle of a generate() call (three builds of the fp16 kernel in 40
    steps before DECODE_STEP_ARGS)."""
    (per_phase,) = _run_builds(tmp_path_factory, "decode")
    assert per_phase["fp16"] == {"_fold_rows_kernel": 1, "_ws_single_pass_kernel": 1, "_merge_splits_kernel": 1}
    assert per_phase["quantized"] == {"_fold_rows_kernel": 1, "_ws_single_pass_quant_kernel": 1,
                                      "_ws_single_pass_kernel": 1, "_merge_splits_kernel": 1}
    assert per_phase["triton_values"] == {"_softmax_v_split_kernel": 1, "_merge_splits_kernel": 1}
    # DECODE_PDL: the fold rows trigger the single pass (launched as their dependent: one wait, one trigger of the
    # merge), the merge waits; still one build each
    assert per_phase["fp16_pdl"] == per_phase["fp16"]
    assert per_phase["pdl_launches"] == {"_fold_rows_kernel": [False, 1], "_ws_single_pass_kernel": [True, 2],
                                         "_merge_splits_kernel": [True, 1]}


def test_every_shape_builds(builds):
    quant = sum(1 if shape[4] > 4 else 2 for shape in gluon_builds.QUANT_SHAPES)  # fp16, and bf16 up to 4 bits
    want = (2 * (len(gluon_builds.SINGLE_PASS_SHAPES) + len(gluon_builds.FOLD_SHAPES)) + len(gluon_builds.VARIANTS)
            + quant)
    assert len(builds) == want
    assert all(b["local"] == 0 for b in builds), [b for b in builds if b["local"]]


def test_single_pass_shared_memory_matches_its_estimate(builds):
    for b in (b for b in builds if b["kernel"] == "single_pass_ws"):
        assert b["estimate"] <= b["shared"] <= b["estimate"] + sp.SP_SMEM_MARGIN, b
        assert b["shared"] <= sp.SP_SMEM_LIMIT, b


def test_quantized_single_pass_shared_memory_matches_its_estimate(builds):
    from kernels import single_pass_ws_quant as spq

    quant = [b for b in builds if b["kernel"] == "single_pass_ws_quant"]
    assert quant
    for b in quant:
        assert b["estimate"] <= b["shared"] <= b["estimate"] + spq.SPQ_SMEM_MARGIN, b
        assert b["shared"] <= sp.SP_SMEM_LIMIT, b


def test_quantized_llama_group_runs_in_one_program_with_register_keys(builds):
    """4-bit (and 2-bit) keys unpacked by the consumers leave room for a Llama group's four heads; unpacked by the
    dequant warps (SPQ_REG_KEYS off) two heads fit."""
    llama = [b for b in builds if b["kernel"] == "single_pass_ws_quant" and b["dtype"] == "torch.float16"
             and b["shape"] == [128, 4, 128, 384, 4, False, 32]]
    heads = {tuple(sorted(b.get("variant", {}).items())): b["fold_heads"] for b in llama}
    assert heads == {(): 4, (("SPQ_REG_KEYS", False),): 2, (("SPQ_SCORE_PIPE", True),): 4,
                     (("SPQ_NIBBLE_PAIRS", True),): 4}, llama
    two_bit = [b["fold_heads"] for b in builds if b["kernel"] == "single_pass_ws_quant"
               and b["shape"] == [128, 4, 128, 384, 2, False, 32]]
    assert two_bit and set(two_bit) == {4}, two_bit  # 2-bit keys are unpacked by the consumers too


def test_fold_scores_shared_memory_holds_rows_and_ring(builds):
    for b in (b for b in builds if b["kernel"] == "fold_scores_ws"):
        assert b["estimate"] <= b["shared"] <= b["estimate"] + 1024, b  # + barriers and alignment
        assert b["shared"] <= sp.SP_SMEM_LIMIT, b


def test_compile_only_refuses_the_interpreter(monkeypatch):
    from kernels.offline_build import compile_only

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET unset"):
        with compile_only(90):
            pass
