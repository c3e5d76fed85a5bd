"""The shard file format, v1: the one owner of how frames, edges and labels sit in HDF5 files.

A split is a folder `OUT/{split}/` of `shard-00000.h5`, `shard-00001.h5`, ... and a `manifest.json`.
`docs/shard-format.md` specifies every dataset and attribute; this module writes (`ShardWriter`,
`write_manifest`), reads (`open_split`, `SplitReader`) and checks (`verify_split`) them.

Each shard holds:
- `frames`    uint8 (N, H, W, 4): R, G, B, edge (round(255 * p)); chunks of one frame's 256x256 tile.
- `labels`    uint8 (N, H, W): Cityscapes trainIds, 255 = ignore; chunks as `frames`.
- `frame_ids` fixed-length ASCII (N,): `{city}_{seq}_{frame}`.
- `palette`   uint8 (256, 3): trainId colors, tagged `CLASS=PALETTE` (HDF5 Image Specification 1.2).
- `images/{frame_id}/rgb|edge|label`: per-frame virtual datasets over `frames` and `labels` (no copy),
  tagged as HDF5 images (truecolor, grayscale, indexed with the palette) so viewers draw them.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import h5py
import numpy as np

from hedprep.atomic import fsync_dir, temporary_name, write_bytes_atomic
from hedprep.cityscapes import IGNORE_INDEX, trainid_palette
from hedprep.digests import file_sha256
from hedprep.errors import HedprepError

FORMAT_NAME = "hedseg-shards"
FORMAT_VERSION = 1
CHANNELS = ("R", "G", "B", "edge")
MANIFEST_NAME = "manifest.json"
SHARD_PATTERN = "shard-*.h5"
IMAGES_GROUP = "images"

# name -> default level (None: the codec has no level). gzip level 1 (ISA-L) writes a 1024x2048 frame
# 4x faster than zlib's level 4 for 16% more bytes: on 2 cores, time taken from HED (docs/performance.md).
CODECS: dict[str, int | None] = {"none": None, "gzip": 1, "lzf": None, "zstd": 3, "lz4": None}
PLUGIN_CODECS = ("zstd", "lz4")


# Chunks are 256x256 tiles of one frame: a random 512x512 crop (the usual training input) then
# decompresses 4-9 tiles instead of a whole 1024x2048 frame (3.5x faster), and whole frames read as
# fast as with one chunk per frame (benchmarks/build_throughput.py, docs/performance.md).
TILE = 256


def tile_shape(height: int, width: int) -> tuple[int, int]:
    """The (rows, cols) of a chunk for frames of this size: 256x256, or the frame if it is smaller."""
    return min(height, TILE), min(width, TILE)


def shard_name(index: int) -> str:
    """`shard-00042.h5` for index 42."""
    return f"shard-{index:05d}.h5"


# ------------------------------------------------------------------------------------------ compression


@dataclass(frozen=True)
class Compression:
    """An HDF5 compression filter: `none`, `gzip[:level]`, `lzf`, `zstd[:level]` or `lz4`."""

    codec: str = "gzip"
    level: int | None = 1

    def __str__(self) -> str:
        return self.codec if self.level is None else f"{self.codec}:{self.level}"

    def h5py_options(self) -> dict[str, Any]:
        """Keyword arguments for `h5py.Group.create_dataset`."""
        if self.codec == "none":
            return {}
        if self.codec == "gzip":
            return {"compression": "gzip", "compression_opts": self.level}
        if self.codec == "lzf":
            return {"compression": "lzf"}
        hdf5plugin = _import_hdf5plugin(self.codec)
        if self.codec == "zstd":
            return dict(hdf5plugin.Zstd(clevel=self.level))
        return dict(hdf5plugin.LZ4())


def _import_hdf5plugin(codec: str):
    try:
        import hdf5plugin
    except ImportError:
        raise HedprepError(
            f"--compression {codec} needs the hdf5plugin package: pip install hdf5plugin "
            "(or the project's [fast] extra)"
        ) from None
    return hdf5plugin


def parse_compression(text: str) -> Compression:
    """'gzip' -> gzip level 1, 'gzip:6', 'zstd:9', 'lzf', 'lz4', 'none'."""
    codec, _, level_text = text.strip().lower().partition(":")
    if codec not in CODECS:
        raise HedprepError(f"--compression {text}: choose one of {', '.join(CODECS)} (gzip and zstd take :LEVEL)")
    default = CODECS[codec]
    if not level_text:
        return Compression(codec, default)
    limits = {"gzip": (0, 9), "zstd": (1, 22)}.get(codec)
    if limits is None or not level_text.isdigit() or not limits[0] <= int(level_text) <= limits[1]:
        allowed = f"a level {limits[0]}-{limits[1]}" if limits else "no level"
        raise HedprepError(f"--compression {text}: {codec} takes {allowed}")
    return Compression(codec, int(level_text))


# ---------------------------------------------------------------------------------------- attributes


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
    package_version: str = ""

    def __post_init__(self) -> None:
        if not self.package_version:
            from hedprep import __version__

            object.__setattr__(self, "package_version", __version__)


def fast_deflate(compression: Compression) -> Callable[[bytes], bytes] | None:
    """ISA-L's deflate for gzip levels 1-3, if the `isal` package is installed; else None.

    HDF5's gzip filter stores zlib streams, and any deflate encoder makes valid ones: ISA-L's level 1
    compresses a 1024x2048 RGB+edge frame about 4x faster than zlib's level 1, to the same size
    (docs/performance.md). On 2 cores that CPU time is taken from HED, so it shows in build speed.
    Readers need nothing new: the chunks decode with the standard gzip filter.
    """
    if compression.codec != "gzip" or compression.level not in (1, 2, 3):
        return None
    try:
        from isal import isal_zlib
    except ImportError:
        return None
    level = compression.level
    return lambda data: isal_zlib.compress(data, level)


def _write_deflated_tiles(
    dataset: h5py.Dataset, index: int, image: np.ndarray, deflate: Callable[[bytes], bytes], fill: int
) -> None:
    """Compress `image` chunk by chunk ourselves and store the chunks as they are (no HDF5 filter run).

    Chunks at the right and bottom edges are padded to the full chunk shape with the fill value, as
    HDF5 stores them.
    """
    _, rows, cols = dataset.chunks[:3]
    h, w = image.shape[:2]
    for y in range(0, h, rows):
        for x in range(0, w, cols):
            tile = image[y : y + rows, x : x + cols]
            if tile.shape[:2] != (rows, cols):
                padded = np.full((rows, cols, *image.shape[2:]), fill, np.uint8)
                padded[: tile.shape[0], : tile.shape[1]] = tile
                tile = padded
            offset = (index, y, x) + (0,) * (image.ndim - 2)
            dataset.id.write_direct_chunk(offset, deflate(np.ascontiguousarray(tile).tobytes()))


def _tag_image(dataset: h5py.Dataset, subclass: str, palette: h5py.Dataset | None = None) -> None:
    set_string_attr(dataset, "CLASS", "IMAGE")
    set_string_attr(dataset, "IMAGE_VERSION", "1.2")
    set_string_attr(dataset, "IMAGE_SUBCLASS", subclass)
    if subclass == "IMAGE_TRUECOLOR":
        set_string_attr(dataset, "INTERLACE_MODE", "INTERLACE_PIXEL")
    if subclass == "IMAGE_GRAYSCALE":
        dataset.attrs.create("IMAGE_WHITE_IS_ZERO", np.uint8(0))
        dataset.attrs.create("IMAGE_MINMAXRANGE", np.array([0, 255], np.uint8))
    if palette is not None:
        dataset.attrs.create("PALETTE", [palette.ref], dtype=h5py.ref_dtype)


def _write_palette(f: h5py.File) -> h5py.Dataset:
    palette = f.create_dataset("palette", data=trainid_palette())
    set_string_attr(palette, "CLASS", "PALETTE")
    set_string_attr(palette, "PAL_VERSION", "1.2")
    set_string_attr(palette, "PAL_COLORMODEL", "RGB")
    set_string_attr(palette, "PAL_TYPE", "STANDARD8")
    return palette


# -------------------------------------------------------------------------------------------- writing


@dataclass
class ShardRecord:
    """A finished shard as the manifest lists it."""

    file: str
    sha256: str
    frame_ids: list[str]
    bytes: int
    skipped: list[dict[str, str]] = field(default_factory=list)

    @property
    def planned_ids(self) -> list[str]:
        """The frames this shard was built from: stored and skipped."""
        return sorted(self.frame_ids + [s["frame_id"] for s in self.skipped])


class ShardWriter:
    """Write one shard frame by frame; `close()` puts it on disk under a temporary name, then renames it.

    The HDF5 file is built in memory (HDF5's core driver; compressed, so about the shard's final
    size) and written to disk in one piece by `close()`. A full disk then fails a plain file write,
    which is reported and cleaned up, instead of failing inside HDF5, whose library cannot close a
    file after a failed write (it crashes the process at exit). The temporary name is unique per
    attempt, so two attempts at one shard (Dask may rerun a task after losing a worker) never write
    the same file; a failed or killed attempt leaves nothing under the final name. Use as a context
    manager: an exception discards the shard.
    """

    MEMORY_BLOCK = 8 << 20  # the in-memory file grows in steps of this many bytes

    def __init__(self, path: str | os.PathLike, capacity: int, info: ShardInfo, compression: Compression) -> None:
        self.path = Path(path)
        self.info = info
        self.compression = compression
        self.frame_ids: list[str] = []
        self.skipped: list[dict[str, str]] = []
        h, w = info.frame_height, info.frame_width
        options = compression.h5py_options()
        self.file = h5py.File(
            str(self.path), "w", driver="core", backing_store=False, block_size=self.MEMORY_BLOCK,
            libver=("v110", "v110"), track_order=True,  # a fixed on-disk format, read by HDF5 >= 1.10
        )
        self.frames = self.file.create_dataset(
            "frames", shape=(capacity, h, w, 4), maxshape=(capacity, h, w, 4), dtype=np.uint8,
            chunks=(1, *tile_shape(h, w), 4), **options,
        )
        self.labels = self.file.create_dataset(
            "labels", shape=(capacity, h, w), maxshape=(capacity, h, w), dtype=np.uint8,
            chunks=(1, *tile_shape(h, w)), fillvalue=IGNORE_INDEX, **options,
        )
        self._deflate = fast_deflate(compression)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()

    def append(self, frame_id: str, rgbe: np.ndarray, label: np.ndarray | None) -> None:
        """Add a frame: (H, W, 4) uint8 RGB+edge and (H, W) uint8 trainIds (None: all ignore)."""
        i = len(self.frame_ids)
        expected = self.frames.shape[1:]
        if rgbe.shape != expected or rgbe.dtype != np.uint8:
            raise HedprepError(
                f"{frame_id}: frame is {rgbe.dtype} {rgbe.shape}, shard {self.path.name} takes uint8 {expected}"
            )
        if self._deflate is not None:
            _write_deflated_tiles(self.frames, i, rgbe, self._deflate, fill=0)
            if label is not None:
                _write_deflated_tiles(self.labels, i, label, self._deflate, fill=IGNORE_INDEX)
        else:
            self.frames[i] = rgbe
            if label is not None:
                self.labels[i] = label
        self.frame_ids.append(frame_id)

    def skip(self, frame_id: str, image: str, reason: str) -> None:
        """Record a frame left out (`--on-error skip`)."""
        self.skipped.append({"frame_id": frame_id, "image": image, "reason": reason})

    def close(self) -> ShardRecord:
        """Finish datasets, viewer tags and attributes; write the file atomically; return its record."""
        try:
            self._finish()
            self.file.flush()
            image = self.file.id.get_file_image()
        finally:
            self._discard()
        tmp = temporary_name(self.path)
        try:
            with open(tmp, "wb") as f:
                f.write(image)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            fsync_dir(self.path.parent)
        except OSError as error:
            tmp.unlink(missing_ok=True)
            raise HedprepError(
                f"{self.path}: cannot write shard ({error.strerror or error}); the partial file was removed"
            ) from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        sha256 = hashlib.sha256(image).hexdigest()
        return ShardRecord(self.path.name, sha256, list(self.frame_ids), len(image), list(self.skipped))

    def _finish(self) -> None:
        n = len(self.frame_ids)
        f = self.file
        self.frames.resize(n, axis=0)
        self.labels.resize(n, axis=0)
        width = max((len(i) for i in self.frame_ids), default=1)
        f.create_dataset("frame_ids", data=np.array(self.frame_ids, dtype=f"S{width}"), dtype=f"S{width}")
        set_string_attr(self.frames, "CHANNELS", ",".join(CHANNELS))
        self.frames.attrs["channel_names"] = np.array(CHANNELS, dtype="S4")
        set_string_attr(self.labels, "LABELS", "Cityscapes trainIds 0-18, 255 = ignore")
        palette = _write_palette(f)
        self._write_views(palette)
        for name, value in asdict(self.info).items():
            if isinstance(value, str):
                set_string_attr(f, name, value)
            else:
                f.attrs[name] = value
        set_string_attr(f, "format", FORMAT_NAME)
        f.attrs["format_version"] = FORMAT_VERSION
        set_string_attr(f, "created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))

    def _write_views(self, palette: h5py.Dataset) -> None:
        """Per-frame virtual datasets over `frames`/`labels`, tagged as HDF5 images (no pixel copy)."""
        h, w = self.info.frame_height, self.info.frame_width
        n = len(self.frame_ids)
        # "." names this file itself, so the views survive the rename to the final name.
        frames = h5py.VirtualSource(".", "frames", shape=(n, h, w, 4), dtype=np.uint8)
        labels = h5py.VirtualSource(".", "labels", shape=(n, h, w), dtype=np.uint8)
        group = self.file.create_group(IMAGES_GROUP, track_order=True)
        for i, frame_id in enumerate(self.frame_ids):
            frame_group = group.create_group(frame_id, track_order=True)
            views = (
                ("rgb", (h, w, 3), frames[i, :, :, 0:3], "IMAGE_TRUECOLOR", None),
                ("edge", (h, w), frames[i, :, :, 3], "IMAGE_GRAYSCALE", None),
                ("label", (h, w), labels[i], "IMAGE_INDEXED", palette),
            )
            for name, shape, source, subclass, pal in views:
                layout = h5py.VirtualLayout(shape=shape, dtype=np.uint8)
                layout[...] = source
                fill = IGNORE_INDEX if name == "label" else 0
                view = frame_group.create_virtual_dataset(name, layout, fillvalue=fill)
                _tag_image(view, subclass, pal)

    def abort(self) -> None:
        """Discard the shard: nothing was or will be written to disk."""
        self._discard()

    def _discard(self) -> None:
        if self.file.id.valid:
            self.file.close()


def shard_is_complete(path: str | os.PathLike, record: ShardRecord | None, frame_ids: Sequence[str]) -> bool:
    """True if `path` is the shard `record` describes (size, sha256) and it was built from `frame_ids`."""
    path = Path(path)
    if record is None or record.planned_ids != sorted(frame_ids) or not path.is_file():
        return False
    return path.stat().st_size == record.bytes and file_sha256(path) == record.sha256


# ------------------------------------------------------------------------------------------- manifest


@dataclass
class Manifest:
    """`OUT/{split}/manifest.json`: build parameters, the shards done so far, skipped frames."""

    split: str
    params: dict[str, Any]
    shards: list[ShardRecord] = field(default_factory=list)
    complete: bool = False
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION

    @property
    def num_frames(self) -> int:
        return sum(len(s.frame_ids) for s in self.shards)

    @property
    def skipped(self) -> list[dict[str, str]]:
        return [s for shard in self.shards for s in shard.skipped]

    def to_json(self) -> str:
        data = {
            "format": self.format,
            "format_version": self.format_version,
            "split": self.split,
            "complete": self.complete,
            "num_frames": self.num_frames,
            "params": self.params,
            "shards": [asdict(s) for s in self.shards],
            "skipped": self.skipped,
        }
        return json.dumps(data, indent=1) + "\n"


def write_manifest(split_dir: str | os.PathLike, manifest: Manifest) -> Path:
    """Write (atomically) `split_dir/manifest.json`."""
    path = Path(split_dir) / MANIFEST_NAME
    try:
        write_bytes_atomic(path, manifest.to_json().encode("utf-8"))
    except OSError as error:
        raise HedprepError(f"{path}: cannot write manifest ({error.strerror or error})") from None
    return path


def read_manifest(split_dir: str | os.PathLike) -> Manifest:
    """Read `split_dir/manifest.json` (or a manifest file's path)."""
    path = Path(split_dir)
    if path.is_dir():
        path = path / MANIFEST_NAME
    try:
        data = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise HedprepError(f"{path}: no manifest; build the split with `hedprep build` first") from None
    except (OSError, ValueError) as error:
        raise HedprepError(f"{path}: not a readable manifest ({error})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        raise HedprepError(f"{path}: not a {FORMAT_NAME} manifest")
    if data.get("format_version") != FORMAT_VERSION:
        raise HedprepError(
            f"{path}: format version {data.get('format_version')}, this hedprep reads version {FORMAT_VERSION}"
        )
    try:
        shards = [ShardRecord(**s) for s in data["shards"]]
        return Manifest(data["split"], data["params"], shards, bool(data.get("complete")))
    except (KeyError, TypeError) as error:
        raise HedprepError(f"{path}: malformed manifest ({error})") from None


# -------------------------------------------------------------------------------------------- reading


class Sample(NamedTuple):
    """One frame of a split: (H, W, 4) uint8 RGB+edge, (H, W) uint8 trainIds, its Cityscapes id."""

    frame: np.ndarray
    label: np.ndarray
    frame_id: str


class SplitReader:
    """Random access to the frames of a built split, by its manifest.

    HDF5 files are opened lazily and reopened after a fork (each DataLoader worker gets its own
    handles); pickling drops the handles, so a reader can be sent to spawned workers.
    """

    def __init__(self, split_dir: str | os.PathLike) -> None:
        self.split_dir = Path(split_dir)
        self.manifest = read_manifest(self.split_dir)
        if self.split_dir.is_file():
            self.split_dir = self.split_dir.parent
        if not self.manifest.complete:
            warnings.warn(
                f"{self.split_dir / MANIFEST_NAME}: the build is incomplete; reading the "
                f"{self.manifest.num_frames} frames built so far (rerun hedprep build to finish it)",
                UserWarning, stacklevel=2,
            )
        self.shards = [s for s in self.manifest.shards if s.frame_ids]
        self.frame_ids = [i for s in self.shards for i in s.frame_ids]
        self._starts = np.cumsum([0] + [len(s.frame_ids) for s in self.shards])
        self._handles: dict[int, h5py.File] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.frame_ids)

    def __getitem__(self, index: int) -> Sample:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"frame {index} out of range for {len(self)} frames")
        shard = int(np.searchsorted(self._starts, index, side="right")) - 1
        local = index - int(self._starts[shard])
        f = self._handle(shard)
        return Sample(f["frames"][local], f["labels"][local], self.frame_ids[index])

    def __iter__(self) -> Iterator[Sample]:
        for i in range(len(self)):
            yield self[i]

    def _handle(self, shard: int) -> h5py.File:
        if self._pid != os.getpid():  # forked: the parent's handles are not ours to use
            self._handles = {}
            self._pid = os.getpid()
        f = self._handles.get(shard)
        if f is None:
            load_filter_plugins()
            path = shard_path(self.split_dir, self.shards[shard].file)
            try:
                f = h5py.File(path, "r")
            except OSError as error:
                raise HedprepError(f"{path}: cannot open shard ({error})") from None
            self._handles[shard] = f
        return f

    def close(self) -> None:
        """Close the open HDF5 files (they reopen on the next access)."""
        if self._pid == os.getpid():
            for f in self._handles.values():
                f.close()
        self._handles = {}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handles"] = {}
        return state

    def __enter__(self) -> SplitReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_split(out: str | os.PathLike, split: str | None = None) -> SplitReader:
    """Open a built split: `open_split("out", "train")` or `open_split("out/train")`."""
    return SplitReader(Path(out) / split if split else Path(out))


def is_plain_file_name(file: str) -> bool:
    """True for a bare file name: no folders, not absolute, not `.` or `..`."""
    name = Path(file)
    return not name.is_absolute() and len(name.parts) == 1 and name.name not in ("", ".", "..")


def shard_path(split_dir: Path, file: str) -> Path:
    """The path of a manifest's shard entry; refuses names that would leave the split folder."""
    if not is_plain_file_name(file):
        raise HedprepError(f"{split_dir / MANIFEST_NAME}: shard path {file!r} leaves the split folder")
    return split_dir / file


_plugins_loaded = False


def load_filter_plugins() -> None:
    """Register hdf5plugin's filters (zstd, lz4), if it is installed, so such shards decode."""
    global _plugins_loaded
    if not _plugins_loaded:
        _plugins_loaded = True
        try:
            import hdf5plugin  # noqa: F401 - importing registers the filters with HDF5
        except ImportError:
            pass


# ------------------------------------------------------------------------------------------ verifying


def check_shard(path: Path, record: ShardRecord | None = None, info: ShardInfo | None = None) -> list[str]:
    """Problems of one shard file (empty list if none): hash, datasets, shapes, dtypes, frame ids."""
    problems: list[str] = []
    if not path.is_file():
        return ["missing"]
    if record is not None:
        try:
            if path.stat().st_size != record.bytes:
                problems.append(f"size {path.stat().st_size} bytes, manifest says {record.bytes}")
            elif file_sha256(path) != record.sha256:
                problems.append("sha256 differs from the manifest")
        except OSError as error:
            return [f"cannot read ({error.strerror or error})"]
    load_filter_plugins()
    try:
        with h5py.File(path, "r") as f:
            problems += _check_contents(f, record, info)
    except (OSError, KeyError, RuntimeError, ValueError) as error:
        problems.append(f"not a readable HDF5 file ({one_line(error)})")
    return problems


def one_line(error: Exception) -> str:
    """An exception's message on one line (HDF5's span several), without KeyError's added quotes."""
    text = error.args[0] if isinstance(error, KeyError) and error.args else error
    return " ".join(str(text).split()) or type(error).__name__


def _check_contents(f: h5py.File, record: ShardRecord | None, info: ShardInfo | None) -> list[str]:
    problems = []
    attrs = read_attrs(f)
    if attrs.get("format") != FORMAT_NAME or attrs.get("format_version") != FORMAT_VERSION:
        return [f"not a {FORMAT_NAME} v{FORMAT_VERSION} shard"]
    for name in ("frames", "labels", "frame_ids"):
        if name not in f:
            problems.append(f"dataset {name} missing")
    if problems:
        return problems
    frames, labels, ids = f["frames"], f["labels"], f["frame_ids"]
    n = ids.shape[0]
    h, w = attrs.get("frame_height"), attrs.get("frame_width")
    if info is not None and (h, w) != (info.frame_height, info.frame_width):
        problems.append(f"frames are {h}x{w}, the manifest says {info.frame_height}x{info.frame_width}")
    if frames.dtype != np.uint8 or frames.shape != (n, h, w, 4):
        problems.append(f"frames is {frames.dtype} {frames.shape}, expected uint8 {(n, h, w, 4)}")
    if labels.dtype != np.uint8 or labels.shape != (n, h, w):
        problems.append(f"labels is {labels.dtype} {labels.shape}, expected uint8 {(n, h, w)}")
    stored_ids = [i.decode("ascii") for i in ids[()]]
    if record is not None and stored_ids != record.frame_ids:
        problems.append("frame ids differ from the manifest")
    if problems:
        return problems
    try:  # the first and last frame decode, and the viewer images resolve to them
        for i in sorted({0, n - 1}) if n else ():
            frames[i], labels[i]
            for view in f[IMAGES_GROUP][stored_ids[i]].values():
                view[0]
    except (OSError, KeyError, RuntimeError, ValueError) as error:
        problems.append(f"data does not decode ({one_line(error)})")
    return problems


def shard_info_from_params(params: dict[str, Any]) -> ShardInfo:
    """The `ShardInfo` part of a manifest's build parameters."""
    names = ShardInfo.__dataclass_fields__
    return ShardInfo(**{k: v for k, v in params.items() if k in names})


@dataclass
class ShardProblem:
    """A bad shard found by `verify_split`."""

    file: str
    problems: list[str]


def verify_split(split_dir: str | os.PathLike) -> tuple[Manifest, list[ShardProblem]]:
    """Check every shard a manifest lists; returns the manifest and the bad shards."""
    split_dir = Path(split_dir)
    manifest = read_manifest(split_dir)
    info = shard_info_from_params(manifest.params)
    bad = []
    for record in manifest.shards:
        if not is_plain_file_name(record.file):
            bad.append(ShardProblem(record.file, ["shard path leaves the split folder"]))
            continue
        path = split_dir / record.file
        problems = check_shard(path, record, info)
        if problems:
            bad.append(ShardProblem(record.file, problems))
    return manifest, bad


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


def shard_files(paths: Sequence[Path]) -> list[Path]:
    """The shard files of split folders, in name order."""
    return sorted(p for d in paths for p in d.glob(SHARD_PATTERN))
