"""Hadamard rotation of latents, fused into the factors offline (paper Sec. 3.4).

Per-token quantization of a latent suffers from a few large channels. Rotating the
latent by an orthonormal Hadamard matrix ``Q`` spreads them out. Because
``up · down = (up Qᵀ)(Q down)``, the rotation is folded into the factors once:
no online transform is needed at inference.

Construction (exact, pure torch): ``n = 2^a · m`` with ``m`` a Paley order
(q+1 for a prime q ≡ 3 mod 4, 2(q+1) for a prime q ≡ 1 mod 4) or 1, as a Kronecker
product with a Sylvester matrix. Orders with no such construction get a
block-diagonal Hadamard over their largest power-of-two blocks (still orthonormal,
so still exact, only mixing within blocks); this is logged.
"""
from __future__ import annotations

import functools
import logging

import torch

logger = logging.getLogger(__name__)


def _is_prime(q: int) -> bool:
    return q >= 2 and all(q % p for p in range(2, int(q**0.5) + 1))


def _jacobsthal(q: int) -> torch.Tensor:
    """(q, q) matrix of Legendre symbols χ(j − i) mod q, for a prime q."""
    residues = {(x * x) % q for x in range(1, q)}
    chi = torch.tensor([0] + [1 if x in residues else -1 for x in range(1, q)], dtype=torch.float64)
    idx = (torch.arange(q)[None, :] - torch.arange(q)[:, None]) % q
    return chi[idx]


def _paley(m: int) -> torch.Tensor | None:
    """±1 Hadamard matrix of order m by Paley I or II, or None if m has no such construction."""
    if m == 1:
        return torch.ones(1, 1, dtype=torch.float64)
    q = m - 1
    if _is_prime(q) and q % 4 == 3:  # Paley I
        jac = _jacobsthal(q)
        h = torch.ones(m, m, dtype=torch.float64)
        h[1:, 0] = -1.0
        h[1:, 1:] = jac + torch.eye(q, dtype=torch.float64)
        return h
    if m % 2 == 0:
        q = m // 2 - 1
        if _is_prime(q) and q % 4 == 1:  # Paley II
            c = torch.zeros(q + 1, q + 1, dtype=torch.float64)
            c[0, 1:] = 1.0
            c[1:, 0] = 1.0
            c[1:, 1:] = _jacobsthal(q)
            a = torch.tensor([[1.0, -1.0], [-1.0, -1.0]], dtype=torch.float64)
            b = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
            eye = torch.eye(q + 1, dtype=torch.float64)
            return torch.kron(c, a) + torch.kron(eye, b)
    return None


def _sylvester(n: int) -> torch.Tensor:
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


@functools.lru_cache(maxsize=64)
def hadamard_matrix(n: int) -> torch.Tensor:
    """Orthonormal (n, n) float64 rotation: a true Hadamard matrix / √n where one is constructible."""
    if n < 1:
        raise ValueError(f"hadamard order must be >= 1, got {n}")
    two = n & -n  # largest power of two dividing n
    for p in range(two.bit_length() - 1, -1, -1):
        base = _paley(n // (1 << p))
        if base is not None:
            h = torch.kron(_sylvester(1 << p), base)
            return h / h.shape[0] ** 0.5
    logger.info("no Hadamard construction of order %d; using block-diagonal blocks of %d", n, two)
    block = _sylvester(two) / two**0.5
    return torch.block_diag(*([block] * (n // two)))


def fuse_rotation(up: torch.Tensor, down: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate one group's latent: returns (up Qᵀ, Q down), product unchanged.

    Args: up (out, r), down (r, in), float64.
    """
    q = hadamard_matrix(down.shape[0]).to(device=down.device)
    return up @ q.T, q @ down


def apply_hadamard(x: torch.Tensor) -> torch.Tensor:
    """x @ Qᵀ over the last dim (online use, e.g. baselines): fast-hadamard-transform on CUDA when installed."""
    n = x.shape[-1]
    if x.is_cuda and n & (n - 1) == 0:
        try:
            from fast_hadamard_transform import hadamard_transform  # optional, CUDA only
        except ImportError:
            pass
        else:
            # Sylvester order matches the pure-torch construction for powers of two.
            return hadamard_transform(x.contiguous(), scale=n**-0.5)
    q = hadamard_matrix(n).to(device=x.device, dtype=x.dtype)
    return x @ q.T
