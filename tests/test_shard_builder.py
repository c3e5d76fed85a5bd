"""hedprep.shard_builder: the threads of a shard task (readers, preparing pool, one writer) make the same
file as one thread appending frame by frame: the same chunk bytes at the same offsets.

HED is replaced by a stand-in here (the pipeline, not HED, is under test; tests/test_build.py builds
with the real one), so the frames can be large enough for several chunks per level at no HED cost."""

from __future__ import annotations

import hashlib
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest

from hedprep.build_plan import BuildConfig, plan_build
from hedprep.cityscapes import read_frame
from hedprep.fixture import make_fixture
from hedprep.hed import HedRun
from hedprep.shard_builder import ShardSpec, build_shard
from hedprep.shards import ShardWriter
from tests.test_build import shard_contents


class GreyEdges:
    """A stand-in for HED: the mean of each pixel's RGB, as a uint8 'edge'."""

    hed_run = HedRun("cpu", "fp32")  # as the specs below are planned

    def edges(self, images: np.ndarray) -> np.ndarray:
        return images.mean(axis=-1).astype(np.uint8)


def shard_layout(path: Path) -> dict:
    """For every chunked dataset, each chunk's position, filter mask and the digest of its decoded bytes.

    Decoded, not stored, bytes: in one full-suite run (Zen 3) a 1-thread build stored one border chunk
    as another deflate stream of the same length that decodes to the same bytes (ISA-L's encoder; the
    cause was not found, and 3000 compressions beside a concurrent one did not reproduce it), so the
    stored bytes and their addresses are not what this compares.
    """
    layout: dict = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and obj.chunks:
                chunks = []
                for k in range(obj.id.get_num_chunks()):
                    info = obj.id.get_chunk_info(k)
                    mask, raw = obj.id.read_direct_chunk(info.chunk_offset)
                    decoded = zlib.decompress(raw) if obj.compression == "gzip" and mask == 0 else raw
                    chunks.append((info.chunk_offset, mask, hashlib.sha256(decoded).hexdigest()))
                layout[name] = chunks

        f.visititems(visit)
    return layout


@pytest.fixture(scope="module")
def specs(tmp_path_factory) -> dict[str, ShardSpec]:
    """One shard spec per split: 3 train frames (labelled) and 2 test frames (no labels), 300x530 so
    each level but the smallest spans several 256x256 chunks, some cut by the border."""
    base = tmp_path_factory.mktemp("builder")
    make_fixture(base / "cityscapes", {"train": 3, "val": 0, "test": 2}, size=(300, 530), seed=9)
    out = {}
    for split in ("train", "test"):
        config = BuildConfig(root=str(base / "cityscapes"), split=split, out=str(base / "planned"),
                             frames_per_shard=3, device="cpu", levels=2)
        out[split] = plan_build(config).specs[0]
    return out


def appended_one_by_one(spec: ShardSpec, path: Path) -> Path:
    """The single-writer result: each frame read, given edges and appended, in this thread."""
    with ShardWriter(path, len(spec.frames), spec.info, spec.compression) as shard:
        for frame in spec.frames:
            rgb, label = read_frame(frame)
            rgbe = np.concatenate([rgb, GreyEdges().edges(rgb[None])[0][..., None]], axis=-1)
            shard.append(frame.frame_id, rgbe, label)
        shard.close()
    return path


@pytest.mark.parametrize("split", ["train", "test"])
def test_shards_are_the_same_with_1_and_2_threads_and_one_writer(specs, tmp_path, split):
    spec = specs[split]
    reference = appended_one_by_one(spec, tmp_path / "appended.h5")
    for threads in (1, 2):
        path = tmp_path / f"threads{threads}.h5"
        built = ShardSpec(spec.index, str(path), spec.frames, spec.info, spec.compression, spec.engine)
        counted = []
        record = build_shard(built, on_frames=counted.append, threads=threads, detector=GreyEdges())
        assert record.frame_ids == spec.frame_ids and sum(counted) == len(spec.frames)
        assert shard_layout(path) == shard_layout(reference), threads
        contents, expected = shard_contents(path), shard_contents(reference)
        assert contents.keys() == expected.keys()
        for key, value in expected.items():
            if key.endswith("@") or key == "/":
                assert contents[key] == value, key
            else:
                assert np.array_equal(contents[key][0], value[0]), key


def test_a_failing_frame_leaves_no_file_with_two_threads(specs, tmp_path):
    spec = specs["train"]

    class FailsOnSecondBatch(GreyEdges):
        calls = 0

        def edges(self, images: np.ndarray) -> np.ndarray:
            self.calls += 1
            if self.calls == 2:
                raise RuntimeError("stand-in failure")
            return super().edges(images)

    path = tmp_path / "s.h5"
    built = ShardSpec(spec.index, str(path), spec.frames, spec.info, spec.compression, spec.engine)
    with pytest.raises(RuntimeError, match="stand-in failure"):
        build_shard(built, threads=2, detector=FailsOnSecondBatch())
    assert list(tmp_path.iterdir()) == []


def test_a_worker_running_hed_otherwise_than_planned_writes_nothing(specs, tmp_path):
    """A shard records the device kind and precision that made it, so a worker that would run HED
    otherwise than the manifest says (no bf16 there, say) fails its task with one line."""
    from hedprep.errors import HedprepError

    class Bf16GreyEdges(GreyEdges):
        hed_run = HedRun("cuda", "bf16")

    spec = specs["train"]
    built = ShardSpec(spec.index, str(tmp_path / "s.h5"), spec.frames, spec.info, spec.compression, spec.engine)
    message = "s.h5: HED runs on cuda in bf16 here, but the build was planned for cpu in fp32"
    with pytest.raises(HedprepError, match=message):
        build_shard(built, detector=Bf16GreyEdges())
    assert list(tmp_path.iterdir()) == []
