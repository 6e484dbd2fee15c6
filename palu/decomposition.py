"""Low-rank factorization of grouped k/v projection weights (paper Sec. 3.1-3.2).

A projection weight ``W`` of shape (H_kv·D, d_model) is cut by rows into groups of
``head_group_size`` KV heads: ``W_g`` is (gs·D, d_model). Each group is factorized as
``W_g ≈ up_g @ down_g`` with ``down_g`` (r_g, d_model) producing the cached latent and
``up_g`` (gs·D, r_g) rebuilding keys or values from it.

Decompositions are registered by name (:data:`DECOMPOSITIONS`); all math runs in
float64 and the caller casts back.
"""
from __future__ import annotations

import logging
from typing import Callable, Optional

import torch

logger = logging.getLogger(__name__)

# (W_g (out, in) float64, Cholesky factor S of the input Gram (in, in) or None, rank,
#  output-channel weights (out,) or None) -> (up (out, r), down (r, in))
Decomposition = Callable[..., tuple[torch.Tensor, torch.Tensor]]
DECOMPOSITIONS: dict[str, Decomposition] = {}


def register_decomposition(name: str) -> Callable[[Decomposition], Decomposition]:
    def wrap(fn: Decomposition) -> Decomposition:
        DECOMPOSITIONS[name] = fn
        return fn

    return wrap


def regularized_cholesky(gram: torch.Tensor, damp: float) -> torch.Tensor:
    """Lower Cholesky factor ``S`` with ``S Sᵀ = G + λI``, in float64.

    Calibration Grams of LLM activations are often numerically singular (dead or
    duplicated channels, fewer tokens than channels). We load the diagonal with
    ``λ = damp · mean(diag G)`` and multiply ``damp`` by 10 until the factorization
    succeeds: the smallest load that works, so well-conditioned Grams are barely touched.

    Args:
        gram: (d, d) symmetric positive semi-definite, ``Σ xᵀx`` over calibration tokens.
        damp: initial relative diagonal load (> 0).
    Returns:
        (d, d) lower-triangular float64.
    """
    g = gram.to(torch.float64)
    g = 0.5 * (g + g.T)
    scale = g.diagonal().mean().clamp_min(1e-12)
    eye = torch.eye(g.shape[0], dtype=g.dtype, device=g.device)
    rel = damp
    for _ in range(12):
        factor, info = torch.linalg.cholesky_ex(g + rel * scale * eye)
        if int(info) == 0:
            if rel > damp:
                logger.info("Gram not positive definite at damp=%g; used relative load %g", damp, rel)
            return factor
        rel *= 10.0
    raise RuntimeError("calibration Gram could not be made positive definite; it probably holds NaN/inf")


def _truncate(u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    # Split Σ as √Σ on each side so neither factor carries the whole dynamic range;
    # the latent (down side) then has balanced scale for quantization.
    u, s, vh = u[:, :rank], s[:rank], vh[:rank]
    # Singular vectors are defined up to sign, and LAPACK and cuSOLVER pick different ones. The
    # product does not care, but per-token min-max quantization of the latents does (flipping one
    # channel changes its group's range): measured 33.97 vs 30.90 ppl for the same 3-bit model
    # decomposed on a CPU and on an H100. Fix the sign (largest |entry| of each row of Vᵀ positive)
    # so that a dump is the same wherever it is made.
    pivot = vh.abs().argmax(dim=1, keepdim=True)
    sign = torch.where(vh.gather(1, pivot) < 0, -1.0, 1.0).to(vh.dtype)  # (r, 1)
    root = s.sqrt()
    return (u * sign.T) * root, root[:, None] * (vh * sign)


@register_decomposition("svd")
def svd_factors(weight: torch.Tensor, chol: Optional[torch.Tensor], rank: int, row_weight=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain truncated SVD: best rank-r approximation of ``W`` in Frobenius norm.

    Args: weight (out, in) float64; chol ignored; rank r.
    Returns: up (out, r), down (r, in).
    """
    u, s, vh = torch.linalg.svd(weight, full_matrices=False)
    return _truncate(u, s, vh, rank)


@register_decomposition("whiten")
def whitened_factors(weight: torch.Tensor, chol: Optional[torch.Tensor], rank: int, row_weight=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Truncation-aware whitened SVD (SVD-LLM): minimizes ``‖(W − up·down) X‖`` over calibration X.

    With ``S Sᵀ = XᵀX`` (Cholesky), SVD of ``W S = U Σ Vᵀ`` gives
    ``up = U_r √Σ_r`` and ``down = √Σ_r V_rᵀ S⁻¹``.

    Args: weight (out, in) float64; chol (in, in) lower-triangular float64; rank r.
    Returns: up (out, r), down (r, in).
    """
    if chol is None:
        raise ValueError("whiten decomposition needs a calibration Gram; run calibration first")
    u, s, vh = torch.linalg.svd(weight @ chol, full_matrices=False)
    up, down_white = _truncate(u, s, vh, rank)
    # down = down_white · S⁻¹, solved rather than inverting S: (S ᵀ downᵀ = down_whiteᵀ).
    down = torch.linalg.solve_triangular(chol.T, down_white.T, upper=True).T
    return up, down


def output_scale(row_weight: torch.Tensor) -> torch.Tensor:
    """√(Fisher weight) per output channel, floored at 1% of the mean so no channel is ignored outright."""
    w = row_weight.to(torch.float64)
    return (w + 0.01 * w.mean().clamp_min(1e-30)).sqrt()


@register_decomposition("whiten_fisher")
def fisher_whitened_factors(
    weight: torch.Tensor, chol: Optional[torch.Tensor], rank: int, row_weight: Optional[torch.Tensor] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Whitened SVD weighted by output-channel Fisher information (beyond the paper).

    Minimizes ``Σ_o f_o ‖((W − up·down) X)_o‖²``: the diagonal second-order estimate of the
    loss increase, where f_o = Σ (∂L/∂y_o)² over calibration tokens. With ``D = diag(√f)``:
    SVD of ``D W S``, then ``up = D⁻¹ U_r √Σ_r``, ``down = √Σ_r V_rᵀ S⁻¹``.
    """
    if row_weight is None:
        raise ValueError("whiten_fisher decomposition needs output Fisher weights; run Fisher calibration first")
    scale = output_scale(row_weight)
    up, down = whitened_factors(scale[:, None] * weight, chol, rank)
    return up / scale[:, None], down


# Load that only makes an (already damped) output-gradient covariance factorizable; the K-FAC
# damping itself is the caller's (:func:`damp_covariance`, ``DecompositionConfig.kfac_damp``).
_OUT_CHOL_DAMP = 1e-6


def damp_covariance(cov: torch.Tensor, damp: float) -> torch.Tensor:
    """``G + damp · mean(diag G) · I`` for each (n, n) block of ``cov`` (..., n, n), in float64.

    K-FAC damping (Tikhonov): G is estimated from a few thousand calibration tokens, so its small
    eigenvalues are mostly noise, and trusting them lets the SVD spend rank on directions whose
    loss weight is an artifact. ``damp`` → ∞ turns whiten_kfac into plain whiten.
    """
    g = cov.to(torch.float64)
    scale = g.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1e-30)  # (...,)
    eye = torch.eye(g.shape[-1], dtype=g.dtype, device=g.device)
    return g + damp * scale[..., None, None] * eye


@register_decomposition("whiten_kfac")
def kfac_whitened_factors(
    weight: torch.Tensor, chol: Optional[torch.Tensor], rank: int, row_weight: Optional[torch.Tensor] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two-sided whitening by a K-FAC Fisher approximation F ≈ A ⊗ G (beyond the paper).

    Minimizes ``‖L_Gᵀ (W − up·down) S‖_F²`` = vec(ΔW)ᵀ (A ⊗ G) vec(ΔW), the K-FAC estimate of the loss
    increase, with ``S Sᵀ = A`` (input Gram) and ``L_G L_Gᵀ = G`` (output-gradient covariance of the
    group, ``row_weight`` of shape (out, out), damped by the caller with :func:`damp_covariance`). SVD of ``L_Gᵀ W S``; ``up = L_G⁻ᵀ U_r √Σ_r``.
    """
    if row_weight is None or row_weight.dim() != 2:
        raise ValueError("whiten_kfac decomposition needs the output-gradient covariance of each group")
    out_chol = regularized_cholesky(row_weight, _OUT_CHOL_DAMP)
    up, down = whitened_factors(out_chol.T @ weight, chol, rank)
    return torch.linalg.solve_triangular(out_chol.T, up, upper=True), down


def group_spectrum(weight: torch.Tensor, chol: Optional[torch.Tensor], row_weight: Optional[torch.Tensor]) -> torch.Tensor:
    """Squared singular values (descending) of one group in the error metric of its decomposition.

    ``Σ_{i>r} σ_i²`` is the error left at rank r: activation-space with ``chol``, Fisher-weighted
    with ``row_weight`` — the quantity the sensitivity rank search trades between groups.
    """
    w = weight.to(torch.float64)
    if row_weight is not None and row_weight.dim() == 2:
        w = regularized_cholesky(row_weight, _OUT_CHOL_DAMP).T @ w
    elif row_weight is not None:
        w = output_scale(row_weight)[:, None] * w
    if chol is not None:
        w = w @ chol
    return torch.linalg.svdvals(w).pow(2)


def group_rows(weight: torch.Tensor, head_dim: int, head_group_size: int) -> list[torch.Tensor]:
    """Split (H_kv·D, d_model) into groups of ``head_group_size`` heads: list of (gs·D, d_model)."""
    rows = head_dim * head_group_size
    if weight.shape[0] % rows:
        raise ValueError(f"weight rows {weight.shape[0]} not divisible by group rows {rows}")
    return list(weight.split(rows, dim=0))


def decompose_projection(
    weight: torch.Tensor,
    ranks: list[int],
    head_dim: int,
    head_group_size: int,
    method: str,
    chol: Optional[torch.Tensor] = None,
    row_weight: Optional[torch.Tensor] = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Factorize one k_proj or v_proj weight group by group.

    Args:
        weight: (H_kv·D, d_model), any float dtype.
        ranks: one rank per group, each in [1, min(gs·D, d_model)].
        method: a key of :data:`DECOMPOSITIONS`.
        chol: (d_model, d_model) Cholesky factor of this layer's input Gram (whiten methods).
        row_weight: (H_kv·D,) output-channel Fisher weights (whiten_fisher), or (G, gs·D, gs·D)
            output-gradient covariance blocks (whiten_kfac).
    Returns:
        (ups, downs): float64 lists, ``ups[g]`` (gs·D, r_g), ``downs[g]`` (r_g, d_model).
    """
    if method not in DECOMPOSITIONS:
        raise ValueError(f"unknown decomposition {method!r}; choose from {sorted(DECOMPOSITIONS)}")
    groups = group_rows(weight.detach().to(torch.float64), head_dim, head_group_size)
    if len(groups) != len(ranks):
        raise ValueError(f"{len(ranks)} ranks given for {len(groups)} groups")
    rows = head_dim * head_group_size
    if row_weight is None:
        weights = [None] * len(groups)
    elif row_weight.dim() == 3:  # (G, rows, rows) per-group covariance blocks
        weights = list(row_weight)
    else:
        weights = list(row_weight.split(rows))
    ups, downs = [], []
    for w_g, r, rw in zip(groups, ranks, weights):
        if not 1 <= r <= min(w_g.shape):
            raise ValueError(f"rank {r} outside [1, {min(w_g.shape)}] for a group of shape {tuple(w_g.shape)}")
        up, down = DECOMPOSITIONS[method](w_g, chol, r, rw)
        ups.append(up)
        downs.append(down)
    return ups, downs
