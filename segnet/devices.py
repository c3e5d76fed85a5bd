"""Where segnet runs: the device (`--device`) and the mixed precision it may use (`--amp`).

Device names and feature detection are hedprep.hed's (`resolve_device`, `bf16_supported`), so that
`--device` and bf16 mean the same for HED and for the segmentation models.
"""

from __future__ import annotations

import warnings

import torch

from hedprep.hed import bf16_supported as native_bf16
from hedprep.hed import resolve_device

__all__ = ["amp_dtype", "native_bf16", "resolve_device"]


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype of `--amp` on `device` (bfloat16), or None (with a warning) where bf16 is
    not native: emulated bf16 on a CPU without AVX512-BF16/AMX is slower than float32."""
    if native_bf16(device):
        return torch.bfloat16
    warnings.warn(f"--amp: {device} has no native bfloat16; training in float32", RuntimeWarning, stacklevel=2)
    return None
