"""DirectPred (Tian, Chen and Ganguli 2021, "Understanding self-supervised learning dynamics without contrastive
pairs"): BYOL with a linear predictor set directly, not trained, from the online projections' correlation.

After each step the correlation estimate is averaged, F ← ρ F + (1 − ρ) E[f fᵀ] (f: the online projections of
both views over the global batch; the first batch sets F), and every `freq` steps the predictor becomes
    W = U diag(√(s / max s) + ε) Uᵀ,   F = U diag(s) Uᵀ (eigenvalues clamped at 0).
Defaults ρ = 0.3, ε = 0.01, freq = 1: the authors' sample command in facebookresearch/luckmatters
(ssl/real-dataset/README.md: trainer.predictor_freq=1 dyn_lambda=0.3 dyn_eps=0.01 balance_type=boost_scale, with
dyn_convert 2 = the square root and an uncentred F, dyn_zero_mean false, in config/byol_config.yaml). The target
is BYOL's (τ from 0.996 cosine to 1; the authors' code kept τ = 0.996). Before the first update W is the identity
(the authors' code starts from a random linear layer for that one step). F, W and τ are checkpointed.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..distributed import is_distributed
from .base import Views, exact, positive, within
from .byol import BYOL


def predictor_from_correlation(F: torch.Tensor, eps: float = 0.01) -> torch.Tensor:
    """W = U diag(√(s / max s) + eps) Uᵀ from the eigendecomposition F = U diag(s) Uᵀ of a symmetric F."""
    s, U = torch.linalg.eigh(F)
    s = s.clamp(min=0)
    scale = torch.sqrt(s / s.max().clamp_min(torch.finfo(s.dtype).tiny)) + eps
    return (U * scale) @ U.T


@dataclass
class Settings:
    """ρ, ε and the update frequency of the authors' command; BYOL's τ_base."""

    rho: float = 0.3
    eps: float = 0.01
    freq: int = 1
    tau_base: float = 0.996

    def __post_init__(self):
        within("rho", self.rho, 0, 1)
        within("tau_base", self.tau_base, 0, 1)
        positive("eps", self.eps)
        positive("freq", self.freq, low=1)


class DirectPred(BYOL):
    """BYOL's target and loss; the predictor W is set from the correlation estimate instead of trained."""

    name = "directpred"
    title = "DirectPred (Tian, Chen and Ganguli 2021)"
    Settings = Settings

    def __init__(self, settings):
        super().__init__(settings)
        self._batch_correlation = None  # E[f fᵀ] of the current step, folded into F after the optimizer step

    def head(self, dim: int) -> None:
        """No trained head; W (the identity to start), F and its update count are sized here."""
        self.register_buffer("weight", torch.eye(dim))
        self.register_buffer("correlation", torch.zeros(dim, dim))
        self.register_buffer("updates", torch.zeros((), dtype=torch.int64))
        return None

    def predictions(self, views: Views) -> tuple[torch.Tensor, torch.Tensor]:
        """p = W f for both large views; also notes this step's E[f fᵀ] over the global batch."""
        f1, f2 = views.z[0], views.z[1]
        with torch.autocast(device_type=f1.device.type, enabled=False):
            f1, f2 = exact(f1), exact(f2)
            with torch.no_grad():
                sums = torch.cat([(f1.T @ f1 + f2.T @ f2).flatten().float(),
                                  torch.tensor([2.0 * len(f1)], device=f1.device)])
                if is_distributed():
                    dist.all_reduce(sums)
                self._batch_correlation = sums[:-1].view_as(self.correlation) / sums[-1]
            weight = self.weight.to(f1.dtype)
            return f1 @ weight.T, f2 @ weight.T

    @torch.no_grad()
    def after_step(self, network, step: int, total_steps: int) -> None:
        """F ← ρ F + (1 − ρ) E[f fᵀ]; W from F every freq steps; then BYOL's target update."""
        s = self.settings
        if self._batch_correlation is not None:
            if int(self.updates) == 0:
                self.correlation.copy_(self._batch_correlation)
            else:
                self.correlation.mul_(s.rho).add_(self._batch_correlation, alpha=1 - s.rho)
            self.updates += 1
            self._batch_correlation = None
            if (step - 1) % s.freq == 0:
                self.weight.copy_(predictor_from_correlation(self.correlation, s.eps))
        super().after_step(network, step, total_steps)


OBJECTIVE = DirectPred
