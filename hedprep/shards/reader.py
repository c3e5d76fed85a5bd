"""Reading shards: `open_shard` for one file, `open_split` for random access to a built split."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, NamedTuple

import h5py
import numpy as np

from hedprep.errors import HedprepError, one_line
from hedprep.shards.compression import load_filter_plugins
from hedprep.shards.format import (
    FORMAT_NAME,
    LABEL_COLORS,
    MANIFEST_NAME,
    READABLE_VERSIONS,
    REQUIRED_DATASETS,
    is_shard_attrs,
    level_dataset,
    read_attrs,
    stored_levels,
)
from hedprep.shards.frame_reads import FrameReader
from hedprep.shards.levels import choose_level, resize_frame, resize_labels
from hedprep.shards.manifest import read_manifest, shard_path

# What h5py raises besides OSError when a file's metadata is damaged (a flipped byte in an object header).
H5PY_DAMAGE_ERRORS = (OSError, KeyError, RuntimeError, ValueError)

# What opening a split does when its manifest says the build is unfinished.
INCOMPLETE_POLICIES = ("warn", "error")
IncompletePolicy = Literal["warn", "error"]


class ShardError(HedprepError):
    """A shard file that cannot be used; `problem` is the message without the path."""

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        super().__init__(f"{path}: {problem}", path)
        self.problem = problem


def open_shard(path: str | os.PathLike, chunk_cache_bytes: int | None = None) -> h5py.File:
    """Open a shard read-only, with the filter plugins loaded, after checking it is a v1, v2 or v3 shard
    with every dataset its version and levels call for.

    Args:
        chunk_cache_bytes: HDF5's cache of decompressed chunks per dataset; None: HDF5's default.

    Raises:
        ShardError: no such file, not HDF5, not this format or version, a dataset missing, or
            damaged metadata; one line naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise ShardError(path, "no such file")
    load_filter_plugins()
    try:
        f = h5py.File(path, "r", rdcc_nbytes=chunk_cache_bytes)
    except OSError as error:
        raise ShardError(path, f"not a readable HDF5 file ({one_line(error)})") from None
    try:
        attrs = read_attrs(f)
        if not is_shard_attrs(attrs):
            *earlier, last = (f"v{v}" for v in READABLE_VERSIONS)
            versions = f"{', '.join(earlier)} or {last}"
            raise ShardError(path, f"not a {FORMAT_NAME} {versions} shard")
        required = [*REQUIRED_DATASETS] + [
            level_dataset(k, name) for k in range(1, stored_levels(attrs) + 1) for name in ("frames", "labels")
        ] + ([LABEL_COLORS] if attrs.get("format_version", 1) >= 2 else [])
        # f[name], not f.get(name): get() hides the KeyError of a damaged object header as "missing".
        missing = [name for name in required if name not in f or not isinstance(f[name], h5py.Dataset)]
        if missing:
            raise ShardError(path, f"not a complete shard (no dataset {', '.join(missing)})")
    except ShardError:
        f.close()
        raise
    except H5PY_DAMAGE_ERRORS as error:
        f.close()
        raise ShardError(path, f"damaged shard ({one_line(error)})") from None
    return f


class IncompleteSplitError(HedprepError):
    """A split opened with `incomplete="error"` whose manifest records an unfinished build."""


class Sample(NamedTuple):
    """One frame of a split: (H, W, 4) uint8 RGB+edge, (H, W) uint8 trainIds, its Cityscapes id."""

    frame: np.ndarray
    label: np.ndarray
    frame_id: str


def read_shard_frame(path: str | os.PathLike, index: int) -> Sample:
    """Frame `index` of one shard file (negative counts from the end)."""
    path = Path(path)
    with open_shard(path) as f:
        ids = f["frame_ids"]
        n = ids.shape[0]
        if not -n <= index < n:
            valid = f"0-{n - 1} or -{n} to -1" if n else "all of its frames were skipped"
            raise ShardError(path, f"no frame {index}; the shard holds {n} frame(s) ({valid})")
        index %= n
        try:
            return Sample(f["frames"][index], f["labels"][index], ids[index].decode("ascii"))
        except (UnicodeDecodeError, *H5PY_DAMAGE_ERRORS) as error:
            raise ShardError(path, f"frame {index} does not decode ({one_line(error)})") from None


class SplitReader:
    """Random access to the frames of a built split, by its manifest, at full size or any smaller one.

    HDF5 files are opened lazily and reopened after a fork (each DataLoader worker gets its own
    handles); pickling drops the handles, so a reader can be sent to spawned workers.
    """

    def __init__(self, split_dir: str | os.PathLike, incomplete: IncompletePolicy = "warn") -> None:
        """Read the split's manifest; see `open_split` for `incomplete`."""
        if incomplete not in INCOMPLETE_POLICIES:
            raise ValueError(f"incomplete={incomplete!r}: choose one of {', '.join(INCOMPLETE_POLICIES)}")
        self.split_dir = Path(split_dir)
        self.manifest = read_manifest(self.split_dir)
        if self.split_dir.is_file():
            self.split_dir = self.split_dir.parent
        if not self.manifest.complete:
            path = self.split_dir / MANIFEST_NAME
            if incomplete == "error":
                raise IncompleteSplitError(f"{path}: the build is incomplete ({self.manifest.num_frames} frames "
                                           "built so far); rerun hedprep build to finish it", path)
            warnings.warn(
                f"{path}: the build is incomplete; reading the {self.manifest.num_frames} frames built so far "
                "(rerun hedprep build to finish it)",
                UserWarning, stacklevel=2,
            )
        self.shards = [s for s in self.manifest.shards if s.frame_ids]
        self.frame_ids = [i for s in self.shards for i in s.frame_ids]
        self.frame_size = (int(self.manifest.params["frame_height"]), int(self.manifest.params["frame_width"]))
        self._starts = np.cumsum([0] + [len(s.frame_ids) for s in self.shards])
        self._handles: dict[int, _OpenShard] = {}
        self._pid = os.getpid()

    @property
    def levels(self) -> int:
        """The resolution levels every shard of the split holds (0 for v1 shards)."""
        return min((s.levels for s in self.shards), default=0)

    def __len__(self) -> int:
        return len(self.frame_ids)

    def __getitem__(self, index: int) -> Sample:
        return self.read(index)

    def read(self, index: int, size: tuple[int, int] | None = None, full_size_labels: bool = False) -> Sample:
        """Frame `index` at `size` = (height, width), or at full size (None).

        The frame comes from the smallest stored level at least `size` in both dimensions, resized the
        rest of the way (area averaging; labels: nearest pixel), so only the pixels needed are
        decompressed (`hedprep.shards.levels`). `full_size_labels` returns the labels at the stored
        frame size whatever `size` (evaluation scores predictions there).
        """
        index, opened, local = self._locate(index)
        level = choose_level(*self.frame_size, opened.levels, size) if size is not None else 0
        frame = opened.frames[level](local)
        label = opened.labels[0 if full_size_labels else level](local)
        if size is not None:
            frame = resize_frame(frame, size)
            if not full_size_labels:
                label = resize_labels(label, size)
        return Sample(frame, label, self.frame_ids[index])

    def read_region(self, index: int, level: int, rows: tuple[int, int], cols: tuple[int, int],
                    dataset: Literal["frames", "labels"] = "frames") -> np.ndarray:
        """Rows `rows` = (top, bottom) and columns `cols` = (left, right) of frame `index` at resolution
        `level` (0..`levels`), from its `frames` (uint8 RGB+edge) or its `labels` (trainIds); only the
        tiles the box meets are decompressed (a random crop)."""
        if dataset not in ("frames", "labels"):
            raise ValueError(f"dataset={dataset!r}: frames or labels")
        _, opened, local = self._locate(index)
        if not 0 <= level <= opened.levels:
            raise ValueError(f"level {level}: the shard holds levels 0 to {opened.levels}")
        readers = opened.frames if dataset == "frames" else opened.labels
        return readers[level].region(local, rows, cols)

    def _locate(self, index: int) -> tuple[int, _OpenShard, int]:
        """Frame `index` (negative counts from the end) -> (index, its open shard, its index there)."""
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"frame {index} out of range for {len(self)} frames")
        shard = int(np.searchsorted(self._starts, index, side="right")) - 1
        return index, self._handle(shard), index - int(self._starts[shard])

    def __iter__(self) -> Iterator[Sample]:
        for i in range(len(self)):
            yield self[i]

    def _handle(self, shard: int) -> _OpenShard:
        if self._pid != os.getpid():  # forked: the parent's handles are not ours to use
            self._handles = {}
            self._pid = os.getpid()
        opened = self._handles.get(shard)
        if opened is None:
            # Frames are read whole and in random order: a cache of decompressed chunks would only
            # hold memory (HDF5 2.0 keeps up to 8 MiB per dataset, and every shard stays open).
            path = shard_path(self.split_dir, self.shards[shard].file)
            opened = _OpenShard(open_shard(path, chunk_cache_bytes=0))
            self._handles[shard] = opened
        return opened

    def close(self) -> None:
        """Close the open HDF5 files (they reopen on the next access)."""
        if self._pid == os.getpid():
            for opened in self._handles.values():
                opened.file.close()
        self._handles = {}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handles"] = {}
        return state

    def __enter__(self) -> SplitReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _OpenShard:
    """An open shard with its datasets looked up once (a lookup by path costs as much as a small read)."""

    def __init__(self, f: h5py.File) -> None:
        self.file = f
        self.levels = stored_levels(read_attrs(f))
        self.frames = [FrameReader(f[level_dataset(k, "frames")]) for k in range(self.levels + 1)]
        self.labels = [FrameReader(f[level_dataset(k, "labels")]) for k in range(self.levels + 1)]


def open_split(out: str | os.PathLike, split: str | None = None, incomplete: IncompletePolicy = "warn") -> SplitReader:
    """Open a built split: `open_split("out", "train")` or `open_split("out/train")`.

    Args:
        incomplete: what to do when the manifest records an unfinished build (`complete` false):
            "warn" reads the frames built so far with a UserWarning, "error" raises.

    Raises:
        HedprepError: no manifest, or not a readable one.
        IncompleteSplitError: the build is unfinished and `incomplete` is "error".
    """
    return SplitReader(Path(out) / split if split else Path(out), incomplete)
