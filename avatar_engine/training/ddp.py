"""Distributed setup: torch.distributed from torchrun's environment, or a single process.

``torchrun --nproc-per-node N -m avatar_engine.cli train ...`` (or ``torchrun ... $(which avatar-engine)
train ...``) sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``;
:func:`init_distributed` then joins the process group (NCCL on CUDA, gloo on CPU). Without them it
returns a single-process :class:`DistInfo` and nothing is initialised.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "init_distributed", "cleanup_distributed", "distributed", "all_reduce_mean"]


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size``, its device, whether it is rank 0."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the torchrun process group if there is one.

    Args:
        device: ``auto`` (CUDA if available, else CPU), ``cpu``, ``cuda``. With CUDA each process uses
            the GPU ``LOCAL_RANK``.
    """
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world)
    return DistInfo(rank, world, local, dev)


def cleanup_distributed() -> None:
    """Leave the process group (no-op when none)."""
    if dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def distributed(device: str = "auto") -> Iterator[DistInfo]:
    """``with distributed(device) as info:`` joins the torchrun process group (if any) for the block and
    always leaves it afterwards, also on errors (see :func:`init_distributed`)."""
    try:
        yield init_distributed(device)
    finally:
        cleanup_distributed()


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean of ``value`` over the processes (itself when not distributed)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        value = value.detach().clone()
        dist.all_reduce(value)
        value /= dist.get_world_size()
    return value
