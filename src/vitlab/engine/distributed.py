"""Multi-process training with PyTorch's own engine: launched by `torchrun`, DistributedDataParallel inside.

`torchrun --nproc-per-node N -m vitlab train ...` sets RANK / WORLD_SIZE / LOCAL_RANK (and the rendezvous for
multi-node runs); this module reads them, joins the process group (NCCL on CUDA, gloo on CPU) and offers the few
collectives the trainer needs. Without those variables everything is a no-op and training runs in one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Only this process logs and writes to the run directory."""
        return self.rank == 0


def init_distributed(device: str) -> DistContext:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local)
    return DistContext(rank, world, local)


def all_reduce_sum(values: list[float], ctx: DistContext, device: torch.device) -> list[float]:
    if not ctx.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def shutdown(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()
