"""The Cityscapes dataset on disk: find frames, read images and labels, labelId -> trainId, colours.

Layout (relative to the dataset root, see `docs/dataset.md`)::

    leftImg8bit/{split}/{city}/{city}_{seq}_{frame}_leftImg8bit.png
    gtFine/{split}/{city}/{city}_{seq}_{frame}_gtFine_labelIds.png
    gtCoarse/{split}/{city}/{city}_{seq}_{frame}_gtCoarse_labelIds.png

`seq` and `frame` are six digits. The label table reproduces cityscapesscripts'
`helpers/labels.py` value for value; its field names are the snake_case forms of the original
ones (`trainId` -> `train_id`, `categoryId` -> `category_id`, ...).
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from hedprep.errors import HedprepError, OptionError
from hedprep.images import decode_image

SPLITS = ("train", "val", "test", "train_extra")
LABEL_KINDS = ("fine", "coarse")
ROOT_ENV_VAR = "CITYSCAPES_DATASET"  # the variable cityscapesscripts reads, too
NUM_CLASSES = 19
IGNORE_INDEX = 255

# "{city}_{seq}_{frame}_leftImg8bit.png"; cities may contain '-' (bad-honnef) but never '_'.
_IMAGE_NAME = re.compile(r"(?P<city>[^_]+)_(?P<seq>\d{6})_(?P<frame>\d{6})_leftImg8bit\.png")


class UnexpectedFileWarning(UserWarning):
    """Files or folders in the image tree that are not Cityscapes frames; they are skipped."""


class Label(NamedTuple):
    """One row of the Cityscapes label table."""

    name: str
    id: int
    train_id: int
    category: str
    category_id: int
    has_instances: bool
    ignore_in_eval: bool
    color: tuple[int, int, int]  # RGB


# fmt: off
LABELS: tuple[Label, ...] = (
    #     name                    id  train  category        cat  inst   ignore  color (RGB)
    Label("unlabeled",             0, 255, "void",          0, False, True,  (0, 0, 0)),
    Label("ego vehicle",           1, 255, "void",          0, False, True,  (0, 0, 0)),
    Label("rectification border",  2, 255, "void",          0, False, True,  (0, 0, 0)),
    Label("out of roi",            3, 255, "void",          0, False, True,  (0, 0, 0)),
    Label("static",                4, 255, "void",          0, False, True,  (0, 0, 0)),
    Label("dynamic",               5, 255, "void",          0, False, True,  (111, 74, 0)),
    Label("ground",                6, 255, "void",          0, False, True,  (81, 0, 81)),
    Label("road",                  7,   0, "flat",          1, False, False, (128, 64, 128)),
    Label("sidewalk",              8,   1, "flat",          1, False, False, (244, 35, 232)),
    Label("parking",               9, 255, "flat",          1, False, True,  (250, 170, 160)),
    Label("rail track",           10, 255, "flat",          1, False, True,  (230, 150, 140)),
    Label("building",             11,   2, "construction",  2, False, False, (70, 70, 70)),
    Label("wall",                 12,   3, "construction",  2, False, False, (102, 102, 156)),
    Label("fence",                13,   4, "construction",  2, False, False, (190, 153, 153)),
    Label("guard rail",           14, 255, "construction",  2, False, True,  (180, 165, 180)),
    Label("bridge",               15, 255, "construction",  2, False, True,  (150, 100, 100)),
    Label("tunnel",               16, 255, "construction",  2, False, True,  (150, 120, 90)),
    Label("pole",                 17,   5, "object",        3, False, False, (153, 153, 153)),
    Label("polegroup",            18, 255, "object",        3, False, True,  (153, 153, 153)),
    Label("traffic light",        19,   6, "object",        3, False, False, (250, 170, 30)),
    Label("traffic sign",         20,   7, "object",        3, False, False, (220, 220, 0)),
    Label("vegetation",           21,   8, "nature",        4, False, False, (107, 142, 35)),
    Label("terrain",              22,   9, "nature",        4, False, False, (152, 251, 152)),
    Label("sky",                  23,  10, "sky",           5, False, False, (70, 130, 180)),
    Label("person",               24,  11, "human",         6, True,  False, (220, 20, 60)),
    Label("rider",                25,  12, "human",         6, True,  False, (255, 0, 0)),
    Label("car",                  26,  13, "vehicle",       7, True,  False, (0, 0, 142)),
    Label("truck",                27,  14, "vehicle",       7, True,  False, (0, 0, 70)),
    Label("bus",                  28,  15, "vehicle",       7, True,  False, (0, 60, 100)),
    Label("caravan",              29, 255, "vehicle",       7, True,  True,  (0, 0, 90)),
    Label("trailer",              30, 255, "vehicle",       7, True,  True,  (0, 0, 110)),
    Label("train",                31,  16, "vehicle",       7, True,  False, (0, 80, 100)),
    Label("motorcycle",           32,  17, "vehicle",       7, True,  False, (0, 0, 230)),
    Label("bicycle",              33,  18, "vehicle",       7, True,  False, (119, 11, 32)),
    Label("license plate",        -1,  -1, "vehicle",       7, False, True,  (0, 0, 142)),
)
# fmt: on

LABELS_BY_NAME: dict[str, Label] = {label.name: label for label in LABELS}
TRAIN_CLASSES: tuple[str, ...] = tuple(
    label.name for label in sorted(LABELS, key=lambda lb: lb.train_id) if 0 <= label.train_id < 255
)


def _table(values: dict[int, object], fill: object, dtype: type, width: int = 0) -> np.ndarray:
    """A 256-entry lookup table (rows of `width` values if width > 0) filled from {index: value}."""
    table = np.full((256, width) if width else 256, fill, dtype=dtype)
    for index, value in values.items():
        table[index] = value
    return table


# labelIds that no label uses map to 255 (ignored) and to black, like 'unlabeled'.
_TRAINID_BY_LABELID = _table({lb.id: lb.train_id for lb in LABELS if lb.id >= 0}, IGNORE_INDEX, np.uint8)
_COLOR_BY_LABELID = _table({lb.id: lb.color for lb in LABELS if lb.id >= 0}, 0, np.uint8, 3)
_COLOR_BY_TRAINID = _table({lb.train_id: lb.color for lb in LABELS if 0 <= lb.train_id < 255}, 0, np.uint8, 3)
# trainIds back to labelIds, as Cityscapes' evaluation reads predictions; other values -> 0 (unlabeled).
_LABELID_BY_TRAINID = _table({lb.train_id: lb.id for lb in LABELS if 0 <= lb.train_id < 255}, 0, np.uint8)


def _lookup(table: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """table[ids], where ids outside 0..255 (possible for wider dtypes) read entry 255."""
    ids = np.asarray(ids)
    if ids.dtype != np.uint8:
        ids = np.where((ids >= 0) & (ids <= 255), ids, 255).astype(np.uint8)
    return table[ids]


def labelid_to_trainid(label_ids: np.ndarray) -> np.ndarray:
    """Map Cityscapes labelIds to trainIds 0..18 (uint8); everything else becomes IGNORE_INDEX (255)."""
    return _lookup(_TRAINID_BY_LABELID, label_ids)


def trainid_to_labelid(train_ids: np.ndarray) -> np.ndarray:
    """Map trainIds 0..18 back to their Cityscapes labelIds (uint8), as the official evaluation reads
    predictions; any other value becomes 0 (unlabeled)."""
    return _lookup(_LABELID_BY_TRAINID, train_ids)


def trainid_palette() -> np.ndarray:
    """The (256, 3) uint8 RGB palette of trainIds: the 19 class colours, black for all other entries."""
    return _COLOR_BY_TRAINID.copy()


def trainid_to_color(train_ids: np.ndarray) -> np.ndarray:
    """Colour a (H, W) trainId map: (H, W, 3) uint8 RGB, ignored pixels black."""
    return _lookup(_COLOR_BY_TRAINID, train_ids)


def labelid_to_color(label_ids: np.ndarray) -> np.ndarray:
    """Colour a (H, W) labelId map with Cityscapes' label colours: (H, W, 3) uint8 RGB."""
    return _lookup(_COLOR_BY_LABELID, label_ids)


@dataclass(frozen=True)
class Frame:
    """One Cityscapes frame: its image and (if the split has one) its labelIds file."""

    frame_id: str  # "{city}_{seq}_{frame}", e.g. "aachen_000000_000019"
    split: str
    city: str
    image: Path
    label: Path | None


def resolve_root(root: str | os.PathLike | None) -> Path:
    """The dataset root: `root` if given, else $CITYSCAPES_DATASET; it must be an existing folder."""
    if root is None or str(root) == "":
        root = os.environ.get(ROOT_ENV_VAR) or None
        if root is None:
            raise HedprepError(f"no Cityscapes folder given and ${ROOT_ENV_VAR} is not set")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise HedprepError(f"{path}: Cityscapes folder does not exist")
    return path


def is_labeled(split: str) -> bool:
    """Whether a split has real labels (the test split's label maps are placeholders)."""
    _check_split(split)
    return split != "test"


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise OptionError(f"--split {split}: unknown split; choose one of {', '.join(SPLITS)}")


def label_folder(labels: str) -> str:
    """The top-level folder of a label kind: 'fine' -> 'gtFine', 'coarse' -> 'gtCoarse'."""
    if labels not in LABEL_KINDS:
        raise OptionError(f"--labels {labels}: unknown label kind; choose one of {', '.join(LABEL_KINDS)}")
    return "gtFine" if labels == "fine" else "gtCoarse"


def list_frames(
    root: str | os.PathLike | None, split: str, labels: str = "fine", require_labels: bool = True
) -> list[Frame]:
    """All frames of a split, sorted by frame_id, each paired with its `{gtFine,gtCoarse}` labelIds file.

    Entries of the image tree that are not Cityscapes frames (`.DS_Store`, `foo.png`, stray folders)
    are skipped with one `UnexpectedFileWarning` naming (the first five of) them. In the test split a
    missing label file gives `label=None`. In the other splits it is an error, unless
    `require_labels` is False: then the frame keeps the path of its missing label, and `read_frame`
    fails on that frame alone (a build with `--on-error skip` leaves it out).
    """
    _check_split(split)
    gt = label_folder(labels)
    if split == "train_extra" and labels == "fine":
        raise OptionError("--split train_extra has no gtFine labels: add --labels coarse")
    base = resolve_root(root)
    image_dir = base / "leftImg8bit" / split
    if not image_dir.is_dir():
        raise HedprepError(f"{image_dir}: split folder does not exist")

    frames: list[Frame] = []
    unexpected: list[Path] = []
    for city_dir in sorted(image_dir.iterdir()):
        if not city_dir.is_dir():
            unexpected.append(city_dir)
            continue
        for image in sorted(city_dir.iterdir()):
            match = _IMAGE_NAME.fullmatch(image.name)
            if match is None or match["city"] != city_dir.name or not image.is_file():
                unexpected.append(image)
                continue
            frame_id = image.name[: -len("_leftImg8bit.png")]
            label = base / gt / split / city_dir.name / f"{frame_id}_{gt}_labelIds.png"
            if not label.is_file():
                if not is_labeled(split):
                    label = None
                elif require_labels:
                    raise HedprepError(f"{label}: label file missing for {image.name}", label)
            frames.append(Frame(frame_id, split, city_dir.name, image, label))
    if unexpected:
        shown = ", ".join(str(p.relative_to(image_dir)) for p in unexpected[:5])
        more = f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else ""
        warnings.warn(f"{image_dir}: skipped unexpected entries {shown}{more}", UnexpectedFileWarning, stacklevel=2)
    if not frames:
        raise HedprepError(f"{image_dir}: split folder holds no *_leftImg8bit.png images")
    frames.sort(key=lambda f: f.frame_id)
    return frames


def _describe(image: np.ndarray) -> str:
    channels = 1 if image.ndim == 2 else image.shape[2]
    return f"{channels} channel(s) of {image.dtype}"


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read a leftImg8bit image as (H, W, 3) uint8 RGB."""
    image = decode_image(path)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise HedprepError(f"{path}: expected an 8-bit RGB image, found {_describe(image)}", path)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_label(path: str | os.PathLike) -> np.ndarray:
    """Read a labelIds map as (H, W) uint8."""
    label = decode_image(path)
    if label.dtype != np.uint8 or label.ndim != 2:
        raise HedprepError(f"{path}: expected an 8-bit single-channel label map, found {_describe(label)}", path)
    return label


def read_frame(frame: Frame) -> tuple[np.ndarray, np.ndarray | None]:
    """Read a frame: (H, W, 3) uint8 RGB and its (H, W) uint8 trainIds, or None if it has no label.

    The test split's placeholder labels are not returned (None): they carry no classes.
    """
    rgb = read_image(frame.image)
    if frame.label is None or not is_labeled(frame.split):
        return rgb, None
    if not frame.label.is_file():
        raise HedprepError(f"{frame.label}: label file missing for {frame.image.name}", frame.label)
    label_ids = read_label(frame.label)
    if label_ids.shape != rgb.shape[:2]:
        raise HedprepError(
            f"{frame.label}: label is {label_ids.shape[1]}x{label_ids.shape[0]} but "
            f"{frame.image} is {rgb.shape[1]}x{rgb.shape[0]} (width x height)",
            frame.label,
        )
    return rgb, labelid_to_trainid(label_ids)
