"""Data-parallel pretraining on several GPUs or nodes: what each process of a ``torchrun`` job is
(its rank), the process group (NCCL on GPUs, gloo on CPUs), and the few collective decisions the
training loop needs. One process without torchrun is rank 0 of 1 and none of this runs."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """The one process that writes checkpoints and reports progress."""
        return self.rank == 0


def ranks_from_env() -> Ranks:
    """What torchrun (``torch.distributed.run``) tells this process in RANK, WORLD_SIZE, LOCAL_RANK."""
    env = os.environ
    return Ranks(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))


def process_device(ranks: Ranks, device: torch.device) -> torch.device:
    """Each process of a multi-GPU job drives its own GPU."""
    return torch.device("cuda", ranks.local_rank) if ranks.world > 1 and device.type == "cuda" else device


def join(ranks: Ranks, device: torch.device) -> None:
    """Join the job's process group (once per process)."""
    if ranks.world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def data_parallel(model: torch.nn.Module, ranks: Ranks, device: torch.device) -> torch.nn.Module:
    """``model`` wrapped so gradients are averaged across processes (the same module alone otherwise)."""
    if ranks.world == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def any_rank(flag: bool, ranks: Ranks, device: torch.device) -> bool:
    """True when ``flag`` is true on any process, so all stop at the same step (else they deadlock)."""
    if ranks.world == 1:
        return flag
    value = torch.tensor([float(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())
