"""VICReg (Bardes, Ponce and LeCun 2022), computed as the authors' main_vicreg.py does, over the global batch.

    loss = 25 · invariance + 25 · variance + 1 · covariance, with, over the N samples of all ranks,
    invariance = mean over N×D of (z1 − z2)²                                 (F.mse_loss)
    variance   = ½ mean_d relu(1 − √(Var z1_d + 1e-4)) + ½ the same for z2    (unbiased Var: N − 1; γ = 1)
    covariance = Σ_{i≠j} C(z1)_ij² / D + Σ_{i≠j} C(z2)_ij² / D,   C(z) = (z − z̄)ᵀ(z − z̄) / (N − 1)
Defaults: the coefficients of main_vicreg.py (--sim-coeff 25, --std-coeff 25, --cov-coeff 1).
Under DDP the means are sums over ranks whose backward is an all_reduce (each rank centres its own rows); the
sums of squares and products feed identical code on every rank, so their backward is the identity (as in
barlow_twins.py). The authors' code takes the invariance term per rank and gathers the rest; here all three are
the single-process values of the global batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..distributed import sum_all_reduce_grad, sum_identity_grad
from .barlow_twins import off_diagonal
from .base import TwoViewObjective, exact, positive

EPS = 1e-4  # inside the square root of the variance, as main_vicreg.py


def vicreg_loss(z1: torch.Tensor, z2: torch.Tensor, sim_coeff: float = 25.0, std_coeff: float = 25.0,
                cov_coeff: float = 1.0) -> tuple[torch.Tensor, dict]:
    """Projector outputs of two views [n_local, D] → (loss, {invariance, variance, covariance} unweighted, detached)."""
    with torch.autocast(device_type=z1.device.type, enabled=False):
        x, y = exact(z1), exact(z2)
        d = x.shape[1]
        n_local = torch.tensor([float(x.shape[0])], device=x.device, dtype=x.dtype)
        sums = sum_all_reduce_grad(torch.cat([x.sum(0), y.sum(0), n_local]))
        n = sums[-1].detach()
        xc, yc = x - sums[:d] / n, y - sums[d:2 * d] / n
        # One reduction for both views' D×D products and the squared differences.
        totals = sum_identity_grad(torch.cat([(xc.T @ xc).flatten(), (yc.T @ yc).flatten(),
                                              (x - y).pow(2).sum().view(1)]))
        cov_x, cov_y = totals[:d * d].view(d, d) / (n - 1), totals[d * d:2 * d * d].view(d, d) / (n - 1)
        invariance = totals[-1] / (n * d)
        std_x, std_y = torch.sqrt(torch.diagonal(cov_x) + EPS), torch.sqrt(torch.diagonal(cov_y) + EPS)
        variance = torch.relu(1 - std_x).mean() / 2 + torch.relu(1 - std_y).mean() / 2
        covariance = off_diagonal(cov_x).pow(2).sum() / d + off_diagonal(cov_y).pow(2).sum() / d
    loss = sim_coeff * invariance + std_coeff * variance + cov_coeff * covariance
    return loss, {"invariance": invariance.detach(), "variance": variance.detach(), "covariance": covariance.detach()}


@dataclass
class Settings:
    """The three coefficients of main_vicreg.py."""

    sim_coeff: float = 25.0
    std_coeff: float = 25.0
    cov_coeff: float = 1.0

    def __post_init__(self):
        for name in ("sim_coeff", "std_coeff", "cov_coeff"):
            positive(name, getattr(self, name))


class VICReg(TwoViewObjective):
    """Variance, invariance and covariance terms on the two views' projections; no extra modules."""

    name = "vicreg"
    title = "VICReg (Bardes, Ponce and LeCun 2022)"
    Settings = Settings

    def pair(self, z1: torch.Tensor, z2: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """The authors' loss of one pair."""
        s = self.settings
        return vicreg_loss(z1, z2, s.sim_coeff, s.std_coeff, s.cov_coeff)


OBJECTIVE = VICReg
