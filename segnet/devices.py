"""Where segnet runs: the device (`--device`), each torchrun rank's GPU, and the mixed precision it may
use (`--amp`).

Device names and feature detection are `hedprep.devices`'s (`resolve_device`, `bf16_supported`), so
that `--device` and bf16 mean the same for HED and for the segmentation models; that module does not
load HED's network.
"""

from __future__ import annotations

import os
import warnings

import torch

from hedprep.devices import bf16_supported as native_bf16
from hedprep.devices import resolve_device
from segnet.errors import SegnetOptionError

__all__ = ["amp_dtype", "native_bf16", "rank_device", "resolve_device", "resolve_rank_device"]


def rank_device(requested: str, local_rank: int | None, local_world: int, gpus: int) -> str:
    """The device name one process uses: a pure function of what it was asked for and where it runs.

    Args:
        requested: `--device`: auto, cpu, cuda or cuda:N.
        local_rank: torchrun's LOCAL_RANK (None without torchrun).
        local_world: processes of the job on this machine (torchrun's LOCAL_WORLD_SIZE; 1 without).
        gpus: CUDA devices this process sees.

    Under torchrun each rank takes `cuda:LOCAL_RANK` for `cuda` (and for `auto` where there are GPUs);
    `cuda:N` names one GPU, so it is refused when several ranks share this machine. Without a GPU
    `cuda` stays `cuda`, for `resolve_device` to refuse with its one line.
    """
    if requested == "auto":
        requested = "cuda" if gpus > 0 else "cpu"
    if not requested.startswith("cuda") or gpus == 0:
        return requested
    if requested != "cuda":
        if local_world > 1:
            raise SegnetOptionError(f"--device {requested}: under torchrun with {local_world} processes on this "
                                    "machine each rank takes its own GPU; use --device cuda")
        return requested
    if local_rank is None:
        return "cuda"
    if local_rank >= gpus:
        raise SegnetOptionError(f"--device cuda: LOCAL_RANK {local_rank} but this machine shows {gpus} GPU(s); "
                                "start at most one process per GPU (torchrun --nproc-per-node)")
    return f"cuda:{local_rank}"


def resolve_rank_device(requested: str = "auto") -> torch.device:
    """This process's device (see `rank_device`), checked, and made CUDA's current device."""
    local_rank = os.environ.get("LOCAL_RANK")
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    name = rank_device(str(requested), int(local_rank) if local_rank is not None else None,
                       int(os.environ.get("LOCAL_WORLD_SIZE", "1")), gpus)
    device = resolve_device(name)
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
    return device


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype of `--amp` on `device` (bfloat16), or None (with a warning) where bf16 is
    not native: emulated bf16 on a CPU without AVX512-BF16/AMX is slower than float32."""
    if native_bf16(device):
        return torch.bfloat16
    warnings.warn(f"--amp: {device} has no native bfloat16; training in float32", RuntimeWarning, stacklevel=2)
    return None
