"""The boundary F-score of issue 19: how well predicted class boundaries match the ground truth's.

Per class c and frame:

- P = (prediction == c) and G = (label == c), both false where the label is `ignore_index` (255).
- A mask's boundary holds the pixels that differ from their right, lower or lower-right neighbour (in
  the last row only the right one counts, in the last column only the lower one; the bottom-right pixel
  is never on it).
- The tolerance is t = ceil(th * sqrt(H^2 + W^2)) pixels (2, 5, 9 and 12 px for the default
  thresholds at 1024x2048); a boundary is dilated by the disk x^2 + y^2 <= t^2.
- Precision = |Bp and dilated Bg| / |Bp|, recall = |Bg and dilated Bp| / |Bg|. Both boundaries empty:
  P = R = 1; only Bp empty: P = 1, R = 0; only Bg empty: P = 0, R = 1. F = 2PR / (P + R), 0 when
  P + R = 0.
- A frame counts for c when c occurs in P or G; c's F is the mean over its counted frames, and the mean
  boundary F is the mean over the classes counted in at least one frame.

Boundaries are found for every class at once from the pixels whose neighbours differ; each class's
dilations (OpenCV, a disk kernel built here: `cv2.getStructuringElement`'s ellipse is not that disk)
run on the bounding box of its two boundaries only, which holds every pixel the counts read.

Speed (2-core AMD EPYC Zen 3 VM, KVM; OpenCV 5.1, 2 threads): a 1024x2048 worst case, 19 classes each
spread over the whole frame, 4 thresholds, takes 1.1 s per frame: 0.04 s per class map for the
boundaries, about 30 ms per class and boundary for its 4 dilations (one `cv2.distanceTransform`, which
gives the same sets, is no faster). Real frames are cheaper, their classes' boxes being smaller: 0.3 s
for a trained model's predictions on the fixture's street scenes, which keeps `segnet evaluate` on a CPU
within 1.5x of its time without the boundary F (docs/performance.md, benchmarks/boundary_f.py).

On a GPU that host work would cost more than the model: `frame_boundary_f_tensor` computes the same
figures on the device, every class of both maps at once (each pixel's boundaries as the bits of one
int64 word, a disk dilation as ORs of shifted words), and `BoundaryFScore` on a CUDA device uses it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from hedprep.shards import IGNORE_INDEX, NUM_CLASSES

THRESHOLDS = (0.0005, 0.001875, 0.00375, 0.005)


def tolerance_pixels(height: int, width: int, threshold: float) -> int:
    """The tolerance t = ceil(threshold * sqrt(H^2 + W^2)) in pixels, for a frame of height x width."""
    return math.ceil(threshold * math.hypot(height, width))


def disk_kernel(radius: int) -> np.ndarray:
    """A (2r+1, 2r+1) uint8 kernel: 1 where x^2 + y^2 <= r^2, the centre at (r, r)."""
    offsets = np.arange(-radius, radius + 1)
    return (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius * radius).astype(np.uint8)


def class_boundaries(values: np.ndarray, num_classes: int) -> list[np.ndarray]:
    """Each class's 1-pixel boundary in a 2-D class map, as flat pixel indices (ascending).

    A pixel p is on class c's boundary when it and a neighbour q (right, lower, lower-right) differ
    and one of the two is c; values outside 0..num_classes-1 (ignored pixels) belong to no class.
    """
    # Replicating the last row and column makes missing neighbours equal to p, or to its lower
    # (right) neighbour for the lower-right one: the same classes as the definition's neighbours.
    padded = np.pad(values, ((0, 1), (0, 1)), mode="edge")
    here, right, down, diag = padded[:-1, :-1], padded[:-1, 1:], padded[1:, :-1], padded[1:, 1:]
    edge = (here != right) | (here != down) | (here != diag)
    pixels = np.flatnonzero(edge)
    own, r, d, g = here[edge], right[edge], down[edge], diag[edge]
    # p's own class, then each neighbour's class that differs from p's and from the ones before it.
    takes = (np.ones_like(own, dtype=bool), r != own, (d != own) & (d != r), (g != own) & (g != r) & (g != d))
    classes = np.concatenate([v[t] for v, t in zip((own, r, d, g), takes, strict=True)])
    owners = np.concatenate([pixels[t] for t in takes])
    real = (classes >= 0) & (classes < num_classes)
    classes, owners = classes[real], owners[real]
    order = np.argsort(classes, kind="stable")
    starts = np.searchsorted(classes[order], np.arange(num_classes + 1))
    return [np.sort(owners[order[starts[c] : starts[c + 1]]]) for c in range(num_classes)]


def _hits(source: np.ndarray, target: np.ndarray, width: int, radius: int) -> int:
    """How many `target` pixels lie within the disk of `radius` around some `source` pixel (flat indices)."""
    rows_s, cols_s = np.divmod(source, width)
    rows_t, cols_t = np.divmod(target, width)
    top, left = min(rows_s.min(), rows_t.min()), min(cols_s.min(), cols_t.min())
    bottom, right = max(rows_s.max(), rows_t.max()), max(cols_s.max(), cols_t.max())
    # Both sets lie inside this box, so dilating within it reads every source pixel that matters.
    image = np.zeros((bottom - top + 1, right - left + 1), dtype=np.uint8)
    image[rows_s - top, cols_s - left] = 1
    dilated = cv2.dilate(image, disk_kernel(radius), borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return int(dilated[rows_t - top, cols_t - left].sum())


def boundary_f(pred_boundary: np.ndarray, label_boundary: np.ndarray, width: int, radius: int) -> float:
    """The F-score of two boundaries (flat pixel indices in a frame `width` wide) at tolerance `radius`."""
    if pred_boundary.size == 0 or label_boundary.size == 0:
        # Both empty: P = R = 1, F = 1; only one empty: P or R is 0 and the other 1, F = 0.
        return float(pred_boundary.size == label_boundary.size)
    precision = _hits(label_boundary, pred_boundary, width, radius) / pred_boundary.size
    recall = _hits(pred_boundary, label_boundary, width, radius) / label_boundary.size
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def frame_boundary_f(prediction: np.ndarray, label: np.ndarray, num_classes: int = NUM_CLASSES,
                     thresholds: Sequence[float] = THRESHOLDS, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """One frame's boundary F: a (len(thresholds), num_classes) float64 array, NaN for classes the frame
    does not count (in neither the prediction nor the label, ignored pixels left out).

    Raises:
        ValueError: shapes differ, are not 2-D, or a label is neither a class nor `ignore_index`.
    """
    prediction, label = np.asarray(prediction), np.asarray(label)
    if prediction.shape != label.shape or prediction.ndim != 2:
        raise ValueError(f"prediction {prediction.shape} and label {label.shape} must be one (H, W) frame")
    label = label.astype(np.int32)
    ignored = label == ignore_index
    if np.any(~ignored & ((label < 0) | (label >= num_classes))):
        raise ValueError(f"labels must be classes 0..{num_classes - 1} or {ignore_index}")
    # Ignored pixels become -1 in both maps: no class, as P and G are false there.
    pred_values = np.where(ignored, -1, prediction.astype(np.int32))
    label_values = np.where(ignored, -1, label)
    pred_bounds = class_boundaries(pred_values, num_classes)
    label_bounds = class_boundaries(label_values, num_classes)
    # A class counts when it has a pixel in either map (a bincount: np.unique sorts the frame).
    counted = np.zeros(num_classes, dtype=bool)
    for values in (pred_values, label_values):
        pixels = np.bincount(np.clip(values, -1, num_classes).ravel() + 1, minlength=num_classes + 2)
        counted |= pixels[1 : num_classes + 1] > 0
    height, width = label.shape
    scores = np.full((len(thresholds), num_classes), np.nan)
    for i, threshold in enumerate(thresholds):
        radius = tolerance_pixels(height, width, threshold)
        for c in np.flatnonzero(counted):
            scores[i, c] = boundary_f(pred_bounds[c], label_bounds[c], width, radius)
    return scores


def frame_boundary_f_tensor(prediction: torch.Tensor, label: torch.Tensor, num_classes: int = NUM_CLASSES,
                            thresholds: Sequence[float] = THRESHOLDS, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """`frame_boundary_f` on (H, W) tensors, on their device, every class at once: a (len(thresholds),
    num_classes) float64 tensor, NaN for classes the frame does not count. The same figures (tested).

    Each pixel holds one int64 word whose bit c is class c's prediction boundary and bit C + c its
    label boundary, so one bitwise OR dilates every class of both maps; for a GPU, where OpenCV's
    per-class work on the host would cost more than the model. A label that is neither a class nor
    `ignore_index` belongs to no class (it is not checked).
    """
    if 2 * num_classes > 62:
        raise ValueError(f"{num_classes} classes do not fit the boundary words (at most 31)")
    if prediction.shape != label.shape or label.dim() != 2:
        raise ValueError(f"prediction {tuple(prediction.shape)} and label {tuple(label.shape)} must be one (H, W) "
                         "frame")
    ignored = label == ignore_index
    pred_values = torch.where(ignored, -1, prediction.long())
    label_values = torch.where(ignored, -1, label.long())
    present = torch.zeros(num_classes + 2, dtype=torch.int64, device=label.device)
    for values in (pred_values, label_values):  # bin 0: no class, bin C + 1: past the classes
        present += torch.bincount(values.clamp(-1, num_classes).flatten() + 1, minlength=num_classes + 2)
    counted = present[1 : num_classes + 1] > 0
    words = _boundary_bits(pred_values, num_classes) | (_boundary_bits(label_values, num_classes) << num_classes)
    flat = words.flatten()
    # Only boundary pixels are ever counted: read the dilations there alone (nonzero waits for the device).
    where = torch.nonzero(flat).squeeze(1)
    own = flat[where]
    bits = torch.arange(num_classes, device=label.device)
    low = (1 << num_classes) - 1

    def per_class(selected: torch.Tensor) -> torch.Tensor:  # set pixels per bit 0..C-1
        return ((selected[:, None] >> bits) & 1).sum(0).double()

    sizes_p, sizes_g = per_class(own & low), per_class(own >> num_classes)
    height, width = label.shape
    rows = []
    radii = [tolerance_pixels(height, width, threshold) for threshold in thresholds]
    dilations = _Dilations(words, max(radii, default=0))
    for radius in radii:
        near = dilations.disk(radius).flatten()[where]
        precision = per_class(own & (near >> num_classes) & low) / sizes_p  # Bp pixels near Bg
        recall = per_class((own >> num_classes) & near & low) / sizes_g  # Bg pixels near Bp
        f = 2 * precision * recall / (precision + recall)
        f = torch.where(precision + recall > 0, f, 0.0)
        empty = (sizes_p == 0) | (sizes_g == 0)  # F = 1 when both are, else 0
        f = torch.where(empty, (sizes_p == sizes_g).double(), f)
        rows.append(torch.where(counted, f, math.nan))
    return torch.stack(rows)


def _boundary_bits(values: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per pixel, an int64 word with bit c set when the pixel is on class c's boundary in `values` (an
    (H, W) class map, -1 for no class): a neighbour (right, lower, lower-right; past the last row or
    column replicated, as `class_boundaries` explains) differs, and one of the two is c."""
    own = torch.where(values >= 0, 1 << values.clamp(0, num_classes - 1), 0)
    own = torch.where(values < num_classes, own, 0)
    padded_values = torch.cat([values, values[-1:]], dim=0)
    padded_values = torch.cat([padded_values, padded_values[:, -1:]], dim=1)
    padded_own = torch.cat([own, own[-1:]], dim=0)
    padded_own = torch.cat([padded_own, padded_own[:, -1:]], dim=1)
    words = torch.zeros_like(own)
    for dy, dx in ((0, 1), (1, 0), (1, 1)):
        other_values = padded_values[dy : dy + values.shape[0], dx : dx + values.shape[1]]
        other_own = padded_own[dy : dy + values.shape[0], dx : dx + values.shape[1]]
        words |= torch.where(other_values != values, own | other_own, 0)
    return words


class _Dilations:
    """Dilations of an (H, W) int64 word map by disks of radius up to `max_radius`, OR-ing shifted copies:
    a disk's row dy is a horizontal run of half-width isqrt(r^2 - dy^2), each run built from runs of
    powers of two over the words padded on the left (so that a run may start before the first column)."""

    def __init__(self, words: torch.Tensor, max_radius: int) -> None:
        self.height, self.width = words.shape
        self.pad = max_radius
        padded = torch.cat([words.new_zeros(self.height, max_radius), words], dim=1)
        self.powers = {1: padded}  # length k: OR of padded[x .. x + k - 1] (none past the right edge)

    def _forward_run(self, length: int) -> torch.Tensor:
        power = 1 << (length.bit_length() - 1)
        while max(self.powers) < power:
            k = max(self.powers)
            self.powers[2 * k] = _or_shifted(self.powers[k], k, dim=1)
        return _or_shifted(self.powers[power], length - power, dim=1) if length > power else self.powers[power]

    def disk(self, radius: int) -> torch.Tensor:
        if radius > self.pad:
            raise ValueError(f"radius {radius} is past the padding of {self.pad}")
        height, width = self.height, self.width
        out = torch.zeros(height, width, dtype=torch.int64, device=self.powers[1].device)
        for dy in range(min(radius, height - 1) + 1):
            half = math.isqrt(radius * radius - dy * dy)
            # the run over words[x - half .. x + half] starts at padded column x + pad - half
            centred = self._forward_run(2 * half + 1)[:, self.pad - half : self.pad - half + width]
            out[: height - dy] |= centred[dy:]
            if dy:
                out[dy:] |= centred[: height - dy]
        return out


def _or_shifted(words: torch.Tensor, shift: int, dim: int) -> torch.Tensor:
    """words[i] | words[i + shift] along `dim` (nothing past the end)."""
    out = words.clone()
    size = words.shape[dim]
    if 0 < shift < size:
        out.narrow(dim, 0, size - shift).bitwise_or_(words.narrow(dim, shift, size - shift))
    return out


@dataclass(frozen=True)
class BoundaryScore:
    """The boundary F at one threshold over the frames seen."""

    threshold: float
    pixels: int  # the tolerance t of the frames' size
    mean_f: float  # NaN when no class was counted in any frame
    per_class: list[float | None]  # None for a class no frame counted


class BoundaryFScore:
    """Boundary F accumulated frame by frame, like `ConfusionMatrix`: `update` per (H, W) frame,
    `result` for one `BoundaryScore` per threshold. Every frame must have the same size.

    `device`: where the sums live and how frames are scored: on a CPU by `frame_boundary_f` (OpenCV, each
    class on its boundaries' box), elsewhere by `frame_boundary_f_tensor` on that device (which waits
    for it once a frame, to select the boundary pixels). `on_tensors` scores by `frame_boundary_f_tensor`
    on a CPU too (for tests).
    """

    def __init__(self, num_classes: int = NUM_CLASSES, thresholds: Sequence[float] = THRESHOLDS,
                 ignore_index: int = IGNORE_INDEX, device: torch.device | str = "cpu",
                 on_tensors: bool | None = None) -> None:
        self.num_classes = num_classes
        self.thresholds = tuple(thresholds)
        self.ignore_index = ignore_index
        self.device = torch.device(device)
        self.on_tensors = self.device.type != "cpu" if on_tensors is None else on_tensors
        self.f_sums = torch.zeros((len(self.thresholds), num_classes), dtype=torch.float64, device=self.device)
        self.frames = torch.zeros(num_classes, dtype=torch.int64, device=self.device)  # counted frames per class
        self.size: tuple[int, int] | None = None

    def update(self, prediction: np.ndarray | torch.Tensor, label: np.ndarray | torch.Tensor) -> None:
        """Add one frame (see `frame_boundary_f`): numpy arrays or tensors on any device."""
        size = tuple(label.shape)
        if self.size is not None and size != self.size:
            raise ValueError(f"frame size {size} differs from the earlier frames' {self.size}")
        if self.on_tensors:
            scores = frame_boundary_f_tensor(torch.as_tensor(prediction).to(self.device, non_blocking=True),
                                             torch.as_tensor(label).to(self.device, non_blocking=True),
                                             self.num_classes, self.thresholds, self.ignore_index)
        else:
            scores = torch.from_numpy(frame_boundary_f(_host_array(prediction), _host_array(label), self.num_classes,
                                                       self.thresholds, self.ignore_index)).to(self.device)
        self.size = size  # type: ignore[assignment]  # checked 2-D by either way of scoring
        counted = ~scores[0].isnan()
        self.f_sums += torch.where(counted, scores, 0.0)
        self.frames += counted

    def reduce(self) -> None:
        """Sum the F sums and counted frames of every rank in place (a no-op outside a process group);
        a rank without frames takes the others' frame size."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        size = torch.tensor(self.size or (0, 0), dtype=torch.int64)  # a CPU tensor: the group's gloo side
        for tensor in (self.f_sums, self.frames):
            dist.all_reduce(tensor)
        dist.all_reduce(size, op=dist.ReduceOp.MAX)
        self.size = (int(size[0]), int(size[1])) if int(size[0]) else None

    def result(self) -> list[BoundaryScore]:
        """Per threshold: its t (0 before any frame), the mean F over counted classes, each class's F."""
        f_sums, frames = self.f_sums.cpu().numpy(), self.frames.cpu().numpy()
        counted = frames > 0
        means = f_sums[:, counted] / frames[counted]
        results = []
        for i, threshold in enumerate(self.thresholds):
            pixels = tolerance_pixels(*self.size, threshold) if self.size else 0
            per_class: list[float | None] = [None] * self.num_classes
            for c, value in zip(np.flatnonzero(counted), means[i], strict=True):
                per_class[c] = float(value)
            mean_f = float(means[i].mean()) if counted.any() else math.nan
            results.append(BoundaryScore(threshold, pixels, mean_f, per_class))
        return results


def _host_array(values: np.ndarray | torch.Tensor) -> np.ndarray:
    return values.cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
