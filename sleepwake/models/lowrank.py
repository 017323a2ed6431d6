"""Low-rank factor algebra shared by MEMIT refreshes, the adapter fold and forgetting.

A delta is a factor pair (U (out, r), V (in, r)) with dW = U V^T. Sums of deltas are re-factored
in factor space: two thin QRs and an SVD of an r x r core, never the dense (out, in) matrix.
"""

from __future__ import annotations

from typing import Sequence

import torch

Pair = tuple[torch.Tensor, torch.Tensor]


def refactor(parts: Sequence[Pair], energy: float = 1.0, max_rank: int | None = None, tol: float = 1.0e-7) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(U, V) with U V^T the best approximation of sum_i U_i V_i^T at the smallest rank that keeps
    ``energy`` of the squared singular values (at most ``max_rank``; singular values under ``tol``
    of the largest are dropped as numerical noise); and the share of the energy kept.

        sum_i U_i V_i^T = Q_u (R_u R_v^T) Q_v^T = (Q_u A) S (Q_v B)^T   ->   keep the top k of S
    """
    u = torch.cat([p[0].double() for p in parts], dim=1)  # (out, R)
    v = torch.cat([p[1].double() for p in parts], dim=1)  # (in, R)
    qu, ru = torch.linalg.qr(u)  # (out, R), (R, R)
    qv, rv = torch.linalg.qr(v)  # (in, R), (R, R)
    a, s, bt = torch.linalg.svd(ru @ rv.T)  # core = A diag(s) B^T
    nonzero = int((s > tol * s.max().clamp_min(1e-300)).sum().item())
    squared = s.pow(2)
    cumulative = squared.cumsum(0) / squared.sum().clamp_min(1e-300)
    k = int((cumulative < energy - 1e-12).sum().item()) + 1
    k = max(1, min(k, nonzero, max_rank or len(s), len(s)))
    return (qu @ (a[:, :k] * s[:k])).float().contiguous(), (qv @ bt[:k].T).float().contiguous(), float(cumulative[k - 1])
