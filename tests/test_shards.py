"""hedprep.shards: the shard file format v1, written and read back with real HDF5 files."""

from __future__ import annotations

import json
import os
import pickle
import warnings
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest

from hedprep.cityscapes import trainid_palette, trainid_to_color
from hedprep.errors import HedprepError
from hedprep.options import parse_compression
from hedprep.shards import (
    CHANNELS,
    MANIFEST_NAME,
    Compression,
    IncompleteSplitError,
    Manifest,
    ShardInfo,
    ShardRecord,
    ShardWriter,
    SkippedFrame,
    check_shard,
    downsample_frame,
    downsample_labels,
    open_split,
    read_manifest,
    resize_frame,
    resize_labels,
    shard_is_complete,
    shard_name,
    shard_path,
    verify_split,
    write_manifest,
)

H, W = 24, 40
INFO = ShardInfo("train", "/data/cityscapes", "bsds500", "ab" * 32, "fp32", "gzip:1", H, W)


def random_frames(n: int, seed: int = 0) -> tuple[list[str], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = [f"aachen_{i:06d}_000019" for i in range(n)]
    return ids, rng.integers(0, 256, (n, H, W, 4), dtype=np.uint8), rng.integers(0, 19, (n, H, W), dtype=np.uint8)


GZIP = Compression()


def write(path, ids, frames, labels, compression: Compression = GZIP):
    with ShardWriter(path, len(ids), INFO, compression) as writer:
        for frame_id, frame, label in zip(ids, frames, labels, strict=True):
            writer.append(frame_id, frame, label)
        return writer.close()


@pytest.fixture
def split(tmp_path):
    """A split of two shards (3 + 2 frames) with its manifest."""
    ids, frames, labels = random_frames(5)
    records = [write(tmp_path / shard_name(0), ids[:3], frames[:3], labels[:3]),
               write(tmp_path / shard_name(1), ids[3:], frames[3:], labels[3:])]
    write_manifest(tmp_path, Manifest("train", {**vars(INFO), "frames_per_shard": 3}, records, complete=True))
    return tmp_path, ids, frames, labels


def string_attr_type(obj, name: str):
    return obj.attrs.get_id(name).get_type()


# ------------------------------------------------------------------------------------------- writing


def test_shard_holds_frames_labels_ids_and_attributes(tmp_path):
    ids, frames, labels = random_frames(3)
    record = write(tmp_path / "s.h5", ids, frames, labels)
    assert record.file == "s.h5" and record.frame_ids == ids and record.bytes == (tmp_path / "s.h5").stat().st_size
    with h5py.File(tmp_path / "s.h5", "r") as f:
        assert f["frames"].dtype == np.uint8 and f["frames"].shape == (3, H, W, 4)
        assert f["frames"].chunks == (1, H, W, 4) and f["frames"].compression == "gzip"  # frames below a tile
        assert f["frames"].compression_opts == 1 and f["labels"].chunks == (1, H, W)
        assert np.array_equal(f["frames"][()], frames) and np.array_equal(f["labels"][()], labels)
        assert [i.decode() for i in f["frame_ids"][()]] == ids
        assert [c.decode() for c in f["frames"].attrs["channel_names"]] == list(CHANNELS)
        assert "CLASS" not in f["frames"].attrs  # viewers would draw the edge channel as alpha
        attrs = f.attrs
        assert attrs["format"] == b"hedseg-shards" and attrs["format_version"] == 3 and attrs["levels"] == 0
        assert "levels" not in f  # INFO asks for no resolution levels
        assert attrs["hed_weights_sha256"] == b"ab" * 32 and attrs["frame_height"] == H
        for name in ("split", "dataset_root", "hed_weights", "precision", "compression", "package_version",
                     "created"):
            assert name in attrs


def test_viewer_pictures_are_nexus_rgb_images_over_the_data(tmp_path):
    ids, frames, labels = random_frames(2)
    write(tmp_path / "s.h5", ids, frames, labels)
    with h5py.File(tmp_path / "s.h5", "r") as f:
        assert f.attrs["default"] == "browse"  # NeXus: the picture a viewer opens the file on
        browse = f["browse"]
        assert browse.attrs["NX_class"] == "NXdata" and browse.attrs["signal"] == "data"
        assert list(browse.attrs["axes"]) == [".", "y", ".", "."] and browse.attrs["y_indices"] == 1
        assert browse["data"].is_virtual and np.array_equal(browse["data"][()], frames[..., :3])
        assert browse["data"].attrs["interpretation"] == "rgb-image" and "CLASS" not in browse["data"].attrs
        assert browse["y"][()].tolist() == list(range(H - 1, -1, -1))  # downward: drawn upright
        assert np.array_equal(f["label_colors"][()], trainid_to_color(labels))
        for i, frame_id in enumerate(ids):
            entry = f["images"][frame_id]
            assert entry.attrs["NX_class"] == "NXentry" and entry.attrs["default"] == "rgb"
            expected = {"rgb": frames[i, :, :, :3], "edge": np.repeat(frames[i, :, :, 3:], 3, axis=2),
                        "label": trainid_to_color(labels[i])}
            for name, pixels in expected.items():
                group = entry[name]
                assert group.attrs["NX_class"] == "NXdata" and group.attrs["signal"] == "data"
                assert list(group.attrs["axes"]) == ["y", ".", "."] and group.attrs["y_indices"] == 0
                assert group["y"][()].tolist() == list(range(H - 1, -1, -1))
                data = group["data"]
                assert data.is_virtual and np.array_equal(data[()], pixels), name
                assert data.attrs["interpretation"] == "rgb-image"
                assert (data.attrs["CLASS"], data.attrs["IMAGE_VERSION"]) == ("IMAGE", "1.2")
                assert data.attrs["IMAGE_SUBCLASS"] == "IMAGE_TRUECOLOR"
                assert data.attrs["INTERLACE_MODE"] == "INTERLACE_PIXEL"
                # Variable-length strings: HDF Compass does not recognise fixed-length ones as images.
                assert string_attr_type(data, "CLASS").is_variable_str()
        assert np.array_equal(f["palette"][()], trainid_palette()) and f["palette"].attrs["CLASS"] == b"PALETTE"
        # Views point at this file itself ("."), so they survive the rename from the temporary name.
        assert {s.file_name for s in f["images"][ids[0]]["rgb"]["data"].virtual_sources()} == {"."}
        assert {s.file_name for s in f["images"][ids[0]]["label"]["data"].virtual_sources()} == {"."}


def test_the_shard_names_the_filter_plugin_it_needs(tmp_path):
    ids, frames, labels = random_frames(1)
    write(tmp_path / "gzip.h5", ids, frames, labels)
    write(tmp_path / "zstd.h5", ids, frames, labels, parse_compression("zstd"))
    with h5py.File(tmp_path / "gzip.h5", "r") as gzip, h5py.File(tmp_path / "zstd.h5", "r") as zstd:
        assert gzip.attrs["filter_plugin"] == b""
        note = zstd.attrs["filter_plugin"].decode()
        assert "32015" in note and "hdf5plugin" in note and "HDF5_PLUGIN_PATH" in note


def test_views_still_resolve_after_the_shard_is_moved(tmp_path):
    ids, frames, labels = random_frames(1)
    write(tmp_path / "s.h5", ids, frames, labels)
    moved = tmp_path / "elsewhere" / "renamed.h5"
    moved.parent.mkdir()
    os.replace(tmp_path / "s.h5", moved)
    with h5py.File(moved, "r") as f:
        assert np.array_equal(f["images"][ids[0]]["edge"]["data"][:, :, 0], frames[0, :, :, 3])


def test_missing_labels_are_ignore_and_unused_capacity_is_dropped(tmp_path):
    ids, frames, _ = random_frames(2)
    with ShardWriter(tmp_path / "s.h5", 5, INFO, Compression()) as writer:
        for frame_id, frame in zip(ids, frames, strict=True):
            writer.append(frame_id, frame, None)
        writer.skip(SkippedFrame("aachen_000009_000019", "/x.png", "not a readable image", "/x.png"))
        record = writer.close()
    assert record.skipped == [SkippedFrame("aachen_000009_000019", "/x.png", "not a readable image", "/x.png")]
    assert record.planned_ids == sorted(ids + ["aachen_000009_000019"])
    with h5py.File(tmp_path / "s.h5", "r") as f:
        assert f["frames"].shape[0] == 2 and (f["labels"][()] == 255).all()


def test_nothing_is_on_disk_until_close_and_an_error_leaves_nothing(tmp_path):
    ids, frames, labels = random_frames(2)
    with pytest.raises(RuntimeError), ShardWriter(tmp_path / "s.h5", 2, INFO, Compression()) as writer:
        writer.append(ids[0], frames[0], labels[0])
        assert list(tmp_path.iterdir()) == []
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_a_frame_of_the_wrong_shape_is_refused(tmp_path):
    with ShardWriter(tmp_path / "s.h5", 1, INFO, Compression()) as writer:
        with pytest.raises(HedprepError, match=r"takes uint8 \(24, 40, 4\)"):
            writer.append("aachen_000000_000019", np.zeros((H, W, 3), np.uint8), None)


def test_large_frames_are_chunked_in_256x256_tiles(tmp_path):
    info = ShardInfo("train", "/data", "bsds500", "ab" * 32, "fp32", "gzip:1", 300, 520)
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 256, (300, 520, 4), dtype=np.uint8)
    label = rng.integers(0, 19, (300, 520), dtype=np.uint8)
    with ShardWriter(tmp_path / "s.h5", 1, info, Compression()) as writer:
        writer.append("aachen_000000_000019", frame, label)
        writer.close()
    with h5py.File(tmp_path / "s.h5", "r") as f:
        assert f["frames"].chunks == (1, 256, 256, 4) and f["labels"].chunks == (1, 256, 256)
        assert np.array_equal(f["frames"][0], frame) and np.array_equal(f["labels"][0], label)
        assert np.array_equal(f["frames"][0, 100:300, 200:500], frame[100:300, 200:500])
        assert np.array_equal(f["images/aachen_000000_000019/label/data"][()], trainid_to_color(label))
        assert f["label_colors"].chunks == (1, 256, 256, 3)


@pytest.mark.parametrize("text", ["none", "gzip:6", "lzf", "zstd", "lz4"])
def test_every_codec_round_trips(tmp_path, text):
    ids, frames, labels = random_frames(2)
    write(tmp_path / "s.h5", ids, frames, labels, parse_compression(text))
    with h5py.File(tmp_path / "s.h5", "r") as f:
        assert np.array_equal(f["frames"][()], frames) and np.array_equal(f["labels"][()], labels)


def test_gzip_levels_1_to_3_are_deflated_by_isal_into_standard_gzip_chunks(tmp_path):
    import zlib

    from hedprep.shards.compression import fast_deflate

    assert fast_deflate(parse_compression("gzip")) is not None and fast_deflate(parse_compression("gzip:3"))
    assert fast_deflate(parse_compression("gzip:6")) is None and fast_deflate(parse_compression("zstd")) is None
    ids, frames, labels = random_frames(1)
    write(tmp_path / "s.h5", ids, frames, labels)
    with h5py.File(tmp_path / "s.h5", "r") as f:
        filter_mask, chunk = f["frames"].id.read_direct_chunk((0, 0, 0, 0))
        assert filter_mask == 0 and zlib.decompress(chunk) == frames[0].tobytes()  # plain zlib reads it


# ------------------------------------------------------------------------------------------- reading


def test_split_reader_gives_random_access_across_shards(split):
    split_dir, ids, frames, labels = split
    reader = open_split(split_dir)
    assert len(reader) == 5 and reader.frame_ids == ids
    for i in (4, 0, 3, 2, -1):
        sample = reader[i]
        assert sample.frame_id == ids[i]
        assert np.array_equal(sample.frame, frames[i]) and np.array_equal(sample.label, labels[i])
    with pytest.raises(IndexError):
        reader[5]
    assert [s.frame_id for s in reader] == ids
    reader.close()


def test_split_reader_pickles_without_handles_and_reopens(split):
    split_dir, ids, frames, _ = split
    reader = open_split(split_dir.parent, split_dir.name)
    reader[0]
    clone = pickle.loads(pickle.dumps(reader))
    assert clone._handles == {} and np.array_equal(clone[3].frame, frames[3])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_split_reader_is_fork_safe(split):
    split_dir, ids, frames, _ = split
    reader = open_split(split_dir)
    reader[0]  # the parent has a handle open
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: must open its own handles, and read correct data; never return into pytest
        ok = False
        try:
            ok = all(np.array_equal(reader[i].frame, frames[i]) for i in range(5)) and reader._pid == os.getpid()
        finally:
            os.write(write_end, b"1" if ok else b"0")
            os._exit(0)
    os.close(write_end)
    assert os.read(read_end, 1) == b"1"
    os.waitpid(pid, 0)
    assert np.array_equal(reader[1].frame, frames[1])  # the parent's handles still work


def test_incomplete_build_reads_with_a_warning(split):
    split_dir, *_ = split
    manifest = read_manifest(split_dir)
    manifest.complete = False
    write_manifest(split_dir, manifest)
    with pytest.warns(UserWarning, match="incomplete"):
        assert len(open_split(split_dir)) == 5
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "error" raises instead of warning
        with pytest.raises(IncompleteSplitError, match=rf"^{split_dir / MANIFEST_NAME}: the build is incomplete"):
            open_split(split_dir, incomplete="error")
    with pytest.raises(ValueError, match="incomplete='ignore'"):
        open_split(split_dir, incomplete="ignore")
    manifest.complete = True  # the manifest's record decides, not what the folder holds
    write_manifest(split_dir, manifest)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(open_split(split_dir, incomplete="error")) == 5


# --------------------------------------------------------------------------------------- checking


def test_verify_and_completeness(split):
    split_dir, ids, *_ = split
    check = verify_split(split_dir)
    assert check.ok and check.bad == [] and check.manifest.num_frames == 5
    record = check.manifest.shards[0]
    assert shard_is_complete(split_dir / record.file, record, ids[:3])
    assert not shard_is_complete(split_dir / record.file, record, ids[:2])  # other frames planned
    assert not shard_is_complete(split_dir / record.file, None, ids[:3])
    data = bytearray((split_dir / record.file).read_bytes())
    data[len(data) // 2] ^= 1
    (split_dir / record.file).write_bytes(bytes(data))
    assert not shard_is_complete(split_dir / record.file, record, ids[:3])
    bad = verify_split(split_dir).bad
    assert [b.file for b in bad] == [record.file] and "sha256" in bad[0].problems[0]


def test_check_shard_names_what_is_wrong(tmp_path, split):
    split_dir, *_ = split
    record = read_manifest(split_dir).shards[1]
    assert check_shard(tmp_path / "nope.h5") == ["missing"]
    (tmp_path / "text.h5").write_text("hello")
    assert "not a readable HDF5 file" in check_shard(tmp_path / "text.h5")[0]
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = 1
    assert check_shard(tmp_path / "other.h5") == ["not a hedseg-shards v1, v2 or v3 shard"]
    wrong = record.__class__(record.file, record.sha256, ["other_000000_000019"] * 2, record.bytes)
    assert "frame ids differ from the manifest" in check_shard(split_dir / record.file, wrong)


def test_manifest_paths_cannot_leave_the_split_folder(split):
    split_dir, *_ = split
    for name in ("../x.h5", "/etc/passwd", "sub/x.h5", ".."):
        with pytest.raises(HedprepError, match="leaves the split folder"):
            shard_path(split_dir, name)


def test_manifest_errors(tmp_path):
    with pytest.raises(HedprepError, match="no manifest"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(HedprepError, match="not a readable manifest"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text('{"format": "hedseg-shards", "format_version": 4}')
    with pytest.raises(HedprepError, match="format version 4, this hedprep reads versions 1, 2 and 3"):
        read_manifest(tmp_path)


def test_manifest_write_is_atomic_and_round_trips(tmp_path):
    skipped = SkippedFrame("aachen_000009_000019", "/data/x.png", "not a readable image", "/data/x.png")
    records = [ShardRecord(shard_name(0), "ab" * 32, ["aachen_000000_000019"], 1234, [skipped]),
               ShardRecord(shard_name(1), "cd" * 32, ["bochum_000000_000019", "bochum_000001_000019"], 99)]
    manifest = Manifest("val", {**vars(INFO), "frames_per_shard": 2}, records, complete=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write_manifest(tmp_path, manifest)
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]  # no temporary file left
    back = read_manifest(tmp_path)
    assert back == manifest and back.skipped == [skipped] and back.num_frames == 3
    on_disk = json.loads((tmp_path / "manifest.json").read_text())
    assert on_disk["num_frames"] == 3 and on_disk["skipped"] == [vars(skipped)]
    assert on_disk["format"] == "hedseg-shards" and on_disk["format_version"] == 3


# --------------------------------------------------------------------------------- resolution levels


def test_levels_are_stored_as_level_0_downsampled(tmp_path):
    ids, frames, labels = random_frames(3)
    info = replace(INFO, levels=2)
    with ShardWriter(tmp_path / "s.h5", 3, info, GZIP) as writer:
        writer.append(ids[0], frames[0], labels[0])
        writer.append(ids[1], frames[1], None)  # no labels: no label chunks at any level
        record = writer.close()
    assert record.levels == 2
    with h5py.File(tmp_path / "s.h5", "r") as f:
        assert f.attrs["format_version"] == 3 and f.attrs["levels"] == 2 and list(f["levels"]) == ["1", "2"]
        for k, (h, w) in ((1, (12, 20)), (2, (6, 10))):
            group = f[f"levels/{k}"]
            assert group.attrs["downsample_factor"] == 2**k
            assert group.attrs["image_filter"] == b"area" and group.attrs["label_rule"] == b"majority"
            assert group["frames"].shape == (2, h, w, 4) and group["frames"].chunks == (1, h, w, 4)
            assert group["labels"].shape == (2, h, w) and group["labels"].fillvalue == 255
            assert group["frames"].compression == "gzip" and group["frames"].compression_opts == 1
            assert np.array_equal(group["frames"][0], downsample_frame(frames[0], k))
            assert np.array_equal(group["labels"][0], downsample_labels(labels[0], k))
            assert np.all(group["labels"][1] == 255)
        assert f["levels/1/labels"].id.get_storage_size() < f["levels/1/frames"].id.get_storage_size()


def test_large_levels_are_chunked_in_tiles_too(tmp_path):
    info = replace(INFO, frame_height=600, frame_width=1100, levels=2)
    with ShardWriter(tmp_path / "s.h5", 1, info, GZIP) as writer:
        writer.append("aachen_000000_000019", np.zeros((600, 1100, 4), np.uint8), np.zeros((600, 1100), np.uint8))
        writer.close()
    with h5py.File(tmp_path / "s.h5", "r") as f:
        assert f["levels/1/frames"].shape == (1, 300, 550, 4) and f["levels/1/frames"].chunks == (1, 256, 256, 4)
        assert f["levels/2/frames"].shape == (1, 150, 275, 4) and f["levels/2/frames"].chunks == (1, 150, 256, 4)


@pytest.fixture(scope="module")
def street_splits(tmp_path_factory):
    """The same 4 fixture street scenes of 256x512 written twice: with 3 levels and with none. The edge
    channel is a blurred Canny map (HED's soft edges, without running HED)."""
    import cv2

    from hedprep.cityscapes import list_frames, read_frame
    from hedprep.fixture import make_fixture

    base = tmp_path_factory.mktemp("levels")
    make_fixture(base / "cityscapes", {"train": 4, "val": 0, "test": 0}, size=(256, 512), seed=4)
    frames = list_frames(base / "cityscapes", "train")
    info = ShardInfo("train", str(base / "cityscapes"), "bsds500", "ab" * 32, "fp32", "gzip:1", 256, 512)
    for levels in (0, 3):
        split_dir = base / f"levels{levels}"
        split_dir.mkdir()
        with ShardWriter(split_dir / shard_name(0), len(frames), replace(info, levels=levels), GZIP) as writer:
            for frame in frames:
                rgb, label = read_frame(frame)
                edge = cv2.GaussianBlur(cv2.Canny(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), 50, 150), (5, 5), 1.5)
                writer.append(frame.frame_id, np.dstack([rgb, edge]), label)
            record = writer.close()
        params = {**vars(replace(info, levels=levels)), "frames_per_shard": 4}
        write_manifest(split_dir, Manifest("train", params, [record], complete=True))
    return open_split(base / "levels0"), open_split(base / "levels3")


@pytest.mark.parametrize("size", [(128, 224), (64, 112), (32, 56), (100, 200)])
def test_reading_through_levels_agrees_with_reading_at_full_resolution(street_splits, size):
    """The level path (the smallest level at least `size`, then resized) against the full-resolution path
    (level 0 resized to `size` by the same filters). Bounds, measured here with margin: mean absolute
    difference at most 2 of 255 in RGB and in the edge (measured 0.6-1.3 and 0.7-1.6), and labels equal
    on at least 97% of the pixels both define (measured 98.0-98.9%)."""
    full, levelled = street_splits
    assert (full.levels, levelled.levels) == (0, 3)
    for i in range(len(full)):
        a, b = full.read(i, size), levelled.read(i, size)
        assert a.frame.shape == b.frame.shape == (*size, 4) and a.label.shape == b.label.shape == size
        diff = np.abs(a.frame.astype(np.int16) - b.frame.astype(np.int16))
        assert diff[..., :3].mean() <= 2.0 and diff[..., 3].mean() <= 2.0, (size, i)
        both = (a.label != 255) & (b.label != 255)
        assert both.mean() > 0.5 and (a.label[both] == b.label[both]).mean() >= 0.97, (size, i)


def test_reads_decode_the_chosen_level_only(street_splits):
    _, levelled = street_splits
    frame, label, frame_id = levelled.read(1, (32, 64))  # level 3 exactly: no resize at all
    with h5py.File(levelled.split_dir / shard_name(0), "r") as f:
        assert np.array_equal(frame, f["levels/3/frames"][1]) and np.array_equal(label, f["levels/3/labels"][1])
        full_labels = levelled.read(1, (32, 64), full_size_labels=True).label
        assert np.array_equal(full_labels, f["labels"][1])
    assert levelled.read(1).frame.shape == (256, 512, 4) and levelled[1].frame_id == frame_id


def test_verify_checks_the_levels(tmp_path):
    ids, frames, labels = random_frames(3)
    info = replace(INFO, levels=1)
    with ShardWriter(tmp_path / shard_name(0), 3, info, GZIP) as writer:
        for frame_id, frame, label in zip(ids, frames, labels, strict=True):
            writer.append(frame_id, frame, label)
        record = writer.close()
    write_manifest(tmp_path, Manifest("train", {**vars(info), "frames_per_shard": 3}, [record], complete=True))
    assert verify_split(tmp_path).ok
    path = tmp_path / shard_name(0)
    with h5py.File(path, "r+") as f:  # a level that is not its level 0 downsampled
        f["levels/1/labels"][0, 0, 0] = (f["levels/1/labels"][0, 0, 0] + 1) % 19
    assert check_shard(path, info=info) == [f"level 1 labels of frame 0 ({ids[0]}) are not its labels downsampled"]
    problems = check_shard(path, replace(record, levels=0), info)
    assert problems[0].startswith("size ") and problems[1] == "holds 1 resolution level(s), the manifest says 0"


def test_every_frame_check_decodes_the_frames_between_first_and_last(tmp_path):
    ids, frames, labels = random_frames(3)
    path = tmp_path / "s.h5"
    write(path, ids, frames, labels)
    with h5py.File(path, "r") as f:
        chunk = f["frames"].id.get_chunk_info(1)  # frame 1's only tile
    data = bytearray(path.read_bytes())
    data[chunk.byte_offset + chunk.size // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert check_shard(path) == []  # the first and last frame decode
    assert check_shard(path, every_frame=True)[0].startswith("data does not decode")


# ------------------------------------------------------------------------------ format v1 (no levels)

V1_SHARDS = Path(__file__).parent / "data" / "v1-shards"
V2_SHARDS = Path(__file__).parent / "data" / "v2-shards"


def test_v2_shards_are_read_and_verified():
    """v2 shards (no `device`, `precision` as asked for) read and verify as they are."""
    manifest = read_manifest(V2_SHARDS / "train")
    assert manifest.format_version == 2 and "device" not in manifest.params
    reader = open_split(V2_SHARDS, "train")
    assert len(reader) == 4 and reader.levels == 3 and reader.frame_size == (64, 128)
    assert reader.read(3, (16, 32)).frame.shape == (16, 32, 4)
    with h5py.File(V2_SHARDS / "train" / shard_name(0), "r") as f:
        assert f.attrs["format_version"] == 2 and "device" not in f.attrs
    for split in ("train", "val"):
        check = verify_split(V2_SHARDS / split)
        assert check.ok and not check.unlisted, check


def test_verify_names_a_shard_made_on_another_device_or_precision(tmp_path):
    ids, frames, labels = random_frames(2)
    records = []
    for index, (device, precision) in enumerate([("cpu", "fp32"), ("cuda", "bf16")]):
        with ShardWriter(tmp_path / shard_name(index), 1, replace(INFO, device=device, precision=precision),
                         GZIP) as writer:
            writer.append(ids[index], frames[index], labels[index])
            records.append(writer.close())
    params = {**vars(replace(INFO, device="cpu")), "frames_per_shard": 1}
    write_manifest(tmp_path, Manifest("train", params, records, complete=True))
    check = verify_split(tmp_path)
    assert [(b.file, b.problems) for b in check.bad] == [
        (shard_name(1), ["made by HED on cuda bf16, the manifest says cpu fp32"])
    ]


def test_v1_shards_are_read_verified_and_read_at_any_size():
    manifest = read_manifest(V1_SHARDS / "train")
    assert manifest.format_version == 1 and all(s.levels == 0 for s in manifest.shards)
    assert "levels" not in manifest.params
    reader = open_split(V1_SHARDS, "train")
    assert len(reader) == 4 and reader.levels == 0 and reader.frame_size == (64, 128)
    frame, label, _ = reader[3]
    small = reader.read(3, (32, 48))
    assert np.array_equal(small.frame, resize_frame(frame, (32, 48)))
    assert np.array_equal(small.label, resize_labels(label, (32, 48)))
    with h5py.File(V1_SHARDS / "train" / shard_name(0), "r") as f:
        assert f.attrs["format_version"] == 1 and "levels" not in f.attrs and "levels" not in f
    for split in ("train", "val"):
        check = verify_split(V1_SHARDS / split)
        assert check.ok and not check.unlisted, check


@pytest.mark.parametrize("text", ["gzip", "gzip:6", "lzf", "none"])
def test_whole_frame_reads_equal_h5py_reads(tmp_path, text):
    """gzip chunks are inflated by ISA-L from `read_direct_chunk`: tiles cut by the border, chunks never
    written (the fill value) and every level must read as h5py reads them; other filters go through h5py."""
    from hedprep.shards.frame_reads import FrameReader

    rng = np.random.default_rng(3)
    info = replace(INFO, frame_height=300, frame_width=530, levels=2)
    frames = rng.integers(0, 256, (2, 300, 530, 4), dtype=np.uint8)
    label = rng.integers(0, 19, (300, 530), dtype=np.uint8)
    with ShardWriter(tmp_path / "s.h5", 2, info, parse_compression(text)) as writer:
        writer.append("aachen_000000_000019", frames[0], label)
        writer.append("aachen_000001_000019", frames[1], None)
        writer.close()
    with h5py.File(tmp_path / "s.h5", "r") as f:
        for name in ("frames", "labels", "levels/1/frames", "levels/1/labels", "levels/2/labels"):
            read = FrameReader(f[name])
            assert (read._inflate is not None) == text.startswith("gzip"), name
            for i in (0, 1):
                assert np.array_equal(read(i), f[name][i]), (name, i)
        assert np.all(FrameReader(f["labels"])(1) == 255)


@pytest.mark.parametrize("text", ["gzip", "lzf"])
def test_region_reads_equal_slices_of_whole_frames(tmp_path, text):
    """A region read (ISA-L over the tiles it meets, or h5py) is that slice of the whole frame, at every
    level, for boxes inside one tile, across tiles and at the border; the split reader reads them too."""
    rng = np.random.default_rng(5)
    info = replace(INFO, frame_height=300, frame_width=530, levels=1)
    frames = rng.integers(0, 256, (1, 300, 530, 4), dtype=np.uint8)
    label = rng.integers(0, 19, (300, 530), dtype=np.uint8)
    with ShardWriter(tmp_path / shard_name(0), 1, info, parse_compression(text)) as writer:
        writer.append("aachen_000000_000019", frames[0], label)
        record = writer.close()
    write_manifest(tmp_path, Manifest("train", {**vars(info), "frames_per_shard": 1}, [record], complete=True))
    reader = open_split(tmp_path)
    boxes = [((10, 20), (30, 40)), ((200, 300), (250, 530)), ((0, 300), (0, 530)), ((255, 257), (511, 513))]
    for rows, cols in boxes:
        for dataset in ("frames", "labels"):
            whole = reader.read(0).frame if dataset == "frames" else reader.read(0).label
            expected = whole[rows[0] : rows[1], cols[0] : cols[1]]
            assert np.array_equal(reader.read_region(0, 0, rows, cols, dataset), expected), (rows, cols, dataset)
    level1 = downsample_frame(frames[0], 1)  # 150x265
    assert np.array_equal(reader.read_region(-1, 1, (100, 150), (7, 265)), level1[100:150, 7:265])
    with pytest.raises(ValueError, match="not a box"):
        reader.read_region(0, 1, (100, 151), (0, 10))
    with pytest.raises(ValueError, match="levels 0 to 1"):
        reader.read_region(0, 2, (0, 1), (0, 1))


def test_verify_takes_a_level_pixel_off_by_one_but_not_by_two(tmp_path):
    ids, frames, labels = random_frames(1)
    info = replace(INFO, levels=1)
    path = tmp_path / "s.h5"
    with ShardWriter(path, 1, info, GZIP) as writer:
        writer.append(ids[0], frames[0], labels[0])
        writer.close()
    with h5py.File(path, "r+") as f:
        f["levels/1/frames"][0, 0, 0, 0] = downsample_frame(frames[0], 1)[0, 0, 0] ^ 1  # a tie rounded the other way
    assert check_shard(path, info=info) == []
    with h5py.File(path, "r+") as f:
        f["levels/1/frames"][0, 0, 0, 0] = (int(downsample_frame(frames[0], 1)[0, 0, 0]) + 2) % 256
    assert check_shard(path, info=info) == [f"level 1 of frame 0 ({ids[0]}) is not its level-0 frame downsampled"]
