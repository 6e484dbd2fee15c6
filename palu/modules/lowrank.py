"""Grouped low-rank projection replacing k_proj / v_proj (paper Sec. 3.1).

``down`` maps d_model to the concatenated latents of all groups (R = Σ_g r_g).
``up`` rebuilds each group's gs·D outputs from its own r_g latent channels. Ranks may
differ between groups (Fisher allocation), so ``up`` is stored zero-padded to
``r_max``; the padding columns are zero and stay zero.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn


class LowRankProjection(nn.Module):
    """x (B, S, d_model) -> latent (B, S, R) -> output (B, S, G·gs·D).

    Parameters:
        down.weight: (R, d_model)
        up: (G, gs·D, r_max), columns ≥ r_g of group g are zero
        bias: (G·gs·D,) or None (Qwen2 k/v bias, added after reconstruction)
    """

    def __init__(
        self,
        in_features: int,
        ranks: Sequence[int],
        group_out_features: int,
        bias: bool = False,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.ranks = [int(r) for r in ranks]
        self.num_groups = len(self.ranks)
        self.group_out_features = group_out_features
        self.rank_total = sum(self.ranks)
        self.rank_max = max(self.ranks)
        kw = {"dtype": dtype, "device": device}
        self.down = nn.Linear(in_features, self.rank_total, bias=False, **kw)
        self.up = nn.Parameter(torch.zeros(self.num_groups, group_out_features, self.rank_max, **kw))
        self.bias = nn.Parameter(torch.zeros(self.num_groups * group_out_features, **kw)) if bias else None
        self.register_buffer("offsets", torch.empty(0, dtype=torch.int32), persistent=False)
        self.register_buffer("group_index", torch.empty(0, dtype=torch.int64), persistent=False)
        self.rebuild_buffers(device)
        self.equal_ranks = len(set(self.ranks)) == 1

    def rebuild_buffers(self, device: torch.device | str | None = None) -> None:
        """(Re)create the derived index buffers (they are not saved: loading on meta leaves them empty)."""
        offsets = torch.tensor([0] + self.ranks, dtype=torch.int64).cumsum(0)
        # Gather index turning (…, R) into (…, G, r_max); padding points at an appended zero channel.
        index = torch.full((self.num_groups, self.rank_max), self.rank_total, dtype=torch.int64)
        for g, r in enumerate(self.ranks):
            index[g, :r] = torch.arange(int(offsets[g]), int(offsets[g]) + r)
        self.offsets = offsets.to(device=device, dtype=torch.int32)
        self.group_index = index.to(device=device)

    @property
    def out_features(self) -> int:
        return self.num_groups * self.group_out_features

    @torch.no_grad()
    def set_factors(self, ups: Sequence[torch.Tensor], downs: Sequence[torch.Tensor], bias: torch.Tensor | None) -> None:
        """Load float64 factors from :func:`palu.decomposition.decompose_projection`."""
        self.down.weight.copy_(torch.cat(list(downs), 0).to(self.down.weight.dtype))
        self.up.zero_()
        for g, (u, r) in enumerate(zip(ups, self.ranks)):
            self.up[g, :, :r] = u.to(self.up.dtype)
        if self.bias is not None and bias is not None:
            self.bias.copy_(bias.to(self.bias.dtype))

    def split_groups(self, latent: torch.Tensor) -> torch.Tensor:
        """(…, R) -> (…, G, r_max), zero-padded for groups with r_g < r_max."""
        if self.equal_ranks:
            return latent.unflatten(-1, (self.num_groups, self.rank_max))
        padded = torch.nn.functional.pad(latent, (0, 1))
        return padded[..., self.group_index]

    def reconstruct(self, latent: torch.Tensor) -> torch.Tensor:
        """(…, R) latents -> (…, G·gs·D) outputs (bias included)."""
        grouped = self.split_groups(latent)  # (…, G, r_max)
        out = torch.einsum("...gr,gor->...go", grouped, self.up).flatten(-2)
        return out + self.bias if self.bias is not None else out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reconstruct(self.down(x))
