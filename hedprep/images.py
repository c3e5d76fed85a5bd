"""Reading image files with one-line errors that name the file."""

from __future__ import annotations

import os

import cv2
import numpy as np

from hedprep.errors import HedprepError


def decode_image(path: str | os.PathLike, flags: int = cv2.IMREAD_UNCHANGED) -> np.ndarray:
    """Decode an image file with OpenCV `flags` (default: channels and bit depth as stored).

    Raises:
        HedprepError: the file cannot be read, or is not a decodable image (corrupt, truncated,
            another format).
    """
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as error:
        raise HedprepError(f"{path}: cannot read file ({error.strerror or error})", path) from None
    # imdecode rather than imread: it tells a missing file from a corrupt one and handles any path.
    image = cv2.imdecode(data, flags) if data.size else None
    if image is None:
        raise HedprepError(f"{path}: not a readable image (corrupt, truncated or not an image format)", path)
    return image


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """Any 8-bit photograph (PNG, JPEG, ...; grey or colour) as (H, W, 3) uint8 RGB."""
    return cv2.cvtColor(decode_image(path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def encode_png(image: np.ndarray, path: str | os.PathLike) -> bytes:
    """PNG bytes of a uint8 or uint16 image as OpenCV takes it ((H, W) grey, (H, W, 3) BGR, (H, W, 4) BGRA).

    `path` is where the bytes will go; it names the file in the error.
    """
    ok, data = cv2.imencode(".png", image)
    if not ok:
        raise HedprepError(f"{path}: could not encode PNG", path)
    return data.tobytes()
