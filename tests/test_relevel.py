"""Adding, changing and removing resolution levels of an existing build without HED
(`hedprep build --levels L` over shards of the same parameters; hedprep/shard_relevel.py), resumable
like the build, and from shards of format v1."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

import hedprep.hed.inference as hed_inference
from hedprep.build_plan import BuildConfig
from hedprep.fixture import make_fixture
from hedprep.shard_relevel import RelevelSpec, relevel_shard
from hedprep.shards import (
    ShardInfo,
    downsample_frame,
    downsample_labels,
    open_split,
    read_manifest,
    shard_name,
    verify_split,
)
from pipelines.build import build_split
from tests.conftest import assert_one_line_error, invoke

V1_SHARDS = Path(__file__).parent / "data" / "v1-shards"
V2_SHARDS = Path(__file__).parent / "data" / "v2-shards"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("relevel") / "cityscapes"
    make_fixture(root, {"train": 5, "val": 0, "test": 2}, size=(64, 128), seed=8)
    return root


@pytest.fixture(scope="module")
def without_levels(dataset, tmp_path_factory) -> Path:
    """OUT of train (3 shards of 2 + 2 + 1 frames) and test, built with --levels 0."""
    out = tmp_path_factory.mktemp("built") / "out"
    for split in ("train", "test"):
        build_split(config(dataset, out, 0, split=split))
    return out


def config(root: Path, out: Path, levels: int, split: str = "train", **options) -> BuildConfig:
    return BuildConfig(root=str(root), split=split, out=str(out), frames_per_shard=2, device="cpu", levels=levels,
                       **options)


@pytest.fixture
def out(without_levels, tmp_path) -> Path:
    return Path(shutil.copytree(without_levels, tmp_path / "out"))


def level0(split_dir: Path) -> dict[str, tuple]:
    """Each shard's frame ids, level-0 frames and labels."""
    contents = {}
    for path in sorted(split_dir.glob("shard-*.h5")):
        with h5py.File(path, "r") as f:
            contents[path.name] = (f["frame_ids"][()].tolist(), f["frames"][()], f["labels"][()])
    return contents


def assert_same_level0(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name][0] == b[name][0] and np.array_equal(a[name][1], b[name][1])
        assert np.array_equal(a[name][2], b[name][2])


def assert_levels_derive_from_level0(split_dir: Path, levels: int) -> None:
    for path in sorted(split_dir.glob("shard-*.h5")):
        with h5py.File(path, "r") as f:
            assert f.attrs["levels"] == levels and f.attrs["format_version"] == 3
            assert sorted(f["levels"]) == [str(k) for k in range(1, levels + 1)] if levels else "levels" not in f
            for i in range(f["frames"].shape[0]):
                for k in range(1, levels + 1):
                    assert np.array_equal(f[f"levels/{k}/frames"][i], downsample_frame(f["frames"][i], k))
                    assert np.array_equal(f[f"levels/{k}/labels"][i], downsample_labels(f["labels"][i], k))


def test_levels_are_added_changed_and_removed_without_hed(dataset, out):
    before = level0(out / "train")
    hed_inference._DETECTORS.clear()
    result = build_split(config(dataset, out, 3))
    assert not hed_inference._DETECTORS  # HED was never loaded
    assert (result.built, result.kept, result.relevelled, result.frames) == (0, 0, 3, 5)
    manifest = read_manifest(out / "train")
    assert manifest.complete and manifest.params["levels"] == 3 and [s.levels for s in manifest.shards] == [3, 3, 3]
    assert_same_level0(level0(out / "train"), before)
    assert_levels_derive_from_level0(out / "train", 3)
    assert verify_split(out / "train").ok and open_split(out, "train").levels == 3

    again = build_split(config(dataset, out, 3))
    assert (again.built, again.kept, again.relevelled) == (0, 3, 0)
    fewer = build_split(config(dataset, out, 1))
    assert (fewer.built, fewer.kept, fewer.relevelled) == (0, 0, 3)
    assert_levels_derive_from_level0(out / "train", 1)
    none = build_split(config(dataset, out, 0))
    assert none.relevelled == 3 and verify_split(out / "train").ok
    assert_same_level0(level0(out / "train"), before)
    assert_levels_derive_from_level0(out / "train", 0)


def test_test_split_keeps_no_label_chunks(dataset, out):
    result = build_split(config(dataset, out, 2, split="test"))
    assert result.relevelled == 1
    with h5py.File(out / "test" / shard_name(0), "r") as f:
        for name in ("labels", "levels/1/labels", "levels/2/labels"):
            assert f[name].id.get_storage_size() == 0 and np.all(f[name][()] == 255)
    assert verify_split(out / "test").ok


def test_an_interrupted_relevel_resumes(dataset, out):
    def stop_inside_the_second_shard(n: int) -> None:
        if any(s.levels == 2 for s in read_manifest(out / "train").shards):  # one shard is rewritten
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_split(config(dataset, out, 2), on_frames=stop_inside_the_second_shard)
    manifest = read_manifest(out / "train")
    assert not manifest.complete and sorted(s.levels for s in manifest.shards) == [0, 0, 2]
    assert not list((out / "train").glob(".*.tmp"))  # the half-written shard 1 left nothing behind
    result = build_split(config(dataset, out, 2))
    assert (result.built, result.kept, result.relevelled) == (0, 1, 2)
    assert verify_split(out / "train").ok
    assert_levels_derive_from_level0(out / "train", 2)


def test_a_shard_relevelled_before_the_manifest_was_rewritten_is_adopted(dataset, out):
    """A kill between a relevelled shard's rename and the manifest's rewrite: the file, whole and
    with the new levels, is kept; the manifest still describes the old one."""
    manifest = read_manifest(out / "train")
    info = ShardInfo.from_params({**manifest.params, "levels": 2})
    from hedprep.options import parse_compression

    path = out / "train" / shard_name(1)
    relevel_shard(RelevelSpec(1, str(path), manifest.shards[1], info, parse_compression("gzip")))
    assert read_manifest(out / "train").shards[1].levels == 0
    result = build_split(config(dataset, out, 2))
    assert (result.built, result.kept, result.relevelled) == (0, 1, 2)
    assert verify_split(out / "train").ok


@pytest.mark.parametrize("earlier, now", [({"precision": "bf16"}, "fp32"), ({"device": "cuda"}, "cpu")])
def test_other_hed_parameters_still_need_force(dataset, out, earlier, now):
    """An earlier build made on another device kind or in another precision (its manifest says so;
    this one runs fp32 on the CPU) is refused, naming the manifest and what differs."""
    manifest = out / "train" / "manifest.json"
    data = json.loads(manifest.read_text())
    data["params"].update(earlier)
    manifest.write_text(json.dumps(data))
    result = invoke("hedprep", "build", "--root", str(dataset), "--split", "train", "--out", str(out),
                    "--frames-per-shard", "2", "--levels", "2", "--device", "cpu", "--precision", "fp32")
    (name, value), = earlier.items()
    assert_one_line_error(result, str(manifest), f"{name} '{value}' -> '{now}'", "--force")
    assert read_manifest(out / "train").params["levels"] == 0  # nothing was touched


def test_the_cli_reports_relevelled_shards(dataset, out):
    result = invoke("hedprep", "build", "--root", str(dataset), "--split", "train", "--out", str(out),
                    "--frames-per-shard", "2", "--levels", "2")
    assert result.returncode == 0, result.stderr
    assert "0 built, 0 kept, 3 rewritten with 2 resolution level(s) from their stored frames (no HED)" in result.stdout


def test_levels_beyond_the_frame_size_are_refused(dataset, tmp_path):
    result = invoke("hedprep", "build", "--root", str(dataset), "--split", "train", "--out", str(tmp_path),
                    "--levels", "7")
    assert_one_line_error(result, "--levels 7: frames of 64x128 take at most 6", status=2)
    assert not (tmp_path / "train").exists()


def v1_build_of(root: Path, out: Path, shards: Path = V1_SHARDS) -> Path:
    """The real v1 shards of tests/data/v1-shards (or the v2 ones of `shards`), as if built from
    `root`: the same fixture frames (seed 5, 64x128) made again there, so only `dataset_root`
    (manifest, shard attributes) changes."""
    from hedprep.digests import file_sha256
    from hedprep.shards.format import set_string_attr

    make_fixture(root, {"train": 4, "val": 2, "test": 0}, size=(64, 128), seed=5)
    split_dir = out / "train"
    shutil.copytree(shards / "train", split_dir)
    manifest_path = split_dir / "manifest.json"
    data = json.loads(manifest_path.read_text())
    data["params"]["dataset_root"] = str(root.resolve())
    for shard in data["shards"]:
        path = split_dir / shard["file"]
        with h5py.File(path, "r+") as f:
            set_string_attr(f, "dataset_root", str(root.resolve()))
        shard["sha256"], shard["bytes"] = file_sha256(path), path.stat().st_size
    manifest_path.write_text(json.dumps(data, indent=1) + "\n")
    return split_dir


def old_build_config(root: Path, tmp_path: Path, levels: int) -> BuildConfig:
    """A build over the earlier version's shards in `tmp_path / "out"`, with `levels`."""
    return BuildConfig(root=str(root), split="train", out=str(tmp_path / "out"), frames_per_shard=3,
                       device="cpu", levels=levels)


def test_v1_builds_get_levels_without_hed(tmp_path):
    root = tmp_path / "cityscapes"
    split_dir = v1_build_of(root, tmp_path / "out")
    assert read_manifest(split_dir).format_version == 1 and verify_split(split_dir).ok
    before = level0(split_dir)

    hed_inference._DETECTORS.clear()
    same = build_split(old_build_config(root, tmp_path, 0))  # v1 shards hold 0 levels: kept as they are
    assert (same.built, same.kept, same.relevelled) == (0, 2, 0) and read_manifest(split_dir).format_version == 3
    result = build_split(old_build_config(root, tmp_path, 2))
    assert not hed_inference._DETECTORS  # HED was never loaded
    assert (result.built, result.kept, result.relevelled) == (0, 0, 2)
    assert_same_level0(level0(split_dir), before)
    assert_levels_derive_from_level0(split_dir, 2)
    assert verify_split(split_dir).ok
    with h5py.File(split_dir / shard_name(0), "r") as f:  # now a v2 shard, viewer pictures included
        assert f.attrs["format_version"] == 3 and "label_colors" in f and f.attrs["default"] == "browse"


def test_v2_builds_resume_and_get_other_levels_keeping_no_device(tmp_path):
    """v2 shards record no device and the precision asked for: a v3 build over them keeps them (the
    device is not compared with a manifest that lacks it), and a rewrite with other levels records
    no device either (their edges were made before one was recorded)."""
    root = tmp_path / "cityscapes"
    split_dir = v1_build_of(root, tmp_path / "out", V2_SHARDS)
    assert read_manifest(split_dir).format_version == 2 and verify_split(split_dir).ok
    before = level0(split_dir)

    hed_inference._DETECTORS.clear()
    same = build_split(old_build_config(root, tmp_path, 3))
    assert (same.built, same.kept, same.relevelled) == (0, 2, 0)
    manifest = read_manifest(split_dir)
    assert manifest.format_version == 3 and manifest.params["device"] == "cpu"
    result = build_split(old_build_config(root, tmp_path, 1))
    assert not hed_inference._DETECTORS  # HED was never loaded
    assert (result.built, result.kept, result.relevelled) == (0, 0, 2)
    assert_same_level0(level0(split_dir), before)
    assert verify_split(split_dir).ok
    with h5py.File(split_dir / shard_name(0), "r") as f:
        assert f.attrs["format_version"] == 3 and f.attrs["levels"] == 1
        assert f.attrs["device"] == b"" and f.attrs["precision"] == b"fp32"


def test_a_shard_whose_frames_were_all_skipped_gets_levels_too(tmp_path):
    from dataclasses import replace

    from hedprep.shards import Compression, ShardWriter, SkippedFrame

    info = ShardInfo("train", "/data/cityscapes", "bsds500", "ab" * 32, "fp32", "gzip:1", 16, 24)
    path = tmp_path / shard_name(0)
    with ShardWriter(path, 2, info, Compression()) as writer:
        writer.append("a_000000_000019", np.zeros((16, 24, 4), np.uint8), None)
        writer.skip(SkippedFrame("a_000001_000019", "/data/a1.png", "not a readable image"))
        one_skipped = writer.close()
    relevelled = relevel_shard(RelevelSpec(0, str(path), one_skipped, replace(info, levels=2), Compression()))
    assert relevelled.skipped == one_skipped.skipped and relevelled.levels == 2
    with ShardWriter(path, 1, info, Compression()) as writer:
        writer.skip(SkippedFrame("a_000000_000019", "/data/a0.png", "not a readable image"))
        all_skipped = writer.close()
    relevelled = relevel_shard(RelevelSpec(0, str(path), all_skipped, replace(info, levels=2), Compression()))
    assert relevelled.frame_ids == [] and relevelled.skipped == all_skipped.skipped and relevelled.levels == 2
    with h5py.File(path, "r") as f:
        assert f["levels/2/frames"].shape == (0, 4, 6, 4) and f.attrs["levels"] == 2
