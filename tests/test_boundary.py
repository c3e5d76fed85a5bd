"""segnet.boundary against a from-scratch reading of issue 19's definition (plain loops, small frames)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from segnet.boundary import (
    THRESHOLDS,
    BoundaryFScore,
    disk_kernel,
    frame_boundary_f,
    frame_boundary_f_tensor,
    tolerance_pixels,
)

IGNORE = 255


def reference_boundary(mask: list[list[bool]]) -> set[tuple[int, int]]:
    """Pixels differing from their right, lower or lower-right neighbour, one by one."""
    height, width = len(mask), len(mask[0])
    found = set()
    for y in range(height):
        for x in range(width):
            for ny, nx in ((y, x + 1), (y + 1, x), (y + 1, x + 1)):
                if ny < height and nx < width and mask[ny][nx] != mask[y][x]:
                    found.add((y, x))
                    break
    return found


def reference_near(points: set[tuple[int, int]], others: set[tuple[int, int]], t: int) -> int:
    """How many of `points` have one of `others` within Euclidean distance t (looked up at every offset
    (dy, dx) with dy^2 + dx^2 <= t^2)."""
    disk = [(dy, dx) for dy in range(-t, t + 1) for dx in range(-t, t + 1) if dy * dy + dx * dx <= t * t]
    return sum(any((y + dy, x + dx) in others for dy, dx in disk) for y, x in points)


def reference_f(pred: np.ndarray, label: np.ndarray, c: int, t: int) -> float | None:
    """Class c's F in one frame, None when the frame does not count for c."""
    height, width = label.shape
    pred, label = pred.tolist(), label.tolist()  # plain ints: numpy's scalars are slow one by one
    p = [[pred[y][x] == c and label[y][x] != IGNORE for x in range(width)] for y in range(height)]
    g = [[label[y][x] == c for x in range(width)] for y in range(height)]
    if not any(map(any, p)) and not any(map(any, g)):
        return None
    bp, bg = reference_boundary(p), reference_boundary(g)
    if not bp and not bg:
        precision = recall = 1.0
    elif not bp:
        precision, recall = 1.0, 0.0
    elif not bg:
        precision, recall = 0.0, 1.0
    else:
        precision = reference_near(bp, bg, t) / len(bp)
        recall = reference_near(bg, bp, t) / len(bg)
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def reference_scores(frames, num_classes: int, thresholds) -> list[tuple[float, list[float | None]]]:
    """Per threshold: the mean F over classes counted in some frame, and each class's mean F."""
    results = []
    for th in thresholds:
        per_class: list[float | None] = []
        for c in range(num_classes):
            values = []
            for pred, label in frames:
                t = math.ceil(th * math.sqrt(label.shape[0] ** 2 + label.shape[1] ** 2))
                value = reference_f(pred, label, c, t)
                if value is not None:
                    values.append(value)
            per_class.append(sum(values) / len(values) if values else None)
        counted = [v for v in per_class if v is not None]
        results.append((sum(counted) / len(counted) if counted else math.nan, per_class))
    return results


def blocky_frame(rng: np.random.Generator, num_classes: int, shape=(9, 13)) -> np.ndarray:
    """A label map of a few rectangles over a background, so that boundaries are lines, not noise."""
    frame = np.full(shape, rng.integers(num_classes), dtype=np.int64)
    for _ in range(rng.integers(1, 5)):
        y, x = rng.integers(shape[0]), rng.integers(shape[1])
        frame[y : y + rng.integers(1, 6), x : x + rng.integers(1, 8)] = rng.integers(num_classes)
    return frame


def check(frames, num_classes: int, thresholds) -> None:
    """Both ways of scoring (OpenCV on the host, tensors as on a GPU) give the reference's figures."""
    expected = reference_scores(frames, num_classes, thresholds)
    for on_tensors in (False, True):
        accumulator = BoundaryFScore(num_classes, thresholds, on_tensors=on_tensors)
        for pred, label in frames:
            accumulator.update(torch.from_numpy(pred) if on_tensors else pred, label)
        check_scores(accumulator.result(), frames, thresholds, expected)


def check_scores(scores, frames, thresholds, expected) -> None:
    for score, th, (mean_f, per_class) in zip(scores, thresholds, expected, strict=True):
        assert score.threshold == th
        assert score.pixels == math.ceil(th * math.hypot(*frames[0][1].shape))
        assert score.mean_f == pytest.approx(mean_f, nan_ok=True)
        assert [v is None for v in score.per_class] == [v is None for v in per_class]
        assert [v for v in score.per_class if v is not None] == pytest.approx([v for v in per_class if v is not None])


@pytest.mark.parametrize("seed", range(8))
def test_random_frames_match_the_definition(seed):
    rng = np.random.default_rng(seed)
    num_classes = 4
    frames = []
    for _ in range(3):
        label = blocky_frame(rng, num_classes)
        pred = label.copy()
        pred[rng.random(label.shape) < 0.15] = rng.integers(num_classes)  # scattered errors
        pred = np.where(rng.random(label.shape) < 0.5, pred, np.roll(pred, rng.integers(-2, 3), axis=1))
        label = label.astype(np.uint8)
        label[blocky_frame(rng, 3) == 0] = IGNORE  # ignored rectangles
        frames.append((pred, label))
    # Thresholds giving t = 1, 2 and 4 at 9x13 (diagonal 15.8), beside the issue's (all t = 1 there).
    check(frames, num_classes, (0.05, 0.1, 0.25, *THRESHOLDS))


def test_random_noise_frames_match_the_definition():
    rng = np.random.default_rng(99)
    frames = [(rng.integers(0, 5, (9, 13)), rng.choice([0, 1, 2, IGNORE], (9, 13)).astype(np.uint8))
              for _ in range(2)]
    check(frames, 5, (0.05, 0.1))


def test_tensor_scores_equal_opencvs_at_every_radius():
    """`frame_boundary_f_tensor` (a GPU's way) gives `frame_boundary_f`'s figures bit for bit, at radii
    from 1 px to beyond the frame's height, on blocky and noisy maps with ignored pixels."""
    rng = np.random.default_rng(7)
    thresholds = (0.01, 0.05, 0.1, 0.2, 0.6, 1.0)  # t = 1, 2, 4, 8, 22, 37 px at 21x30 (diagonal 36.6)
    for k in range(6):
        label = blocky_frame(rng, 5, (21, 30)).astype(np.uint8) if k % 2 else rng.integers(0, 5, (21, 30))
        label = np.where(rng.random(label.shape) < 0.1, IGNORE, label).astype(np.uint8)
        pred = np.roll(np.where(label == IGNORE, 4, label), rng.integers(-3, 4), axis=1).astype(np.int64)
        ours = frame_boundary_f_tensor(torch.from_numpy(pred), torch.from_numpy(label), 6, thresholds).numpy()
        np.testing.assert_array_equal(ours, frame_boundary_f(pred, label, 6, thresholds))


def frame_f(pred, label, num_classes=3, thresholds=(0.1,)) -> np.ndarray:
    return frame_boundary_f(np.asarray(pred), np.asarray(label, dtype=np.uint8), num_classes, thresholds)[0]


def test_edge_cases_of_the_definition():
    whole = np.zeros((4, 5), dtype=np.int64)
    split = whole.copy()
    split[:, 3:] = 1
    # Class 0 everywhere in both: both boundaries empty, F = 1; classes 1 and 2 absent: not counted (NaN).
    f = frame_f(whole, whole)
    assert f[0] == 1.0 and np.isnan(f[1:]).all()
    # Prediction split, label whole: class 0 has only Bp (F = 0), class 1 only in the prediction (F = 0).
    np.testing.assert_array_equal(frame_f(split, whole)[:2], [0.0, 0.0])
    # The other way: only Bg for both classes.
    np.testing.assert_array_equal(frame_f(whole, split)[:2], [0.0, 0.0])
    # Identical boundaries: F = 1.
    np.testing.assert_array_equal(frame_f(split, split)[:2], [1.0, 1.0])
    # All ignored: nothing counted, whatever was predicted.
    assert np.isnan(frame_f(split, np.full((4, 5), IGNORE))).all()


def test_ignored_pixels_cut_the_masks():
    """An ignored column inside class 0 gives both masks a boundary there, and hides the prediction of 1."""
    pred = np.zeros((4, 6), dtype=np.int64)
    pred[:, 2] = 1
    label = np.zeros((4, 6), dtype=np.uint8)
    label[:, 2] = IGNORE
    f = frame_f(pred, label)
    assert f[0] == 1.0 and np.isnan(f[1])


def test_far_boundaries_score_zero_near_ones_one():
    label = np.zeros((20, 40), dtype=np.uint8)
    label[:, 20:] = 1
    pred = np.zeros((20, 40), dtype=np.int64)
    pred[:, 23:] = 1  # the boundary 3 columns off
    t = tolerance_pixels(20, 40, 0.1)  # ceil(4.47) = 5
    assert t == 5
    np.testing.assert_array_equal(frame_f(pred, label, 2, (0.1,)), [1.0, 1.0])
    np.testing.assert_array_equal(frame_f(pred, label, 2, (0.02,)), [0.0, 0.0])  # t = 1


def test_tolerances_of_the_issue_at_full_size():
    assert [tolerance_pixels(1024, 2048, th) for th in THRESHOLDS] == [2, 5, 9, 12]


def test_disk_kernel_is_the_disk():
    for radius in range(6):
        kernel = disk_kernel(radius)
        expected = [[int(x * x + y * y <= radius * radius) for x in range(-radius, radius + 1)]
                    for y in range(-radius, radius + 1)]
        assert kernel.tolist() == expected


def test_result_before_any_frame_and_mixed_sizes():
    accumulator = BoundaryFScore(3, (0.1,))
    (score,) = accumulator.result()
    assert score.pixels == 0 and math.isnan(score.mean_f) and score.per_class == [None] * 3
    accumulator.update(np.zeros((4, 5), dtype=np.int64), np.zeros((4, 5), dtype=np.uint8))
    with pytest.raises(ValueError, match="differs"):
        accumulator.update(np.zeros((5, 5), dtype=np.int64), np.zeros((5, 5), dtype=np.uint8))


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="labels"):
        frame_f(np.zeros((3, 3), dtype=np.int64), np.full((3, 3), 7))
    with pytest.raises(ValueError, match="frame"):
        frame_boundary_f(np.zeros((3, 3)), np.zeros((3, 4)))
