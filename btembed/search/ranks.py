"""The ranks of a run started by torchrun: found in the environment, joined with torch.distributed (NCCL between
GPUs, gloo on CPU), and small JSON messages passed between them — JSON, never pickle."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import timedelta

from ..errors import BtembedError

# A rank waits for the slowest one to finish its shard before the merge: hours at archive scale, not the default
# 10-30 minutes of torch.distributed.
COLLECTIVE_TIMEOUT = timedelta(hours=48)


def torchrun_ranks() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) when torchrun started more than one process, else None."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        return None
    return (rank, world, local) if world > 1 and "MASTER_ADDR" in os.environ else None


def rank_device(device: str, local_rank: int) -> str:
    """The device of a rank: its own GPU (cuda:LOCAL_RANK) when there are GPUs, else the CPU."""
    import torch

    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise BtembedError(f"under torchrun --device must be auto, cpu or cuda, not {device!r}")
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return "cpu"
    if not torch.cuda.is_available():
        raise BtembedError("--device cuda was asked for, but this machine has no CUDA GPU; use --device cpu")
    if local_rank >= torch.cuda.device_count():
        raise BtembedError(f"local rank {local_rank} has no GPU of its own ({torch.cuda.device_count()} here); "
                           "start torchrun with --nproc_per_node at most the number of GPUs")
    return f"cuda:{local_rank}"  # one GPU per rank, whatever cuda:N was asked for


class RankLost(BtembedError):
    """A rank could not join, or another rank stopped answering (it died; torchrun stops the rest)."""


def _first_line(error: BaseException) -> str:
    """The first sentence of a torch.distributed error (gloo appends advice and an emoji to it)."""
    line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return line.split(". ")[0].rstrip(".")


@dataclass
class RankGroup:
    """This process's place among the ranks, and the collectives a sharded run needs."""

    rank: int
    world: int
    local_rank: int
    device: str

    @classmethod
    def join(cls, device: str = "auto") -> "RankGroup":
        """Join the torchrun process group: NCCL when every rank has a GPU, gloo otherwise."""
        import torch
        import torch.distributed as dist

        found = torchrun_ranks()
        if found is None:
            raise BtembedError("not started by torchrun (WORLD_SIZE/MASTER_ADDR unset)")
        rank, world, local = found
        dev = rank_device(device, local)
        if dev.startswith("cuda"):
            torch.cuda.set_device(dev)
        if not dist.is_initialized():
            try:
                dist.init_process_group("nccl" if dev.startswith("cuda") else "gloo", timeout=COLLECTIVE_TIMEOUT)
            except Exception as e:  # noqa: BLE001 - torch raises several kinds; the user needs one line
                raise RankLost(f"rank {rank} could not join the torchrun process group ({_first_line(e)}); check "
                               "--rdzv-endpoint / MASTER_ADDR and that every node can reach it") from None
        return cls(rank, world, local, dev)

    @property
    def is_main(self) -> bool:
        """Rank 0 plans, merges and builds the search index."""
        return self.rank == 0

    def _tensor_device(self) -> str:
        return self.device if self.device.startswith("cuda") else "cpu"  # NCCL moves only GPU tensors

    def broadcast(self, message: dict | None = None) -> dict:
        """Rank 0's message (a JSON-able dict), on every rank; RankLost when a rank has died."""
        try:
            return self._broadcast(message)
        except Exception as e:  # noqa: BLE001 - gloo/NCCL errors of a dead peer
            raise RankLost(f"a rank stopped answering ({_first_line(e)}); what the ranks wrote is kept: run the "
                           "same command again to finish") from None

    def gather(self, message: dict) -> list[dict]:
        """Every rank's message, in rank order, on every rank; RankLost when a rank has died."""
        try:
            return self._gather(message)
        except Exception as e:  # noqa: BLE001 - gloo/NCCL errors of a dead peer
            raise RankLost(f"a rank stopped answering ({_first_line(e)}); what the ranks wrote is kept: run the "
                           "same command again to finish") from None

    def _broadcast(self, message: dict | None) -> dict:
        import torch
        import torch.distributed as dist

        data = json.dumps(message).encode() if self.is_main else b""
        size = torch.tensor([len(data)], dtype=torch.int64, device=self._tensor_device())
        dist.broadcast(size, 0)
        buf = (torch.frombuffer(bytearray(data), dtype=torch.uint8) if self.is_main
               else torch.empty(int(size.item()), dtype=torch.uint8)).to(self._tensor_device())
        dist.broadcast(buf, 0)
        return json.loads(bytes(buf.cpu().numpy()))

    def _gather(self, message: dict) -> list[dict]:
        import torch
        import torch.distributed as dist

        data = json.dumps(message).encode()
        dev = self._tensor_device()
        sizes = [torch.zeros(1, dtype=torch.int64, device=dev) for _ in range(self.world)]
        dist.all_gather(sizes, torch.tensor([len(data)], dtype=torch.int64, device=dev))
        longest = max(int(s.item()) for s in sizes)
        padded = torch.zeros(longest, dtype=torch.uint8)
        padded[:len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else padded[:0]
        parts = [torch.empty(longest, dtype=torch.uint8, device=dev) for _ in range(self.world)]
        dist.all_gather(parts, padded.to(dev))
        return [json.loads(bytes(p.cpu().numpy()[:int(s.item())])) for p, s in zip(parts, sizes)]

    def tell_done(self) -> None:
        """Rank 0: tell the ranks waiting for work that there is none (quietly, when some have died)."""
        try:
            self.broadcast({"kind": "done"})
        except Exception:  # noqa: BLE001 - a dead peer: torchrun is stopping the run anyway
            pass

    def leave(self) -> None:
        """Leave the process group (quietly, when a peer has died)."""
        import torch.distributed as dist

        try:
            if dist.is_initialized():
                dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - nothing is left to tell anyone
            pass
