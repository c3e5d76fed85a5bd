"""Prediction files in Cityscapes' format, and colour overlays for looking at predictions.

For a frame `{frame_id}` (e.g. `frankfurt_000000_000019`), `write_prediction_pngs` writes two PNGs:

- `{frame_id}_pred_labelIds.png`: 8-bit single-channel Cityscapes labelIds, the format
  `cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling` reads. Give its `evaluateImgLists`
  the list of these files: its no-argument mode finds a frame's prediction by the pattern
  `{city}_{seq}_{frame}*.png` and stops at "multiple predictions" when the colour file is beside it;
- `{frame_id}_pred_color.png`: the same prediction in Cityscapes' class colours.

A trainId outside 0..18 (e.g. 255) becomes labelId 0 ("unlabeled") and black.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from hedprep.atomic import cannot_write, write_bytes_atomic
from hedprep.shards import NUM_CLASSES, trainid_to_color, trainid_to_labelid
from segnet.errors import SegnetError

LABELIDS_SUFFIX = "_pred_labelIds.png"
COLOR_SUFFIX = "_pred_color.png"


def write_png(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write an image as OpenCV takes it ((H, W) grey, (H, W, 3) BGR) to `path` as PNG, atomically."""
    path = Path(path)
    data = _png(image, path)
    try:
        write_bytes_atomic(path, data)
    except OSError as error:
        raise SegnetError(cannot_write(path, error), path.parent) from None
    return path


def _png(image: np.ndarray, path: Path) -> bytes:
    ok, data = cv2.imencode(".png", image)
    if not ok:  # cv2 encodes any uint8 image; this guards against a broken OpenCV build
        raise SegnetError(f"{path}: OpenCV could not encode the PNG", path)
    return data.tobytes()


def prepare_folder(out_dir: str | os.PathLike) -> Path:
    """Create an output folder (one-line SegnetError if it is a file or cannot be made); returns it."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise SegnetError(f"{out_dir}: exists and is not a folder", out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise SegnetError(f"{out_dir}: cannot create the folder ({error.strerror or error})", out_dir) from None
    return out_dir


def write_prediction_pngs(out_dir: str | os.PathLike, frame_id: str, pred_trainids: np.ndarray) -> list[Path]:
    """Write a frame's (H, W) trainId prediction as `{frame_id}_pred_labelIds.png` and `{frame_id}_pred_color.png`.

    `out_dir` is created if missing. Each file is written atomically. Returns the two paths (labelIds first).

    Raises:
        SegnetError: `out_dir` is a file or cannot be created or written.
        ValueError: `pred_trainids` is not a 2-D map, or `frame_id` is not a plain file-name stem.
    """
    pred = np.asarray(pred_trainids)
    if pred.ndim != 2:
        raise ValueError(f"expected an (H, W) trainId map, got shape {pred.shape}")
    if not frame_id or frame_id != Path(frame_id).name:
        raise ValueError(f"frame id {frame_id!r} is not a plain file-name stem")
    out_dir = Path(out_dir)
    prepare_folder(out_dir)
    # OpenCV encodes colour images in BGR order.
    images = {
        LABELIDS_SUFFIX: trainid_to_labelid(pred),
        COLOR_SUFFIX: cv2.cvtColor(trainid_to_color(pred), cv2.COLOR_RGB2BGR),
    }
    paths = []
    for suffix, image in images.items():
        paths.append(write_png(out_dir / f"{frame_id}{suffix}", image))
    return paths


def overlay(image_rgb: np.ndarray, pred_trainids: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend an (H, W, 3) uint8 RGB image with its prediction's class colours: (H, W, 3) uint8 RGB.

    `alpha` is the weight of the colours (0: the image alone, 1: the colours alone). Pixels whose
    prediction is no class (outside 0..18) keep the image's colour.
    """
    image = np.asarray(image_rgb)
    pred = np.asarray(pred_trainids)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {image.dtype} of shape {image.shape}")
    if pred.shape != image.shape[:2]:
        raise ValueError(f"prediction shape {pred.shape} differs from the image's {image.shape[:2]}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha {alpha} is not in [0, 1]")
    colors = trainid_to_color(pred).astype(np.float32)
    weight = np.where((pred >= 0) & (pred < NUM_CLASSES), np.float32(alpha), np.float32(0))[..., None]
    blend = image.astype(np.float32) * (1 - weight) + colors * weight
    return np.clip(np.rint(blend), 0, 255).astype(np.uint8)
