"""segnet.augment: each augmentation step against a from-scratch reference, and the augmented loader."""

from __future__ import annotations

import colorsys
import json
from collections import Counter

import cv2
import numpy as np
import pytest
import torch

from hedprep.shards import SplitReader, open_split
from segnet.augment import (
    CROP_TRIES,
    Augmentation,
    Box,
    Photometric,
    choose_crop,
    crop_is_varied,
    draw_crop,
    draw_photometric,
    draw_scale,
    pad_to,
    photometric_distortion,
    random_scale_crop,
    scaled_size,
    source_box,
)
from segnet.data import EpochSampler, Item, LoaderSettings, ShardDataset, make_loader
from segnet.errors import SegnetOptionError

# ------------------------------------------------------------------------------------- scale and crop


def test_crops_lie_inside_the_scaled_frame_and_smaller_frames_are_padded():
    rng = np.random.default_rng(0)
    for _ in range(200):
        box = draw_crop(rng, (40, 90), (16, 32))
        assert (box.height, box.width) == (16, 32) and 0 <= box.top <= 24 and 0 <= box.left <= 58
    tops = {draw_crop(rng, (18, 40), (16, 32)).top for _ in range(200)}
    assert tops == {0, 1, 2}  # every place, the last included
    assert draw_crop(rng, (10, 20), (16, 32)) == Box(0, 0, 10, 20)  # a frame smaller than the crop
    assert draw_crop(rng, (10, 50), (16, 32))[::2] == (0, 10)
    image = np.arange(10 * 20 * 4, dtype=np.uint8).reshape(10, 20, 4)
    label = np.full((10, 20), 3, np.uint8)
    padded_image, padded_label = pad_to(image, label, (16, 32))
    assert padded_image.shape == (16, 32, 4) and padded_label.shape == (16, 32)
    assert np.array_equal(padded_image[:10, :20], image) and not padded_image[10:].any()
    assert not padded_image[:, 20:].any() and (padded_label[:10, :20] == 3).all()
    assert (padded_label[10:] == 255).all() and (padded_label[:, 20:] == 255).all()


def test_scaled_sizes_keep_the_aspect_and_round():
    assert scaled_size((1024, 2048), 0.5) == (512, 1024) and scaled_size((1024, 2048), 2.0) == (2048, 4096)
    assert scaled_size((1024, 2048), 0.7371) == (int(1024 * 0.7371 + 0.5), int(2048 * 0.7371 + 0.5))
    ratios = [draw_scale(np.random.default_rng(s), (0.5, 2.0)) for s in range(300)]
    assert 0.5 <= min(ratios) < 0.6 and 1.9 < max(ratios) <= 2.0


def counted_varied(label: np.ndarray, ratio: float) -> bool:
    """mmsegmentation's crop test, from a counted histogram."""
    counts = Counter(int(v) for v in label.ravel() if v != 255)
    return len(counts) > 1 and max(counts.values()) / sum(counts.values()) < ratio


def test_a_crop_is_varied_as_its_counted_label_histogram_says():
    rng = np.random.default_rng(1)
    cases = [np.full((4, 4), 7, np.uint8), np.full((4, 4), 255, np.uint8)]
    for share in (0.3, 0.6, 0.74, 0.76, 0.9):
        label = np.where(rng.random((20, 20)) < share, 2, rng.integers(0, 19, (20, 20))).astype(np.uint8)
        label[rng.random((20, 20)) < 0.2] = 255
        cases.append(label)
    half = np.zeros((4, 4), np.uint8)
    half[:, 2:] = 1  # exactly 0.5: not below 0.5
    cases.append(half)
    for label in cases:
        for ratio in (0.5, 0.75, 1.0):
            assert crop_is_varied(label, ratio) == counted_varied(label, ratio), (label, ratio)
    assert not crop_is_varied(half, 0.5) and crop_is_varied(half, 0.51)


def test_choose_crop_takes_the_first_varied_of_up_to_ten_draws():
    label = np.zeros((64, 64), np.uint8)
    label[:, 56:] = 1  # only crops reaching past column 56 hold two classes

    def labels_of(box: Box) -> np.ndarray:
        return label[box.top : box.top + box.height, box.left : box.left + box.width]

    for seed in range(20):
        box, crop = choose_crop(np.random.default_rng(seed), (64, 64), (16, 16), 0.95, labels_of)
        replay = np.random.default_rng(seed)
        drawn = [draw_crop(replay, (64, 64), (16, 16)) for _ in range(CROP_TRIES)]
        passing = [b for b in drawn if counted_varied(labels_of(b), 0.95)]
        assert box == (passing[0] if passing else drawn[-1]), seed
        assert np.array_equal(crop, labels_of(box))
    off = choose_crop(np.random.default_rng(3), (64, 64), (16, 16), 1.0, labels_of)[0]
    assert off == draw_crop(np.random.default_rng(3), (64, 64), (16, 16))  # 1.0: the first draw, unchecked


def test_a_crop_box_maps_to_the_region_of_a_level():
    assert source_box(Box(100, 200, 512, 1024), (2048, 4096), (1024, 2048)) == Box(50, 100, 256, 512)
    assert source_box(Box(0, 0, 512, 1024), (512, 1024), (512, 1024)) == Box(0, 0, 512, 1024)
    region = source_box(Box(7, 9, 16, 32), (45, 90), (64, 128))  # 64/45 = 1.42 level pixels per scaled one
    assert region == Box(round(7 * 64 / 45), round(9 * 128 / 90), round(16 * 64 / 45), round(32 * 128 / 90))
    edge = source_box(Box(29, 58, 16, 32), (45, 90), (64, 128))  # the bottom-right corner stays inside
    assert edge.top + edge.height == 64 and edge.left + edge.width == 128


class RecordingReader(SplitReader):
    """A real split reader that notes the level of every region it reads."""

    def __init__(self, split_dir) -> None:
        super().__init__(split_dir)
        self.read_levels: list[int] = []

    def read_region(self, index, level, rows, cols, dataset="frames"):
        self.read_levels.append(level)
        return super().read_region(index, level, rows, cols, dataset)


@pytest.mark.parametrize("ratio, level", [(0.3, 1), (0.5, 1), (0.51, 0), (1.7, 0), (0.2, 2), (0.12, 3)])
def test_random_scales_read_the_smallest_sufficient_level(segnet_shards, ratio, level):
    """64x128 frames with levels 32x64, 16x32, 8x16: a frame scaled to 19x38 reads level 1, 13x26 level 2."""
    reader = RecordingReader(segnet_shards / "train")
    frame, label = random_scale_crop(reader, 1, (16, 32), Augmentation((ratio, ratio)), np.random.default_rng(0))
    scaled = scaled_size((64, 128), ratio)
    assert frame.shape == (min(16, scaled[0]), min(32, scaled[1]), 4) and label.shape == frame.shape[:2]
    assert set(reader.read_levels) == {level}


def test_random_scale_crop_is_resize_then_crop_up_to_its_borders(segnet_shards):
    """Against a from-scratch reference: the full frame resized to the scaled size (area or bilinear;
    labels nearest), then the same box cut out. The image agrees to a few levels of 255 on average
    (the region is rounded to level pixels), labels on most pixels."""
    reader = open_split(segnet_shards, "train")
    full = reader.read(2)
    for seed, ratio in ((0, 0.6), (1, 1.0), (2, 1.6), (3, 2.0)):
        rng = np.random.default_rng(seed)
        frame, label = random_scale_crop(reader, 2, (24, 48), Augmentation((ratio, ratio)), rng)
        replay = np.random.default_rng(seed)
        scaled = scaled_size(reader.frame_size, draw_scale(replay, (ratio, ratio)))
        box = draw_crop(replay, scaled, (24, 48))
        filter_ = cv2.INTER_AREA if ratio <= 1 else cv2.INTER_LINEAR
        big = cv2.resize(full.frame, scaled[::-1], interpolation=filter_)
        big_label = cv2.resize(full.label, scaled[::-1], interpolation=cv2.INTER_NEAREST_EXACT)
        expected = big[box.top : box.top + box.height, box.left : box.left + box.width]
        expected_label = big_label[box.top : box.top + box.height, box.left : box.left + box.width]
        assert frame.shape == expected.shape and label.shape == expected_label.shape
        assert np.abs(frame.astype(int) - expected).mean() < 12, ratio
        assert (label == expected_label).mean() > 0.85, ratio


# ---------------------------------------------------------------------------------------- photometric


def pixels() -> np.ndarray:
    """A 1x5 RGB+edge frame of known values."""
    return np.array([[[0, 10, 100, 7], [250, 128, 3, 99], [255, 0, 0, 1], [30, 30, 30, 255], [60, 120, 200, 0]]],
                    np.uint8)


def test_brightness_and_contrast_are_rounded_clipped_and_leave_the_edge():
    frame = pixels()
    rgb = frame[..., :3].astype(float)
    cases = [
        (Photometric(brightness=20.4), rgb + 20.4),
        (Photometric(contrast=1.5), rgb * 1.5),
        (Photometric(brightness=-31.0, contrast=0.5, contrast_first=True),
         np.rint(np.clip(np.rint(rgb - 31.0), 0, 255)) * 0.5),
        (Photometric(brightness=10.0, contrast=0.5), np.clip(np.rint(rgb + 10), 0, 255) * 0.5),
    ]
    for params, expected in cases:
        out = photometric_distortion(frame, params)
        assert np.array_equal(out[..., :3], np.clip(np.rint(expected), 0, 255).astype(np.uint8)), params
        assert np.array_equal(out[..., 3], frame[..., 3]) and out.dtype == np.uint8
    assert np.array_equal(photometric_distortion(frame, Photometric()), frame)
    three = photometric_distortion(np.ascontiguousarray(frame[..., :3]), Photometric(contrast=1.5))
    assert np.array_equal(three, photometric_distortion(frame, Photometric(contrast=1.5))[..., :3])


def test_saturation_and_hue_change_colours_as_hsv_says():
    frame = pixels()
    grey = photometric_distortion(frame, Photometric(saturation=0.0))
    assert np.array_equal(grey[..., :3], np.repeat(frame[..., :3].max(axis=-1, keepdims=True), 3, axis=-1))
    assert np.array_equal(grey[..., 3], frame[..., 3])
    shifted = photometric_distortion(frame, Photometric(hue=60))  # OpenCV's 60 = 120 degrees
    assert shifted[0, 2, :3].tolist() == [0, 255, 0]  # pure red -> pure green
    assert shifted[0, 3, :3].tolist() == [30, 30, 30]  # grey has no hue
    for (r, g, b), (r2, g2, b2) in zip(frame[0, :, :3].tolist(), shifted[0, :, :3].tolist(), strict=True):
        h, s, v = colorsys.rgb_to_hsv(r / 255, g / 255, b / 255)
        h2, s2, v2 = colorsys.rgb_to_hsv(r2 / 255, g2 / 255, b2 / 255)
        assert abs(v2 - v) < 0.01 and (s < 0.05 or abs((h2 - h - 1 / 3 + 0.5) % 1 - 0.5) < 0.02)
    assert np.array_equal(shifted[..., 3], frame[..., 3])
    both = photometric_distortion(frame, Photometric(brightness=5.0, contrast=1.2, saturation=1.3, hue=-10))
    assert np.array_equal(both[..., 3], frame[..., 3]) and not np.array_equal(both, frame)


def test_photometric_draws_follow_mmsegmentations_probabilities_and_ranges():
    rng = np.random.default_rng(4)
    draws = [draw_photometric(rng) for _ in range(2000)]
    for name, low, high in (("brightness", -32, 32), ("contrast", 0.5, 1.5), ("saturation", 0.5, 1.5),
                            ("hue", -18, 18)):
        values = [getattr(d, name) for d in draws if getattr(d, name) is not None]
        assert 0.45 < len(values) / len(draws) < 0.55 and low <= min(values) and max(values) <= high, name
    assert 0.45 < np.mean([d.contrast_first for d in draws]) < 0.55


# ------------------------------------------------------------------------------ the augmented loader


AUGMENTED = Augmentation((0.5, 2.0), 0.75, photometric=True)


def test_without_augmentations_the_loader_reads_as_before(segnet_shards):
    """No augmentation: the whole frame at the stage size (through the levels), flipped if the item says."""
    reader = open_split(segnet_shards, "train")
    dataset = ShardDataset(segnet_shards, "train", 4, (32, 48))
    for item in (Item(3, False, 1), Item(3, True, 2), 3):
        image, label = dataset[item]
        frame, expected_label, _ = reader.read(3, (32, 48))
        if isinstance(item, Item) and item.flip:
            frame, expected_label = frame[:, ::-1], expected_label[:, ::-1]
        assert np.array_equal(image.numpy().transpose(1, 2, 0), frame)
        assert np.array_equal(label.numpy(), expected_label)


def test_augmented_samples_depend_on_their_item_alone(segnet_shards):
    dataset = ShardDataset(segnet_shards, "train", 4, (24, 48), augment=AUGMENTED)
    other = ShardDataset(segnet_shards, "train", 4, (24, 48), augment=AUGMENTED)
    items = EpochSampler(len(dataset), seed=5).items()
    first = [dataset[item] for item in items]
    again = [other[item] for item in reversed(items)][::-1]  # another reader, another order
    for (image, label), (image2, label2) in zip(first, again, strict=True):
        assert image.shape == (4, 24, 48) and label.shape == (24, 48) and image.dtype == label.dtype == torch.uint8
        assert torch.equal(image, image2) and torch.equal(label, label2)
    reseeded = [dataset[Item(item.index, item.flip, item.seed + 1)] for item in items]
    assert sum(not torch.equal(a[0], b[0]) for a, b in zip(first, reseeded, strict=True)) >= len(items) - 1
    assert any((label == 255).all(dim=0).any() for _, label in first)  # some crops padded (ratios below 1)


def test_the_sampler_draws_seeds_without_changing_order_and_flips():
    """Order and flips are those the sampler drew before seeds existed (so unaugmented runs are unchanged);
    --no-flip changes neither the order nor the seeds."""
    sampler, no_flip = EpochSampler(9, seed=2), EpochSampler(9, seed=2, flip=False)
    for epoch in (0, 3):
        sampler.set_epoch(epoch)
        no_flip.set_epoch(epoch)
        generator = torch.Generator().manual_seed(2 * 100_003 + epoch)
        order = torch.randperm(9, generator=generator).tolist()
        flips = (torch.rand(9, generator=generator) < 0.5).tolist()
        items = sampler.items()
        assert [(i.index, i.flip) for i in items] == list(zip(order, flips, strict=True))
        assert [(i.index, i.seed) for i in no_flip.items()] == [(i.index, i.seed) for i in items]
        assert not any(i.flip for i in no_flip.items()) and len({i.seed for i in items}) == 9
    assert EpochSampler(3, shuffle=False).items() == [Item(0), Item(1), Item(2)]


def test_options_are_checked_in_one_line():
    for options, message in [
        (dict(scale_range=(2.0, 1.0)), r"^--scale-range 2,1: expected LO,HI"),
        (dict(scale_range=(0.0, 1.0)), r"^--scale-range 0,1"),
        (dict(scale_range=(0.5, 2.0), cat_max_ratio=0.0), r"^--cat-max-ratio 0.0: must be above 0"),
        (dict(cat_max_ratio=0.75), r"^--cat-max-ratio 0.75: needs --scale-range"),
    ]:
        with pytest.raises(SegnetOptionError, match=message):
            Augmentation(**options)


def test_the_training_loaders_augment_and_the_validation_loaders_do_not(segnet_shards):
    from segnet.config import TrainConfig, parse_schedule
    from segnet.train import StageLoaders

    config = TrainConfig("vanilla", str(segnet_shards), "unused", schedule=parse_schedule("24x48:4:1,32x64:2:1"),
                         scale_range=(0.5, 2.0), cat_max_ratio=0.75, photometric=True)
    train_loaders = StageLoaders(config, "train", 3, LoaderSettings(), config.augmentation())
    val_loaders = StageLoaders(config, "val", 3, LoaderSettings())
    assert [d.augment for d in train_loaders.datasets] == [AUGMENTED] * 2
    assert [d.augment for d in val_loaders.datasets] == [Augmentation()] * 2


@pytest.mark.slow
def test_a_run_with_augmentations_trains_and_records_them(segnet_shards, tmp_path):
    from segnet.config import TrainConfig, parse_schedule
    from segnet.train import train

    config = TrainConfig("dlse-hed", str(segnet_shards), str(tmp_path / "run"), val_split=None,
                         schedule=parse_schedule("24x48:4:1"), backbone_weights="none", device="cpu", workers=0,
                         scale_range=(0.5, 2.0), cat_max_ratio=0.75, photometric=True, flip=False)
    result = train(config)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert result.epochs_run == 1 and saved["scale_range"] == [0.5, 2.0] and saved["photometric"] is True
    assert TrainConfig.from_json(saved) == config


@pytest.mark.slow
def test_two_workers_prepare_the_samples_that_loading_in_line_does(segnet_shards):
    dataset = ShardDataset(segnet_shards, "train", 4, (24, 48), augment=AUGMENTED)
    items = EpochSampler(len(dataset), seed=9).items()
    batches = {}
    for workers in (0, 2):
        loader, epoch_items = make_loader(dataset, 4, LoaderSettings(workers=workers))
        epoch_items.set_items(items)
        batches[workers] = list(loader)
        del loader
    for (image, label), (image2, label2) in zip(batches[0], batches[2], strict=True):
        assert torch.equal(image, image2) and torch.equal(label, label2)

