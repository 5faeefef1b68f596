"""Barlow Twins (Zbontar et al. 2021), paper-exact, with global-batch statistics and correct gradients under DDP.

Over all processes' samples (N in total) each view is standardized along the batch by its own statistics
(BatchNorm1d(affine=False) in training mode: biased variance, eps 1e-5), then
    c = z1ᵀ z2 / N,   loss = Σ_i (1 − c_ii)² + λ Σ_{i≠j} c_ij²,
always in float32 (float64 stays float64), even under autocast.

Why two different reductions: every process ends up computing the same scalar loss from the same summed c.
- c = Σ_ranks c_r feeds identical code on every rank, so ∂loss/∂c_r = ∂loss/∂c on each rank: its reduction's
  backward is the identity (`sum_identity_grad`). The official code's plain all_reduce gives the same
  per-rank gradient, but DDP then averages over ranks, scaling every weight gradient by 1/world_size.
- The batch mean and variance are also sums over ranks, but each rank uses them only on its own rows, so
  ∂loss/∂stat is the sum of all ranks' parts: its reduction's backward is an all_reduce
  (`sum_all_reduce_grad`), exactly what SyncBatchNorm does.
With both, the gradient w.r.t. each rank's z1, z2 equals the single-process gradient on the concatenated
batch (tested). DDP then averages parameter gradients over ranks, so the loop multiplies the loss by the
world size before backward (see loop.py) to recover the true gradient of the one global loss.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..distributed import sum_all_reduce_grad, sum_identity_grad
from .base import TwoViewObjective, exact, positive

EPS = 1e-5  # BatchNorm1d's default


def global_standardize(z1: torch.Tensor, z2: torch.Tensor, eps: float = EPS):
    """Standardize each view along the global batch by its own mean/variance; returns (z1n, z2n, N)."""
    n_local = torch.tensor([float(z1.shape[0])], device=z1.device, dtype=z1.dtype)
    # One reduction for both views' sums and the sample count, one for the centred squares (two-pass: stable).
    sums = sum_all_reduce_grad(torch.cat([z1.sum(0), z2.sum(0), n_local]))
    d = z1.shape[1]
    n = sums[-1].detach()
    mean1, mean2 = sums[:d] / n, sums[d:2 * d] / n
    c1, c2 = z1 - mean1, z2 - mean2
    squares = sum_all_reduce_grad(torch.cat([c1.pow(2).sum(0), c2.pow(2).sum(0)]))
    var1, var2 = squares[:d] / n, squares[d:] / n
    return c1 * torch.rsqrt(var1 + eps), c2 * torch.rsqrt(var2 + eps), n


def off_diagonal(x: torch.Tensor) -> torch.Tensor:
    """The off-diagonal elements of a square matrix, flattened."""
    n = x.shape[0]
    return x.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, lambd: float = 0.0051,
                      eps: float = EPS) -> tuple[torch.Tensor, dict]:
    """Projector outputs of two views [n_local, D] → (loss of the global batch, {on_diag, off_diag} detached)."""
    with torch.autocast(device_type=z1.device.type, enabled=False):
        z1n, z2n, n = global_standardize(exact(z1), exact(z2), eps)
        c = sum_identity_grad(z1n.T @ z2n / n)
        on_diag = (torch.diagonal(c) - 1).pow(2).sum()
        off_diag = off_diagonal(c).pow(2).sum()
    return on_diag + lambd * off_diag, {"on_diag": on_diag.detach(), "off_diag": off_diag.detach()}


@dataclass
class Settings:
    """The paper's λ (weight of the off-diagonal term) and the standardization's eps."""

    lambd: float = 0.0051
    eps: float = EPS

    def __post_init__(self):
        positive("lambd", self.lambd)
        positive("eps", self.eps, strict=True)


class BarlowTwins(TwoViewObjective):
    """Cross-correlation of the two views' standardized projections pushed to the identity; no extra modules."""

    name = "barlow_twins"
    title = "Barlow Twins (Zbontar et al. 2021)"
    Settings = Settings

    def pair(self, z1: torch.Tensor, z2: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """The paper's loss of one pair, each with its own global statistics."""
        return barlow_twins_loss(z1, z2, self.settings.lambd, self.settings.eps)


OBJECTIVE = BarlowTwins
