"""segnet.metrics: the confusion matrix, IoUs and mIoU against figures worked out by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from hedprep.shards import TRAIN_CLASSES
from segnet.metrics import (
    ConfusionMatrix,
    EvalResult,
    confusion_matrix,
    evaluation_result,
    iou_per_class,
    mean_iou,
    pixel_accuracy,
)

# Two 2x4 frames, five classes: class 3 is only predicted, class 4 occurs nowhere, 255 is ignored
# (whatever is predicted there).
LABEL = np.array(
    [
        [[0, 0, 1, 255], [2, 2, 1, 0]],
        [[255, 255, 0, 1], [1, 1, 2, 2]],
    ],
    dtype=np.uint8,
)
PRED = np.array(
    [
        [[0, 1, 1, 2], [2, 0, 1, 0]],
        [[1, 0, 0, 3], [1, 2, 2, 2]],
    ]
)
# rows = ground truth, columns = prediction
EXPECTED = np.array(
    [
        [3, 1, 0, 0, 0],
        [0, 3, 1, 1, 0],
        [1, 0, 3, 0, 0],
        [0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0],
    ]
)
# TP / (TP + FP + FN): 3/(3+1+1), 3/(3+1+2), 3/(3+1+1), 0/(0+1+0), no pixel
EXPECTED_IOU = [3 / 5, 3 / 6, 3 / 5, 0.0, math.nan]
EXPECTED_MIOU = (3 / 5 + 3 / 6 + 3 / 5 + 0.0) / 4  # class 4 is left out, class 3 counts as 0
EXPECTED_ACCURACY = 9 / 13  # 16 pixels, 3 ignored


def test_confusion_matrix_by_hand_batched_and_per_frame():
    matrix = confusion_matrix(PRED, LABEL, num_classes=5)
    assert matrix.dtype == np.int64
    np.testing.assert_array_equal(matrix, EXPECTED)
    per_frame = sum(confusion_matrix(p, lb, num_classes=5) for p, lb in zip(PRED, LABEL, strict=True))
    np.testing.assert_array_equal(per_frame, EXPECTED)


def test_confusion_matrix_takes_tensors():
    matrix = confusion_matrix(torch.from_numpy(PRED), torch.from_numpy(LABEL), num_classes=5)
    np.testing.assert_array_equal(matrix, EXPECTED)
    np.testing.assert_array_equal(confusion_matrix(torch.from_numpy(PRED), LABEL, num_classes=5), EXPECTED)


def test_iou_miou_and_accuracy_by_hand():
    np.testing.assert_allclose(iou_per_class(EXPECTED), EXPECTED_IOU, equal_nan=True)
    assert mean_iou(EXPECTED) == pytest.approx(EXPECTED_MIOU)
    assert pixel_accuracy(EXPECTED) == pytest.approx(EXPECTED_ACCURACY)


def test_predictions_outside_the_classes_count_in_no_cell():
    label = np.array([[0, 1, 1, 255]])
    pred = np.array([[0, -1, 19, 40]])
    matrix = confusion_matrix(pred, label)
    assert matrix.sum() == 1 and matrix[0, 0] == 1


def test_bad_labels_and_shapes_raise():
    with pytest.raises(ValueError, match="neither classes"):
        confusion_matrix(np.zeros((2, 2), int), np.array([[0, 19], [254, 255]]))
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(np.zeros((2, 2), int), np.zeros((2, 3), int))


def test_accumulator_equals_one_call_and_ranks_merge():
    rng = np.random.default_rng(0)
    label = rng.integers(0, 19, (6, 16, 24)).astype(np.uint8)
    label[rng.random(label.shape) < 0.2] = 255
    pred = rng.integers(0, 19, label.shape)
    whole = confusion_matrix(pred, label)

    accumulator = ConfusionMatrix()
    for start in range(0, 6, 2):
        accumulator.update(torch.from_numpy(pred[start : start + 2]), torch.from_numpy(label[start : start + 2]))
    np.testing.assert_array_equal(accumulator.matrix, whole)

    ranks = [ConfusionMatrix() for _ in range(3)]
    for index in range(6):
        ranks[index % 3].update(pred[index], label[index])
    np.testing.assert_array_equal((ranks[0] + ranks[1] + ranks[2]).matrix, whole)
    np.testing.assert_array_equal(sum(ranks).matrix, whole)
    np.testing.assert_array_equal(ranks[0].merge(ranks[1]).merge(ranks[2]).matrix, whole)


def test_merging_different_matrices_raises():
    with pytest.raises(ValueError, match="cannot merge"):
        ConfusionMatrix(19) + ConfusionMatrix(5)


def test_empty_matrix_has_nan_scores_and_null_json():
    result = evaluation_result(np.zeros((19, 19), np.int64), frames=0)
    assert math.isnan(result.miou) and math.isnan(result.pixel_accuracy)
    assert set(result.iou.values()) == {None}
    figures = result.to_json()
    assert figures["miou"] is None and figures["pixel_accuracy"] is None
    json.dumps(figures, allow_nan=False)


def test_evaluation_result_names_the_train_classes():
    rng = np.random.default_rng(1)
    label = rng.integers(0, 10, (2, 8, 8))  # classes 10..18 occur nowhere
    pred = np.where(rng.random(label.shape) < 0.8, label, rng.integers(0, 10, label.shape))
    result = evaluation_result(confusion_matrix(pred, label), frames=2)
    assert isinstance(result, EvalResult)
    assert list(result.iou) == list(TRAIN_CLASSES)
    assert [result.iou[name] is None for name in TRAIN_CLASSES] == [False] * 10 + [True] * 9
    figures = json.loads(json.dumps(result.to_json(), allow_nan=False))
    assert figures["miou"] == pytest.approx(np.mean([result.iou[name] for name in TRAIN_CLASSES[:10]]))
    assert 0 <= figures["miou"] <= 1 and 0 <= figures["pixel_accuracy"] <= 1
    assert figures["frames"] == 2 and figures["pixels"] == 128
    with pytest.raises(ValueError, match="class names"):
        evaluation_result(np.zeros((5, 5)), frames=1)
