"""How a training or evaluation run computes on its device: cuDNN autotuning, deterministic algorithms,
memory layout. These are process-wide torch settings, so `backend_settings` sets them for the length
of a run and puts the earlier values back.

- `cudnn.benchmark` (CUDA): cuDNN times its convolution algorithms for each new input shape and keeps
  the fastest. A progressive schedule has a few shapes, so the timing is paid a few times per run.
  The fastest algorithm may differ between runs, so it is off with `--deterministic`.
- `--deterministic`: `torch.use_deterministic_algorithms(True)`, cuDNN's deterministic algorithms,
  `CUBLAS_WORKSPACE_CONFIG=:4096:8` (cuBLAS's condition for deterministic matrix products), and the
  deterministic forms of `segnet.ops` (bilinear resize, global average, cross-entropy). A GPU run
  and its resume are then bit-exact on the same machine and software; it costs speed (measured by
  `make gpu-check`). On a CPU, training is deterministic without it.
- channels-last (NHWC) activations and weights: on CUDA, where cuDNN's tensor-core convolutions want
  them; on a CPU as measured (docs/performance.md).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

CUBLAS_DETERMINISTIC = ":4096:8"
# Measured on CPUs (benchmarks/segnet_train.py --section layout, docs/performance.md): see there.
CHANNELS_LAST_ON_CPU = False


def use_channels_last(device: torch.device, requested: bool | None) -> bool:
    """Whether to train in channels-last: as requested, else on CUDA (and on a CPU as measured)."""
    if requested is not None:
        return requested
    return device.type == "cuda" or CHANNELS_LAST_ON_CPU


@contextlib.contextmanager
def backend_settings(device: torch.device, deterministic: bool) -> Iterator[None]:
    """cuDNN autotuning on CUDA, or deterministic algorithms; the earlier settings are restored after."""
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
              os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    try:
        if deterministic:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_DETERMINISTIC
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
        elif device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = before[2], before[3]
        if before[4] is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = before[4]


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Mixed precision in `dtype` on `device`, or nothing."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
