"""Training augmentations: named steps of the loader, every random choice drawn from one seed per sample.

mmsegmentation's Cityscapes pipeline for DeepLabV3, as `ShardDataset` runs it:

| mmsegmentation | here |
|---|---|
| `RandomResize(scale=(2048, 1024), ratio_range=(0.5, 2.0), keep_ratio=True)` | `draw_scale`, `scaled_size` |
| `RandomCrop(crop_size=(512, 1024), cat_max_ratio=0.75)` | `draw_crop`, `choose_crop`, `crop_is_varied` |
| `RandomFlip(prob=0.5)` | the sampler's flip (`segnet.data.flip`) |
| `PhotoMetricDistortion()` | `draw_photometric`, `photometric_distortion` |
| `Pad(size=crop_size, pad_val=0, seg_pad_val=255)` | `pad_to` |

The resize and the crop are one step, `random_scale_crop`, which never makes the scaled frame: the crop
box is chosen in the scaled frame's coordinates, mapped to the smallest stored resolution level at
least the scaled frame's size, and only that region of the level is read (only the tiles it meets are
decompressed: `SplitReader.read_region`) and resized to the box (image: area averaging when
shrinking, bilinear when enlarging; labels: nearest pixel). At a ratio of 2 that is a 256x512 region of
a 1024x2048 frame, not 2048x4096 pixels made and mostly thrown away. Borders may differ slightly from
resize-then-crop: the region is rounded to whole pixels of the level (at most half a pixel off at each
side, so the scale of a crop may be off by a pixel in its size), and the resize sees no pixels beyond it.

Randomness: `ShardDataset` makes one `numpy.random.Generator` from each item's seed (drawn by
`segnet.data.EpochSampler` from (seed, epoch)) and the steps draw from it in a fixed order (scale,
crops, photometric), so a sample depends on its item alone, not on the worker that prepares it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import cv2
import numpy as np

from hedprep.shards import IGNORE_INDEX, SplitReader, choose_level, level_size, resize_labels
from segnet.errors import SegnetOptionError

CROP_TRIES = 10  # crops drawn at most until one passes cat_max_ratio (mmsegmentation's)
BRIGHTNESS_DELTA = 32  # photometric distortion: mmsegmentation's defaults
CONTRAST_RANGE = (0.5, 1.5)
SATURATION_RANGE = (0.5, 1.5)
HUE_DELTA = 18  # on OpenCV's 8-bit hue scale, 0-179


@dataclass(frozen=True)
class Augmentation:
    """Which augmentations a training loader applies (`TrainConfig.augmentation()`); the defaults none.

    scale_range: None reads the whole frame at the stage size; (lo, hi) scales the stored frame by a
        random ratio in [lo, hi] and takes a random crop of the stage size from it.
    cat_max_ratio: with a scale range, redraw a crop (up to `CROP_TRIES` times) while one class covers
        this share or more of its labelled pixels; 1.0: off.
    photometric: brightness, contrast, saturation and hue changes of R, G, B (never the edge).
    """

    scale_range: tuple[float, float] | None = None
    cat_max_ratio: float = 1.0
    photometric: bool = False

    def __post_init__(self) -> None:
        if self.scale_range is not None:
            check_scale_range(self.scale_range)
        if not 0 < self.cat_max_ratio <= 1:
            raise SegnetOptionError(f"--cat-max-ratio {self.cat_max_ratio}: must be above 0 and at most 1")
        if self.cat_max_ratio < 1 and self.scale_range is None:
            raise SegnetOptionError(f"--cat-max-ratio {self.cat_max_ratio}: needs --scale-range (it rejects "
                                    "random crops; without a scale range the whole frame is used)")

    @property
    def random(self) -> bool:
        """True if samples depend on their item's seed."""
        return self.scale_range is not None or self.photometric


def check_scale_range(scale_range: tuple[float, float]) -> tuple[float, float]:
    """`scale_range` itself if it is two ratios 0 < lo <= hi; else a one-line SegnetOptionError."""
    lo, hi = scale_range
    if not 0 < lo <= hi < float("inf"):
        raise SegnetOptionError(f"--scale-range {lo:g},{hi:g}: expected LO,HI with 0 < LO <= HI, e.g. 0.5,2.0")
    return float(lo), float(hi)


class Box(NamedTuple):
    """A rectangle of pixels: its top-left corner and its size."""

    top: int
    left: int
    height: int
    width: int

    @property
    def rows(self) -> tuple[int, int]:
        return self.top, self.top + self.height

    @property
    def cols(self) -> tuple[int, int]:
        return self.left, self.left + self.width


# ------------------------------------------------------------------------------------- scale and crop


def draw_scale(rng: np.random.Generator, scale_range: tuple[float, float]) -> float:
    """A ratio drawn uniformly from [lo, hi]."""
    return float(rng.uniform(*scale_range))


def scaled_size(frame_size: tuple[int, int], ratio: float) -> tuple[int, int]:
    """(height, width) of a frame scaled by `ratio`, keeping its aspect (rounded, at least 1)."""
    return tuple(max(1, int(side * ratio + 0.5)) for side in frame_size)


def draw_crop(rng: np.random.Generator, scaled: tuple[int, int], crop_size: tuple[int, int]) -> Box:
    """A box of `crop_size` at a uniformly random place in a frame of size `scaled`; where the frame is
    smaller, the box is the frame's side (at offset 0) and `pad_to` fills the rest."""
    (sh, sw), (ch, cw) = scaled, crop_size
    top = int(rng.integers(0, max(sh - ch, 0) + 1))
    left = int(rng.integers(0, max(sw - cw, 0) + 1))
    return Box(top, left, min(ch, sh), min(cw, sw))


def crop_is_varied(label: np.ndarray, cat_max_ratio: float) -> bool:
    """True if the crop's labels hold more than one class and the most frequent class covers less than
    `cat_max_ratio` of the labelled (not ignore) pixels: mmsegmentation's test of a crop."""
    counts = np.bincount(label.ravel(), minlength=256)
    counts[IGNORE_INDEX] = 0
    counts = counts[counts > 0]
    return len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio


def choose_crop(rng: np.random.Generator, scaled: tuple[int, int], crop_size: tuple[int, int],
                cat_max_ratio: float, crop_labels: Callable[[Box], np.ndarray]) -> tuple[Box, np.ndarray]:
    """A crop box of the scaled frame and its labels (`crop_labels(box)`): the first of up to
    `CROP_TRIES` drawn boxes that `crop_is_varied`, else the last drawn; with `cat_max_ratio` 1 the first."""
    for _ in range(CROP_TRIES if cat_max_ratio < 1 else 1):
        box = draw_crop(rng, scaled, crop_size)
        label = crop_labels(box)
        if cat_max_ratio >= 1 or crop_is_varied(label, cat_max_ratio):
            break
    return box, label


def source_box(box: Box, scaled: tuple[int, int], stored: tuple[int, int]) -> Box:
    """The region of a stored level (of size `stored`) that `box` of the scaled frame covers, rounded to
    whole pixels and kept inside the level."""

    def side(start: int, length: int, scaled_side: int, stored_side: int) -> tuple[int, int]:
        factor = stored_side / scaled_side
        extent = min(stored_side, max(1, round(length * factor)))
        return min(round(start * factor), stored_side - extent), extent

    (top, height), (left, width) = (side(box.top, box.height, scaled[0], stored[0]),
                                    side(box.left, box.width, scaled[1], stored[1]))
    return Box(top, left, height, width)


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w, C) uint8 -> `size`: area averaging when both sides shrink, else bilinear (mmsegmentation's)."""
    if image.shape[:2] == tuple(size):
        return image
    h, w = size
    shrinking = h <= image.shape[0] and w <= image.shape[1]
    out = cv2.resize(np.ascontiguousarray(image), (w, h), interpolation=cv2.INTER_AREA if shrinking
                     else cv2.INTER_LINEAR)
    return out.reshape(h, w, *image.shape[2:])


def random_scale_crop(reader: SplitReader, index: int, crop_size: tuple[int, int], augmentation: Augmentation,
                      rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Frame `index` scaled by a random ratio of `augmentation.scale_range`, then a random crop of at most
    `crop_size` of it (see `choose_crop`): (h, w, 4) uint8 RGB+edge and (h, w) trainIds, not yet padded.

    Only the crop's region of the smallest level at least the scaled frame's size is read and resized
    (module docstring).
    """
    frame_size = reader.frame_size
    scaled = scaled_size(frame_size, draw_scale(rng, augmentation.scale_range))
    level = choose_level(*frame_size, reader.levels, scaled)
    stored = level_size(*frame_size, level)

    def crop_labels(box: Box) -> np.ndarray:
        region = source_box(box, scaled, stored)
        return resize_labels(reader.read_region(index, level, region.rows, region.cols, "labels"),
                             (box.height, box.width))

    box, label = choose_crop(rng, scaled, crop_size, augmentation.cat_max_ratio, crop_labels)
    region = source_box(box, scaled, stored)
    frame = resize_image(reader.read_region(index, level, region.rows, region.cols), (box.height, box.width))
    return frame, label


def pad_to(image: np.ndarray, label: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Image and labels padded at the bottom and right to `size`: image 0, labels 255 (ignore)."""
    h, w = image.shape[:2]
    if (h, w) == tuple(size):
        return image, label
    padded_image = np.zeros((*size, *image.shape[2:]), np.uint8)
    padded_label = np.full(size, IGNORE_INDEX, np.uint8)
    padded_image[:h, :w], padded_label[:h, :w] = image, label
    return padded_image, padded_label


# ---------------------------------------------------------------------------------------- photometric


@dataclass(frozen=True)
class Photometric:
    """One draw of the photometric distortion; a None change is not made."""

    brightness: float | None = None  # added to R, G, B
    contrast: float | None = None  # R, G, B multiplied by it
    contrast_first: bool = False  # contrast before saturation and hue, else after them
    saturation: float | None = None  # HSV saturation multiplied by it
    hue: int | None = None  # added to HSV hue (OpenCV's 0-179), modulo 180


def draw_photometric(rng: np.random.Generator) -> Photometric:
    """Each change with probability 1/2, contrast before or after the colour changes with 1/2 each, as
    mmsegmentation's `PhotoMetricDistortion` (whose hue delta is drawn from -18..17; here -18..18)."""

    def maybe(draw: Callable[[], float]) -> float | None:
        applied = rng.random() < 0.5
        value = draw()  # drawn either way: the number of draws does not depend on the outcome
        return value if applied else None

    brightness = maybe(lambda: float(rng.uniform(-BRIGHTNESS_DELTA, BRIGHTNESS_DELTA)))
    contrast_first = bool(rng.random() < 0.5)
    contrast = maybe(lambda: float(rng.uniform(*CONTRAST_RANGE)))
    saturation = maybe(lambda: float(rng.uniform(*SATURATION_RANGE)))
    hue = maybe(lambda: int(rng.integers(-HUE_DELTA, HUE_DELTA + 1)))
    return Photometric(brightness, contrast, contrast_first, saturation, hue)


def linear_lut(scale: float = 1.0, offset: float = 0.0) -> np.ndarray:
    """The 256-entry uint8 table of v -> v * scale + offset, rounded and clipped to 0..255."""
    return np.clip(np.rint(np.arange(256) * scale + offset), 0, 255).astype(np.uint8)


def photometric_distortion(frame: np.ndarray, params: Photometric) -> np.ndarray:
    """R, G, B of an (H, W, 3 or 4) uint8 frame changed as `params` says: brightness, contrast (first
    or last), saturation, hue, each rounded to uint8 as it is made; the fourth channel (the edge) is
    left as it is. A new array; brightness and contrast are lookup tables (consecutive ones composed
    into one), saturation and hue one trip through OpenCV's 8-bit HSV."""
    identity = linear_lut()
    before, after = identity, identity
    if params.brightness is not None:
        before = linear_lut(offset=params.brightness)
    if params.contrast is not None:
        contrast = linear_lut(params.contrast)
        before, after = (contrast[before], after) if params.contrast_first else (before, contrast)
    colour = params.saturation is not None or params.hue is not None
    if not colour:  # nothing between the two tables
        before, after = after[before], identity
    # OpenCV's channel conversions: numpy's strided copies of 3 of 4 channels took 10x as long.
    rgb = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGBA2RGB) if frame.shape[2] == 4 else frame
    rgb = _apply_lut(rgb, before)
    if colour:
        hue = np.arange(256) if params.hue is None else (np.arange(256) + params.hue) % 180
        saturation = identity if params.saturation is None else linear_lut(params.saturation)
        hsv = cv2.LUT(cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV),
                      np.stack([hue.astype(np.uint8), saturation, identity], axis=-1)[:, None])
        rgb = _apply_lut(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB), after)
    if frame.shape[2] == 3:
        return rgb if rgb is not frame else frame.copy()
    out = cv2.cvtColor(rgb, cv2.COLOR_RGB2RGBA)
    cv2.mixChannels([np.ascontiguousarray(frame)], [out], [3, 3])  # the edge, as it was
    return out


def _apply_lut(image: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """`lut` applied to every channel of `image` (the image itself where `lut` is the identity)."""
    return image if np.array_equal(lut, np.arange(256)) else cv2.LUT(image, lut)
