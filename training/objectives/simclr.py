"""SimCLR (Chen et al. 2020): NT-Xent over the 2N views of the global batch, 2N − 2 negatives per anchor.

For each of the 2N anchors (both views of every image on every rank), with u = z/‖z‖,
    ℓ_a = −log( exp(u_a·u_pos(a) / τ) / Σ_{k ≠ a} exp(u_a·u_k / τ) ),   loss = mean over the 2N anchors.
Default τ = 0.1, the paper's ImageNet setting (google-research/simclr README: "--temperature=0.1 ... reflects the
default hyperparameters in our paper"; the authors use 0.5 for CIFAR-10 at batch 512).
Under DDP every rank gathers all ranks' projections with gradients (`gather_rows`: its backward sums the
gradients over ranks), scores only its own anchors against all 2N candidates, and sums the partial losses with an
identity backward, so each rank's rows receive the single-process gradient.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..distributed import gather_rows, sum_identity_grad
from .base import Objective, Views, exact, positive


def _scores(z1: torch.Tensor, z2: torch.Tensor, temperature: float):
    """(logits of this rank's 2n anchors over all 2N candidates, their positives, self mask, 2N) in full precision."""
    d = z1.shape[1]
    both, start = gather_rows(torch.cat([F.normalize(exact(z1), dim=1), F.normalize(exact(z2), dim=1)], dim=1))
    u1, u2 = both[:, :d], both[:, d:]
    n, rows = u1.shape[0], z1.shape[0]
    mine = torch.arange(start, start + rows, device=z1.device)
    candidates = torch.cat([u1, u2])  # index i: view 1 of image i; N + i: view 2 of image i
    anchors = torch.cat([u1[mine], u2[mine]])  # taken from the gathered rows, so every gradient goes back through it
    logits = anchors @ candidates.T / temperature
    itself = torch.cat([mine, n + mine])
    partner = torch.cat([n + mine, mine])
    is_self = torch.zeros_like(logits, dtype=torch.bool)
    is_self[torch.arange(2 * rows, device=z1.device), itself] = True
    return logits.masked_fill(is_self, float("-inf")), partner, is_self, 2 * n


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Projector outputs of two views [n_local, D] → NT-Xent of the global batch (mean over its 2N anchors)."""
    with torch.autocast(device_type=z1.device.type, enabled=False):
        logits, partner, _, anchors = _scores(z1, z2, temperature)
        return sum_identity_grad(F.cross_entropy(logits, partner, reduction="sum")) / anchors


@dataclass
class Settings:
    """The softmax temperature τ."""

    temperature: float = 0.1

    def __post_init__(self):
        positive("temperature", self.temperature, strict=True)


class SimCLR(Objective):
    """Contrastive: each view must pick its partner out of the 2N − 1 other views of the global batch."""

    name = "simclr"
    title = "SimCLR (Chen et al. 2020)"
    Settings = Settings

    def loss(self, views: Views) -> tuple[torch.Tensor, dict]:
        """NT-Xent; parts: mean cosine to the partner and to the negatives, and how often the partner scores best."""
        z1, z2 = views.z[:2]
        tau = self.settings.temperature
        with torch.autocast(device_type=z1.device.type, enabled=False):
            logits, partner, is_self, anchors = _scores(z1, z2, tau)
            loss = sum_identity_grad(F.cross_entropy(logits, partner, reduction="sum")) / anchors
            with torch.no_grad():
                cos = logits.masked_fill(is_self, 0.0) * tau
                rows = torch.arange(len(partner), device=cos.device)
                positive_cos = cos[rows, partner]
                negative_cos = (cos.sum(1) - positive_cos) / (anchors - 2)
                found = (logits.argmax(1) == partner).to(cos.dtype)
                stats = sum_identity_grad(torch.stack([positive_cos.sum(), negative_cos.sum(), found.sum()]))
        parts = dict(zip(("positive_cos", "negative_cos", "top1"), (stats / anchors).unbind()))
        return loss, parts


OBJECTIVE = SimCLR
