"""LARS (You et al. 2017) as Barlow Twins uses it, and the warm-up + cosine learning-rate schedule."""
from __future__ import annotations

import math

import torch
from torch import nn


def param_groups(model: nn.Module, lr_weights: float, lr_biases: float) -> list[dict]:
    """Two groups: weights (decay + adaptation) and biases/BN parameters (neither), as in the official code.

    A parameter counts as bias/norm when it is one-dimensional; flags are plain bools so the optimizer's
    state dict stays loadable with torch.load(weights_only=True).
    """
    weights, biases = [], []
    for p in model.parameters():
        if p.requires_grad:
            (biases if p.ndim == 1 else weights).append(p)
    return [
        {"params": weights, "base_lr": lr_weights, "lr": lr_weights, "exclude": False},
        {"params": biases, "base_lr": lr_biases, "lr": lr_biases, "exclude": True},
    ]


class LARS(torch.optim.Optimizer):
    """SGD with momentum where each weight tensor's step is rescaled by eta·‖w‖/‖g + wd·w‖.

    Groups with exclude=True get neither weight decay nor the trust-ratio rescaling.
    """

    def __init__(self, params, lr: float = 0.0, weight_decay: float = 0.0, momentum: float = 0.9,
                 eta: float = 0.001):
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta, exclude=False)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                dp = p.grad
                if not g["exclude"]:
                    dp = dp.add(p, alpha=g["weight_decay"])
                    param_norm, update_norm = torch.norm(p), torch.norm(dp)
                    one = torch.ones_like(param_norm)
                    q = torch.where(param_norm > 0.0,
                                    torch.where(update_norm > 0.0, g["eta"] * param_norm / update_norm, one), one)
                    dp = dp.mul(q)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"]
                mu.mul_(g["momentum"]).add_(dp)
                p.add_(mu, alpha=-g["lr"])
        return loss


def lr_scale(step: int, total_steps: int, warmup_steps: int, final_ratio: float) -> float:
    """Multiplier of the base lr at a step: linear warm-up from 0, then cosine down to final_ratio."""
    if step < warmup_steps:
        return step / warmup_steps
    span = max(1, total_steps - warmup_steps)
    q = 0.5 * (1.0 + math.cos(math.pi * min(step - warmup_steps, span) / span))
    return q + final_ratio * (1.0 - q)


def set_lr(optimizer: torch.optim.Optimizer, scale: float) -> None:
    """Set every group's lr to its base_lr × scale (base_lr already includes the batch/256 factor)."""
    for g in optimizer.param_groups:
        g["lr"] = g["base_lr"] * scale
