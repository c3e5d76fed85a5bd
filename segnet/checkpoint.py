"""Checkpoints: one file holds everything `evaluate`, `predict` and `--resume` need.

A checkpoint is a dict saved with `torch.save` and read back with `weights_only=True` (a file never
runs code). Keys:

- `format` = "segnet-checkpoint", `format_version` = 1
- `variant`: vanilla, dlse, dlse-sf or dlse-hed; `model_args`: the keyword arguments of
  `segnet.deeplab.build_model` besides the variant (num_classes, output_stride, ...)
- `model`: the model's state dict; `optimizer`: the optimizer's state dict (training checkpoints)
- `config`: the training configuration (plain JSON values); `next`: the stage, epoch and batch to run
  next; `done`: the last (stage, epoch) finished; `step`: optimizer steps so far
- `rng`: random states (torch, numpy, python) for an exact resume; `metrics`: the last epoch's figures,
  `best_miou`: the best validation mIoU so far; `epoch_stats`: the unfinished epoch's running figures
  (saved on Ctrl-C, else None)
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from hedprep.atomic import atomic_file, link_or_copy_atomic
from segnet.errors import SegnetError

CHECKPOINT_FORMAT = "segnet-checkpoint"
CHECKPOINT_VERSION = 1


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
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, ValueError, OSError,
            AttributeError, KeyError, IndexError, TypeError):
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
