"""segnet evaluate and predict with checkpoints trained on fixture shards: the scores agree with
cityscapesscripts' official evaluator on the saved predictions; predict on a val frame's PNG gives the
prediction evaluate saves for that frame; bad checkpoints are one line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from hedprep.shards import TRAIN_CLASSES, open_split
from segnet.boundary import THRESHOLDS
from segnet.config import TrainConfig, parse_schedule
from segnet.errors import SegnetError
from segnet.evaluate import evaluate, predict_frames
from segnet.predict import predict
from segnet.train import train
from tests.conftest import GOLDEN, assert_one_line_error, invoke, official_scores
from tests.test_boundary import reference_scores


def trained(shards: Path, out: Path, variant: str, schedule: str = "48x96:4:3") -> Path:
    train(TrainConfig(variant=variant, shards=str(shards), out=str(out), schedule=parse_schedule(schedule),
                      backbone_weights="none", device="cpu", workers=0, lr=1e-3))
    return out / "last.pt"


@pytest.fixture(scope="module")
def vanilla(segnet_shards, tmp_path_factory) -> Path:
    return trained(segnet_shards, tmp_path_factory.mktemp("eval") / "vanilla", "vanilla")


@pytest.fixture(scope="module")
def dlse_hed(segnet_shards, tmp_path_factory) -> Path:
    return trained(segnet_shards, tmp_path_factory.mktemp("eval") / "dlse-hed", "dlse-hed", schedule="48x96:4:1")


def test_saved_predictions_score_the_same_in_the_official_evaluator(segnet_shards, vanilla, tmp_path):
    outcome = evaluate(vanilla, segnet_shards, "val", save_predictions=tmp_path / "pred", device="cpu")
    assert outcome.frames == 4 and outcome.predictions_written == 4 and outcome.eval_size == (48, 96)
    predictions = sorted((tmp_path / "pred").glob("*_pred_labelIds.png"))
    ground_truth = {p.name.replace("_gtFine_labelIds.png", ""): p
                    for p in (segnet_shards.parent / "cityscapes" / "gtFine" / "val").glob("*/*_labelIds.png")}
    pairs = [(p, ground_truth[p.name.replace("_pred_labelIds.png", "")]) for p in predictions]
    label = cv2.imread(str(pairs[0][1]), cv2.IMREAD_UNCHANGED)
    assert cv2.imread(str(pairs[0][0]), cv2.IMREAD_UNCHANGED).shape == label.shape  # full resolution
    theirs = official_scores([p for p, _ in pairs], [g for _, g in pairs])
    ours = outcome.result
    assert ours.miou == pytest.approx(theirs["averageScoreClasses"], abs=1e-4)
    for name in TRAIN_CLASSES:
        if math.isnan(theirs["classScores"][name]):
            assert ours.iou[name] is None, name
        else:
            assert ours.iou[name] == pytest.approx(theirs["classScores"][name], abs=1e-4), name
    color = tmp_path / "pred" / pairs[0][0].name.replace("_pred_labelIds.png", "_pred_color.png")
    assert 0 < ours.pixel_accuracy <= 1 and color.exists()


def test_evaluate_command_prints_a_table_and_writes_json(segnet_shards, vanilla, tmp_path):
    result = invoke("segnet", "evaluate", "--checkpoint", str(vanilla), "--shards", str(segnet_shards),
                    "--eval-size", "64x128", "--json", str(tmp_path / "scores.json"), "--device", "cpu")
    assert result.returncode == 0, result.stderr
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert set(scores) >= {"miou", "iou", "pixel_accuracy"} and set(scores["iou"]) == set(TRAIN_CLASSES)
    assert "mIoU" in result.stdout and "64x128" in result.stdout and f"{100 * scores['miou']:.2f}" in result.stdout
    # The boundary F of the maps evaluate scored (predict_frames makes the same), by the test's own reading
    # of the definition; every tolerance is 1 px on the fixture's 64x128 labels (diagonal 143 px).
    with open_split(segnet_shards, "val") as reader:
        labels = [reader.read(i).label for i in range(len(reader))]
    maps = predict_frames(vanilla, segnet_shards, "val", list(range(len(labels))), device="cpu", eval_size=(64, 128))
    ((mean_f, per_class),) = reference_scores(list(zip(maps, labels, strict=True)), len(TRAIN_CLASSES), THRESHOLDS[:1])
    assert [entry["threshold"] for entry in scores["boundary_f"]] == list(THRESHOLDS)
    for entry in scores["boundary_f"]:
        assert entry["pixels"] == 1 and entry["mean"] == pytest.approx(mean_f, abs=1e-12)
        assert list(entry["per_class"]) == list(TRAIN_CLASSES)
        assert [entry["per_class"][name] is None for name in TRAIN_CLASSES] == [v is None for v in per_class]
        assert [v for v in entry["per_class"].values() if v is not None] == pytest.approx(
            [v for v in per_class if v is not None], abs=1e-12)
    assert 0 < mean_f < 1 and sum(v is not None for v in per_class) >= 3
    assert "BF 1 px" in result.stdout and f"{100 * mean_f:.2f}" in result.stdout
    road = next(line for line in result.stdout.splitlines() if line.strip().startswith("road "))
    assert road.split()[-4:] == [f"{100 * per_class[0]:.2f}"] * 4  # the road row's boundary F columns


def test_test_split_gets_predictions_only(segnet_shards, vanilla, tmp_path):
    result = invoke("segnet", "evaluate", "--checkpoint", str(vanilla), "--shards", str(segnet_shards),
                    "--split", "test", "--save-predictions", str(tmp_path / "pred"), "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert "no public labels" in result.stdout and len(list((tmp_path / "pred").glob("*_labelIds.png"))) == 2


def test_bad_checkpoints_are_one_line(segnet_shards, vanilla, tmp_path):
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(vanilla.read_bytes()[:5000])
    foreign = tmp_path / "foreign.pt"
    import torch

    torch.save({"weights": torch.zeros(2)}, foreign)
    for path, fragment in [(truncated, "not a readable checkpoint"), (foreign, "not a segnet checkpoint"),
                           (tmp_path / "missing.pt", "no such checkpoint file")]:
        result = invoke("segnet", "evaluate", "--checkpoint", str(path), "--shards", str(segnet_shards))
        assert_one_line_error(result, str(path), fragment)
    with pytest.raises(SegnetError, match="no built split here"):
        evaluate(vanilla, tmp_path, "val", device="cpu")


def test_predict_on_photographs_of_any_size(dlse_hed, tmp_path):
    photos = [GOLDEN / "chelsea_37x53.png", GOLDEN / "rocket_333x501.png"]
    results = predict(dlse_hed, photos, tmp_path / "pred", device="cpu")
    for photo, result in zip(photos, results, strict=True):
        image = cv2.imread(str(photo))
        for path in (result.color, result.overlay):
            assert cv2.imread(str(path)).shape == image.shape
    colors = cv2.imread(str(results[1].color))
    assert len(np.unique(colors.reshape(-1, 3), axis=0)) >= 1
    missing = invoke("segnet", "predict", "--checkpoint", str(dlse_hed), "--out", str(tmp_path / "o"),
                     str(tmp_path / "nope.png"))
    assert_one_line_error(missing, "nope.png", "no such file")


# dlse-hed at 48x96, the checkpoints' last stage: the fixture's 64x128 frames read at full size, edges
# and all. vanilla at 24x48: frames read from their 32x64 level, which predict must make from the PNG as
# the build made it (the level is the same function of the pixels for either variant).
@pytest.mark.parametrize(("variant", "eval_size"), [("dlse_hed", "48x96"), ("vanilla", "24x48")])
def test_predict_on_a_val_frames_png_gives_the_prediction_evaluate_saves(segnet_shards, variant, eval_size, request,
                                                                         tmp_path):
    """Both read the same pixels (the PNG, stored losslessly in the shards; for dlse-hed the edges that
    predict computes with the build's HED, fp32 and uint8 rounding) and predict through one function,
    so every pixel agrees, not merely most."""
    checkpoint = str(request.getfixturevalue(variant))
    photos = sorted((segnet_shards.parent / "cityscapes" / "leftImg8bit" / "val").glob("*/*_leftImg8bit.png"))
    evaluated = invoke("segnet", "evaluate", "--checkpoint", checkpoint, "--shards", str(segnet_shards),
                       "--eval-size", eval_size, "--save-predictions", str(tmp_path / "evaluated"), "--device", "cpu",
                       "--no-boundary-f", "--json", str(tmp_path / "scores.json"))
    predicted = invoke("segnet", "predict", "--checkpoint", checkpoint, "--out", str(tmp_path / "predicted"),
                       "--eval-size", eval_size, "--device", "cpu", *map(str, photos))
    assert evaluated.returncode == 0 and predicted.returncode == 0, evaluated.stderr + predicted.stderr
    assert "BF " not in evaluated.stdout and "mIoU" in evaluated.stdout  # --no-boundary-f: mIoU only
    assert "boundary_f" not in json.loads((tmp_path / "scores.json").read_text())
    classes = set()
    for photo in photos:
        frame_id = photo.name.removesuffix("_leftImg8bit.png")
        saved = cv2.imread(str(tmp_path / "evaluated" / f"{frame_id}_pred_color.png"))
        ours = cv2.imread(str(tmp_path / "predicted" / f"{photo.stem}_pred_color.png"))
        assert ours.shape == saved.shape == (64, 128, 3)
        assert np.array_equal(ours, saved), f"{frame_id}: {(ours != saved).any(axis=2).sum()} pixels differ"
        classes.update(map(tuple, np.unique(saved.reshape(-1, 3), axis=0)))
    assert len(classes) >= 3  # predictions with class borders, where a resize that differs would show
