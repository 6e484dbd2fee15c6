"""Nibble-pair unpacking of 4-bit codes (kernels.word_unpack, SPQ_NIBBLE_PAIRS), checked on the CPU.

The Gluon kernel itself runs only on sm_90 (its GPU tests: tests/kernels/test_single_pass_ws_quant.py under
SPQ_NIBBLE_PAIRS=True). Here the PTX of each inline-asm helper, read from its source, runs through a small
evaluator of the few instructions it uses, over every code value and random scales: a wrong mask, magic number
or constant, or a pair order that disagrees with NIBBLE_PAIR_ORDER, fails here. The host side's column order
(the folded rows' permutation, the value accumulators' channels) is checked against the same order.
"""
from __future__ import annotations

import ast
import re

import numpy as np
import pytest
import torch

from kernels import word_unpack as wu
from kernels.single_pass_ws_quant import _pair_columns

from .offline import build_in_subprocess


def _asm_of(fn) -> str:
    """The asm text of the inline_asm_elementwise call in a Gluon helper's source."""
    tree = ast.parse(fn.src.strip())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "inline_asm_elementwise":
            return node.args[0].value
    raise AssertionError("no inline_asm_elementwise call")


def _f16(bits: np.ndarray) -> np.ndarray:
    return (bits & 0xFFFF).astype(np.uint16).view(np.float16)


def _halves(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return _f16(x), _f16(x >> 16)


def _pack(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return lo.astype(np.float16).view(np.uint16).astype(np.uint32) | (
        hi.astype(np.float16).view(np.uint16).astype(np.uint32) << 16)


def run_ptx(asm: str, n_out: int, args: list) -> list:
    """Evaluate the PTX of an inline asm block on uint32 arrays (fp16 operands as their 16-bit patterns):
    mov, shr.u32, lop3.b32, sub.f16x2, fma.rn.f16x2, as the helpers use them. $k: outputs, then inputs."""
    regs: dict = {}
    for k, a in enumerate(args):
        regs[f"${n_out + k}"] = np.asarray(a, dtype=np.uint32)

    def val(tok: str):
        tok = tok.strip()
        if tok in regs:
            return regs[tok]
        return np.uint32(int(tok, 16) if tok.lower().startswith("0x") else int(tok))

    for line in asm.replace("{\n", "\n").split(";"):
        line = line.strip()
        if line in ("", "}") or line.startswith(".reg"):
            continue
        op, rest = line.split(None, 1)
        ops = [t.strip() for t in re.split(r",(?![^{]*})", rest)]
        if op == "mov.b32" and ops[0].startswith("{"):  # unpack a b32 into two 16-bit outputs
            lo, hi = [t.strip() for t in ops[0].strip("{}").split(",")]
            x = val(ops[1])
            regs[lo], regs[hi] = x & 0xFFFF, x >> 16
        elif op == "mov.b32" and ops[1].startswith("{"):  # pack two 16-bit inputs
            lo, hi = [val(t) for t in ops[1].strip("{}").split(",")]
            regs[ops[0]] = (lo & 0xFFFF) | ((hi & 0xFFFF) << 16)
        elif op == "mov.b32":
            regs[ops[0]] = np.asarray(val(ops[1]), dtype=np.uint32)
        elif op == "shr.u32":
            regs[ops[0]] = val(ops[1]) >> val(ops[2])
        elif op == "lop3.b32":
            a, b, c, lut = (val(t) for t in ops[1:5])
            out = np.zeros(np.broadcast(a, b, c).shape, dtype=np.uint32)
            for i in range(8):  # the LUT bit for inputs (a, b, c) = bits of i (a: 4, b: 2, c: 1)
                if int(lut) >> i & 1:
                    ma = a if i & 4 else ~a
                    mb = b if i & 2 else ~b
                    mc = c if i & 1 else ~c
                    out |= (ma & mb & mc).astype(np.uint32)
            regs[ops[0]] = out
        elif op in ("sub.f16x2", "fma.rn.f16x2"):
            xs = [_halves(val(t)) for t in ops[1:]]
            res = []
            for h in range(2):  # per half, exact in float64, rounded once to fp16
                v = [x[h].astype(np.float64) for x in xs]
                res.append(v[0] - v[1] if op == "sub.f16x2" else v[0] * v[1] + v[2])
            regs[ops[0]] = _pack(*res)
        else:
            raise AssertionError(f"the evaluator does not know {op!r}: extend it with the helper")
    return [regs[f"${k}"] for k in range(n_out)]


def _codes_words(rng, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, 8) 4-bit codes, every value at every position, and their words (code c at bits [4c, 4c + 4))."""
    codes = rng.integers(0, 16, size=(n, 8)).astype(np.uint32)
    codes[:16] = (np.arange(16)[:, None] + np.arange(8)[None, :]) % 16
    words = np.zeros(n, dtype=np.uint32)
    for c in range(8):
        words |= codes[:, c] << (4 * c)
    return codes, words


def _scales(rng, n: int) -> tuple[np.ndarray, np.ndarray]:
    scale = rng.uniform(1e-3, 0.5, size=n).astype(np.float16)
    offset = (-scale.astype(np.float32) * rng.uniform(0, 15, size=n)).astype(np.float16)
    return scale, offset


def _dequant(codes, scale, offset) -> np.ndarray:
    """code * scale + offset rounded once to fp16 (fma.rn.f16x2's result)."""
    return (codes.astype(np.float64) * scale.astype(np.float64)[:, None]
            + offset.astype(np.float64)[:, None]).astype(np.float16)


def _pair_bits(x: np.ndarray) -> np.ndarray:
    """_pack_pair's PTX: an fp16 pattern twice in a word."""
    (out,) = run_ptx(_asm_of(wu._pack_pair), 1, [x.view(np.uint16).astype(np.uint32)])
    return out


def test_word_pairs_are_the_codes_in_nibble_pair_order():
    rng = np.random.default_rng(0)
    codes, words = _codes_words(rng, 4096)
    scale, offset = _scales(rng, len(words))
    outs = run_ptx(_asm_of(wu._word_pairs), 4, [words, _pair_bits(scale), _pair_bits(offset)])
    got = np.stack([h for p in outs for h in _halves(p)], axis=1)  # fp16 in memory order: pair 0 lo, hi, ...
    want = _dequant(codes, scale, offset)[:, list(wu.NIBBLE_PAIR_ORDER)]
    np.testing.assert_array_equal(got.view(np.uint16), want.view(np.uint16))


@pytest.mark.parametrize("lane", range(4))
def test_lane_pair_is_logical_pair_of_its_lane(lane):
    rng = np.random.default_rng(1 + lane)
    codes, words = _codes_words(rng, 4096)
    scale, offset = _scales(rng, len(words))
    lo, hi = run_ptx(_asm_of(wu._lane_pair), 2, [words >> (4 * lane), _pair_bits(scale), _pair_bits(offset)])
    want = _dequant(codes, scale, offset)
    # lane t holds logical channels 2t, 2t + 1 of the octet (the wgmma A operand's k pair)
    order = wu.NIBBLE_PAIR_ORDER
    np.testing.assert_array_equal(_f16(lo).view(np.uint16), want[:, order[2 * lane]].view(np.uint16))
    np.testing.assert_array_equal(_f16(hi).view(np.uint16), want[:, order[2 * lane + 1]].view(np.uint16))


def test_channel_maps_agree():
    j = np.arange(512)
    host = np.array([wu.nibble_pair_channel(int(i)) for i in j])
    assert tuple(host[:8]) == wu.NIBBLE_PAIR_ORDER
    assert sorted(host) == list(j)  # a permutation within each octet
    assert (host // 8 == j // 8).all()
    np.testing.assert_array_equal(wu._nibble_pair_channel.fn(j), host)  # the kernel's epilogue formula
    np.testing.assert_array_equal(_pair_columns(512, torch.device("cpu")).numpy(), host)


def test_permuted_rows_give_the_same_scores_and_values():
    """Scores: the rows' rank columns in nibble-pair order against keys unpacked in that order equal the natural
    product. Values: accumulator row i (channel nibble_pair_channel(i) of the box) stored to that channel
    gives the natural p @ v."""
    g = torch.Generator().manual_seed(0)
    rank, slots, rows_n = 128, 64, 32
    keys = torch.randn(slots, rank, generator=g, dtype=torch.float64)
    rows = torch.randn(rows_n, rank, generator=g, dtype=torch.float64)
    perm = _pair_columns(rank, torch.device("cpu"))
    torch.testing.assert_close(keys[:, perm] @ rows[:, perm].T, keys @ rows.T)
    vals = torch.randn(slots, rank, generator=g, dtype=torch.float64)
    p = torch.rand(4, slots, generator=g, dtype=torch.float64)
    acc_logical = p @ vals[:, perm]  # what the value wgmmas accumulate from boxes in nibble-pair order
    stored = torch.empty_like(acc_logical)
    stored[:, perm] = acc_logical  # row i of the box to channel nibble_pair_channel(i)
    torch.testing.assert_close(stored, p @ vals)


@pytest.mark.parametrize("rank_block", [0, 16])
def test_fold_rows_in_pair_columns(device, rank_block, monkeypatch):
    """_fold_rows_kernel(PAIR_COLS=True) (the interpreter on the CPU): the interleaved rows with their rank columns
    in nibble-pair order, equal to the host's gather of the channel-order rows, whole and in rank blocks."""
    import kernels.latent_attention as la
    from tests.kernels.latent_cases import Case, make_inputs

    monkeypatch.setattr(la, "FOLD_ROWS_RANK_BLOCK", rank_block)
    inputs = make_inputs(Case(k_ranks=(64, 64), v_ranks=(32, 48), head_dim=64, dtype=torch.float32), device)
    args = (inputs["q"], inputs["k_up"], inputs["k_offsets"], None, inputs["sm_scale"], inputs["rope_scale"],
            inputs["head_group_size"], 1, 32, 64)
    plain, _, _ = la._folded_rows(*args, interleave=True)
    pairs, _, _ = la._folded_rows(*args, interleave=True, pair_cols=True)
    assert torch.equal(pairs, plain.index_select(-1, _pair_columns(64, plain.device)))
    assert not torch.equal(pairs, plain)


_COUNT = """
import json, sys
import torch
sys.path.insert(0, "tests/kernels")
import gluon_builds
import kernels.single_pass_ws_quant as spq
from kernels.offline_build import partition_loops, sass
out = []
for pairs in (False, True):
    spq.SPQ_NIBBLE_PAIRS = pairs  # a launch argument (PAIRS), not a constexpr global: one process builds both
    built = []
    gluon_builds.build_single_pass_quant(128, 4, 128, 384, 4, False, 32, torch.float16, kernels=built)
    out.append([{"loop": p["loop"], "wgmma": p["ops"].get("HGMMA", 0)} for p in partition_loops(sass(built[0]))])
print(json.dumps(out))
"""


def test_offline_build_unpacks_with_fewer_instructions(tmp_path):
    """offline_build.partition_loops over the Llama-shape 4-bit builds (benchmarks/sass_loops.py's count): two
    consumer loops holding every wgmma of a tile (8 score wgmmas of 8 k-steps, 24 value wgmmas), and with nibble
    pairs the dequant warps' loop at most two thirds of the channel-order one and each consumer loop shorter."""
    plain, pairs = build_in_subprocess(_COUNT, tmp_path)
    for build in (plain, pairs):
        assert [p["wgmma"] for p in build if p["wgmma"]] == [88, 88], build
    consumers = [[p["loop"] for p in b if p["wgmma"]] for b in (plain, pairs)]
    assert all(new < old for old, new in zip(*consumers)), consumers
    dequant = [max(p["loop"] for p in b if not p["wgmma"]) for b in (plain, pairs)]  # (the TMA warp's is shorter)
    assert dequant[1] <= dequant[0] * 2 / 3, dequant
