"""Shard format v3 (v1, v2 still read): names, layout constants, root attributes (`docs/shard-format.md`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

FORMAT_NAME = "hedseg-shards"
FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)  # v1: no resolution levels; v1 and v2: no `device`, `precision` as asked
CHANNELS = ("R", "G", "B", "edge")
MANIFEST_NAME = "manifest.json"
SHARD_PATTERN = "shard-*.h5"
IMAGES_GROUP = "images"
BROWSE_GROUP = "browse"  # NeXus NXdata of every frame's RGB: what a viewer opens first
LABEL_COLORS = "label_colors"  # the labels in Cityscapes colours, for viewers
LEVELS_GROUP = "levels"
REQUIRED_DATASETS = ("frames", "labels", "frame_ids")
# The root attribute counting the shard's level-0 label pixels that are ignore (255): what share of a
# split training learns nothing from (most of a coarse one). Shards written before it lack it (unknown).
IGNORED_PIXELS = "ignored_pixels"

# Chunks are 256x256 tiles of one frame: a random 512x512 crop (the usual training input) then
# decompresses 4-9 tiles instead of a whole 1024x2048 frame (3.5x faster), and whole frames read as
# fast as with one chunk per frame (benchmarks/build_throughput.py, docs/performance.md).
TILE = 256


def tile_shape(height: int, width: int) -> tuple[int, int]:
    """The (rows, cols) of a chunk for frames of this size: 256x256, or the frame if it is smaller."""
    return min(height, TILE), min(width, TILE)


def level_dataset(level: int, name: str) -> str:
    """The path of a dataset (`frames` or `labels`) at `level`: `frames` itself at level 0, else
    `levels/{level}/frames`."""
    return name if level == 0 else f"{LEVELS_GROUP}/{level}/{name}"


def shard_name(index: int) -> str:
    """`shard-00042.h5` for index 42."""
    return f"shard-{index:05d}.h5"


def is_plain_file_name(file: str) -> bool:
    """True for a bare file name: no folders, not absolute, not `.` or `..`."""
    name = Path(file)
    return not name.is_absolute() and len(name.parts) == 1 and name.name not in ("", ".", "..")


def set_string_attr(obj: h5py.HLObject, name: str, value: str) -> None:
    """A fixed-length, null-terminated string attribute, as the HDF5 Image Specification asks."""
    data = value.encode("utf-8")
    tid = h5py.h5t.C_S1.copy()
    tid.set_size(len(data) + 1)
    tid.set_strpad(h5py.h5t.STR_NULLTERM)
    tid.set_cset(h5py.h5t.CSET_ASCII if data.isascii() else h5py.h5t.CSET_UTF8)
    obj.attrs.create(name, np.array(data, dtype=f"S{len(data) + 1}"), dtype=h5py.Datatype(tid))


def read_attrs(obj: h5py.HLObject) -> dict[str, Any]:
    """An object's attributes as plain Python values (bytes decoded, arrays to lists)."""
    out: dict[str, Any] = {}
    for name, value in obj.attrs.items():
        if isinstance(value, bytes):
            value = value.decode("utf-8")
        elif isinstance(value, np.ndarray):
            value = [v.decode("utf-8") if isinstance(v, bytes) else v for v in value.tolist()]
        elif isinstance(value, np.generic):
            value = value.item()
        out[name] = value
    return out


def is_shard_attrs(attrs: dict[str, Any]) -> bool:
    """True if root attributes name this format and a version this package reads (1 to 3)."""
    return attrs.get("format") == FORMAT_NAME and attrs.get("format_version") in READABLE_VERSIONS


def ignore_share(counts: Iterable[int | None], pixels: int) -> float | None:
    """The share of `pixels` label pixels that are ignore, from shards' `IGNORED_PIXELS` counts; None
    where a count is unknown (None) or there is no pixel."""
    counts = list(counts)
    return None if not pixels or None in counts else sum(counts) / pixels


def stored_levels(attrs: dict[str, Any]) -> int:
    """The resolution levels a shard holds besides level 0 (v1 shards: none)."""
    return int(attrs.get("levels", 0))


@dataclass(frozen=True)
class ShardInfo:
    """What every shard of a build records in its root attributes (and the manifest in `params`)."""

    split: str
    dataset_root: str
    hed_weights: str
    hed_weights_sha256: str
    precision: str
    compression: str
    frame_height: int
    frame_width: int
    levels: int = 0  # resolution levels besides level 0 (format v2; v1 shards have none)
    # HED's device kind, `cpu` or `cuda` (format v3; "" where not recorded: rewritten from a v1 or v2
    # shard). Since v3 `precision` is the one that ran (bf16 or tf32 asked for where unsupported: fp32).
    device: str = ""
    package_version: str = ""

    def __post_init__(self) -> None:
        if not self.package_version:
            from hedprep import __version__

            object.__setattr__(self, "package_version", __version__)

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> ShardInfo:
        """The `ShardInfo` part of a manifest's build parameters."""
        return cls(**{k: v for k, v in params.items() if k in cls.__dataclass_fields__})
