"""segnet.losses with segnet.engine.train_step: the loss of a step with --aux-loss, computed again from the
network's two outputs with torch's cross-entropy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segnet.config import TrainConfig
from segnet.deeplab import TrainingNetwork, build_model
from segnet.engine import train_step
from segnet.errors import SegnetOptionError
from segnet.losses import cross_entropy_loss, make_loss
from segnet.optim import make_optimizer


def recipe(**options) -> TrainConfig:
    return TrainConfig(variant="vanilla", shards="", out="", backbone_weights="none", lr=1e-3, **options)


def test_a_train_step_with_aux_loss_adds_the_weighted_head_loss():
    torch.manual_seed(0)
    network = TrainingNetwork(build_model("vanilla")).train()
    config = recipe(aux_loss=0.4)
    optimizer = make_optimizer(config, network, torch.device("cpu"))
    images = torch.randn(2, 3, 32, 64)
    labels = torch.randint(0, 19, (2, 32, 64))
    labels[:, :5] = 255
    head = network.aux_classifier[4].weight.detach().clone()
    torch.manual_seed(1)  # both forwards draw the same dropout masks
    with torch.no_grad():
        out, aux, boundary, edge = network(images)
    assert boundary is None and edge is None
    expected = F.cross_entropy(out, labels, ignore_index=255) + 0.4 * F.cross_entropy(aux, labels, ignore_index=255)
    torch.manual_seed(1)
    loss = train_step(network, optimizer, images, labels, None, make_loss(config))
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=0)
    assert not torch.equal(network.aux_classifier[4].weight, head)  # the optimizer steps the head too


def test_no_aux_loss_is_the_plain_cross_entropy_and_a_negative_weight_is_refused():
    assert make_loss(recipe()) is cross_entropy_loss
    with pytest.raises(SegnetOptionError, match="--aux-loss -0.5: "):
        make_loss(recipe(aux_loss=-0.5))


# ------------------------------------------------------------------ the edge variants' losses (issue 19)

# A hand-made map: classes 1 | 2 split by a vertical line, a 3 block at the top-left corner, ignore
# pixels (255) inside and along the split, a lone 4 at the bottom-right border.
HAND_MADE = np.array([
    [3, 3, 1, 1, 1, 1, 2, 2, 2, 2],
    [3, 3, 1, 1, 1, 1, 2, 2, 2, 2],
    [1, 1, 1, 255, 255, 1, 2, 2, 2, 2],
    [1, 1, 1, 255, 255, 255, 2, 2, 2, 2],
    [1, 1, 1, 1, 1, 1, 255, 2, 2, 2],
    [1, 1, 1, 1, 1, 1, 1, 2, 2, 2],
    [1, 1, 1, 1, 1, 1, 1, 2, 2, 4],
], dtype=np.int64)


def boundaries_from_scratch(label: np.ndarray, radius: int = 2) -> np.ndarray:
    """The definition read literally: a labelled pixel is on a boundary when the pixels within `radius`
    rows and columns (inside the map) hold another class than its own, 255 not being a class."""
    height, width = label.shape
    out = np.zeros(label.shape, dtype=bool)
    for i in range(height):
        for j in range(width):
            if label[i, j] == 255:
                continue
            window = label[max(0, i - radius):i + radius + 1, max(0, j - radius):j + radius + 1]
            out[i, j] = bool(((window != 255) & (window != label[i, j])).any())
    return out


def test_label_boundaries_are_the_definitions():
    from segnet.losses import label_boundaries

    rng = np.random.default_rng(0)
    noisy = rng.integers(0, 4, (6, 11))
    noisy[rng.random((6, 11)) < 0.3] = 255
    uniform = np.full((7, 10), 5)
    uniform[0, 0] = 255  # one class and ignore: no boundary
    for label in (HAND_MADE, noisy[:, :10][:6], uniform):
        ours = label_boundaries(torch.from_numpy(label)[None])[0].numpy()
        assert np.array_equal(ours, boundaries_from_scratch(label)), label
    ours = label_boundaries(torch.from_numpy(HAND_MADE)[None])[0].numpy()
    assert ours[0, 0] and not ours[5, 0]  # the corner 3 sees the 1s 2 px away; the 1s below it see only 1s
    assert ours[6, 9] and ours[4, 7] and not ours[0, 9]  # the lone border 4 and the 2s within 2 px of it
    assert not ours[HAND_MADE == 255].any()


def test_balanced_bce_weighs_each_side_by_the_others_share():
    from segnet.losses import balanced_bce

    rng = np.random.default_rng(1)
    logits = rng.normal(size=HAND_MADE.shape)
    valid = HAND_MADE != 255
    for targets in (boundaries_from_scratch(HAND_MADE).astype(float), rng.random(HAND_MADE.shape)):  # hard, soft
        n = valid.sum()
        positive = (targets * valid).sum()  # soft targets: N+ is their sum over the labelled pixels
        p = 1 / (1 + np.exp(-logits))
        per_pixel = -((n - positive) / n * targets * np.log(p) + positive / n * (1 - targets) * np.log(1 - p))
        expected = (per_pixel * valid).sum() / n
        ours = balanced_bce(torch.from_numpy(logits)[None], torch.from_numpy(targets)[None],
                            torch.from_numpy(valid)[None])
        assert ours.item() == pytest.approx(expected, rel=1e-5)


def test_each_variants_loss_is_the_sum_of_its_terms():
    """dl-boundary (+ --aux-loss), dl-hed-head and dl-hed-loss on made-up outputs, against torch's own
    cross-entropy and the balanced BCE; --edge-alpha 0 is the plain cross-entropy."""
    from segnet.deeplab import TrainingOutputs
    from segnet.losses import BOUNDARY_LOSS_WEIGHT, balanced_bce, label_boundaries

    torch.manual_seed(2)
    labels = torch.randint(0, 19, (2, 12, 16))
    labels[:, :3] = 255
    out, aux, boundary, edge = torch.randn(2, 19, 12, 16), torch.randn(2, 19, 12, 16), torch.randn(2, 12, 16), \
        torch.rand(2, 12, 16)
    outputs = TrainingOutputs(out, aux, boundary, edge)
    ce = F.cross_entropy(out, labels, ignore_index=255)
    valid = labels != 255

    def loss(variant, **options):
        config = TrainConfig(variant=variant, shards="", out="", **options)
        return make_loss(config)(outputs, labels)

    expected = ce + 0.4 * F.cross_entropy(aux, labels, ignore_index=255) + BOUNDARY_LOSS_WEIGHT * balanced_bce(
        boundary, label_boundaries(labels).float(), valid)
    torch.testing.assert_close(loss("dl-boundary", aux_loss=0.4), expected)
    torch.testing.assert_close(loss("dl-hed-head"), ce + 20 * balanced_bce(boundary, edge, valid))
    per_pixel = F.cross_entropy(out, labels, ignore_index=255, reduction="none")
    torch.testing.assert_close(loss("dl-hed-loss", edge_alpha=3.0), (per_pixel * (1 + 3 * edge)).sum() / valid.sum())
    torch.testing.assert_close(loss("dl-hed-loss", edge_alpha=0.0), ce)
    with pytest.raises(SegnetOptionError, match="--edge-alpha -1.0: "):
        make_loss(recipe(edge_alpha=-1.0))

