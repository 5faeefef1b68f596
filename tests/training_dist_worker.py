"""Run under `torchrun --nproc_per_node=2`: the losses and a DDP model step on each rank's part of a fixed batch.

Barlow Twins' loss and a DDP model step, then every objective's loss on projections split unevenly (5 + 11 rows)
and a DDP step of a tiny network with the objective's head and state. Each rank saves what it computed to
OUT/rank{r}.pt; tests/test_training_distributed.py compares with one process on the whole batch.
"""
import os
import sys
import threading
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from training.distributed import convert_sync_batchnorm, setup, teardown
from training.model import TwinNetwork
from training.objectives import MEMBERS, Views, get
from training.objectives.barlow_twins import barlow_twins_loss
from training.objectives.byol import regression_loss
from training.objectives.simclr import nt_xent
from training.objectives.simsiam import negative_cosine
from training.objectives.vicreg import vicreg_loss

# Smaller predictors than the authors' 4096 keep the test fast; the code path is the same.
SMALL = {"byol": {"predictor_hidden": 16}}
UNEVEN = 5  # rank 0's rows of the 16 in the uneven split (as when one rank's batch lost unreadable files)
# The public loss functions on two [n, D] projections (BYOL's and SimSiam's take the first as the prediction).
PROJECTION_LOSSES = {
    "barlow_twins": lambda a, b: barlow_twins_loss(a, b)[0],
    "vicreg": lambda a, b: vicreg_loss(a, b)[0],
    "simclr": lambda a, b: nt_xent(a, b, 0.1),
    "byol": regression_loss,
    "simsiam": negative_cosine,
}


def fixed_batch(n=16, d=24, seed=0):
    """The global batch every process draws identically: two correlated views."""
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(n, d, generator=g) * 3 + 1
    z2 = 0.6 * z1 + torch.randn(n, d, generator=g)
    return z1, z2


def small_view(z1, seed=2):
    """A multi-crop small view's projector output for the fixed batch, correlated with view 1."""
    g = torch.Generator().manual_seed(seed)
    return 0.4 * z1 + torch.randn(z1.shape, generator=g)


class TwoViews(nn.Module):
    """Both views through one network in one call, as training.model.TwinNetwork does."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x1, x2):
        return self.net(x1), self.net(x2)


def tiny_net(seed=0):
    """Conv-BN-ReLU-pool trunk + Linear-BN-ReLU-Linear projector: every kind of layer the real model has."""
    torch.manual_seed(seed)
    return TwoViews(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 16, bias=False),
                                  nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 12, bias=False)))


def tiny_twin(name: str, seed: int = 0):
    """(TwinNetwork with conv-BN trunk, Linear-BN projector and the objective's head, the objective)."""
    torch.manual_seed(seed)
    objective = get(name, **SMALL.get(name, {}))
    trunk = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten())
    projector = nn.Sequential(nn.Linear(8, 16, bias=False), nn.BatchNorm1d(16), nn.ReLU(),
                              nn.Linear(16, 12, bias=False))
    return TwinNetwork(trunk, projector, objective.head(12)), objective


def objective_step(network, objective, x1, x2, scale: float = 1.0) -> dict:
    """One step as the loop takes it: forward, loss, backward (× scale), after_step; what it left, detached."""
    z, p, _ = network(x1, x2)
    loss, parts = objective.loss(Views(z=z, p=p, inputs=(x1, x2)))
    (loss * scale).backward()
    module = getattr(network, "module", network)
    objective.after_step(module, 1, 10)
    return {"loss": loss.detach(), "parts": {k: torch.as_tensor(v).detach().clone() for k, v in parts.items()},
            "grads": {k: q.grad.detach().clone() for k, q in module.named_parameters()},
            "state": {k: v.detach().clone() for k, v in objective.state_dict().items()}}


def images(n=16, seed=1):
    """A fixed global batch of two image views."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=g), torch.randn(n, 3, 8, 8, generator=g)


def exit_with_parent(poll: float = 0.5) -> None:
    """Exit at once when the torchrun agent that started this worker is gone."""
    # torchrun puts each worker in a session of its own, so when the agent is killed outright (SIGKILL from a test
    # timeout or an interrupted pytest) nothing reaches the workers, and one blocked in a collective would wait out
    # gloo's 30-minute timeout. Polling the parent pid needs no platform-specific prctl.
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(poll)
        os._exit(3)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def main(out: Path):
    exit_with_parent()
    rt = setup("cpu")
    rank, world = rt.rank, rt.world_size
    objective = get("barlow_twins", lambd=0.0051)

    def loss_fn(*z):
        return objective.loss(Views(z=z))[0]

    z1, z2 = fixed_batch()
    part = slice(rank * len(z1) // world, (rank + 1) * len(z1) // world)
    a, b = z1[part].clone().requires_grad_(), z2[part].clone().requires_grad_()
    loss = loss_fn(a, b)
    loss.backward()
    # Multi-crop: the small view is paired with both large ones, each pair with its own global statistics.
    a_mc, b_mc = z1[part].clone().requires_grad_(), z2[part].clone().requires_grad_()
    s_mc = small_view(z1)[part].clone().requires_grad_()
    multi_crop_loss = loss_fn(a_mc, b_mc, s_mc)
    multi_crop_loss.backward()

    net = convert_sync_batchnorm(tiny_net(), rt.device)
    ddp = nn.parallel.DistributedDataParallel(net)
    x1, x2 = images()
    model_loss = loss_fn(*ddp(x1[part], x2[part]))
    (model_loss * world).backward()  # what the training loop does: undo DDP's gradient averaging
    grads = {k: p.grad.detach().clone() for k, p in net.named_parameters()}
    running = {k: v.clone() for k, v in net.state_dict().items() if "running" in k}

    # The public losses on unevenly split projections (gather_rows pads), and one DDP step per objective.
    uneven = slice(0, UNEVEN) if rank == 0 else slice(UNEVEN, len(z1))
    projection_losses = {}
    for name, loss_of in PROJECTION_LOSSES.items():
        u1, u2 = z1[uneven].clone().requires_grad_(), z2[uneven].clone().requires_grad_()
        value = loss_of(u1, u2)
        value.backward()
        projection_losses[name] = {"loss": value.detach(), "grads": (u1.grad, u2.grad)}
    steps = {}
    for name in MEMBERS:
        network, objective = tiny_twin(name)
        network = convert_sync_batchnorm(network, rt.device)
        objective.attach(network)  # as the loop: after the BatchNorm conversion, before DDP
        steps[name] = objective_step(nn.parallel.DistributedDataParallel(network), objective, x1[part], x2[part],
                                     scale=world)

    torch.save({"loss": loss.detach(), "grad_z1": a.grad, "grad_z2": b.grad, "part": (part.start, part.stop),
                "multi_crop_loss": multi_crop_loss.detach(),
                "multi_crop_grads": (a_mc.grad, b_mc.grad, s_mc.grad),
                "model_loss": model_loss.detach(), "param_grads": grads, "running": running,
                "uneven": (uneven.start, uneven.stop), "projection_losses": projection_losses, "steps": steps,
                "world": world}, out / f"rank{rank}.pt")
    dist.barrier()
    teardown()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
