"""segnet train on real fixture shards: the run folder, resume (interrupted anywhere, killed), errors,
and a two-process torchrun run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from segnet.checkpoint import load_checkpoint
from segnet.config import TrainConfig, parse_schedule
from segnet.errors import SegnetError
from segnet.train import Interrupted, TrainCallbacks, train
from tests.conftest import BIN, assert_one_line_error, default_sigint, invoke

TINY = "32x64:4:2"


def config(shards: Path, out: Path, variant: str = "vanilla", schedule: str = TINY, **options) -> TrainConfig:
    return TrainConfig(variant=variant, shards=str(shards), out=str(out), schedule=parse_schedule(schedule),
                       backbone_weights="none", device="cpu", workers=options.pop("workers", 0),
                       lr=options.pop("lr", 1e-3), **options)


def tensorboard_scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """A run folder's scalars as TensorBoard reads them (every event file; steps a resume purged left out)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run), size_guidance={"scalars": 0})  # 0: keep every point
    events.Reload()
    return {tag: [(event.step, event.value) for event in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def metric_rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def same_weights(a: Path, b: Path) -> bool:
    first, second = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


@pytest.fixture(scope="module")
def uninterrupted(segnet_shards, tmp_path_factory) -> Path:
    """A vanilla run of two stages (2 + 1 epochs) that nothing interrupts: the reference for resumes."""
    run = tmp_path_factory.mktemp("runs") / "reference"
    train(config(segnet_shards, run, schedule="32x64:4:2,48x96:4:1"))
    return run


def test_run_folder_holds_config_metrics_and_checkpoints(uninterrupted):
    run = uninterrupted
    saved = json.loads((run / "config.json").read_text())
    assert saved["variant"] == "vanilla" and saved["schedule"] == ["32x64:4:2", "48x96:4:1"]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["epoch"]) for r in rows] == [(1, 1), (1, 2), (2, 1)]
    assert all(0 <= r["val_miou"] <= 1 and r["images_per_s"] > 0 and r["loss"] > 0 for r in rows)
    assert rows[-1]["step"] == 2 + 2 + 2  # 8 frames in batches of 4, 3 epochs
    header = (run / "metrics.csv").read_text().splitlines()[0]
    assert header == "stage,epoch,step,loss,val_miou,images_per_s,lr,seconds"
    checkpoint = load_checkpoint(run / "last.pt")
    assert checkpoint["variant"] == "vanilla" and checkpoint["next"] == {"stage": 2, "epoch": 0, "batch": 0}
    assert {"model", "optimizer", "config", "rng", "metrics", "model_args"} <= set(checkpoint)
    assert (run / "best.pt").is_file() and "random initialisation" in (run / "log.txt").read_text()
    assert not list(run.glob(".*.tmp"))


@pytest.mark.slow
def test_loader_workers_serve_every_epoch_as_loading_in_line_does(segnet_shards, uninterrupted, tmp_path):
    """One persistent DataLoader per stage, its items replaced each epoch: with a worker process the
    run sees the same batches in the same order, so it ends with the same weights."""
    run = tmp_path / "workers"
    train(config(segnet_shards, run, schedule="32x64:4:2,48x96:4:1", workers=1))
    assert same_weights(run / "last.pt", uninterrupted / "last.pt")


def test_shards_of_format_v1_still_train(tmp_path):
    """Shards written by the v1 writer (no resolution levels; tests/data/v1-shards): read at full size."""
    v1 = Path(__file__).parent / "data" / "v1-shards"
    result = train(config(v1, tmp_path / "run", variant="dlse-hed", schedule="32x64:2:1"))
    assert result.epochs_run == 1 and result.best_miou is not None and (tmp_path / "run" / "best.pt").is_file()


def test_tensorboard_events_hold_the_runs_figures(uninterrupted):
    """Steps are optimizer steps; the epoch's figures are metrics.jsonl's (float32 in the event file), and
    the per-class IoUs of an epoch average to its mIoU."""
    from hedprep.shards import TRAIN_CLASSES

    rows, scalars = metric_rows(uninterrupted), tensorboard_scalars(uninterrupted)
    ends = [row["step"] for row in rows]
    assert ends == [2, 4, 6]
    assert scalars["train/lr"] == [(step, pytest.approx(1e-3)) for step in range(1, 7)]
    for tag, key in (("val/miou", "val_miou"), ("train/epoch_loss", "loss"), ("train/images_per_s", "images_per_s")):
        assert scalars[tag] == [(row["step"], pytest.approx(row[key], rel=1e-6)) for row in rows], tag
    loss_steps = [step for step, _ in scalars["train/loss"]]  # at most every 2 s, and at each epoch's end
    assert loss_steps == sorted(set(loss_steps)) and set(ends) <= set(loss_steps) <= set(range(1, 7))
    assert all(value > 0 for _, value in scalars["train/loss"])
    classes = {tag for tag in scalars if tag.startswith("val/iou/")}
    assert classes and classes <= {f"val/iou/{name}" for name in TRAIN_CLASSES}
    for row in rows:
        ious = [value for tag in classes for step, value in scalars[tag] if step == row["step"]]
        assert sum(ious) / len(ious) == pytest.approx(row["val_miou"], rel=1e-6)
    assert set(scalars) == classes | {"train/lr", "train/loss", "train/epoch_loss", "train/images_per_s", "val/miou"}


def test_without_tensorboard_a_run_writes_no_events_and_says_how_to_get_them(segnet_shards, tmp_path, monkeypatch):
    from segnet.tensorboard_log import TENSORBOARD_MISSING

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # its import fails, as when not installed
    shown: list[str] = []
    train(config(segnet_shards, tmp_path / "run", schedule="32x64:4:1", val_split=None),
          callbacks=TrainCallbacks(on_log=shown.append))
    assert not list((tmp_path / "run").glob("events.out.tfevents.*"))
    assert shown.count(TENSORBOARD_MISSING) == 1
    assert TENSORBOARD_MISSING in (tmp_path / "run" / "log.txt").read_text().splitlines()


def test_training_lowers_the_loss(uninterrupted):
    losses = [json.loads(line)["loss"] for line in (uninterrupted / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < 0.8 * losses[0], losses
    assert losses[1] < losses[0], losses  # also within the first stage, at one size


class StopAt:
    """Ctrl-C at a chosen point of training, as a callback."""

    def __init__(self, epoch_end: int | None = None, step: int | None = None) -> None:
        self.epoch_end, self.step, self.steps, self.epochs = epoch_end, step, 0, 0

    def on_step(self, info) -> None:
        self.steps += 1
        if self.steps == self.step:
            raise KeyboardInterrupt

    def on_epoch_end(self, metrics) -> None:
        self.epochs += 1
        if self.epochs == self.epoch_end:
            raise KeyboardInterrupt


# make test-fast keeps the first case; the second resumes inside the second stage (slow: 10 s on a Zen 3).
# A resume at a stage boundary: the coarse-stage test below.
@pytest.mark.parametrize("stop", [StopAt(step=1), pytest.param(StopAt(step=5), marks=pytest.mark.slow)],
                         ids=["first-batch", "second-stage"])
def test_an_interrupted_run_resumed_ends_with_the_uninterrupted_weights(segnet_shards, uninterrupted, tmp_path, stop):
    run_config = config(segnet_shards, tmp_path / "run", schedule="32x64:4:2,48x96:4:1")
    with pytest.raises(Interrupted):
        train(run_config, callbacks=TrainCallbacks(on_step=stop.on_step, on_epoch_end=stop.on_epoch_end))
    result = train(run_config, resume=True)
    assert result.epochs_run >= 1
    assert same_weights(tmp_path / "run" / "last.pt", uninterrupted / "last.pt")
    rows = metric_rows(tmp_path / "run")
    assert [(r["stage"], r["epoch"]) for r in rows] == [(1, 1), (1, 2), (2, 1)]  # no row twice
    # TensorBoard: two event files, each step once (the resume hides what the first logged after last.pt)
    assert len(list((tmp_path / "run").glob("events.out.tfevents.*"))) == 2
    scalars = tensorboard_scalars(tmp_path / "run")
    assert [step for step, _ in scalars["train/lr"]] == [1, 2, 3, 4, 5, 6]
    assert scalars["val/miou"] == [(r["step"], pytest.approx(r["val_miou"], rel=1e-6)) for r in rows]


def test_deterministic_run_on_a_cpu_trains_as_the_default_one(segnet_shards, tmp_path):
    """--deterministic turns on torch's deterministic algorithms for the run (and off after it); on a CPU
    the run was exact already, so its weights are the default run's."""
    runs = {flag: tmp_path / f"deterministic-{flag}" for flag in (False, True)}
    for flag, out in runs.items():
        train(config(segnet_shards, out, schedule="32x64:4:1", deterministic=flag))
    assert not torch.are_deterministic_algorithms_enabled()
    assert same_weights(runs[False] / "last.pt", runs[True] / "last.pt")


def test_run_folder_errors(segnet_shards, uninterrupted, tmp_path):
    with pytest.raises(SegnetError, match="holds another run; add --resume"):
        train(config(segnet_shards, uninterrupted))
    with pytest.raises(SegnetError, match="nothing to resume"):
        train(config(segnet_shards, tmp_path / "empty"), resume=True)
    with pytest.raises(SegnetError, match="a vanilla run; --resume needs --variant vanilla"):
        train(config(segnet_shards, uninterrupted, variant="dlse"), resume=True)
    with pytest.raises(SegnetError, match=r"other options \(lr"):
        train(config(segnet_shards, uninterrupted, schedule="32x64:4:2,48x96:4:1", lr=0.5), resume=True)


@pytest.mark.slow
def test_resume_before_the_first_checkpoint_starts_the_run_over(segnet_shards, uninterrupted, tmp_path):
    # what a SIGKILL during the first epoch's checkpoint leaves: config.json and metric rows, no last.pt
    run = tmp_path / "run"
    run.mkdir()
    for name in ("config.json", "metrics.jsonl", "log.txt"):
        (run / name).write_bytes((uninterrupted / name).read_bytes())
    with pytest.raises(SegnetError, match="holds another run; add --resume"):
        train(config(segnet_shards, run, schedule="32x64:4:2,48x96:4:1"))
    with pytest.raises(SegnetError, match=r"config.json: the run used other options \(lr"):
        train(config(segnet_shards, run, schedule="32x64:4:2,48x96:4:1", lr=0.5), resume=True)
    lines: list[str] = []
    train(config(segnet_shards, run, schedule="32x64:4:2,48x96:4:1"), resume=True,
          callbacks=TrainCallbacks(on_log=lines.append))
    assert any("starting the run over" in line for line in lines)
    assert same_weights(run / "last.pt", uninterrupted / "last.pt")
    epochs = [(r["stage"], r["epoch"]) for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]
    assert epochs == [(1, 1), (1, 2), (2, 1)]


def test_resume_on_a_damaged_config_json_is_one_line(segnet_shards, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{not json")
    result = invoke("segnet", "train", "--variant", "vanilla", "--shards", str(segnet_shards), "--out", str(run),
                    "--schedule", "32x64:4:1", "--backbone-weights", "none", "--device", "cpu", "--resume")
    assert_one_line_error(result, str(run / "config.json"), "not a run's config.json", "another --out")
    assert (run / "config.json").read_text() == "{not json" and not (run / "last.pt").exists()


@pytest.mark.parametrize("args, fragments, status", [
    (["--variant", "dlse-xx"], ["--variant dlse-xx"], 2),
    (["--variant", "vanilla", "--schedule", "32x64"], ["--schedule 32x64", "HxW:BATCH[:EPOCHS or :ITERSit]"], 2),
    (["--variant", "vanilla", "--device", "cuda"], ["--device cuda", "no CUDA GPU"], 1),
    (["--variant", "vanilla", "--split", "nosuch", "--backbone-weights", "none"], ["nosuch", "no built split here"], 1),
    (["--variant", "vanilla", "--backbone-weights", "imagenet"], ["--backbone-weights none"], 1),
    (["--variant", "vanilla", "--aux-loss", "-0.4"], ["--aux-loss", "-0.4"], 2),
    (["--variant", "vanilla", "--scale-range", "2,0.5"], ["--scale-range 2,0.5", "0 < LO <= HI"], 2),
    (["--variant", "vanilla", "--cat-max-ratio", "0.75"], ["--cat-max-ratio 0.75", "needs --scale-range"], 2),
])
def test_bad_train_options_are_one_line(segnet_shards, tmp_path, args, fragments, status):
    if "--device" in args and torch.cuda.is_available():
        pytest.skip("needs a machine without a GPU")
    env_home = os.environ.get("TORCH_HOME")
    os.environ["TORCH_HOME"] = str(tmp_path / "torch-home")  # no ImageNet checkpoint there
    try:
        result = invoke("segnet", "train", "--shards", str(segnet_shards), "--out", str(tmp_path / "run"),
                        "--device", "cpu", *args)
    finally:
        if env_home is None:
            os.environ.pop("TORCH_HOME")
        else:
            os.environ["TORCH_HOME"] = env_home
    assert_one_line_error(result, *fragments, status=status)
    assert not (tmp_path / "run" / "last.pt").exists()


def test_unwritable_out(segnet_shards, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SegnetError, match="not writable"):
        train(config(segnet_shards, blocker / "run"))


@pytest.fixture(scope="module")
def learning_shards(tmp_path_factory) -> Path:
    """A fixture of 32 train frames (and 4 val) of 64x128: 8 steps of 4 frames an epoch, so that a
    learning run writes a checkpoint every 8 steps rather than every 2."""
    from hedprep.build_plan import BuildConfig
    from hedprep.fixture import make_fixture
    from pipelines.build import build_split

    base = tmp_path_factory.mktemp("learning")
    make_fixture(base / "cityscapes", {"train": 32, "val": 4, "test": 0}, size=(64, 128), seed=11)
    for split in ("train", "val"):
        build_split(BuildConfig(root=str(base / "cityscapes"), split=split, out=str(base / "shards"),
                                frames_per_shard=8, device="cpu"))
    return base / "shards"


@pytest.mark.slow
def test_vanilla_learns_the_fixture_well_above_chance(learning_shards, tmp_path):
    """A bounded run (24 steps of 4 frames at the stored 64x128) from random weights (val mIoU per epoch
    on the Zen 3: 0.145, 0.204, 0.281; a 4th epoch reached 0.307)."""
    result = train(config(learning_shards, tmp_path / "run", schedule="64x128:4:3", lr=1e-3))
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    print("fixture val mIoU per epoch:", [round(r["val_miou"], 3) for r in rows])
    assert result.best_miou > 0.2  # chance (uniform guesses over 19 classes) is about 0.02


# ------------------------------------------------------------------------------------- subprocesses


def start_train(shards: Path, out: Path, *extra: str, schedule: str = "32x64:4:3,48x96:4:2") -> subprocess.Popen:
    command = [str(BIN / "segnet"), "train", "--variant", "vanilla", "--shards", str(shards), "--out", str(out),
               "--schedule", schedule, "--backbone-weights", "none", "--device", "cpu",
               "--workers", "0", "--lr", "1e-3", *extra]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=default_sigint)


STRONG = Path(__file__).resolve().parents[1] / "configs" / "strong.toml"
# 2 epochs of 2 steps, then 3 steps; output stride 16: what is tested is the resume, at a third of the FLOPs
STRONG_TINY = ("--config", str(STRONG), "--schedule", "32x64:4:2,32x64:4:3it", "--output-stride", "16")


@pytest.mark.slow
def test_the_strong_recipe_killed_midway_resumes_to_the_uninterrupted_weights(segnet_shards, tmp_path):
    """`segnet train --config configs/strong.toml` (SGD with poly, the auxiliary head, random scales and
    crops with cat_max_ratio, flips, photometric distortion, a stage in iterations) at tiny sizes, killed
    after its 2nd epoch (in its checkpoint write or its 3rd epoch), resumed: the weights, head and rate
    of the same run uninterrupted (run in this process: the CLI trains as the library)."""
    reference = invoke("segnet", "train", *STRONG_TINY, "--variant", "vanilla", "--shards", str(segnet_shards),
                       "--out", str(tmp_path / "whole"), "--backbone-weights", "none", "--device", "cpu",
                       "--workers", "0", "--lr", "1e-3")  # start_train's
    assert reference.returncode == 0, reference.stderr
    killed = start_train(segnet_shards, tmp_path / "killed", *STRONG_TINY)
    metrics = tmp_path / "killed" / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
        assert time.monotonic() < deadline and killed.poll() is None, "training made no progress"
        time.sleep(0.05)
    assert killed.poll() is None, "the run ended before it could be killed"
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait(timeout=60)
    resumed = start_train(segnet_shards, tmp_path / "killed", *STRONG_TINY, "--resume")
    _, stderr = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, stderr
    assert "resumed from" in (tmp_path / "killed" / "log.txt").read_text()
    assert same_weights(tmp_path / "killed" / "last.pt", tmp_path / "whole" / "last.pt")
    whole, again = (load_checkpoint(tmp_path / run / "last.pt") for run in ("whole", "killed"))
    assert all(torch.equal(whole["aux_classifier"][k], again["aux_classifier"][k]) for k in whole["aux_classifier"])
    assert whole["lr_schedule"] == again["lr_schedule"] and whole["step"] == again["step"] == 7
    ran = whole["config"]
    assert (ran["optimizer"], ran["lr_schedule"], ran["aux_loss"], ran["scale_range"], ran["photometric"]) == (
        "sgd", "poly", 0.4, [0.5, 2.0], True)


@pytest.mark.slow
def test_ctrl_c_saves_and_exits_130(segnet_shards, tmp_path):
    """Ctrl-C while the first checkpoint is being written (the worst moment: torch's zip writer, cut
    short, raises an error of its own): it is finished, then the run stops as on any Ctrl-C."""
    process = start_train(segnet_shards, tmp_path / "run")
    deadline = time.monotonic() + 300
    while not list((tmp_path / "run").glob(".last.pt.*.tmp")):
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--resume" in errors[0] and "Traceback" not in stderr
    assert load_checkpoint(tmp_path / "run" / "last.pt")["variant"] == "vanilla"


@pytest.fixture(scope="module")
def odd_val_shards(segnet_shards, tmp_path_factory) -> Path:
    """segnet_shards' train split beside a val split of 5 frames (64x128): an odd number for 2 ranks."""
    from hedprep.build_plan import BuildConfig
    from hedprep.fixture import make_fixture
    from pipelines.build import build_split

    base = tmp_path_factory.mktemp("odd-val")
    make_fixture(base / "cityscapes", {"val": 5}, size=(64, 128), seed=12)
    build_split(BuildConfig(root=str(base / "cityscapes"), split="val", out=str(base / "shards"),
                            frames_per_shard=2, device="cpu"))
    (base / "shards" / "train").symlink_to(segnet_shards / "train", target_is_directory=True)
    return base / "shards"


def torchrun(*args: str, processes: int = 2) -> subprocess.CompletedProcess:
    import socket

    with socket.socket() as probe:  # a free loopback port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    command = [str(BIN / "torchrun"), "--nproc-per-node", str(processes), "--master-addr", "127.0.0.1",
               "--master-port", port, "--no-python", str(BIN / "segnet"), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_torchrun_two_processes_train_validate_and_evaluate_each_frame_once(odd_val_shards, tmp_path):
    """Two gloo ranks, 5 val frames: validation and `segnet evaluate` count each frame once and sum
    the ranks' matrices (and boundary F sums), so both equal a one-process evaluation (a padded sampler
    counted a frame twice)."""
    from segnet.evaluate import evaluate

    torchrun("train", "--variant", "vanilla", "--shards", str(odd_val_shards), "--out", str(tmp_path / "run"),
             "--schedule", "64x128:2:2", "--backbone-weights", "none", "--device", "cpu", "--workers", "0",
             "--lr", "1e-3")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and rows[-1]["step"] == 4  # 8 frames, 2 ranks x batch 2: 2 steps per epoch
    checkpoint = load_checkpoint(tmp_path / "run" / "last.pt")
    assert not any(k.startswith("module.") for k in checkpoint["model"])  # the bare model, loadable anywhere
    torchrun("evaluate", "--checkpoint", str(tmp_path / "run" / "last.pt"), "--shards", str(odd_val_shards),
             "--device", "cpu", "--workers", "0", "--json", str(tmp_path / "ranks.json"),
             "--save-predictions", str(tmp_path / "predictions"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank ran
    try:
        single = evaluate(tmp_path / "run" / "last.pt", odd_val_shards, "val", device="cpu", workers=0)
    finally:
        torch.set_num_threads(threads)
    assert single.frames == 5
    ranks = json.loads((tmp_path / "ranks.json").read_text())
    assert ranks["pixels"] == single.result.to_json()["pixels"] == int(single.result.matrix.sum())
    assert ranks["miou"] == pytest.approx(single.result.miou, abs=1e-12)
    # the boundary F sums and counted frames are summed over the ranks too
    def boundary_figures(entries: list[dict]) -> list:
        return [v for e in entries for v in (e["threshold"], e["pixels"], e["mean"], *e["per_class"].values())]

    assert boundary_figures(ranks["boundary_f"]) == pytest.approx(
        boundary_figures(single.result.to_json()["boundary_f"]), abs=1e-12)
    assert rows[-1]["val_miou"] == pytest.approx(single.result.miou, abs=1e-12)
    assert len(list((tmp_path / "predictions").glob("*_pred_labelIds.png"))) == 5


def test_sgd_with_poly_over_a_stage_in_iterations_records_the_rates_of_its_formula(segnet_shards, tmp_path):
    """8 train frames in batches of 4 are 2 steps an epoch: 5 iterations are epochs of 2, 2 and 1 steps;
    each row's lr is the next step's, and poly reaches --min-lr at the 5th and last."""
    from segnet.optim import lr_factor

    run = config(segnet_shards, tmp_path / "run", schedule="32x64:4:5it", optimizer="sgd", momentum=0.9,
                 weight_decay=5e-4, lr_schedule="poly", min_lr=1e-4, lr=0.01, val_split=None)
    train(run)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["step"]) for r in rows] == [(1, 2), (2, 4), (3, 5)]
    assert [r["lr"] for r in rows] == pytest.approx([0.01 * lr_factor(s, run, 5) for s in (2, 4)] + [1e-4],
                                                    rel=1e-9)
    assert rows[0]["lr"] == pytest.approx((0.01 - 1e-4) * 0.6 ** 0.9 + 1e-4, rel=1e-9)
    # TensorBoard's train/lr at step k: the rate step k trained at
    assert tensorboard_scalars(tmp_path / "run")["train/lr"] == [
        (step, pytest.approx(0.01 * lr_factor(step - 1, run, 5), rel=1e-6)) for step in (1, 2, 3, 4, 5)]
    checkpoint = load_checkpoint(tmp_path / "run" / "last.pt")
    assert checkpoint["lr_schedule"]["last_epoch"] == 5 and checkpoint["config"]["optimizer"] == "sgd"
    assert checkpoint["optimizer"]["param_groups"][0]["momentum"] == 0.9
    assert checkpoint["config"]["schedule"] == ["32x64:4:5it"]


def test_a_coarse_stage_trains_first_and_a_resume_at_the_boundary_ends_with_the_uninterrupted_weights(
        segnet_shards, tmp_path):
    """--coarse-split: an epoch on train_extra's gtCoarse labels at the first stage's size, then the schedule
    on train (one step each, no validation: cheap); stopped after the coarse epoch and resumed, the weights
    are those of the uninterrupted run (which runs through the command line)."""
    from hedprep.shards import read_manifest
    from segnet.run_folder import RunFolder

    reference = tmp_path / "reference"
    result = invoke("segnet", "train", "--variant", "vanilla", "--shards", str(segnet_shards), "--out", str(reference),
                    "--schedule", "32x64:4:1it", "--coarse-split", "train_extra", "--coarse-epochs", "1",
                    "--val-split", "none", "--backbone-weights", "none", "--device", "cpu", "--lr", "1e-3",
                    "--workers", "0")
    assert result.returncode == 0, result.stderr
    share = read_manifest(segnet_shards / "train_extra").ignore_share
    coarse_line = (f"stage 1/2: 32x64, batch 4, 1 epoch(s) on train_extra (coarse labels, {100 * share:.1f}% of the "
                   "pixels ignored)")
    assert coarse_line in result.stderr  # the display's log lines
    log = (reference / "log.txt").read_text()
    assert coarse_line in log and "stage 2/2: 32x64, batch 4, 1 step(s) on train (fine labels, " in log
    rows = metric_rows(reference)
    assert [(r["stage"], r["epoch"], r["step"]) for r in rows] == [(1, 1, 1), (2, 1, 2)]  # 3 coarse frames: 1 step
    run_config = config(segnet_shards, tmp_path / "run", schedule="32x64:4:1it", coarse_split="train_extra",
                        coarse_epochs=1, val_split=None)
    with pytest.raises(Interrupted):
        train(run_config, callbacks=TrainCallbacks(on_epoch_end=StopAt(epoch_end=1).on_epoch_end))
    assert load_checkpoint(tmp_path / "run" / "last.pt")["next"] == {"stage": 1, "epoch": 0, "batch": 0}
    assert not RunFolder(tmp_path / "run").finished(run_config)
    train(run_config, resume=True)
    assert RunFolder(tmp_path / "run").finished(run_config)
    assert same_weights(tmp_path / "run" / "last.pt", reference / "last.pt")
    assert "stage 2/2: 32x64" in (tmp_path / "run" / "log.txt").read_text().split("resumed from")[1]


def test_a_coarse_stage_reads_its_split_and_validation_stays_on_val(segnet_shards):
    from segnet.data import LoaderSettings
    from segnet.train import StageLoaders

    run_config = config(segnet_shards, Path("unused"), schedule="32x64:4:1,48x96:2:1@train_extra,64x128:2:1",
                        coarse_split="train_extra")
    train_loaders = StageLoaders(run_config, "train", 3, LoaderSettings(), stage_splits=True)
    assert train_loaders.splits == ["train_extra", "train", "train_extra", "train"]
    assert [len(d) for d in train_loaders.datasets] == [3, 8, 3, 8]
    assert [d.size for d in train_loaders.datasets] == [(32, 64), (32, 64), (48, 96), (64, 128)]
    assert StageLoaders(run_config, "val", 3, LoaderSettings()).splits == ["val"] * 4


def test_a_run_killed_before_linking_best_gets_best_on_resume(segnet_shards, tmp_path):
    """SIGKILL between an improving epoch's last.pt and its best.pt link (seen in the killed-study test):
    the resume links that last.pt, which is the best checkpoint."""
    def stop(metrics):
        raise KeyboardInterrupt

    with pytest.raises(Interrupted):
        train(config(segnet_shards, tmp_path / "run"), callbacks=TrainCallbacks(on_epoch_end=stop))
    best, last = tmp_path / "run" / "best.pt", tmp_path / "run" / "last.pt"
    best.unlink()  # as if killed before the link
    seen = []  # best.pt before the resumed epoch trains: the first epoch's checkpoint, linked again
    train(config(segnet_shards, tmp_path / "run"), resume=True,
          callbacks=TrainCallbacks(on_epoch_start=lambda info: seen.append(best.is_file() and best.samefile(last))))
    assert seen == [True]


def test_an_aux_loss_run_evaluates_without_its_head(segnet_shards, tmp_path):
    """--aux-loss: the head is in last.pt beside the model (a resume restoring it exactly is the strong
    recipe's SIGKILL test), and the model `load_model` gives (evaluate, predict, the study's sheet) is
    the plain model: its parameter count, and the trained network's output."""
    from segnet.deeplab import TrainingNetwork, build_model
    from segnet.inference import load_model

    whole = tmp_path / "whole"
    train(config(segnet_shards, whole, schedule="32x64:4:1", aux_loss=0.4, val_split=None))  # 2 steps
    assert "auxiliary FCN head on layer3 (training only), its loss weighted 0.4" in (whole / "log.txt").read_text()

    model, checkpoint = load_model(whole / "last.pt", torch.device("cpu"))
    plain = build_model("vanilla", backbone_weights="none")
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in plain.parameters())
    assert not any("aux" in key for key in model.state_dict())
    network = TrainingNetwork(plain)
    network.model.load_state_dict(checkpoint["model"])
    network.aux_classifier.load_state_dict(checkpoint["aux_classifier"])
    x = torch.randn(2, 3, 32, 64)
    with torch.no_grad():
        assert torch.equal(model(x), network.eval()(x).out)


# dl-hed-head with --aux-loss holds both training-only heads and reads the edge channel for its loss, so
# it stands for the three: dl-boundary's run is in tests/test_study.py, the losses in tests/test_losses.py.
def test_a_head_variant_resumes_exactly_and_predicts_as_vanilla(segnet_shards, uninterrupted, tmp_path):
    """Ctrl-C after the first step, resumed: the model and its boundary head are the uninterrupted run's.
    The checkpoint's model is vanilla's (RGB input, no HED) for evaluate; predict --boundaries draws the
    head's map beside the same prediction, and is one line for a checkpoint without a head."""
    from segnet.evaluate import predict_frame_boundaries, predict_frames
    from segnet.inference import load_segmenter

    variant = "dl-hed-head"
    runs = {name: config(segnet_shards, tmp_path / name, variant, schedule="32x64:4:1", val_split=None, aux_loss=0.4)
            for name in ("whole", "resumed")}
    train(runs["whole"])
    with pytest.raises(Interrupted):
        train(runs["resumed"], callbacks=TrainCallbacks(on_step=StopAt(step=1).on_step))
    train(runs["resumed"], resume=True)
    whole, again = (load_checkpoint(tmp_path / name / "last.pt") for name in runs)
    assert same_weights(tmp_path / "whole" / "last.pt", tmp_path / "resumed" / "last.pt") and again["step"] == 2
    for key in ("boundary_head", "aux_classifier"):
        assert whole[key].keys() == again[key].keys() and all(torch.equal(whole[key][k], again[key][k])
                                                             for k in whole[key])
    assert again["variant"] == variant and not any("boundary" in key for key in again["model"])

    checkpoint = tmp_path / "whole" / "last.pt"
    segmenter = load_segmenter(checkpoint, torch.device("cpu"))
    assert segmenter.in_channels == 3 and segmenter.boundary_network is None
    ids = predict_frames(checkpoint, segnet_shards, "val", [0, 1], device="cpu")
    maps = predict_frame_boundaries(checkpoint, segnet_shards, "val", [0, 1], device="cpu")
    assert [m.shape for m in maps] == [i.shape for i in ids] and maps[0].dtype == np.uint8
    photo = next((segnet_shards.parent / "cityscapes" / "leftImg8bit" / "val").rglob("*.png"))
    plain = invoke("segnet", "predict", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "plain"),
                   "--device", "cpu", str(photo))
    drawn = invoke("segnet", "predict", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "drawn"),
                   "--device", "cpu", "--boundaries", str(photo))
    assert plain.returncode == drawn.returncode == 0, drawn.stderr
    stem = photo.stem
    assert sorted(p.name for p in (tmp_path / "drawn").iterdir()) == sorted(
        [f"{stem}_boundary.png", f"{stem}_overlay.png", f"{stem}_pred_color.png"])
    assert (tmp_path / "plain" / f"{stem}_pred_color.png").read_bytes() == (
        tmp_path / "drawn" / f"{stem}_pred_color.png").read_bytes()
    boundary = cv2.imread(str(tmp_path / "drawn" / f"{stem}_boundary.png"), cv2.IMREAD_UNCHANGED)
    assert boundary.dtype == np.uint8 and boundary.shape == cv2.imread(str(photo)).shape[:2]
    refused = invoke("segnet", "predict", "--checkpoint", str(uninterrupted / "last.pt"), "--out",
                     str(tmp_path / "none"), "--device", "cpu", "--boundaries", str(photo))
    assert_one_line_error(refused, "a vanilla checkpoint holds no boundary head")
    assert not (tmp_path / "none").exists()
