"""`segnet predict`: a checkpoint's segmentation of image files of any size, as colour and overlay PNGs.

Images are resized to the checkpoint's last stage size, segmented, and the prediction is upsampled to
the image's size. For dlse-hed the edge channel is computed on the fly by hedprep's HED (the same
engine and uint8 rounding as the shards). With `boundaries`, the training-only boundary head of a
dl-boundary or dl-hed-head checkpoint also draws its boundary map (no HED needed).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from hedprep.shards import trainid_to_color
from segnet.data import select_channels, to_tensors
from segnet.devices import resolve_device
from segnet.errors import SegnetError
from segnet.inference import frame_at_size, load_segmenter
from segnet.predictions import overlay, prepare_folder, write_png


@dataclass(frozen=True)
class Prediction:
    """The files written for one input image."""

    image: Path
    color: Path
    overlay: Path
    boundary: Path | None = None  # with `boundaries`


def read_image(path: str | os.PathLike) -> np.ndarray:
    """A PNG or JPEG as (H, W, 3) uint8 RGB; one-line errors naming the file."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as error:
        raise SegnetError(f"{path}: cannot read file ({error.strerror or error})", path) from None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise SegnetError(f"{path}: not a readable image (corrupt, truncated or not an image format)", path)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def predict(
    checkpoint_path: str | os.PathLike,
    images: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    eval_size: tuple[int, int] | None = None,
    device: str = "auto",
    on_image: Callable[[Prediction], None] | None = None,
    boundaries: bool = False,
) -> list[Prediction]:
    """Segment each image; write OUT/{stem}_pred_color.png and OUT/{stem}_overlay.png, and with
    `boundaries` OUT/{stem}_boundary.png: the boundary head's probability as 8-bit grey, round(255 p),
    at the image's size (a SegnetError, before anything is written, for a checkpoint without one)."""
    for image in images:
        if not Path(image).is_file():
            raise SegnetError(f"{image}: no such file", image)
    torch_device = resolve_device(device)
    segmenter = load_segmenter(checkpoint_path, torch_device, boundaries=boundaries)
    size = eval_size or segmenter.input_size
    hed = _edge_detector(torch_device) if segmenter.in_channels == 4 else None
    out_dir = prepare_folder(out_dir)
    done = []
    for path in map(Path, images):
        rgb = read_image(path)
        frame = rgb if hed is None else np.concatenate([rgb, hed(rgb)[..., None]], axis=2)
        pixels = frame_at_size(select_channels(frame, segmenter.in_channels), size)
        image = to_tensors(pixels, np.zeros(pixels.shape[:2], np.uint8)).image
        boundary = None
        if boundaries:
            ids, probability = segmenter.predict_boundaries(image[None], rgb.shape[:2])
            prediction = ids[0].cpu().numpy()
            boundary = out_dir / f"{path.stem}_boundary.png"
            write_png(boundary, probability[0].cpu().numpy())
        else:
            prediction = segmenter.predict(image[None], rgb.shape[:2])[0].cpu().numpy()
        color = out_dir / f"{path.stem}_pred_color.png"
        blended = out_dir / f"{path.stem}_overlay.png"
        write_png(color, cv2.cvtColor(trainid_to_color(prediction), cv2.COLOR_RGB2BGR))
        write_png(blended, cv2.cvtColor(overlay(rgb, prediction), cv2.COLOR_RGB2BGR))
        result = Prediction(path, color, blended, boundary)
        done.append(result)
        if on_image is not None:
            on_image(result)
    return done


def _edge_detector(device: torch.device) -> Callable[[np.ndarray], np.ndarray]:
    """RGB (H, W, 3) uint8 -> HED edges (H, W) uint8, round(255 p), as stored in the shards."""
    from hedprep.hed import detect_edges, edges_to_uint8, load_hed

    model = load_hed()
    return lambda rgb: edges_to_uint8(detect_edges(model, rgb, device=str(device))[0])
