"""Checkpoints: one file holds everything `evaluate`, `predict` and `--resume` need.

A checkpoint is a dict saved with `torch.save` and read back with `weights_only=True` (a file never
runs code). Keys:

- `format` = "segnet-checkpoint", `format_version` = 1
- `variant`: vanilla, dlse, dlse-sf or dlse-hed; `model_args`: the keyword arguments of
  `segnet.deeplab.build_model` besides the variant (num_classes, output_stride, ...)
- `model`: the model's state dict; `optimizer`: the optimizer's state dict (training checkpoints)
- `aux_classifier`: the state dict of the auxiliary head `--aux-loss` trains (`segnet.deeplab.FCNHead`),
  None without one; a training key, which `evaluate` never reads
- `boundary_head`: the state dict of the boundary head of dl-boundary and dl-hed-head
  (`segnet.deeplab.BoundaryHead`), None without one (absent in checkpoints written before it existed);
  a training key too, read only by `segnet predict --boundaries`
- `config`: the training configuration (plain JSON values); `next`: the stage, epoch and batch to run
  next; `done`: the last (stage, epoch) finished; `step`: optimizer steps so far
- `rng`: random states (torch, numpy, python) for an exact resume; `metrics`: the last epoch's figures,
  `best_miou`: the best validation mIoU so far; `epoch_stats`: the unfinished epoch's running figures
  (saved on Ctrl-C, else None); `lr_schedule`: the learning-rate schedule's state (None: constant)

`TrainingState` is what a run changes as it trains; `training_checkpoint` and `restore_training_state`
convert it to and from a checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import random
import signal
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError

from hedprep.atomic import atomic_file, link_or_copy_atomic
from segnet.errors import SegnetError

CHECKPOINT_FORMAT = "segnet-checkpoint"
CHECKPOINT_VERSION = 1
# The training-only heads (segnet.deeplab.TrainingNetwork's attributes), each saved under its own key
TRAINING_HEADS = ("aux_classifier", "boundary_head")


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Ctrl-C inside takes effect when the block ends: a checkpoint being written is finished first.

    Interrupted inside `torch.save`, torch's zip writer raises a RuntimeError of its own on the way
    out, which would hide the KeyboardInterrupt. The block runs as it is outside the main thread
    (where handlers cannot be set), where Ctrl-C is ignored, and where a handler of C code is set
    (Python could not put it back).
    """
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or previous in (None, signal.SIG_IGN):
        yield
        return
    received: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received and callable(previous):
        previous(signal.SIGINT, None)
    elif received:  # SIG_DFL: the process would end; a KeyboardInterrupt lets the caller say where it stopped
        raise KeyboardInterrupt


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write a checkpoint atomically (`hedprep.atomic`: a temporary name, fsync'd, renamed)."""
    path = Path(path)
    try:
        with atomic_file(path) as f:
            torch.save({"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, **state}, f)
    except OSError as error:
        raise SegnetError(f"{path}: cannot write checkpoint ({error.strerror or error})", path) from None


def link_checkpoint(source: str | os.PathLike, path: str | os.PathLike) -> None:
    """Make `path` hold the checkpoint `source` holds now, atomically: a hard link (no second copy of a
    0.5 GB file), or a copy where the file system has no hard links. Later writes of `source` replace it
    by a rename, so they never change `path`."""
    path = Path(path)
    try:
        link_or_copy_atomic(source, path)
    except OSError as error:
        raise SegnetError(f"{path}: cannot write checkpoint ({error.strerror or error})", path) from None


def load_torch_file(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """`torch.load(path, weights_only=True)` (a file never runs code), with a one-line SegnetError for a
    truncated, corrupt or foreign file."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    # A truncated or foreign file can make the unpickler raise almost anything.
    # (torch reads a path ending in .safetensors as a safetensors file: its errors too.)
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, ValueError, OSError,
            AttributeError, KeyError, IndexError, TypeError, SafetensorError):
        raise SegnetError(f"{path}: not a readable checkpoint (truncated, corrupt or not a torch file)", path) from None


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint`.

    Raises:
        SegnetError: missing, truncated or corrupt file, not a segnet checkpoint, another format version.
    """
    path = Path(path)
    if not path.is_file():
        raise SegnetError(f"{path}: no such checkpoint file", path)
    state = load_torch_file(path, map_location)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise SegnetError(f"{path}: not a segnet checkpoint", path)
    if state.get("format_version") != CHECKPOINT_VERSION:
        raise SegnetError(
            f"{path}: checkpoint format version {state.get('format_version')}, this segnet reads {CHECKPOINT_VERSION}",
            path,
        )
    for key in ("variant", "model_args", "model"):
        if key not in state:
            raise SegnetError(f"{path}: not a complete segnet checkpoint (no {key})", path)
    return state


# ------------------------------------------------------------------------------- the training state


@dataclass
class Position:
    """Where a run stands: the stage, epoch (0-based) and batch it trains next."""

    stage: int = 0
    epoch: int = 0
    batch: int = 0

    def to_json(self) -> dict[str, int]:
        return {"stage": self.stage, "epoch": self.epoch, "batch": self.batch}


@dataclass
class EpochStats:
    """The running figures of an epoch: images and loss summed so far, seconds spent training.

    `loss_sum` stays on the training device while the epoch runs (reading it waits for the device)."""

    images: int = 0
    loss_sum: float | torch.Tensor = 0.0
    loss_count: int = 0
    seconds: float = 0.0

    @property
    def loss(self) -> float:
        """The mean loss so far."""
        return float(self.loss_sum) / max(1, self.loss_count)

    def to_json(self) -> dict[str, float]:
        return {"images": self.images, "loss_sum": float(self.loss_sum), "loss_count": self.loss_count,
                "seconds": self.seconds}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> EpochStats:
        return cls(**data) if data else cls()


@dataclass
class TrainingState:
    """Everything a run changes as it trains, kept current step by step, so that a checkpoint of it (at an
    epoch's end or on Ctrl-C anywhere) resumes exactly where the run stood.

    `position` is the next batch to train; `done` the last finished (stage, epoch), (-1, -1) before any;
    `epoch_stats` the figures of the epoch in progress; `metrics` the last finished epoch's row.
    """

    model: torch.nn.Module  # the bare model (not a DistributedDataParallel or compiled wrapper)
    optimizer: torch.optim.Optimizer
    lr_schedule: torch.optim.lr_scheduler.LRScheduler | None = None
    heads: dict[str, torch.nn.Module] = field(default_factory=dict)  # training-only heads by `TRAINING_HEADS` key
    position: Position = field(default_factory=Position)
    done: tuple[int, int] = (-1, -1)
    step: int = 0
    best: float | None = None
    epoch_stats: EpochStats = field(default_factory=EpochStats)
    metrics: dict[str, Any] = field(default_factory=dict)


def rng_state(device: torch.device) -> dict[str, Any]:
    """Every random state the run draws from: torch's CPU generator, numpy's, Python's, and on CUDA the
    training device's generator (dropout draws from it there)."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state()[1].tolist(),
             "numpy_pos": int(np.random.get_state()[2]), "python": list(random.getstate()[1])}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Restore `rng_state`'s states. The CUDA state goes to this process's device: every rank's device
    generator is seeded alike and draws alike, so rank 0's state is every rank's."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", np.array(state["numpy"], dtype=np.uint32), state["numpy_pos"], 0, 0.0))
    python = random.getstate()
    random.setstate((python[0], tuple(state["python"]), None))
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


def training_checkpoint(state: TrainingState, config: dict[str, Any], device: torch.device,
                        in_epoch: bool) -> dict[str, Any]:
    """The checkpoint of `state` (with the run's `config` as JSON and the random states as they are now).
    `in_epoch`: saved inside an epoch (Ctrl-C), so its running figures are kept for the resume."""
    model = state.model
    return {
        "variant": model.variant, "model_args": dict(model.model_args), "model": model.state_dict(),
        **{name: state.heads[name].state_dict() if name in state.heads else None for name in TRAINING_HEADS},
        "optimizer": state.optimizer.state_dict(),
        "lr_schedule": None if state.lr_schedule is None else state.lr_schedule.state_dict(),
        "config": config, "next": state.position.to_json(), "done": list(state.done), "step": state.step,
        "rng": rng_state(device), "metrics": state.metrics, "best_miou": state.best,
        "epoch_stats": state.epoch_stats.to_json() if in_epoch else None,
    }


def restore_training_state(state: TrainingState, checkpoint: dict[str, Any], device: torch.device) -> None:
    """Load a `training_checkpoint` into `state` (its model, optimizer and schedule already built) and
    restore the random states."""
    state.model.load_state_dict(checkpoint["model"])
    for name, head in state.heads.items():
        head.load_state_dict(checkpoint[name])
    state.optimizer.load_state_dict(checkpoint["optimizer"])
    if state.lr_schedule is not None and checkpoint.get("lr_schedule") is not None:
        state.lr_schedule.load_state_dict(checkpoint["lr_schedule"])
    state.position = Position(**checkpoint["next"])
    state.done = tuple(checkpoint["done"])
    state.step = checkpoint["step"]
    state.best = checkpoint.get("best_miou")
    state.metrics = checkpoint.get("metrics") or {}
    state.epoch_stats = EpochStats.from_json(checkpoint.get("epoch_stats"))
    set_rng_state(checkpoint["rng"], device)
