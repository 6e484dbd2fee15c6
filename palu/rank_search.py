"""Rank allocation over all K and V projections against one global budget (paper Sec. 3.3).

Units are (layer, "k"|"v", group). The budget is ``param_ratio_target`` of all K+V
output dims, rounded to whole multiples of ``rank_multiple``. Strategies are registered
by name in :data:`SEARCH_METHODS`; all of them share :func:`allocate_ranks`, which
works in integers and hits the budget exactly.
"""
from __future__ import annotations

import dataclasses
import heapq
import logging
from typing import Callable, Optional, Sequence

import torch

from .adapters import AttentionShape
from .config import RankSearchConfig

logger = logging.getLogger(__name__)

RankDict = dict[str, dict[str, list[int]]]


@dataclasses.dataclass(frozen=True)
class RankAllocation:
    """Ranks per layer and group, with the budget they actually use."""

    ranks: RankDict
    kept_dims: int
    full_dims: int
    granularity: int

    @property
    def param_ratio(self) -> float:
        """Fraction of K+V output dims (= cached elements per token) kept."""
        return self.kept_dims / self.full_dims

    def to_dict(self) -> dict:
        return {
            "ranks": self.ranks,
            "kept_dims": self.kept_dims,
            "full_dims": self.full_dims,
            "param_ratio": self.param_ratio,
            "granularity": self.granularity,
        }


def allocate_ranks(scores: Sequence[float], total_units: int, max_units: Sequence[int]) -> list[int]:
    """Split ``total_units`` integer units over items in proportion to ``scores``.

    Every item gets at least 1 and at most ``max_units[i]``; the result sums to
    ``total_units`` exactly (clamped to [len, Σ max]). Above the minimum, units are
    shared in proportion to scores; items whose share exceeds their cap are pinned and
    the rest re-split (water-filling); leftover units go by largest fractional part.
    """
    n = len(scores)
    if n == 0 or len(max_units) != n:
        raise ValueError("scores and max_units must be non-empty and of equal length")
    if any(m < 1 for m in max_units):
        raise ValueError("every item must allow at least one unit")
    total = max(n, min(int(total_units), int(sum(max_units))))
    weights = [max(float(s), 0.0) for s in scores]
    if sum(weights) <= 0:
        weights = [1.0] * n
    # Everyone's minimum of 1 is reserved first; the rest is water-filled under the caps,
    # so no lower bound can push the sum over the budget.
    extra_caps = [m - 1 for m in max_units]
    budget = total - n
    fixed: dict[int, int] = {}
    share: dict[int, float] = {}
    while True:
        free = [i for i in range(n) if i not in fixed]
        if not free:
            break
        remaining = budget - sum(fixed.values())
        wsum = sum(weights[i] for i in free)
        share = {i: remaining * (weights[i] / wsum if wsum > 0 else 1.0 / len(free)) for i in free}
        high = [i for i in free if share[i] > extra_caps[i]]
        if not high:
            break
        fixed.update({i: extra_caps[i] for i in high})
    extra = [fixed[i] if i in fixed else int(share[i]) for i in range(n)]
    leftover = budget - sum(extra)
    order = sorted(range(n), key=lambda i: (share.get(i, 0.0) - extra[i], weights[i]), reverse=True)
    while leftover > 0:
        for i in order:
            if leftover and extra[i] < extra_caps[i]:
                extra[i] += 1
                leftover -= 1
    return [1 + e for e in extra]


@dataclasses.dataclass(frozen=True)
class _Units:
    shape: AttentionShape
    head_group_size: int

    @property
    def num_groups(self) -> int:
        return self.shape.num_kv_heads // self.head_group_size

    @property
    def group_dims(self) -> int:
        """Largest useful rank of a group: min(gs·D, d_model)."""
        return min(self.head_group_size * self.shape.head_dim, self.shape.hidden_size)

    @property
    def full_dims(self) -> int:
        return 2 * self.shape.num_layers * self.shape.kv_dim


Scores = dict[tuple[int, str], torch.Tensor]  # (layer, "k"|"v") -> per-output-row Fisher
Spectra = dict[tuple[int, str, int], torch.Tensor]  # (layer, "k"|"v", group) -> descending σ² of the group
SearchFn = Callable[[_Units, RankSearchConfig, Optional[Scores], Optional[Spectra]], tuple[RankDict, int]]
SEARCH_METHODS: dict[str, SearchFn] = {}


def register_search(name: str) -> Callable[[SearchFn], SearchFn]:
    def wrap(fn: SearchFn) -> SearchFn:
        SEARCH_METHODS[name] = fn
        return fn

    return wrap


def _granularity(units: _Units, cfg: RankSearchConfig) -> int:
    # Never above a group's dims: a tiny head_dim caps the multiple.
    return max(1, min(cfg.rank_multiple, units.group_dims))


def _group_scores(units: _Units, fisher: Optional[Scores]) -> list[tuple[int, str, int, float]]:
    """(layer, proj, group, score) for every unit, in layer/proj/group order."""
    rows = units.head_group_size * units.shape.head_dim
    out = []
    for layer in range(units.shape.num_layers):
        for proj in ("k", "v"):
            for g in range(units.num_groups):
                score = 1.0 if fisher is None else float(fisher[(layer, proj)][g * rows : (g + 1) * rows].sum())
                out.append((layer, proj, g, score))
    return out


def _to_rank_dict(units: _Units, items: list[tuple[int, str, int, float]], ranks: list[int]) -> RankDict:
    out: RankDict = {str(layer): {"k": [0] * units.num_groups, "v": [0] * units.num_groups} for layer in range(units.shape.num_layers)}
    for (layer, proj, g, _), r in zip(items, ranks):
        out[str(layer)][proj][g] = r
    return out


def _per_group(units: _Units, cfg: RankSearchConfig, fisher: Optional[Scores]) -> tuple[RankDict, int]:
    gran = _granularity(units, cfg)
    items = _group_scores(units, fisher)
    total = round(cfg.param_ratio_target * units.full_dims / gran)
    counts = allocate_ranks([s for *_, s in items], total, [units.group_dims // gran] * len(items))
    return _to_rank_dict(units, items, [c * gran for c in counts]), gran


@register_search("uniform")
def uniform_search(units: _Units, cfg: RankSearchConfig, fisher: Optional[Scores], spectra=None) -> tuple[RankDict, int]:
    """Same rank everywhere (differences of at most one granule to hit the budget exactly)."""
    return _per_group(units, cfg, None)


@register_search("fisher")
def fisher_search(units: _Units, cfg: RankSearchConfig, fisher: Optional[Scores], spectra=None) -> tuple[RankDict, int]:
    """Each group's rank ∝ its Fisher information (sum of squared gradients of its weights)."""
    if fisher is None:
        raise ValueError("search method 'fisher' needs Fisher scores")
    return _per_group(units, cfg, fisher)


@register_search("fisher_uniform")
def fisher_uniform_search(
    units: _Units, cfg: RankSearchConfig, fisher: Optional[Scores], spectra=None
) -> tuple[RankDict, int]:
    """Each projection's budget ∝ its Fisher information, split equally among its groups."""
    if fisher is None:
        raise ValueError("search method 'fisher_uniform' needs Fisher scores")
    gran = _granularity(units, cfg)
    g = units.num_groups
    keys = [(layer, proj) for layer in range(units.shape.num_layers) for proj in ("k", "v")]
    scores = [float(fisher[key].sum()) for key in keys]
    total = round(cfg.param_ratio_target * units.full_dims / (gran * g))
    counts = allocate_ranks(scores, total, [units.group_dims // gran] * len(keys))
    out: RankDict = {str(layer): {"k": [], "v": []} for layer in range(units.shape.num_layers)}
    for (layer, proj), c in zip(keys, counts):
        out[str(layer)][proj] = [c * gran] * g
    return out, gran


@register_search("sensitivity")
def sensitivity_search(
    units: _Units, cfg: RankSearchConfig, fisher: Optional[Scores], spectra: Optional[Spectra]
) -> tuple[RankDict, int]:
    """Minimize the summed truncation error Σ_u Σ_{i>r_u} σ_{u,i}² over all groups (beyond the paper).

    σ² are each group's singular values squared in its decomposition's error metric
    (Fisher-weighted activation error for ``whiten_fisher``: a second-order estimate of the
    loss increase). Errors are convex in rank, so granting granules greedily to the largest
    marginal reduction is optimal for the budget.
    """
    if spectra is None:
        raise ValueError("search method 'sensitivity' needs group spectra (whitening Grams and Fisher)")
    gran = _granularity(units, cfg)
    items = _group_scores(units, None)
    cap = units.group_dims // gran
    total = max(len(items), min(round(cfg.param_ratio_target * units.full_dims / gran), cap * len(items)))
    counts = [1] * len(items)

    def gain(i: int) -> float:
        layer, proj, g, _ = items[i]
        sig = spectra[(layer, proj, g)]
        return float(sig[counts[i] * gran : (counts[i] + 1) * gran].sum())

    heap = [(-gain(i), i) for i in range(len(items)) if counts[i] < cap]
    heapq.heapify(heap)
    for _ in range(total - len(items)):
        _, i = heapq.heappop(heap)
        counts[i] += 1
        if counts[i] < cap:
            heapq.heappush(heap, (-gain(i), i))
    return _to_rank_dict(units, items, [c * gran for c in counts]), gran


def search_ranks(
    shape: AttentionShape,
    head_group_size: int,
    cfg: RankSearchConfig,
    fisher: Optional[Scores] = None,
    spectra: Optional[Spectra] = None,
) -> RankAllocation:
    """Run the configured strategy; returns ranks and the ratio actually kept."""
    if cfg.method.value not in SEARCH_METHODS:
        raise ValueError(f"unknown search method {cfg.method.value!r}; choose from {sorted(SEARCH_METHODS)}")
    units = _Units(shape, head_group_size)
    ranks, gran = SEARCH_METHODS[cfg.method.value](units, cfg, fisher, spectra)
    kept = sum(sum(kv["k"]) + sum(kv["v"]) for kv in ranks.values())
    allocation = RankAllocation(ranks, kept, units.full_dims, gran)
    if abs(allocation.param_ratio - cfg.param_ratio_target) > 0.02:
        logger.warning(
            "kept ratio %.4f differs from the target %.4f: every group keeps at least rank_multiple=%d and at most its dims",
            allocation.param_ratio, cfg.param_ratio_target, gran,
        )
    return allocation
