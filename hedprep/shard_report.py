"""Shards as people look at them: summaries (`hedprep inspect`) and PNGs of a frame (`hedprep show`).

The format, reading and verification belong to `hedprep.shards`; this module only reads shards
through its public names and returns plain dataclasses, which `cli.py` renders.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import h5py
import numpy as np

from hedprep.atomic import write_bytes_atomic
from hedprep.cityscapes import trainid_to_color
from hedprep.errors import HedprepError, one_line
from hedprep.images import encode_png
from hedprep.shards import (
    IGNORED_PIXELS,
    IMAGES_GROUP,
    Manifest,
    ShardError,
    ignore_share,
    level_dataset,
    open_shard,
    read_attrs,
    read_manifest,
    read_shard_frame,
    shard_path,
    split_dirs,
    stored_levels,
)

# HDF5 filter ids (https://github.com/HDFGroup/hdf5_plugins/blob/master/docs/RegisteredFilterPlugins.md).
FILTER_NAMES = {
    h5py.h5z.FILTER_DEFLATE: "gzip",
    h5py.h5z.FILTER_SHUFFLE: "shuffle",
    h5py.h5z.FILTER_FLETCHER32: "fletcher32",
    h5py.h5z.FILTER_SZIP: "szip",
    h5py.h5z.FILTER_NBIT: "nbit",
    h5py.h5z.FILTER_SCALEOFFSET: "scaleoffset",
    32000: "lzf",
    32004: "lz4",
    32015: "zstd",
}
LEVELLED_FILTERS = ("gzip", "zstd")  # their first filter parameter is the level, as in `--compression`
# What h5py raises besides OSError when a file's metadata is damaged (a flipped byte in an object header).
H5PY_DAMAGE_ERRORS = (OSError, KeyError, RuntimeError, ValueError)
# Frame ids become file names in `show`: Cityscapes ids are `{city}_{seq}_{frame}`.
_SAFE_FILE_STEM = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


# ------------------------------------------------------------------------------------------- inspect


@dataclass(frozen=True)
class DatasetSummary:
    """One dataset of a shard, or one row standing for all `images/*/NAME` views (`count` of them)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    chunks: tuple[int, ...] | None  # None: contiguous or virtual
    filters: str  # "gzip:1", "zstd:3", "lzf", "none", or "virtual" for views
    stored_bytes: int
    count: int = 1


@dataclass(frozen=True)
class ShardSummary:
    """What one shard file holds and how it is stored."""

    path: Path
    frames: int
    frame_shape: tuple[int, int]  # (height, width)
    frames_dtype: str
    labels_dtype: str
    frames_chunks: tuple[int, ...] | None
    compression: str  # the filters of `frames` (and of `labels`, if they differ: "a / b")
    stored_bytes: int  # frames + labels of every level as stored in the file (compressed)
    raw_bytes: int  # frames + labels of every level uncompressed
    file_bytes: int
    attrs: dict[str, Any]
    datasets: tuple[DatasetSummary, ...]
    level_stored_bytes: tuple[int, ...] = ()  # frames + labels as stored, per level (0 first)
    level_shapes: tuple[tuple[int, int], ...] = ()  # (height, width) per level (0 first)

    @property
    def levels(self) -> int:
        """Resolution levels besides level 0."""
        return max(0, len(self.level_stored_bytes) - 1)

    @property
    def ratio(self) -> float:
        """Uncompressed frames + labels bytes per byte of file."""
        return self.raw_bytes / self.file_bytes if self.file_bytes else 0.0

    @property
    def ignored_pixels(self) -> int | None:
        """Level-0 label pixels that are ignore (255), as the shard records them (None: not recorded)."""
        return self.attrs.get(IGNORED_PIXELS)

    @property
    def label_pixels(self) -> int:
        return self.frames * self.frame_shape[0] * self.frame_shape[1]

    @property
    def ignore_share(self) -> float | None:
        """The share of the shard's level-0 label pixels that are ignore; None: not recorded, or no frame."""
        return ignore_share([self.ignored_pixels], self.label_pixels)


def describe_filters(dataset: h5py.Dataset) -> str:
    """A dataset's filter pipeline as `--compression` spells it: "gzip:1", "lzf", "none", "virtual"."""
    if dataset.is_virtual:
        return "virtual"
    plist = dataset.id.get_create_plist()
    names = []
    for i in range(plist.get_nfilters()):
        code, _flags, values, _name = plist.get_filter(i)
        name = FILTER_NAMES.get(code, f"filter {code}")
        if name in LEVELLED_FILTERS and values:
            name = f"{name}:{values[0]}"
        names.append(name)
    return "+".join(names) or "none"


def _dtype_name(dtype: np.dtype) -> str:
    return f"S{dtype.itemsize}" if dtype.kind == "S" else str(dtype)


def _dataset_summary(name: str, dataset: h5py.Dataset, count: int = 1) -> DatasetSummary:
    return DatasetSummary(
        name, tuple(dataset.shape), _dtype_name(dataset.dtype), dataset.chunks, describe_filters(dataset),
        0 if dataset.is_virtual else dataset.id.get_storage_size(), count,
    )


def _dataset_summaries(f: h5py.File) -> tuple[DatasetSummary, ...]:
    """Every dataset, in name order; the per-frame views under `images/` as one row per view
    (`images/*/rgb/data`, with the number of frames)."""
    found: dict[str, list[h5py.Dataset]] = {}

    def visit(name: str, obj) -> None:
        if isinstance(obj, h5py.Dataset):
            parts = name.split("/")
            if parts[0] == IMAGES_GROUP and len(parts) > 2:
                name = "/".join([IMAGES_GROUP, "*", *parts[2:]])
            found.setdefault(name, []).append(obj)

    f.visititems(visit)
    return tuple(_dataset_summary(name, datasets[0], len(datasets)) for name, datasets in found.items())


def summarize_shard(path: str | os.PathLike) -> ShardSummary:
    """Summarize one shard file from its metadata (no pixel is decoded)."""
    path = Path(path)
    with open_shard(path) as f:
        try:
            frames, labels = f["frames"], f["labels"]
            attrs = read_attrs(f)
            pairs = [(f[level_dataset(k, "frames")], f[level_dataset(k, "labels")])
                     for k in range(stored_levels(attrs) + 1)]
            level_stored = tuple(a.id.get_storage_size() + b.id.get_storage_size() for a, b in pairs)
            frames_filters, labels_filters = describe_filters(frames), describe_filters(labels)
            compression = frames_filters if frames_filters == labels_filters else f"{frames_filters} / {labels_filters}"
            return ShardSummary(
                path=path,
                frames=int(frames.shape[0]),
                frame_shape=tuple(frames.shape[1:3]),
                frames_dtype=_dtype_name(frames.dtype),
                labels_dtype=_dtype_name(labels.dtype),
                frames_chunks=frames.chunks,
                compression=compression,
                stored_bytes=sum(level_stored),
                raw_bytes=sum(a.nbytes + b.nbytes for a, b in pairs),
                file_bytes=path.stat().st_size,
                attrs=attrs,
                datasets=_dataset_summaries(f),
                level_stored_bytes=level_stored,
                level_shapes=tuple(tuple(a.shape[1:3]) for a, _ in pairs),
            )
        except H5PY_DAMAGE_ERRORS as error:
            raise ShardError(path, f"damaged shard ({one_line(error)})") from None


@dataclass(frozen=True)
class SplitSummary:
    """The shards of a split folder, in manifest order."""

    split_dir: Path
    manifest: Manifest
    shards: tuple[ShardSummary, ...]

    @property
    def frames(self) -> int:
        return sum(s.frames for s in self.shards)

    @property
    def file_bytes(self) -> int:
        return sum(s.file_bytes for s in self.shards)

    @property
    def ratio(self) -> float:
        """Uncompressed frames + labels bytes per byte of shard files."""
        return sum(s.raw_bytes for s in self.shards) / self.file_bytes if self.file_bytes else 0.0

    @property
    def label_kind(self) -> str | None:
        """`fine` or `coarse`, as the manifest records the build's labels."""
        return self.manifest.label_kind

    @property
    def ignore_share(self) -> float | None:
        """The share of the split's level-0 label pixels that are ignore; None where a shard does not record it."""
        return shards_ignore_share(self.shards)

    def level_storage(self) -> list[LevelStorage]:
        """Stored bytes per resolution level over the split's shards (the levels all shards hold)."""
        return level_storage(self.shards)


@dataclass(frozen=True)
class LevelStorage:
    """What one resolution level costs: its size, stored bytes, and their share of level 0's."""

    level: int
    shape: tuple[int, int]
    stored_bytes: int
    share_of_level0: float  # stored bytes / level 0's stored bytes
    pixel_share: float  # pixels / level 0's pixels: what the share would be if compression were even


def shards_ignore_share(shards: Sequence[ShardSummary]) -> float | None:
    """The share of the label pixels of `shards` (level 0) that are ignore; None where one does not record it."""
    return ignore_share((s.ignored_pixels for s in shards if s.frames), sum(s.label_pixels for s in shards))


def level_storage(shards: Sequence[ShardSummary]) -> list[LevelStorage]:
    """Per level, the stored bytes of `shards` (levels all of them hold) and their share of level 0's."""
    if not shards:
        return []
    count = min(s.levels for s in shards) + 1
    totals = [sum(s.level_stored_bytes[k] for s in shards) for k in range(count)]
    shapes = shards[0].level_shapes
    pixels0 = shapes[0][0] * shapes[0][1]
    return [
        LevelStorage(k, shapes[k], totals[k], totals[k] / totals[0] if totals[0] else 0.0,
                     shapes[k][0] * shapes[k][1] / pixels0)
        for k in range(count)
    ]


def summarize_split(split_dir: str | os.PathLike) -> SplitSummary:
    """Summarize every shard a split folder's manifest lists."""
    split_dir = Path(split_dir)
    manifest = read_manifest(split_dir)
    shards = tuple(summarize_shard(shard_path(split_dir, record.file)) for record in manifest.shards)
    return SplitSummary(split_dir, manifest, shards)


def summarize(path: str | os.PathLike) -> ShardSummary | list[SplitSummary]:
    """A shard file's summary, or one `SplitSummary` per split of a split or output folder."""
    path = Path(path)
    if path.is_file():
        return summarize_shard(path)
    if not path.exists():
        raise HedprepError(f"{path}: no such file or folder")
    return [summarize_split(d) for d in split_dirs(path)]


def common_attrs(shards: Sequence[ShardSummary]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Root attributes split into (equal in every shard: name -> value, differing: name -> {file: value})."""
    names = list(dict.fromkeys(name for s in shards for name in s.attrs))
    shared: dict[str, Any] = {}
    differing: dict[str, dict[str, Any]] = {}
    for name in names:
        values = {s.path.name: s.attrs.get(name) for s in shards}
        if len({repr(v) for v in values.values()}) == 1 and all(name in s.attrs for s in shards):
            shared[name] = next(iter(values.values()))
        else:
            differing[name] = values
    return shared, differing


# ---------------------------------------------------------------------------------------------- show


def write_frame_pngs(shard: str | os.PathLike, index: int, out_dir: str | os.PathLike) -> list[Path]:
    """Write OUT/{frame_id}_rgb.png, _edge.png and _label.png (trainId colors) of one frame; returns them."""
    sample = read_shard_frame(shard, index)
    if not _SAFE_FILE_STEM.fullmatch(sample.frame_id):
        raise HedprepError(f"{shard}: frame id {sample.frame_id!r} is not usable as a file name")
    out_dir = Path(out_dir)
    images = {
        "rgb": cv2.cvtColor(sample.frame[..., :3], cv2.COLOR_RGB2BGR),
        "edge": np.ascontiguousarray(sample.frame[..., 3]),
        "label": cv2.cvtColor(trainid_to_color(sample.label), cv2.COLOR_RGB2BGR),
    }
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for kind, image in images.items():
            path = out_dir / f"{sample.frame_id}_{kind}.png"
            write_bytes_atomic(path, encode_png(image, path))
            written.append(path)
    except OSError as error:
        raise HedprepError(f"{out_dir}: cannot write PNGs ({error.strerror or error})") from None
    return written
