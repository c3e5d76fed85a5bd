"""`OUT/{split}/manifest.json`: the build parameters, the shards done so far, the frames left out."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hedprep.atomic import write_bytes_atomic
from hedprep.errors import HedprepError
from hedprep.shards.format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST_NAME,
    READABLE_VERSIONS,
    ignore_share,
    is_plain_file_name,
)


@dataclass(frozen=True)
class SkippedFrame:
    """A frame left out of its shard (`--on-error skip`).

    Attributes:
        frame_id: the Cityscapes frame id.
        image: absolute path of the frame's image.
        reason: the one-line error that made it be skipped.
        file: absolute path of the file at fault (the image or its label); "" if not known.
    """

    frame_id: str
    image: str
    reason: str
    file: str = ""


@dataclass
class ShardRecord:
    """A finished shard as the manifest lists it; `levels`: the resolution levels it holds (0 in v1);
    `ignored_pixels`: its level-0 label pixels that are ignore (255), as its root attribute says (None:
    not recorded, in manifests written before it was)."""

    file: str
    sha256: str
    frame_ids: list[str]
    bytes: int
    skipped: list[SkippedFrame] = field(default_factory=list)
    levels: int = 0
    ignored_pixels: int | None = None

    def __post_init__(self) -> None:
        self.skipped = [s if isinstance(s, SkippedFrame) else SkippedFrame(**s) for s in self.skipped]

    @property
    def planned_ids(self) -> list[str]:
        """The frames this shard was built from: stored and skipped."""
        return sorted(self.frame_ids + [s.frame_id for s in self.skipped])


@dataclass
class Manifest:
    """A split's manifest: build parameters, the shards done so far in index order, completeness.

    Read from a v1, v2 or v3 file; always written as the current version (v1 differs only in lacking
    `params.levels` and the shards' `levels`, which mean 0 there; v1 and v2 lack `params.device`, and
    their `params.precision` is the one asked for).
    """

    split: str
    params: dict[str, Any]
    shards: list[ShardRecord] = field(default_factory=list)
    complete: bool = False
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION  # as read; to_json writes the current version

    @property
    def num_frames(self) -> int:
        return sum(len(s.frame_ids) for s in self.shards)

    @property
    def skipped(self) -> list[SkippedFrame]:
        return [s for shard in self.shards for s in shard.skipped]

    @property
    def label_kind(self) -> str | None:
        """`fine` or `coarse`: the Cityscapes labels the split was built from (None: not recorded)."""
        return self.params.get("labels")

    @property
    def ignore_share(self) -> float | None:
        """The share of the split's level-0 label pixels that are ignore (255); None where a shard does not
        record its count (built before it was recorded) or the split holds no frame."""
        pixels = self.num_frames * int(self.params["frame_height"]) * int(self.params["frame_width"])
        return ignore_share((s.ignored_pixels for s in self.shards if s.frame_ids), pixels)

    def to_json(self) -> str:
        data = {
            "format": self.format,
            "format_version": FORMAT_VERSION,
            "split": self.split,
            "complete": self.complete,
            "num_frames": self.num_frames,
            "params": self.params,
            "shards": [asdict(s) for s in self.shards],
            "skipped": [asdict(s) for s in self.skipped],
        }
        return json.dumps(data, indent=1) + "\n"


def write_manifest(split_dir: str | os.PathLike, manifest: Manifest) -> Path:
    """Write (atomically) `split_dir/manifest.json`."""
    path = Path(split_dir) / MANIFEST_NAME
    try:
        write_bytes_atomic(path, manifest.to_json().encode("utf-8"))
    except OSError as error:
        raise HedprepError(f"{path}: cannot write manifest ({error.strerror or error})", path) from None
    return path


def read_manifest(split_dir: str | os.PathLike) -> Manifest:
    """Read `split_dir/manifest.json` (or a manifest file's path)."""
    path = Path(split_dir)
    if path.is_dir():
        path = path / MANIFEST_NAME
    try:
        data = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise HedprepError(f"{path}: no manifest; build the split with `hedprep build` first", path) from None
    except (OSError, ValueError) as error:
        raise HedprepError(f"{path}: not a readable manifest ({error})", path) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        raise HedprepError(f"{path}: not a {FORMAT_NAME} manifest", path)
    if data.get("format_version") not in READABLE_VERSIONS:
        *earlier, last = (str(v) for v in READABLE_VERSIONS)
        versions = f"{', '.join(earlier)} and {last}"
        raise HedprepError(
            f"{path}: format version {data.get('format_version')}, this hedprep reads versions {versions}", path
        )
    try:
        shards = [ShardRecord(**s) for s in data["shards"]]
        return Manifest(data["split"], data["params"], shards, bool(data.get("complete")),
                        format_version=data["format_version"])
    except (KeyError, TypeError) as error:
        raise HedprepError(f"{path}: malformed manifest ({error})", path) from None


def shard_path(split_dir: str | os.PathLike, file: str) -> Path:
    """The path of a manifest's shard entry; refuses names that would leave the split folder."""
    split_dir = Path(split_dir)
    if not is_plain_file_name(file):
        raise HedprepError(f"{split_dir / MANIFEST_NAME}: shard path {file!r} leaves the split folder")
    return split_dir / file
