"""hedprep.fixture: the synthetic dataset has Cityscapes' layout and formats, is deterministic and learnable."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from cityscapesscripts.helpers.annotation import Annotation
from cityscapesscripts.helpers.csHelpers import getCsFileInfo
from cityscapesscripts.helpers.labels import name2label
from cityscapesscripts.preparation.json2instanceImg import createInstanceImage
from cityscapesscripts.preparation.json2labelImg import createLabelImage

from hedprep.cityscapes import (
    TRAIN_CLASSES,
    labelid_to_color,
    list_frames,
    read_frame,
    read_label,
)
from hedprep.errors import HedprepError
from hedprep.fixture import MARKER_FILE, make_fixture

SIZE = (96, 160)
COUNTS = {"train": 6, "val": 2, "test": 2, "train_extra": 2}
LABEL_SUFFIXES = {"color.png", "instanceIds.png", "labelIds.png", "polygons.json"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fixture")
    summary = make_fixture(root, COUNTS, size=SIZE, seed=3)
    assert (summary.root, dict(summary.frames), summary.size, summary.seed) == (root, COUNTS, SIZE, 3)
    assert summary.total_frames == 12
    return root


def files_under(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def fine_label_paths(root: Path, suffix: str, splits: tuple[str, ...] = ("train", "val")) -> list[Path]:
    return sorted(p for s in splits for p in (root / "gtFine" / s).rglob(f"*_gtFine_{suffix}"))


# --- layout ---------------------------------------------------------------------------------------


def test_layout_and_names_parse_with_cityscapesscripts(dataset: Path) -> None:
    for split, count in COUNTS.items():
        gt = "gtCoarse" if split == "train_extra" else "gtFine"
        images = sorted((dataset / "leftImg8bit" / split).glob("*/*"))
        assert len(images) == count
        for image in images:
            info = getCsFileInfo(str(image))
            assert (info.city, info.type, info.type2, info.ext) == (image.parent.name, "leftImg8bit", "", "png")
            assert len(info.sequenceNb) == len(info.frameNb) == 6
            stem = f"{info.city}_{info.sequenceNb}_{info.frameNb}"
            labels = sorted((dataset / gt / split / info.city).glob(f"{stem}_*"))
            assert {p.name.split("_", 4)[-1] for p in labels} == LABEL_SUFFIXES
            for label in labels:
                label_info = getCsFileInfo(str(label))
                assert (label_info.city, label_info.type) == (info.city, gt)
    assert not (dataset / "gtFine" / "train_extra").exists()
    assert not (dataset / "gtCoarse" / "train").exists()


def test_list_frames_finds_and_pairs_every_frame(dataset: Path) -> None:
    for split, count in COUNTS.items():
        frames = list_frames(dataset, split, labels="coarse" if split == "train_extra" else "fine")
        assert len(frames) == count
        assert all(f.label is not None and f.label.is_file() for f in frames)
        assert {f.city for f in frames} == {p.name for p in (dataset / "leftImg8bit" / split).iterdir()}


def test_file_formats_match_cityscapes(dataset: Path) -> None:
    for labels_path in fine_label_paths(dataset, "labelIds.png"):
        stem = str(labels_path)[: -len("labelIds.png")]
        label_ids = cv2.imread(str(labels_path), cv2.IMREAD_UNCHANGED)
        instance_ids = cv2.imread(stem + "instanceIds.png", cv2.IMREAD_UNCHANGED)
        color = cv2.imread(stem + "color.png", cv2.IMREAD_UNCHANGED)
        assert label_ids.shape == SIZE and label_ids.dtype == np.uint8
        assert instance_ids.shape == SIZE and instance_ids.dtype == np.uint16
        assert color.shape == (*SIZE, 4) and color.dtype == np.uint8 and (color[..., 3] == 255).all()
        assert np.array_equal(cv2.cvtColor(color, cv2.COLOR_BGRA2RGB), labelid_to_color(label_ids))
        is_instance = instance_ids >= 1000
        assert np.array_equal(np.where(is_instance, instance_ids // 1000, instance_ids), label_ids)
        for label_id in np.unique(label_ids):
            has_instances = next(lb for lb in name2label.values() if lb.id == label_id).hasInstances
            region = is_instance[label_ids == label_id]
            assert region.all() if has_instances else not region.any()


def test_polygons_reproduce_the_label_maps_with_cityscapesscripts(dataset: Path) -> None:
    for polygons_path in fine_label_paths(dataset, "polygons.json"):
        polygons = json.loads(polygons_path.read_text())
        assert (polygons["imgHeight"], polygons["imgWidth"]) == SIZE
        for obj in polygons["objects"]:
            assert obj["label"] in name2label and len(obj["polygon"]) >= 3
            xs, ys = zip(*obj["polygon"], strict=True)
            assert 0 <= min(xs) <= max(xs) < SIZE[1] and 0 <= min(ys) <= max(ys) < SIZE[0]
        annotation = Annotation()
        annotation.fromJsonFile(str(polygons_path))
        stem = str(polygons_path)[: -len("polygons.json")]
        # PIL and OpenCV rasterise polygon edges slightly differently; the interiors must agree.
        ours = cv2.imread(stem + "labelIds.png", cv2.IMREAD_UNCHANGED)
        assert (np.asarray(createLabelImage(annotation, "ids")) == ours).mean() > 0.98
        ours = cv2.imread(stem + "instanceIds.png", cv2.IMREAD_UNCHANGED)
        assert (np.asarray(createInstanceImage(annotation, "ids")) == ours).mean() > 0.98


def test_test_split_has_placeholder_labels(dataset: Path) -> None:
    for frame in list_frames(dataset, "test"):
        assert set(np.unique(read_label(frame.label))) <= {0, 1, 2, 3}
        assert read_frame(frame)[1] is None


def test_coarse_labels_leave_boundaries_unlabeled(dataset: Path) -> None:
    for frame in list_frames(dataset, "train_extra", labels="coarse"):
        label_ids = read_label(frame.label)
        assert 0.05 < (label_ids == 0).mean() < 0.6
        assert {7, 11, 23} <= set(np.unique(label_ids))  # road, building, sky survive


# --- content --------------------------------------------------------------------------------------


def test_scenes_are_street_like_with_void_labels(dataset: Path) -> None:
    seen: set[int] = set()
    for path in fine_label_paths(dataset, "labelIds.png", ("train",)):
        label_ids = read_label(path)
        seen |= set(np.unique(label_ids).tolist())
        top, bottom = label_ids[: SIZE[0] // 8], label_ids[-SIZE[0] // 4 :]
        assert (top == 23).mean() + (top == 11).mean() + (top == 21).mean() > 0.8  # sky, building, trees
        assert (bottom == 7).mean() > 0.3  # road
    assert {7, 8, 11, 17, 21, 23, 26} <= seen  # road, sidewalk, building, pole, vegetation, sky, car
    assert {1, 2} <= seen and seen & {4, 5, 6, 9}  # ego vehicle, border, and other void labels


def test_class_colours_differ(dataset: Path) -> None:
    pixels: dict[int, list[np.ndarray]] = {}
    for frame in list_frames(dataset, "train") + list_frames(dataset, "val"):
        rgb, train_ids = read_frame(frame)
        for train_id in np.unique(train_ids):
            pixels.setdefault(int(train_id), []).append(rgb[train_ids == train_id].astype(np.float64))
    means = {t: np.concatenate(p).mean(axis=0) for t, p in pixels.items() if t != 255}
    assert len(means) >= 10
    for (a, mean_a), (b, mean_b) in itertools.combinations(means.items(), 2):
        distance = np.linalg.norm(mean_a - mean_b)
        assert distance > 20, f"{TRAIN_CLASSES[a]} and {TRAIN_CLASSES[b]} look alike ({distance:.1f})"


# --- determinism and the root folder --------------------------------------------------------------


def test_same_seed_same_bytes_other_seed_other_images(tmp_path: Path) -> None:
    counts = {"train": 3, "test": 1, "train_extra": 1}
    make_fixture(tmp_path / "a", counts, size=(64, 96), seed=7)
    make_fixture(tmp_path / "b", counts, size=(64, 96), seed=7)
    make_fixture(tmp_path / "c", counts, size=(64, 96), seed=8)
    a, b, c = (files_under(tmp_path / name) for name in "abc")
    assert a == b
    assert a.keys() == c.keys()
    assert all(a[name] != c[name] for name in a if name.endswith("leftImg8bit.png"))


def test_frames_do_not_depend_on_other_splits_counts(tmp_path: Path) -> None:
    make_fixture(tmp_path / "small", {"val": 2}, size=(64, 96))
    make_fixture(tmp_path / "large", {"train": 5, "val": 3}, size=(64, 96))
    small, large = files_under(tmp_path / "small"), files_under(tmp_path / "large")
    assert all(large[name] == data for name, data in small.items() if name != MARKER_FILE)


def test_rerun_replaces_a_previous_fixture(tmp_path: Path) -> None:
    make_fixture(tmp_path, {"train": 4}, size=(64, 96))
    make_fixture(tmp_path, {"val": 1}, size=(64, 96))
    assert not (tmp_path / "leftImg8bit" / "train").exists()
    assert len(list_frames(tmp_path, "val")) == 1
    assert json.loads((tmp_path / MARKER_FILE).read_text())["frames"] == {"val": 1}


def test_refuses_a_foreign_folder_or_file(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(HedprepError, match="folder is not empty"):
        make_fixture(tmp_path, {"train": 1})
    assert (tmp_path / "precious.txt").read_text() == "keep me"
    with pytest.raises(HedprepError, match="precious.txt: exists and is not a folder"):
        make_fixture(tmp_path / "precious.txt", {"train": 1})


@pytest.mark.parametrize(
    ("frames", "size", "message"),
    [
        ({"training": 1}, (64, 64), "unknown split 'training'"),
        ({"train": -1}, (64, 64), "negative"),
        ({"train": 0}, (64, 64), "no frames requested"),
        ({"train": 1}, (16, 64), "at least 32 pixels"),
    ],
)
def test_make_fixture_rejects_bad_arguments(tmp_path: Path, frames: dict, size: tuple, message: str) -> None:
    with pytest.raises(HedprepError, match=message):
        make_fixture(tmp_path, frames, size=size)
