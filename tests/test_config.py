"""segnet.config: the progressive schedule and the run configuration."""

from __future__ import annotations

import json

import pytest

from segnet.config import DEFAULT_SCHEDULE, Stage, TrainConfig, parse_scale_range, parse_schedule, plan_stage
from segnet.errors import SegnetOptionError


def test_default_schedule_is_the_studys():
    assert parse_schedule(DEFAULT_SCHEDULE, 10) == [Stage(128, 224, 16, 10), Stage(256, 448, 8, 10),
                                                    Stage(512, 912, 4, 10)]


def test_entries_may_give_their_own_epochs():
    assert parse_schedule(" 32x64:4:2 , 64X128:2", 3) == [Stage(32, 64, 4, 2), Stage(64, 128, 2, 3)]


@pytest.mark.parametrize("text", ["128x224", "128x224:0", "128*224:4", "8x8:1", "128x224:4:0", "", "a:b:c",
                                  "128x224:4:2:1", "128x224:-4", "32x64:4,"])
def test_malformed_schedules_name_the_option(text):
    with pytest.raises(SegnetOptionError, match=r"^--schedule"):
        parse_schedule(text)


def test_schedule_sizes_are_parsed_as_every_size_is():
    """hedprep.options.parse_size reads the sizes, with segnet's smallest side: one wording for every HxW."""
    with pytest.raises(SegnetOptionError, match=r"^--schedule 8x16: expected HEIGHTxWIDTH of at least 16x16"):
        parse_schedule("32x64:4,8x16:2")
    with pytest.raises(SegnetOptionError, match=r"^--schedule 32\*64: expected HEIGHTxWIDTH"):
        parse_schedule("32*64:4")


def test_config_round_trips_through_json():
    config = TrainConfig("dlse-hed", "shards", "runs/a", schedule=parse_schedule("32x64:4:2,64x128:2:1"))
    back = TrainConfig.from_json(config.to_json())
    assert back == config and config.to_json()["schedule"] == ["32x64:4:2", "64x128:2:1"]
    moved = TrainConfig.from_json({**config.to_json(), "out": "elsewhere", "workers": 0, "device": "cpu"})
    assert moved.comparable() == config.comparable()


def test_stages_may_count_iterations_instead_of_epochs():
    stages = parse_schedule("32x64:4:2,512x1024:8:80000it")
    assert stages == [Stage(32, 64, 4, 2), Stage(512, 1024, 8, iters=80000)]
    assert [str(s) for s in stages] == ["32x64:4:2", "512x1024:8:80000it"]
    with pytest.raises(SegnetOptionError, match="needs a batch and a length"):
        parse_schedule("32x64:4:0it")
    with pytest.raises(SegnetOptionError, match="is not HxW:BATCH"):
        parse_schedule("32x64:4:it")


@pytest.mark.parametrize("stage, per_epoch, epochs, last, total", [
    (Stage(32, 64, 8, 3), 372, 3, 372, 1116),
    (Stage(32, 64, 8, iters=80000), 372, 216, 80000 - 215 * 372, 80000),
    (Stage(32, 64, 8, iters=744), 372, 2, 372, 744),
    (Stage(32, 64, 8, iters=5), 372, 1, 5, 5),
])
def test_a_stage_plan_spans_its_epochs_or_iterations(stage, per_epoch, epochs, last, total):
    plan = plan_stage(stage, per_epoch)
    assert (plan.epochs, plan.steps(epochs - 1), plan.total_steps) == (epochs, last, total)
    assert sum(plan.steps(e) for e in range(plan.epochs)) == total


def test_augmentation_options_round_trip_and_older_configs_load_without_them():
    config = TrainConfig("vanilla", "shards", "runs/a", scale_range=(0.5, 2.0), cat_max_ratio=0.75, flip=False,
                         photometric=True)
    written = json.loads(json.dumps(config.to_json()))  # as config.json holds it: the range a list
    assert written["scale_range"] == [0.5, 2.0] and TrainConfig.from_json(written) == config
    older = {k: v for k, v in TrainConfig("vanilla", "shards", "runs/a").to_json().items()
             if k not in ("scale_range", "cat_max_ratio", "flip", "photometric")}
    loaded = TrainConfig.from_json(older)
    assert (loaded.scale_range, loaded.cat_max_ratio, loaded.flip, loaded.photometric) == (None, 1.0, True, False)
    assert loaded.changes_from(TrainConfig("vanilla", "shards", "runs/a")) == ""


def test_scale_ranges_are_two_ordered_positive_ratios():
    assert parse_scale_range("0.5,2.0") == (0.5, 2.0) and parse_scale_range(" 1 , 1 ") == (1.0, 1.0)
    for text in ("2,1", "0,1", "-1,2", "0.5", "0.5,1,2", "a,b", "0.5,inf", "nan,1", ""):
        with pytest.raises(SegnetOptionError, match=r"^--scale-range .*LO,HI with 0 < LO <= HI"):
            parse_scale_range(text)


def test_stages_may_name_their_split_and_round_trip():
    stages = parse_schedule("32x64:4:2@train_extra, 64x128:2:9it @ train_extra,64x128:2", 3)
    assert stages == [Stage(32, 64, 4, 2, split="train_extra"), Stage(64, 128, 2, iters=9, split="train_extra"),
                      Stage(64, 128, 2, 3)]
    assert [str(s) for s in stages] == ["32x64:4:2@train_extra", "64x128:2:9it@train_extra", "64x128:2:3"]
    assert parse_schedule(",".join(str(s) for s in stages)) == stages
    for text in ("32x64:4@", "32x64:4:2@a/b", "32x64:4:2@x@y", "32x64@train_extra"):
        with pytest.raises(SegnetOptionError, match=r"^--schedule .*\[@SPLIT\]"):
            parse_schedule(text)


def test_a_coarse_split_puts_a_stage_at_the_first_stages_size_before_the_schedule():
    schedule = parse_schedule("32x64:4:2,64x128:2:100it")
    config = TrainConfig("vanilla", "shards", "runs/a", schedule=schedule, coarse_split="train_extra",
                         coarse_epochs=3)
    assert config.stages == [Stage(32, 64, 4, 3, split="train_extra"), *schedule]
    assert TrainConfig("vanilla", "shards", "runs/a", schedule=schedule).stages == schedule
    written = json.loads(json.dumps(config.to_json()))
    assert (written["coarse_split"], written["coarse_epochs"]) == ("train_extra", 3)
    assert TrainConfig.from_json(written) == config
    assert config.to_options()["coarse-split"] == "train_extra"
    # part of what a resume compares; a config.json written before them loads as a run without a coarse stage
    plain = TrainConfig("vanilla", "shards", "runs/a", schedule=schedule)
    assert "coarse_split None -> 'train_extra'" in config.changes_from(plain)
    older = {k: v for k, v in plain.to_json().items() if k not in ("coarse_split", "coarse_epochs")}
    assert TrainConfig.from_json(older).changes_from(plain) == "" and TrainConfig.from_json(older).stages == schedule
    assert TrainConfig("vanilla", "shards", "runs/a", schedule=schedule, coarse_epochs=7).changes_from(plain) == ""
    with pytest.raises(SegnetOptionError, match="--coarse-epochs 0"):
        _ = TrainConfig("vanilla", "shards", "runs/a", coarse_split="train_extra", coarse_epochs=0).stages
