"""latent_decode_attention (Triton) against the fp32 reference in kernels.reference.

Two sets: `test_interpreter_*` are tiny and run everywhere (through Triton's CPU interpreter
when there is no GPU, in well under a minute); the `gpu`-marked sweep covers the full
parametrization (head_dim, GQA ratio, group size, ranks, seq lens, dtypes, RoPE, quantization).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import triton
import triton.language as tl

import kernels
from kernels import latent_decode_attention
from kernels.reference import dequantize_latent_ref, latent_decode_attention_ref
from kernels.rope_qk import load_latent_tile
from .latent_cases import Case, make_inputs, rel_error, tolerance
from palu.config import LatentQuantConfig
from palu.quant import dequantize, quantize


def check(case: Case, device: torch.device, autotune: bool = False, **launch) -> float:
    """Kernel vs. reference on fresh random inputs; a fixed block unless `autotune` (compiles less)."""
    if not autotune:
        launch.setdefault("block_s", 16 if device.type == "cpu" else 64)
    inputs = make_inputs(case, device)
    ref = latent_decode_attention_ref(**inputs)
    out = latent_decode_attention(**inputs, **launch)
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert torch.isfinite(out).all(), "non-finite output"
    err, tol = rel_error(out, ref), tolerance(case.dtype, device)
    assert err < tol, f"relative error {err:.2e} >= {tol:.0e} for {case}"
    return err


# ---------------------------------------------------------------------------------------------
# Everywhere (interpreter on CPU): small shapes, fp32/fp16 (the interpreter's dot lacks bf16).
# ---------------------------------------------------------------------------------------------

INTERP_DTYPES = [torch.float32, torch.float16]


@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("n_rep,group_size", [(1, 1), (1, 2), (4, 2), (2, 4)])
def test_interpreter_shapes(device, head_dim, n_rep, group_size):
    num_kv = 4
    groups = num_kv // group_size
    case = Case(
        num_heads=num_kv * n_rep, num_kv_heads=num_kv, head_dim=head_dim, group_size=group_size,
        k_ranks=(24, 40, 17, 33)[:groups], v_ranks=(17, 24, 40, 9)[:groups], num_slots=37, dtype=torch.float16,
    )
    check(case, device, num_splits=2)


@pytest.mark.parametrize("method", ["fold", "rope_qk"])
@pytest.mark.parametrize("n_rep,group_size,bias", [(1, 2, False), (1, 1, True), (2, 2, True)])
def test_interpreter_methods(device, method, n_rep, group_size, bias):
    """Both score kernels on the same problems: folded queries (any n_rep when forced) and key
    reconstruction; with key bias, unequal ranks and more than one chunk of slots."""
    groups = 4 // group_size
    case = Case(num_heads=4 * n_rep, num_kv_heads=4, group_size=group_size, k_ranks=(24, 40, 17, 33)[:groups],
                v_ranks=(17, 24, 40, 9)[:groups], num_slots=45, bias=bias, theta=5e5, rope_scale=1.1,
                dtype=torch.float32)
    check(case, device, num_splits=3, method=method)


@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("group_size,fold_heads,bias", [(1, None, True), (2, None, False), (4, 2, True), (4, 1, False)])
def test_interpreter_single_pass(device, head_dim, group_size, fold_heads, bias):
    """The single-pass kernel: unequal ranks (a value rank past the first column block), bias, several
    splits, one head per program or several, heads split over programs."""
    groups = 4 // group_size
    case = Case(num_heads=4, num_kv_heads=4, head_dim=head_dim, group_size=group_size,
                k_ranks=(24, 40, 17, 33)[:groups], v_ranks=(17, 24, 40, 9)[:groups], num_slots=61, bias=bias,
                theta=5e5, rope_scale=1.1, dtype=torch.float16)
    check(case, device, num_splits=2, method="single_pass", fold_heads=fold_heads)  # two blocks per split


@pytest.mark.parametrize("bits,aligned", [(4, True), (3, False), (2, True)], ids=["4-words", "3-gather", "2-words"])
def test_interpreter_single_pass_quantized(device, bits, aligned):
    """Quantized and full-precision slots in one block (the fp tail), left padding of one sequence."""
    ranks = dict(k_ranks=(64, 32), v_ranks=(32, 96)) if aligned else dict(k_ranks=(24, 40), v_ranks=(17, 30))
    case = Case(num_heads=4, num_kv_heads=4, head_dim=64, group_size=2, num_slots=53, num_quantized=40, bits=bits,
                batch=2, dtype=torch.float16, **ranks)
    check(case, device, num_splits=2, method="single_pass")


def test_single_pass_rejects_bad_launches(device):
    inputs = make_inputs(Case(num_heads=8, num_kv_heads=4, group_size=2, num_slots=20, dtype=torch.float32), device)
    with pytest.raises(ValueError, match="n_rep"):
        latent_decode_attention(**inputs, method="single_pass", block_s=16)
    inputs = make_inputs(Case(num_heads=4, num_kv_heads=4, group_size=4, k_ranks=(24,), v_ranks=(17,), num_slots=20,
                              dtype=torch.float32), device)
    with pytest.raises(ValueError, match="must divide"):
        latent_decode_attention(**inputs, method="single_pass", fold_heads=3, block_s=16)
    # Blocks of 1024 slots x (32 key + 32 value) fp32 channels alone are 256 KB: more than an SM has.
    with pytest.raises(ValueError, match="shared memory"):
        latent_decode_attention(**inputs, method="single_pass", block_s=1024)


def test_fold_and_reconstruction_agree_on_far_positions(device):
    """The fold identity holds for every slot, not only on average: per-head scores of the two paths
    agree through the full pipeline on adversarial positions (large, non-contiguous)."""
    case = Case(num_heads=4, num_kv_heads=4, group_size=2, num_slots=33, dtype=torch.float32, theta=1e4)
    inputs = make_inputs(case, device)
    inputs["positions"] = torch.randint(0, 300000, inputs["positions"].shape, dtype=torch.int32, device=device)
    a = latent_decode_attention(**inputs, method="fold", block_s=16, num_splits=2)
    b = latent_decode_attention(**inputs, method="rope_qk", block_s=16, num_splits=2)
    ref = latent_decode_attention_ref(**inputs)
    assert rel_error(a, ref) < 1e-4 and rel_error(b, ref) < 1e-4


def test_fold_heads_outside_the_fold_paths_is_refused(device):
    inputs = make_inputs(Case(num_heads=4, num_kv_heads=4, group_size=2, dtype=torch.float32), device)
    with pytest.raises(ValueError, match="fold_heads applies"):
        latent_decode_attention(**inputs, method="rope_qk", fold_heads=2)


@pytest.mark.parametrize("fold_heads", [1, 2, 4])
@pytest.mark.parametrize("n_rep,bias", [(1, True), (2, False)])
@pytest.mark.parametrize("one_head_per_dot", [False, True])
def test_interpreter_fold_heads_per_program(device, fold_heads, n_rep, bias, one_head_per_dot, monkeypatch):
    """Score programs covering 1, 2 or all 4 query heads of a group give the same attention
    (heads offset inside the group, GQA head mapping, bias fold), in fp16; with all of a program's
    heads in one dot, and with one dot per head (the chunking wide heads get)."""
    import kernels.latent_attention as la

    group_size = 4 // n_rep  # 4 query heads per group either way
    groups = 4 // group_size
    case = Case(num_heads=4 * n_rep, num_kv_heads=4, group_size=group_size, k_ranks=(40, 24)[:groups],
                v_ranks=(24, 33)[:groups], num_slots=37, bias=bias, dtype=torch.float16)
    if one_head_per_dot:
        monkeypatch.setattr(la, "FOLD_DOT_COLS", 1)
    check(case, device, num_splits=2, method="fold", fold_heads=fold_heads)


@pytest.mark.parametrize("block", [16, 32])
def test_interpreter_fold_rows_in_rank_blocks(device, block, monkeypatch):
    """FOLD_ROWS_RANK_BLOCK splits _fold_rows_kernel's rank columns over programs: the same rows (unequal
    ranks, padded to 64) and the same key-bias fold (written by the first block only), and the same output."""
    import kernels.latent_attention as la
    case = Case(num_heads=8, k_ranks=(40, 64), v_ranks=(32, 48), head_dim=64, group_size=2, bias=True,
                dtype=torch.float32)
    inputs = make_inputs(case, device)
    args = (inputs["q"], inputs["k_up"], inputs["k_offsets"], inputs["k_bias"], inputs["sm_scale"],
            inputs["rope_scale"], inputs["head_group_size"], 2, 32, 64)
    whole, whole_bias, _ = la._folded_rows(*args)
    monkeypatch.setattr(la, "FOLD_ROWS_RANK_BLOCK", block)
    assert la.fold_rows_rank_block(64) == block and la.fold_rows_rank_block(block) == block  # one block: unsplit
    blocked, blocked_bias, _ = la._folded_rows(*args)
    assert torch.equal(blocked, whole) and torch.equal(blocked_bias, whole_bias)
    check(case, device, method="fold")


def test_fold_heads_per_dot():
    """The most heads (dividing the program's) whose folded rows fit one FOLD_DOT_COLS-wide dot."""
    from kernels.latent_attention import FOLD_DOT_COLS, fold_heads_per_dot

    assert FOLD_DOT_COLS == 256
    assert fold_heads_per_dot(2, 64) == 2  # Llama-2-7B, two heads per program: one 256-row dot
    assert fold_heads_per_dot(4, 64) == 2  # four heads: two dots of two
    assert fold_heads_per_dot(4, 32) == 4  # head_dim 64: all four in one dot
    assert fold_heads_per_dot(3, 32) == 3
    assert fold_heads_per_dot(6, 32) == 3  # 4 would fit the width but does not divide 6
    assert fold_heads_per_dot(2, 128) == 1  # head_dim 256: one head is already 256 rows
    assert fold_heads_per_dot(1, 256) == 1  # wider than a dot: still one head per dot


def test_fold_heads_must_divide_the_group(device):
    inputs = make_inputs(Case(num_heads=4, num_kv_heads=4, group_size=4, k_ranks=(32,), v_ranks=(32,),
                              dtype=torch.float32), device)
    with pytest.raises(ValueError, match="fold_heads=3"):
        latent_decode_attention(**inputs, method="fold", fold_heads=3, block_s=16)


def test_fold_heads_choice():
    """The most heads per program whose program fits twice on an SM (measured best), else once."""
    from kernels.latent_attention import FOLD_SMEM_BUDGET, SMEM_PER_SM, choose_fold_heads, fold_shared_bytes

    assert choose_fold_heads(4, 64, 128, 2) == 2  # Llama-2-7B at 50%: 97 KB programs, two per SM
    assert choose_fold_heads(4, 32, 64, 2) == 4  # head_dim 64, rank 64: all four fit twice
    assert choose_fold_heads(3, 64, 128, 2) == 1  # 3 heads: only 1 divides and fits twice
    d = choose_fold_heads(16, 64, 256, 2)
    assert 16 % d == 0 and fold_shared_bytes(d, 64, 256, 2, stages=1) <= FOLD_SMEM_BUDGET
    assert 2 * (fold_shared_bytes(d, 64, 256, 2) + 1024) > SMEM_PER_SM  # rank 256: no program fits twice
    with pytest.raises(ValueError, match="rope_qk"):
        choose_fold_heads(4, 128, 1024, 4)


def test_fold_stages_keep_two_programs_per_sm():
    """Three latent stages only where they fit the budget and keep the programs per SM (measured best)."""
    from kernels.latent_attention import _fold_programs_per_sm, _fold_stages

    assert _fold_stages(2, 64, 128, 2) == 3 and _fold_programs_per_sm(2, 64, 128, 2, 3) == 2  # 112 KB, twice
    assert _fold_stages(4, 64, 128, 2) == 2  # 3 stages would exceed the 160-KB budget
    assert _fold_stages(8, 64, 128, 2) == 1


def test_fold_identity_reference():
    """fold_queries_ref's (M, c) give the same scores as reconstructing and rotating the keys."""
    from kernels.reference import fold_queries_ref, latent_decode_scores_ref, rope_cos_sin_ref

    case = Case(num_heads=8, num_kv_heads=4, group_size=2, num_slots=19, bias=True, rope_scale=1.3,
                dtype=torch.float32, left_pad=False)
    inp = make_inputs(case, torch.device("cpu"))
    latent = inp["k_latent"].fp.float()
    ref = latent_decode_scores_ref(inp["q"], latent, inp["k_up"], inp["k_offsets"], inp["positions"],
                                   inp["kv_start"], inp["inv_freq"], inp["rope_scale"], 1.0, case.group_size,
                                   inp["k_bias"])
    m, c = fold_queries_ref(inp["q"], inp["k_up"], case.group_size, inp["k_bias"])
    cos, sin = rope_cos_sin_ref(inp["positions"], inp["inv_freq"], inp["rope_scale"])  # (B, S, D)
    half = case.head_dim // 2
    cs = torch.cat((cos[..., :half], sin[..., :half]), dim=-1)  # (B, S, D): cos rows then sin rows
    offs = inp["k_offsets"].tolist()
    heads_per_group = case.num_heads // (case.num_kv_heads // case.group_size)
    out = torch.empty_like(ref)
    for h in range(case.num_heads):
        g = h // heads_per_group
        x = torch.zeros(latent.shape[0], latent.shape[1], m.shape[-1])
        x[..., : offs[g + 1] - offs[g]] = latent[..., offs[g]:offs[g + 1]]
        y = torch.einsum("bsr,bdr->bsd", x, m[:, h]) + c[:, h, None]
        out[:, h] = (y * cs).sum(-1)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_fold_choice(device):
    """auto takes the fold path for n_rep == 1 and reconstruction for GQA (fewer dot FLOPs)."""
    from kernels.latent_attention import FOLD_SMEM_BUDGET, fold_shared_bytes

    assert fold_shared_bytes(4, 64, 128, 2) <= FOLD_SMEM_BUDGET  # Llama-2-7B, 4 heads/group, rank 128
    assert fold_shared_bytes(16, 64, 256, 2) > FOLD_SMEM_BUDGET
    with pytest.raises(ValueError, match="method"):
        latent_decode_attention(**make_inputs(Case(dtype=torch.float32), device), method="nope")


@pytest.mark.parametrize("num_slots", [1, 37, 70])
@pytest.mark.parametrize("num_splits", [1, 3])
def test_interpreter_seq_lens_and_splits(device, num_slots, num_splits):
    check(Case(num_slots=num_slots, dtype=torch.float32), device, num_splits=num_splits)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("sym", [False, True])
@pytest.mark.parametrize("aligned", [False, True], ids=["gather", "words"])
@pytest.mark.parametrize("dtype", INTERP_DTYPES, ids=["fp32", "fp16"])
def test_interpreter_quantized(device, bits, sym, aligned, dtype):
    # 16-channel quant groups; ranks either off word/group boundaries (per-element gathers) or on them
    # (whole-word unpacking, with a partly masked last tile). The last 5 slots stay fp. fp16 takes the
    # codes-as-fp16 bit trick of aligned tiles, fp32 the integer conversion.
    ranks = dict(k_ranks=(32, 64), v_ranks=(64, 48)) if aligned else {}
    case = Case(bits=bits, sym=sym, quant_group_size=16, num_slots=29, dtype=dtype, **ranks)
    check(case, device, num_splits=2)


@triton.jit
def _latent_tile_kernel(codes, codes_ss, scale, scale_ss, zero, zero_ss, out, num_slots, rank,
                        BITS: tl.constexpr, QUANT_GROUP: tl.constexpr, HAS_ZERO: tl.constexpr,
                        BLOCK: tl.constexpr, C: tl.constexpr):
    """One aligned quantized tile (BLOCK, C) through load_latent_tile, stored as is."""
    slots = tl.arange(0, BLOCK)
    x = load_latent_tile(out, 0, codes, codes_ss, scale, scale_ss, zero, zero_ss, slots, slots < num_slots,
                         num_slots, 0, rank, True, False, BITS, QUANT_GROUP, HAS_ZERO, True, C,
                         out.dtype.element_ty)
    tl.store(out + slots[:, None] * C + tl.arange(0, C)[None, :], x)


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("sym", [False, True], ids=["asym", "sym"])
@pytest.mark.parametrize("dtype", INTERP_DTYPES, ids=["fp32", "fp16"])
def test_interpreter_word_dequant_matches_palu_quant(device, bits, sym, dtype):
    """The aligned tile loader alone against palu.quant.dequantize, channel by channel: a wrong code
    order inside a word (two codes per 16-bit lane, then a permutation) fails here even where an
    attention output might average it away. Rows past the slots and channels past the rank are 0."""
    slots, block, rank, width, qg = 13, 16, 48, 64, 16
    x = (torch.randn(1, slots, rank, generator=torch.Generator().manual_seed(bits)) * 2).to(dtype)
    packed = quantize(x, LatentQuantConfig(bits=bits, group_size=qg, sym=sym))
    ref = dequantize(packed, qg, torch.float32)[0]
    out = torch.full((block, width), 7.0, dtype=dtype, device=device)
    codes, scale = packed.codes[0].to(device), packed.scale[0].to(device)
    zero = packed.zero[0].to(device) if packed.zero is not None else scale
    _latent_tile_kernel[(1,)](codes, codes.stride(0), scale, scale.stride(0), zero, zero.stride(0), out, slots,
                              rank, BITS=bits, QUANT_GROUP=qg, HAS_ZERO=not sym, BLOCK=block, C=width)
    out = out.float().cpu()
    assert (out[slots:] == 0).all() and (out[:, rank:] == 0).all()
    # Two roundings: the offset (|offset| <= the row's largest magnitude) and the fma (|value|).
    bound = torch.finfo(dtype).eps * (ref.abs() + ref.abs().amax(dim=1, keepdim=True))
    assert ((out[:slots, :rank] - ref).abs() <= bound).all(), (out[:slots, :rank] - ref).abs().max()


@pytest.mark.parametrize("method", ["fold", "rope_qk"])
@pytest.mark.parametrize("bits,rank1", [(16, 17), (4, 17), (4, 16)], ids=["fp", "q-gather", "q-words"])
def test_interpreter_value_column_blocks(device, method, bits, rank1):
    """Value channels split over programs (value_cols): blocks of 16 over ranks 48 and rank1, so one
    group's last blocks start past its rank (all masked: its columns must come out 0); rank 17 also
    leaves a partial block (and quantized, per-element gathers; 16: whole words). The same result as
    one program per group."""
    case = Case(v_ranks=(48, rank1), bits=bits, quant_group_size=16, dtype=torch.float16)
    inputs = make_inputs(case, device)
    ref = latent_decode_attention_ref(**inputs)
    blocks = latent_decode_attention(**inputs, method=method, value_cols=16, block_s=16, num_splits=2)
    whole = latent_decode_attention(**inputs, method=method, value_cols="all", block_s=16, num_splits=2)
    assert rel_error(blocks, ref) < tolerance(case.dtype, device)
    torch.testing.assert_close(blocks, whole, rtol=1e-5, atol=1e-5)
    assert (blocks[:, 2:, rank1:] == 0).all()  # heads of group 1 beyond their rank
    with pytest.raises(ValueError, match="value_cols"):
        latent_decode_attention(**inputs, value_cols=24)


@pytest.mark.parametrize(
    "change",
    [
        dict(theta=5e5),
        dict(llama3=True, theta=5e5),
        dict(rope_scale=1.2),
        dict(bias=True),
        dict(row_pad=8),
        dict(head_dim=48),  # head_dim whose half is no power of two
        dict(bits=4, num_quantized=37),  # no fp part at all
        dict(bits=4, num_quantized=0),  # quantization configured, nothing quantized yet
    ],
    ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()),
)
def test_interpreter_options(device, change):
    check(dataclasses.replace(Case(dtype=torch.float16), **change), device, num_splits=2)


def test_left_padding_is_masked(device):
    """Slots before kv_start must not change the output, whatever they hold."""
    case = Case(dtype=torch.float32, batch=2, num_slots=40)
    inputs = make_inputs(case, device)
    inputs["kv_start"] = torch.tensor([7, 13], dtype=torch.int32, device=device)
    out = latent_decode_attention(**inputs, num_splits=2, block_s=16)
    inputs["k_latent"].fp[0, :7] = 1e4  # garbage in masked slots
    inputs["v_latent"].fp[1, :13] = float("nan")
    out2 = latent_decode_attention(**inputs, num_splits=2, block_s=16)
    torch.testing.assert_close(out, out2, rtol=0, atol=0)


def test_padded_value_columns_are_zero(device):
    case = Case(dtype=torch.float32, v_ranks=(9, 32))
    out = latent_decode_attention(**make_inputs(case, device), num_splits=1, block_s=16)
    heads_per_group = case.num_heads // (case.num_kv_heads // case.group_size)
    assert (out[:, :heads_per_group, 9:] == 0).all()


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("sym", [False, True])
def test_dequantize_ref_matches_palu_quant(bits, sym):
    """The reference reads palu.quant's packed layout exactly as palu.quant.dequantize does."""
    x = torch.randn(2, 5, 45)
    cfg = LatentQuantConfig(bits=bits, group_size=16, sym=sym)
    packed = quantize(x, cfg)
    view = kernels.LatentView(fp=None, codes=packed.codes, scale=packed.scale, zero=packed.zero, bits=bits,
                              quant_group_size=16)
    torch.testing.assert_close(dequantize_latent_ref(view, 45), dequantize(packed, 16, torch.float32))


def test_kernels_package_is_this_repo():
    """`kernels` must be our folder, not the PyPI package of the same name."""
    repo = Path(__file__).resolve().parents[2]
    assert Path(kernels.__file__).resolve().parent == repo / "kernels"


def test_bad_shapes_raise(device):
    inputs = make_inputs(Case(dtype=torch.float32), device)
    inputs["positions"] = inputs["positions"][:, :-1]
    with pytest.raises(AssertionError, match="positions"):
        latent_decode_attention(**inputs)


def test_strided_kv_start_is_refused(device):
    """The kernels read kv_start[b] at offset b: a strided view would give other sequences' starts."""
    inputs = make_inputs(Case(dtype=torch.float32), device)
    inputs["kv_start"] = torch.stack([inputs["kv_start"], inputs["kv_start"]], dim=1)[:, 0]
    assert not inputs["kv_start"].is_contiguous()
    with pytest.raises(AssertionError, match="contiguous"):
        latent_decode_attention(**inputs)


# ---------------------------------------------------------------------------------------------
# GPU: the full parametrization, compiled.
# ---------------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("n_rep", [1, 4, 8])
@pytest.mark.parametrize("group_size", [1, 2, 4])
def test_gpu_shapes(dtype, head_dim, n_rep, group_size):
    num_kv = 4
    groups = num_kv // group_size
    base = Case(
        num_heads=num_kv * n_rep, num_kv_heads=num_kv, head_dim=head_dim, group_size=group_size,
        k_ranks=(24, 40, 17, 64)[:groups], v_ranks=(40, 17, 24, 128)[:groups], batch=3, dtype=dtype,
    )
    for num_slots in (1, 37, 300, 2049):
        check(dataclasses.replace(base, num_slots=num_slots), torch.device("cuda"))
        if n_rep == 1:  # the auto path above was "fold": the reconstruction kernel too
            check(dataclasses.replace(base, num_slots=num_slots), torch.device("cuda"), method="rope_qk")


@pytest.mark.gpu
@pytest.mark.parametrize(
    "dtype,head_dim,group_size,fold_heads,bits",
    [(dt, hd, gs, hp, 16) for dt in (torch.float16, torch.bfloat16) for hd in (64, 128)
     for gs, hp in ((1, None), (4, None), (4, 2))]
    + [(torch.float16, 128, gs, hp, bits) for bits in (4, 3) for gs, hp in ((2, None), (4, 1))],
    ids=lambda v: str(v).replace("torch.", ""),
)
def test_gpu_single_pass(dtype, head_dim, group_size, fold_heads, bits):
    """The Triton single-pass kernel (method="single_pass", warp_specialized=False) at its default block and at
    64 slots per block."""
    groups = 4 // group_size
    base = Case(num_heads=4, num_kv_heads=4, head_dim=head_dim, group_size=group_size,
                k_ranks=(24, 40, 17, 64)[:groups] if bits != 4 else (64, 32, 96, 32)[:groups],
                v_ranks=(40, 17, 24, 128)[:groups] if bits != 4 else (128, 32, 64, 96)[:groups],
                batch=3, bits=bits, dtype=dtype)
    for num_slots in (1, 37, 300, 2049):
        case = dataclasses.replace(base, num_slots=num_slots, num_quantized=num_slots * 3 // 4 if bits < 16 else None)
        for block_s in (None, 64):
            check(case, torch.device("cuda"), method="single_pass", fold_heads=fold_heads, block_s=block_s,
                  warp_specialized=False)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("sym", [False, True], ids=["asym", "sym"])
@pytest.mark.parametrize("aligned", [False, True], ids=["gather", "words"])
def test_gpu_quantized(dtype, bits, sym, aligned):
    ranks = dict(k_ranks=(128, 64), v_ranks=(96, 160)) if aligned else dict(k_ranks=(72, 56), v_ranks=(100, 57))
    case = Case(num_heads=16, num_kv_heads=4, head_dim=128, group_size=2, num_slots=1000, num_quantized=936,
                bits=bits, sym=sym, dtype=dtype, batch=2, **ranks)
    check(case, torch.device("cuda"))


@pytest.mark.gpu
@pytest.mark.parametrize(
    "change",
    [
        dict(theta=5e5), dict(theta=5e5, llama3=True), dict(bias=True), dict(rope_scale=1.3), dict(row_pad=24),
        dict(head_dim=96), dict(num_slots=5000, theta=5e5), dict(bits=4, num_quantized=700, bias=True),
    ],
    ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()),
)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_gpu_options(dtype, change):
    base = Case(num_heads=32, num_kv_heads=8, head_dim=128, group_size=4, k_ranks=(100, 156), v_ranks=(200, 56),
                num_slots=700, dtype=dtype, batch=2)
    check(dataclasses.replace(base, **change), torch.device("cuda"))


@pytest.mark.gpu
def test_gpu_autotuned_benchmark_shape():
    """The benchmark's shape (MHA, 8 groups of 4 heads, ranks 128/384) through the autotuner."""
    case = Case(num_heads=32, num_kv_heads=32, head_dim=128, group_size=4, k_ranks=(128,) * 8,
                v_ranks=(384,) * 8, num_slots=3000, batch=2, dtype=torch.float16)
    check(case, torch.device("cuda"), autotune=True)
    check(dataclasses.replace(case, bits=4, num_quantized=2900), torch.device("cuda"), autotune=True)
