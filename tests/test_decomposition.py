import pytest
import torch

from palu.decomposition import damp_covariance, decompose_projection, regularized_cholesky


def _data(seed=0, d_in=48, d_out=32, n=400):
    g = torch.Generator().manual_seed(seed)
    # Correlated, anisotropic activations: whitening matters.
    mix = torch.randn(d_in, d_in, generator=g, dtype=torch.float64) * torch.logspace(0, -2, d_in, dtype=torch.float64)
    x = torch.randn(n, d_in, generator=g, dtype=torch.float64) @ mix
    w = torch.randn(d_out, d_in, generator=g, dtype=torch.float64)
    return w, x


def _rebuild(ups, downs):
    return torch.cat([u @ d for u, d in zip(ups, downs)], 0)


@pytest.mark.parametrize("method", ["svd", "whiten"])
@pytest.mark.parametrize("group_size", [1, 2, 4])
def test_full_rank_reproduces_weight(method, group_size):
    w, x = _data()
    chol = regularized_cholesky(x.T @ x, 1e-9)
    n_groups = 4 // group_size
    ranks = [8 * group_size] * n_groups  # head_dim 8, 4 heads: full rank per group
    ups, downs = decompose_projection(w, ranks, 8, group_size, method, chol)
    torch.testing.assert_close(_rebuild(ups, downs), w, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("method", ["svd", "whiten"])
def test_error_falls_as_rank_rises(method):
    w, x = _data()
    chol = regularized_cholesky(x.T @ x, 1e-9)
    errors = []
    for r in (2, 4, 8, 16, 32):
        ups, downs = decompose_projection(w, [r], 8, 4, method, chol)
        errors.append(torch.linalg.norm((w - _rebuild(ups, downs)) @ x.T).item())
    assert all(a > b for a, b in zip(errors, errors[1:])), errors


def test_whitened_beats_plain_svd_on_activation_error():
    w, x = _data(seed=3)
    chol = regularized_cholesky(x.T @ x, 1e-9)
    for r in (4, 8, 16):
        err = {}
        for method in ("svd", "whiten"):
            ups, downs = decompose_projection(w, [r], 8, 4, method, chol)
            err[method] = torch.linalg.norm((w - _rebuild(ups, downs)) @ x.T).item()
        assert err["whiten"] < err["svd"], (r, err)


def test_regularized_cholesky_handles_singular_gram():
    x = torch.randn(5, 16, dtype=torch.float64)  # rank 5 < 16: singular Gram
    gram = x.T @ x
    chol = regularized_cholesky(gram, 1e-8)
    assert torch.isfinite(chol).all()
    assert torch.allclose(chol @ chol.T, gram, atol=1e-3 * gram.diagonal().mean().item())


def test_bad_rank_and_group_errors():
    w, _ = _data()
    with pytest.raises(ValueError, match="outside"):
        decompose_projection(w, [0, 8, 8, 8], 8, 1, "svd")
    with pytest.raises(ValueError, match="ranks given"):
        decompose_projection(w, [8, 8], 8, 1, "svd")
    with pytest.raises(ValueError, match="unknown decomposition"):
        decompose_projection(w, [8] * 4, 8, 1, "qr")
    with pytest.raises(ValueError, match="calibration Gram"):
        decompose_projection(w, [8] * 4, 8, 1, "whiten", None)


def test_kfac_full_rank_exact_and_best_in_its_metric():
    w, x = _data(seed=5)
    g = torch.Generator().manual_seed(6)
    grads = torch.randn(300, 32, generator=g, dtype=torch.float64) @ torch.randn(32, 32, generator=g, dtype=torch.float64)
    out_cov = (grads.T @ grads)[None].expand(1, 32, 32)  # one group of 4 heads x head_dim 8
    chol = regularized_cholesky(x.T @ x, 1e-9)
    ups, downs = decompose_projection(w, [32], 8, 4, "whiten_kfac", chol, out_cov)
    torch.testing.assert_close(_rebuild(ups, downs), w, rtol=1e-7, atol=1e-7)

    def kfac_err(approx):
        return torch.linalg.norm(grads @ (w - approx) @ x.T).item()

    for r in (4, 8, 16):
        err = {m: kfac_err(_rebuild(*decompose_projection(w, [r], 8, 4, m, chol, out_cov if m == "whiten_kfac" else None)))
               for m in ("whiten", "whiten_kfac")}
        assert err["whiten_kfac"] < err["whiten"], (r, err)


def test_damp_covariance_loads_each_block_by_its_own_diagonal():
    cov = torch.stack([torch.diag(torch.tensor([1.0, 3.0])), torch.diag(torch.tensor([10.0, 30.0]))]).double()
    damped = damp_covariance(cov, 0.5)
    torch.testing.assert_close(damped[0], torch.diag(torch.tensor([2.0, 4.0])).double())  # + 0.5 * mean 2
    torch.testing.assert_close(damped[1], torch.diag(torch.tensor([20.0, 40.0])).double())  # + 0.5 * mean 20


def test_kfac_with_huge_damping_becomes_plain_whitening():
    w, x = _data(seed=7)
    g = torch.Generator().manual_seed(8)
    grads = torch.randn(300, 32, generator=g, dtype=torch.float64) * torch.linspace(0.1, 3.0, 32, dtype=torch.float64)
    chol = regularized_cholesky(x.T @ x, 1e-9)
    white = _rebuild(*decompose_projection(w, [8], 8, 4, "whiten", chol))
    for damp, close in ((0.0, False), (1e8, True)):
        cov = damp_covariance((grads.T @ grads)[None], damp)
        kfac = _rebuild(*decompose_projection(w, [8], 8, 4, "whiten_kfac", chol, cov))
        assert torch.allclose(kfac, white, rtol=1e-4, atol=1e-6) == close, damp


@pytest.mark.parametrize("method", ["svd", "whiten"])
def test_factor_signs_do_not_depend_on_the_svd_implementation(method):
    # Flipping the sign of singular vector pairs (what another LAPACK may return) must give the
    # same factors: the sign convention is applied after the SVD.
    w, x = _data(seed=11)
    chol = regularized_cholesky(x.T @ x, 1e-9)
    ups, downs = decompose_projection(w, [8], 8, 4, method, chol)
    real_svd = torch.linalg.svd

    def flipped_svd(a, full_matrices=False):
        u, s, vh = real_svd(a, full_matrices=full_matrices)
        flip = torch.where(torch.arange(s.shape[0]) % 2 == 0, -1.0, 1.0).to(u.dtype)
        return u * flip, s, vh * flip[:, None]

    torch.linalg.svd = flipped_svd
    try:
        ups2, downs2 = decompose_projection(w, [8], 8, 4, method, chol)
    finally:
        torch.linalg.svd = real_svd
    torch.testing.assert_close(ups2[0], ups[0])
    torch.testing.assert_close(downs2[0], downs[0])
