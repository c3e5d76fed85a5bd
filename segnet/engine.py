"""The pieces of a training run: one step, one epoch, validation.

`train_one_epoch` keeps a `TrainingState` current after every step (position, step count, the epoch's
running figures), so that whoever catches a Ctrl-C can checkpoint exactly where the run stands. The
step never waits for the device: the loss is summed on the device and read when a display asks for it
and at the end of the epoch.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch.utils.data import DataLoader

from segnet.backends import autocast
from segnet.checkpoint import EpochStats, TrainingState
from segnet.data import EpochItems, EpochSampler, Item, model_input
from segnet.distributed import Distribution
from segnet.losses import LossFunction, cross_entropy_loss
from segnet.metrics import DeviceConfusion, EvalResult, evaluation_result


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor, labels: torch.Tensor,
               amp: torch.dtype | None, loss_fn: LossFunction | None = None) -> torch.Tensor:
    """One optimizer step on a batch; returns the batch's loss, detached, on the device (not read).
    `loss_fn` takes what `model` returns (default: cross-entropy of its logits)."""
    with autocast(images.device, amp):
        outputs = model(images)
    loss = (loss_fn or cross_entropy_loss)(outputs, labels.long())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def training_items(sampler: EpochSampler, batch_size: int, skip_items: int = 0) -> list[Item]:
    """This epoch's items for training, from item `skip_items` on (a resumed epoch)."""
    items = sampler.items()
    if len(items) % batch_size == 1 and len(items) > 1:
        # BatchNorm cannot train on one sample (ASPP's image pooling has one value per channel).
        items = items[:-1]
    return items[skip_items:]


def train_one_epoch(network: torch.nn.Module, state: TrainingState, loader: DataLoader, device: torch.device,
                    loss_fn: LossFunction, amp: torch.dtype | None = None, channels_last: bool = False,
                    on_step: Callable[[EpochStats], None] | None = None) -> EpochStats:
    """Train on every batch `loader` yields (the epoch's items from `state.position.batch` on), stepping
    `state.optimizer` (and `state.lr_schedule` per step) with `network` (the model, or its DDP or compiled
    wrapper). Returns the epoch's figures, the loss read from the device.
    """
    stats = state.epoch_stats
    stats.loss_sum = torch.tensor(float(stats.loss_sum), dtype=torch.float64, device=device)
    started = time.perf_counter() - stats.seconds
    for images, labels in loader:
        loss = train_step(network, state.optimizer, model_input(images, device, channels_last),
                          labels.to(device, non_blocking=True), amp, loss_fn)
        if state.lr_schedule is not None:
            state.lr_schedule.step()
        state.step += 1
        state.position.batch += 1
        stats.images += images.shape[0]
        stats.loss_sum += loss
        stats.loss_count += 1
        stats.seconds = time.perf_counter() - started
        if on_step is not None:
            on_step(stats)
    stats.loss_sum = float(stats.loss_sum)  # waits for the epoch's last step
    stats.seconds = time.perf_counter() - started
    return stats


def model_num_classes(model: torch.nn.Module) -> int:
    inner = getattr(model, "module", model)
    return int(inner.model_args["num_classes"])


def validate(model: torch.nn.Module, loader: DataLoader, items: EpochItems, device: torch.device,
             dist_info: Distribution, amp: torch.dtype | None, channels_last: bool = False) -> EvalResult:
    """The scores (mIoU, per-class IoU) on the loader's dataset at its size (labels resized to it): each
    rank scores its share of the frames, every frame exactly once, and the confusion matrices are summed
    across ranks.

    `model` is the bare model, not its DistributedDataParallel wrapper: ranks may get one frame fewer,
    and the wrapper's forward would wait for the others.
    """
    sampler = EpochSampler(len(loader.dataset), shuffle=False, num_replicas=dist_info.world, rank=dist_info.rank,
                           pad=False)
    items.set_items(sampler.items())
    matrix = DeviceConfusion(model_num_classes(model), device)
    model.eval()
    with torch.inference_mode(), autocast(device, amp):
        for images, labels in loader:
            logits = model(model_input(images, device, channels_last))
            matrix.update(logits.argmax(1), labels)
    matrix.reduce()
    model.train()
    return evaluation_result(matrix.numpy(), len(loader.dataset))
