"""segnet.losses with segnet.engine.train_step: the loss of a step with --aux-loss, computed again from the
network's two outputs with torch's cross-entropy."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from segnet.config import TrainConfig
from segnet.deeplab import DeepLabWithAux, build_model
from segnet.engine import train_step
from segnet.errors import SegnetOptionError
from segnet.losses import cross_entropy_loss, make_loss
from segnet.optim import make_optimizer


def recipe(**options) -> TrainConfig:
    return TrainConfig(variant="vanilla", shards="", out="", backbone_weights="none", lr=1e-3, **options)


def test_a_train_step_with_aux_loss_adds_the_weighted_head_loss():
    torch.manual_seed(0)
    network = DeepLabWithAux(build_model("vanilla")).train()
    config = recipe(aux_loss=0.4)
    optimizer = make_optimizer(config, network, torch.device("cpu"))
    images = torch.randn(2, 3, 32, 64)
    labels = torch.randint(0, 19, (2, 32, 64))
    labels[:, :5] = 255
    head = network.aux_classifier[4].weight.detach().clone()
    torch.manual_seed(1)  # both forwards draw the same dropout masks
    with torch.no_grad():
        out, aux = network(images)
    expected = F.cross_entropy(out, labels, ignore_index=255) + 0.4 * F.cross_entropy(aux, labels, ignore_index=255)
    torch.manual_seed(1)
    loss = train_step(network, optimizer, images, labels, None, make_loss(config))
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=0)
    assert not torch.equal(network.aux_classifier[4].weight, head)  # the optimizer steps the head too


def test_no_aux_loss_is_the_plain_cross_entropy_and_a_negative_weight_is_refused():
    assert make_loss(recipe()) is cross_entropy_loss
    with pytest.raises(SegnetOptionError, match="--aux-loss -0.5: "):
        make_loss(recipe(aux_loss=-0.5))
