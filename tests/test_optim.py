"""segnet.optim: the optimizers and learning-rate schedules a config asks for, against their formulas."""

from __future__ import annotations

import math

import pytest
import torch

from segnet.checkpoint import TrainingState, restore_training_state, training_checkpoint
from segnet.config import TrainConfig
from segnet.errors import SegnetOptionError
from segnet.optim import lr_factor, make_lr_schedule, make_optimizer

CPU = torch.device("cpu")


def recipe(**options) -> TrainConfig:
    return TrainConfig(variant="vanilla", shards="", out="", **options)


@pytest.mark.parametrize("step", [0, 1, 37, 99, 100])
def test_poly_and_cosine_follow_their_formulas(step):
    lr, low, steps = 0.01, 1e-4, 100
    t = step / steps
    poly = recipe(lr=lr, min_lr=low, lr_schedule="poly")
    cosine = recipe(lr=lr, min_lr=low, lr_schedule="cosine")
    assert lr * lr_factor(step, poly, steps) == pytest.approx((lr - low) * (1 - t) ** 0.9 + low, rel=1e-12)
    assert lr * lr_factor(step, cosine, steps) == pytest.approx(low + (lr - low) * (1 + math.cos(math.pi * t)) / 2,
                                                                rel=1e-12)
    assert lr_factor(step, recipe(lr=lr), steps) == 1.0


def test_warm_up_rises_linearly_then_hands_over():
    config = recipe(lr=0.01, lr_schedule="poly", warmup_iters=4)
    assert [lr_factor(k, config, 100) for k in range(3)] == pytest.approx(
        [(k + 1) / 4 * (1 - k / 100) ** 0.9 for k in range(3)])
    assert lr_factor(4, config, 100) == pytest.approx((1 - 4 / 100) ** 0.9)


def test_the_schedule_steps_the_optimizer_as_the_formula_says():
    model = torch.nn.Linear(3, 2)
    config = recipe(lr=0.1, optimizer="sgd", lr_schedule="cosine", min_lr=0.01)
    optimizer = make_optimizer(config, model, CPU)
    schedule = make_lr_schedule(config, optimizer, 10)
    seen = []
    for _ in range(10):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert seen == pytest.approx([0.1 * lr_factor(k, config, 10) for k in range(10)], rel=1e-12)


def test_optimizers_take_their_options():
    model = torch.nn.Linear(3, 2)
    sgd = make_optimizer(recipe(optimizer="sgd", lr=0.01, momentum=0.8, weight_decay=5e-4), model, CPU)
    assert isinstance(sgd, torch.optim.SGD)
    assert (sgd.defaults["momentum"], sgd.defaults["weight_decay"], sgd.defaults["lr"]) == (0.8, 5e-4, 0.01)
    adamw = make_optimizer(recipe(optimizer="adamw", weight_decay=0.05), model, CPU)
    assert type(adamw) is torch.optim.AdamW and adamw.defaults["weight_decay"] == 0.05 and adamw.defaults["fused"]
    assert type(make_optimizer(recipe(), model, CPU)) is torch.optim.Adam
    assert make_lr_schedule(recipe(), sgd, 10) is None  # constant, no warm-up: nothing to step
    with pytest.raises(SegnetOptionError, match="--optimizer lion"):
        make_optimizer(recipe(optimizer="lion"), model, CPU)
    with pytest.raises(SegnetOptionError, match="--lr-schedule step"):
        make_lr_schedule(recipe(lr_schedule="step"), sgd, 10)


def test_a_checkpoint_resumes_the_schedule_where_it_stood():
    """Trained 4 steps, checkpointed, restored into new objects and trained 4 more: the rates and weights
    of 8 uninterrupted steps."""
    config = recipe(lr=0.1, optimizer="sgd", lr_schedule="poly", warmup_iters=2)
    inputs = torch.randn(8, 5, 3)

    def fresh() -> TrainingState:
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 2)
        model.variant, model.model_args = "vanilla", {}
        optimizer = make_optimizer(config, model, CPU)
        return TrainingState(model, optimizer, make_lr_schedule(config, optimizer, 8))

    def steps(state: TrainingState, which: range) -> list[float]:
        rates = []
        for k in which:
            rates.append(state.optimizer.param_groups[0]["lr"])
            state.optimizer.zero_grad()
            state.model(inputs[k]).square().sum().backward()
            state.optimizer.step()
            state.lr_schedule.step()
        return rates

    whole = fresh()
    expected = steps(whole, range(8))
    first = fresh()
    rates = steps(first, range(4))
    saved = training_checkpoint(first, config.to_json(), CPU, in_epoch=True)
    resumed = fresh()
    restore_training_state(resumed, saved, CPU)
    rates += steps(resumed, range(4, 8))
    assert rates == expected
    assert all(torch.equal(a, b) for a, b in zip(resumed.model.parameters(), whole.model.parameters(), strict=True))
