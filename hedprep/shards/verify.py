"""Checking shards against their manifest: the one place that decides whether a build is sound."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from hedprep.cityscapes import IGNORE_INDEX, trainid_to_color
from hedprep.digests import file_sha256
from hedprep.errors import HedprepError, one_line
from hedprep.shards.format import (
    IGNORED_PIXELS,
    IMAGES_GROUP,
    LABEL_COLORS,
    MANIFEST_NAME,
    SHARD_PATTERN,
    ShardInfo,
    is_plain_file_name,
    level_dataset,
    read_attrs,
    stored_levels,
)
from hedprep.shards.levels import downsample_frame, downsample_labels, level_size
from hedprep.shards.manifest import Manifest, ShardRecord, read_manifest
from hedprep.shards.reader import H5PY_DAMAGE_ERRORS, ShardError, open_shard

INCOMPLETE_BUILD = "build incomplete, rerun hedprep build"


def shard_is_complete(path: str | os.PathLike, record: ShardRecord | None, frame_ids: Sequence[str]) -> bool:
    """True if `path` is the shard `record` describes (size, sha256) and it was built from `frame_ids`."""
    path = Path(path)
    if record is None or record.planned_ids != sorted(frame_ids) or not path.is_file():
        return False
    return path.stat().st_size == record.bytes and file_sha256(path) == record.sha256


def check_shard(path: str | os.PathLike, record: ShardRecord | None = None, info: ShardInfo | None = None,
                every_frame: bool = False) -> list[str]:
    """Problems of one shard file (empty list if none): hash, format, datasets, shapes, frame ids, decoding.

    Decodes the first and last frame (and their levels and views), or with `every_frame` every chunk
    of every level: a shard without a manifest hash to vouch for it is then checked by its zlib
    and filter checksums.
    """
    path = Path(path)
    if not path.is_file():
        return ["missing"]
    problems = []
    if record is not None:
        try:
            if path.stat().st_size != record.bytes:
                problems.append(f"size {path.stat().st_size} bytes, manifest says {record.bytes}")
            elif file_sha256(path) != record.sha256:
                problems.append("sha256 differs from the manifest")
        except OSError as error:
            return [f"cannot read ({error.strerror or error})"]
    try:  # what else is wrong, beyond a changed hash: says whether the file is still usable
        with open_shard(path) as f:
            return problems + _check_contents(f, record, info, every_frame)
    except ShardError as error:
        return problems + [error.problem]


def _check_contents(f: h5py.File, record: ShardRecord | None, info: ShardInfo | None,
                    every_frame: bool = False) -> list[str]:
    problems = []
    ids = f["frame_ids"]
    n = ids.shape[0]
    h, w = f.attrs.get("frame_height"), f.attrs.get("frame_width")
    attrs = read_attrs(f)
    levels = stored_levels(attrs)
    if info is not None and (h, w) != (info.frame_height, info.frame_width):
        problems.append(f"frames are {h}x{w}, the manifest says {info.frame_height}x{info.frame_width}")
    if record is not None and record.levels != levels:
        problems.append(f"holds {levels} resolution level(s), the manifest says {record.levels}")
    ignored = attrs.get(IGNORED_PIXELS)  # None in shards written before it was recorded
    if record is not None and None not in (ignored, record.ignored_pixels) and ignored != record.ignored_pixels:
        problems.append(f"records {ignored} ignored label pixels, the manifest says {record.ignored_pixels}")
    if info is not None:
        problems += _check_hed_run(read_attrs(f), info)
    for k in range(levels + 1):
        lh, lw = level_size(h, w, k)
        frames, labels = f[level_dataset(k, "frames")], f[level_dataset(k, "labels")]
        if frames.dtype != np.uint8 or frames.shape != (n, lh, lw, 4):
            problems.append(f"{frames.name[1:]} is {frames.dtype} {frames.shape}, expected uint8 {(n, lh, lw, 4)}")
        if labels.dtype != np.uint8 or labels.shape != (n, lh, lw):
            problems.append(f"{labels.name[1:]} is {labels.dtype} {labels.shape}, expected uint8 {(n, lh, lw)}")
    stored_ids = [i.decode("ascii") for i in ids[()]]
    if record is not None and stored_ids != record.frame_ids:
        problems.append("frame ids differ from the manifest")
    if problems:
        return problems
    try:
        if every_frame:
            for k in range(levels + 1):
                f[level_dataset(k, "frames")][()]
                labels = f[level_dataset(k, "labels")][()]
                if k == 0:
                    problems += _check_ignored_pixels(labels, ignored)
    except H5PY_DAMAGE_ERRORS as error:
        return [f"data does not decode ({one_line(error)})"]
    try:  # the first and last frame decode, their levels derive from them, and the views resolve
        for i in sorted({0, n - 1}) if n else ():
            frame, label = f["frames"][i], f["labels"][i]
            for k in range(1, levels + 1):
                # within 1: how a tie rounds is OpenCV's choice (and may differ between its builds)
                stored = f[level_dataset(k, "frames")][i].astype(np.int16)
                if np.abs(stored - downsample_frame(frame, k)).max(initial=0) > 1:
                    problems.append(f"level {k} of frame {i} ({stored_ids[i]}) is not its level-0 frame downsampled")
                if not np.array_equal(f[level_dataset(k, "labels")][i], downsample_labels(label, k)):
                    problems.append(f"level {k} labels of frame {i} ({stored_ids[i]}) are not its labels downsampled")
            problems += _check_views(f, i, stored_ids[i], frame, label)
    except H5PY_DAMAGE_ERRORS as error:
        problems.append(f"data does not decode ({one_line(error)})")
    return problems


def _check_ignored_pixels(labels: np.ndarray, recorded: int | None) -> list[str]:
    """The root attribute `ignored_pixels` counts the ignore pixels of the level-0 labels (where recorded)."""
    if recorded is None:
        return []
    counted = int(np.count_nonzero(labels == IGNORE_INDEX))
    return [] if counted == recorded else [f"records {recorded} ignored label pixels, its labels hold {counted}"]


def _check_hed_run(attrs: dict, info: ShardInfo) -> list[str]:
    """The shard was made on the device kind and in the precision its manifest says (where both
    record a device: shards of format v3; rewritten older ones record none)."""
    device = attrs.get("device", "")
    if not device or not info.device:
        return []
    made, said = f"{device} {attrs.get('precision')}", f"{info.device} {info.precision}"
    return [] if made == said else [f"made by HED on {made}, the manifest says {said}"]


def _check_views(f: h5py.File, i: int, frame_id: str, frame: np.ndarray, label: np.ndarray) -> list[str]:
    """The viewer pictures of frame `i` resolve to its pixels: v2's NXdata views (rgb, grey edge,
    coloured labels), or v1's Image-spec views."""
    entry = f[IMAGES_GROUP][frame_id]
    if LABEL_COLORS not in f:  # format v1: rgb, edge and label image datasets
        for view in entry.values():
            view[0]
        return []
    expected = {"rgb": frame[..., :3], "edge": np.repeat(frame[..., 3:], 3, axis=2), "label": trainid_to_color(label)}
    if not np.array_equal(f[LABEL_COLORS][i], expected["label"]):
        return [f"{LABEL_COLORS} of frame {i} ({frame_id}) are not its labels in Cityscapes colours"]
    wrong = [name for name, pixels in expected.items() if not np.array_equal(entry[name]["data"][()], pixels)]
    return [f"viewer picture(s) {', '.join(wrong)} of frame {i} ({frame_id}) do not show its pixels"] if wrong else []


@dataclass
class ShardProblem:
    """A bad shard: its manifest entry's file name and what is wrong with it."""

    file: str
    problems: list[str]


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


def verify_split(split_dir: str | os.PathLike) -> SplitCheck:
    """Verify one split: every listed shard (hash, datasets, frame ids), completeness, stray shard files."""
    split_dir = Path(split_dir)
    try:
        manifest = read_manifest(split_dir)
    except HedprepError as error:
        return SplitCheck(split_dir, None, problems=[str(error)])
    info = ShardInfo.from_params(manifest.params)
    bad = []
    for record in manifest.shards:
        if not is_plain_file_name(record.file):
            bad.append(ShardProblem(record.file, ["shard path leaves the split folder"]))
            continue
        problems = check_shard(split_dir / record.file, record, info)
        if problems:
            bad.append(ShardProblem(record.file, problems))
    listed = {record.file for record in manifest.shards}
    unlisted = [p.name for p in shard_files([split_dir]) if p.name not in listed]
    problems = [] if manifest.complete else [INCOMPLETE_BUILD]
    return SplitCheck(split_dir, manifest, bad, unlisted, problems)


def verify_output(path: str | os.PathLike) -> list[SplitCheck]:
    """`verify_split` for a split folder, or for each split of an output folder."""
    path = Path(path)
    if path.is_file():
        raise HedprepError(f"{path}: a file; verify takes an output or split folder (hedprep inspect reads one shard)")
    return [verify_split(d) for d in split_dirs(path)]


def split_dirs(out: str | os.PathLike) -> list[Path]:
    """`out` itself if it holds a manifest, else its subfolders that do (one per split)."""
    out = Path(out)
    if (out / MANIFEST_NAME).is_file():
        return [out]
    if not out.is_dir():
        raise HedprepError(f"{out}: no such folder")
    found = sorted(p for p in out.iterdir() if (p / MANIFEST_NAME).is_file())
    if not found:
        raise HedprepError(f"{out}: no {MANIFEST_NAME} here or in its subfolders; nothing was built")
    return found


def shard_files(split_dirs: Sequence[Path]) -> list[Path]:
    """The shard files of split folders, in name order."""
    return sorted(p for d in split_dirs for p in d.glob(SHARD_PATTERN))
