"""Resolution levels: the pixels a shard stores at 1/2, 1/4, ... of the frame size, and how to read a
frame at any size from them.

Level k of an H x W frame is ceil(H / 2^k) x ceil(W / 2^k); level 0 is the frame itself. Every level
is computed from level 0 (never from the level above), block by block:

- RGB and edge: the mean of each 2^k x 2^k block (area averaging), to the nearest integer; blocks
  cut by the right or bottom border average the pixels they hold.
- labels: the majority trainId of the block, counting 255 (ignore) as a label of its own, so a
  pixel is ignore only where ignore is the most frequent label of its block; ties go to the lowest
  trainId, ignore last. Measured against nearest-pixel sampling (benchmarks/label_downsampling.py,
  docs/performance.md): the majority map, upsampled back, scores higher against the full-resolution
  labels (what a model trained at that size is scored against) at every level, though only by
  0.02-0.09 points of mIoU on the fixture; it costs 9-28 ms per 1024x2048 frame and level when
  shards are written, nothing when they are read.

Reading at a size takes the smallest level at least that large in both dimensions and resizes it
the rest of the way: the image by area averaging, the labels by their nearest (centre) pixel.
"""

from __future__ import annotations

import cv2
import numpy as np

from hedprep.cityscapes import IGNORE_INDEX, NUM_CLASSES

DEFAULT_LEVELS = 3
MAX_LEVELS = 8
IMAGE_FILTER = "area"
LABEL_RULE = "majority"

# Label values -> count slots 0..NUM_CLASSES: trainIds keep theirs, everything else (255) is ignore.
_SLOT_IGNORE = NUM_CLASSES
_SLOT_PAD = NUM_CLASSES + 1  # pixels outside the frame, in blocks cut by its border: never counted
_TO_SLOT = np.full(256, _SLOT_IGNORE, np.uint8)
_TO_SLOT[:NUM_CLASSES] = np.arange(NUM_CLASSES)
_FROM_SLOT = np.array([*range(NUM_CLASSES), IGNORE_INDEX], np.uint8)


def level_size(height: int, width: int, level: int) -> tuple[int, int]:
    """(height, width) of `level`: ceil(H / 2^level) x ceil(W / 2^level)."""
    factor = 1 << level
    return -(-height // factor), -(-width // factor)


def max_levels(height: int, width: int) -> int:
    """The most levels a frame of this size can have: 2^L <= min(H, W), and at most MAX_LEVELS."""
    return min(MAX_LEVELS, max(0, min(height, width).bit_length() - 1))


def downsample_frame(frame: np.ndarray, level: int) -> np.ndarray:
    """(H, W, C) uint8 -> level `level`: the mean of each 2^level block, to the nearest integer.

    Blocks cut by the right or bottom border average the pixels they hold. (Ties may round either
    way: OpenCV, which averages the whole blocks, rounds halves up for 2x2 blocks and to even above.)
    """
    if level == 0:
        return frame
    b = 1 << level
    height, width = frame.shape[:2]
    h, w = level_size(height, width, level)
    hw, ww = height // b, width // b  # whole blocks
    out = np.empty((h, w, *frame.shape[2:]), np.uint8)
    if hw and ww:
        inner = cv2.resize(np.ascontiguousarray(frame[: hw * b, : ww * b]), (ww, hw), interpolation=cv2.INTER_AREA)
        out[:hw, :ww] = inner.reshape(hw, ww, *frame.shape[2:])
    if hw < h:  # the bottom row of cut blocks, corner included
        out[hw:, :] = _block_mean(frame[hw * b :, :], b)
    if ww < w:  # the right column of cut blocks
        out[:hw, ww:] = _block_mean(frame[: hw * b, ww * b :], b)
    return out


def _block_mean(image: np.ndarray, b: int) -> np.ndarray:
    """Means of the b x b blocks of `image` (cut blocks: of the pixels they hold), rounded half up."""
    height, width = image.shape[:2]
    h, w = -(-height // b), -(-width // b)
    sums = np.zeros((h * b, w * b, *image.shape[2:]), np.uint32)
    sums[:height, :width] = image
    sums = sums.reshape(h, b, w, b, *image.shape[2:]).sum(axis=(1, 3))
    rows = np.minimum(b, height - np.arange(h) * b)
    cols = np.minimum(b, width - np.arange(w) * b)
    counts = (rows[:, None] * cols[None, :]).reshape(h, w, *([1] * (image.ndim - 2)))
    return ((sums + counts // 2) // counts).astype(np.uint8)


def downsample_labels(label: np.ndarray, level: int) -> np.ndarray:
    """(H, W) uint8 trainIds -> level `level`: the majority label of each 2^level block (see module doc)."""
    if level == 0:
        return label
    b = 1 << level
    height, width = label.shape
    h, w = level_size(height, width, level)
    slots = _TO_SLOT[label]
    if (h * b, w * b) != (height, width):
        padded = np.full((h * b, w * b), _SLOT_PAD, np.uint8)
        padded[:height, :width] = slots
        slots = padded
    block = (np.arange(h * b, dtype=np.int64) // b * w)[:, None] + (np.arange(w * b, dtype=np.int64) // b)[None, :]
    nslots = _SLOT_PAD + 1
    counts = np.bincount((block * nslots + slots).ravel(), minlength=h * w * nslots)
    counts = counts.reshape(h, w, nslots)[..., :_SLOT_PAD]
    return _FROM_SLOT[counts.argmax(axis=-1)]


def choose_level(height: int, width: int, levels: int, size: tuple[int, int]) -> int:
    """The smallest stored level (0..levels) at least `size` = (h, w) in both dimensions."""
    best = 0
    for k in range(1, levels + 1):
        lh, lw = level_size(height, width, k)
        if lh < size[0] or lw < size[1]:
            break
        best = k
    return best


def resize_frame(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w, C) uint8 -> `size` = (height, width) by area averaging (a no-op at that size)."""
    if frame.shape[:2] == tuple(size):
        return frame
    h, w = size
    out = cv2.resize(np.ascontiguousarray(frame), (w, h), interpolation=cv2.INTER_AREA)
    return out.reshape(h, w, *frame.shape[2:])


def resize_labels(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w) trainIds -> `size` by the nearest pixel, sampled at each output pixel's centre.

    Used for the last step of a read, from the chosen level to the exact size, where an area-weighted
    majority cost 150-225x more (1.5 ms against 0.01 ms at 128x256 -> 128x224) for at most 0.34
    points of oracle mIoU (benchmarks/label_downsampling.py).
    """
    if label.shape == tuple(size):
        return label
    h, w = size
    return cv2.resize(np.ascontiguousarray(label), (w, h), interpolation=cv2.INTER_NEAREST_EXACT)
