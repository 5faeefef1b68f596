"""SimSiam (Chen and He 2021): a shared network, a bottleneck predictor and a stop-gradient; no negatives, no EMA.

    loss = ½ D(p1, sg(z2)) + ½ D(p2, sg(z1)),   D(p, z) = −cos(p, z) averaged over the global batch,
with the paper's predictor Linear(D, D/4, no bias)-BN-ReLU-Linear(D/4, D) (2048 → 512 → 2048 in the paper;
`predictor_hidden` 0 keeps that ratio for any projector width). The paper's projector also puts a BN on its
output layer; here every objective shares btembed's projector, which does not (the paper's ablation, table 4:
works without it, slightly lower).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..distributed import global_mean
from .base import Objective, Views, positive
from .byol import cosine, mlp


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Mean over the global batch of −cos(p, z), z detached."""
    with torch.autocast(device_type=p.device.type, enabled=False):
        return global_mean(-cosine(p, z))


@dataclass
class Settings:
    """The predictor's hidden width; 0: a quarter of the projection width, the paper's bottleneck."""

    predictor_hidden: int = 0

    def __post_init__(self):
        positive("predictor_hidden", self.predictor_hidden)


class SimSiam(Objective):
    """Each view's prediction regresses the other view's projection, whose gradient is stopped."""

    name = "simsiam"
    title = "SimSiam (Chen and He 2021)"
    Settings = Settings

    def head(self, dim: int) -> nn.Module | None:
        """The bottleneck predictor (its first layer without bias, as the paper)."""
        return mlp(dim, self.settings.predictor_hidden or max(1, dim // 4), bias_first=False)

    def loss(self, views: Views) -> tuple[torch.Tensor, dict]:
        """½ D(p1, z2) + ½ D(p2, z1); part: the mean cosine."""
        (z1, z2), (p1, p2) = views.z[:2], views.p[:2]
        loss = negative_cosine(p1, z2) / 2 + negative_cosine(p2, z1) / 2
        return loss, {"cos": -loss.detach()}


OBJECTIVE = SimSiam
