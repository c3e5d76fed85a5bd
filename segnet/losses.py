"""The training loss, built from the run's configuration: cross-entropy (weighted by HED's edges for
dl-hed-loss), the auxiliary head's (`--aux-loss`) and the boundary head's (dl-boundary, dl-hed-head).

The boundary head's loss is class-balanced binary cross-entropy (HED's, GSCNN's, mmsegmentation's
boundary loss): over the N pixels a label covers (255 left out), with N+ boundary and N- other pixels,
a boundary pixel weighs N-/N and another N+/N, and the weighted sum is divided by N. Its targets:

- dl-boundary: label boundaries (`label_boundaries`): a labelled pixel whose 5x5 window (2 pixels each
  way, cut at the frame's border) holds another class than its own, 255 not counted as a class;
- dl-hed-head: HED's edge channel as soft targets t = edge / 255 in [0, 1]: a pixel's loss is
  -(N-/N t log p + N+/N (1 - t) log(1 - p)), with N+ = the sum of t over the labelled pixels (a soft
  count) and N- = N - N+; for targets of 0 and 1 this is the loss above.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from segnet.config import TrainConfig
from segnet.deeplab import VARIANT_SPECS, TrainingOutputs
from segnet.errors import SegnetOptionError
from segnet.ops import cross_entropy, pixel_cross_entropy

IGNORE = 255  # the label of pixels no loss or metric counts
BOUNDARY_LOSS_WEIGHT = 20.0  # the boundary head's loss, as GSCNN's and mmsegmentation's boundary loss weigh it
BOUNDARY_RADIUS = 2  # label boundaries: another class within 2 pixels (a 5x5 window)

# What the network that trains returns (logits, or `TrainingOutputs`), labels -> the loss
LossFunction = Callable[[torch.Tensor | TrainingOutputs, torch.Tensor], torch.Tensor]


def cross_entropy_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the labelled pixels of logits (N, C, H, W), in float32, and int64 labels (N, H, W)."""
    return cross_entropy(logits.float(), labels, IGNORE)


def edge_weighted_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, edge: torch.Tensor,
                                alpha: float) -> torch.Tensor:
    """dl-hed-loss: each labelled pixel's cross-entropy weighted by 1 + alpha * edge (edge = HED / 255 in
    [0, 1]), summed and divided by the number of labelled pixels (not by the weights' sum: alpha 0 is the
    plain cross-entropy, and edges add weight to the pixels on them without taking it from the others)."""
    valid = labels != IGNORE
    weights = 1 + alpha * edge.float()
    return (pixel_cross_entropy(logits.float(), labels, IGNORE) * weights).sum() / valid.sum()


def label_boundaries(labels: torch.Tensor, radius: int = BOUNDARY_RADIUS) -> torch.Tensor:
    """int (N, H, W) trainIds -> bool (N, H, W): labelled pixels whose (2 radius + 1)^2 window, cut at the
    border, holds a labelled pixel of another class. Max and min pooling over the labelled pixels: a
    pixel is on a boundary when they differ (both bracket its own class)."""
    values = labels.float().unsqueeze(1)
    valid = labels != IGNORE
    window = dict(kernel_size=2 * radius + 1, stride=1, padding=radius)  # max_pool2d pads with -inf
    highest = F.max_pool2d(torch.where(valid.unsqueeze(1), values, -1.0), **window)
    lowest = -F.max_pool2d(torch.where(valid.unsqueeze(1), -values, -float(IGNORE + 1)), **window)
    return (highest != lowest).squeeze(1) & valid


def balanced_bce(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Class-balanced binary cross-entropy of (N, H, W) logits against targets in [0, 1] over the `valid`
    pixels (see the module docstring); 0 where no pixel is valid."""
    valid = valid.float()
    logits, targets = logits.float(), targets.float() * valid
    count = valid.sum()
    positive = targets.sum()  # N+, soft for soft targets
    negative = count - positive
    per_pixel = -(negative * targets * F.logsigmoid(logits) + positive * (valid - targets) * F.logsigmoid(-logits))
    return per_pixel.sum() / count.clamp(min=1) ** 2


def boundary_loss(outputs: TrainingOutputs, labels: torch.Tensor, target: str) -> torch.Tensor:
    """The boundary head's loss against label boundaries (`target` "labels") or HED's edges ("edges")."""
    valid = labels != IGNORE
    targets = label_boundaries(labels).float() if target == "labels" else outputs.edge
    return balanced_bce(outputs.boundary, targets.detach(), valid)


def make_loss(config: TrainConfig) -> LossFunction:
    """The loss `config` trains with: per-pixel cross-entropy, pixels labelled 255 left out (weighted by
    1 + `config.edge_alpha` * edge for dl-hed-loss), plus `config.aux_loss` times the auxiliary head's
    (when it is above 0), plus `BOUNDARY_LOSS_WEIGHT` times the boundary head's (dl-boundary, dl-hed-head)."""
    if config.aux_loss < 0:
        raise SegnetOptionError(f"--aux-loss {config.aux_loss}: must be 0 (no auxiliary head) or more")
    if config.edge_alpha < 0:
        raise SegnetOptionError(f"--edge-alpha {config.edge_alpha}: must be 0 or more")
    spec = VARIANT_SPECS.get(config.variant)
    target = spec.boundary_target if spec is not None else None
    weighted = spec is not None and spec.edge_weighted_ce
    if config.aux_loss == 0 and target is None and not weighted:
        return cross_entropy_loss
    aux_weight, alpha = config.aux_loss, config.edge_alpha

    def loss(outputs: TrainingOutputs, labels: torch.Tensor) -> torch.Tensor:
        if weighted:
            total = edge_weighted_cross_entropy(outputs.out, labels, outputs.edge, alpha)
        else:
            total = cross_entropy_loss(outputs.out, labels)
        if aux_weight > 0:
            total = total + aux_weight * cross_entropy_loss(outputs.aux, labels)
        if target is not None:
            total = total + BOUNDARY_LOSS_WEIGHT * boundary_loss(outputs, labels, target)
        return total

    return loss
