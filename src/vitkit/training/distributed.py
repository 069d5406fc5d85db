"""torch.distributed set-up for runs under torchrun: gloo on CPU, NCCL on GPU."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    group: bool = False  # a process group of one was created (FSDP in one process)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init_distributed(device_type: str, need_group: bool = False) -> Dist:
    """Join the process group when torchrun's environment says there is one. need_group: a
    process group even for a single process (FSDP shards over a group of one)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        if need_group and not dist.is_initialized():
            dist.init_process_group("nccl" if device_type == "cuda" else "gloo", store=dist.HashStore(),
                                    rank=0, world_size=1)
        return Dist(group=need_group)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def all_mean(x: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.enabled:
        x = x.clone()
        dist.all_reduce(x)
        x /= d.world
    return x


def any_rank(flag: bool, d: Dist, device: torch.device) -> bool:
    """True if the flag is set on any rank, so all ranks stop at the same step."""
    if not d.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t)
    return bool(t.item() > 0)


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def shutdown(d: Dist) -> None:
    if (d.enabled or d.group) and dist.is_initialized():
        dist.destroy_process_group()
