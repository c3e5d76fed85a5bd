"""TensorBoard event files of a training run, written where `tensorboard` is installed (the optional extra
`hedseg[tensorboard]`); `RunFolder.tensorboard` opens them in the run folder.

Scalars, on the axis of optimizer steps (`TrainingState.step`, counted from 1):

    train/lr            the rate each step trained at
    train/loss          the mean loss of the steps since the previous point: at most every
                        `LOSS_EVERY_S` seconds (reading the loss waits for the device), and at each epoch's end
    train/epoch_loss    the epoch's mean loss (metrics.jsonl's loss), at its last step
    train/images_per_s  the epoch's rate
    val/miou            the epoch's validation mIoU (metrics.jsonl's val_miou)
    val/iou/CLASS       each class's validation IoU (a class in neither ground truth nor prediction: none)

A resumed run appends a new event file, and its first event drops, for TensorBoard, the earlier
files' events from the first step it trains on (SummaryWriter's `purge_step`): steps that the
interrupted run logged after its checkpoint are not shown twice.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

import torch

TENSORBOARD_MISSING = "TensorBoard: not installed, so no event files (pip install 'hedseg[tensorboard]' to get them)"
LOSS_EVERY_S = 2.0


class TensorBoardLog:
    """The event writer of one training process (rank 0), and the loss window since its last point."""

    def __init__(self, writer: Any, loss_every_s: float = LOSS_EVERY_S) -> None:
        self.writer = writer  # a torch.utils.tensorboard.SummaryWriter
        self.loss_every_s = loss_every_s
        self._lr = 0.0  # the rate the next step trains at
        self._loss_sum, self._loss_count, self._read_at = 0.0, 0, 0.0

    def start_epoch(self, lr: float, loss_sum: float, loss_count: int) -> None:
        """An epoch (or its resumed part) begins: the rate of its first step and its figures so far."""
        self._lr = lr
        self._loss_sum, self._loss_count, self._read_at = float(loss_sum), loss_count, time.monotonic()

    def step(self, step: int, next_lr: float, loss_sum: float | torch.Tensor, loss_count: int) -> None:
        """After optimizer step `step`: its rate, and the loss when `loss_every_s` has passed. `loss_sum` and
        `loss_count` are the epoch's running figures (the sum may be on the device: it is read only then)."""
        self.writer.add_scalar("train/lr", self._lr, step)
        self._lr = next_lr
        if time.monotonic() - self._read_at >= self.loss_every_s:
            self._write_loss(step, loss_sum, loss_count)

    def end_epoch(self, metrics: Mapping[str, Any], loss_sum: float, loss_count: int,
                  iou: Mapping[str, float | None] | None) -> None:
        """A finished epoch's figures (its metrics row and per-class IoU), written to disk before return."""
        step = metrics["step"]
        self._write_loss(step, loss_sum, loss_count)
        scalars = {"train/epoch_loss": metrics["loss"], "train/images_per_s": metrics["images_per_s"],
                   "val/miou": metrics["val_miou"]}
        scalars.update({f"val/iou/{name}": value for name, value in (iou or {}).items()})
        for tag, value in scalars.items():
            if value is not None:
                self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()

    def _write_loss(self, step: int, loss_sum: float | torch.Tensor, loss_count: int) -> None:
        total = float(loss_sum)  # waits for the device
        if loss_count > self._loss_count:
            self.writer.add_scalar("train/loss", (total - self._loss_sum) / (loss_count - self._loss_count), step)
        self._loss_sum, self._loss_count, self._read_at = total, loss_count, time.monotonic()


def open_tensorboard(folder: str | os.PathLike, first_step: int) -> TensorBoardLog | None:
    """A `TensorBoardLog` writing a new event file in `folder`, hiding earlier files' events from
    `first_step` on; None where tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return TensorBoardLog(SummaryWriter(str(folder), purge_step=first_step))
