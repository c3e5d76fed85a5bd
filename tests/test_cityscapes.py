"""hedprep.cityscapes: the label table against cityscapesscripts, frame listing, readers and their errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from cityscapesscripts.helpers import labels as cs_labels

from hedprep import cityscapes
from hedprep.cityscapes import (
    IGNORE_INDEX,
    LABELS,
    NUM_CLASSES,
    TRAIN_CLASSES,
    UnexpectedFileWarning,
    is_labeled,
    labelid_to_color,
    labelid_to_trainid,
    list_frames,
    read_frame,
    read_image,
    read_label,
    resolve_root,
    trainid_palette,
    trainid_to_color,
    trainid_to_labelid,
)
from hedprep.errors import HedprepError
from hedprep.fixture import make_fixture

# Our snake_case field names -> cityscapesscripts' names.
FIELD_NAMES = {
    "name": "name",
    "id": "id",
    "train_id": "trainId",
    "category": "category",
    "category_id": "categoryId",
    "has_instances": "hasInstances",
    "ignore_in_eval": "ignoreInEval",
    "color": "color",
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A shared, read-only synthetic dataset; tests that change files make their own."""
    root = tmp_path_factory.mktemp("cityscapes")
    make_fixture(root, {"train": 4, "val": 2, "test": 2, "train_extra": 2}, size=(64, 96))
    return root


@pytest.fixture
def own_dataset(tmp_path: Path) -> Path:
    make_fixture(tmp_path / "cs", {"train": 4, "test": 2}, size=(64, 96))
    return tmp_path / "cs"


# --- the label table ------------------------------------------------------------------------------


def test_label_table_matches_cityscapesscripts_field_by_field() -> None:
    assert len(LABELS) == len(cs_labels.labels) == 35
    for ours, theirs in zip(LABELS, cs_labels.labels, strict=True):
        assert set(ours._fields) == set(FIELD_NAMES)
        for field, their_field in FIELD_NAMES.items():
            assert getattr(ours, field) == getattr(theirs, their_field), (ours.name, field)


def test_train_classes_in_train_id_order() -> None:
    assert NUM_CLASSES == len(TRAIN_CLASSES) == 19
    assert IGNORE_INDEX == 255
    assert TRAIN_CLASSES == tuple(cs_labels.trainId2label[t].name for t in range(19))


def test_labelid_to_trainid_covers_every_byte_value() -> None:
    ids = np.arange(256, dtype=np.uint8).reshape(16, 16)
    expected = [
        cs_labels.id2label[i].trainId if i in cs_labels.id2label else 255 for i in range(256)
    ]
    mapped = labelid_to_trainid(ids)
    assert mapped.dtype == np.uint8 and mapped.shape == (16, 16)
    assert mapped.ravel().tolist() == expected


def test_lookups_send_out_of_range_ids_to_ignore() -> None:
    ids = np.array([[-1, 7, 300], [26, 33, 34]], dtype=np.int32)
    assert labelid_to_trainid(ids).tolist() == [[255, 0, 255], [13, 18, 255]]
    assert trainid_to_color(np.array([-5, 999])).tolist() == [[0, 0, 0], [0, 0, 0]]


def test_trainid_palette_and_colors() -> None:
    palette = trainid_palette()
    assert palette.shape == (256, 3) and palette.dtype == np.uint8
    for train_id in range(19):
        assert tuple(palette[train_id]) == cs_labels.trainId2label[train_id].color
    assert not palette[19:].any()
    palette[0] = 1  # a copy: callers cannot corrupt the module's table
    assert tuple(trainid_palette()[0]) == (128, 64, 128)

    train_ids = np.array([[0, 10], [255, 13]], dtype=np.uint8)
    colors = trainid_to_color(train_ids)
    assert colors.shape == (2, 2, 3) and colors.dtype == np.uint8
    assert colors.tolist() == [[[128, 64, 128], [70, 130, 180]], [[0, 0, 0], [0, 0, 142]]]


def test_labelid_to_color_uses_every_label_color() -> None:
    ids = np.arange(34, dtype=np.uint8)[None]
    assert [tuple(c) for c in labelid_to_color(ids)[0]] == [cs_labels.id2label[i].color for i in range(34)]
    assert labelid_to_color(np.array([[200]], np.uint8)).tolist() == [[[0, 0, 0]]]


# --- the dataset root and frame listing -----------------------------------------------------------


def test_resolve_root_prefers_argument_then_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CITYSCAPES_DATASET", str(tmp_path))
    assert resolve_root(None) == tmp_path
    other = tmp_path / "other"
    other.mkdir()
    assert resolve_root(other) == other


def test_resolve_root_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CITYSCAPES_DATASET", raising=False)
    with pytest.raises(HedprepError, match="CITYSCAPES_DATASET is not set"):
        resolve_root(None)
    with pytest.raises(HedprepError, match="nowhere: Cityscapes folder does not exist"):
        resolve_root(tmp_path / "nowhere")
    monkeypatch.setenv("CITYSCAPES_DATASET", str(tmp_path / "gone"))
    with pytest.raises(HedprepError, match="gone: Cityscapes folder does not exist"):
        resolve_root(None)


def test_list_frames_pairs_images_with_fine_labels(dataset: Path) -> None:
    frames = list_frames(dataset, "train")
    assert [f.frame_id for f in frames] == [
        "aachen_000000_000019", "aachen_000001_000019", "bochum_000000_000019", "bochum_000001_000019",
    ]
    first = frames[0]
    assert (first.split, first.city) == ("train", "aachen")
    assert first.image == dataset / "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png"
    assert first.label == dataset / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png"


def test_list_frames_reads_env_var(dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CITYSCAPES_DATASET", str(dataset))
    assert len(list_frames(None, "val")) == 2


def test_train_extra_needs_coarse_labels(dataset: Path) -> None:
    with pytest.raises(HedprepError, match="train_extra has no gtFine"):
        list_frames(dataset, "train_extra")
    frames = list_frames(dataset, "train_extra", labels="coarse")
    assert [f.frame_id for f in frames] == ["augsburg_000000_000019", "bad-honnef_000000_000019"]
    assert all(f.label is not None and f.label.name.endswith("_gtCoarse_labelIds.png") for f in frames)


def test_unknown_split_or_label_kind(dataset: Path) -> None:
    with pytest.raises(HedprepError, match="--split training: unknown split"):
        list_frames(dataset, "training")
    with pytest.raises(HedprepError, match="--labels medium: unknown label kind"):
        list_frames(dataset, "train", labels="medium")


def test_is_labeled() -> None:
    assert [is_labeled(s) for s in cityscapes.SPLITS] == [True, True, False, True]


def test_missing_or_empty_split_folder(tmp_path: Path) -> None:
    with pytest.raises(HedprepError, match=r"leftImg8bit/val: split folder does not exist"):
        list_frames(tmp_path, "val")
    (tmp_path / "leftImg8bit/val/lindau").mkdir(parents=True)
    with pytest.raises(HedprepError, match=r"leftImg8bit/val: split folder holds no"):
        list_frames(tmp_path, "val")


def test_missing_label_file_is_an_error_in_labeled_splits(own_dataset: Path) -> None:
    missing = own_dataset / "gtFine/train/bochum/bochum_000001_000019_gtFine_labelIds.png"
    missing.unlink()
    with pytest.raises(HedprepError, match=f"{missing}: label file missing"):
        list_frames(own_dataset, "train")
    with pytest.raises(HedprepError, match="gtCoarse_labelIds.png: label file missing"):
        list_frames(own_dataset, "train", labels="coarse")


def test_test_split_labels_are_optional(own_dataset: Path) -> None:
    assert all(f.label is not None for f in list_frames(own_dataset, "test"))
    shutil.rmtree(own_dataset / "gtFine/test")
    frames = list_frames(own_dataset, "test")
    assert len(frames) == 2 and all(f.label is None for f in frames)
    rgb, train_ids = read_frame(frames[0])
    assert rgb.shape == (64, 96, 3) and train_ids is None


def test_unexpected_names_are_warned_about_and_skipped(own_dataset: Path) -> None:
    split = own_dataset / "leftImg8bit/train"
    (split / ".DS_Store").write_bytes(b"\0")
    (split / "aachen/foo.png").write_bytes(b"\0")
    (split / "aachen/aachen_1_19_leftImg8bit.png").write_bytes(b"\0")  # seq and frame need 6 digits
    (split / "aachen/bochum_000009_000019_leftImg8bit.png").write_bytes(b"\0")  # wrong city folder
    (split / "aachen/notes").mkdir()
    (split / "bochum/Thumbs.db").write_bytes(b"\0")
    with pytest.warns(UnexpectedFileWarning) as caught:
        frames = list_frames(own_dataset, "train")
    assert len(frames) == 4
    assert len(caught) == 1
    message = str(caught[0].message)
    for name in (".DS_Store", "aachen/foo.png", "aachen/aachen_1_19_leftImg8bit.png", "aachen/notes"):
        assert name in message
    assert "and 1 more" in message  # six entries: five are named, the rest counted


# --- readers --------------------------------------------------------------------------------------


def test_read_frame_returns_rgb_and_train_ids(dataset: Path) -> None:
    frame = list_frames(dataset, "val")[0]
    rgb, train_ids = read_frame(frame)
    assert rgb.shape == (64, 96, 3) and rgb.dtype == np.uint8
    assert train_ids is not None and train_ids.shape == (64, 96) and train_ids.dtype == np.uint8
    assert np.array_equal(train_ids, labelid_to_trainid(read_label(frame.label)))
    assert set(np.unique(train_ids)) <= set(range(19)) | {255}


def test_read_image_returns_rgb_order(tmp_path: Path) -> None:
    path = tmp_path / "red.png"
    bgr = np.zeros((4, 5, 3), np.uint8)
    bgr[..., 2] = 200  # red, in OpenCV's BGR order
    cv2.imwrite(str(path), bgr)
    rgb = read_image(path)
    assert rgb.shape == (4, 5, 3) and (rgb[..., 0] == 200).all() and not rgb[..., 1:].any()


@pytest.mark.parametrize("content", [b"", b"hello, not a png", "truncated"])
def test_unreadable_files(tmp_path: Path, dataset: Path, content: bytes | str) -> None:
    path = tmp_path / "broken.png"
    if content == "truncated":
        good = next((dataset / "leftImg8bit/train/aachen").iterdir()).read_bytes()
        content = good[: len(good) // 2]
    path.write_bytes(content)
    for read in (read_image, read_label):
        with pytest.raises(HedprepError, match=f"{path}: not a readable image"):
            read(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(HedprepError, match="absent.png: cannot read file"):
        read_image(tmp_path / "absent.png")


def test_wrong_channels_or_depth(tmp_path: Path) -> None:
    gray, rgba, deep = tmp_path / "gray.png", tmp_path / "rgba.png", tmp_path / "deep.png"
    cv2.imwrite(str(gray), np.zeros((4, 4), np.uint8))
    cv2.imwrite(str(rgba), np.zeros((4, 4, 4), np.uint8))
    cv2.imwrite(str(deep), np.zeros((4, 4), np.uint16))
    with pytest.raises(HedprepError, match=r"gray.png: expected an 8-bit RGB image, found 1 channel\(s\) of uint8"):
        read_image(gray)
    with pytest.raises(HedprepError, match=r"rgba.png: expected an 8-bit RGB image, found 4 channel"):
        read_image(rgba)
    with pytest.raises(HedprepError, match=r"rgba.png: expected an 8-bit single-channel label map"):
        read_label(rgba)
    with pytest.raises(HedprepError, match=r"deep.png: expected an 8-bit single-channel label map, .* uint16"):
        read_label(deep)


def test_image_and_label_size_mismatch(own_dataset: Path) -> None:
    frame = list_frames(own_dataset, "train")[0]
    cv2.imwrite(str(frame.label), np.zeros((32, 96), np.uint8))
    with pytest.raises(HedprepError) as error:
        read_frame(frame)
    assert str(frame.label) in str(error.value) and str(frame.image) in str(error.value)
    assert "96x32" in str(error.value) and "96x64" in str(error.value)


def test_trainid_to_labelid_inverts_the_trainid_mapping() -> None:
    from cityscapesscripts.helpers.labels import trainId2label

    train_ids = np.arange(256, dtype=np.uint8)
    label_ids = trainid_to_labelid(train_ids)
    for train_id in range(19):
        assert label_ids[train_id] == trainId2label[train_id].id
        assert labelid_to_trainid(label_ids[train_id : train_id + 1])[0] == train_id
    assert (label_ids[19:] == 0).all()
