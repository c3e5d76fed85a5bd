"""Shared fixtures: the pretrained HED (loaded once), golden photographs, a tiny Cityscapes fixture."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

GOLDEN = Path(__file__).parent / "golden"
GOLDEN_NAMES = tuple(json.loads((GOLDEN / "golden.json").read_text())["maps"])


@pytest.fixture(scope="session")
def hed_model():
    from hedprep.hed import load_hed

    return load_hed()


def golden_photo(name: str) -> np.ndarray:
    from hedprep.images import read_rgb

    return read_rgb(GOLDEN / f"{name}.png")


def golden_edges(name: str) -> np.ndarray:
    return np.load(GOLDEN / f"{name}.hed.npy")
