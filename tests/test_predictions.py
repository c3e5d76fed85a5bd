"""segnet.predictions: Cityscapes prediction files, scored by cityscapesscripts' official evaluator to
the same figures as segnet.metrics; colour files and overlays."""

from __future__ import annotations

import errno
import math
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from hedprep.cityscapes import labelid_to_trainid
from hedprep.fixture import make_fixture
from hedprep.shards import IGNORE_INDEX, TRAIN_CLASSES, trainid_to_color, trainid_to_labelid
from segnet.errors import SegnetError
from segnet.metrics import ConfusionMatrix, evaluation_result
from segnet.predictions import overlay, write_prediction_pngs
from tests.conftest import official_scores

SKY, TRAIN, MOTORCYCLE = (TRAIN_CLASSES.index(name) for name in ("sky", "train", "motorcycle"))
EVAL_LABELIDS = trainid_to_labelid(np.arange(len(TRAIN_CLASSES)))  # row/column of each trainId in theirs


@pytest.fixture(scope="module")
def ground_truth(tmp_path_factory) -> dict[str, tuple[Path, np.ndarray]]:
    """frame id -> (gtFine labelIds file, its trainIds) of a three-frame val split."""
    root = tmp_path_factory.mktemp("cityscapes")
    make_fixture(root, {"val": 3, "train": 0, "test": 0}, size=(64, 128), seed=1)
    files = sorted((root / "gtFine" / "val").glob("*/*_gtFine_labelIds.png"))
    return {
        path.name.removesuffix("_gtFine_labelIds.png"): (path, labelid_to_trainid(cv2.imread(str(path), -1)))
        for path in files
    }


def perturbed(label: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A prediction as a fair model would make it: the ground truth with 15% of its pixels set to other
    classes, sky never predicted (called building), a block of 'train' (a class the fixture never
    labels), some class at every ignored pixel, motorcycle only at ignored ones."""
    others = np.setdiff1d(np.arange(len(TRAIN_CLASSES)), [SKY, MOTORCYCLE])
    pred = label.copy()
    noise = rng.random(label.shape) < 0.15
    pred[noise] = rng.choice(others, noise.sum())
    pred[label == SKY] = TRAIN_CLASSES.index("building")
    pred[40:48, 10:30] = TRAIN
    ignored = label == IGNORE_INDEX
    pred[ignored] = rng.choice([*others, MOTORCYCLE], ignored.sum())
    return pred


def score_both(ground_truth, out_dir: Path, predictions: dict[str, np.ndarray]):
    """Write the predictions, and score them with cityscapesscripts and with segnet.metrics (on the
    files read back)."""
    written, accumulator = [], ConfusionMatrix()
    for frame_id, (_, label) in ground_truth.items():
        labelids_file, _ = write_prediction_pngs(out_dir, frame_id, predictions[frame_id])
        read_back = labelid_to_trainid(cv2.imread(str(labelids_file), cv2.IMREAD_UNCHANGED))
        accumulator.update(read_back, label)
        written.append(labelids_file)
    theirs = official_scores(written, [path for path, _ in ground_truth.values()])
    return theirs, evaluation_result(accumulator.matrix, len(written))


def test_official_evaluator_agrees_with_segnet_metrics(ground_truth, tmp_path):
    rng = np.random.default_rng(7)
    predictions = {frame_id: perturbed(label, rng) for frame_id, (_, label) in ground_truth.items()}
    labels = np.stack([label for _, label in ground_truth.values()])
    assert (labels == SKY).any() and not np.isin(labels, [TRAIN, MOTORCYCLE]).any()

    theirs, ours = score_both(ground_truth, tmp_path / "results", predictions)

    # The same counts: their labelId matrix on the evaluated classes is ours; the pixels they hold
    # besides are those with an ignored ground truth, which neither side scores.
    their_matrix = np.asarray(theirs["confMatrix"], dtype=np.int64)
    np.testing.assert_array_equal(their_matrix[np.ix_(EVAL_LABELIDS, EVAL_LABELIDS)], ours.matrix)
    assert their_matrix.sum() - ours.matrix.sum() == (labels == IGNORE_INDEX).sum()

    for name in TRAIN_CLASSES:
        their_iou, our_iou = theirs["classScores"][name], ours.iou[name]
        if math.isnan(their_iou):
            assert our_iou is None, name
        else:
            assert our_iou == pytest.approx(their_iou, abs=1e-4), name
    assert ours.miou == pytest.approx(theirs["averageScoreClasses"], abs=1e-4)
    # The cases that decide how a mean is taken: a dropped class counts 0, a class only predicted
    # counts 0, a class predicted only where the ground truth is ignored counts nowhere.
    assert ours.iou["sky"] == theirs["classScores"]["sky"] == 0.0
    assert ours.iou["train"] == theirs["classScores"]["train"] == 0.0
    assert ours.iou["motorcycle"] is None and math.isnan(theirs["classScores"]["motorcycle"])


def test_official_evaluator_counts_a_prediction_of_no_class_as_a_miss(ground_truth, tmp_path):
    """The one documented difference: trainId 255 is written as labelId 0 ("unlabeled"), which
    cityscapesscripts counts as a false negative of the ground-truth class and segnet counts nowhere."""
    predictions = {}
    for frame_id, (_, label) in ground_truth.items():
        pred = np.where(label == IGNORE_INDEX, 0, label)
        pred[:, :16] = IGNORE_INDEX
        predictions[frame_id] = pred
    theirs, ours = score_both(ground_truth, tmp_path / "results", predictions)

    labels = np.stack([label for _, label in ground_truth.values()])
    missed = np.bincount(labels[:, :, :16].ravel(), minlength=256)[: len(TRAIN_CLASSES)]
    tp = np.diag(ours.matrix)
    union = ours.matrix.sum(0) + ours.matrix.sum(1) - tp
    for index, name in enumerate(TRAIN_CLASSES):
        if union[index] + missed[index]:
            assert theirs["classScores"][name] == pytest.approx(tp[index] / (union[index] + missed[index])), name
    assert missed.sum() > 0 and ours.miou > theirs["averageScoreClasses"]


def test_prediction_files_hold_labelids_and_rgb_colours(tmp_path):
    pred = np.arange(20 * 30).reshape(20, 30) % 21  # every class, 19 and 20 are no class
    pred[0, 0] = IGNORE_INDEX
    paths = write_prediction_pngs(tmp_path / "new" / "folder", "lindau_000000_000019", pred)
    assert [p.name for p in paths] == ["lindau_000000_000019_pred_labelIds.png", "lindau_000000_000019_pred_color.png"]
    labelids = np.asarray(Image.open(paths[0]))  # as cityscapesscripts reads it
    assert labelids.dtype == np.uint8 and labelids.shape == pred.shape
    np.testing.assert_array_equal(labelid_to_trainid(labelids), np.where(pred < 19, pred, IGNORE_INDEX))
    colours = np.asarray(Image.open(paths[1]).convert("RGB"))
    np.testing.assert_array_equal(colours, trainid_to_color(pred))
    assert colours[pred == TRAIN_CLASSES.index("car")][0].tolist() == [0, 0, 142]
    assert sorted(os.listdir(paths[0].parent)) == sorted(p.name for p in paths)  # no temporary files left


def test_prediction_files_replace_earlier_ones(tmp_path):
    write_prediction_pngs(tmp_path, "a_000000_000000", np.zeros((4, 4), np.uint8))
    labelids, _ = write_prediction_pngs(tmp_path, "a_000000_000000", np.full((4, 4), 2, np.uint8))
    assert (cv2.imread(str(labelids), cv2.IMREAD_UNCHANGED) == trainid_to_labelid(np.uint8(2))).all()
    assert len(os.listdir(tmp_path)) == 2


@pytest.mark.parametrize("where", ["file", "below a file"])
def test_a_file_as_output_folder_is_a_one_line_error(tmp_path, where):
    blocker = tmp_path / "taken"
    blocker.write_text("x")
    out_dir = blocker if where == "file" else blocker / "sub"
    with pytest.raises(SegnetError, match=str(out_dir)) as error:
        write_prediction_pngs(out_dir, "a_000000_000000", np.zeros((4, 4), np.uint8))
    assert "\n" not in str(error.value) and error.value.path == out_dir


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_unwritable_output_folder_is_a_one_line_error(tmp_path):
    out_dir = tmp_path / "locked"
    out_dir.mkdir()
    out_dir.chmod(0o500)
    try:
        with pytest.raises(SegnetError, match=str(out_dir)):
            write_prediction_pngs(out_dir, "a_000000_000000", np.zeros((4, 4), np.uint8))
    finally:
        out_dir.chmod(0o700)


def test_a_failed_write_is_a_one_line_error_and_leaves_no_file(tmp_path, monkeypatch):
    """What an unwritable folder or a full disk does, also where the tests run as root."""

    def refuse(src, dst):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(SegnetError, match=rf"^{tmp_path}: cannot write a_000000_000000_pred_labelIds.png \(Permission"):
        write_prediction_pngs(tmp_path, "a_000000_000000", np.zeros((4, 4), np.uint8))
    assert os.listdir(tmp_path) == []


def test_bad_prediction_arguments_raise(tmp_path):
    with pytest.raises(ValueError, match="trainId map"):
        write_prediction_pngs(tmp_path, "a_000000_000000", np.zeros((1, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="frame id"):
        write_prediction_pngs(tmp_path, "../a_000000_000000", np.zeros((4, 4), np.uint8))


def test_overlay_blends_image_and_class_colours():
    image = np.full((2, 3, 3), 100, np.uint8)
    pred = np.array([[0, 13, 255], [10, 2, 19]])
    colours = trainid_to_color(pred).astype(float)
    np.testing.assert_array_equal(overlay(image, pred, alpha=0.0), image)
    full = overlay(image, pred, alpha=1.0)
    np.testing.assert_array_equal(full[0, :2], colours[0, :2])
    np.testing.assert_array_equal(full[:, 2], image[:, 2])  # no class: the image shows through
    half = overlay(image, pred)
    assert half.dtype == np.uint8
    np.testing.assert_array_equal(half[0, 1], np.rint((100 + colours[0, 1]) / 2))
    with pytest.raises(ValueError, match="differs"):
        overlay(image, pred[:, :2])
    with pytest.raises(ValueError, match="alpha"):
        overlay(image, pred, alpha=1.5)
