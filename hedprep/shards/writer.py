"""Writing a shard: frames, labels, frame ids, the viewer images and the root attributes."""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import h5py
import numpy as np

from hedprep.atomic import write_bytes_atomic
from hedprep.cityscapes import IGNORE_INDEX, trainid_palette, trainid_to_color
from hedprep.errors import HedprepError
from hedprep.shards.compression import Compression, fast_deflate
from hedprep.shards.format import (
    BROWSE_GROUP,
    CHANNELS,
    FORMAT_NAME,
    FORMAT_VERSION,
    IGNORED_PIXELS,
    IMAGES_GROUP,
    LABEL_COLORS,
    LEVELS_GROUP,
    ShardInfo,
    level_dataset,
    set_string_attr,
    tile_shape,
)
from hedprep.shards.levels import IMAGE_FILTER, LABEL_RULE, downsample_frame, downsample_labels, level_size
from hedprep.shards.manifest import ShardRecord, SkippedFrame

ChunkPayload = Sequence[tuple[tuple[int, int], bytes]] | np.ndarray


@dataclass(frozen=True)
class PreparedFrame:
    """A frame ready to be stored (`ShardWriter.prepare`): for each target dataset, its compressed
    chunks ((y, x), bytes), or the image itself where HDF5's filter compresses it."""

    frame_id: str
    parts: tuple[tuple[int, ChunkPayload], ...]
    ignored_pixels: int = 0  # level-0 label pixels that are ignore (255)


class ShardWriter:
    """Write one shard frame by frame; `close()` puts it on disk under a temporary name, then renames it.

    Each frame is stored at level 0 (`frames`, `labels`) and at the `info.levels` resolution levels
    below it (`levels/{k}/frames`, `levels/{k}/labels`), computed here from level 0
    (`hedprep.shards.levels`). `append` does a frame's work in the calling thread; a builder may
    instead `prepare` frames on several threads (levels, colours, compressed chunks) and `write`
    them in frame order from one: the file is the same, chunk for chunk (the same bytes at the same
    addresses). Only gzip levels 1-3 through ISA-L are compressed in `prepare`; other filters run
    in `write`, inside HDF5.

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
        self.skipped: list[SkippedFrame] = []
        self.ignored_pixels = 0  # of the frames written so far, at level 0
        h, w = info.frame_height, info.frame_width
        options = compression.h5py_options()
        self.file = h5py.File(
            str(self.path), "w", driver="core", backing_store=False, block_size=self.MEMORY_BLOCK,
            libver=("v110", "v110"), track_order=True,  # a fixed on-disk format, read by HDF5 >= 1.10
        )
        self.frames: list[h5py.Dataset] = []  # per level, 0 first
        self.labels: list[h5py.Dataset] = []
        for level in range(info.levels + 1):
            lh, lw = level_size(h, w, level)
            if level:
                group = self.file.require_group(LEVELS_GROUP).create_group(str(level))
                group.attrs["downsample_factor"] = 1 << level
                set_string_attr(group, "image_filter", IMAGE_FILTER)
                set_string_attr(group, "label_rule", LABEL_RULE)
            self.frames.append(self.file.create_dataset(
                level_dataset(level, "frames"), shape=(capacity, lh, lw, 4), maxshape=(capacity, lh, lw, 4),
                dtype=np.uint8, chunks=(1, *tile_shape(lh, lw), 4), **options,
            ))
            self.labels.append(self.file.create_dataset(
                level_dataset(level, "labels"), shape=(capacity, lh, lw), maxshape=(capacity, lh, lw),
                dtype=np.uint8, chunks=(1, *tile_shape(lh, lw)), fillvalue=IGNORE_INDEX, **options,
            ))
        # The labels in Cityscapes colours, for viewers (none applies a palette): piecewise constant,
        # so 33-42 kB per 1024x2048 fixture frame under gzip:1, about 1% of the frame's bytes.
        self.label_colors = self.file.create_dataset(
            LABEL_COLORS, shape=(capacity, h, w, 3), maxshape=(capacity, h, w, 3), dtype=np.uint8,
            chunks=(1, *tile_shape(h, w), 3), **options,
        )
        self._deflate = fast_deflate(compression)
        # Where `prepare` puts each part: frames and labels of each level, then the label colours.
        self._targets: list[h5py.Dataset] = [d for pair in zip(self.frames, self.labels, strict=True) for d in pair]
        self._targets.append(self.label_colors)
        self._tiles = [d.chunks[1:3] for d in self._targets]  # read once: prepare() touches no HDF5 object
        self._frame_shape = self.frames[0].shape[1:]

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()

    def append(self, frame_id: str, rgbe: np.ndarray, label: np.ndarray | None) -> None:
        """Add a frame: (H, W, 4) uint8 RGB+edge and (H, W) uint8 trainIds (None: all ignore)."""
        self.write(self.prepare(frame_id, rgbe, label))

    def prepare(self, frame_id: str, rgbe: np.ndarray, label: np.ndarray | None) -> PreparedFrame:
        """A frame's CPU work, ready for `write`: its levels, label colours and compressed chunks.

        Touches no HDF5 object, so threads may prepare frames at once (OpenCV, ISA-L and numpy's
        large operations release the GIL); `write` then stores them in frame order.
        """
        if rgbe.shape != self._frame_shape or rgbe.dtype != np.uint8:
            raise HedprepError(
                f"{frame_id}: frame is {rgbe.dtype} {rgbe.shape}, "
                f"shard {self.path.name} takes uint8 {self._frame_shape}"
            )
        parts: list[tuple[int, ChunkPayload]] = []
        for level in range(self.info.levels + 1):
            parts.append(self._part(2 * level, downsample_frame(rgbe, level), fill=0))
            if label is not None:
                parts.append(self._part(2 * level + 1, downsample_labels(label, level), fill=IGNORE_INDEX))
        if label is not None:  # else black, the colour of ignore, as the fill value
            parts.append(self._part(len(self._targets) - 1, trainid_to_color(label), fill=0))
        ignored = rgbe.shape[0] * rgbe.shape[1] if label is None else int(np.count_nonzero(label == IGNORE_INDEX))
        return PreparedFrame(frame_id, tuple(parts), ignored)

    def _part(self, target: int, image: np.ndarray, fill: int) -> tuple[int, ChunkPayload]:
        if self._deflate is None:  # HDF5's filter compresses it in `write`
            return target, image
        return target, deflated_tiles(image, self._tiles[target], self._deflate, fill)

    def write(self, frame: PreparedFrame) -> None:
        """Store a prepared frame as the next one (one thread at a time, in frame order)."""
        i = len(self.frame_ids)
        for target, payload in frame.parts:
            dataset = self._targets[target]
            if isinstance(payload, np.ndarray):
                dataset[i] = payload
                continue
            for (y, x), chunk in payload:
                dataset.id.write_direct_chunk((i, y, x) + (0,) * (dataset.ndim - 3), chunk)
        self.frame_ids.append(frame.frame_id)
        self.ignored_pixels += frame.ignored_pixels

    def skip(self, frame: SkippedFrame) -> None:
        """Record a frame left out (`--on-error skip`)."""
        self.skipped.append(frame)

    def close(self) -> ShardRecord:
        """Finish datasets, viewer tags and attributes; write the file atomically; return its record."""
        try:
            self._finish()
            self.file.flush()
            image = self.file.id.get_file_image()
        finally:
            self._discard()
        try:
            write_bytes_atomic(self.path, image)
        except OSError as error:
            raise HedprepError(
                f"{self.path}: cannot write shard ({error.strerror or error}); the partial file was removed",
                self.path,
            ) from None
        sha256 = hashlib.sha256(image).hexdigest()
        return ShardRecord(self.path.name, sha256, list(self.frame_ids), len(image), list(self.skipped),
                           self.info.levels, self.ignored_pixels)

    def _finish(self) -> None:
        n = len(self.frame_ids)
        f = self.file
        for dataset in (*self.frames, *self.labels, self.label_colors):
            dataset.resize(n, axis=0)
        width = max((len(i) for i in self.frame_ids), default=1)
        f.create_dataset("frame_ids", data=np.array(self.frame_ids, dtype=f"S{width}"), dtype=f"S{width}")
        for frames, labels in zip(self.frames, self.labels, strict=True):
            set_string_attr(frames, "CHANNELS", ",".join(CHANNELS))
            frames.attrs["channel_names"] = np.array(CHANNELS, dtype="S4")
            set_string_attr(labels, "LABELS", "Cityscapes trainIds 0-18, 255 = ignore")
        set_string_attr(self.label_colors, "LABELS", "trainid_to_color(labels): Cityscapes colours, ignore black")
        _write_palette(f)
        self._write_views()
        for name, value in asdict(self.info).items():
            if isinstance(value, str):
                set_string_attr(f, name, value)
            else:
                f.attrs[name] = value
        set_string_attr(f, "format", FORMAT_NAME)
        f.attrs["format_version"] = FORMAT_VERSION
        set_string_attr(f, "filter_plugin", self.compression.plugin_note())
        f.attrs[IGNORED_PIXELS] = self.ignored_pixels
        if n:
            f.attrs["default"] = BROWSE_GROUP  # NeXus: viewers open the file on this picture
        set_string_attr(f, "created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))

    def _write_views(self) -> None:
        """Pictures for HDF5 viewers, as virtual datasets (no pixel stored twice; `docs/shard-format.md`).

        `/browse`: every frame's RGB as one NeXus NXdata (the file's default). `/images/{frame_id}`:
        an NXentry of three NXdata, `rgb`, `edge` (grey) and `label` (Cityscapes colours), each an
        (H, W, 3) uint8 `data` that h5web and silx draw as an RGB image, upright (their `y` axis
        runs downward), and that HDF Compass draws as an HDF5 true-colour image. Their string
        attributes are variable-length: HDF Compass does not recognise fixed-length ones.
        """
        h, w = self.info.frame_height, self.info.frame_width
        n = len(self.frame_ids)
        # "." names this file itself, so the views survive the rename to the final name.
        frames = h5py.VirtualSource(".", "frames", shape=(n, h, w, 4), dtype=np.uint8)
        colors = h5py.VirtualSource(".", LABEL_COLORS, shape=(n, h, w, 3), dtype=np.uint8)
        if n:
            browse = self.file.create_group(BROWSE_GROUP)
            layout = h5py.VirtualLayout(shape=(n, h, w, 3), dtype=np.uint8)
            layout[...] = frames[:, :, :, 0:3]
            # No Image-spec tags on a 4-D stack: HDF Compass would take (N, H) for a picture's size.
            _nxdata(browse, layout, [".", "y", ".", "."], h, "frames' RGB, one frame per index", image_spec=False)
        group = self.file.create_group(IMAGES_GROUP, track_order=True)
        for i, frame_id in enumerate(self.frame_ids):
            entry = group.create_group(frame_id, track_order=True)
            entry.attrs["NX_class"] = "NXentry"
            entry.attrs["default"] = "rgb"
            rgb = h5py.VirtualLayout(shape=(h, w, 3), dtype=np.uint8)
            rgb[...] = frames[i, :, :, 0:3]
            edge = h5py.VirtualLayout(shape=(h, w, 3), dtype=np.uint8)
            for channel in range(3):  # grey: the edge map in each of R, G and B; white = edge
                edge[:, :, channel] = frames[i, :, :, 3]
            label = h5py.VirtualLayout(shape=(h, w, 3), dtype=np.uint8)
            label[...] = colors[i]
            for name, layout, title in (("rgb", rgb, "RGB"), ("edge", edge, "HED edge, white = edge"),
                                        ("label", label, "trainIds in Cityscapes colours, ignore black")):
                _nxdata(entry.create_group(name), layout, ["y", ".", "."], h, f"{frame_id}: {title}")

    def abort(self) -> None:
        """Discard the shard: nothing was or will be written to disk."""
        self._discard()

    def _discard(self) -> None:
        if self.file.id.valid:
            self.file.close()


def deflated_tiles(
    image: np.ndarray, tile: tuple[int, int], deflate: Callable[[bytes], bytes], fill: int
) -> list[tuple[tuple[int, int], bytes]]:
    """`image` cut into chunks of `tile` (rows, cols), each compressed: ((y, x), bytes), row by row.

    The chunks are stored as they are (no HDF5 filter runs). Chunks at the right and bottom edges
    are padded to the full chunk shape with the fill value, as HDF5 stores them.
    """
    rows, cols = tile
    h, w = image.shape[:2]
    chunks = []
    for y in range(0, h, rows):
        for x in range(0, w, cols):
            piece = image[y : y + rows, x : x + cols]
            if piece.shape[:2] != (rows, cols):
                padded = np.full((rows, cols, *image.shape[2:]), fill, np.uint8)
                padded[: piece.shape[0], : piece.shape[1]] = piece
                piece = padded
            chunks.append(((y, x), deflate(np.ascontiguousarray(piece).tobytes())))
    return chunks


def _nxdata(group: h5py.Group, layout: h5py.VirtualLayout, axes: list[str], height: int, title: str,
            image_spec: bool = True) -> None:
    """Make `group` a NeXus NXdata whose signal `data` is `layout`, an RGB image (or a stack of them),
    with a `y` axis running downward so viewers draw it upright; `image_spec`: also tag it as an HDF5
    true-colour image."""
    group.attrs["NX_class"] = "NXdata"
    group.attrs["signal"] = "data"
    group.attrs["axes"] = axes
    group.attrs["y_indices"] = axes.index("y")
    group.attrs["title"] = title
    data = group.create_virtual_dataset("data", layout, fillvalue=0)
    data.attrs["interpretation"] = "rgb-image"
    if image_spec:
        data.attrs["CLASS"] = "IMAGE"
        data.attrs["IMAGE_VERSION"] = "1.2"
        data.attrs["IMAGE_SUBCLASS"] = "IMAGE_TRUECOLOR"
        data.attrs["INTERLACE_MODE"] = "INTERLACE_PIXEL"
    group.create_dataset("y", data=np.arange(height - 1, -1, -1, dtype=np.int16 if height < 2**15 else np.int32))


def _write_palette(f: h5py.File) -> None:
    palette = f.create_dataset("palette", data=trainid_palette())
    set_string_attr(palette, "CLASS", "PALETTE")
    set_string_attr(palette, "PAL_VERSION", "1.2")
    set_string_attr(palette, "PAL_COLORMODEL", "RGB")
    set_string_attr(palette, "PAL_TYPE", "STANDARD8")
