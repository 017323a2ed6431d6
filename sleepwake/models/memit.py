"""MEMIT update math (Meng et al. 2023, "Mass-Editing Memory in a Transformer"), backend-free.

Everything here works on torch tensors; the MLX backend converts its arrays at the boundary,
so both backends share this one implementation. Conventions (rows are facts):

- ``K``  (n, d_ff)     keys: inputs of the edited MLP down-projection at the subject's last token
- ``R``  (n, d_model)  residuals: what the layer's output must gain at those keys
- ``C``  (d_ff, d_ff)  key covariance  C = 1/M sum_j k_j k_j^T over M reference tokens
- ``dW`` (d_model, d_ff) = U V^T with U (d_model, n), V (d_ff, n): rank <= n, stored as factors

The papers' update  W' = W + R K^T (K K^T + lambda C)^-1  (columns-as-keys notation) is
evaluated in the Woodbury / push-through form, which only inverts an n x n matrix:

    dW = R^T (lambda I + K C^-1 K^T)^-1 K C^-1 ,   i.e.   V = C^-1 K^T,  U = R^T (lambda I + K V)^-1

The constrained form used by sleep restricts dW to the orthogonal complement of protected keys
K_p (null-space projection P = I - Q Q^T, Q an orthonormal basis of span K_p^T), so dW k_p = 0
exactly: keys K -> K P, metric C -> P C P + Q Q^T (invertible; equal to the pseudo-inverse of
P C P on range P).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from sleepwake.errors import SleepwakeError
from sleepwake.models.lowrank import refactor


@dataclass(frozen=True)
class LayerUpdate:
    """One layer's low-rank update dW = u @ v.T and the keys it was solved for."""

    layer: int
    u: torch.Tensor  # (d_model, n)
    v: torch.Tensor  # (d_ff, n)
    keys: torch.Tensor  # (n, d_ff)

    def dense(self) -> torch.Tensor:
        """dW (d_model, d_ff); only for tests and small models."""
        return self.u @ self.v.T


class NonFiniteUpdateError(SleepwakeError):
    """A computed update holds NaN/Inf: it is never applied."""


def shrink_covariance(cov: torch.Tensor, shrinkage: float, ridge: float = 1.0e-6) -> torch.Tensor:
    """Ledoit-Wolf-style shrinkage toward the diagonal plus a tiny ridge: C_s = (1-a) C + a diag(C) + eps I.

    Why: a covariance from a finite sample is noisy in its small eigen-directions, and the
    update divides by them (C^-1); shrinkage keeps those directions from exploding the update.
    """
    diag = torch.diagonal(cov).clone()  # (d_ff,)
    eps = ridge * diag.mean().clamp_min(1.0e-12)
    shrunk = cov * (1.0 - shrinkage)  # one (d_ff, d_ff) copy; the rest is on its diagonal
    torch.diagonal(shrunk).add_(shrinkage * diag + eps)
    return shrunk


def null_space_basis(protect: torch.Tensor, rel_tol: float = 1.0e-6) -> torch.Tensor:
    """Q (d_ff, p'): orthonormal basis of the span of the protected keys ``protect`` (p, d_ff)."""
    if protect.numel() == 0:
        return protect.new_zeros((protect.shape[-1], 0))
    u, s, _ = torch.linalg.svd(protect.T.double(), full_matrices=False)  # u: (d_ff, p)
    keep = s > rel_tol * s.max().clamp_min(1.0e-30)
    return u[:, keep].to(protect.dtype)


def project_out(x: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """P x with P = I - Q Q^T, applied to the columns of ``x`` (d_ff, m) without forming P."""
    if basis.shape[1] == 0:
        return x
    return x - basis @ (basis.T @ x)


def constrained_metric(cov: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """P C P + Q Q^T (d_ff, d_ff): invertible, and its inverse is (P C P)^+ on range(P)."""
    if basis.shape[1] == 0:
        return cov
    return constrain_metric_(cov.clone(), basis)


def constrain_metric_(cov: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """:func:`constrained_metric` in place on ``cov`` (d_ff, d_ff), with no other (d_ff, d_ff)
    temporary: at d_ff=1536 each is ~19 MB of float64, and this metric is a wake's memory peak.
    P C P = C - Q (Q^T C) - (C Q) Q^T + Q (Q^T C Q) Q^T, every product (d_ff, p) or (p, p)."""
    if basis.shape[1] == 0:
        return cov
    basis = basis.to(cov.dtype)
    cq = cov @ basis  # (d_ff, p); C is symmetric, so Q^T C = (C Q)^T
    qcq = basis.T @ cq  # (p, p)
    cov.addmm_(basis, cq.T, alpha=-1.0)  # - Q Q^T C
    cov.addmm_(cq, basis.T, alpha=-1.0)  # - C Q Q^T
    cov.addmm_(basis @ (qcq + torch.eye(qcq.shape[0], dtype=cov.dtype, device=cov.device)), basis.T)  # + Q (Q^T C Q + I) Q^T
    return cov


def solve_update(
    keys: torch.Tensor,
    residuals: torch.Tensor,
    metric_chol: torch.Tensor,
    lambda_reg: float,
    basis: torch.Tensor | None = None,
    relative: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve for (U, V) with dW = U V^T (Woodbury form of  R K^T (K K^T + lambda C)^-1).

    ``keys`` (n, d_ff), ``residuals`` (n, d_model), ``metric_chol`` the lower Cholesky factor
    of C (or of the constrained metric when ``basis`` Q of protected keys is given). The ridge
    is ``ridge(gram, lambda_reg, relative)``.
    Computed in float64: the n x n system can be ill-conditioned when facts share a subject.
    """
    dtype = keys.dtype
    k = keys.double()  # (n, d_ff)
    r = residuals.double()  # (n, d_model)
    chol = metric_chol.double()  # (d_ff, d_ff)
    k_t = k.T  # (d_ff, n)
    if basis is not None and basis.shape[1]:
        k_t = project_out(k_t, basis.double())  # (d_ff, n) keys seen through P
    v = torch.cholesky_solve(k_t, chol)  # (d_ff, n) = C^-1 K^T
    if basis is not None and basis.shape[1]:
        v = project_out(v, basis.double())  # exact: V^T k_p = 0 for protected keys
    gram = k_t.T @ v  # (n, n) = K C^-1 K^T
    n = gram.shape[0]
    system = gram + ridge(gram, lambda_reg, relative) * torch.eye(n, dtype=gram.dtype, device=gram.device)
    u = torch.linalg.solve(system, r).T  # (d_model, n) = R^T (lambda I + K C^-1 K^T)^-1
    return u.to(dtype), v.to(dtype)


def ridge(gram: torch.Tensor, lambda_reg: float, relative: float) -> float:
    """lambda in (lambda I + K C^-1 K^T): the papers' absolute ``lambda_reg`` plus ``relative``
    times the mean of diag(K C^-1 K^T) (n, n).

    Why relative: k C^-1 k^T grows with d_ff (5,000-12,000 on the bundled model's edit layers,
    d_ff 1536), so an absolute lambda means a different damping on every model. The damping
    matters for batches: keys of facts that share a relation template are nearly collinear, the
    Gram matrix has small eigenvalues, and an undamped solve separates them with large weight
    changes (drift).
    """
    return lambda_reg + relative * float(gram.diagonal().mean()) if gram.numel() else lambda_reg


def distribute_residual(target: torch.Tensor, current: torch.Tensor, layers_left: int) -> torch.Tensor:
    """MEMIT's residual spread: layer i of L takes (z* - z_now) / (L - i) of what is still missing."""
    if layers_left < 1:
        raise ValueError("layers_left must be >= 1")
    return (target - current) / layers_left  # (n, d_model)


def clamp_delta(delta: torch.Tensor, reference: torch.Tensor, max_ratio: float) -> torch.Tensor:
    """Scale rows of ``delta`` (n, d) so that |delta_i| <= max_ratio * |reference_i| (MEMIT's norm clamp)."""
    limit = max_ratio * reference.norm(dim=-1, keepdim=True)  # (n, 1)
    norm = delta.norm(dim=-1, keepdim=True).clamp_min(1.0e-12)
    return delta * torch.clamp(limit / norm, max=1.0)


def check_finite(update: LayerUpdate) -> None:
    """Refuse an update with NaN/Inf before it reaches any weight."""
    for name in ("u", "v"):
        tensor = getattr(update, name)
        if not torch.isfinite(tensor).all():
            raise NonFiniteUpdateError(
                f"MEMIT produced a non-finite update at layer {update.layer}; nothing was changed "
                "(try a larger memit.lambda_reg or memit.covariance_shrinkage)"
            )


def apply_factors(weight: torch.Tensor, u: torch.Tensor, v: torch.Tensor, scale: float = 1.0) -> None:
    """weight += scale * u @ v.T, in place, one rank-1 term at a time.

    Why rank-1 ``addr_`` rather than one matmul: an outer product is elementwise, so the result
    is bit-identical whatever the BLAS kernel or thread count; a restart reproduces the weights.
    """
    for j in range(u.shape[1]):
        weight.addr_(u[:, j].to(weight), v[:, j].to(weight), alpha=scale)


def merge_factors(parts: Sequence[tuple[torch.Tensor, torch.Tensor]], tol: float = 1.0e-7) -> tuple[torch.Tensor, torch.Tensor]:
    """One factor pair (u, v) with u @ v.T = sum_i u_i @ v_i.T, at the smallest numerical rank.

    A refresh stores ``old + D`` as ONE edit (in place: the edit count never grows); the QR/SVD
    recompression keeps its rank from growing by the old rank at every refresh.
    """
    u, v, _ = refactor(parts, energy=1.0, tol=tol)
    return u, v


def merge_updates(updates: Sequence[LayerUpdate], old: dict[str, torch.Tensor], old_scale: float) -> list[LayerUpdate]:
    """old_scale * old + new, layer by layer (layers only the old edit touched keep its factors)."""
    merged = {u.layer: u for u in updates}
    old_layers = sorted({int(name.split(".")[0].removeprefix("layer")) for name in old})
    for layer in sorted(set(merged) | set(old_layers)):
        parts = []
        if layer in old_layers:
            parts.append((old[f"layer{layer}.u"] * old_scale, old[f"layer{layer}.v"]))
        if layer in merged:
            parts.append((merged[layer].u, merged[layer].v))
        keys = merged[layer].keys if layer in merged else old[f"layer{layer}.keys"]
        u, v = merge_factors(parts)
        merged[layer] = LayerUpdate(layer=layer, u=u, v=v, keys=keys)
    return [merged[layer] for layer in sorted(merged)]
