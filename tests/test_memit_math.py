"""MEMIT update math (sleepwake.models.memit) on random matrices, checked against dense formulas.

Reference formula (Meng et al. 2023, "Mass-Editing Memory in a Transformer", eq. 14, with the
covariance weight lambda as in sleepwake's docs), written with keys as COLUMNS:

    dW = Rc Kc^T (Kc Kc^T + lambda C)^-1,     Kc = K^T (d_ff, n),  Rc = R^T (d_model, n)

and for lambda = 0 its minimum-C-norm interpolation limit dW = R^T (K C^-1 K^T)^-1 K C^-1.
sleepwake evaluates the push-through (Woodbury) form; these tests compare the two.
"""

from __future__ import annotations

import pytest
import torch

from sleepwake.models.covariance import LayerStats
from sleepwake.models.memit import (
    LayerUpdate,
    NonFiniteUpdateError,
    apply_factors,
    check_finite,
    clamp_delta,
    constrained_metric,
    distribute_residual,
    null_space_basis,
    project_out,
    ridge,
    shrink_covariance,
    solve_update,
)

D_FF, D_MODEL, N = 32, 16, 3
F64 = torch.float64


def random_cov(d: int, seed: int, samples: int = 200) -> torch.Tensor:
    """A well-conditioned SPD covariance (sample covariance of many Gaussian keys + identity)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, d, generator=gen, dtype=F64)
    return x.T @ x / samples + 0.1 * torch.eye(d, dtype=F64)


def problem(seed: int = 0, n: int = N):
    gen = torch.Generator().manual_seed(seed + 1)
    keys = torch.randn(n, D_FF, generator=gen, dtype=F64)
    residuals = torch.randn(n, D_MODEL, generator=gen, dtype=F64)
    cov = random_cov(D_FF, seed)
    return keys, residuals, cov, torch.linalg.cholesky(cov)


def dense(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return u @ v.T


# ---- solve_update --------------------------------------------------------------------------


def test_lambda_zero_hits_residuals_exactly_and_matches_closed_form():
    keys, residuals, cov, chol = problem()
    u, v = solve_update(keys, residuals, chol, lambda_reg=0.0)
    assert u.shape == (D_MODEL, N) and v.shape == (D_FF, N)
    dw = dense(u, v)
    torch.testing.assert_close(dw @ keys.T, residuals.T, atol=1e-8, rtol=0)
    c_inv = torch.linalg.inv(cov)
    closed = residuals.T @ torch.linalg.inv(keys @ c_inv @ keys.T) @ keys @ c_inv
    torch.testing.assert_close(dw, closed, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("lam", [1e-3, 0.1, 10.0])
def test_lambda_positive_matches_papers_d_by_d_form(lam):
    keys, residuals, cov, chol = problem(seed=3)
    u, v = solve_update(keys, residuals, chol, lambda_reg=lam)
    kc, rc = keys.T, residuals.T  # columns-as-keys notation of the paper
    paper = rc @ kc.T @ torch.linalg.inv(kc @ kc.T + lam * cov)
    torch.testing.assert_close(dense(u, v), paper, atol=1e-9, rtol=1e-7)
    if lam >= 0.1:  # regularised: the keys are no longer hit exactly
        assert (dense(u, v) @ keys.T - residuals.T).abs().max() > 1e-3


def test_larger_lambda_shrinks_the_update():
    keys, residuals, _, chol = problem(seed=5)
    norms = [dense(*solve_update(keys, residuals, chol, lam)).norm().item() for lam in (0.0, 1.0, 10.0, 100.0, 1000.0)]
    assert all(a > b for a, b in zip(norms, norms[1:])), norms
    assert norms[-1] < 0.5 * norms[0]


def test_relative_lambda_is_the_absolute_lambda_scaled_by_the_grams_mean_diagonal():
    keys, residuals, cov, chol = problem(seed=7)
    gram = keys @ torch.linalg.inv(cov) @ keys.T  # (n, n) = K C^-1 K^T
    assert ridge(gram, 0.5, 0.0) == 0.5
    absolute = 0.5 + 0.2 * float(gram.diagonal().mean())
    assert ridge(gram, 0.5, 0.2) == pytest.approx(absolute, rel=1e-12)
    torch.testing.assert_close(dense(*solve_update(keys, residuals, chol, 0.5, relative=0.2)),
                               dense(*solve_update(keys, residuals, chol, absolute)), atol=1e-10, rtol=1e-9)


def test_relative_lambda_damps_near_collinear_keys_more_than_distinct_ones():
    """Two facts whose keys nearly coincide but whose targets differ need a large update to be told
    apart; the relative ridge shrinks that update far more than it shrinks a well-separated pair's."""
    keys, residuals, _, chol = problem(seed=9, n=2)
    twins = torch.stack([keys[0], keys[0] + 1e-2 * keys[1]])
    def shrink(k: torch.Tensor) -> float:
        free = dense(*solve_update(k, residuals, chol, 0.0)).norm()
        return float(dense(*solve_update(k, residuals, chol, 0.0, relative=0.1)).norm() / free)
    assert shrink(twins) < 0.1 < 0.8 < shrink(keys)


def test_solve_update_keeps_input_dtype():
    keys, residuals, _, chol = problem()
    u, v = solve_update(keys.float(), residuals.float(), chol.float(), 0.1)
    assert u.dtype == torch.float32 and v.dtype == torch.float32


# ---- null-space constraint -------------------------------------------------------------------


def protected_keys(p: int = 4, seed: int = 11) -> torch.Tensor:
    return torch.randn(p, D_FF, generator=torch.Generator().manual_seed(seed), dtype=F64)


def test_null_space_constraint_leaves_protected_keys_untouched():
    keys, residuals, cov, chol = problem(seed=7)
    kp = protected_keys()
    basis = null_space_basis(kp)
    metric = torch.linalg.cholesky(constrained_metric(cov, basis))

    dw_free = dense(*solve_update(keys, residuals, chol, 0.0))
    dw_safe = dense(*solve_update(keys, residuals, metric, 0.0, basis=basis))

    # Unconstrained MEMIT moves the protected keys' outputs (so this test can fail)...
    assert (dw_free @ kp.T).abs().max() > 1e-2 * dw_free.abs().max()
    # ...the constrained update does not, to rounding.
    assert (dw_safe @ kp.T).abs().max() < 1e-6 * dw_safe.abs().max()
    # The edited keys (not in span Kp) are still hit exactly at lambda = 0 (see module docstring).
    torch.testing.assert_close(dw_safe @ keys.T, residuals.T, atol=1e-8, rtol=0)
    # And it is the dense constrained solution: rows of dW live in range(P), the same closed form
    # with K -> K P and C^-1 -> (P C P)^+.
    proj = torch.eye(D_FF, dtype=F64) - basis @ basis.T
    kp_ = keys @ proj
    pinv = torch.linalg.pinv(proj @ cov @ proj, hermitian=True)
    closed = residuals.T @ torch.linalg.inv(kp_ @ pinv @ kp_.T) @ kp_ @ pinv
    torch.testing.assert_close(dw_safe, closed, atol=1e-7, rtol=1e-6)


def test_constrained_metric_and_project_out():
    cov = random_cov(D_FF, 2)
    basis = null_space_basis(protected_keys())
    untouched = cov.clone()
    metric = constrained_metric(cov, basis)
    assert torch.equal(cov, untouched)  # the pure form; memit.constrain_metric_ works in place
    torch.testing.assert_close(metric, metric.T, atol=1e-12, rtol=0)
    torch.linalg.cholesky(metric)  # SPD
    proj = torch.eye(D_FF, dtype=F64) - basis @ basis.T
    torch.testing.assert_close(metric, proj @ cov @ proj + basis @ basis.T, atol=1e-12, rtol=0)
    x = torch.randn(D_FF, 5, dtype=F64)
    torch.testing.assert_close(project_out(x, basis), proj @ x, atol=1e-12, rtol=0)
    empty = basis[:, :0]
    assert project_out(x, empty) is x
    assert constrained_metric(cov, empty) is cov


def test_null_space_basis_properties():
    kp = protected_keys(p=4)
    q = null_space_basis(kp)
    assert q.shape == (D_FF, 4) and q.dtype == F64
    torch.testing.assert_close(q.T @ q, torch.eye(4, dtype=F64), atol=1e-12, rtol=0)
    # Q spans the protected keys: removing span(Q) leaves nothing of them.
    assert project_out(kp.T, q).abs().max() < 1e-10 * kp.abs().max()
    # A random vector is NOT in the span (the check above can fail).
    other = torch.randn(D_FF, 1, dtype=F64, generator=torch.Generator().manual_seed(99))
    assert project_out(other, q).norm() > 0.5 * other.norm()

    duplicated = torch.cat([kp, kp[:2], 2.0 * kp[1:2]])  # 7 rows, rank 4
    assert null_space_basis(duplicated).shape == (D_FF, 4)
    assert null_space_basis(kp.float()).dtype == torch.float32

    empty = null_space_basis(torch.zeros(0, D_FF))
    assert empty.shape == (D_FF, 0)


# ---- clamp, finite check, residual spread --------------------------------------------------------


def test_clamp_delta_scales_only_rows_above_the_limit():
    reference = torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, 2.0]])  # norms 5, 1, 2
    delta = torch.tensor([[30.0, 40.0], [0.1, 0.2], [0.0, -7.0]])  # norms 50, ~0.22, 7
    out = clamp_delta(delta, reference, max_ratio=2.0)  # limits 10, 2, 4
    torch.testing.assert_close(out.norm(dim=-1)[[0, 2]], torch.tensor([10.0, 4.0]))
    torch.testing.assert_close(out[0], torch.tensor([6.0, 8.0]))  # direction kept
    torch.testing.assert_close(out[2], torch.tensor([0.0, -4.0]))
    assert torch.equal(out[1], delta[1])  # below the limit: untouched, bit for bit


def test_check_finite():
    good = LayerUpdate(layer=3, u=torch.ones(4, 1), v=torch.ones(6, 1), keys=torch.ones(1, 6))
    check_finite(good)
    for bad_value in (float("nan"), float("inf"), float("-inf")):
        v = torch.ones(6, 1)
        v[2, 0] = bad_value
        with pytest.raises(NonFiniteUpdateError, match="layer 3"):
            check_finite(LayerUpdate(layer=3, u=torch.ones(4, 1), v=v, keys=torch.ones(1, 6)))
    u = torch.ones(4, 1)
    u[0, 0] = float("nan")
    with pytest.raises(NonFiniteUpdateError):
        check_finite(LayerUpdate(layer=0, u=u, v=torch.ones(6, 1), keys=torch.ones(1, 6)))


def test_distribute_residual():
    target, current = torch.full((2, 3), 10.0), torch.full((2, 3), 4.0)
    torch.testing.assert_close(distribute_residual(target, current, 3), torch.full((2, 3), 2.0))
    torch.testing.assert_close(distribute_residual(target, current, 1), torch.full((2, 3), 6.0))
    with pytest.raises(ValueError):
        distribute_residual(target, current, 0)


# ---- apply_factors ---------------------------------------------------------------------------------


def factors(seed: int = 0, d_out: int = 48, d_in: int = 96, n: int = 5):
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(d_out, d_in, generator=gen)
    return weight, torch.randn(d_out, n, generator=gen), torch.randn(d_in, n, generator=gen)


def test_apply_factors_equals_dense_update():
    weight, u, v = factors()
    out = weight.clone()
    apply_factors(out, u, v, scale=0.5)
    torch.testing.assert_close(out, weight + 0.5 * u @ v.T, atol=1e-5, rtol=1e-5)
    assert not torch.equal(out, weight)


def test_apply_factors_is_bit_identical_across_thread_counts():
    weight, u, v = factors(seed=1, d_out=256, d_in=512, n=8)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out = weight.clone()
            apply_factors(out, u, v, scale=0.3)
            results.append(out)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(results[0], results[1])


def test_apply_then_subtract_returns_to_the_weight():
    weight, u, v = factors(seed=2)
    out = weight.clone()
    apply_factors(out, u, v, scale=0.7)
    apply_factors(out, u, v, scale=-0.7)
    torch.testing.assert_close(out, weight, atol=1e-5, rtol=0)


def test_apply_factors_casts_float64_factors_into_the_weight_dtype():
    weight, u, v = factors(seed=4)
    out = weight.clone()
    apply_factors(out, u.double(), v.double())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, weight + u @ v.T, atol=1e-5, rtol=1e-5)


# ---- shrink_covariance --------------------------------------------------------------------------


def test_shrink_covariance_makes_rank_deficient_covariance_positive_definite():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, D_FF, generator=gen, dtype=F64)  # 8 samples in 32 dims: rank 8
    cov = x.T @ x / 8
    cov = (cov + cov.T) / 2  # a threaded BLAS may leave x^T x asymmetric in the last bit
    assert torch.linalg.matrix_rank(cov) == 8
    with pytest.raises(torch.linalg.LinAlgError):
        torch.linalg.cholesky(cov - 1e-9 * torch.eye(D_FF, dtype=F64))  # really singular
    for shrinkage in (0.0, 0.01, 0.5):
        shrunk = shrink_covariance(cov, shrinkage)
        torch.testing.assert_close(shrunk, shrunk.T, atol=0, rtol=0)
        torch.linalg.cholesky(shrunk)
        assert torch.linalg.eigvalsh(shrunk).min() > 0


def test_shrink_covariance_full_shrinkage_is_diagonal_plus_ridge():
    cov = random_cov(D_FF, 4)
    out = shrink_covariance(cov, 1.0, ridge=1e-3)
    diag = torch.diagonal(cov)
    off = out - torch.diag(torch.diagonal(out))
    assert torch.count_nonzero(off) == 0
    torch.testing.assert_close(torch.diagonal(out), diag + 1e-3 * diag.mean(), atol=1e-12, rtol=0)
    # No shrinkage: only the ridge is added.
    torch.testing.assert_close(shrink_covariance(cov, 0.0, ridge=0.0), cov, atol=0, rtol=0)


# ---- LayerStats.metric_for ----------------------------------------------------------------------


def test_layer_stats_metric_for():
    cov64 = shrink_covariance(random_cov(D_FF, 6), 0.01)
    stats = LayerStats(cov=cov64.float(), chol=torch.linalg.cholesky(cov64))  # as load_or_estimate builds it
    chol, basis = stats.metric_for(None)
    assert chol is stats.chol and basis is None
    chol, basis = stats.metric_for(torch.zeros(0, D_FF))
    assert chol is stats.chol and basis is None

    kp = protected_keys(p=4).float()
    chol, basis = stats.metric_for(kp)
    assert basis.shape == (D_FF, 4)
    torch.testing.assert_close(basis.double().T @ basis.double(), torch.eye(4, dtype=F64), atol=1e-6, rtol=0)
    expected = constrained_metric(stats.cov.double(), basis.double())
    torch.testing.assert_close(chol @ chol.T, expected, atol=1e-10, rtol=1e-10)
    assert torch.equal(chol, torch.tril(chol))

    keys, residuals, _, _ = problem(seed=8)
    u, v = solve_update(keys.float(), residuals.float(), chol, 0.1, basis)
    dw = dense(u.double(), v.double())
    assert (dw @ kp.double().T).abs().max() < 1e-5 * dw.abs().max()
    u0, v0 = solve_update(keys.float(), residuals.float(), stats.chol, 0.1)
    dw0 = dense(u0.double(), v0.double())
    assert (dw0 @ kp.double().T).abs().max() > 1e-2 * dw0.abs().max()


def test_merge_factors_sums_products_at_minimal_rank():
    from sleepwake.models.memit import merge_factors

    torch.manual_seed(0)
    u1, v1 = torch.randn(12, 2), torch.randn(20, 2)
    u2, v2 = torch.randn(12, 3), torch.randn(20, 3)
    u, v = merge_factors([(u1, v1), (u2, v2)])
    assert torch.allclose(u @ v.T, u1 @ v1.T + u2 @ v2.T, atol=1e-5)
    assert u.shape == (12, 5) and v.shape == (20, 5)
    # An edit minus itself is zero: nothing of rank > 0 may be left.
    u0, v0 = merge_factors([(u1, v1), (-u1, v1)])
    assert u0.shape[1] == 0 or (u0 @ v0.T).abs().max() < 1e-6
    # Repeated refresh of the same directions keeps the rank at the span, not the number of terms.
    u3, _ = merge_factors([(u1, v1), (2 * u1, v1), (u1[:, :1], v1[:, :1])])
    assert u3.shape[1] == 2


def test_the_contrast_metric_is_c_plus_the_scaled_moment_and_leaves_the_stats_alone():
    """metric_for adds w * tr(C)/tr(M) * M, M = c^T c / m, in place on its own copy of C."""
    from sleepwake.models.covariance import LayerStats

    cov = random_cov(D_FF, 4).float()
    stats = LayerStats(cov=cov.clone())
    contrast = torch.randn(6, D_FF)
    chol, basis = stats.metric_for(None, contrast, 0.5)
    c, m = cov.double(), contrast.double().T @ contrast.double() / 6
    torch.testing.assert_close(chol @ chol.T, c + 0.5 * (c.trace() / m.trace()) * m, atol=1e-9, rtol=1e-9)
    assert basis is None and torch.equal(stats.cov, cov)
