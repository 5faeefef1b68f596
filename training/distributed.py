"""Process group setup from torchrun's environment, autograd-aware sums over ranks, and SyncBatchNorm."""
from __future__ import annotations

import os
import re
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from btembed.backends.torch import pick_device
from btembed.errors import BtembedError


@dataclass
class Runtime:
    """Where this process runs: rank, world size, local rank, device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """True on the process that writes checkpoints and logs."""
        return self.rank == 0


def training_device(name: str) -> torch.device:
    """auto, cpu, cuda or cuda:N (the devices gloo and NCCL serve); a GPU asked for and absent is a clear error."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", name):
        raise BtembedError(f"device must be auto, cpu, cuda or cuda:N, not {name!r}")
    return pick_device(name)


def setup(device: str = "auto") -> Runtime:
    """Read torchrun's RANK/WORLD_SIZE/LOCAL_RANK and join the process group (NCCL on GPU, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = training_device(device)
    use_cuda = dev.type == "cuda"
    if use_cuda and (world > 1 or dev.index is None):
        dev = torch.device(f"cuda:{local}")  # under torchrun each process takes the GPU of its local rank
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", device_id=dev if use_cuda else None)
    return Runtime(rank, world, local, dev)


def teardown() -> None:
    """Leave the process group, if any."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class PeerFailed(BtembedError):
    """Another process of the run failed; this one stops too."""


def failed_ranks(failed: bool, device: torch.device) -> list[int]:
    """All ranks: the ranks that report a failure (one small all_reduce; [0] or [] outside a process group)."""
    if not is_distributed():
        return [0] if failed else []
    votes = torch.zeros(dist.get_world_size(), dtype=torch.int64, device=device)
    votes[dist.get_rank()] = int(failed)
    dist.all_reduce(votes)
    return [r for r, v in enumerate(votes.tolist()) if v]


@contextmanager
def stop_together(what: str, device: torch.device):
    """Run a block that may fail on some ranks only (rank 0's files, its monitor): if it fails anywhere, every rank
    raises when leaving it, instead of the others waiting for the failed one in their next collective."""
    # Every rank must enter and leave the block at the same point of the run: the agreement is a collective.
    error = None
    try:
        yield
    except Exception as e:  # re-raised below, after the other ranks have heard of it
        error = e
    failed = failed_ranks(error is not None, device)
    if error is not None:
        raise error
    if failed:
        raise PeerFailed(f"process {', '.join(map(str, failed))} of {dist.get_world_size()} failed while {what} "
                         "(its own message says why); stopping too")


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; the gradient either passes through unchanged or is summed over ranks too."""

    @staticmethod
    def forward(ctx, x, sum_grad: bool):
        ctx.sum_grad = sum_grad
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad):
        if ctx.sum_grad:  # torch.distributed.nn's all_reduce semantics, without its deprecation
            grad = grad.clone()
            dist.all_reduce(grad)
        return grad, None


def sum_identity_grad(x: torch.Tensor) -> torch.Tensor:
    """Σ over ranks, for a result every rank then uses identically (its gradient is already the full one)."""
    return _AllReduceSum.apply(x, False) if is_distributed() else x


def sum_all_reduce_grad(x: torch.Tensor) -> torch.Tensor:
    """Σ over ranks, for a result each rank uses on its own rows (its gradient is summed over ranks too)."""
    return _AllReduceSum.apply(x, True) if is_distributed() else x


def global_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean of per-sample values over every rank's rows (each rank may hold a different number of them).

    Every rank gets the same number; the gradient w.r.t. its own rows is that of the single-process mean.
    """
    total = sum_identity_grad(torch.stack([values.sum(), values.new_tensor(float(values.numel()))]))
    return total[0] / total[1].detach()


class _GatherRows(torch.autograd.Function):
    """All ranks' rows in rank order; the backward sums every rank's gradient and keeps this rank's rows."""

    @staticmethod
    def forward(ctx, x, sizes: list[int], rank: int):
        # all_gather needs equal shapes: pad to the largest rank's rows (a rank may have dropped unreadable files).
        padded = x.new_zeros((max(sizes), *x.shape[1:]))
        padded[:x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded)
        ctx.start, ctx.rows = sum(sizes[:rank]), sizes[rank]
        return torch.cat([part[:n] for part, n in zip(parts, sizes)])

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)  # every rank's loss may depend on every row
        return grad[ctx.start:ctx.start + ctx.rows], None, None


def gather_rows(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(every rank's rows of x in rank order, where this rank's rows start), with gradients flowing back to them."""
    if not is_distributed():
        return x, 0
    counts = [torch.zeros(1, dtype=torch.int64, device=x.device) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, torch.tensor([x.shape[0]], device=x.device))
    sizes, rank = [int(n) for n in counts], dist.get_rank()
    return _GatherRows.apply(x, sizes, rank), sum(sizes[:rank])


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean over ranks of a detached tensor (for logging)."""
    if not is_distributed():
        return values
    values = values.detach().clone()
    dist.all_reduce(values)
    return values / dist.get_world_size()


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics cover the batch of all ranks, on any device and backend.

    torch's nn.SyncBatchNorm refuses CPU tensors, so CPU/gloo runs (and our tests) use this; it computes the
    same thing with two autograd-aware all_reduces per layer.
    """

    def _check_input_dim(self, x):
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input, got {x.dim()}D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed()):
            use_batch = self.training or not self.track_running_stats
            if self.training and self.track_running_stats:
                self.num_batches_tracked.add_(1)
            momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                use_batch, momentum, self.eps)
        dims = [0] + list(range(2, x.dim()))
        shape = [1, -1] + [1] * (x.dim() - 2)
        xf = x.float()
        count = torch.tensor([float(x.numel() // x.shape[1])], device=x.device)
        sums = sum_all_reduce_grad(torch.cat([xf.sum(dims), count]))
        n = sums[-1].detach()
        mean = sums[:-1] / n
        centred = xf - mean.view(shape)
        var = sum_all_reduce_grad(centred.pow(2).sum(dims)) / n
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * n / max(n - 1, 1), alpha=m)
        return y.to(x.dtype)


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm → global-batch BatchNorm: torch's fused SyncBatchNorm on CUDA, GlobalBatchNorm elsewhere."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm):
        out = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats)
        if module.affine:
            with torch.no_grad():
                out.weight.copy_(module.weight)
                out.bias.copy_(module.bias)
        if module.track_running_stats:
            out.running_mean.copy_(module.running_mean)
            out.running_var.copy_(module.running_var)
            out.num_batches_tracked.copy_(module.num_batches_tracked)
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, convert_sync_batchnorm(child, device))
    return out
