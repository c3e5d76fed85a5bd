"""segnet.data: the shard-backed Dataset, its named steps and the epoch sampler, on real shards."""

from __future__ import annotations

import operator

import numpy as np
import pytest
import torch

from hedprep.shards import open_split
from segnet.data import EpochSampler, Item, ShardDataset, flip, normalise
from segnet.errors import SegnetError


def test_rgb_and_rgbe_samples_are_uint8_frames_normalised_per_batch(segnet_shards):
    reader = open_split(segnet_shards, "train")
    frame, label, _ = reader[2]
    rgb = ShardDataset(segnet_shards, "train", channels=3)
    rgbe = ShardDataset(segnet_shards, "train", channels=4)
    image3, label3 = rgb[2]
    image4, label4 = rgbe[(2, False)]
    assert image3.shape == (3, 64, 128) and image4.shape == (4, 64, 128) and image3.dtype == torch.uint8
    assert torch.equal(image3, image4[:3]) and torch.equal(label3, label4) and label3.dtype == torch.uint8
    assert np.array_equal(image4.numpy().transpose(1, 2, 0), frame) and np.array_equal(label3.numpy(), label)
    batch = normalise(torch.stack([image4, image4]))
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    expected = (frame[..., :3] / 255.0 - mean) / std
    assert batch.shape == (2, 4, 64, 128) and batch.dtype == torch.float32
    np.testing.assert_allclose(batch[1, :3].numpy().transpose(1, 2, 0), expected, atol=1e-5)
    np.testing.assert_allclose(batch[0, 3].numpy(), frame[..., 3] / 255.0, atol=1e-6)
    np.testing.assert_allclose(normalise(image3).numpy().transpose(1, 2, 0), expected, atol=1e-5)
    assert (label3 != 255).any()


def test_samples_are_read_at_the_stage_size_through_the_levels(segnet_shards):
    reader = open_split(segnet_shards, "train")
    assert reader.levels == 3  # the build's default: 32x64, 16x32, 8x16 besides 64x128
    frame, label, _ = reader.read(0, (32, 48))  # from level 1 (32x64), the smallest at least 32x48
    image, sample_label = ShardDataset(segnet_shards, "train", 3, size=(32, 48))[0]
    assert image.shape == (3, 32, 48) and np.array_equal(sample_label.numpy(), label)
    assert np.array_equal(image.numpy().transpose(1, 2, 0), frame[..., :3])
    assert set(np.unique(label)) <= set(np.unique(reader[0].label))  # no invented classes


def test_flip_mirrors_image_and_label_together(segnet_shards):
    dataset = ShardDataset(segnet_shards, "val", 4, size=(40, 72))
    image, label = dataset[(1, False)]
    mirrored_image, mirrored_label = dataset[(1, True)]
    assert torch.equal(mirrored_image, image.flip(-1)) and torch.equal(mirrored_label, label.flip(-1))
    a, b = flip(np.arange(6).reshape(2, 3, 1), np.arange(6).reshape(2, 3))
    assert a[0, :, 0].tolist() == [2, 1, 0] and b[1].tolist() == [5, 4, 3]


def test_evaluation_keeps_labels_at_full_size(segnet_shards):
    image, label = ShardDataset(segnet_shards, "val", 3, size=(32, 48), resize_labels=False)[0]
    assert image.shape == (3, 32, 48) and label.shape == (64, 128)


def test_normalise_takes_three_or_four_channels():
    image = normalise(torch.full((4, 2, 2), 255, dtype=torch.uint8))
    assert image.shape == (4, 2, 2) and torch.allclose(image[3], torch.ones(2, 2))
    assert normalise(torch.zeros((1, 3, 2, 2), dtype=torch.uint8))[0, 0, 0, 0] == pytest.approx(-0.485 / 0.229)


def test_epoch_sampler_is_a_seeded_reshuffle_with_flips():
    sampler = EpochSampler(10, seed=3)
    first = sampler.items()
    assert sorted(i.index for i in first) == list(range(10)) and first == EpochSampler(10, seed=3).items()
    sampler.set_epoch(1)
    assert sampler.items() != first  # reshuffled every epoch
    assert {i.flip for i in first + sampler.items()} == {True, False}
    assert EpochSampler(10, seed=4).items() != first
    assert EpochSampler(5, shuffle=False).items() == [Item(i, False) for i in range(5)]


def test_ranks_split_one_epoch_between_them():
    full = EpochSampler(7, seed=1).items()
    ranks = [EpochSampler(7, seed=1, num_replicas=2, rank=r).items() for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 4
    by_index = operator.attrgetter("index")
    assert ranks[0] + ranks[1] != full
    assert sorted(ranks[0][:4] + ranks[1][:3], key=by_index) == sorted(full, key=by_index)


def test_missing_split_and_incomplete_build(segnet_shards, tmp_path):
    with pytest.raises(SegnetError, match="no built split here"):
        ShardDataset(tmp_path, "train", 3)
    import shutil

    shutil.copytree(segnet_shards / "val", tmp_path / "val")
    manifest = tmp_path / "val" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"complete": true', '"complete": false'))
    with pytest.warns(UserWarning, match="incomplete"):
        assert len(ShardDataset(tmp_path, "val", 3)) == 4
    with pytest.raises(SegnetError, match=r"incomplete \(--strict\)"):
        ShardDataset(tmp_path, "val", 3, strict=True)
