"""Edge-map files of image files, written as PNG or NPY: the library behind `hedprep edges`."""

from __future__ import annotations

import errno
import io
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from hedprep.atomic import write_bytes_atomic
from hedprep.errors import HedprepError
from hedprep.hed import HED, detect_edges, edges_to_uint8
from hedprep.images import encode_png, read_rgb

FORMATS = ("png", "npy")


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise HedprepError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")


def encode_edge_map(probabilities: np.ndarray, fmt: str) -> bytes:
    """`png`: 8-bit greyscale round(255 * p); `npy`: the float32 probabilities (H, W)."""
    _check_format(fmt)
    if fmt == "png":
        return encode_png(edges_to_uint8(probabilities), "edge map")
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(probabilities, dtype=np.float32))
    return buffer.getvalue()


def output_path(image: str | os.PathLike, out_dir: str | os.PathLike, fmt: str) -> Path:
    """`OUT/<stem>.<fmt>` for an input image."""
    return Path(out_dir) / f"{Path(image).stem}.{fmt}"


def _prepare_out_dir(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise HedprepError(f"{out_dir}: cannot create output folder ({error.strerror or error})") from None
    if not os.access(out_dir, os.W_OK):
        raise HedprepError(f"{out_dir}: output folder is not writable")


def check_edge_map_job(images: Sequence[str | os.PathLike], out_dir: str | os.PathLike, fmt: str) -> list[Path]:
    """Check a job before any work or any folder is made: the format, that every image is a file,
    and that no two images share an output name. Returns the output paths, in input order."""
    _check_format(fmt)
    for image in images:
        if not Path(image).is_file():
            raise HedprepError(f"{image}: no such file", image)
    targets = [output_path(image, out_dir, fmt) for image in images]
    seen: dict[Path, str] = {}
    for image, target in zip(images, targets, strict=True):
        if target in seen:
            raise HedprepError(f"{image}: same output name {target.name} as {seen[target]}")
        seen[target] = str(image)
    return targets


def write_edge_maps(
    model: HED,
    images: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    fmt: str = "png",
    precision: str = "fp32",
    device: str = "auto",
    scales: Sequence[float] = (1.0,),
    batch_size: int = 1,
    on_written: Callable[[Path], None] | None = None,
) -> list[Path]:
    """Detect edges in each image file and write `out_dir/<stem>.<fmt>`, each file atomically.

    Images are read one batch at a time; a file that cannot be read stops the run with a
    HedprepError naming it, and the maps written before it stay. Two inputs with one stem would
    overwrite each other, so that is refused up front.

    Returns:
        The paths written, in input order.
    """
    out_dir = Path(out_dir)
    targets = check_edge_map_job(images, out_dir, fmt)
    _prepare_out_dir(out_dir)

    written: list[Path] = []
    for start in range(0, len(images), batch_size):
        batch_paths = images[start : start + batch_size]
        frames = [read_rgb(path) for path in batch_paths]
        maps = detect_edges(model, frames, batch_size=batch_size, precision=precision, device=device, scales=scales)
        for probabilities, target in zip(maps, targets[start : start + batch_size], strict=True):
            try:
                write_bytes_atomic(target, encode_edge_map(probabilities, fmt))
            except OSError as error:
                reason = "disk full" if error.errno == errno.ENOSPC else (error.strerror or str(error))
                raise HedprepError(f"{target}: cannot write edge map ({reason})") from None
            written.append(target)
            if on_written is not None:
                on_written(target)
    return written
