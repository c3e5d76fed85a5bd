"""pipelines.study (`segnet study`) on a tiny fixture: shards, four runs, evaluations, the results table,
reuse on a rerun, and a failing variant reported while the others stand."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest

from hedprep.build_plan import BuildConfig
from hedprep.fixture import make_fixture
from pipelines.study import REPORTED_MIOU, StudyConfig, run_study, sheet_frames, sheet_indices
from segnet.boundary import THRESHOLDS
from segnet.config import TrainConfig, parse_schedule
from segnet.deeplab import VARIANTS
from tests.conftest import BIN, assert_one_line_error, default_sigint, invoke


def study_config(root: Path, out: Path) -> StudyConfig:
    return StudyConfig(out=str(out),
                       train=StudyConfig.run_options(schedule=parse_schedule("32x64:4:1"), backbone_weights="none",
                                                     lr=1e-3, device="cpu"),
                       build=StudyConfig.build_options(str(root), device="cpu", frames_per_shard=4))


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    base = tmp_path_factory.mktemp("study")
    make_fixture(base / "cityscapes", {"train": 8, "val": 4, "test": 0}, size=(64, 128), seed=12)
    lines: list[str] = []
    result = run_study(study_config(base / "cityscapes", base / "out"), on_log=lines.append)
    return base, result, lines


def test_every_variant_is_trained_evaluated_and_tabulated(study):
    base, result, lines = study
    out = base / "out"
    assert [row.variant for row in result.rows] == list(VARIANTS) and not any(row.error for row in result.rows)
    assert all((out / "shards" / split / "manifest.json").is_file() for split in ("train", "val"))
    with open(result.results_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["variant"] for r in rows] == list(VARIANTS)
    page = result.results_md.read_text()
    for row in rows:
        scores = json.loads((out / "runs" / row["variant"] / "val.json").read_text())
        assert row["miou"] == f"{100 * scores['miou']:.2f}"
        assert float(row["reported_miou"]) == REPORTED_MIOU[row["variant"]]
        assert row["pixel_accuracy"] == f"{100 * scores['pixel_accuracy']:.2f}"
        assert row["road"] == f"{100 * scores['iou']['road']:.2f}" and float(row["train_seconds"]) > 0
        boundary = [f"{100 * e['mean']:.2f}" for e in scores["boundary_f"]]
        assert [row[f"boundary_f_{th}"] for th in THRESHOLDS] == boundary  # mean boundary F per threshold
        assert (f"| {row['variant']} | {row['miou']} | {row['reported_miou']} | {' | '.join(boundary)} | "
                f"{row['pixel_accuracy']} |") in page
    # the fixture's 64x128 labels: every tolerance is 1 px
    assert "| variant | mIoU | reported mIoU | BF 1 px | BF 1 px | BF 1 px | BF 1 px | pixel accuracy |" in page
    assert "| dlse-hed |" in page and "38.83" in page and "schedule: 32x64:4:1" in page and "train 8, val 4" in page
    assert "recipe: the defaults (the study's recipe, configs/study.toml); adam, weight decay 0.0, lr 0.001" in page
    assert "coarse pretraining: none" in page
    assert sum("training in" in line for line in lines) == 4


def test_the_study_passes_its_options_to_the_build_and_the_runs(study, tmp_path):
    train = StudyConfig.run_options(schedule=parse_schedule("32x64:4:1"), device="cpu", amp=True, seed=7)
    config = StudyConfig(out=str(tmp_path), train=train,
                         build=StudyConfig.build_options("cityscapes", device="cpu", precision="bf16", batch_size=3,
                                                         workers=2, levels=2, frames_per_shard=5))
    build = config.build_config("val")
    assert build == replace(config.build, split="val", out=str(tmp_path / "shards"))
    assert (build.root, build.split, build.out, build.device, build.precision, build.batch_size, build.workers,
            build.levels, build.frames_per_shard) == ("cityscapes", "val", str(tmp_path / "shards"), "cpu", "bf16", 3,
                                                      2, 2, 5)
    run = config.train_config("dlse")
    assert run == replace(train, variant="dlse", shards=str(tmp_path / "shards"), out=str(tmp_path / "runs" / "dlse"))
    assert (run.variant, run.out, run.device, run.amp, run.seed, run.schedule) == (
        "dlse", str(tmp_path / "runs" / "dlse"), "cpu", True, 7, train.schedule)
    assert run.schedule is not train.schedule  # each run's own list
    assert config.train_config("vanilla").variant == "vanilla" and config.train.variant == ""  # the template stays
    base, _, _ = study  # the fixture's study: built and trained as its config says
    saved = json.loads((base / "out" / "runs" / "dlse" / "config.json").read_text())
    assert saved["device"] == "cpu" and saved["amp"] is False and saved["lr"] == 1e-3
    manifest = json.loads((base / "out" / "shards" / "val" / "manifest.json").read_text())
    assert manifest["params"]["precision"] == "fp32" and manifest["params"]["frames_per_shard"] == 4


def test_a_study_runs_and_builds_with_the_libraries_defaults_but_for_its_own_options(tmp_path):
    """A default study's run is `segnet train`'s defaults, its build `hedprep build`'s: config.json as before."""
    config = StudyConfig(out=str(tmp_path))
    shards = str(tmp_path / "shards")
    assert config.variants == VARIANTS
    run = TrainConfig("dlse", shards, str(tmp_path / "runs" / "dlse"))
    assert config.train_config("dlse") == run and config.train_config("dlse").to_json() == run.to_json()
    assert config.build_config("train") == BuildConfig(root=None, split="train", out=shards)


def test_with_coarse_builds_the_coarse_split_and_gives_every_run_its_stage(monkeypatch, tmp_path):
    """`segnet study --with-coarse --coarse-epochs N` as the study receives it (run_study stubbed: a run's
    coarse stage is tested in tests/test_train.py), and as results.md reports it."""
    from pipelines.study import StudyResult, results_table_md
    from segnet.config import Stage

    seen = []

    def record(config, **hooks):
        seen.append(config)
        return StudyResult(Path(config.out), [], Path(config.out) / "results.csv", Path(config.out) / "results.md")

    monkeypatch.setattr("pipelines.study.run_study", record)
    for extra in ([], ["--with-coarse", "--coarse-epochs", "3"]):
        result = invoke("segnet", "study", "--out", str(tmp_path), "--schedule", "32x64:4:2,64x128:2", *extra)
        assert result.returncode == 0, result.stderr
    plain, coarse = seen
    assert not plain.with_coarse and plain.splits == ("train", "val")
    assert plain.train_config("dlse").coarse_split is None and len(plain.train_config("dlse").stages) == 2
    assert coarse.with_coarse and coarse.splits == ("train", "val", "train_extra")
    assert coarse.build_config("train_extra").labels == "coarse" and coarse.build_config("train").labels == "fine"
    run = coarse.train_config("dlse")
    assert (run.coarse_split, run.coarse_epochs) == ("train_extra", 3) and coarse.train.coarse_split is None
    assert run.stages[0] == Stage(32, 64, 4, 3, split="train_extra") and len(run.stages) == 3
    page = results_table_md([], coarse, {"train": 8, "val": 4, "train_extra": 2})
    assert "coarse pretraining: 3 epoch(s) on train_extra (gtCoarse labels) at 32x64, batch 4" in page
    assert "frames: train 8, val 4, train_extra 2" in page


def test_a_rerun_reuses_everything(study):
    base, first, _ = study
    runs = base / "out" / "runs"
    before = {p: p.stat().st_mtime_ns for p in runs.glob("*/*") if p.suffix in (".pt", ".json")}
    lines: list[str] = []
    again = run_study(study_config(base / "cityscapes", base / "out"), on_log=lines.append)
    assert {p: p.stat().st_mtime_ns for p in before} == before  # no run trained, no evaluation redone
    assert sum("reused" in line for line in lines) == 4 and not any("training" in line for line in lines)
    assert [r.miou for r in again.rows] == [r.miou for r in first.rows]


def test_a_failing_variant_is_reported_and_the_others_stand(study, tmp_path):
    base, first, _ = study
    out = tmp_path / "out"
    shutil.copytree(base / "out", out, copy_function=os.link)  # hard links: checkpoints are ~0.5 GB each
    damaged = out / "runs" / "dlse" / "last.pt"
    damaged.unlink()  # a file of its own, not the shared link
    damaged.write_bytes(b"not a checkpoint")
    older = out / "runs" / "vanilla" / "val.json"  # an evaluation from before the boundary F: redone
    figures = json.loads(older.read_text())
    del figures["boundary_f"]
    older.unlink()  # a file of its own, not the shared link
    older.write_text(json.dumps(figures))
    result = run_study(study_config(base / "cityscapes", out))
    assert json.loads(older.read_text()) == json.loads((base / "out" / "runs" / "vanilla" / "val.json").read_text())
    failed = [row for row in result.rows if row.error]
    assert [row.variant for row in failed] == ["dlse"] and "last.pt" in failed[0].error
    assert [r.miou for r in result.rows if not r.error] == [r.miou for r in first.rows if r.variant != "dlse"]
    assert "failed: " in result.results_md.read_text()
    sheet = sheet_frames(out / "shards", result.rows, 2, device="cpu")
    assert all(frame.predictions["dlse"] is None and frame.predictions["vanilla"] is not None for frame in sheet)


def test_unknown_variants_are_refused(tmp_path):
    result = invoke("segnet", "study", "--out", str(tmp_path / "s"), "--variants", "vanilla,bsds")
    assert_one_line_error(result, "--variants vanilla,bsds", "dlse-hed", status=2)
    assert not (tmp_path / "s").exists()


def test_the_figures_are_drawn_and_linked(study):
    import cv2
    import numpy as np

    base, result, _ = study
    page = result.results_md.read_text()
    for name in ("miou", "class_iou", "training_curves", "qualitative"):
        path = base / "out" / "plots" / f"{name}.png"
        assert f"(plots/{name}.png)" in page
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        assert image is not None and image.shape[0] > 200 and image.shape[1] > 400
        assert len(np.unique(image.reshape(-1, 3), axis=0)) > 10  # not blank
    bars = cv2.cvtColor(cv2.imread(str(base / "out" / "plots" / "miou.png")), cv2.COLOR_BGR2RGB)
    ours = (np.abs(bars.astype(int) - (0x1F, 0x77, 0xB4)).sum(axis=2) < 10).sum()
    reported = (np.abs(bars.astype(int) - (0xBB, 0xBB, 0xBB)).sum(axis=2) < 10).sum()
    assert ours > 100 and reported > ours  # the reported mIoUs (38-60%) stand above ours from 1 fixture epoch
    boundary = (np.abs(bars.astype(int) - (0xD9, 0x48, 0x01)).sum(axis=2) < 10).sum()
    assert boundary > 100  # the boundary F panel's bars (one of its four tolerances)


def test_sheet_indices_spread_over_the_split():
    assert sheet_indices(10, 3) == [0, 4, 9] and sheet_indices(10, 1) == [0]
    assert sheet_indices(2, 3) == [0, 1] and sheet_indices(1, 3) == [0]
    assert sheet_indices(0, 3) == [] and sheet_indices(5, 0) == []


def test_the_sheet_shows_the_frames_and_the_evaluated_predictions(study, tmp_path):
    import cv2
    import numpy as np

    from hedprep.shards import open_split, trainid_to_color, trainid_to_labelid
    from segnet.evaluate import evaluate

    base, result, _ = study
    shards = base / "out" / "shards"
    frames = sheet_frames(shards, result.rows, 3, device="cpu")
    with open_split(shards, "val") as reader:
        assert [f.frame_id for f in frames] == [reader.frame_ids[i] for i in (0, 2, 3)]
        stored = reader.read(3)
    assert np.array_equal(frames[-1].image, stored.frame[..., :3])
    assert np.array_equal(frames[-1].edge, stored.frame[..., 3]) and np.array_equal(frames[-1].label, stored.label)
    # each variant's column is what `segnet evaluate --save-predictions` writes for that frame
    for variant in ("vanilla", "dlse-hed"):
        evaluate(base / "out" / "runs" / variant / "best.pt", shards, "val", save_predictions=tmp_path / variant,
                 device="cpu")
        for frame in frames:
            written = cv2.imread(str(tmp_path / variant / f"{frame.frame_id}_pred_labelIds.png"), cv2.IMREAD_UNCHANGED)
            shown = trainid_to_labelid(frame.predictions[variant])
            assert shown.shape == written.shape and (shown == written).mean() > 0.999
    # the ground-truth column is drawn in Cityscapes colours, pixel for pixel
    sheet = cv2.cvtColor(cv2.imread(str(base / "out" / "plots" / "qualitative.png")), cv2.COLOR_BGR2RGB)
    for train_id in np.unique(frames[0].label[frames[0].label != 255])[:5]:
        color = trainid_to_color(np.array([[train_id]], dtype=np.uint8))[0, 0]
        assert (sheet == color).all(axis=2).sum() > 20, f"class {train_id} colour missing from the sheet"


STRONG = Path(__file__).resolve().parents[1] / "configs" / "strong.toml"


def start_study(root: Path, out: Path) -> subprocess.Popen:
    """The strong recipe's study of two variants, at a tiny size (the command line overrides the file)."""
    command = [str(BIN / "segnet"), "study", "--config", str(STRONG), "--root", str(root), "--out", str(out),
               "--variants", "vanilla,dlse-hed", "--schedule", "32x64:4:2", "--backbone-weights", "none",
               "--lr", "1e-3", "--output-stride", "16", "--device", "cpu", "--frames-per-shard", "4"]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=default_sigint)


@pytest.mark.slow
def test_a_study_killed_midway_resumes_on_rerun(study, tmp_path):
    base, _, _ = study
    out = tmp_path / "out"
    shutil.copytree(base / "out" / "shards", out / "shards")  # the build's own resume is tested in test_build
    killed = start_study(base / "cityscapes", out)
    run = out / "runs" / "dlse-hed"
    deadline = time.monotonic() + 300
    while not (run / "last.pt").exists():  # vanilla done, dlse-hed's 1st epoch saved (renamed into place whole)
        assert time.monotonic() < deadline and killed.poll() is None, killed.stderr.read() if killed.poll() else ""
        time.sleep(0.05)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait(timeout=60)
    assert not (out / "results.csv").exists()
    vanilla_last = (out / "runs" / "vanilla" / "last.pt").stat().st_mtime_ns
    rerun = start_study(base / "cityscapes", out)
    stdout, stderr = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, stderr
    assert "vanilla: run finished before, reused" in stderr and "dlse-hed: resuming" in stderr
    assert (out / "runs" / "vanilla" / "last.pt").stat().st_mtime_ns == vanilla_last
    assert "resumed from" in (run / "log.txt").read_text()
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]  # no epoch trained twice into the record
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["variant"] for r in rows] == ["vanilla", "dlse-hed"] and all(r["miou"] and not r["error"] for r in rows)
    assert "results.md" in stdout and (out / "plots" / "qualitative.png").is_file()
    page = (out / "results.md").read_text()
    assert f"recipe: {STRONG}; sgd (momentum 0.9), weight decay 0.0005, lr 0.001 poly to 0.0001" in page


def test_runs_of_other_options_are_reported_not_reused_or_overwritten(study, tmp_path):
    base, _, _ = study
    out = tmp_path / "out"
    shutil.copytree(base / "out", out, copy_function=os.link)
    before = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/*.pt")}
    config = study_config(base / "cityscapes", out)
    config.train.schedule = parse_schedule("32x64:4:2")  # as many stages, one more epoch: not the runs' schedule
    result = run_study(config)
    assert all(row.error and "other options (schedule" in row.error and "another --out" in row.error
               for row in result.rows)
    assert {p: p.stat().st_mtime_ns for p in before} == before


def test_variants_take_every_name_and_all():
    from pipelines.study import parse_variants
    from segnet.deeplab import ALL_VARIANTS, EDGE_LOSS_VARIANTS
    from segnet.errors import SegnetOptionError

    assert parse_variants("all") == ALL_VARIANTS == VARIANTS + EDGE_LOSS_VARIANTS
    assert parse_variants(" vanilla, dl-hed-loss ") == ("vanilla", "dl-hed-loss")
    for text in ("vanilla,all", "", "dl-edge"):
        with pytest.raises(SegnetOptionError, match="choose from vanilla, .*, dl-hed-loss, or all"):
            parse_variants(text)


def test_the_boundary_variant_is_studied_and_its_boundaries_drawn(study, tmp_path, monkeypatch):
    """dl-boundary and dl-hed-loss in the study: trained, evaluated as vanilla is, and the sheet shows
    dl-boundary's head's map (dl-hed-loss has no head)."""
    import cv2

    import pipelines.study

    drawn, draw = [], pipelines.study.write_sheet
    monkeypatch.setattr(pipelines.study, "write_sheet", lambda frames, *a: drawn.append(frames) or draw(frames, *a))
    base, _, _ = study
    out = tmp_path / "out"
    shutil.copytree(base / "out" / "shards", out / "shards", copy_function=os.link)
    result = run_study(replace(study_config(base / "cityscapes", out), variants=("dl-boundary", "dl-hed-loss")))
    assert [(row.variant, row.error) for row in result.rows] == [("dl-boundary", None), ("dl-hed-loss", None)]
    assert all(row.miou >= 0 and len(row.boundary_f) == len(THRESHOLDS) for row in result.rows)
    for frame in drawn[0]:  # sheet_frames' maps (segnet.evaluate.frame_predictions), at the labels' size
        assert set(frame.boundaries) == {"dl-boundary"} and frame.boundaries["dl-boundary"].shape == frame.label.shape
    sheet = cv2.imread(str(out / "plots" / "qualitative.png"))
    assert len(drawn[0]) == 3 and sheet.shape[1] > 5 * 320  # image, edge, truth, prediction, boundaries
