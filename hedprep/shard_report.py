"""Shards as people look at them: summaries (`hedprep inspect`), checks (`verify`), PNGs (`show`).

The format itself belongs to `hedprep.shards`; this module only reads it and returns plain
dataclasses, which `cli.py` renders.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import h5py
import numpy as np

from hedprep.atomic import write_bytes_atomic
from hedprep.cityscapes import trainid_to_color
from hedprep.errors import HedprepError
from hedprep.shards import (
    FORMAT_NAME,
    FORMAT_VERSION,
    IMAGES_GROUP,
    Manifest,
    Sample,
    ShardProblem,
    load_filter_plugins,
    one_line,
    read_attrs,
    read_manifest,
    shard_files,
    shard_path,
    split_dirs,
    verify_split,
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
INCOMPLETE_BUILD = "build incomplete, rerun hedprep build"
# What h5py raises besides OSError when a file's metadata is damaged (a flipped byte in an object header).
H5PY_DAMAGE_ERRORS = (KeyError, RuntimeError, ValueError)
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
    stored_bytes: int  # frames + labels as stored in the file (compressed)
    raw_bytes: int  # frames + labels uncompressed
    file_bytes: int
    attrs: dict[str, Any]
    datasets: tuple[DatasetSummary, ...]

    @property
    def ratio(self) -> float:
        """Uncompressed frames + labels bytes per byte of file."""
        return self.raw_bytes / self.file_bytes if self.file_bytes else 0.0


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
    """Root datasets one by one; the per-frame views as one row per view name (rgb, edge, label)."""
    rows = [_dataset_summary(name, obj) for name, obj in f.items() if isinstance(obj, h5py.Dataset)]
    views: dict[str, list[h5py.Dataset]] = {}
    images = f.get(IMAGES_GROUP)
    if isinstance(images, h5py.Group):
        for frame_group in images.values():
            if isinstance(frame_group, h5py.Group):
                for name, view in frame_group.items():
                    views.setdefault(name, []).append(view)
    for name, datasets in views.items():
        rows.append(_dataset_summary(f"{IMAGES_GROUP}/*/{name}", datasets[0], len(datasets)))
    return tuple(rows)


def _open_shard(path: Path) -> h5py.File:
    """Open a shard file read-only, or fail with one line naming it."""
    if not path.is_file():
        raise HedprepError(f"{path}: no such file")
    try:
        f = h5py.File(path, "r")
    except OSError as error:
        raise HedprepError(f"{path}: not a readable HDF5 file ({one_line(error)})") from None
    try:
        attrs = read_attrs(f)
        if attrs.get("format") != FORMAT_NAME or attrs.get("format_version") != FORMAT_VERSION:
            raise HedprepError(f"{path}: not a {FORMAT_NAME} v{FORMAT_VERSION} shard (no such format attributes)")
        # f[name], not f.get(name): get() hides the KeyError of a damaged object header as "missing".
        missing = [name for name in ("frames", "labels", "frame_ids")
                   if name not in f or not isinstance(f[name], h5py.Dataset)]
        if missing:
            raise HedprepError(f"{path}: not a complete shard (no dataset {', '.join(missing)})")
    except (OSError, *H5PY_DAMAGE_ERRORS) as error:
        f.close()
        raise HedprepError(f"{path}: damaged shard ({one_line(error)})") from None
    except HedprepError:
        f.close()
        raise
    return f


def summarize_shard(path: str | os.PathLike) -> ShardSummary:
    """Summarize one shard file from its metadata (no pixel is decoded)."""
    path = Path(path)
    with _open_shard(path) as f:
        try:
            frames, labels = f["frames"], f["labels"]
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
                stored_bytes=frames.id.get_storage_size() + labels.id.get_storage_size(),
                raw_bytes=frames.nbytes + labels.nbytes,
                file_bytes=path.stat().st_size,
                attrs=read_attrs(f),
                datasets=_dataset_summaries(f),
            )
        except (OSError, *H5PY_DAMAGE_ERRORS) as error:
            raise HedprepError(f"{path}: damaged shard ({one_line(error)})") from None


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


# -------------------------------------------------------------------------------------------- verify


@dataclass
class SplitCheck:
    """The verdict on one split folder."""

    split_dir: Path
    manifest: Manifest | None  # None: the manifest could not be read
    bad: list[ShardProblem] = field(default_factory=list)
    unlisted: list[str] = field(default_factory=list)  # shard files on disk the manifest does not list
    problems: list[str] = field(default_factory=list)  # of the split as a whole

    @property
    def ok(self) -> bool:
        return not self.bad and not self.problems


def check_split(split_dir: str | os.PathLike) -> SplitCheck:
    """Verify one split: every listed shard (hash, datasets, frame ids), completeness, stray shard files."""
    split_dir = Path(split_dir)
    try:
        manifest, bad = verify_split(split_dir)
    except HedprepError as error:
        return SplitCheck(split_dir, None, problems=[str(error)])
    listed = {record.file for record in manifest.shards}
    unlisted = [p.name for p in shard_files([split_dir]) if p.name not in listed]
    problems = [] if manifest.complete else [INCOMPLETE_BUILD]
    return SplitCheck(split_dir, manifest, bad, unlisted, problems)


def check_output(path: str | os.PathLike) -> list[SplitCheck]:
    """`check_split` for a split folder, or for each split of an output folder."""
    path = Path(path)
    if path.is_file():
        raise HedprepError(f"{path}: a file; verify takes an output or split folder (hedprep inspect reads one shard)")
    return [check_split(d) for d in split_dirs(path)]


# ---------------------------------------------------------------------------------------------- show


def read_shard_frame(path: str | os.PathLike, index: int) -> Sample:
    """Frame `index` of a shard file (negative counts from the end)."""
    path = Path(path)
    load_filter_plugins()
    with _open_shard(path) as f:
        ids = f["frame_ids"]
        n = ids.shape[0]
        if not -n <= index < n:
            valid = f"0-{n - 1} or -{n} to -1" if n else "all of its frames were skipped"
            raise HedprepError(f"{path}: no frame {index}; the shard holds {n} frame(s) ({valid})")
        index %= n
        try:
            return Sample(f["frames"][index], f["labels"][index], ids[index].decode("ascii"))
        except (OSError, UnicodeDecodeError, *H5PY_DAMAGE_ERRORS) as error:
            raise HedprepError(f"{path}: frame {index} does not decode ({one_line(error)})") from None


def _encode_png(image: np.ndarray, path: Path) -> bytes:
    ok, data = cv2.imencode(".png", image)
    if not ok:
        raise HedprepError(f"{path}: could not encode PNG")
    return data.tobytes()


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
            write_bytes_atomic(path, _encode_png(image, path))
            written.append(path)
    except OSError as error:
        raise HedprepError(f"{out_dir}: cannot write PNGs ({error.strerror or error})") from None
    return written
