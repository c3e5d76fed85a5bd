"""The torchrun process group of `segnet train` and `segnet evaluate`.

One group carries both kinds of tensors: gloo for CPU tensors and, on GPUs, nccl for CUDA ones
(`cpu:gloo,cuda:nccl`), so a metric summed on either device can be all-reduced.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Distribution:
    """This process's place in a torchrun job (world 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    device: torch.device | None = None
    grouped: bool = False  # in a torchrun process group (also with one process)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def process_group_backend(device: torch.device) -> str:
    """gloo on a CPU; on CUDA nccl for CUDA tensors and gloo for CPU ones."""
    return "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"


def init_distribution(device: torch.device) -> Distribution:
    """Join the torchrun process group (once per process) when started by torchrun, even as its only
    process: the data-parallel paths then run as on many GPUs (`make gpu-check` uses that)."""
    if "WORLD_SIZE" not in os.environ or "MASTER_ADDR" not in os.environ:
        return Distribution(device=device)
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend=process_group_backend(device))
    return Distribution(dist.get_rank(), dist.get_world_size(), device, grouped=True)


def barrier(dist_info: Distribution) -> None:
    """Wait for every rank (nothing to wait for outside a process group)."""
    if not dist_info.grouped:
        return
    import torch.distributed as dist

    device = dist_info.device
    if device is not None and device.type == "cuda":
        dist.barrier(device_ids=[device.index])
    else:
        dist.barrier()


def sum_over_ranks(value: int, dist_info: Distribution) -> int:
    """`value` summed over every rank (itself outside a process group)."""
    if not dist_info.grouped:
        return value
    import torch.distributed as dist

    total = torch.tensor([value], dtype=torch.int64)  # a CPU tensor: the group's gloo side carries it
    dist.all_reduce(total)
    return int(total.item())


def broadcast_buffers(model: torch.nn.Module, dist_info: Distribution) -> None:
    """Give every rank rank 0's buffers (BatchNorm's running statistics).

    DistributedDataParallel copies rank 0's buffers to the others at the start of each forward pass,
    and each rank then updates them with its own batch: after the last step of an epoch every rank
    holds statistics of its own last batch, while the checkpoint holds rank 0's.
    """
    if not dist_info.grouped:
        return
    import torch.distributed as dist

    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)
