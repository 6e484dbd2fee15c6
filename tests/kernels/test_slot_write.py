"""kernels.slot_write: each sequence's row stored at its own device-held slot, in one launch per four pairs, exactly
as plain indexing stores it (write_slots_ref), leaving every other slot untouched."""
from __future__ import annotations

import pytest
import torch

from kernels.slot_write import BLOCK, MAX_PAIRS, write_slots, write_slots_ref

from .offline import build_in_subprocess

assert MAX_PAIRS < 6  # the six-pair case below takes two launches

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.int32]


def _pairs(batch: int, slots: int, widths: list[int], dtypes: list[torch.dtype], device, seed: int = 0):
    """(src (B, 1, W), dst (B, slots, W)) pairs of random values; every other dst is a strided view (a wider
    buffer's columns, or a 2-D buffer given a unit last dim as the decoder gives its positions)."""
    g = torch.Generator().manual_seed(seed)
    pairs = []
    for i, (w, dt) in enumerate(zip(widths, dtypes)):
        def rand(*shape):
            x = torch.randn(*shape, generator=g) * 100
            return x.to(dt).to(device)
        src = rand(batch, 1, w)
        if i % 2 and w == 1:
            dst = rand(batch, slots).unsqueeze(-1)  # (B, C) positions as (B, C, 1)
        elif i % 2:
            dst = rand(batch, slots, w + 3)[:, :, 1:w + 1]  # row stride W + 3
        else:
            dst = rand(batch, slots, w)
        pairs.append((src, dst))
    return pairs


@pytest.mark.parametrize("widths", [[1024, 3072, 1], [5, 1, 7], [BLOCK + 3, 2, 2 * BLOCK - 1, 1, 17, 64]])
@pytest.mark.parametrize("slot_dtype", [torch.int64, torch.int32])
def test_interpreter_matches_indexing(device, widths, slot_dtype):
    """Widths not multiple of the block, more pairs than one launch takes, four dtypes, strided destinations, slots
    at both ends of the buffer and repeated across sequences."""
    batch, slots = 3, 9
    dtypes = [DTYPES[i % len(DTYPES)] for i in range(len(widths))]
    slot = torch.tensor([0, slots - 1, 4], dtype=slot_dtype, device=device)
    got = _pairs(batch, slots, widths, dtypes, device)
    want = [(s, d.clone()) for s, d in got]
    before = [d.clone() for _, d in got]
    write_slots(slot, got)
    write_slots_ref(slot, want)
    for (src, d), (_, w), old in zip(got, want, before):
        assert torch.equal(d, w)
        rows = torch.arange(batch, device=device)
        assert torch.equal(d[rows, slot.long()], src[:, 0].to(d.dtype))  # the rows landed
        keep = torch.ones(batch, slots, dtype=torch.bool, device=device)
        keep[rows, slot.long()] = False
        assert torch.equal(d[keep], old[keep])  # nothing else moved


@pytest.mark.parametrize("bad,match", [
    ("slot_2d", "slot must be"), ("dst_batch", "dst must be"), ("src_width", "src must be"),
    ("dst_strided_last", "dst must be"),
])
def test_bad_arguments_are_refused(device, bad, match):
    slot = torch.zeros(2, dtype=torch.int64, device=device)
    src, dst = torch.zeros(2, 1, 4, device=device), torch.zeros(2, 5, 4, device=device)
    if bad == "slot_2d":
        slot = slot.view(2, 1)
    elif bad == "dst_batch":
        dst = torch.zeros(3, 5, 4, device=device)
    elif bad == "src_width":
        src = torch.zeros(2, 1, 3, device=device)
    else:
        dst = torch.zeros(2, 5, 8, device=device)[:, :, ::2]
    with pytest.raises(ValueError, match=match):
        write_slots(slot, [(src, dst)])


@pytest.mark.gpu
@pytest.mark.parametrize("batch", [1, 2, 8])
def test_gpu_decoder_shapes(batch):
    """The graph decoder's pairs at the benchmark shape (latents 1024 / 3072 fp16, int32 positions) on the GPU, and
    the quantized pairs (codes int32, scales / zeros fp16) in a second launch."""
    dev = torch.device("cuda")
    slots = 4096
    slot = torch.randint(0, slots, (batch,), device=dev)
    for widths, dtypes in (([1024, 3072, 1], [torch.float16, torch.float16, torch.int32]),
                           ([128, 32, 32, 384, 96, 96, 1], [torch.int32, torch.float16, torch.float16, torch.int32,
                                                            torch.float16, torch.float16, torch.int32])):
        got = _pairs(batch, slots, widths, dtypes, dev, seed=batch)
        want = [(s, d.clone()) for s, d in got]
        write_slots(slot, got)
        write_slots_ref(slot, want)
        for (_, d), (_, w) in zip(got, want):
            assert torch.equal(d, w)


_BUILD = """
import json, torch
from kernels.offline_build import compile_only, resource_usage
from kernels.slot_write import write_slots
B = 2
slot = torch.zeros(B, dtype=torch.int64)
fp = [(torch.zeros(B, 1, w, dtype=torch.float16), torch.zeros(B, 64, w, dtype=torch.float16)) for w in (1024, 3072)]
pos = (torch.zeros(B, 1, dtype=torch.int32), torch.zeros(B, 64, dtype=torch.int32).unsqueeze(-1))
quant = [(torch.zeros(B, 1, w, dtype=dt), torch.zeros(B, 64, w, dtype=dt))
         for w, dt in ((128, torch.int32), (32, torch.float16), (32, torch.float16))] * 2
with compile_only() as built:
    write_slots(slot, fp + [pos])
    write_slots(slot, quant + [pos])
print(json.dumps([resource_usage(k) for k in built]))
"""


def test_builds_for_sm90(tmp_path):
    """The decoder's two launch shapes (fp latents + position; quantized parts + position, two launches) compile for
    sm_90 without a GPU (kernels.offline_build), without spilling: a compile error shows up on CI, not on the device."""
    builds = build_in_subprocess(_BUILD, tmp_path)
    assert [b["name"] for b in builds] == ["_write_slots_kernel"] * 3
    assert all(b["local"] == 0 and b["stack"] == 0 for b in builds), builds
