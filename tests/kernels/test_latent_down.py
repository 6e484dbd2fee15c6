"""kernels.latent_down: both down-projections of a decode step in one launch, each sequence's latents stored at its
own device-held slot (and its position beside them), as F.linear + plain indexing store them (project_latents_ref),
leaving every other slot untouched."""
from __future__ import annotations

import pytest
import torch

import kernels.latent_down as ld
from kernels.latent_down import project_latents, project_latents_ref

from .offline import build_in_subprocess

TOL = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float32: 1e-5}


def _problem(batch, k, widths, dtype, slots, device, seed=0, strided_dst=False):
    """x (B, 1, K) and (weight (N, K), dst (B, slots, N)) pairs of random values (dst: a wider buffer's columns when
    strided_dst), an int32 position and its (B, slots, 1) buffer."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(batch, 1, k, generator=g)).to(dtype).to(device)
    pairs = []
    for n in widths:
        w = (torch.randn(n, k, generator=g) / k ** 0.5).to(dtype).to(device)
        if strided_dst:
            dst = torch.randn(batch, slots, n + 5, generator=g).to(dtype).to(device)[:, :, 2:n + 2]
        else:
            dst = torch.randn(batch, slots, n, generator=g).to(dtype).to(device)
        pairs.append((w, dst))
    pos = torch.randint(0, 1 << 20, (batch, 1), generator=g, dtype=torch.int32).to(device)
    pos_buf = torch.randint(0, 9, (batch, slots), generator=g, dtype=torch.int32).to(device).unsqueeze(-1)
    return x, pairs, (pos, pos_buf)


def _clone(pairs, extra):
    return [(w, d.clone()) for w, d in pairs], (extra[0], extra[1].clone())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=["fp16", "bf16", "fp32"])
@pytest.mark.parametrize("batch,k,widths", [
    (1, 64, [48]),  # one weight
    (3, 96, [40, 72]),  # K and both widths off the blocks
    (2, 2 * 256 + 64, [2 * 32 + 16, 32]),  # several K steps, a last partial row block
    (17, 64, [16, 24]),  # more sequences than one 16-row block
    (40, 64, [16, 24]),  # more sequences than one program takes (DOWN_MAX_BLOCK_B)
])
def test_interpreter_matches_linear_and_indexing(device, dtype, batch, k, widths, monkeypatch):
    monkeypatch.setattr(ld, "DOWN_BLOCK_K", 64)  # several K steps at test sizes
    slots = 7
    x, got, extra = _problem(batch, k, widths, dtype, slots, device, strided_dst=len(widths) == 2)
    want, want_extra = _clone(got, extra)
    before = [d.clone() for _, d in got]
    slot = torch.randint(0, slots, (batch,), generator=torch.Generator().manual_seed(1)).to(device)
    project_latents(x, got, slot, extra)
    project_latents_ref(x, want, slot, want_extra)
    rows = torch.arange(batch, device=device)
    keep = torch.ones(batch, slots, dtype=torch.bool, device=device)
    keep[rows, slot] = False
    for (w, d), (_, r), old in zip(got, want, before):
        torch.testing.assert_close(d[rows, slot].float(), r[rows, slot].float(), atol=TOL[dtype], rtol=TOL[dtype])
        exact = (x[:, 0].double() @ w.double().T)
        assert (d[rows, slot].double() - exact).abs().max() < 4 * TOL[dtype]  # the projection itself
        assert torch.equal(d[keep], old[keep])  # nothing else moved
    assert torch.equal(extra[1], want_extra[1])  # positions: stored exactly, once per sequence


def test_without_slot_writes_row_zero(device):
    """No slot tensor: the (B, 1, N) destination is the projection's output."""
    x, pairs, _ = _problem(2, 64, [32, 48], torch.float32, 1, device)
    got, want = [(w, d.clone()) for w, d in pairs], [(w, d.clone()) for w, d in pairs]
    project_latents(x[:, 0], got)
    project_latents_ref(x[:, 0], want)
    for (w, d), (_, r) in zip(got, want):
        torch.testing.assert_close(d, r, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(d[:, 0], x[:, 0] @ w.T, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bad,match", [
    ("three", "1 to 2"), ("w_width", "weight 0 must be"), ("w_dtype", "weight 0 must be"), ("dst_width", "dst 0"),
    ("no_slot_many", "dst 0"), ("slot_len", "slot must be"), ("extra_dst", "extra must be"), ("x_int", "x must be"),
])
def test_bad_arguments_are_refused(device, bad, match):
    x = torch.zeros(2, 1, 8, device=device)
    w, dst = torch.zeros(4, 8, device=device), torch.zeros(2, 5, 4, device=device)
    slot, extra = torch.zeros(2, dtype=torch.int64, device=device), None
    pairs = [(w, dst)]
    if bad == "three":
        pairs = [(w, dst)] * 3
    elif bad == "w_width":
        pairs = [(torch.zeros(4, 7, device=device), dst)]
    elif bad == "w_dtype":
        pairs = [(w.half(), dst)]
    elif bad == "dst_width":
        pairs = [(w, torch.zeros(2, 5, 3, device=device))]
    elif bad == "no_slot_many":
        slot = None
    elif bad == "slot_len":
        slot = torch.zeros(3, dtype=torch.int64, device=device)
    elif bad == "extra_dst":
        extra = (torch.zeros(2, 1, dtype=torch.int32, device=device), torch.zeros(2, 5, 2, device=device))
    else:
        x = torch.zeros(2, 1, 8, dtype=torch.int32, device=device)
    with pytest.raises(ValueError, match=match):
        project_latents(x, pairs, slot, extra)


@pytest.mark.gpu
@pytest.mark.parametrize("batch", [1, 2, 8, 33])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=["fp16", "bf16", "fp32"])
def test_gpu_decoder_shapes(batch, dtype):
    """The graph decoder's launch at the benchmark shape: d_model 4096 onto 1024 key and 3072 value latents, int32
    positions, 4096 slots."""
    dev = torch.device("cuda")
    x, got, extra = _problem(batch, 4096, [1024, 3072], dtype, 4096, dev, seed=batch)
    want, want_extra = _clone(got, extra)
    slot = torch.randint(0, 4096, (batch,), device=dev)
    project_latents(x, got, slot, extra)
    project_latents_ref(x, want, slot, want_extra)
    for (_, d), (_, r) in zip(got, want):
        torch.testing.assert_close(d.float(), r.float(), atol=TOL[dtype], rtol=TOL[dtype])
    assert torch.equal(extra[1], want_extra[1])


_BUILD = """
import json, torch
import kernels.latent_down as ld
from kernels.offline_build import compile_only, resource_usage
x = torch.zeros(2, 1, 4096, dtype=torch.float16)
pairs = [(torch.zeros(n, 4096, dtype=torch.float16), torch.zeros(2, 64, n, dtype=torch.float16)) for n in (1024, 3072)]
extra = (torch.zeros(2, 1, dtype=torch.int32), torch.zeros(2, 64, dtype=torch.int32).unsqueeze(-1))
slot = torch.zeros(2, dtype=torch.int64)
with compile_only() as built:
    for bn, bk, warps in ((32, 256, 4), (16, 512, 4), (64, 128, 8), (32, 512, 2)):
        ld.DOWN_BLOCK_N, ld.DOWN_BLOCK_K, ld.DOWN_WARPS = bn, bk, warps
        ld.project_latents(x, pairs, slot, extra)
print(json.dumps([resource_usage(k) for k in built]))
"""


def test_builds_for_sm90(tmp_path):
    """The decoder's launch at the default and the swept constants compiles for sm_90 without a GPU
    (kernels.offline_build), without spilling: a compile error shows up on CI, not on the device."""
    builds = build_in_subprocess(_BUILD, tmp_path)
    assert [b["name"] for b in builds] == ["_latent_down_kernel"] * 4
    assert all(b["local"] == 0 and b["stack"] == 0 for b in builds), builds


_BUILD_BATCHES = """
import json, torch
import kernels.latent_down as ld
from kernels.offline_build import compile_only, resource_usage
out = []
for dtype in (torch.float16, torch.float32):
    for batch in (1, 17, 33):
        x = torch.zeros(batch, 1, 4096, dtype=dtype)
        pairs = [(torch.zeros(n, 4096, dtype=dtype), torch.zeros(batch, 64, n, dtype=dtype)) for n in (1024, 3072)]
        with compile_only() as built:
            ld.project_latents(x, pairs, torch.zeros(batch, dtype=torch.int64))
        block_b, stages = ld.down_launch(batch, x.element_size(), ld.DOWN_BLOCK_N, ld.DOWN_BLOCK_K, ld.DOWN_STAGES)
        est = ld.down_shared_bytes(block_b, ld.DOWN_BLOCK_N, ld.DOWN_BLOCK_K, x.element_size(), stages)
        out.append(dict(resource_usage(built[0]), batch=batch, elt=x.element_size(), estimate=est))
print(json.dumps(out))
"""


def test_builds_fit_shared_memory_at_any_batch(tmp_path):
    """Wider batches and fp32 build with fewer stages, within sm_90's shared memory (the H100 refused to launch B=33
    fp16 at 4 stages of 64-sequence tiles: 384 KB), and down_shared_bytes is the build's shared memory."""
    builds = build_in_subprocess(_BUILD_BATCHES, tmp_path)
    assert len(builds) == 6
    for b in builds:
        assert b["shared"] <= ld.DOWN_SMEM_BUDGET and b["shared"] == b["estimate"], b
        assert b["local"] == 0 and b["stack"] == 0, b
