import random

import pytest
import torch

from palu import RankSearchConfig, allocate_ranks, search_ranks
from palu.adapters import AttentionShape


def test_allocate_exact_sum_and_bounds_property():
    rng = random.Random(0)
    for _ in range(500):
        n = rng.randint(1, 30)
        caps = [rng.randint(1, 12) for _ in range(n)]
        scores = [rng.choice([0.0, rng.random(), rng.random() * 1e6]) for _ in range(n)]
        total = rng.randint(0, sum(caps) + 5)
        out = allocate_ranks(scores, total, caps)
        assert sum(out) == max(n, min(total, sum(caps)))
        assert all(1 <= o <= c for o, c in zip(out, caps))


def test_allocate_is_monotone_in_score():
    out = allocate_ranks([1.0, 2.0, 4.0, 8.0], 30, [20] * 4)
    assert out == sorted(out) and sum(out) == 30


SHAPE = AttentionShape(num_heads=8, num_kv_heads=4, head_dim=64, hidden_size=512, num_layers=3)


def _fisher(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {(layer, p): torch.rand(4 * 64, generator=g, dtype=torch.float64) * (layer + 1)
            for layer in range(3) for p in "kv"}


@pytest.mark.parametrize("method", ["uniform", "fisher", "fisher_uniform"])
@pytest.mark.parametrize("group_size", [1, 2, 4])
@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.9, 1.0])
def test_search_hits_budget_with_granularity(method, group_size, ratio):
    cfg = RankSearchConfig(method, ratio, 32)
    alloc = search_ranks(SHAPE, group_size, cfg, _fisher())
    n_groups = 4 // group_size
    all_ranks = [r for kv in alloc.ranks.values() for p in "kv" for r in kv[p]]
    assert len(all_ranks) == 3 * 2 * n_groups
    assert all(r % 32 == 0 and 32 <= r <= group_size * 64 for r in all_ranks)
    granule = 32 * (n_groups if method == "fisher_uniform" else 1)
    assert alloc.kept_dims == sum(all_ranks)
    n_units = len(all_ranks) // (n_groups if method == "fisher_uniform" else 1)
    max_units = n_units * (group_size * 64 * (n_groups if method == "fisher_uniform" else 1)) // granule
    expected = min(max(round(ratio * alloc.full_dims / granule), n_units), max_units) * granule
    assert alloc.kept_dims == expected  # the budget exactly, clamped to one granule minimum per unit
    if method == "fisher_uniform":
        assert all(len(set(kv[p])) == 1 for kv in alloc.ranks.values() for p in "kv")
    if method == "uniform":
        assert max(all_ranks) - min(all_ranks) <= 32


def test_fisher_gives_more_rank_to_important_layers():
    alloc = search_ranks(SHAPE, 1, RankSearchConfig("fisher_uniform", 0.5, 32), _fisher())
    totals = [sum(alloc.ranks[str(i)]["k"]) + sum(alloc.ranks[str(i)]["v"]) for i in range(3)]
    assert totals[2] >= totals[0]


def test_rank_multiple_never_above_group_dims():
    tiny = AttentionShape(num_heads=4, num_kv_heads=2, head_dim=16, hidden_size=64, num_layers=2)
    alloc = search_ranks(tiny, 1, RankSearchConfig("uniform", 0.5, 32))
    assert alloc.granularity == 16
    assert all(r == 16 or r == 0 or r % 16 == 0 for kv in alloc.ranks.values() for p in "kv" for r in kv[p])


def test_fisher_methods_need_scores():
    with pytest.raises(ValueError, match="Fisher"):
        search_ranks(SHAPE, 1, RankSearchConfig("fisher", 0.5, 32), None)
