"""Devices by name and what their hardware runs natively, for HED and for segnet alike.

`--device` means the same in `hedprep` and `segnet` (`resolve_device`), and so does native bf16
(`bf16_supported`). This module imports torch and nothing of HED's network, so segnet can use it
without loading `hedprep.hed`.
"""

from __future__ import annotations

import torch

from hedprep.errors import HedprepError, OptionError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """`auto` -> cuda when available, else cpu; `cuda` without a GPU is an error."""
    name = str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise HedprepError(f"--device {name}: no CUDA GPU is available here; use --device cpu")
    if name != "cpu" and not name.startswith("cuda"):
        raise OptionError(f"--device {name}: unknown device; choose one of {', '.join(DEVICES)}")
    return torch.device(name)


def bf16_supported(device: torch.device) -> bool:
    """True where bfloat16 convolutions run natively: AVX512-BF16/AMX CPUs, bf16-capable GPUs."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def tf32_supported(device: torch.device) -> bool:
    """True where float32 convolutions can run as TF32: CUDA GPUs of compute capability 8.0 and later."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0)
