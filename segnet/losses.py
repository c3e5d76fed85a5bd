"""The training loss, built from the run's configuration."""

from __future__ import annotations

from collections.abc import Callable

import torch

from segnet.config import TrainConfig
from segnet.deeplab import AuxOutputs
from segnet.errors import SegnetOptionError
from segnet.ops import cross_entropy

IGNORE = 255  # the label of pixels no loss or metric counts

# What the network that trains returns (logits, or `AuxOutputs` with --aux-loss), labels -> the loss
LossFunction = Callable[[torch.Tensor | AuxOutputs, torch.Tensor], torch.Tensor]


def cross_entropy_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the labelled pixels of logits (N, C, H, W), in float32, and int64 labels (N, H, W)."""
    return cross_entropy(logits.float(), labels, IGNORE)


def with_aux_loss(weight: float) -> LossFunction:
    """The loss of `AuxOutputs`: the model's cross-entropy plus `weight` times the auxiliary head's."""

    def loss(outputs: AuxOutputs, labels: torch.Tensor) -> torch.Tensor:
        return cross_entropy_loss(outputs.out, labels) + weight * cross_entropy_loss(outputs.aux, labels)

    return loss


def make_loss(config: TrainConfig) -> LossFunction:
    """The loss `config` trains with: per-pixel cross-entropy, pixels labelled 255 left out, plus
    `config.aux_loss` times the auxiliary head's (when it is above 0)."""
    if config.aux_loss < 0:
        raise SegnetOptionError(f"--aux-loss {config.aux_loss}: must be 0 (no auxiliary head) or more")
    return with_aux_loss(config.aux_loss) if config.aux_loss > 0 else cross_entropy_loss
