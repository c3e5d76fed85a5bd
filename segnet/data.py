"""Training data straight from hedprep shards: a torch `Dataset` and the sampler that orders it.

Loading is a pipeline of small named steps, each measurable on its own (benchmarks/segnet_loader.py):

    read at the stage size (shard -> uint8 RGB+edge, trainIds) -> select channels -> flip -> to tensors
    ... batched, moved to the device -> normalise

With training augmentations (`segnet.augment`, `--scale-range`, `--cat-max-ratio`, `--photometric`):

    random scale + crop (read only the crop's region of a level) -> photometric -> select channels
    -> flip -> pad to the stage size -> to tensors

- `read`: `SplitReader.read(index, size)` of `hedprep.shards` (lazy HDF5 handles, reopened in each
  DataLoader worker). It decodes the smallest resolution level the shards store at least as large as
  the stage size and resizes it the rest of the way (area averaging for image and edge, nearest pixel
  for labels), so a 128x224 sample decodes a 128x256 level, not a 1024x2048 frame. Shards without
  levels (format v1, or `--levels 0`) are read at full size and resized the same way. All four
  channels are resized: the stored frame is contiguous, while its RGB part alone would first be
  copied (measured: the RGB variants' loading was then 17% slower than dlse-hed's at 128x224).
- `select_channels`: R, G, B for vanilla, dlse and dlse-sf; R, G, B, edge for dlse-hed. The RGB
  variants pay for the edge channel its share of decompression (it sits in the same chunks as RGB)
  and of a small resize.
- `random_scale_crop` (with `--scale-range`, instead of `read`): a random ratio of the stored frame
  size and a random crop of the stage size (redrawn up to 10 times while one class dominates, with
  `--cat-max-ratio`), of which only the region is read, from the smallest level at least the scaled
  frame's size, and resized (`segnet.augment`).
- `photometric_distortion` (with `--photometric`): brightness, contrast, saturation and hue of R, G, B.
- `flip`: horizontal, when the sampler says so (training only; `--no-flip`: never).
- `pad_to` (after a random crop): to the stage size, image 0 and labels 255 (ignore), bottom and right.
- `to_tensors`: uint8 (C, H, W) image and uint8 (H, W) labels: a DataLoader worker sends 5x fewer
  bytes than float32 and int64 would.
- `normalise`: on the device, per batch: ImageNet mean/std for RGB, edge / 255; float32. At 512x912
  it took as long as the rest of loading when done per sample on the loader's core
  (docs/performance.md).

Randomness lives in the sampler, not in the workers: `EpochSampler` yields `Item`s (index, flip, seed)
drawn from a generator seeded by (seed, epoch), and the augmentations of a sample draw from a generator
of its item's seed alone, so an epoch's order, flips, scales, crops and colours are the same whatever
the number of DataLoader workers or processes, and a resumed run replays them exactly. Without
augmentations the seeds are unused and the order and flips are those drawn before seeds existed.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from hedprep.shards import MANIFEST_NAME, IncompleteSplitError, SplitReader, open_split
from segnet.augment import Augmentation, draw_photometric, pad_to, photometric_distortion, random_scale_crop
from segnet.errors import SegnetError

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # RGB, of pixel / 255
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Example:
    """One prepared sample: a uint8 (C, H, W) image and uint8 (H, W) trainIds (255 = ignore)."""

    image: torch.Tensor
    label: torch.Tensor


@dataclass(frozen=True)
class Item:
    """What a loader serves for one sample: a frame index, whether to mirror it, and the seed of its
    random augmentations (`segnet.augment`; unused without them)."""

    index: int
    flip: bool = False
    seed: int = 0


def as_item(item: Item | int | tuple) -> Item:
    """An `Item` from an item, a frame index, or an `(index, flip[, seed])` tuple."""
    if isinstance(item, Item):
        return item
    return Item(*item) if isinstance(item, tuple) else Item(int(item))


def select_channels(frame: np.ndarray, channels: int) -> np.ndarray:
    """(H, W, 4) RGB+edge -> its first `channels` channels (3: RGB, 4: RGB+edge)."""
    return frame[..., :channels]


def flip(image: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror left-right."""
    return image[:, ::-1], label[:, ::-1]


def to_tensors(image: np.ndarray, label: np.ndarray) -> Example:
    """uint8 (H, W, C) image and (H, W) trainIds -> uint8 tensors (C, H, W) and (H, W)."""
    return Example(
        torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
        torch.from_numpy(np.ascontiguousarray(label)),
    )


_SCALE = (*(1 / (255 * s) for s in IMAGENET_STD), 1 / 255)
_OFFSET = (*(-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)), 0.0)


@functools.lru_cache(maxsize=16)
def _normalisation(device: torch.device, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The (C, 1, 1) scale and offset on `device`, made once: a tensor made from Python numbers is a
    host-to-device copy that waits for the GPU."""
    scale = torch.tensor(_SCALE[:channels], dtype=torch.float32).view(channels, 1, 1)
    offset = torch.tensor(_OFFSET[:channels], dtype=torch.float32).view(channels, 1, 1)
    return scale.to(device), offset.to(device)


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 (..., C, H, W) -> float32 on the same device: ImageNet mean/std for RGB, edge / 255.

    Runs on the device, after the batch is there: a loader sends uint8 (4x fewer bytes than float32
    through its worker queue and to the GPU), and the arithmetic runs once per batch.
    """
    scale, offset = _normalisation(images.device, images.shape[-3])
    return images.float().mul_(scale).add_(offset)


def model_input(images: torch.Tensor, device: torch.device, channels_last: bool = False) -> torch.Tensor:
    """A uint8 batch from a loader -> the model's float32 input on `device` (channels-last if asked)."""
    x = normalise(images.to(device, non_blocking=True))
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


class ShardDataset(Dataset):
    """The frames of a built split, prepared for a model: indexed by `Item`s (or frame indices).

    Args:
        shards: the output folder of `hedprep build` (holding `SPLIT/manifest.json`).
        split: train, val, ...
        channels: 3 (RGB) or 4 (RGB + edge, for dlse-hed).
        size: (height, width) to read the frames at; None keeps the stored size.
        strict: refuse an incomplete build instead of warning.
        resize_labels: resize labels with the image (training); False keeps them at the stored size
            (evaluation, where predictions are upsampled to the labels).
        augment: the random augmentations of training (`segnet.augment`), drawn from each item's seed;
            None (or `Augmentation()`): the whole frame at `size`.
    """

    def __init__(self, shards: str | os.PathLike, split: str, channels: int, size: tuple[int, int] | None = None,
                 strict: bool = False, resize_labels: bool = True, augment: Augmentation | None = None) -> None:
        if channels not in (3, 4):
            raise ValueError(f"channels must be 3 or 4, not {channels}")
        self.reader: SplitReader = open_split_checked(shards, split, strict)
        self.channels = channels
        self.size = size
        self.resize_labels = resize_labels
        self.augment = augment or Augmentation()

    def __len__(self) -> int:
        return len(self.reader)

    @property
    def frame_size(self) -> tuple[int, int]:
        """(height, width) of the stored frames."""
        return self.reader.frame_size

    def __getitem__(self, item: Item | int | tuple) -> tuple[torch.Tensor, torch.Tensor]:
        item = as_item(item)
        image, label = self.read(item)
        image = select_channels(image, self.channels)
        if item.flip:
            image, label = flip(image, label)
        if self.augment.scale_range is not None:
            image, label = pad_to(image, label, self.size or self.frame_size)
        example = to_tensors(image, label)
        return example.image, example.label

    def read(self, item: Item) -> tuple[np.ndarray, np.ndarray]:
        """The (h, w, 4) RGB+edge and (h, w) trainIds of `item` before channels are selected: read at the
        stage size, or a random scale and crop of it (not yet padded), photometrically distorted if asked."""
        augment = self.augment
        rng = np.random.default_rng(item.seed) if augment.random else None
        if augment.scale_range is not None:
            frame, label = random_scale_crop(self.reader, item.index, self.size or self.frame_size, augment, rng)
        else:
            frame, label, _ = self.reader.read(item.index, self.size, full_size_labels=not self.resize_labels)
        if augment.photometric:
            frame = photometric_distortion(frame, draw_photometric(rng))
        return frame, label

    def frame_id(self, index: int) -> str:
        return self.reader.frame_ids[index]


def open_split_checked(shards: str | os.PathLike, split: str, strict: bool = False) -> SplitReader:
    """`open_split` with segnet's errors: a missing split or manifest, an empty or (with `strict`) an
    incomplete build are one-line errors naming the folder."""
    split_dir = os.path.join(os.fspath(shards), split)
    if not os.path.isfile(os.path.join(split_dir, MANIFEST_NAME)):
        raise SegnetError(f"{split_dir}: no built split here (no {MANIFEST_NAME}); build it with "
                          f"`hedprep build --split {split} --out {os.fspath(shards)}`", split_dir)
    try:
        reader = open_split(shards, split, incomplete="error" if strict else "warn")
    except IncompleteSplitError:
        raise SegnetError(f"{split_dir}: the build is incomplete (--strict); rerun hedprep build to finish it",
                          split_dir) from None
    if len(reader) == 0:
        raise SegnetError(f"{split_dir}: the split holds no frames", split_dir)
    return reader


class EpochSampler(Sampler):
    """Yields the `Item`s of one epoch: a permutation, flips and augmentation seeds drawn from (seed, epoch).

    With `shuffle=False` (evaluation): indices in order, never flipped, seed 0. With `num_replicas > 1`
    each rank takes every `num_replicas`-th item of the same sequence, padded by wrapping so every rank
    gets as many (training: DistributedDataParallel needs as many steps on every rank), as
    DistributedSampler does; with `pad=False` (validation, evaluation) every item is served exactly
    once and ranks may get one item fewer.
    """

    def __init__(self, size: int, seed: int = 0, shuffle: bool = True, flip: bool = True,
                 num_replicas: int = 1, rank: int = 0, pad: bool = True) -> None:
        self.size = size
        self.seed = seed
        self.shuffle = shuffle
        self.flip = flip and shuffle
        self.num_replicas = num_replicas
        self.rank = rank
        self.pad = pad
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def items(self) -> list[Item]:
        """This rank's items of the current epoch, in order."""
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.size, generator=generator).tolist()
            # Drawn whether or not flips are on, so the seeds after them are the same either way.
            flips = (torch.rand(self.size, generator=generator) < 0.5).tolist()
            seeds = torch.randint(0, 2**62, (self.size,), generator=generator).tolist()
            items = [Item(i, f and self.flip, s) for i, f, s in zip(order, flips, seeds, strict=True)]
        else:
            items = [Item(i) for i in range(self.size)]
        per_rank = -(-len(items) // self.num_replicas)
        if self.num_replicas > 1 and self.pad:
            items += items[: per_rank * self.num_replicas - len(items)]
        return items[self.rank :: self.num_replicas]

    def __iter__(self) -> Iterator[Item]:
        return iter(self.items())

    def __len__(self) -> int:
        return len(self.items())


class EpochItems(Sampler):
    """The `Item`s a DataLoader serves, replaced before each epoch.

    One DataLoader per stage can then serve every epoch of it, so its worker processes (with their
    open shard handles) persist instead of being started again each epoch.
    """

    def __init__(self) -> None:
        self.items: list[Item] = []

    def set_items(self, items: list[Item]) -> None:
        self.items = list(items)

    def __iter__(self) -> Iterator[Item]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


@dataclass(frozen=True)
class LoaderSettings:
    """How batches are loaded: worker processes, batches each worker prepares ahead, pinned memory.

    `loader_settings` chooses them; see `segnet.config.default_workers` for the measurements.
    """

    workers: int = 0
    prefetch_factor: int = 2  # 4 made no consistent difference (docs/performance.md)
    pin_memory: bool = False


def loader_settings(device_type: str, workers: int) -> LoaderSettings:
    """The DataLoader settings for `workers` processes on a device of `device_type` (pinned memory on CUDA)."""
    return LoaderSettings(workers=workers, pin_memory=device_type == "cuda")


@contextlib.contextmanager
def opencv_single_threaded(enabled: bool = True) -> Iterator[None]:
    """OpenCV on one thread in this process while the block runs (and in the DataLoader workers it
    forks meanwhile, which inherit the setting); the earlier thread count after.

    A worker process prepares one sample at a time on one core: OpenCV's own thread pool (used by
    the resizes of `read`) would only compete with the other workers and the training process. It
    must be set before the fork: a forked worker that reconfigures the pool it inherited waits for
    threads that do not exist in it (a test run hung so). Use it where the workers do all the
    loading, so this process's own OpenCV calls are few.
    """
    if not enabled:
        yield
        return
    import cv2

    previous = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(previous)


def make_loader(dataset: Dataset, batch_size: int, settings: LoaderSettings) -> tuple[DataLoader, EpochItems]:
    """A DataLoader over `dataset` and the `EpochItems` to set before each epoch.

    With workers, they persist across epochs and each keeps `prefetch_factor` batches ready.
    """
    items = EpochItems()
    extra = {}
    if settings.workers > 0:
        extra = {"persistent_workers": True, "prefetch_factor": settings.prefetch_factor}
    loader = DataLoader(
        dataset, batch_size=batch_size, sampler=items, num_workers=settings.workers,
        pin_memory=settings.pin_memory,
        # A loader of its own generator leaves the global RNG (dropout's) untouched by worker seeding.
        generator=torch.Generator().manual_seed(0), **extra,
    )
    return loader, items
