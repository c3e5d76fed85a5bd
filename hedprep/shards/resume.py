"""Resume rules of a split folder: which shards of an earlier build stay, what is removed, one build
at a time, and a manifest kept current as shards finish. No Dask, no HED: plain files."""

from __future__ import annotations

import contextlib
import fcntl
import os
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from hedprep.digests import file_sha256
from hedprep.errors import HedprepError
from hedprep.shards.format import (
    IGNORED_PIXELS,
    MANIFEST_NAME,
    SHARD_PATTERN,
    ShardInfo,
    read_attrs,
    shard_name,
    stored_levels,
)
from hedprep.shards.manifest import Manifest, ShardRecord, read_manifest, write_manifest
from hedprep.shards.reader import open_shard
from hedprep.shards.verify import check_shard, shard_is_complete

# Parameters that change what a shard holds: a rerun with other values is refused unless --force.
COMPARED_PARAMS = (
    "split", "labels", "dataset_root", "hed_weights_sha256", "device", "precision", "compression",
    "frame_height", "frame_width", "frames_per_shard",
)
# Compared only where the earlier manifest records them: a build of an earlier format resumes.
RECORDED_SINCE_V3 = ("device",)
LOCK_NAME = ".build.lock"


def prepare_split_dir(out: str | os.PathLike, split: str) -> Path:
    """Create `OUT/{split}` (or fail with one line if it cannot be written)."""
    split_dir = Path(out) / split
    try:
        split_dir.mkdir(parents=True, exist_ok=True)
        probe = split_dir / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as error:
        raise HedprepError(f"{split_dir}: output folder is not writable ({error.strerror or error})") from None
    return split_dir


def earlier_manifest(split_dir: Path, params: Mapping[str, Any], force: bool) -> Manifest | None:
    """The manifest of an earlier build into `split_dir`, if its parameters match `params`.

    Raises:
        HedprepError: the earlier build used other parameters (or its manifest is unreadable) and
            `force` is False.
    """
    if not (split_dir / MANIFEST_NAME).exists():
        return None
    try:
        earlier = read_manifest(split_dir)
    except HedprepError:
        if force:
            return None
        raise
    changed = [k for k in COMPARED_PARAMS if earlier.params.get(k) != params.get(k)
               and (k in earlier.params or k not in RECORDED_SINCE_V3)]
    if changed and not force:
        what = ", ".join(f"{k} {earlier.params.get(k)!r} -> {params.get(k)!r}" for k in changed)
        raise HedprepError(
            f"{split_dir / MANIFEST_NAME}: an earlier build used other parameters ({what}); "
            "rerun with --force to rebuild, or choose another --out"
        )
    return None if changed else earlier


def kept_shards(
    split_dir: Path, planned: Mapping[int, Sequence[str]], earlier: Manifest | None
) -> dict[int, ShardRecord]:
    """The shards of an earlier build of the same parameters that are complete and stay, whatever
    resolution levels they hold (the caller rewrites those with other levels, without HED).

    A shard the manifest lists stays if its size, sha256 and planned frames match. A shard file the
    manifest does not list (the build was stopped between the shard's rename and the manifest's
    rewrite, or a worker finished it while the build was being interrupted) is adopted if it is a
    sound shard of the same parameters holding exactly the planned frames: a file under its final
    name is always whole, because shards are renamed into place only once written and synced. So is
    a listed shard whose file holds other resolution levels than its entry says (a rewrite with
    other levels stopped before the manifest's rewrite); a listed file that differs from its entry
    in any other way is damaged, and rebuilt.

    Args:
        planned: shard index -> the frame ids planned for it.
        earlier: the earlier build's manifest, None if there is none (or it is to be ignored).
    """
    if earlier is None:
        return {}
    records = {r.file: r for r in earlier.shards}
    info = ShardInfo.from_params(earlier.params)
    kept = {}
    for index, frame_ids in planned.items():
        path = split_dir / shard_name(index)
        record = records.get(path.name)
        if shard_is_complete(path, record, frame_ids):
            kept[index] = record
        elif path.is_file():
            adopted = _adopt(path, info, frame_ids, record)
            if adopted is not None:
                kept[index] = adopted
    return kept


def _adopt(path: Path, info: ShardInfo, frame_ids: Sequence[str], record: ShardRecord | None) -> ShardRecord | None:
    """The record of a shard file the manifest does not describe, if it is sound, of `info`'s
    parameters (its levels may differ), and holds `frame_ids`. For a listed file (`record`), only if
    its levels differ from the record's; the frames the record says were skipped stay recorded."""
    if check_shard(path, info=info, every_frame=True):
        return None
    with open_shard(path) as f:
        attrs = read_attrs(f)
        stored_ids = [i.decode("ascii") for i in f["frame_ids"][()]]
    if record is not None and stored_levels(attrs) == record.levels:
        return None  # not a rewrite with other levels: a damaged file
    skipped = record.skipped if record is not None else []
    skipped_ids = {s.frame_id for s in skipped}
    if stored_ids != [i for i in frame_ids if i not in skipped_ids]:
        return None
    wanted = asdict(info)
    for free in ("package_version", "levels", *RECORDED_SINCE_V3):
        wanted.pop(free)
    if attrs.get("device") and attrs["device"] != info.device:  # "" or none: not recorded (rewritten v1/v2)
        return None
    if any(attrs.get(name) != value for name, value in wanted.items()):
        return None
    return ShardRecord(path.name, file_sha256(path), stored_ids, path.stat().st_size, list(skipped),
                       stored_levels(attrs), attrs.get(IGNORED_PIXELS))


def remove_leftovers(split_dir: Path, planned: Iterable[int], kept: Iterable[int]) -> None:
    """Remove temporary files of killed builds, and every shard file that is not kept, saying why."""
    planned_names = {shard_name(i) for i in planned}
    kept_names = {shard_name(i) for i in kept}
    for path in split_dir.glob(".*.tmp"):
        path.unlink(missing_ok=True)
    for path in sorted(split_dir.glob(SHARD_PATTERN)):
        if path.name in kept_names:
            continue
        if path.name in planned_names:
            why = "not a complete shard of this build (damaged, unfinished or not in the manifest); rebuilding it"
        else:
            why = "removed, it is not part of this build's plan"
        warnings.warn(f"{path}: {why}", UserWarning, stacklevel=2)
        path.unlink()


@contextlib.contextmanager
def build_lock(split_dir: Path) -> Iterator[None]:
    """One build at a time per split folder (an flock on `.build.lock`)."""
    with open(split_dir / LOCK_NAME, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise HedprepError(f"{split_dir}: another hedprep build is writing here") from None
        yield


class ManifestKeeper:
    """The manifest of a running build, rewritten (atomically) each time a shard finishes."""

    def __init__(self, split_dir: Path, params: dict[str, Any], kept: Mapping[int, ShardRecord]) -> None:
        self.split_dir = split_dir
        self.params = params
        self.records = dict(kept)
        self.built = 0

    def add(self, index: int, record: ShardRecord) -> None:
        """Record a finished shard."""
        self.records[index] = record
        self.built += 1
        self.write(complete=False)

    def write(self, complete: bool) -> Manifest:
        """Write the manifest of the shards recorded so far; `complete` once every shard is done."""
        shards = [self.records[i] for i in sorted(self.records)]
        manifest = Manifest(self.params["split"], self.params, shards, complete)
        write_manifest(self.split_dir, manifest)
        return manifest
