"""hedprep.shards' resume rules, on real files without Dask or HED: what an earlier build leaves that
a rerun keeps, adopts, removes and records."""

from __future__ import annotations

from dataclasses import asdict, replace

import h5py
import numpy as np
import pytest

from hedprep.errors import HedprepError
from hedprep.shards import (
    Compression,
    Manifest,
    ManifestKeeper,
    ShardInfo,
    ShardWriter,
    build_lock,
    earlier_manifest,
    kept_shards,
    read_manifest,
    remove_leftovers,
    shard_name,
    write_manifest,
)

H, W = 16, 24
INFO = ShardInfo("train", "/data/cityscapes", "bsds500", "cd" * 32, "fp32", "gzip:1", H, W)
PARAMS = {**asdict(INFO), "labels": "fine", "frames_per_shard": 2, "limit": None, "on_error": "fail"}
PLANNED = {0: ["a_000000_000019", "a_000001_000019"], 1: ["b_000000_000019", "b_000001_000019"],
           2: ["c_000000_000019"]}


def write_shard(split_dir, index, frame_ids, info=INFO):
    rng = np.random.default_rng(index)
    with ShardWriter(split_dir / shard_name(index), len(frame_ids), info, Compression()) as writer:
        for frame_id in frame_ids:
            writer.append(frame_id, rng.integers(0, 256, (H, W, 4), dtype=np.uint8), None)
        return writer.close()


@pytest.fixture
def interrupted(tmp_path):
    """A build stopped after shards 0 and 1 were written, but before the manifest listed shard 1."""
    records = {i: write_shard(tmp_path, i, PLANNED[i]) for i in (0, 1)}
    write_manifest(tmp_path, Manifest("train", PARAMS, [records[0]], complete=False))
    return tmp_path, records


def test_listed_complete_shards_are_kept_and_unlisted_sound_ones_adopted(interrupted):
    split_dir, records = interrupted
    kept = kept_shards(split_dir, PLANNED, earlier_manifest(split_dir, PARAMS, force=False))
    assert sorted(kept) == [0, 1]
    assert kept[0] == records[0]
    assert kept[1].sha256 == records[1].sha256 and kept[1].frame_ids == PLANNED[1]  # adopted, same bytes


def test_damaged_or_foreign_shards_are_not_kept(interrupted):
    split_dir, records = interrupted
    data = bytearray((split_dir / shard_name(0)).read_bytes())
    data[len(data) // 2] ^= 1
    (split_dir / shard_name(0)).write_bytes(bytes(data))
    write_shard(split_dir, 1, PLANNED[1], replace(INFO, precision="bf16"))  # unlisted, other parameters
    kept = kept_shards(split_dir, PLANNED, earlier_manifest(split_dir, PARAMS, force=False))
    assert kept == {}


def test_listed_shard_rewritten_with_other_levels_is_adopted(interrupted):
    """A rewrite with other resolution levels stopped between its rename and the manifest's rewrite."""
    split_dir, records = interrupted
    rewritten = write_shard(split_dir, 0, PLANNED[0], replace(INFO, levels=2))
    kept = kept_shards(split_dir, PLANNED, earlier_manifest(split_dir, {**PARAMS, "levels": 2}, force=False))
    assert sorted(kept) == [0, 1] and kept[0] == rewritten and kept[0].levels == 2 and records[0].levels == 0
    # the same file with a damaged byte in the last frame's level-1 pixels is not adopted: every chunk
    # of an adopted file is decoded (zlib checksums), not only the first and last frame's level 0
    path = split_dir / shard_name(0)
    with h5py.File(path, "r") as f:
        chunks = f["levels/1/frames"].id
        chunk = chunks.get_chunk_info(chunks.get_num_chunks() - 1)
    data = bytearray(path.read_bytes())
    data[chunk.byte_offset + chunk.size // 2] ^= 1
    path.write_bytes(bytes(data))
    assert sorted(kept_shards(split_dir, PLANNED, read_manifest(split_dir))) == [1]


def test_unlisted_shard_with_other_frames_is_not_adopted(interrupted):
    split_dir, _ = interrupted
    write_shard(split_dir, 1, PLANNED[1][:1])
    assert sorted(kept_shards(split_dir, PLANNED, read_manifest(split_dir))) == [0]


def test_nothing_is_kept_without_an_earlier_manifest(interrupted):
    split_dir, _ = interrupted
    assert kept_shards(split_dir, PLANNED, None) == {}


def test_other_parameters_are_refused_unless_forced(interrupted):
    split_dir, _ = interrupted
    other = {**PARAMS, "compression": "lzf"}
    with pytest.raises(HedprepError, match="compression 'gzip:1' -> 'lzf'.*--force"):
        earlier_manifest(split_dir, other, force=False)
    assert earlier_manifest(split_dir, other, force=True) is None
    assert earlier_manifest(split_dir, {**PARAMS, "limit": 3}, force=False) is not None  # not compared


def test_leftovers_are_removed_with_a_warning_that_says_why(interrupted):
    split_dir, _ = interrupted
    (split_dir / ".shard-00002.h5.123-abcd.tmp").write_bytes(b"half")
    write_shard(split_dir, 7, ["z_000000_000019"])
    with pytest.warns(UserWarning) as caught:
        remove_leftovers(split_dir, planned=PLANNED, kept=[0])
    messages = sorted(str(w.message) for w in caught)
    assert "shard-00001.h5: not a complete shard of this build" in messages[0] and "rebuilding it" in messages[0]
    assert "shard-00007.h5: removed, it is not part of this build's plan" in messages[1]
    assert sorted(p.name for p in split_dir.iterdir()) == ["manifest.json", shard_name(0)]


def test_one_build_at_a_time(tmp_path):
    with build_lock(tmp_path), pytest.raises(HedprepError, match="another hedprep build is writing here"):
        with build_lock(tmp_path):
            pass
    with build_lock(tmp_path):  # released
        pass


def test_manifest_keeper_lists_shards_in_index_order(interrupted):
    split_dir, records = interrupted
    keeper = ManifestKeeper(split_dir, PARAMS, {1: records[1]})
    keeper.add(0, records[0])
    on_disk = read_manifest(split_dir)
    assert [s.file for s in on_disk.shards] == [shard_name(0), shard_name(1)] and not on_disk.complete
    assert keeper.built == 1
    assert keeper.write(complete=True).complete and read_manifest(split_dir).complete
