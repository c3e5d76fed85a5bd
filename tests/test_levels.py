"""hedprep.shards.levels: level sizes, area averaging and majority labels against brute-force references
written here block by block, and the choice of the level a read starts from."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from hedprep.shards import (
    choose_level,
    downsample_frame,
    downsample_labels,
    level_size,
    max_levels,
    resize_frame,
    resize_labels,
)

SHAPES = [(64, 128), (37, 53), (1, 5), (100, 130)]  # divisible, cut blocks on both borders, one row


def blocks(height: int, width: int, b: int):
    """(row, col, row slice, col slice) of each b x b block, cut by the borders."""
    for i in range(-(-height // b)):
        for j in range(-(-width // b)):
            yield i, j, slice(i * b, min((i + 1) * b, height)), slice(j * b, min((j + 1) * b, width))


def test_level_sizes_round_up():
    assert [level_size(1024, 2048, k) for k in range(4)] == [(1024, 2048), (512, 1024), (256, 512), (128, 256)]
    assert level_size(37, 53, 1) == (19, 27) and level_size(37, 53, 3) == (5, 7) and level_size(1, 5, 3) == (1, 1)
    assert max_levels(1024, 2048) == 8 and max_levels(64, 128) == 6 and max_levels(37, 53) == 5
    assert max_levels(1, 5) == 0


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("level", [1, 2, 3])
def test_frames_are_block_means_to_the_nearest_integer(shape, level):
    rng = np.random.default_rng(level)
    frame = rng.integers(0, 256, (*shape, 4), dtype=np.uint8)
    small = downsample_frame(frame, level)
    b = 1 << level
    assert small.shape == (*level_size(*shape, level), 4) and small.dtype == np.uint8
    for i, j, rows, cols in blocks(*shape, b):
        mean = frame[rows, cols].reshape(-1, 4).astype(np.float64).mean(axis=0)
        assert np.all(np.abs(small[i, j] - mean) <= 0.5), (i, j, small[i, j], mean)


def test_level_zero_is_the_frame_and_single_channel_images_work():
    frame = np.arange(6 * 8, dtype=np.uint8).reshape(6, 8)
    assert downsample_frame(frame, 0) is frame
    assert downsample_frame(frame, 1).shape == (3, 4)  # (H, W) images too


def reference_majority(label: np.ndarray, level: int) -> np.ndarray:
    """The majority label of each block, 255 counted as a label, ties to the lowest trainId, 255 last."""
    h, w = level_size(*label.shape, level)
    out = np.empty((h, w), np.uint8)
    for i, j, rows, cols in blocks(*label.shape, 1 << level):
        counts = Counter(label[rows, cols].ravel().tolist())
        top = max(counts.values())
        winners = sorted(v for v, c in counts.items() if c == top)  # 255 sorts after every trainId
        out[i, j] = winners[0]
    return out


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("level", [1, 2, 3])
def test_labels_are_block_majorities(shape, level):
    rng = np.random.default_rng(10 + level)
    label = rng.choice(np.array([0, 1, 2, 7, 18, 255], np.uint8), size=shape, p=[0.3, 0.2, 0.1, 0.1, 0.1, 0.2])
    assert np.array_equal(downsample_labels(label, level), reference_majority(label, level))


def test_majority_ties_and_ignore():
    label = np.array([[3, 5], [5, 3]], np.uint8)  # a tie: the lower trainId
    assert downsample_labels(label, 1).tolist() == [[3]]
    assert downsample_labels(np.array([[255, 255], [255, 7]], np.uint8), 1).tolist() == [[255]]  # mostly ignore
    assert downsample_labels(np.array([[255, 255], [7, 7]], np.uint8), 1).tolist() == [[7]]  # tie: a class wins
    assert downsample_labels(np.array([[255, 255], [7, 9]], np.uint8), 1).tolist() == [[255]]


def test_choose_level_takes_the_smallest_level_at_least_the_size():
    assert choose_level(1024, 2048, 3, (128, 224)) == 3  # 128x256
    assert choose_level(1024, 2048, 3, (256, 448)) == 2  # 256x512
    assert choose_level(1024, 2048, 3, (512, 912)) == 1  # 512x1024
    assert choose_level(1024, 2048, 3, (64, 112)) == 3  # never below the last stored level
    assert choose_level(1024, 2048, 3, (600, 200)) == 0  # taller than level 1
    assert choose_level(1024, 2048, 0, (128, 224)) == 0  # v1 shards: level 0 only
    assert choose_level(37, 53, 3, (19, 27)) == 1 and choose_level(37, 53, 3, (19, 28)) == 0


def test_last_step_resizes():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (16, 32, 4), dtype=np.uint8)
    assert resize_frame(frame, (16, 32)) is frame
    assert resize_frame(frame, (16, 28)).shape == (16, 28, 4)
    flat = np.full((16, 32, 4), 77, np.uint8)
    assert np.all(resize_frame(flat, (12, 20)) == 77)  # an average of equal pixels is that pixel
    label = rng.choice(np.array([1, 4, 255], np.uint8), size=(16, 32))
    small = resize_labels(label, (16, 28))
    assert small.shape == (16, 28) and set(np.unique(small)) <= {1, 4, 255}
    # nearest at pixel centres: output pixel (i, j) of a 2x reduction samples input (2i + 1, 2j + 1)
    assert np.array_equal(resize_labels(label, (8, 16)), label[1::2, 1::2])
