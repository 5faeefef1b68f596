"""The trained network: a btembed.Encoder trunk, the projector head, and the objective's head if it has one."""
from __future__ import annotations

import torch
from torch import nn

from btembed import Encoder
from btembed.config import ModelConfig

from .config import TrainConfig


class ProjectorHead(nn.Sequential):
    """Linear(no bias)-BN-ReLU for every layer but the last, then a plain Linear(no bias), as the paper."""

    def __init__(self, in_dim: int, sizes: list[int]):
        dims = [in_dim, *sizes]
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-2], dims[1:-1]):
            layers += [nn.Linear(a, b, bias=False), nn.BatchNorm1d(b), nn.ReLU(inplace=True)]
        layers.append(nn.Linear(dims[-2], dims[-1], bias=False))
        super().__init__(*layers)


class TwinNetwork(nn.Module):
    """(view1, view2, small views...) → (projections of every view, the head on each, trunk features of view1).

    Views pass separately so BN never pools the two large ones; the objective's head (e.g. a predictor) is part of
    the network so that DDP and the optimizer treat it like every other trained layer.
    """

    def __init__(self, trunk: nn.Module, projector: nn.Module, head: nn.Module | None = None):
        super().__init__()
        self.trunk, self.projector, self.head = trunk, projector, head

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, *small: torch.Tensor):
        h1 = self.trunk(x1)
        z = [self.projector(h1), self.projector(self.trunk(x2))]
        # Multi-crop's small views share one resolution, so they go through as one batch (one forward for DDP).
        if small:
            z += self.projector(self.trunk(torch.cat(small))).chunk(len(small))
        p = tuple(self.head(v) for v in z) if self.head is not None else ()
        return tuple(z), p, h1.detach()


def build_network(config: TrainConfig, head: nn.Module | None = None) -> TwinNetwork:
    """The config's trunk and projector at random init (zero-init residuals if asked), with the objective's head."""
    model_config = ModelConfig(architecture=config.architecture)
    trunk = Encoder(model_config, zero_init_residual=config.zero_init_residual)
    return TwinNetwork(trunk, ProjectorHead(model_config.embedding_dim, config.projector), head)
