"""BYOL (Grill et al. 2020): an online network with a predictor regresses a target network's projections.

The target is a copy of the online trunk + projector, never trained by gradient: after each step
θ_target ← τ θ_target + (1 − τ) θ_online, with τ = 1 − (1 − τ_base)(cos(πk/K) + 1)/2 rising from τ_base = 0.996
to 1 over the K steps of the schedule (the paper, sec. 3.2 and appendix J). The predictor is the paper's MLP,
Linear(D, 4096)-BN-ReLU-Linear(4096, D). The loss is symmetrized:
    regression(p1, sg(z2')) + regression(p2, sg(z1')),   regression(p, z) = mean of 2 − 2 cos(p, z)
where z' are the target's projections of the views. Under DDP the mean is over the global batch; the target's
BatchNorms see the global batch like the online network's.
"""
from __future__ import annotations

import copy
import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..distributed import global_mean
from .base import Objective, Views, exact, positive, within


def cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Per-row cosine of p and z, in full precision, with no gradient through z (the stop-gradient)."""
    return (F.normalize(exact(p), dim=1) * F.normalize(exact(z).detach(), dim=1)).sum(1)


def regression_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Mean over the global batch of 2 − 2 cos(p, z) = ‖p/‖p‖ − z/‖z‖‖², z detached."""
    with torch.autocast(device_type=p.device.type, enabled=False):
        return global_mean(2 - 2 * cosine(p, z))


def ema_rate(base: float, step: int, total_steps: int) -> float:
    """τ after `step` of `total_steps` steps: base at the start, cosine up to 1 at the end."""
    return 1 - (1 - base) * (math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)) + 1) / 2


class TargetNetwork(nn.Module):
    """A copy of the online trunk + projector: images → projections."""

    def __init__(self, trunk: nn.Module, projector: nn.Module):
        super().__init__()
        self.trunk, self.projector = trunk, projector

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.trunk(x))


def mlp(dim: int, hidden: int, bias_first: bool = True) -> nn.Sequential:
    """Linear-BN-ReLU-Linear from dim to dim (the predictors of BYOL and SimSiam)."""
    return nn.Sequential(nn.Linear(dim, hidden, bias=bias_first), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, dim))


@dataclass
class Settings:
    """The paper's τ_base and predictor width."""

    tau_base: float = 0.996
    predictor_hidden: int = 4096

    def __post_init__(self):
        within("tau_base", self.tau_base, 0, 1)
        positive("predictor_hidden", self.predictor_hidden, low=1)


class BYOL(Objective):
    """Online network + predictor against an EMA target; the target and τ are checkpointed."""

    name = "byol"
    title = "BYOL (Grill et al. 2020)"
    Settings = Settings

    def __init__(self, settings):
        super().__init__(settings)
        self.target: TargetNetwork | None = None
        self.register_buffer("tau", torch.tensor(settings.tau_base, dtype=torch.float64))

    def head(self, dim: int) -> nn.Module | None:
        """The predictor MLP."""
        return mlp(dim, self.settings.predictor_hidden)

    def attach(self, network: nn.Module) -> None:
        """The target starts as a copy of the online trunk + projector."""
        self.target = copy.deepcopy(TargetNetwork(network.trunk, network.projector))
        self.target.requires_grad_(False)

    def predictions(self, views: Views) -> tuple[torch.Tensor, torch.Tensor]:
        """The online predictions of the two large views."""
        return views.p[0], views.p[1]

    def loss(self, views: Views) -> tuple[torch.Tensor, dict]:
        """regression(p1, z2') + regression(p2, z1'); parts: the mean cosine and the current τ."""
        with torch.no_grad():
            t1, t2 = self.target(views.inputs[0]), self.target(views.inputs[1])
        p1, p2 = self.predictions(views)
        loss = regression_loss(p1, t2) + regression_loss(p2, t1)
        return loss, {"cos": 1 - loss.detach() / 4, "tau": self.tau.clone()}

    @torch.no_grad()
    def after_step(self, network: nn.Module, step: int, total_steps: int) -> None:
        """θ_target ← τ θ_target + (1 − τ) θ_online at this step's τ."""
        self.tau.fill_(ema_rate(self.settings.tau_base, step, total_steps))
        online = itertools.chain(network.trunk.parameters(), network.projector.parameters())
        for target, source in zip(self.target.parameters(), online):
            target.lerp_(source, 1 - float(self.tau))


OBJECTIVE = BYOL
