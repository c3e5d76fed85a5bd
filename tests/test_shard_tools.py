"""`hedprep inspect`, `verify` and `show` (hedprep/shard_report.py, hedprep.shards), run in-process on a real tiny
build; h5dump reads it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest

from hedprep.cityscapes import trainid_to_color
from hedprep.errors import HedprepError
from hedprep.shard_report import common_attrs, summarize, summarize_shard, summarize_split
from hedprep.shards import verify_output
from tests.conftest import assert_one_line_error, invoke, run

SIZE = (64, 128)  # (height, width)
FRAMES = 4
PER_SHARD = 2


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """OUT of a 4-frame train build, 2 frames per shard (gzip): OUT/train/shard-0000{0,1}.h5."""
    from hedprep.build_plan import BuildConfig
    from hedprep.fixture import make_fixture
    from pipelines.build import build_split

    base = tmp_path_factory.mktemp("shard-tools")
    make_fixture(base / "cityscapes", {"train": FRAMES, "val": 0, "test": 0}, SIZE)
    build_split(BuildConfig(root=str(base / "cityscapes"), split="train", out=str(base / "out"),
                            frames_per_shard=PER_SHARD, device="cpu"))
    return base / "out"


@pytest.fixture
def copy(built, tmp_path) -> Path:
    """A copy of the build to damage."""
    return Path(shutil.copytree(built, tmp_path / "out"))


def shard(out: Path, index: int = 0) -> Path:
    return out / "train" / f"shard-{index:05d}.h5"


def edit_manifest(out: Path, change) -> None:
    path = out / "train" / "manifest.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


# ------------------------------------------------------------------------------------ damaging a copy


def truncate(out: Path, index: int = 1) -> None:
    path = shard(out, index)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def flip_byte(out: Path) -> None:
    path = shard(out, 1)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def damage_metadata(out: Path, index: int = 1) -> None:
    """Flip a byte in the object header of `frame_ids` (h5py then raises KeyError, not OSError)."""
    path = shard(out, index)
    with h5py.File(path, "r") as f:
        header = h5py.h5o.get_info(f["frame_ids"].id).addr
    data = bytearray(path.read_bytes())
    data[header + 8] ^= 0xFF
    path.write_bytes(bytes(data))


def remove(out: Path) -> None:
    shard(out, 1).unlink()


def escape_folder(out: Path) -> None:
    def change(data):
        data["shards"][1]["file"] = "../x.h5"

    edit_manifest(out, change)


def incomplete(out: Path) -> None:
    edit_manifest(out, lambda data: data.update(complete=False))


# --------------------------------------------------------------------------------------------- inspect


# Pixels of levels 0-3 of a 64x128 frame (the build's default 3 levels): 64x128, 32x64, 16x32, 8x16.
LEVEL_PIXELS = sum((SIZE[0] >> k) * (SIZE[1] >> k) for k in range(4))


def test_summarize_shard(built):
    s = summarize_shard(shard(built))
    h, w = SIZE
    assert (s.frames, s.frame_shape, s.frames_dtype, s.labels_dtype) == (PER_SHARD, SIZE, "uint8", "uint8")
    assert s.frames_chunks == (1, min(h, 256), min(w, 256), 4) and s.compression == "gzip:1"
    assert s.raw_bytes == PER_SHARD * LEVEL_PIXELS * 5
    assert s.file_bytes == shard(built).stat().st_size
    assert 0 < s.stored_bytes < s.file_bytes
    assert s.ratio == pytest.approx(PER_SHARD * LEVEL_PIXELS * 5 / shard(built).stat().st_size) and s.ratio > 1
    assert s.attrs["format"] == "hedseg-shards" and s.attrs["format_version"] == 3 and s.attrs["levels"] == 3
    assert s.levels == 3 and s.level_shapes == ((64, 128), (32, 64), (16, 32), (8, 16))
    assert sum(s.level_stored_bytes) == s.stored_bytes and s.level_stored_bytes[0] > s.level_stored_bytes[1] > 0
    rows = {d.name: d for d in s.datasets}
    levels = {f"levels/{k}/{name}" for k in (1, 2, 3) for name in ("frames", "labels")}
    views = {f"images/*/{view}/{name}" for view in ("rgb", "edge", "label") for name in ("data", "y")}
    assert set(rows) == {"frames", "labels", "frame_ids", "palette", "label_colors", "browse/data",
                         "browse/y"} | levels | views
    assert rows["levels/3/frames"].shape == (PER_SHARD, 8, 16, 4) and rows["levels/3/labels"].chunks == (1, 8, 16)
    assert rows["labels"].chunks == (1, min(h, 256), min(w, 256)) and rows["palette"].shape == (256, 3)
    assert rows["images/*/rgb/data"].shape == (h, w, 3) and rows["images/*/rgb/data"].filters == "virtual"
    assert rows["images/*/edge/data"].count == PER_SHARD and rows["browse/data"].shape == (PER_SHARD, h, w, 3)
    assert 0 < rows["label_colors"].stored_bytes < rows["labels"].stored_bytes * 4


def test_summarize_split_and_output(built):
    split = summarize_split(built / "train")
    assert split.frames == FRAMES and [s.path.name for s in split.shards] == ["shard-00000.h5", "shard-00001.h5"]
    on_disk = sum(p.stat().st_size for p in (built / "train").glob("shard-*.h5"))
    assert split.file_bytes == on_disk and split.ratio == pytest.approx(FRAMES * LEVEL_PIXELS * 5 / on_disk)
    levels = split.level_storage()
    assert [e.level for e in levels] == [0, 1, 2, 3] and levels[0].share_of_level0 == 1.0
    assert [e.pixel_share for e in levels] == [1.0, 0.25, 0.0625, 0.015625]
    assert sum(e.stored_bytes for e in levels) == sum(s.stored_bytes for s in split.shards)
    shared, differing = common_attrs(split.shards)
    assert shared["split"] == "train" and shared["frame_height"] == SIZE[0]
    assert set(differing) <= {"created", "ignored_pixels"}
    assert [s.frames for s in summarize(built)] == [FRAMES]


def test_inspect_shard_file(built):
    result = invoke("hedprep", "inspect", str(shard(built)))
    assert result.returncode == 0, result.stderr
    s = summarize_shard(shard(built))
    row = re.search(r"^shard-00000\.h5 +(\d+) +(\d+x\d+) .* ([\d.]+)$", result.stdout, re.M)
    assert row and row.groups() == (str(PER_SHARD), f"{SIZE[0]}x{SIZE[1]}", f"{s.ratio:.2f}"), result.stdout
    for name in ("frames", "labels", "frame_ids", "palette", "label_colors", "browse/data",
                 f"images/*/rgb/data (x{PER_SHARD})", "hed_weights_sha256", "filter_plugin"):
        assert name in result.stdout


@pytest.mark.parametrize("where", ["out", "split"])
def test_inspect_folder(built, where):
    path = built if where == "out" else built / "train"
    result = invoke("hedprep", "inspect", str(path))
    assert result.returncode == 0, result.stderr
    assert f"{FRAMES} frames in 2 shard(s)" in result.stdout
    ratio = summarize_split(built / "train").ratio
    assert re.search(rf"^total +{FRAMES} .* {ratio:.2f}$", result.stdout, re.M), result.stdout
    assert "shard-00001.h5" in result.stdout and "images/*/rgb" not in result.stdout


def test_inspect_lists_skipped_frames(copy):
    skipped = {"frame_id": "ulm_000099_000019", "image": "ulm_000099_000019_leftImg8bit.png", "reason": "unreadable"}
    edit_manifest(copy, lambda data: data["shards"][0].update(skipped=[skipped]))
    result = invoke("hedprep", "inspect", str(copy))
    assert result.returncode == 0, result.stderr
    assert "1 skipped frame(s)" in result.stdout
    assert re.search(r"^ulm_000099_000019 +ulm_000099_000019_leftImg8bit\.png +unreadable", result.stdout, re.M)


def test_the_ignore_share_is_the_label_maps_share_of_ignore_pixels(segnet_shards, tmp_path):
    """A split's ignore share (manifest, shard attributes, inspect) against a count made here from the gtCoarse
    labelIds PNGs, mapped with cityscapesscripts' own label table; shards written before the count was
    recorded say 'unknown'."""
    from cityscapesscripts.helpers.labels import id2label

    from hedprep.shards import check_shard, read_manifest

    to_train = np.full(256, 255, np.uint8)
    for label_id, label in id2label.items():
        if 0 <= label_id < 256 and 0 <= label.trainId < 255:
            to_train[label_id] = label.trainId
    pngs = sorted((segnet_shards.parent / "cityscapes" / "gtCoarse" / "train_extra").glob("*/*_labelIds.png"))
    maps = [to_train[cv2.imread(str(path), cv2.IMREAD_UNCHANGED)] for path in pngs]
    ignored, pixels = sum(int(np.count_nonzero(m == 255)) for m in maps), sum(m.size for m in maps)
    assert len(maps) == 3 and 0.1 < ignored / pixels < 0.9  # coarse: a band along every region's border
    manifest = read_manifest(segnet_shards / "train_extra")
    assert manifest.label_kind == "coarse" and manifest.ignore_share == ignored / pixels
    split = summarize_split(segnet_shards / "train_extra")
    assert split.ignore_share == ignored / pixels and split.label_kind == "coarse"
    for record, summary in zip(manifest.shards, split.shards, strict=True):
        with h5py.File(segnet_shards / "train_extra" / record.file, "r") as f:
            counted = int(np.count_nonzero(f["labels"][()] == 255))
        assert record.ignored_pixels == summary.ignored_pixels == counted
    fine = read_manifest(segnet_shards / "train")
    assert fine.label_kind == "fine" and fine.ignore_share < manifest.ignore_share
    result = invoke("hedprep", "inspect", str(segnet_shards / "train_extra"))
    assert f"coarse labels, {100 * ignored / pixels:.1f}% of the label pixels ignored" in result.stdout
    # hedprep verify's full check counts them again
    path = Path(shutil.copy(segnet_shards / "train_extra" / "shard-00000.h5", tmp_path / "shard.h5"))
    assert check_shard(path, every_frame=True) == []
    with h5py.File(path, "r+") as f:
        f.attrs["ignored_pixels"] = 1
    assert check_shard(path, every_frame=True) == [f"records 1 ignored label pixels, its labels hold "
                                                   f"{manifest.shards[0].ignored_pixels}"]
    old = Path(__file__).parent / "data" / "v2-shards" / "train"
    assert read_manifest(old).ignore_share is None and summarize_split(old).ignore_share is None
    assert "fine labels, ignore share unknown" in invoke("hedprep", "inspect", str(old)).stdout


def test_inspect_refuses_other_files(tmp_path):
    text = tmp_path / "notes.h5"
    text.write_text("not HDF5")
    assert_one_line_error(invoke("hedprep", "inspect", str(text)), str(text), "not a readable HDF5 file")
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["frames"] = np.zeros((1, 2, 2, 4), np.uint8)
    assert_one_line_error(invoke("hedprep", "inspect", str(other)), str(other),
                          "not a hedseg-shards v1, v2 or v3 shard")
    with pytest.raises(HedprepError, match="no such file or folder"):
        summarize(tmp_path / "missing")


def test_inspect_and_show_refuse_damaged_shards(copy, tmp_path):
    truncate(copy, 1)
    assert_one_line_error(invoke("hedprep", "inspect", str(copy)), str(shard(copy, 1)), "not a readable HDF5 file")
    damage_metadata(copy, 0)
    path = shard(copy, 0)
    assert_one_line_error(invoke("hedprep", "inspect", str(path)), str(path), "damaged shard")
    assert_one_line_error(invoke("hedprep", "show", str(path), "0", "--out", str(tmp_path / "png")), str(path),
                          "damaged shard")


# ---------------------------------------------------------------------------------------------- verify


def test_verify_good_build(built):
    result = invoke("hedprep", "verify", str(built))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"train: 2 shards, {FRAMES} frames OK" in result.stdout
    assert invoke("hedprep", "verify", str(built / "train")).returncode == 0


@pytest.mark.parametrize("damage, names, problem", [
    (truncate, "shard-00001.h5", "manifest says"),
    (flip_byte, "shard-00001.h5", "sha256 differs from the manifest"),
    (damage_metadata, "shard-00001.h5", "damaged shard (Unable to synchronously open object"),
    (remove, "shard-00001.h5", "missing"),
    (escape_folder, "../x.h5", "leaves the split folder"),
    (incomplete, "train", "build incomplete, rerun hedprep build"),
])
def test_verify_reports_damage(copy, damage, names, problem):
    damage(copy)
    result = invoke("hedprep", "verify", str(copy))
    assert_one_line_error(result, str(copy), "failed verification")
    bad = [line for line in result.stdout.splitlines() if line.startswith("bad ")]
    assert len(bad) == 1 and names in bad[0] and problem in bad[0], result.stdout
    assert "train: 2 shards" in result.stdout and "FAILED" in result.stdout
    if damage is not incomplete:
        assert "shard-00000.h5" not in result.stdout


def test_verify_warns_about_unlisted_shards(copy):
    shutil.copy(shard(copy, 0), shard(copy, 7))
    result = invoke("hedprep", "verify", str(copy))
    assert result.returncode == 0, result.stdout + result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "shard-00007.h5" in warnings[0] and "not listed in the manifest" in warnings[0]
    [check] = verify_output(copy)
    assert check.ok and check.unlisted == ["shard-00007.h5"]


def test_verify_unreadable_manifest(copy):
    (copy / "train" / "manifest.json").write_text("{")
    result = invoke("hedprep", "verify", str(copy))
    assert_one_line_error(result, "failed verification")
    assert "not a readable manifest" in result.stdout


# ------------------------------------------------------------------------------------------------ show


@pytest.mark.parametrize("index", [0, -1])
def test_show_writes_exact_pngs(built, tmp_path, index):
    result = invoke("hedprep", "show", str(shard(built, 1)), str(index), "--out", str(tmp_path / "png"))
    assert result.returncode == 0, result.stderr
    with h5py.File(shard(built, 1), "r") as f:
        frame, label, frame_id = f["frames"][index], f["labels"][index], f["frame_ids"][index].decode()
    paths = [tmp_path / "png" / f"{frame_id}_{kind}.png" for kind in ("rgb", "edge", "label")]
    assert result.stdout.split() == [str(p) for p in paths]
    rgb, edge, colors = (cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in paths)
    np.testing.assert_array_equal(cv2.cvtColor(rgb, cv2.COLOR_BGR2RGB), frame[..., :3])
    np.testing.assert_array_equal(edge, frame[..., 3])
    np.testing.assert_array_equal(cv2.cvtColor(colors, cv2.COLOR_BGR2RGB), trainid_to_color(label))
    assert edge.std() > 0 and len(np.unique(label)) > 1  # not a trivially blank frame
    assert not list((tmp_path / "png").glob(".*.tmp"))


@pytest.mark.parametrize("index", ["2", "-3"])
def test_show_index_out_of_range(built, tmp_path, index):
    result = invoke("hedprep", "show", str(shard(built)), index, "--out", str(tmp_path))
    assert_one_line_error(result, str(shard(built)), f"no frame {index}", f"holds {PER_SHARD} frame(s)")
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------------- plugin filters


def test_zstd_shards_need_no_manual_plugin_import(tmp_path):
    """inspect, verify and show load hdf5plugin themselves (h5py alone cannot decode zstd)."""
    pytest.importorskip("hdf5plugin")
    from dataclasses import asdict

    from hedprep.shards import Compression, Manifest, ShardInfo, ShardWriter, write_manifest

    split_dir = tmp_path / "out" / "val"
    split_dir.mkdir(parents=True)
    info = ShardInfo("val", "/data", "bsds500", "0" * 64, "fp32", "zstd:3", 32, 48)
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (32, 48, 4), np.uint8)
    label = rng.integers(0, 19, (32, 48), np.uint8)
    with ShardWriter(split_dir / "shard-00000.h5", 1, info, Compression("zstd", 3)) as writer:
        writer.append("ulm_000000_000019", frame, label)
        record = writer.close()
    write_manifest(split_dir, Manifest("val", asdict(info), [record], complete=True))

    inspect = invoke("hedprep", "inspect", str(split_dir / "shard-00000.h5"))
    assert inspect.returncode == 0 and re.search(r"^frames .* zstd:3 ", inspect.stdout, re.M), inspect.stdout
    verify = invoke("hedprep", "verify", str(tmp_path / "out"))
    assert verify.returncode == 0 and "val: 1 shard, 1 frame OK" in verify.stdout, verify.stdout + verify.stderr
    show = invoke("hedprep", "show", str(split_dir / "shard-00000.h5"), "0", "--out", str(tmp_path / "png"))
    assert show.returncode == 0, show.stderr
    edge = cv2.imread(str(tmp_path / "png" / "ulm_000000_000019_edge.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(edge, frame[..., 3])


# ---------------------------------------------------------------------------------------------- h5dump


def h5dump(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("h5dump")
    if exe is None:
        pytest.fail("h5dump not found: install Debian's hdf5-tools (apt-get install hdf5-tools), as `make test` does")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=120)


def test_h5dump_reads_a_shard(built):
    path = shard(built)
    header = h5dump("-H", str(path))
    assert header.returncode == 0, header.stderr
    with h5py.File(path, "r") as f:
        ids = [i.decode() for i in f["frame_ids"][()]]
        edges = f["frames"][:, :, :, 3]
    for name in ("frames", "labels", "frame_ids", "palette", "label_colors"):
        assert f'DATASET "{name}"' in header.stdout
    for frame_id in ids:
        group = header.stdout.split(f'GROUP "{frame_id}"', 1)[1]
        for view in ("rgb", "edge", "label"):
            assert f'GROUP "{view}"' in group and 'DATASET "data"' in group.split(f'GROUP "{view}"', 1)[1]

    i = len(ids) - 1  # a window around the strongest edge, so the values are not all zero
    interior = edges[i, 4:-8, 4:-8]
    row, col = (int(v) + 4 for v in np.unravel_index(np.argmax(interior), interior.shape))
    r0, c0 = row - 1, col - 2
    dump = h5dump("-d", f"/images/{ids[i]}/edge/data", "-s", f"{r0},{c0},1", "-c", "3,5,1", str(path))
    assert dump.returncode == 0, dump.stderr
    data = dump.stdout.split("SUBSET", 1)[1].split("DATA {", 1)[1].split("}", 1)[0]
    values = [int(v) for line in data.splitlines() if "):" in line for v in re.findall(r"\d+", line.split("):")[1])]
    expected = edges[i, r0:r0 + 3, c0:c0 + 5]
    assert expected.std() > 0
    assert values == expected.ravel().tolist()


def test_h5dump_reads_the_levels(built):
    path = shard(built)
    header = h5dump("-H", str(path))
    levels = header.stdout.split('GROUP "levels"', 1)[1]
    for k in (1, 2, 3):
        group = levels.split(f'GROUP "{k}"', 1)[1]
        assert 'DATASET "frames"' in group and 'DATASET "labels"' in group
    dump = h5dump("-d", "/levels/3/labels", str(path))  # the whole 8x16 label maps of both frames
    assert dump.returncode == 0, dump.stderr
    data = dump.stdout.split("DATA {", 1)[1].split("}", 1)[0]
    values = [int(v) for line in data.splitlines() if "):" in line for v in re.findall(r"\d+", line.split("):")[1])]
    with h5py.File(path, "r") as f:
        expected = f["levels/3/labels"][()]
    assert expected.shape == (PER_SHARD, 8, 16) and len(set(expected.ravel().tolist())) > 2
    assert values == expected.ravel().tolist()


def test_inspect_piped_into_a_file_keeps_each_row_on_one_line(built):
    """No terminal, no COLUMNS: rows are not folded at 80 columns (the sha256 stays whole)."""
    result = run("hedprep", "inspect", str(built / "train"), columns=None)
    assert result.returncode == 0, result.stderr
    sha = json.loads((built / "train" / "manifest.json").read_text())["params"]["hed_weights_sha256"]
    assert re.search(rf"^ *hed_weights_sha256 +{sha}$", result.stdout, re.M), result.stdout
