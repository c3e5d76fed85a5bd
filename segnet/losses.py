"""The training loss, built from the run's configuration."""

from __future__ import annotations

from collections.abc import Callable

import torch

from segnet.config import TrainConfig
from segnet.ops import cross_entropy

IGNORE = 255  # the label of pixels no loss or metric counts

LossFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the labelled pixels (float32 logits (N, C, H, W), int64 labels (N, H, W))."""
    return cross_entropy(logits, labels, IGNORE)


def make_loss(config: TrainConfig) -> LossFunction:
    """The loss `config` trains with: per-pixel cross-entropy, pixels labelled 255 left out."""
    return cross_entropy_loss
