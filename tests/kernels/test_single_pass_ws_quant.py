"""The quantized Gluon single-pass kernel (kernels/single_pass_ws_quant.py): its scope, shared memory and heads
per program, its host wiring (CPU, torch stand-ins for both Gluon kernels: a quantized cache with and without a
full-precision window), and its results on the GPU against the torch reference."""
from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch

from kernels import latent_decode_attention
from kernels.latent_attention import LatentView
from kernels.reference import dequantize_latent_ref, latent_decode_attention_ref
from tests.kernels.latent_cases import Case, make_inputs, rel_error, tolerance
from tests.kernels.test_latent_attention import check
from tests.kernels.test_single_pass_ws import LLAMA, _TorchStandIn, hopper

spq = pytest.importorskip("kernels.single_pass_ws_quant")
sp = pytest.importorskip("kernels.single_pass_ws")

LLAMA_4BIT = dataclasses.replace(LLAMA, bits=4, num_quantized=3000)
# A small shape inside the scope: 16-byte word and scale rows need 8 quant groups per slot
SMALL = Case(num_heads=8, num_kv_heads=8, head_dim=64, group_size=2, k_ranks=(64,) * 4, v_ranks=(128,) * 4,
             num_slots=300, batch=2, dtype=torch.float16, bits=4)


def test_shared_memory_and_heads_per_program(monkeypatch):
    # Llama-2-7B at 50%, 4 bits, keys unpacked by the consumers (SPQ_REG_KEYS): four heads' rows (128 KB), the
    # fp16 value ring (64 KB), P and the warps' maxima, two key word stages (4 KB of words + 2 x 1 KB of scales
    # and zeros) and one value word stage (12 + 2 x 2 KB): one program per group
    assert spq.spq_reg_keys(4) and spq.spq_reg_keys(2) and not spq.spq_reg_keys(8)
    assert spq.spq_shared_bytes(4, 128, 128, 384, 2, 4, 32, True) == 227720
    assert spq.spq_fold_heads(4, 128, 128, 384, 2, 4, 32, True) == 4
    # 2-bit words take half the room
    assert spq.spq_shared_bytes(4, 128, 128, 384, 2, 2, 32, True) < 227720
    assert spq.spq_fold_heads(4, 128, 128, 384, 2, 2, 32, True) == 4
    # keys unpacked by the dequant warps: two heads' rows (64 KB), the fp16 rings (32 + 64 KB), P, three key
    # word stages and two value word stages; four heads do not fit
    monkeypatch.setattr(spq, "SPQ_REG_KEYS", False)
    assert spq.spq_shared_bytes(2, 128, 128, 384, 2, 4, 32, True) == 217544
    assert spq.spq_shared_bytes(4, 128, 128, 384, 2, 4, 32, True) > sp.SP_SMEM_LIMIT
    assert spq.spq_fold_heads(4, 128, 128, 384, 2, 4, 32, True) == 2
    # symmetric codes carry no zero-points: less shared memory, the same heads here
    assert spq.spq_shared_bytes(2, 128, 128, 384, 2, 4, 32, False) < 217544
    assert spq.spq_fold_heads(4, 128, 128, 384, 2, 4, 32, True, requested=1) == 1
    with pytest.raises(ValueError, match="fold_heads=4"):
        spq.spq_fold_heads(4, 128, 128, 384, 2, 4, 32, True, requested=4)


def test_8bit_wide_keys_do_not_fit():
    """Three stages of 8-bit words of a 256-channel key tile (48 KB) and the fp16 rings exceed 227 KB even for
    one head per program: refused by name (the Triton kernels serve it)."""
    with pytest.raises(ValueError, match="no program"):
        spq.spq_fold_heads(2, 128, 256, 192, 2, 8, 32, True)


def test_register_split_per_code_width(monkeypatch):
    """setmaxnreg's split of the launch's 4 x 128 registers per thread: 2-bit codes give the dequant warps more
    (they unpack twice the codes per word), every width fits, and a split over the budget is refused by name."""
    splits = {bits: spq.spq_registers(bits) for bits in spq.SPQ_BITS}
    assert splits[2][1] > splits[4][1] and splits[4] == splits[8]
    for consumer, dequant, producer in splits.values():
        assert 2 * consumer + dequant + producer <= 4 * spq.SPQ_MAXNREG
    monkeypatch.setattr(spq, "SPQ_2BIT_DEQUANT_REGS", 64)
    with pytest.raises(ValueError, match="at most 512"):
        spq.spq_registers(2)
    assert spq.spq_registers(4) == splits[4]


def _reason(case: Case, n_rep: int = 1, block_s=None) -> str:
    p = make_inputs(case, torch.device("cpu"))
    return spq.single_pass_ws_quant_unsupported(p["q"], p["k_latent"], p["v_latent"], list(case.k_ranks),
                                                list(case.v_ranks), n_rep, case.bias, block_s)


@pytest.mark.parametrize("change,reason", [
    (dict(bits=16), "quantized latents"),
    (dict(bits=3), "2/4/8-bit"),
    (dict(bits=8, dtype=torch.bfloat16), "2/4/8-bit"),
    (dict(quant_group_size=4), "quant group"),  # less than one 8-code word
    (dict(quant_group_size=256), "quant group"),  # larger than the key rank
    (dict(k_ranks=(64, 64, 64, 32)), "same key rank"),
    (dict(v_ranks=(128, 128, 128, 64)), "same value rank"),
    (dict(k_ranks=(16,) * 4, quant_group_size=16), "TMA needs >= 16"),  # 16 channels: 8 bytes of 4-bit words
    (dict(k_ranks=(32,) * 4), "k_latent.scale needs 16-byte aligned rows"),  # 4 scales per slot: 8 bytes
    (dict(bias=True), "key-bias"),
    (dict(dtype=torch.float32), "fp16/bf16"),
    (dict(num_quantized=290, row_pad=3), "full-precision window"),  # its rows: 6-byte strides
])
def test_unsupported_calls_are_named(change, reason):
    assert reason in _reason(dataclasses.replace(SMALL, **change))


def test_inside_the_scope_only_the_gpu_is_missing():
    for change in (dict(), dict(num_quantized=300), dict(sym=True), dict(bits=2), dict(bits=8),
                   dict(dtype=torch.bfloat16), dict(quant_group_size=64, k_ranks=(128,) * 4),
                   dict(bits=2, dtype=torch.bfloat16)):
        assert "sm_90" in _reason(dataclasses.replace(SMALL, **change)), change
    assert "n_rep" in _reason(SMALL, n_rep=2)
    assert "block_s=32" in _reason(SMALL, block_s=32)


class _QuantStandIn:
    """What _ws_single_pass_quant_kernel computes, in torch: the fp16 kernel's partials (its stand-in) over
    latents dequantized from the descriptors' tensors."""

    def __init__(self):
        self.pairs = []  # PAIRS of each launch

    def __getitem__(self, grid):
        fp_run = _TorchStandIn()[grid]

        def run(kw_desc, ks_desc, kz_desc, vw_desc, vs_desc, vz_desc, rows_desc, *rest, BITS, QG, HAS_ZERO,
                PAIRS=False, **kw):
            assert kw_desc.block_shape[2] * (32 // BITS) == rest[9]  # rank
            self.pairs.append(PAIRS)
            k, v = (dequantize_latent_ref(LatentView(fp=None, codes=w.base, scale=sc.base, zero=z.base if HAS_ZERO
                                                     else None, bits=BITS, quant_group_size=QG),
                                          w.base.shape[2] * (32 // BITS))
                    for w, sc, z in ((kw_desc, ks_desc, kz_desc), (vw_desc, vs_desc, vz_desc)))
            if PAIRS:  # the kernel's keys and value boxes in nibble-pair order (the rows come in it)
                k, v = (x[..., spq._pair_columns(x.shape[-1], x.device)] for x in (k, v))
            # k, v again: the fp16 kernel's L2 prefetch pointers
            fp_run(SimpleNamespace(base=k), SimpleNamespace(base=v), rows_desc, *rest, k, v, **kw)
            if PAIRS:  # each accumulator row stored to the channel it holds
                part_acc = rest[6]
                part_acc[..., spq._pair_columns(part_acc.shape[-1], part_acc.device)] = part_acc.clone()
        return run


@pytest.mark.parametrize("change", [dict(num_quantized=300), dict(), dict(sym=True, num_quantized=300),
                                    dict(num_quantized=100, num_slots=230)],
                         ids=["all_quantized", "window_5", "symmetric", "window_130"])
def test_host_wiring_with_torch_stand_ins(device, monkeypatch, change):
    """_single_pass_decode_ws on a quantized cache (descriptors, heads per program, the window's own launch with
    shifted positions and kv_start, the merge of both) against the reference, the Gluon kernels replaced."""
    if device.type != "cpu":
        pytest.skip("the stand-ins replace the kernels on CPU tensors only")
    import kernels.latent_attention as la

    monkeypatch.setattr(spq, "_ws_single_pass_quant_kernel", _QuantStandIn())
    monkeypatch.setattr(sp, "_ws_single_pass_kernel", _TorchStandIn())
    case = dataclasses.replace(SMALL, **change)
    p = make_inputs(case, device)
    out = la._single_pass_decode_ws(p["q"], p["k_latent"], p["v_latent"], p["k_up"], p["k_offsets"], p["positions"],
                                    p["kv_start"], p["inv_freq"], p["rope_scale"], p["sm_scale"], 2, 64, 128, 4,
                                    None, None, torch.float32)
    assert rel_error(out, latent_decode_attention_ref(**p)) < tolerance(case.dtype, device)


@pytest.mark.parametrize("change", [dict(num_quantized=300), dict(num_quantized=100, num_slots=230)],
                         ids=["all_quantized", "window_130"])
def test_host_wiring_nibble_pairs(device, monkeypatch, change):
    """SPQ_NIBBLE_PAIRS through _single_pass_decode_ws with the kernels' stand-ins: the launch asks for nibble
    pairs; the rows come in that order from _fold_rows_kernel (PAIR_COLS, no full-precision window) or from the
    gather (a window, whose fp16 launch keeps the channel order); keys, values and stored accumulators as the
    kernel orders them give the reference."""
    if device.type != "cpu":
        pytest.skip("the stand-ins replace the kernels on CPU tensors only")
    import kernels.latent_attention as la

    quant = _QuantStandIn()
    monkeypatch.setattr(spq, "_ws_single_pass_quant_kernel", quant)
    monkeypatch.setattr(sp, "_ws_single_pass_kernel", _TorchStandIn())
    monkeypatch.setattr(spq, "SPQ_NIBBLE_PAIRS", True)
    gathers = []
    real_columns = spq._pair_columns
    monkeypatch.setattr(spq, "_pair_columns", lambda n, dev: gathers.append(n) or real_columns(n, dev))
    case = dataclasses.replace(SMALL, **change)
    p = make_inputs(case, device)
    out = la._single_pass_decode_ws(p["q"], p["k_latent"], p["v_latent"], p["k_up"], p["k_offsets"], p["positions"],
                                    p["kv_start"], p["inv_freq"], p["rope_scale"], p["sm_scale"], 2, 64, 128, 4,
                                    None, None, torch.float32)
    assert quant.pairs == [True]
    window = case.num_slots > case.num_quantized
    assert (64 in gathers) == window  # the rows gathered on the host only beside a window
    assert rel_error(out, latent_decode_attention_ref(**p)) < tolerance(case.dtype, device)


def test_forcing_it_on_an_unsupported_quantized_call_is_an_error(device):
    inputs = make_inputs(dataclasses.replace(SMALL, bits=3), device)
    with pytest.raises(ValueError, match="2/4/8-bit" if device.type == "cuda" else "sm_90"):
        latent_decode_attention(**inputs, method="single_pass", warp_specialized=True)


# ---------------------------------------------------------------------------------------------
# GPU (sm_90): the kernel against the torch reference.
# ---------------------------------------------------------------------------------------------

@pytest.mark.gpu
@hopper
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("bits,sym,quant_group", [(4, False, 32), (2, False, 32), (4, True, 64), (8, False, 32)],
                         ids=["4bit", "2bit", "4bit_sym_g64", "8bit"])
@pytest.mark.parametrize("head_dim,group_size,rank,rank_v", [(128, 4, 128, 384), (64, 2, 64, 128),
                                                            (128, 2, 256, 192), (64, 8, 64, 512)])
def test_gpu_single_pass_ws_quant(dtype, bits, sym, quant_group, head_dim, group_size, rank, rank_v):
    if dtype == torch.bfloat16 and bits == 8:
        pytest.skip("bf16 holds codes of up to 4 bits exactly (outside the scope)")
    if bits == 8 and rank == 256:
        pytest.skip("8-bit words of 256 key channels leave no room for a program (test_8bit_wide_keys_do_not_fit)")
    groups = 8 // group_size
    while (groups * rank // quant_group) % 8 or (groups * rank_v // quant_group) % 8:  # 16-byte scale rows
        groups += 8 // group_size
    heads = groups * group_size
    base = Case(num_heads=heads, num_kv_heads=heads, head_dim=head_dim, group_size=group_size,
                k_ranks=(rank,) * groups, v_ranks=(rank_v,) * groups, batch=3, dtype=dtype, bits=bits, sym=sym,
                quant_group_size=quant_group)
    for num_slots in (1, 37, 64, 2049, 5000):
        for num_quantized in (num_slots, max(num_slots - 5, 0)):
            if num_quantized == 0:
                continue
            check(dataclasses.replace(base, num_slots=num_slots, num_quantized=num_quantized),
                  torch.device("cuda"), method="single_pass", warp_specialized=True)


@pytest.mark.gpu
@hopper
@pytest.mark.parametrize("change", [
    dict(theta=5e5), dict(theta=5e5, llama3=True), dict(rope_scale=1.3), dict(left_pad=False),
    dict(num_slots=70000, num_quantized=70000, batch=1), dict(num_quantized=2800),
], ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_gpu_single_pass_ws_quant_options(change):
    check(dataclasses.replace(LLAMA_4BIT, **change), torch.device("cuda"), method="single_pass",
          warp_specialized=True)


@pytest.mark.gpu
@hopper
@pytest.mark.parametrize("launch", [dict(fold_heads=1), dict(num_splits=3), dict(num_splits=64)],
                         ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_gpu_single_pass_ws_quant_launches(launch):
    for num_slots in (37, 4099):
        check(dataclasses.replace(LLAMA_4BIT, num_slots=num_slots, num_quantized=num_slots), torch.device("cuda"),
              method="single_pass", warp_specialized=True, **launch)


@pytest.mark.gpu
@hopper
def test_gpu_auto_follows_spq_auto(monkeypatch):
    """method="auto" takes the kernel on quantized latents exactly when SPQ_AUTO is set (same output bit for bit
    as forcing it), the Triton kernels otherwise (which agree within the tolerance)."""
    inputs = make_inputs(dataclasses.replace(LLAMA_4BIT, num_slots=4099, num_quantized=4099), torch.device("cuda"))
    forced = latent_decode_attention(**inputs, method="single_pass", warp_specialized=True)
    monkeypatch.setattr(spq, "SPQ_AUTO", True)
    assert torch.equal(latent_decode_attention(**inputs), forced)
    monkeypatch.setattr(spq, "SPQ_AUTO", False)
    triton_path = latent_decode_attention(**inputs)
    assert not torch.equal(triton_path, forced)
    assert rel_error(triton_path, forced) < tolerance(torch.float16, torch.device("cuda"))


def test_nibble_pairs_apply_to_4bit_fp16_register_keys_only(monkeypatch):
    """SPQ_NIBBLE_PAIRS takes 4-bit fp16 codes that the consumers unpack; 2/8 bits, bf16 and the dequant-warp
    keys keep the channel-order unpacking (their magic numbers and masks differ)."""
    monkeypatch.setattr(spq, "SPQ_NIBBLE_PAIRS", True)
    assert spq.spq_nibble_pairs(4, torch.float16)
    assert not spq.spq_nibble_pairs(2, torch.float16) and not spq.spq_nibble_pairs(8, torch.float16)
    assert not spq.spq_nibble_pairs(4, torch.bfloat16)
    monkeypatch.setattr(spq, "SPQ_REG_KEYS", False)
    assert not spq.spq_nibble_pairs(4, torch.float16)
    monkeypatch.setattr(spq, "SPQ_REG_KEYS", True)
    monkeypatch.setattr(spq, "SPQ_NIBBLE_PAIRS", False)
    assert not spq.spq_nibble_pairs(4, torch.float16)


@pytest.mark.gpu
@hopper
@pytest.mark.parametrize("case", [
    dict(), dict(sym=True, quant_group_size=64), dict(num_quantized=2800), dict(theta=5e5, llama3=True),
    dict(num_slots=37, num_quantized=37), dict(batch=2, num_slots=70000, num_quantized=70000),
], ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "llama")
def test_gpu_nibble_pairs(monkeypatch, case):
    """The nibble-pair unpacking (SPQ_NIBBLE_PAIRS: keys and value boxes in nibble-pair order, rows permuted,
    accumulators stored to their channels) against the torch reference, and against the channel-order kernel
    (a different summation order of the score wgmmas' K: close, not equal)."""
    c = dataclasses.replace(LLAMA_4BIT, **case)
    monkeypatch.setattr(spq, "SPQ_NIBBLE_PAIRS", True)
    check(c, torch.device("cuda"), method="single_pass", warp_specialized=True)
    inputs = make_inputs(c, torch.device("cuda"))
    pairs = latent_decode_attention(**inputs, method="single_pass", warp_specialized=True)
    monkeypatch.setattr(spq, "SPQ_NIBBLE_PAIRS", False)
    plain = latent_decode_attention(**inputs, method="single_pass", warp_specialized=True)
    assert rel_error(pairs, plain) < tolerance(torch.float16, torch.device("cuda"))
