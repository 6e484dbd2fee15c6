"""The warp-specialized Gluon single-pass kernel (kernels/single_pass_ws.py): when it applies, its launch
arithmetic, its host wiring (CPU, with a torch stand-in for the kernel), and its results on the GPU against
the torch reference (Gluon does not run in the interpreter)."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from kernels import latent_decode_attention
from kernels.reference import latent_decode_attention_ref
from tests.kernels.latent_cases import Case, make_inputs, rel_error, tolerance
from tests.kernels.test_fold_scores_ws import KEY_SIDE_CASES, ONLY_THE_GPU
from tests.kernels.test_latent_attention import check

sp = pytest.importorskip("kernels.single_pass_ws")

LLAMA = Case(num_heads=32, num_kv_heads=32, head_dim=128, group_size=4, k_ranks=(128,) * 8, v_ranks=(384,) * 8,
             num_slots=3000, batch=2, dtype=torch.float16)


def test_shared_memory_and_heads_per_program():
    # Llama-2-7B at 50%: 128 KB of rows + 2 key tiles (32 KB) + 4 value boxes (64 KB) + P (2 KB) + the warps'
    # maxima (256 B, SP_LAZY_MAX) + 9 barriers (2 + 2 key, 2 value ready and 2 empty per consumer, rows)
    assert sp.sp_shared_bytes(4, 128, 128, 384, 2) == 131072 + 32768 + 65536 + 2048 + 256 + 9 * 8
    # the quantized kernel's dequant warps keep a ready barrier per (consumer, box buffer): 8 instead of 2
    assert sp.sp_shared_bytes(4, 128, 128, 384, 2, tile_ready=False) == sp.sp_shared_bytes(4, 128, 128, 384, 2) + 48
    assert sp.sp_shared_bytes(4, 128, 128, 384, 2) <= sp.SP_SMEM_LIMIT - sp.SP_SMEM_MARGIN
    assert sp.sp_fold_heads(4, 128, 128, 384, 2) == 4
    assert sp.sp_value_box(384) == 128 and sp.sp_value_stages(384) == 4
    assert sp.sp_value_box(192) == 64 and sp.sp_value_stages(192) == 4
    assert sp.sp_fold_heads(4, 128, 128, 512, 2) == 2  # five 16 KB value boxes leave room for two heads
    assert sp.sp_fold_heads(4, 128, 256, 384, 2) == 1
    assert sp.sp_fold_heads(4, 128, 128, 384, 2, requested=2) == 2
    with pytest.raises(ValueError, match="fold_heads=3"):
        sp.sp_fold_heads(4, 128, 128, 384, 2, requested=3)
    with pytest.raises(ValueError, match="fold_heads=4"):
        sp.sp_fold_heads(4, 128, 128, 512, 2, requested=4)


def test_lazy_max_needs_the_split_softmax_layout(monkeypatch):
    # the lazy rescaling reads the warps' maxima in the value accumulators' columns (SP_P_SPLIT's layout)
    from kernels.offline_build import set_constant
    monkeypatch.setattr(sp, "SP_P_SPLIT", sp.SP_P_SPLIT)
    set_constant(sp, "SP_P_SPLIT", False)
    rows = torch.zeros(1, 8, 512, 128, dtype=torch.float16)
    with pytest.raises(ValueError, match="SP_LAZY_MAX needs SP_P_SPLIT"):
        sp.sp_launch(rows, 64, 4, 4, 3000, 132, None, lambda n: None)


def test_heads_fill_whole_score_wgmmas(monkeypatch):
    # 128 folded rows per wgmma, whole heads: at head_dim 64 three heads (192 rows) would leave a partial wgmma
    monkeypatch.setattr(sp, "SP_DOT_COLS", 128)
    monkeypatch.setattr(sp, "SP_SPLIT_HEADS", False)
    assert sp.sp_dot_cols(64) == 128 and sp.sp_dot_cols(256) == 256
    assert sp.sp_fold_heads(3, 64, 64, 128, 2) == 1
    assert sp.sp_fold_heads(2, 64, 64, 128, 2) == 2
    assert sp.sp_fold_heads(8, 64, 16, 64, 2) == 8
    monkeypatch.setattr(sp, "SP_DOT_COLS", 64)
    assert [sp.sp_dot_cols(d) for d in (16, 64, 128, 256)] == [64, 64, 128, 256]
    monkeypatch.setattr(sp, "SP_SPLIT_HEADS", True)  # a part of a head per wgmma where 64 rows divide it
    assert [sp.sp_dot_cols(d) for d in (16, 64, 128, 256)] == [64, 64, 64, 64]
    assert sp.sp_fold_heads(3, 64, 64, 128, 2) == 3  # a head per wgmma
    monkeypatch.setattr(sp, "SP_DOT_COLS", 96)
    assert [sp.sp_dot_cols(d) for d in (64, 128)] == [96, 128]


def test_chunks_fill_the_sms_or_follow_num_splits():
    assert sp.sp_chunks(65536, 8, 132, None) == (4096, 16)
    assert sp.sp_chunks(65536, 64, 132, None) == (32768, 2)  # B=8: 64 (b, g) x 2 chunks = 128 programs
    assert sp.sp_chunks(37, 8, 132, None) == (64, 1)
    assert sp.sp_chunks(300, 4, 4, 5) == (128, 3)  # ceil(5 / 2) chunks: two splits each


def _reason(case: Case, n_rep: int = 1, block_s=None) -> str:
    inputs = make_inputs(case, torch.device("cpu"))
    return sp.single_pass_ws_unsupported(inputs["q"], inputs["k_latent"], inputs["v_latent"], list(case.k_ranks),
                                         list(case.v_ranks), n_rep, case.bias, block_s)


BASE = Case(num_heads=4, num_kv_heads=4, head_dim=64, group_size=2, k_ranks=(64, 64), v_ranks=(128, 128))


@pytest.mark.parametrize("change,reason", KEY_SIDE_CASES + [
    (dict(v_ranks=(128, 64)), "same value rank"),
    (dict(v_ranks=(96, 96)), "multiple of 64"),
    (dict(v_ranks=(640, 640)), "[64, 512]"),
    (dict(num_heads=32, num_kv_heads=32, group_size=16), "16 heads per group"),
    ONLY_THE_GPU,
])
def test_unsupported_calls_are_named(change, reason):
    case = dataclasses.replace(BASE, **change)
    assert reason in _reason(case)


def test_gqa_and_other_blocks_are_unsupported():
    assert "n_rep" in _reason(BASE, n_rep=2)
    assert "block_s=32" in _reason(BASE, block_s=32)
    assert "sm_90" in _reason(BASE, block_s=64)


def test_forcing_it_where_it_cannot_run_is_an_error(device):
    inputs = make_inputs(BASE, device)
    if device.type == "cpu":
        with pytest.raises(ValueError, match="sm_90"):
            latent_decode_attention(**inputs, method="single_pass", warp_specialized=True)
    bias = make_inputs(dataclasses.replace(BASE, bias=True), device)
    if device.type == "cuda":
        with pytest.raises(ValueError, match="key-bias"):
            latent_decode_attention(**bias, method="single_pass", warp_specialized=True)
    with pytest.raises(ValueError, match="fold and single-pass paths only"):
        latent_decode_attention(**inputs, method="rope_qk", warp_specialized=True)


class _TorchStandIn:
    """What _ws_single_pass_kernel computes, in torch (it cannot run here): per program (b, g, head split,
    chunk) and consumer ROLE, the softmax partials of its heads over tiles ROLE, ROLE + 2, ... of the chunk,
    with scores from the interleaved folded rows (row 2i . x multiplies cos, row 2i + 1 . x sin)."""

    def __getitem__(self, grid):
        def run(lat_desc, val_desc, rows_desc, positions, pos_sb, kv_start, inv_freq, part_m, part_l, part_acc,
                num_heads, num_splits, rank, rank_v, num_slots, num_groups, bgs, chunk_len, head_splits,
                lat_ptr, val_ptr, HG, HP, HALF, RV, BLOCK_S, **_):
            # the L2 prefetch's pointers are the latents the descriptors load
            assert lat_ptr is lat_desc.base and val_ptr is val_desc.base
            k, v = lat_desc.base.float(), val_desc.base.float()
            rows = rows_desc.base.float().view(k.shape[0], num_groups, HG, HALF, 2, rank)
            assert rows_desc.block_shape == [min(sp.sp_dot_cols(2 * HALF), HP * 2 * HALF), rank]
            for pid in range(grid[0]):
                bg, hs, chunk = pid % bgs, (pid // bgs) % head_splits, pid // (bgs * head_splits)
                g, b = bg % num_groups, bg // num_groups
                lo, hi = chunk * chunk_len, min((chunk + 1) * chunk_len, num_slots)
                for role in (0, 1):
                    idx = torch.tensor([s for t in range(lo + role * BLOCK_S, hi, 2 * BLOCK_S)
                                        for s in range(t, min(t + BLOCK_S, hi))], dtype=torch.long)
                    split = 2 * chunk + role
                    for t in range(HP):
                        local = hs * HP + t
                        head = g * HG + local
                        m, l, acc = float("-inf"), 0.0, torch.zeros(RV)
                        if len(idx):
                            y = k[b, idx, g * rank:(g + 1) * rank] @ rows[b, g, local].reshape(2 * HALF, rank).T
                            y = y.view(-1, HALF, 2)
                            angle = positions[b, idx].float()[:, None] * inv_freq
                            s = (y[..., 0] * torch.cos(angle) + y[..., 1] * torch.sin(angle)).sum(-1)
                            s = s.masked_fill(idx < kv_start[b], float("-inf"))
                            if torch.isfinite(s.max()):
                                m = s.max().item()
                                p = torch.exp2(s - m)
                                l, acc = p.sum().item(), p @ v[b, idx, g * rank_v:(g + 1) * rank_v]
                        part_m[b, head, split], part_l[b, head, split] = m, l
                        part_acc[b, head, split] = acc
        return run


def test_programmatic_dependent_launch_only_on_a_gpu(monkeypatch):
    """DECODE_PDL applies to CUDA devices of sm_90 or later, never on the CPU or in the interpreter (which has no
    such launch option)."""
    import kernels.latent_attention as la
    from kernels.host_math import pdl_launch

    monkeypatch.setattr(la, "DECODE_PDL", True)
    assert not la.decode_pdl(torch.device("cpu"))
    assert pdl_launch(False) == {} and pdl_launch(True) == {"launch_pdl": True}
    monkeypatch.setattr(la, "DECODE_PDL", False)
    if torch.cuda.is_available():
        assert not la.decode_pdl(torch.device("cuda"))


def test_an_odd_key_ring_is_refused(device, monkeypatch):
    """With an odd number of key buffers the two consumers would share one buffer's ready barrier."""
    monkeypatch.setattr(sp, "SP_KEY_STAGES", 3)
    p = make_inputs(dataclasses.replace(BASE, num_slots=100), device)
    with pytest.raises(ValueError, match="SP_KEY_STAGES must be even"):
        sp.ws_single_pass(None, p["k_latent"].fp, p["v_latent"].fp, p["positions"], p["kv_start"], p["inv_freq"], 4,
                          64, 128, 2, 2, 4, None, None)


@pytest.mark.parametrize("num_splits,fold_heads", [(None, None), (5, 2), (None, 1)])
def test_host_wiring_with_a_torch_stand_in(device, monkeypatch, num_splits, fold_heads):
    """_single_pass_decode_ws (interleaved rows, descriptors, heads per program, chunks, the merge) against
    the reference, with the GPU-only kernel replaced by its torch equivalent."""
    if device.type != "cpu":
        pytest.skip("the stand-in replaces the kernel on CPU tensors only")
    import kernels.latent_attention as la

    monkeypatch.setattr(sp, "_ws_single_pass_kernel", _TorchStandIn())
    case = Case(num_heads=8, num_kv_heads=8, head_dim=64, group_size=4, k_ranks=(32, 32), v_ranks=(64, 64),
                num_slots=300, batch=2, dtype=torch.float16)
    p = make_inputs(case, device)
    out = la._single_pass_decode_ws(p["q"], p["k_latent"], p["v_latent"], p["k_up"], p["k_offsets"], p["positions"],
                                    p["kv_start"], p["inv_freq"], p["rope_scale"], p["sm_scale"], 4, 32, 64, 4,
                                    num_splits, fold_heads, torch.float32)
    assert rel_error(out, latent_decode_attention_ref(**p)) < tolerance(case.dtype, device)


# ---------------------------------------------------------------------------------------------
# GPU (sm_90): the kernel against the torch reference.
# ---------------------------------------------------------------------------------------------

def _hopper() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9


hopper = pytest.mark.skipif(not _hopper(), reason="the Gluon kernel is built for sm_90")


@pytest.mark.gpu
@hopper
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("head_dim,group_size,rank,rank_v", [
    (128, 4, 128, 384), (128, 1, 64, 128), (128, 2, 256, 64), (64, 4, 128, 192), (64, 2, 32, 512), (64, 8, 16, 64),
])
def test_gpu_single_pass_ws(dtype, head_dim, group_size, rank, rank_v):
    groups = 8 // group_size
    base = Case(num_heads=8, num_kv_heads=8, head_dim=head_dim, group_size=group_size, k_ranks=(rank,) * groups,
                v_ranks=(rank_v,) * groups, batch=3, dtype=dtype)
    for num_slots in (1, 37, 64, 2049, 5000):
        check(dataclasses.replace(base, num_slots=num_slots), torch.device("cuda"), method="single_pass",
              warp_specialized=True)


@pytest.mark.gpu
@hopper
@pytest.mark.parametrize("change", [
    dict(theta=5e5), dict(theta=5e5, llama3=True), dict(rope_scale=1.3), dict(row_pad=24), dict(left_pad=False),
    dict(num_slots=70000, batch=1),
], ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_gpu_single_pass_ws_options(change):
    check(dataclasses.replace(LLAMA, **change), torch.device("cuda"), method="single_pass", warp_specialized=True)


def _stored_positions(kind: str, batch: int, num_slots: int, gen: torch.Generator) -> torch.Tensor:
    """(B, S) int32 positions that are not one run per row: a jump of 1000 inside a tile ("jump"), runs of 50
    with gaps ("runs"), a repeated position ("repeat"), counting down ("down"), or any ("random")."""
    s = torch.arange(num_slots, dtype=torch.int32)
    if kind == "jump":
        row = s + 1000 * (s >= 2 * 128 + 37).int()
    elif kind == "runs":
        row = s + 7 * (s // 50)
    elif kind == "repeat":
        row = torch.where(s == 300, s - 1, s)
    elif kind == "down":
        row = num_slots - s
    else:
        row = torch.randint(0, 300000, (num_slots,), generator=gen, dtype=torch.int32)
    return (row[None] + torch.randint(0, 5000, (batch, 1), generator=gen, dtype=torch.int32)).contiguous()


@pytest.mark.gpu
@hopper
@pytest.mark.parametrize("kind", ["jump", "runs", "repeat", "down", "random"])
def test_gpu_single_pass_ws_stored_positions(kind):
    """Whatever positions a cache stored: the cos/sin rotated from two tiles before (SP_TRIG_ROTATE) must fall
    back to fresh ones wherever a slot is not 2 * BLOCK_S positions past the slot two tiles before it."""
    case = dataclasses.replace(LLAMA, num_slots=1500)
    inputs = make_inputs(case, torch.device("cuda"))
    gen = torch.Generator().manual_seed(3)
    inputs["positions"] = _stored_positions(kind, case.batch, case.num_slots, gen).cuda()
    ref = latent_decode_attention_ref(**inputs)
    out = latent_decode_attention(**inputs, method="single_pass", warp_specialized=True)
    assert torch.isfinite(out).all()
    err, tol = rel_error(out, ref), tolerance(case.dtype, torch.device("cuda"))
    assert err < tol, f"relative error {err:.2e} >= {tol:.0e} with {kind} positions"


@pytest.mark.gpu
@hopper
@pytest.mark.parametrize("launch", [dict(fold_heads=1), dict(fold_heads=2), dict(num_splits=3),
                                    dict(num_splits=64)], ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_gpu_single_pass_ws_launches(launch):
    """An explicit fold_heads or num_splits is honored."""
    for num_slots in (37, 4099):
        check(dataclasses.replace(LLAMA, num_slots=num_slots), torch.device("cuda"), method="single_pass",
              warp_specialized=True, **launch)


@pytest.mark.gpu
@hopper
@pytest.mark.parametrize("variant", [dict(SP_THREAD_L=False), dict(SP_DOT_COLS=256),
                                     dict(SP_DOT_COLS=128, SP_SCORE_PIPE=False, SP_ROWS_PER_TILE=False),
                                     dict(SP_SPLIT_HEADS=False), dict(SP_L2_PREFETCH=2)],
                         ids=lambda v: ",".join(f"{k}={x}" for k, x in v.items()))
def test_gpu_single_pass_ws_variants(variant, monkeypatch):
    """The measured variants: l summed across warps per tile, 256-row score wgmmas, the eighteenth session's
    default (128-row score wgmmas each waited at once, their descriptors hoisted out of the loop), whole heads
    per score wgmma (128 rows at head_dim 128, both issued before the first is waited), and the producer's L2
    prefetch two tiles ahead (4099 slots: its last tiles clamped to the program's end)."""
    for name, value in variant.items():
        monkeypatch.setattr(sp, name, value)
    for num_slots in (37, 4099):
        check(dataclasses.replace(LLAMA, num_slots=num_slots), torch.device("cuda"), method="single_pass",
              warp_specialized=True)


@pytest.mark.gpu
@hopper
def test_gpu_auto_takes_it_and_agrees_with_the_fold_path(monkeypatch):
    """With SP_AUTO set (the default), method="auto" runs this kernel where it applies (the same output bit for
    bit). It agrees with the fold path's two kernels as closely as each agrees with the reference: both round p
    to bf16 for the value products, against different running maxima (per 64-slot tile here, per value block
    there)."""
    monkeypatch.setattr(sp, "SP_AUTO", True)
    case = dataclasses.replace(LLAMA, num_slots=4099, dtype=torch.bfloat16)
    inputs = make_inputs(case, torch.device("cuda"))
    forced = latent_decode_attention(**inputs, method="single_pass", warp_specialized=True)
    auto = latent_decode_attention(**inputs)
    fold = latent_decode_attention(**inputs, method="fold")
    assert torch.equal(auto, forced)
    assert rel_error(forced, fold) < tolerance(case.dtype, torch.device("cuda"))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        latent_decode_attention(**inputs)
        torch.cuda.synchronize()
    names = [e.name for e in prof.events()]
    assert any("_ws_single_pass_kernel" in n for n in names) and not any("fold_scores" in n for n in names)


@pytest.mark.gpu
@hopper
@pytest.mark.parametrize("num_slots,batch", [(37, 3), (4099, 2), (70000, 1)])
def test_gpu_programmatic_dependent_launch_gives_the_same_output(num_slots, batch, monkeypatch):
    """DECODE_PDL: the single pass starts while the fold rows run and the merge while the single pass ends; both
    wait for what they read, so the output is the same bit for bit as without, eager and replayed from a CUDA graph
    (twenty replays: a missing wait shows up as a replay that differs), with z and with the up-projected values."""
    import kernels.latent_attention as la

    case = dataclasses.replace(LLAMA, num_slots=num_slots, batch=batch)
    inputs = make_inputs(case, torch.device("cuda"))
    gen = torch.Generator(device="cuda").manual_seed(0)
    v_up = torch.randn(8, 4 * 128, 384, device="cuda", generator=gen, dtype=case.dtype) / 20
    for extra in ({}, {"v_up": v_up}):
        def call():
            return latent_decode_attention(**inputs, **extra, method="single_pass", warp_specialized=True)

        monkeypatch.setattr(la, "DECODE_PDL", False)
        want = call()
        monkeypatch.setattr(la, "DECODE_PDL", True)
        assert la.decode_pdl(inputs["q"].device)
        assert torch.equal(call(), want)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = call()
        for _ in range(20):
            out.zero_()
            graph.replay()
            torch.cuda.synchronize()
            assert torch.equal(out, want), extra.keys()


def test_the_kernel_benchmark_can_time_it():
    """run_latency_kernel.py --fused_kernel single_pass_ws times this kernel whatever "auto" picks."""
    import importlib

    from kernels.bench import FUSED_KERNELS, KernelBenchConfig

    cfg = KernelBenchConfig(total_rank=1024, total_rank_v=3072, fused_kernel="single_pass_ws")
    assert cfg.decode_kwargs == {"method": "single_pass", "warp_specialized": True}
    assert KernelBenchConfig(total_rank=1024, total_rank_v=3072).decode_kwargs == {}
    with pytest.raises(ValueError, match="fused_kernel"):
        KernelBenchConfig(total_rank=1024, total_rank_v=3072, fused_kernel="fused")
    script = importlib.import_module("run_latency_kernel")
    for name in FUSED_KERNELS:
        assert script.parse_args(["--total_rank", "64", "--fused_kernel", name]).fused_kernel == name
    with pytest.raises(SystemExit):
        script.parse_args(["--total_rank", "64", "--fused_kernel", "fused"])
