"""The warp-specialized Gluon score kernel (kernels/fold_scores_ws.py): when it applies, and its
results on the GPU against the torch reference (Gluon does not run in the interpreter)."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from kernels import latent_decode_attention
from tests.kernels.latent_cases import Case, make_inputs
from tests.kernels.test_latent_attention import check

ws = pytest.importorskip("kernels.fold_scores_ws")


def test_fold_heads_fill_one_wgmma_within_shared_memory():
    assert ws.WS_FOLD_COLS == 512
    assert ws.ws_fold_heads(4, 128, 128, 2) == 4  # 512 folded rows: two wgmmas of 256 per tile
    assert ws.ws_heads_per_dot(4, 128) == 2
    assert ws.ws_fold_heads(8, 64, 128, 2) == 8 and ws.ws_heads_per_dot(8, 64) == 4
    assert ws.ws_fold_heads(1, 128, 128, 2) == 1
    assert ws.ws_fold_heads(3, 64, 64, 2) == 3 and ws.ws_heads_per_dot(3, 64) == 3  # 192 rows, one wgmma
    assert ws.ws_fold_heads(4, 128, 256, 2) == 2  # 128 KB of rows + two 32 KB tiles
    assert ws.ws_fold_heads(4, 128, 128, 2, requested=2) == 2  # a requested count is kept when it fits
    with pytest.raises(ValueError, match="fold_heads=3"):
        ws.ws_fold_heads(4, 128, 128, 2, requested=3)
    with pytest.raises(ValueError, match="fold_heads=4"):
        ws.ws_fold_heads(4, 128, 256, 2, requested=4)  # 256 KB of rows
    assert ws.ws_stages(4, 128, 128, 2) == ws.WS_STAGES
    assert ws.ws_stages(2, 128, 256, 2) == 2


def _reason(case: Case, **override) -> str:
    inputs = make_inputs(case, torch.device("cpu"))
    k = inputs["k_latent"]
    return ws.ws_unsupported(inputs["q"], k.fp, k.num_quantized, list(case.k_ranks), override.get("n_rep", 1),
                             case.bias)


# The key-side scope both Gluon kernels share (kernels.fold_scores_ws.fold_keys_unsupported): (case change, a
# word of the reason). test_single_pass_ws adds its value-side cases to these.
KEY_SIDE_CASES = [
    (dict(dtype=torch.float32), "fp16/bf16"),
    (dict(bits=4), "quantized"),
    (dict(bias=True), "key-bias"),
    (dict(head_dim=96), "power of two"),
    (dict(k_ranks=(64, 32)), "same key rank"),
    (dict(k_ranks=(40, 40)), "power of two"),
    (dict(k_ranks=(48, 48)), "power of two"),
    (dict(row_pad=3), "16-byte"),
]
ONLY_THE_GPU = ({}, "sm_90")  # everything else fits: these CPU tensors are the only obstacle


@pytest.mark.parametrize("change,reason", KEY_SIDE_CASES + [ONLY_THE_GPU])
def test_unsupported_calls_are_named(change, reason):
    case = dataclasses.replace(Case(k_ranks=(64, 64), v_ranks=(32, 48), head_dim=64), **change)
    assert reason in _reason(case)


def test_gqa_is_unsupported():
    assert "n_rep" in _reason(Case(k_ranks=(64, 64)), n_rep=2)


def test_forcing_it_where_it_cannot_run_is_an_error(device):
    inputs = make_inputs(Case(k_ranks=(64, 64), v_ranks=(32, 48), bias=True), device)
    with pytest.raises(ValueError, match="warp_specialized=True"):
        latent_decode_attention(**inputs, warp_specialized=True)
    with pytest.raises(ValueError, match="fold and single-pass paths only"):
        latent_decode_attention(**inputs, method="rope_qk", warp_specialized=True)


def test_interleaved_rows_are_a_permutation(device):
    """_fold_rows_kernel(INTERLEAVE=True) puts Mc[i], Ms[i] at rows 2i, 2i + 1 of each head."""
    from kernels.latent_attention import _folded_rows
    inputs = make_inputs(Case(k_ranks=(64, 64), v_ranks=(32, 48), head_dim=64, dtype=torch.float32), device)
    args = (inputs["q"], inputs["k_up"], inputs["k_offsets"], None, inputs["sm_scale"], inputs["rope_scale"],
            inputs["head_group_size"], 1, 32, 64)
    halves, _, _ = _folded_rows(*args)
    inter, _, _ = _folded_rows(*args, interleave=True)
    b, g, rows, r = halves.shape
    heads = rows // 64
    expect = halves.view(b, g, heads, 2, 32, r).transpose(3, 4).reshape(b, g, rows, r)
    assert torch.equal(inter, expect)
    assert not torch.equal(inter, halves)


# ---------------------------------------------------------------------------------------------
# GPU (sm_90): the kernel against the torch reference.
# ---------------------------------------------------------------------------------------------

def _hopper() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9


@pytest.mark.gpu
@pytest.mark.skipif(not _hopper(), reason="the Gluon kernel is built for sm_90")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("head_dim,group_size,rank", [
    (128, 4, 128), (128, 1, 64), (128, 2, 256), (64, 4, 128), (64, 2, 32), (64, 1, 16),
])
def test_gpu_warp_specialized(dtype, head_dim, group_size, rank):
    groups = 8 // group_size
    base = Case(num_heads=8, num_kv_heads=8, head_dim=head_dim, group_size=group_size, k_ranks=(rank,) * groups,
                v_ranks=tuple(24 + 40 * i for i in range(groups)), batch=3, dtype=dtype)
    for num_slots in (1, 37, 64, 300, 2049, 5000):
        check(dataclasses.replace(base, num_slots=num_slots), torch.device("cuda"), method="fold", warp_specialized=True)


@pytest.mark.gpu
@pytest.mark.skipif(not _hopper(), reason="the Gluon kernel is built for sm_90")
@pytest.mark.parametrize("change", [
    dict(theta=5e5), dict(theta=5e5, llama3=True), dict(rope_scale=1.3), dict(row_pad=24), dict(left_pad=False),
    dict(num_slots=70000, batch=1),
], ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_gpu_warp_specialized_options(change):
    base = Case(num_heads=32, num_kv_heads=32, head_dim=128, group_size=4, k_ranks=(128,) * 8, v_ranks=(384,) * 8,
                num_slots=3000, batch=2, dtype=torch.float16)
    check(dataclasses.replace(base, **change), torch.device("cuda"), method="fold", warp_specialized=True)


@pytest.mark.gpu
@pytest.mark.skipif(not _hopper(), reason="the Gluon kernel is built for sm_90")
@pytest.mark.parametrize("variant", [dict(WS_FOLD_COLS=256), dict(WS_EARLY_TRIG=False),
                                     dict(WS_STAGES=8, WS_FOLD_COLS=256)],
                         ids=lambda v: ",".join(f"{k}={x}" for k, x in v.items()))
def test_gpu_warp_specialized_variants(variant, monkeypatch):
    """The measured variants: two heads per program (one wgmma per tile), cos/sin after the wait, eight
    tiles in flight."""
    for name, value in variant.items():
        monkeypatch.setattr(ws, name, value)
    base = Case(num_heads=16, num_kv_heads=16, head_dim=128, group_size=4, k_ranks=(128,) * 4, v_ranks=(64,) * 4,
                batch=2, dtype=torch.float16)
    for num_slots in (37, 2049):
        check(dataclasses.replace(base, num_slots=num_slots), torch.device("cuda"), method="fold", warp_specialized=True)


@pytest.mark.gpu
@pytest.mark.skipif(not _hopper(), reason="the Gluon kernel is built for sm_90")
@pytest.mark.parametrize("fold_heads", [1, 2, 4])
def test_gpu_warp_specialized_fold_heads(fold_heads):
    """An explicit fold_heads is honored by the Gluon kernel (one, one and two wgmmas per tile)."""
    base = Case(num_heads=8, num_kv_heads=8, head_dim=128, group_size=4, k_ranks=(128,) * 2, v_ranks=(96, 160),
                batch=2, dtype=torch.bfloat16)
    for num_slots in (37, 2049):
        check(dataclasses.replace(base, num_slots=num_slots), torch.device("cuda"), method="fold", fold_heads=fold_heads)


@pytest.mark.gpu
@pytest.mark.skipif(not _hopper(), reason="the Gluon kernel is built for sm_90")
def test_gpu_warp_specialized_matches_triton_scores():
    """Same decode output as the Triton fold kernel to within fp32 summation order."""
    case = Case(num_heads=32, num_kv_heads=32, head_dim=128, group_size=4, k_ranks=(128,) * 8, v_ranks=(384,) * 8,
                num_slots=4099, batch=2, dtype=torch.bfloat16, theta=5e5)
    inputs = make_inputs(case, torch.device("cuda"))
    a = latent_decode_attention(**inputs, method="fold", warp_specialized=True)
    b = latent_decode_attention(**inputs, method="fold", warp_specialized=False)
    assert ((a - b).norm() / b.norm()).item() < 1e-4


def _scores_from_interleaved_rows(rows, k_fp, positions, kv_start, inv_freq, scores, rank, heads_per_group,
                                  fold_heads, num_sms):
    """What the Gluon kernel computes, in torch (it cannot run here): per head t of group g, score =
    sum_i cos(a_i) (rows[2i] . x) + sin(a_i) (rows[2i + 1] . x), -inf before kv_start."""
    b, s, _ = k_fp.shape
    groups = rows.shape[1]
    half = inv_freq.shape[0]
    x = k_fp.float().view(b, s, groups, rank)
    r = rows.float().view(b, groups, heads_per_group, half, 2, rank)
    y = torch.einsum("bsgr,bgtihr->bgtsih", x, r)  # (B, G, HG, S, D/2, [cos, sin] term)
    angle = positions.float()[:, None, None, :, None] * inv_freq
    out = (y[..., 0] * torch.cos(angle) + y[..., 1] * torch.sin(angle)).sum(-1)  # (B, G, HG, S)
    slot = torch.arange(s, device=k_fp.device)
    out = out.masked_fill(slot[None, None, None, :] < kv_start[:, None, None, None], float("-inf"))
    scores.copy_(out.reshape(b, groups * heads_per_group, s))


def test_gluon_path_wiring_with_a_torch_stand_in(device, monkeypatch):
    """_fold_decode_ws (interleaved rows, fold_heads choice, the value kernel and the merge) against the
    reference, with the GPU-only score kernel replaced by its torch equivalent."""
    import kernels.latent_attention as la
    from kernels.reference import latent_decode_attention_ref
    from tests.kernels.latent_cases import rel_error, tolerance

    monkeypatch.setattr(ws, "ws_fold_scores", _scores_from_interleaved_rows)
    case = Case(num_heads=8, num_kv_heads=8, head_dim=64, group_size=4, k_ranks=(32, 32), v_ranks=(24, 40),
                num_slots=45, batch=2, dtype=torch.float32)
    p = make_inputs(case, device)
    k_off, v_off = p["k_offsets"].tolist(), p["v_offsets"].tolist()
    out = la._fold_decode_ws(p["q"], p["k_latent"], p["v_latent"], p["k_up"], p["k_offsets"], p["v_offsets"],
                             p["positions"], p["kv_start"], p["inv_freq"], p["rope_scale"], p["sm_scale"], 4, k_off,
                             v_off, 4, 16, 2, None, None, torch.float32)
    ref = latent_decode_attention_ref(**p)
    assert rel_error(out, ref) < tolerance(case.dtype, device)
