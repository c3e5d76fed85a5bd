"""Recipes as TOML files: `--config FILE` of segnet train and study, and a run folder's config.toml."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tomllib

from segnet.config import TrainConfig, parse_schedule
from segnet.config_file import config_file_text, read_config_file
from segnet.errors import SegnetOptionError
from tests.conftest import assert_one_line_error, invoke

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_written_files_read_back_as_the_values_written(tmp_path):
    values = {"lr": 1e-05, "optimizer": "sgd", "warmup-iters": 0, "amp": False, "val-split": "val",
              "schedule": ["32x64:4:2", "512x1024:8:80000it"], "scale-range": (0.5, 2.0), "min-lr": float("inf"),
              "out": 'runs/"quoted" \\ é', "workers": None}
    path = tmp_path / "config.toml"
    path.write_text(config_file_text(values, header="a comment\n\nover lines"), encoding="utf-8")
    read = tomllib.loads(path.read_text(encoding="utf-8"))
    expected = {k: list(v) if isinstance(v, tuple) else v for k, v in values.items() if v is not None}
    assert read == expected and read_config_file(path) == expected
    assert path.read_text(encoding="utf-8").startswith("# a comment\n#\n# over lines\n")


def test_a_train_config_as_options_names_every_option_as_the_command_line_does():
    config = TrainConfig("dlse-hed", "shards", "runs/a", schedule=parse_schedule("32x64:4:2,64x128:2:9it"),
                         val_split=None)
    options = config.to_options()
    assert options["schedule"] == ["32x64:4:2", "64x128:2:9it"] and options["val-split"] == "none"
    assert "lr-schedule" in options and "workers" not in options  # None: chosen at run time, left out


@pytest.mark.parametrize("text, fragments", [
    ('lr_shedule = "poly"\n', ["unknown key 'lr_shedule'", "did you mean 'lr-schedule'", "takes: variant,"]),
    ('lr = "fast"\n', ['lr = "fast": expected a number']),
    ("amp = 1\n", ["amp = 1: expected true or false"]),
    ('optimizer = "rmsprop"\n', ['optimizer = "rmsprop"', "'rmsprop' is not one of 'adam', 'adamw', 'sgd'"]),
    ("output-stride = 4\n", ["output-stride = 4", "is not one of"]),
    ("workers = -1\n", ["workers = -1", "not in the range x>=0"]),
    ("workers = 1.5\n", ["workers = 1.5: expected a whole number"]),
    ("lr = \n", ["not a valid TOML file", "line 1"]),
    ("[train]\nlr = 1\n", ["train: expected a value or a list of values, not a table"]),
    ('variants = ["vanilla"]\n', ["unknown key 'variants'"]),  # segnet study's, not train's
])
def test_a_bad_config_file_is_one_line_naming_the_file_and_key(tmp_path, text, fragments):
    path = tmp_path / "recipe.toml"
    path.write_text(text, encoding="utf-8")
    result = invoke("segnet", "train", "--config", str(path), "--variant", "vanilla", "--shards", str(tmp_path),
                    "--out", str(tmp_path / "run"))
    assert_one_line_error(result, f"{path}: ", *fragments, status=2)
    assert not (tmp_path / "run").exists()


def test_a_missing_config_file_is_one_line(tmp_path):
    result = invoke("segnet", "study", "--config", str(tmp_path / "nope.toml"))
    assert_one_line_error(result, f"--config {tmp_path / 'nope.toml'}: No such file or directory", status=2)


def test_read_config_file_refuses_dates(tmp_path):
    (tmp_path / "a.toml").write_text("lr = 1979-05-27\n", encoding="utf-8")
    with pytest.raises(SegnetOptionError, match="lr: expected text, a number or true/false"):
        read_config_file(tmp_path / "a.toml")


@pytest.mark.parametrize("name", ["study.toml", "strong.toml"])
def test_the_shipped_recipes_are_valid_for_train_and_study(name, tmp_path):
    """Every key of configs/*.toml is an option of both commands, of the right type (checked by parsing
    the command line with the file: `--help` stops before anything runs)."""
    for command in ("train", "study"):
        result = invoke("segnet", command, "--config", str(CONFIGS / name), "--help")
        assert result.returncode == 0, result.stderr


def test_the_command_line_overrides_the_file_and_the_run_folder_keeps_what_ran(segnet_shards, tmp_path):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text('optimizer = "sgd"\nlr = 0.01\nlr-schedule = "poly"\nschedule = ["32x64:4:1"]\n'
                      'val_split = "none"\nweight-decay = 5e-4\n', encoding="utf-8")
    first = invoke("segnet", "train", "--config", str(recipe), "--variant", "vanilla", "--shards", str(segnet_shards),
                   "--backbone-weights", "none", "--device", "cpu", "--lr", "0.02", "--out", str(tmp_path / "a"))
    assert first.returncode == 0, first.stderr
    ran = json.loads((tmp_path / "a" / "config.json").read_text())
    assert (ran["optimizer"], ran["lr"], ran["lr_schedule"], ran["weight_decay"]) == ("sgd", 0.02, "poly", 5e-4)
    assert ran["schedule"] == ["32x64:4:1"] and ran["val_split"] is None

    again = invoke("segnet", "train", "--config", str(tmp_path / "a" / "config.toml"), "--out", str(tmp_path / "b"))
    assert again.returncode == 0, again.stderr
    rerun = json.loads((tmp_path / "b" / "config.json").read_text())
    assert {**rerun, "out": None} == {**ran, "out": None}
