"""hedprep.build_plan: what a build will do, decided from the options and the dataset alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from hedprep.build_plan import BuildConfig, plan_build
from hedprep.errors import HedprepError, OptionError
from hedprep.fixture import make_fixture


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cityscapes")
    make_fixture(root, {"train": 5, "val": 1, "test": 0}, size=(48, 96), seed=1)
    return root


def test_plan_cuts_frames_into_shards_and_writes_nothing(dataset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    plan = plan_build(BuildConfig(root=str(dataset), split="train", out="out", frames_per_shard=2))
    assert not (tmp_path / "out").exists()
    assert plan.split_dir == tmp_path / "out" / "train"  # absolute: workers elsewhere see the same path
    assert [len(s.frames) for s in plan.specs] == [2, 2, 1]
    assert [Path(s.path).name for s in plan.specs] == ["shard-00000.h5", "shard-00001.h5", "shard-00002.h5"]
    ids = [i for s in plan.specs for i in s.frame_ids]
    assert ids == sorted(ids) and plan.planned[2] == ids[4:]
    params = plan.params
    assert (params["frame_height"], params["frame_width"], params["compression"]) == (48, 96, "gzip:1")
    assert params["dataset_root"] == str(dataset.resolve()) and len(params["hed_weights_sha256"]) == 64
    assert plan.specs[0].info.frame_width == 96 and plan.specs[0].engine.weights == "bsds500"


def test_limit_keeps_the_first_frames(dataset, tmp_path):
    plan = plan_build(BuildConfig(root=str(dataset), split="train", out=str(tmp_path), limit=3))
    assert [len(s.frames) for s in plan.specs] == [3] and plan.params["limit"] == 3


@pytest.mark.parametrize("change, error, message", [
    ({"frames_per_shard": 0}, OptionError, "--frames-per-shard 0: must be at least 1"),
    ({"precision": "fp16"}, OptionError, "--precision fp16"),
    ({"on_error": "ignore"}, OptionError, "--on-error ignore"),
    ({"compression": "brotli"}, OptionError, "--compression brotli"),
    ({"workers": 2, "scheduler": "tcp://127.0.0.1:1"}, OptionError, "exclude each other"),
    ({"split": "training"}, OptionError, "--split training: unknown split"),
    ({"device": "tpu"}, OptionError, "--device tpu: unknown device"),
    ({"weights": "bsds"}, OptionError, "--weights bsds: unknown weights name"),
    ({"root": "/nonexistent/cityscapes"}, HedprepError, "Cityscapes folder does not exist"),
])
def test_bad_options_fail_before_anything_is_written(dataset, tmp_path, change, error, message):
    config = BuildConfig(**{"root": str(dataset), "split": "train", "out": str(tmp_path / "out"), **change})
    with pytest.raises(error, match=message):
        plan_build(config)
    assert not (tmp_path / "out").exists()
