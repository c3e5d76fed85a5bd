"""Where segnet runs: the device (`--device`) and the mixed precision it may use (`--amp`)."""

from __future__ import annotations

import warnings

import torch

from segnet.errors import SegnetError, SegnetOptionError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: str = "auto") -> torch.device:
    """`auto` -> cuda when available, else cpu; `cuda` without a GPU is a one-line error."""
    name = str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SegnetError(f"--device {name}: no CUDA GPU is available here; use --device cpu")
    if name != "cpu" and not name.startswith("cuda"):
        raise SegnetOptionError(f"--device {name}: unknown device; choose one of {', '.join(DEVICES)}")
    return torch.device(name)


def native_bf16(device: torch.device) -> bool:
    """True where bfloat16 runs natively: bf16-capable GPUs, CPUs with AVX512-BF16 or AMX."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype of `--amp` on `device` (bfloat16), or None (with a warning) where bf16 is
    not native: emulated bf16 on a CPU without AVX512-BF16/AMX is slower than float32."""
    if native_bf16(device):
        return torch.bfloat16
    warnings.warn(f"--amp: {device} has no native bfloat16; training in float32", RuntimeWarning, stacklevel=2)
    return None
