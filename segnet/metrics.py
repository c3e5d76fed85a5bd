"""Semantic segmentation metrics as Cityscapes' official evaluation computes them.

Everything derives from one confusion matrix over trainIds (rows = ground truth, columns = prediction):

- A pixel whose ground truth is `ignore_index` (255) counts nowhere, whatever was predicted there; in
  `cityscapesscripts` such a pixel is neither a false positive nor a false negative of any class either.
- A class's IoU is TP / (TP + FP + FN). A class that occurs neither in the ground truth nor in the
  prediction (at non-ignored pixels) has no IoU: NaN here, None in JSON, NaN in `cityscapesscripts`.
  A class that is predicted but absent from the ground truth has IoU 0.
- mIoU is the mean over the classes that have an IoU, as `cityscapesscripts`' "averageScoreClasses".
- A prediction outside 0..num_classes-1 at a non-ignored pixel (possible only for predictions that
  are not an argmax over the classes) is counted in no cell. Here `cityscapesscripts` differs: it
  reads such a prediction as labelId 0 ("unlabeled") and counts it as a false negative of the
  ground-truth class, so its IoU of that class is lower. segnet's predictions never hit this case.
- With no counted pixel at all (an empty matrix), mIoU and pixel accuracy are NaN, as Cityscapes'
  average of no scores is NaN.

tests/test_predictions.py checks these rules against `cityscapesscripts` 2.3.0 on written prediction files.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from hedprep.shards import IGNORE_INDEX, NUM_CLASSES, TRAIN_CLASSES
from segnet.boundary import BoundaryScore

ArrayLike = np.ndarray | torch.Tensor


def _as_tensor(values: ArrayLike) -> torch.Tensor:
    """A tensor view of a numpy array (no copy where possible), or the tensor itself."""
    if isinstance(values, torch.Tensor):
        return values
    return torch.from_numpy(np.ascontiguousarray(values))


def confusion_matrix(
    pred: ArrayLike, label: ArrayLike, num_classes: int = NUM_CLASSES, ignore_index: int = IGNORE_INDEX
) -> np.ndarray:
    """Count (ground truth, prediction) pairs: a (num_classes, num_classes) int64 matrix.

    `pred` and `label` are integer numpy arrays or torch tensors (on any device) of the same shape,
    one frame (H, W) or a batch (N, H, W). Pixels labelled `ignore_index` are skipped, and so are
    predictions outside 0..num_classes-1 (see the module docstring).

    Raises:
        ValueError: shapes differ, or a label is neither a class nor `ignore_index`.
    """
    pred_t = _as_tensor(pred)
    label_t = _as_tensor(label).to(pred_t.device)
    if pred_t.shape != label_t.shape:
        raise ValueError(f"prediction shape {tuple(pred_t.shape)} differs from label shape {tuple(label_t.shape)}")
    label_t, pred_t = label_t.long(), pred_t.long()
    ignored = label_t == ignore_index
    bad = ~ignored & ((label_t < 0) | (label_t >= num_classes))
    if bool(bad.any()):
        values = sorted(set(label_t[bad].unique().tolist()))
        raise ValueError(f"labels {values[:5]} are neither classes 0..{num_classes - 1} nor {ignore_index}")
    return confusion_counts(pred_t, label_t, num_classes, ignore_index).cpu().numpy()


def confusion_counts(pred: torch.Tensor, label: torch.Tensor, num_classes: int = NUM_CLASSES,
                     ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """`confusion_matrix` as an int64 tensor on the inputs' device, without checking the labels (no
    host synchronisation): a label that is neither a class nor `ignore_index` counts nowhere."""
    label, pred = label.long(), pred.long()
    counted = (label != ignore_index) & (label >= 0) & (label < num_classes) & (pred >= 0) & (pred < num_classes)
    # One bincount; every skipped pixel lands in the extra last bin, which is dropped.
    cells = num_classes * num_classes
    index = torch.where(counted, label * num_classes + pred, cells)
    counts = torch.bincount(index.flatten(), minlength=cells + 1)[:cells]
    return counts.reshape(num_classes, num_classes)


class DeviceConfusion:
    """A confusion matrix summed on the device of the predictions: `update` never waits for the device,
    `reduce` sums it over the ranks of a distributed run, `numpy` reads it once at the end."""

    def __init__(self, num_classes: int, device: torch.device, ignore_index: int = IGNORE_INDEX) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.counts = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(self, pred: torch.Tensor, label: torch.Tensor) -> None:
        """Add the pixels of one frame or batch; `label` is moved to `pred`'s device."""
        self.counts += confusion_counts(pred, label.to(pred.device, non_blocking=True), self.num_classes,
                                        self.ignore_index)

    def reduce(self) -> None:
        """Sum the counts of every rank in place (a no-op outside a process group)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.counts)

    def numpy(self) -> np.ndarray:
        return self.counts.cpu().numpy()


@dataclass
class ConfusionMatrix:
    """A confusion matrix accumulated over batches; ranks of a distributed run merge theirs with `+`.

    `sum(matrices)` works too (it starts from 0).
    """

    num_classes: int = NUM_CLASSES
    ignore_index: int = IGNORE_INDEX
    matrix: np.ndarray = field(default=None)  # type: ignore[assignment]  # zeros when not given

    def __post_init__(self) -> None:
        if self.matrix is None:
            self.matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        elif self.matrix.shape != (self.num_classes, self.num_classes):
            raise ValueError(f"matrix shape {self.matrix.shape} is not {self.num_classes}x{self.num_classes}")

    def update(self, pred: ArrayLike, label: ArrayLike) -> None:
        """Add the pixels of one frame or batch (see `confusion_matrix`)."""
        self.matrix += confusion_matrix(pred, label, self.num_classes, self.ignore_index)

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """A new accumulator holding both counts."""
        if (other.num_classes, other.ignore_index) != (self.num_classes, self.ignore_index):
            raise ValueError(
                f"cannot merge a {other.num_classes}-class matrix (ignore {other.ignore_index}) into a "
                f"{self.num_classes}-class one (ignore {self.ignore_index})"
            )
        return ConfusionMatrix(self.num_classes, self.ignore_index, self.matrix + other.matrix)

    def __add__(self, other: ConfusionMatrix) -> ConfusionMatrix:
        return self.merge(other)

    def __radd__(self, other: Any) -> ConfusionMatrix:
        if isinstance(other, int) and other == 0:
            return self
        return NotImplemented


def iou_per_class(matrix: np.ndarray) -> np.ndarray:
    """Each class's IoU, TP / (TP + FP + FN), as float64; NaN for a class in neither ground truth nor prediction."""
    matrix = np.asarray(matrix, dtype=np.float64)
    tp = np.diag(matrix)
    union = matrix.sum(axis=0) + matrix.sum(axis=1) - tp
    iou = np.full_like(tp, np.nan)
    np.divide(tp, union, out=iou, where=union > 0)
    return iou


def mean_iou(matrix: np.ndarray) -> float:
    """The mean IoU over the classes that occur in ground truth or prediction; NaN if none does."""
    iou = iou_per_class(matrix)
    present = iou[~np.isnan(iou)]
    return float(present.mean()) if present.size else math.nan


def pixel_accuracy(matrix: np.ndarray) -> float:
    """The fraction of counted pixels predicted right; NaN if no pixel was counted."""
    total = int(np.asarray(matrix).sum())
    return float(np.trace(matrix)) / total if total else math.nan


def _json_number(value: float) -> float | None:
    return None if math.isnan(value) else value


@dataclass(frozen=True)
class EvalResult:
    """The figures of one evaluation; IoUs and accuracy are fractions in [0, 1]."""

    miou: float  # NaN if no class occurs
    iou: dict[str, float | None]  # class name -> IoU, None for a class in neither ground truth nor prediction
    pixel_accuracy: float
    matrix: np.ndarray  # the confusion matrix, rows = ground truth, columns = prediction
    frames: int
    boundary: tuple[BoundaryScore, ...] | None = None  # the boundary F per threshold, where it was computed

    def to_json(self) -> dict[str, Any]:
        """Plain JSON values: miou, iou, pixel_accuracy (NaN as null), frames and the counted pixels, and
        boundary_f where computed: per threshold {threshold, pixels, mean, per_class: {class: F or null}}."""
        figures: dict[str, Any] = {
            "miou": _json_number(self.miou),
            "iou": dict(self.iou),
            "pixel_accuracy": _json_number(self.pixel_accuracy),
            "frames": self.frames,
            "pixels": int(self.matrix.sum()),
        }
        if self.boundary is not None:
            figures["boundary_f"] = [
                {"threshold": score.threshold, "pixels": score.pixels, "mean": _json_number(score.mean_f),
                 "per_class": dict(zip(self.iou, score.per_class, strict=True))}
                for score in self.boundary]
        return figures


def evaluation_result(matrix: np.ndarray, frames: int, class_names: Sequence[str] = TRAIN_CLASSES,
                      boundary: Sequence[BoundaryScore] | None = None) -> EvalResult:
    """The `EvalResult` of a confusion matrix accumulated over `frames` frames (and of their boundary F)."""
    matrix = np.asarray(matrix)
    if matrix.shape != (len(class_names), len(class_names)):
        raise ValueError(f"matrix shape {matrix.shape} does not fit {len(class_names)} class names")
    iou = iou_per_class(matrix)
    return EvalResult(
        miou=mean_iou(matrix),
        iou={name: _json_number(float(value)) for name, value in zip(class_names, iou, strict=True)},
        pixel_accuracy=pixel_accuracy(matrix),
        matrix=matrix,
        frames=frames,
        boundary=None if boundary is None else tuple(boundary),
    )
