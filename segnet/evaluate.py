"""`segnet evaluate`: a checkpoint's Cityscapes mIoU (and boundary F) on a split of shards, and its
predictions as files.

Frames are resized to the evaluation size (default: the last stage of the checkpoint's schedule), the
logits upsampled (bilinear) to the labels' full stored resolution, and a 19-class confusion matrix is
summed over every pixel whose label is not 255; the same prediction maps are scored by the boundary
F-score of `segnet.boundary` (unless `boundary_f` is off). Predictions can be written in Cityscapes'
format (labelIds PNGs that the official evaluator reads, and colour PNGs). The test split has no public
labels: there only predictions are written.

Under torchrun each rank scores its share of the frames, every frame exactly once, the confusion
matrices and the boundary F sums are summed across ranks, and each rank writes the prediction files of
its frames; rank 0 returns the scores. The model runs with DataLoader workers (default as for training), pinned memory
on CUDA, optionally bfloat16 autocast (`amp`), and the confusion matrix is counted on the device.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from segnet.boundary import BoundaryFScore
from segnet.config import loader_workers
from segnet.data import EpochSampler, ShardDataset, opencv_single_threaded
from segnet.devices import resolve_device, resolve_rank_device
from segnet.distributed import init_distribution, sum_over_ranks
from segnet.inference import load_segmenter
from segnet.metrics import DeviceConfusion, EvalResult, evaluation_result
from segnet.predictions import prepare_folder, write_prediction_pngs

UNLABELED_SPLITS = ("test",)  # Cityscapes publishes no test labels


@dataclass
class Evaluation:
    """What `evaluate` did: the scores (None on a split without labels) and the files written."""

    result: EvalResult | None
    frames: int
    eval_size: tuple[int, int]
    predictions_dir: Path | None
    predictions_written: int  # by every rank
    is_main: bool = True  # False on torchrun ranks other than 0


def evaluate(
    checkpoint_path: str | os.PathLike,
    shards: str | os.PathLike,
    split: str = "val",
    eval_size: tuple[int, int] | None = None,
    save_predictions: str | os.PathLike | None = None,
    device: str = "auto",
    batch_size: int = 2,
    on_frames: Callable[[int], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    amp: bool = False,
    workers: int | None = None,
    channels_last: bool | None = None,
    boundary_f: bool = True,
) -> Evaluation:
    """Score a checkpoint on `split` of the shards in `shards` (and/or write its predictions).

    `workers`: DataLoader worker processes (None: as `segnet train` chooses, 0 on a CPU); `amp`:
    bfloat16 autocast where it is native; `channels_last`: the model's memory layout (None: as
    training chooses, on CUDA); `boundary_f`: the boundary F-score beside mIoU (`segnet.boundary`).
    Frames are predicted by `segnet.inference.Segmenter.predict`.
    """
    torch_device = resolve_rank_device(device)
    segmenter = load_segmenter(checkpoint_path, torch_device, amp, channels_last)
    dataset = ShardDataset(shards, split, segmenter.in_channels, eval_size or segmenter.input_size,
                           resize_labels=False)
    size = dataset.size or dataset.frame_size
    labeled = split not in UNLABELED_SPLITS
    out_dir = prepare_folder(save_predictions) if save_predictions is not None else None
    dist_info = init_distribution(torch_device)
    indices = [item.index for item in EpochSampler(len(dataset), shuffle=False, num_replicas=dist_info.world,
                                                   rank=dist_info.rank, pad=False).items()]
    loader = evaluation_loader(dataset, indices, batch_size, torch_device, workers)
    matrix = DeviceConfusion(segmenter.num_classes, torch_device)
    # on a GPU the boundary F is computed there (the host's OpenCV would take longer than the model)
    boundary = BoundaryFScore(segmenter.num_classes, device=torch_device) if labeled and boundary_f else None
    if on_start is not None and dist_info.is_main:
        on_start(len(dataset))
    written = 0
    with opencv_single_threaded(loader.num_workers > 0):
        for images, labels in loader:
            predictions = segmenter.predict(images, labels.shape[-2:])
            if labeled:
                labels = labels.to(predictions.device, non_blocking=True)  # once, for both metrics
                matrix.update(predictions, labels)
            if boundary is not None:
                for prediction, label in zip(predictions, labels, strict=True):
                    boundary.update(prediction, label)
            if out_dir is not None:
                for prediction in predictions.cpu().numpy():
                    write_prediction_pngs(out_dir, dataset.frame_id(indices[written]), prediction)
                    written += 1
            if on_frames is not None and dist_info.is_main:
                on_frames(len(predictions) * dist_info.world)
    matrix.reduce()
    if boundary is not None:
        boundary.reduce()
    scores = boundary.result() if boundary is not None else None
    result = evaluation_result(matrix.numpy(), len(dataset), boundary=scores) if labeled else None
    return Evaluation(result, len(dataset), size, out_dir, sum_over_ranks(written, dist_info), dist_info.is_main)


def evaluation_loader(dataset: ShardDataset, indices: list[int], batch_size: int, device: torch.device,
                      workers: int | None) -> DataLoader:
    """The frames `indices` of `dataset` in order, in batches; workers as for training by default."""
    return DataLoader(dataset, batch_size=batch_size, sampler=indices, num_workers=loader_workers(workers, device.type),
                      pin_memory=device.type == "cuda")


def predict_frames(
    checkpoint_path: str | os.PathLike,
    shards: str | os.PathLike,
    split: str,
    indices: list[int],
    device: str = "auto",
    eval_size: tuple[int, int] | None = None,
    amp: bool = False,
    batch_size: int = 2,
) -> list[np.ndarray]:
    """A checkpoint's (H, W) uint8 trainId predictions for frames `indices` of a split, at the labels'
    stored size: the maps `evaluate` scores for those frames (with the same `eval_size` and `amp`)."""
    return [ids for ids, _ in frame_predictions(checkpoint_path, shards, split, indices, device, eval_size, amp,
                                                batch_size, boundaries=False)]


def predict_frame_boundaries(
    checkpoint_path: str | os.PathLike,
    shards: str | os.PathLike,
    split: str,
    indices: list[int],
    device: str = "auto",
    eval_size: tuple[int, int] | None = None,
    amp: bool = False,
    batch_size: int = 2,
) -> list[np.ndarray]:
    """The boundary head's maps of a dl-boundary or dl-hed-head checkpoint for frames `indices` of a split,
    as (H, W) uint8 round(255 p) at the labels' stored size (`Segmenter.predict_boundaries`).

    Raises:
        SegnetError: the checkpoint holds no boundary head.
    """
    return [boundary for _, boundary in frame_predictions(checkpoint_path, shards, split, indices, device,
                                                          eval_size, amp, batch_size, boundaries=True)]


def frame_predictions(checkpoint_path: str | os.PathLike, shards: str | os.PathLike, split: str, indices: list[int],
                      device: str = "auto", eval_size: tuple[int, int] | None = None, amp: bool = False,
                      batch_size: int = 2, boundaries: bool = False) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """(trainIds, boundary map or None) of frames `indices`, at the labels' stored size, from one pass of
    the model: `predict_frames`' maps, and with `boundaries` `predict_frame_boundaries`' too."""
    torch_device = resolve_device(device)
    segmenter = load_segmenter(checkpoint_path, torch_device, amp, boundaries=boundaries)
    dataset = ShardDataset(shards, split, segmenter.in_channels, eval_size or segmenter.input_size,
                           resize_labels=False)
    predictions = []
    for images, labels in evaluation_loader(dataset, indices, batch_size, torch_device, workers=0):
        if boundaries:
            ids, maps = (t.cpu().numpy() for t in segmenter.predict_boundaries(images, labels.shape[-2:]))
            predictions.extend(zip(ids, maps, strict=True))
        else:
            predictions.extend((ids, None) for ids in segmenter.predict(images, labels.shape[-2:]).cpu().numpy())
    return predictions
