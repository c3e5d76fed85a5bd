"""The three operations of the models and the loss whose CUDA backward passes are nondeterministic, each
with a deterministic form that runs where `torch.use_deterministic_algorithms(True)` is on (`--deterministic`).

On CUDA, `F.interpolate`'s bilinear backward, `AdaptiveAvgPool2d`'s backward and `nll_loss` use atomic
adds, whose order varies from run to run; under deterministic algorithms torch refuses them. Here they
become matrix products and reductions whose results do not depend on scheduling:

- `resize`: bilinear resizing as two matrix products with interpolation matrices (half-pixel centres,
  as `F.interpolate(..., align_corners=False)`), computed in float32;
- `global_average`: a mean over height and width;
- `cross_entropy`: log-softmax, then the log-probability of each labelled pixel by `gather` (whose CUDA
  backward is deterministic under the flag), averaged over the pixels not ignored.

On a CPU, and on CUDA without the flag, the usual torch operations run: they are deterministic on a
CPU, and faster. tests/test_ops.py checks each form against the torch operation it replaces.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _deterministic_on(x: Tensor) -> bool:
    return x.is_cuda and torch.are_deterministic_algorithms_enabled()


def interpolation_matrix(in_size: int, out_size: int, device: torch.device | None = None) -> Tensor:
    """(out_size, in_size) float32 weights of bilinear resizing along one axis, half-pixel centres:
    output i samples the input at (i + 0.5) * in/out - 0.5, clamped at the first pixel."""
    scale = in_size / out_size
    source = ((torch.arange(out_size, dtype=torch.float64) + 0.5) * scale - 0.5).clamp(min=0)
    lower = source.floor().long().clamp(max=in_size - 1)
    upper = (lower + 1).clamp(max=in_size - 1)
    weight_upper = source - lower
    matrix = torch.zeros(out_size, in_size, dtype=torch.float64)
    rows = torch.arange(out_size)
    matrix.index_put_((rows, lower), 1 - weight_upper, accumulate=True)
    matrix.index_put_((rows, upper), weight_upper, accumulate=True)
    return matrix.float().to(device)


def resize_by_matrices(x: Tensor, size: Sequence[int]) -> Tensor:
    """Bilinear resizing of (N, C, H, W) to `size` as two float32 matrix products (deterministic backward)."""
    rows = interpolation_matrix(x.shape[-2], int(size[0]), x.device)
    cols = interpolation_matrix(x.shape[-1], int(size[1]), x.device)
    with torch.autocast(x.device.type, enabled=False):
        out = torch.matmul(torch.matmul(rows, x.float()), cols.t())
    return out.to(x.dtype)


def resize(x: Tensor, size: Sequence[int]) -> Tensor:
    """Bilinear resizing to `size` (H, W), half-pixel centres (`align_corners=False`, as torchvision)."""
    if _deterministic_on(x):
        return resize_by_matrices(x, size)
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def global_average(x: Tensor) -> Tensor:
    """(N, C, H, W) -> (N, C, 1, 1): the mean of each channel."""
    if _deterministic_on(x):
        return x.mean(dim=(-2, -1), keepdim=True)
    return F.adaptive_avg_pool2d(x, 1)


class GlobalAverage(nn.Module):
    """`global_average` as a module: torchvision's `AdaptiveAvgPool2d(1)` place in a Sequential."""

    def forward(self, x: Tensor) -> Tensor:
        return global_average(x)


def masked_cross_entropy(logits: Tensor, labels: Tensor, ignore_index: int) -> Tensor:
    """Mean cross-entropy over the pixels whose label is not `ignore_index`, by log-softmax and gather."""
    return pixel_cross_entropy(logits, labels, ignore_index).sum() / (labels != ignore_index).sum()


def pixel_cross_entropy(logits: Tensor, labels: Tensor, ignore_index: int) -> Tensor:
    """Each pixel's cross-entropy (N, H, W), 0 where the label is `ignore_index`, by log-softmax and gather
    (deterministic everywhere; for losses that weigh pixels)."""
    valid = labels != ignore_index
    picked = F.log_softmax(logits, dim=1).gather(1, torch.where(valid, labels, 0).unsqueeze(1)).squeeze(1)
    return -(picked * valid)


def cross_entropy(logits: Tensor, labels: Tensor, ignore_index: int) -> Tensor:
    """`F.cross_entropy(logits, labels, ignore_index=...)`: the mean over pixels not ignored."""
    if _deterministic_on(logits):
        return masked_cross_entropy(logits, labels, ignore_index)
    return F.cross_entropy(logits, labels, ignore_index=ignore_index)
