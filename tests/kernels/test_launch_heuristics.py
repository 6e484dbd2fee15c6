"""Host-side launch choices of the latent decode kernels: split/program sizes and autotune pruning."""
from __future__ import annotations

import pytest
import triton

from kernels._autotune import prune_reconstruction_configs, reconstruction_configs
from kernels.latent_attention import (
    MAX_RECON_SLOTS, MAX_SPLITS, MIN_SPLIT_LEN, RECON_UNIT, WAVE_EFFICIENCY, choose_num_splits,
    choose_slots_per_program,
)


@pytest.mark.parametrize("num_slots", [1, 100, 4096, 65536, 262144])
@pytest.mark.parametrize("programs_per_range", [4, 32, 256])
def test_slots_per_program_covers_the_cache_in_whole_units(num_slots, programs_per_range):
    per = choose_slots_per_program(num_slots, programs_per_range, num_sms=132, block_s=None)
    assert per % RECON_UNIT == 0 and RECON_UNIT <= per <= MAX_RECON_SLOTS
    programs = programs_per_range * triton.cdiv(num_slots, per)
    if per < MAX_RECON_SLOTS and num_slots > RECON_UNIT:
        # Not capped: no more than about four programs per SM are launched.
        assert programs <= 4 * 132 + programs_per_range


def test_slots_per_program_amortizes_the_up_projection_at_long_context():
    # 64K slots, 7B shape (4 heads x 8 groups, batch 1): each program loops over many blocks.
    assert choose_slots_per_program(65536, 32, 132, None) == 4096
    assert choose_slots_per_program(65536, 32, 132, 16) == 32  # fixed block: two blocks per program


def test_reconstruction_pruning_respects_shared_memory_and_loop_length():
    configs = reconstruction_configs()
    args = dict(RK_PAD=128, HALF_PAD=64, slots_per_program=4096)
    kept = prune_reconstruction_configs(configs, args)
    assert kept and all(c.kwargs["BLOCK_S"] in (64, 128) for c in kept)
    assert len(kept) == len(configs)  # rank 128: 3 stages of 128-slot tiles + resident halves fit (162 KB)
    wide = prune_reconstruction_configs(configs, dict(args, RK_PAD=256))
    assert {(c.kwargs["BLOCK_S"], c.num_stages) for c in wide} == {(64, 1), (64, 3), (128, 1)}  # 128 x 3 stages: 292 KB
    short = prune_reconstruction_configs(configs, dict(args, slots_per_program=128))
    assert all(c.num_stages == 1 for c in short)  # a one- or two-block loop has nothing to pipeline


def _fewest_filling_splits(num_slots: int, units: int, num_sms: int, per_sm: int) -> int:
    """choose_num_splits' definition, by trying every split count."""
    most = max(1, min(-(-num_slots // MIN_SPLIT_LEN), MAX_SPLITS))
    cap = num_sms * per_sm
    fill = lambda n: units * n / (cap * -(-units * n // cap))  # noqa: E731
    filling = [n for n in range(1, most + 1) if fill(n) >= WAVE_EFFICIENCY]
    return filling[0] if filling else max(range(1, most + 1), key=lambda n: (fill(n), -n))


@pytest.mark.parametrize("num_slots", [1, 129, 4096, 65536, 10**6])
@pytest.mark.parametrize("num_sms,per_sm", [(4, 2), (132, 2), (132, 4), (108, 1)])
def test_num_splits_is_the_fewest_that_fill_whole_waves(num_slots, num_sms, per_sm):
    """The range walk gives what trying every split count gives, for batch-group counts below,
    around and above one wave; and at the benchmark shape the counts the notes measured."""
    for units in [*range(1, 70), 96, 192, 255, 300, 513, 1024, 4096]:
        assert choose_num_splits(num_slots, units, num_sms, per_sm) == _fewest_filling_splits(
            num_slots, units, num_sms, per_sm), units
    if (num_slots, num_sms, per_sm) == (65536, 132, 2):
        assert choose_num_splits(num_slots, 8, 132, 2) == 32  # B=1: 256 of 264 programs
        assert choose_num_splits(num_slots, 64, 132, 2) == 4  # B=8: 256, where 5 splits made 1.2 waves


def test_single_pass_heads_take_the_whole_group_when_it_fits():
    from kernels.latent_attention import SINGLE_PASS_SMEM_BUDGET, choose_single_pass_heads, single_pass_shared_bytes

    # Llama-2-7B benchmark shape: 4 heads per group, D/2 = 64, rank 128 keys, 384 value columns (256 + 128), fp16.
    # All four heads: 128 KB of folded rows + 2 stages x 32 slots x (128 + 384) x 2 B = 192 KB.
    assert single_pass_shared_bytes(4, 64, 128, 384, 2, 32, 2) == 192 * 1024
    assert choose_single_pass_heads(4, 64, 128, 384, 2, 32, 2) == 4
    # fp32 doubles every byte: only a divisor of the group whose program still fits.
    heads = choose_single_pass_heads(4, 64, 128, 384, 4, 32, 2)
    assert heads in (1, 2) and single_pass_shared_bytes(heads, 64, 128, 384, 4, 32, 2) <= SINGLE_PASS_SMEM_BUDGET
    # A third stage no longer fits all four heads (224 KB).
    assert choose_single_pass_heads(4, 64, 128, 384, 2, 32, 3) == 2
    with pytest.raises(ValueError, match="single-pass"):
        choose_single_pass_heads(1, 128, 1024, 4096, 4, 32, 2)
