"""Which rule a resolution level's labels should use: nearest-pixel sampling or block majority.

    python benchmarks/label_downsampling.py                  # 8 fixture frames of 1024x2048, about 10 s
    python benchmarks/label_downsampling.py --frames 4 --size 512x1024

The criterion is what a model trained at a low size is scored against: `segnet evaluate` upsamples its
prediction to the full-resolution labels. So each low-resolution label map is upsampled back to full
resolution by its nearest pixel (cv2.INTER_NEAREST_EXACT) and scored as Cityscapes scores a prediction
(the "oracle" score, the best a model trained on that map could reach): a 19-class confusion over the
pixels whose full-resolution label is not 255, where a predicted 255 counts as wrong.
Measured, for each rule at levels 1..3 (`hedprep.shards.levels`):
- oracle mIoU, pixel accuracy and per-class IoU, and the fraction of ignore (255) pixels;
- time per frame of each rule, one thread.
And at each training stage size, for four label paths:
- (i) today's: cv2.INTER_NEAREST of the full-resolution labels straight to the stage size;
- (ii) majority levels, then `resize_labels` (nearest) from the level `choose_level` picks;
- (iii) nearest levels, then `resize_labels`;
- (iv) majority levels, then an area-weighted majority for the last step (for comparison only);
their oracle scores, ignore fractions, agreement with (i), and the time of the last step: `resize_labels`
against the area-weighted majority.
Prints Markdown tables (docs/shard-format.md).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hedprep.cityscapes import IGNORE_INDEX, NUM_CLASSES, labelid_to_trainid, list_frames  # noqa: E402
from hedprep.fixture import make_fixture  # noqa: E402
from hedprep.options import parse_size  # noqa: E402
from hedprep.shards.levels import (  # noqa: E402
    choose_level,
    downsample_labels,
    level_size,
    resize_labels,
)

LEVELS = (1, 2, 3)
STAGES = "128x224,256x448,512x912"  # segnet's DEFAULT_SCHEDULE sizes
CLASS_NAMES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)  # fmt: skip
_PRED_SLOT = np.full(256, NUM_CLASSES, np.int64)  # prediction -> confusion column; 255 -> the extra column
_PRED_SLOT[:NUM_CLASSES] = np.arange(NUM_CLASSES)

Labels = np.ndarray  # (H, W) uint8 trainIds, 255 = ignore


def nearest_level(label: Labels, level: int) -> Labels:
    """Level `level` by nearest-pixel sampling: each block's pixel under the output pixel's centre."""
    return resize_labels(label, level_size(*label.shape, level))


RULES: dict[str, Callable[[Labels, int], Labels]] = {"nearest": nearest_level, "majority": downsample_labels}


def area_majority(label: Labels, size: tuple[int, int]) -> Labels:
    """`label` -> `size` by the label covering most of each output pixel's area (ties: lowest trainId, ignore last).

    One float plane per present label, area-resized in groups of at most 4 channels (OpenCV's INTER_AREA
    takes no more at non-integer scales), then argmax.
    """
    h, w = size
    present = np.unique(label)  # sorted, so 255 (ignore) is last and argmax's first-max picks the lowest id
    best = np.full((h, w), -1.0, np.float32)
    out = np.empty((h, w), np.uint8)
    for start in range(0, len(present), 4):
        group = present[start : start + 4]
        planes = np.stack([label == value for value in group], axis=-1).astype(np.float32)
        shares = cv2.resize(planes, (w, h), interpolation=cv2.INTER_AREA).reshape(h, w, len(group))
        top = shares.argmax(axis=-1)
        share = np.take_along_axis(shares, top[..., None], axis=-1)[..., 0]
        better = share > best
        best[better] = share[better]
        out[better] = group[top[better]]
    return out


def confusion(truth: Labels, pred: Labels) -> np.ndarray:
    """(19, 20) counts of (truth, prediction) over pixels with truth != 255; column 19 = predicted 255."""
    counted = truth != IGNORE_INDEX
    cells = truth[counted].astype(np.int64) * (NUM_CLASSES + 1) + _PRED_SLOT[pred[counted]]
    counts = np.bincount(cells, minlength=NUM_CLASSES * (NUM_CLASSES + 1))
    return counts.reshape(NUM_CLASSES, NUM_CLASSES + 1)


def class_iou(matrix: np.ndarray) -> np.ndarray:
    """IoU = TP / (TP + FP + FN) per class; NaN where TP + FP + FN = 0. A predicted 255 is only an FN."""
    tp = np.diag(matrix[:, :NUM_CLASSES]).astype(np.float64)
    fp = matrix[:, :NUM_CLASSES].sum(axis=0) - tp
    fn = matrix.sum(axis=1) - tp
    union = tp + fp + fn
    iou = np.full(NUM_CLASSES, np.nan)
    np.divide(tp, union, out=iou, where=union > 0)
    return iou


@dataclass
class Tally:
    """One label map's scores accumulated over frames."""

    matrix: np.ndarray = field(default_factory=lambda: np.zeros((NUM_CLASSES, NUM_CLASSES + 1), np.int64))
    ignored: int = 0
    pixels: int = 0

    def add(self, truth: Labels, low: Labels) -> None:
        """Score `low` (any size) against the full-resolution `truth` after a nearest upsampling."""
        self.matrix += confusion(truth, resize_labels(low, truth.shape))
        self.ignored += int(np.count_nonzero(low == IGNORE_INDEX))
        self.pixels += low.size

    @property
    def miou(self) -> float:
        return float(np.nanmean(class_iou(self.matrix)))

    @property
    def accuracy(self) -> float:
        return float(np.trace(self.matrix[:, :NUM_CLASSES])) / max(1, int(self.matrix.sum()))

    @property
    def ignore_fraction(self) -> float:
        return self.ignored / max(1, self.pixels)


def stage_paths(label: Labels, size: tuple[int, int], levels: int) -> dict[str, Labels]:
    """The label map at `size` along each compared path (see the module doc)."""
    h, w = size
    k = choose_level(*label.shape, levels, size)
    majority = downsample_labels(label, k)
    return {
        "(i) full res, INTER_NEAREST": cv2.resize(label, (w, h), interpolation=cv2.INTER_NEAREST),
        "(ii) majority level + nearest": resize_labels(majority, size),
        "(iii) nearest level + nearest": resize_labels(nearest_level(label, k), size),
        "(iv) majority level + area majority": area_majority(majority, size),
    }


def ms_per_call(run: Callable[[Labels], object], labels: list[Labels], repeats: int) -> float:
    """Mean over `labels` of the best of `repeats` timed calls of `run(label)`, in ms (after one warm-up)."""
    total = 0.0
    for label in labels:
        run(label)
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            run(label)
            best = min(best, time.perf_counter() - start)
        total += best
    return 1000 * total / len(labels)


def read_labels(root: Path) -> list[Labels]:
    """The trainId maps of the fixture's train frames."""
    return [
        labelid_to_trainid(cv2.imread(str(frame.label), cv2.IMREAD_UNCHANGED)) for frame in list_frames(root, "train")
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=8, help="fixture frames (default 8)")
    parser.add_argument("--size", default="1024x2048", help="frame size HxW (default 1024x2048)")
    parser.add_argument("--stages", default=STAGES, help=f"training stage sizes, comma-separated (default {STAGES})")
    parser.add_argument("--seed", type=int, default=3, help="fixture seed (default 3)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per frame, best kept (default 3)")
    parser.add_argument("--work", default=None, help="folder for the fixture (default: a temp folder)")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    height, width = parse_size(args.size)
    stages = [parse_size(text, "--stages") for text in args.stages.split(",")]
    work = Path(args.work or tempfile.mkdtemp(prefix="label-downsampling-"))
    root = work / "cityscapes"
    make_fixture(root, {"train": args.frames, "val": 0, "test": 0}, size=(height, width), seed=args.seed)
    labels = read_labels(root)

    full = Tally()
    by_level = {(rule, k): Tally() for rule in RULES for k in LEVELS}
    by_stage: dict[tuple[str, tuple[int, int]], Tally] = {}
    agree = {}  # (path, stage) -> [pixels equal to (i), pixels defined in both]
    for label in labels:
        full.add(label, label)
        for (rule, k), tally in by_level.items():
            tally.add(label, RULES[rule](label, k))
        for size in stages:
            paths = stage_paths(label, size, max(LEVELS))
            today = paths["(i) full res, INTER_NEAREST"]
            for name, low in paths.items():
                by_stage.setdefault((name, size), Tally()).add(label, low)
                both = (low != IGNORE_INDEX) & (today != IGNORE_INDEX)
                counts = agree.setdefault((name, size), [0, 0])
                counts[0] += int(np.count_nonzero(both & (low == today)))
                counts[1] += int(np.count_nonzero(both))

    print(
        f"Labels of {len(labels)} frames of {height}x{width} from the synthetic Cityscapes-layout fixture "
        f"(`hedprep.fixture`, seed {args.seed}: street scenes with thin poles, signs, lights, people; not real "
        "Cityscapes). Each low-resolution label map is upsampled back to full resolution by its nearest pixel "
        "(INTER_NEAREST_EXACT) and scored against the full-resolution trainIds as Cityscapes scores a prediction: "
        "19-class confusion over pixels whose full-resolution label is not 255, a predicted 255 counted wrong, "
        "mIoU over the classes with TP+FP+FN > 0, accumulated over all frames. Ignore fraction: share of 255 "
        f"pixels in the low-resolution map (full resolution: {100 * full.ignore_fraction:.2f}%). "
        "Times: one thread (cv2.setNumThreads(1)), best of "
        f"{args.repeats} calls per frame, mean over frames.\n"
    )

    print("Oracle scores of each rule at each level:\n")
    print("| level | size | rule | oracle mIoU | oracle pixel acc. | ignore fraction | ms per frame |")
    print("|---|---|---|---|---|---|---|")
    for k in LEVELS:
        for rule, run in RULES.items():
            tally = by_level[(rule, k)]
            ms = ms_per_call(lambda label, run=run, k=k: run(label, k), labels, args.repeats)
            h, w = level_size(height, width, k)
            print(
                f"| {k} | {h}x{w} | {rule} | {100 * tally.miou:.2f} | {100 * tally.accuracy:.2f} "
                f"| {100 * tally.ignore_fraction:.2f}% | {ms:.1f} |",
                flush=True,
            )

    present = ~np.isnan(class_iou(full.matrix))
    print("\nOracle IoU per class (classes present in the fixture), %:\n")
    columns = [(rule, k) for k in LEVELS for rule in RULES]
    print("| class | " + " | ".join(f"{rule} L{k}" for rule, k in columns) + " |")
    print("|---|" + "---|" * len(columns))
    ious = {key: class_iou(by_level[key].matrix) for key in columns}
    for c in np.flatnonzero(present):
        print(f"| {CLASS_NAMES[c]} | " + " | ".join(f"{100 * ious[key][c]:.1f}" for key in columns) + " |")

    print(
        f"\nAt each training stage size ({max(LEVELS)} levels stored; agreement with (i) over pixels "
        "that are not 255 in both):\n"
    )
    print("| stage size | level | path | oracle mIoU | oracle pixel acc. | ignore fraction | agreement with (i) |")
    print("|---|---|---|---|---|---|---|")
    for size in stages:
        k = choose_level(height, width, max(LEVELS), size)
        for (name, stage), tally in by_stage.items():
            if stage != size:
                continue
            equal, defined = agree[(name, size)]
            print(
                f"| {size[0]}x{size[1]} | {k} | {name} | {100 * tally.miou:.2f} | {100 * tally.accuracy:.2f} "
                f"| {100 * tally.ignore_fraction:.2f}% | {100 * equal / max(1, defined):.2f}% |"
            )

    print("\nLast step, from the chosen (majority) level to the stage size, ms per frame:\n")
    print("| stage size | from level | resize_labels (nearest) | area-weighted majority | ratio |")
    print("|---|---|---|---|---|")
    for size in stages:
        k = choose_level(height, width, max(LEVELS), size)
        stored = [downsample_labels(label, k) for label in labels]
        nearest_ms = ms_per_call(lambda low, size=size: resize_labels(low, size), stored, args.repeats)
        area_ms = ms_per_call(lambda low, size=size: area_majority(low, size), stored, args.repeats)
        print(
            f"| {size[0]}x{size[1]} | {k} ({stored[0].shape[0]}x{stored[0].shape[1]}) | {nearest_ms:.3f} "
            f"| {area_ms:.1f} | {area_ms / nearest_ms:.0f}x |",
            flush=True,
        )
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
