"""`hedprep build` end to end, with real parts: real HDF5 files, Dask's local scheduler in-process, and,
in the tests marked slow, the CLI as a subprocess (killed midway, or with a file-size limit) and a
dask.distributed scheduler and workers started as subprocesses on 127.0.0.1."""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import subprocess
import time
import weakref
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest

from hedprep.build_plan import BuildConfig
from hedprep.fixture import make_fixture
from hedprep.shards import read_attrs, read_manifest
from pipelines.build import build_split
from tests.conftest import BIN, assert_one_line_error, default_sigint, invoke, run

FRAMES_PER_SHARD = 2
VOLATILE_ATTRS = {"created"}  # the only attribute that differs between two builds of the same frames


# ----------------------------------------------------------------------------------------- helpers


def shard_contents(path: Path) -> dict:
    """Everything a shard holds, except its creation time: datasets, views and attributes."""
    contents: dict = {}
    with h5py.File(path, "r") as f:
        contents["/"] = {k: v for k, v in read_attrs(f).items() if k not in VOLATILE_ATTRS}

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                contents[name] = (obj[()], obj.chunks, obj.compression, obj.compression_opts)
            attrs = read_attrs(obj)
            attrs.pop("PALETTE", None)  # an object reference; its target is checked as `palette`
            contents[name + "@"] = attrs

        f.visititems(visit)
    return contents


def assert_same_shards(a: Path, b: Path) -> None:
    """Two builds of a split hold the same shard files with the same contents and frame ids."""
    names_a = sorted(p.name for p in a.glob("shard-*.h5"))
    assert names_a == sorted(p.name for p in b.glob("shard-*.h5")) and names_a
    for name in names_a:
        ca, cb = shard_contents(a / name), shard_contents(b / name)
        assert ca.keys() == cb.keys(), name
        for key in ca:
            if key.endswith("@") or key == "/":
                assert ca[key] == cb[key], (name, key)
            else:
                assert np.array_equal(ca[key][0], cb[key][0]), (name, key)
                assert ca[key][1:] == cb[key][1:], (name, key)
    ma, mb = read_manifest(a), read_manifest(b)
    assert [s.frame_ids for s in ma.shards] == [s.frame_ids for s in mb.shards]
    assert ma.complete and mb.complete


def build_args(root: Path, out: Path, *extra: str, split: str = "train",
               frames_per_shard: int = FRAMES_PER_SHARD) -> list[str]:
    return ["build", "--root", str(root), "--split", split, "--out", str(out),
            "--frames-per-shard", str(frames_per_shard), *extra]


def build(root: Path, out: Path, *extra: str, **options):
    """`hedprep build` in this process."""
    return invoke("hedprep", *build_args(root, out, *extra, **options))


def build_process(root: Path, out: Path, *extra: str, **options) -> subprocess.CompletedProcess:
    """`hedprep build` as a subprocess: for builds that start a cluster of their own."""
    return run("hedprep", *build_args(root, out, *extra, **options))


def all_frames(split_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for shard in sorted(split_dir.glob("shard-*.h5")):
        with h5py.File(shard, "r") as f:
            for i, frame_id in enumerate(f["frame_ids"][()]):
                out[frame_id.decode()] = (f["frames"][i], f["labels"][i])
    return out


# ------------------------------------------------------------------------------------------ fixtures


def make_dataset(tmp_path_factory, name: str, frames: dict[str, int], size: tuple[int, int], seed: int) -> Path:
    root = tmp_path_factory.mktemp(name)
    make_fixture(root, frames, size=size, seed=seed)
    return root


def clean_build(tmp_path_factory, name: str, dataset: Path, **options) -> Path:
    out = tmp_path_factory.mktemp(name)
    result = build(dataset, out, **options)
    assert result.returncode == 0, result.stderr
    return out / "train"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory, "cityscapes", {"train": 5, "val": 2, "test": 1}, (96, 192), seed=3)


@pytest.fixture(scope="module")
def local_build(dataset, tmp_path_factory) -> Path:
    split_dir = clean_build(tmp_path_factory, "local", dataset)
    assert read_manifest(split_dir).num_frames == 5 and len(list(split_dir.glob("shard-*.h5"))) == 3
    return split_dir


@pytest.fixture(scope="module")
def slow_dataset(tmp_path_factory) -> Path:
    """Frames large enough that a build takes seconds: room to kill things midway."""
    return make_dataset(tmp_path_factory, "cityscapes_slow", {"train": 8, "val": 0, "test": 0}, (256, 512), seed=5)


@pytest.fixture(scope="module")
def slow_clean_build(slow_dataset, tmp_path_factory) -> Path:
    return clean_build(tmp_path_factory, "slow_clean", slow_dataset, frames_per_shard=1)


class DaskCluster:
    """`dask scheduler` and `dask worker` subprocesses on 127.0.0.1, stopped at the end."""

    def __init__(self, tmp: Path, workers: int) -> None:
        self.tmp = tmp
        self.scheduler_file = tmp / "scheduler.json"
        self.processes: list[subprocess.Popen] = []
        self.scheduler = self._start(
            "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
            "--scheduler-file", str(self.scheduler_file),
        )
        deadline = time.monotonic() + 60
        while not self.scheduler_file.exists():
            assert time.monotonic() < deadline, "dask scheduler did not start"
            assert self.scheduler.poll() is None, "dask scheduler exited"
            time.sleep(0.05)
        self.address = json.loads(self.scheduler_file.read_text())["address"]
        self.workers = [
            self._start("worker", "--scheduler-file", str(self.scheduler_file), "--host", "127.0.0.1",
                        "--nthreads", "1", "--no-nanny", "--no-dashboard", "--death-timeout", "60")
            for _ in range(workers)
        ]
        self._wait_for_workers(workers)

    def _start(self, *args: str) -> subprocess.Popen:
        log = open(self.tmp / f"dask-{len(self.processes)}.log", "w")  # noqa: SIM115 - closed with the process
        process = subprocess.Popen([str(BIN / "dask"), *args], stdout=log, stderr=subprocess.STDOUT,
                                   cwd=self.tmp, start_new_session=True)
        self.processes.append(process)
        return process

    def _wait_for_workers(self, n: int) -> None:
        from distributed import Client

        with Client(self.address, timeout="30s") as client:
            client.wait_for_workers(n, timeout=60)

    def stop(self) -> None:
        """Workers first, then the scheduler: a worker told to stop while its scheduler closes can hang
        (seen with distributed 2026.8.0: two runs in four after a build, until killed)."""
        for group in (self.processes[1:], self.processes[:1]):
            for process in group:
                if process.poll() is None:
                    process.terminate()
            for process in group:
                try:
                    process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


@pytest.fixture
def cluster(request, tmp_path):
    clusters = []

    def start(workers: int) -> DaskCluster:
        cluster = DaskCluster(tmp_path, workers)
        clusters.append(cluster)
        return cluster

    yield start
    for cluster in clusters:
        cluster.stop()


def wait_for_shards(manifest_dir: Path, process: subprocess.Popen, count: int, timeout: float = 300) -> None:
    """Poll (bounded) until the build's manifest lists `count` shards."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        path = manifest_dir / "manifest.json"
        if path.exists() and len(json.loads(path.read_text())["shards"]) >= count:
            return
        assert process.poll() is None, "the build ended before it could be interrupted"
        time.sleep(0.05)
    raise AssertionError("the build made no progress")


def start_build(root: Path, out: Path, *extra: str) -> subprocess.Popen:
    command = [str(BIN / "hedprep"), *build_args(root, out, *extra, frames_per_shard=1)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# ------------------------------------------------------------------------------------ exact contents


def test_rgb_channels_equal_the_source_pngs(dataset, local_build):
    frames = all_frames(local_build)
    assert len(frames) == 5
    for frame_id, (rgbe, _) in frames.items():
        city = frame_id.split("_")[0]
        bgr = cv2.imread(str(dataset / "leftImg8bit" / "train" / city / f"{frame_id}_leftImg8bit.png"))
        assert np.array_equal(rgbe[..., :3], bgr[..., ::-1])


def test_labels_equal_the_trainid_mapping_of_cityscapesscripts(dataset, local_build):
    from cityscapesscripts.helpers.labels import labels as reference_labels

    table = np.full(256, 255, np.uint8)
    for label in reference_labels:
        if 0 <= label.id < 256 and 0 <= label.trainId < 255:
            table[label.id] = label.trainId
    for frame_id, (_, label) in all_frames(local_build).items():
        city = frame_id.split("_")[0]
        ids = cv2.imread(str(dataset / "gtFine" / "train" / city / f"{frame_id}_gtFine_labelIds.png"),
                         cv2.IMREAD_UNCHANGED)
        assert np.array_equal(label, table[ids])
        assert (label != 255).any()


def test_edges_equal_hedprep_edges_on_the_same_frames(dataset, local_build, tmp_path):
    images = sorted(str(p) for p in (dataset / "leftImg8bit" / "train").glob("*/*.png"))
    result = invoke("hedprep", "edges", "--out", str(tmp_path), *images)
    assert result.returncode == 0, result.stderr
    for frame_id, (rgbe, _) in all_frames(local_build).items():
        edge = cv2.imread(str(tmp_path / f"{frame_id}_leftImg8bit.png"), cv2.IMREAD_GRAYSCALE)
        assert np.abs(rgbe[..., 3].astype(int) - edge).max() <= 1
        assert rgbe[..., 3].max() > 100  # real edges, not an empty channel


def test_manifest_lists_every_shard_with_its_hash(local_build):
    from hedprep.digests import file_sha256

    manifest = read_manifest(local_build)
    assert manifest.complete and manifest.num_frames == 5
    assert [len(s.frame_ids) for s in manifest.shards] == [2, 2, 1]
    for record in manifest.shards:
        path = local_build / record.file
        assert file_sha256(path) == record.sha256 and path.stat().st_size == record.bytes
    assert manifest.params["compression"] == "gzip:1" and manifest.params["frame_height"] == 96
    assert not list(local_build.glob(".*.tmp"))


def test_batched_hed_with_a_skipped_frame_gives_the_same_frames(dataset, local_build, tmp_path):
    root = copy_dataset(dataset, tmp_path)
    image, _ = frame_paths(root, "aachen_000001_000019")  # the last frame of the first shard
    image.write_bytes(b"not a png")
    result = build(root, tmp_path / "out", "--batch-size", "2", "--on-error", "skip")
    assert result.returncode == 0, result.stderr
    batched, reference = all_frames(tmp_path / "out" / "train"), all_frames(local_build)
    assert sorted(batched) == sorted(set(reference) - {"aachen_000001_000019"})
    for frame_id, (frame, label) in batched.items():
        assert np.array_equal(frame, reference[frame_id][0]) and np.array_equal(label, reference[frame_id][1])


def test_test_split_labels_are_all_ignore(dataset, tmp_path):
    result = build(dataset, tmp_path, split="test")
    assert result.returncode == 0, result.stderr
    (_, label), = all_frames(tmp_path / "test").values()
    assert (label == 255).all()


# --------------------------------------------------------------------------------- resume and force


def test_rerun_keeps_complete_shards_and_rebuilds_a_truncated_one(local_build, tmp_path, dataset):
    split_dir = tmp_path / "train"
    shutil.copytree(local_build, split_dir)
    before = {p.name: p.stat().st_mtime_ns for p in split_dir.glob("shard-*.h5")}
    target = split_dir / "shard-00001.h5"
    with open(target, "r+b") as f:
        f.truncate(target.stat().st_size // 2)

    verify = invoke("hedprep", "verify", str(tmp_path))
    assert verify.returncode == 1 and "shard-00001.h5" in verify.stdout + verify.stderr

    result = build(dataset, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "1 built, 2 kept" in result.stdout
    after = {p.name: p.stat().st_mtime_ns for p in split_dir.glob("shard-*.h5")}
    assert after["shard-00000.h5"] == before["shard-00000.h5"]
    assert after["shard-00001.h5"] != before["shard-00001.h5"]
    assert_same_shards(split_dir, local_build)
    assert invoke("hedprep", "verify", str(tmp_path)).returncode == 0


def test_changed_parameters_are_refused_unless_forced(local_build, tmp_path, dataset):
    shutil.copytree(local_build, tmp_path / "train")
    result = build(dataset, tmp_path, "--compression", "lzf")
    assert_one_line_error(result, "manifest.json", "compression 'gzip:1' -> 'lzf'", "--force")
    assert_same_shards(tmp_path / "train", local_build)  # nothing lost

    forced = build(dataset, tmp_path, "--compression", "lzf", "--force")
    assert forced.returncode == 0, forced.stderr
    assert "3 built, 0 kept" in forced.stdout
    with h5py.File(tmp_path / "train" / "shard-00000.h5") as f:
        assert f["frames"].compression == "lzf"


@pytest.mark.slow
def test_sigkill_midway_then_rerun_gives_the_clean_build(slow_dataset, slow_clean_build, tmp_path):
    process = start_build(slow_dataset, tmp_path)
    wait_for_shards(tmp_path / "train", process, 2)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    split_dir = tmp_path / "train"
    done = read_manifest(split_dir)
    assert not done.complete and 2 <= len(done.shards) < 8
    for shard in split_dir.glob("shard-*.h5"):  # whatever is under a final name is whole
        with h5py.File(shard, "r") as f:
            assert f["frames"].shape[0] == 1 and f.attrs["format_version"] == 3

    result = build(slow_dataset, tmp_path, frames_per_shard=1)
    assert result.returncode == 0, result.stderr
    assert f"{len(done.shards)} kept" in result.stdout
    assert not list(split_dir.glob(".*.tmp"))
    assert_same_shards(split_dir, slow_clean_build)


# ----------------------------------------------------------------------------------------- dask.distributed


@pytest.mark.slow
def test_distributed_build_equals_local_build(dataset, local_build, cluster, tmp_path):
    dask_cluster = cluster(1)
    out = tmp_path / "out"
    result = build(dataset, out, "--scheduler", dask_cluster.address)
    assert result.returncode == 0, result.stderr
    assert_same_shards(out / "train", local_build)


@pytest.mark.slow
def test_distributed_relevel_equals_local_relevel(dataset, local_build, cluster, tmp_path):
    """`--levels` over an existing build runs as Dask tasks on a cluster's workers, without HED."""
    local, distributed = tmp_path / "local", tmp_path / "distributed"
    for out in (local, distributed):
        shutil.copytree(local_build, out / "train")
    result = build(dataset, local, "--levels", "1")
    assert result.returncode == 0, result.stderr
    address = cluster(1).address
    result = build(dataset, distributed, "--levels", "1", "--scheduler", address)
    assert result.returncode == 0, result.stderr
    assert "0 built, 0 kept, 3 rewritten with 1 resolution level(s)" in result.stdout
    assert_same_shards(distributed / "train", local / "train")
    with h5py.File(distributed / "train" / "shard-00000.h5", "r") as f:
        assert f.attrs["levels"] == 1 and list(f["levels"]) == ["1"]
    # The library without progress hooks, as segnet study and the GPU check call it
    again = build_split(BuildConfig(root=str(dataset), split="train", out=str(distributed), levels=2,
                                    frames_per_shard=FRAMES_PER_SHARD, scheduler=address))
    assert again.relevelled == 3 and again.built == 0


@pytest.mark.slow
def test_local_cluster_build_equals_local_build(dataset, local_build, tmp_path):
    result = build_process(dataset, tmp_path, "--workers", "2")
    assert result.returncode == 0, result.stderr
    assert_same_shards(tmp_path / "train", local_build)


@pytest.mark.slow
def test_losing_one_of_two_workers_midway_still_completes(slow_dataset, slow_clean_build, cluster, tmp_path):
    dask_cluster = cluster(2)
    process = start_build(slow_dataset, tmp_path, "--scheduler", dask_cluster.address)
    wait_for_shards(tmp_path / "train", process, 1)
    dask_cluster.workers[0].send_signal(signal.SIGKILL)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    assert "8 frames in 8 shard(s)" in stdout
    assert_same_shards(tmp_path / "train", slow_clean_build)


# ---------------------------------------------------------------------------------------- bad input


def copy_dataset(dataset: Path, tmp_path: Path) -> Path:
    root = tmp_path / "cityscapes"
    shutil.copytree(dataset, root)
    return root


def frame_paths(root: Path, frame_id: str) -> tuple[Path, Path]:
    city = frame_id.split("_")[0]
    return (root / "leftImg8bit" / "train" / city / f"{frame_id}_leftImg8bit.png",
            root / "gtFine" / "train" / city / f"{frame_id}_gtFine_labelIds.png")


LAST_FRAME = "bochum_000001_000019"  # the 5th frame in frame-id order: the third shard


def test_truncated_png_fails_with_one_line_and_loses_nothing(dataset, tmp_path):
    root = copy_dataset(dataset, tmp_path)
    out = tmp_path / "out"
    assert build(root, out).returncode == 0
    local_build = tmp_path / "before"
    shutil.copytree(out / "train", local_build)
    (out / "train" / "shard-00002.h5").unlink()  # the shard of LAST_FRAME must be rebuilt
    image, _ = frame_paths(root, LAST_FRAME)
    data = image.read_bytes()
    image.write_bytes(data[: len(data) // 3])
    result = build(root, out)
    assert_one_line_error(result, str(image))
    manifest = read_manifest(out / "train")
    assert not manifest.complete and [s.file for s in manifest.shards] == ["shard-00000.h5", "shard-00001.h5"]
    for name in ("shard-00000.h5", "shard-00001.h5"):  # the shards built before are still there, unchanged
        assert shard_contents(out / "train" / name).keys() == shard_contents(local_build / name).keys()
        assert (out / "train" / name).read_bytes() == (local_build / name).read_bytes()
    assert not list((out / "train").glob(".*.tmp"))
    assert not (out / "train" / "shard-00002.h5").exists()


def test_on_error_skip_records_the_frame_and_finishes(dataset, tmp_path):
    root = copy_dataset(dataset, tmp_path)
    image, _ = frame_paths(root, "aachen_000001_000019")
    image.write_bytes(b"not a png")
    out = tmp_path / "out"
    result = build(root, out, "--on-error", "skip")
    assert result.returncode == 0, result.stderr
    assert "1 frame(s) skipped" in result.stdout
    manifest = read_manifest(out / "train")
    assert manifest.complete and manifest.num_frames == 4
    (skipped,) = manifest.skipped
    assert skipped.frame_id == "aachen_000001_000019" and "not a readable image" in skipped.reason
    assert skipped.image == skipped.file == str(image.resolve())
    assert "aachen_000001_000019" not in all_frames(out / "train")
    rerun = build(root, out, "--on-error", "skip")  # a shard with a skipped frame counts as complete
    assert "0 built, 3 kept" in rerun.stdout


def test_missing_label_file(dataset, tmp_path):
    root = copy_dataset(dataset, tmp_path)
    _, label = frame_paths(root, LAST_FRAME)
    label.unlink()
    assert_one_line_error(build(root, tmp_path / "out"), str(label), "label file missing")


def test_image_and_label_of_different_sizes(dataset, tmp_path):
    root = copy_dataset(dataset, tmp_path)
    _, label = frame_paths(root, LAST_FRAME)
    cv2.imwrite(str(label), np.zeros((50, 60), np.uint8))
    assert_one_line_error(build(root, tmp_path / "out"), str(label), "60x50")


def test_frame_of_another_size_than_the_split(dataset, tmp_path):
    root = copy_dataset(dataset, tmp_path)
    image, label = frame_paths(root, LAST_FRAME)
    cv2.imwrite(str(image), np.zeros((48, 64, 3), np.uint8))
    cv2.imwrite(str(label), np.zeros((48, 64), np.uint8))
    assert_one_line_error(build(root, tmp_path / "out"), str(image), "64x48", "192x96")


def test_empty_and_missing_split(dataset, tmp_path):
    root = copy_dataset(dataset, tmp_path)
    for city in (root / "leftImg8bit" / "val").iterdir():
        shutil.rmtree(city)
    assert_one_line_error(build(root, tmp_path / "out", split="val"), "leftImg8bit/val", "no *_leftImg8bit.png")
    shutil.rmtree(root / "leftImg8bit" / "val")
    assert_one_line_error(build(root, tmp_path / "out", split="val"), "leftImg8bit/val", "does not exist")


def test_unwritable_out(dataset, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert_one_line_error(build(dataset, blocker / "out"), str(blocker / "out"), "not writable")


def test_unexpected_names_are_skipped_with_a_warning(dataset, tmp_path):
    root = copy_dataset(dataset, tmp_path)
    (root / "leftImg8bit" / "train" / "aachen" / "notes.txt").write_text("hello")
    result = build(root, tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert "warning:" in result.stderr and "aachen/notes.txt" in result.stderr
    assert read_manifest(tmp_path / "out" / "train").num_frames == 5


def _limit_file_size(limit: int):
    def preexec() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return preexec


@pytest.mark.slow
def test_disk_filling_up_removes_the_temporary_file(dataset, local_build, tmp_path):
    # Files may grow to just under the largest shard: the largest shard's write fails midway, as on a full disk.
    largest = max(local_build.glob("shard-*.h5"), key=lambda p: p.stat().st_size)
    limit = largest.stat().st_size - 4096
    out = tmp_path / "out"
    command = [str(BIN / "hedprep"), *build_args(dataset, out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600,
                            preexec_fn=_limit_file_size(limit), env={**os.environ, "COLUMNS": "200"})
    assert_one_line_error(result, "cannot write shard (File too large)", "partial file was removed")
    failed = re.search(r"(shard-\d{5}\.h5): cannot write", result.stderr).group(1)
    split_dir = out / "train"
    assert not list(split_dir.glob(".*.tmp"))
    assert not (split_dir / failed).exists()
    manifest = read_manifest(split_dir)
    for record in manifest.shards:  # what was written before the failure is whole
        assert (split_dir / record.file).stat().st_size == record.bytes


# ------------------------------------------------------------------- options checked before any work


@pytest.mark.parametrize("address, message", [
    ("notanaddress", "expected a scheduler address such as tcp://"),
    ("http://127.0.0.1:1", "unknown protocol http://"),
])
def test_bad_scheduler_address_is_a_usage_error_and_writes_nothing(dataset, tmp_path, address, message):
    result = build(dataset, tmp_path / "out", "--scheduler", address)
    assert_one_line_error(result, f"--scheduler {address}", message, status=2)
    assert not (tmp_path / "out").exists()


def test_scheduler_where_nothing_listens_fails_at_once(dataset, tmp_path):
    import socket

    with socket.socket() as probe:  # a port that was free a moment ago, now closed: nothing listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = build(dataset, tmp_path / "out", "--scheduler", f"tcp://127.0.0.1:{port}")
    assert_one_line_error(result, f"tcp://127.0.0.1:{port}", "no scheduler answers there")
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without a GPU")
def test_device_without_gpu_fails_before_any_progress_or_file(dataset, tmp_path):
    result = build(dataset, tmp_path / "out", "--device", "cuda")
    assert_one_line_error(result, "--device cuda", "no CUDA GPU")
    assert result.stderr.splitlines() == [result.stderr.strip()]  # the error line alone: no bar, no blank line
    assert not (tmp_path / "out").exists()


def test_unknown_split_is_a_usage_error(dataset, tmp_path):
    result = build(dataset, tmp_path / "out", split="training")
    assert_one_line_error(result, "'--split'", "'training' is not one of", status=2)


def test_train_extra_without_coarse_labels_names_the_option(dataset, tmp_path):
    result = build(dataset, tmp_path / "out", split="train_extra")
    assert_one_line_error(result, "--split train_extra has no gtFine labels: add --labels coarse", status=2)


def test_on_error_skip_also_skips_a_frame_whose_label_is_missing(dataset, tmp_path):
    root = copy_dataset(dataset, tmp_path)
    image, label = frame_paths(root, LAST_FRAME)
    label.unlink()
    result = build(root, tmp_path / "out", "--on-error", "skip")
    assert result.returncode == 0, result.stderr
    (skipped,) = read_manifest(tmp_path / "out" / "train").skipped
    assert skipped.frame_id == LAST_FRAME and "label file missing" in skipped.reason
    assert skipped.file == str(label.resolve()) and skipped.image == str(image.resolve())


def test_skipped_wrong_size_label_names_the_label_file(dataset, tmp_path, monkeypatch):
    root = copy_dataset(dataset, tmp_path)
    _, label = frame_paths(root, LAST_FRAME)
    cv2.imwrite(str(label), np.zeros((50, 60), np.uint8))
    monkeypatch.chdir(tmp_path)  # a relative --root: the manifest still holds absolute paths
    result = invoke("hedprep", *build_args(Path("cityscapes"), Path("out"), "--on-error", "skip"))
    assert result.returncode == 0, result.stderr
    (skipped,) = read_manifest(tmp_path / "out" / "train").skipped
    assert skipped.file == str(label.resolve()) and Path(skipped.image).is_absolute() and "60x50" in skipped.reason


def test_rebuilding_a_damaged_shard_says_so(local_build, tmp_path, dataset):
    shutil.copytree(local_build, tmp_path / "train")
    target = tmp_path / "train" / "shard-00001.h5"
    target.write_bytes(target.read_bytes()[:1000])
    result = build(dataset, tmp_path)
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "shard-00001.h5: not a complete shard of this build" in warnings[0]
    assert "rebuilding it" in warnings[0] and "not part of this build's plan" not in warnings[0]


# ------------------------------------------------------------------------------------------- Ctrl-C


def interrupt(process: subprocess.Popen) -> tuple[str, str]:
    """Ctrl-C as a terminal sends it: SIGINT to the whole process group (workers included)."""
    os.killpg(process.pid, signal.SIGINT)
    return process.communicate(timeout=120)


@pytest.mark.slow
@pytest.mark.parametrize("extra", [(), ("--workers", "2")], ids=["local", "local-cluster"])
def test_ctrl_c_records_every_finished_shard_and_the_rerun_resumes(slow_dataset, slow_clean_build, tmp_path, extra):
    command = [str(BIN / "hedprep"), *build_args(slow_dataset, tmp_path, *extra, frames_per_shard=1)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True, env={**os.environ, "COLUMNS": "200"},
                               preexec_fn=default_sigint)
    wait_for_shards(tmp_path / "train", process, 1)
    _, stderr = interrupt(process)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "Aborted" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: interrupted; every finished shard is recorded: rerun the same command to resume"]
    split_dir = tmp_path / "train"
    on_disk = {p.name: p.stat().st_mtime_ns for p in split_dir.glob("shard-*.h5")}
    assert on_disk and not read_manifest(split_dir).complete

    result = build(slow_dataset, tmp_path, frames_per_shard=1)
    assert result.returncode == 0, result.stderr
    assert f"{len(on_disk)} kept" in result.stdout  # none of the finished shards is built again
    assert all((split_dir / name).stat().st_mtime_ns == mtime for name, mtime in on_disk.items())
    assert_same_shards(split_dir, slow_clean_build)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the dropped interrupt
def test_a_ctrl_c_whose_keyboardinterrupt_is_lost_still_stops_the_build(dataset, tmp_path):
    """Python drops a KeyboardInterrupt raised inside a finalizer or a weakref callback ("Exception
    ignored in: ..."). Here a Ctrl-C arrives while such a callback runs, as the build starts: the build
    must still stop before its first shard and not call the split complete."""

    class Resource:
        pass

    def on_start(todo: int, kept: int) -> None:
        resource = Resource()
        weakref.finalize(resource, signal.raise_signal, signal.SIGINT)  # Ctrl-C during the finalizer
        del resource  # the finalizer runs now; its KeyboardInterrupt is printed and dropped

    config = BuildConfig(root=str(dataset), split="train", out=str(tmp_path), frames_per_shard=FRAMES_PER_SHARD)
    with pytest.raises(KeyboardInterrupt):
        build_split(config, on_start=on_start)
    manifest = read_manifest(tmp_path / "train")
    assert not manifest.complete and manifest.shards == []
    assert not list((tmp_path / "train").glob("shard-*.h5"))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the build's handler is gone


# ------------------------------------------------------------------------------------------ GPU workers


def test_visible_gpus_come_from_cuda_visible_devices_or_the_device_count():
    from pipelines.build import visible_gpus

    assert visible_gpus(None, 0) == [] and visible_gpus(None, 3) == ["0", "1", "2"]
    assert visible_gpus("2,0", 8) == ["2", "0"]  # its order, whatever the count
    assert visible_gpus("GPU-5d1c, MIG-0a3f", 0) == ["GPU-5d1c", "MIG-0a3f"]
    assert visible_gpus("", 4) == []  # set but empty: no GPU


def test_local_workers_take_the_gpus_in_turn():
    from hedprep.errors import HedprepError
    from pipelines.build import worker_cuda_visible_devices

    assert [worker_cuda_visible_devices(i, ["0", "1", "2"]) for i in range(3)] == ["0", "1", "2"]
    assert [worker_cuda_visible_devices(i, ["3", "1"]) for i in range(5)] == ["3", "1", "3", "1", "3"]
    assert [worker_cuda_visible_devices(i, ["GPU-5d1c"]) for i in range(2)] == ["GPU-5d1c"] * 2
    with pytest.raises(HedprepError, match="no GPU is visible"):
        worker_cuda_visible_devices(0, [])


@pytest.mark.slow
def test_each_local_worker_process_sees_its_own_gpu():
    """A real local cluster (worker processes on 127.0.0.1), given a GPU list as `local_gpus` would
    read it: each worker process's CUDA_VISIBLE_DEVICES is the one assigned to it. No GPU is needed."""
    from distributed import Client

    from pipelines.build import local_cluster

    environment = dict(os.environ)
    with local_cluster(3, ["7", "GPU-5d1c"]) as cluster, Client(cluster, timeout="60s") as client:
        client.wait_for_workers(3, timeout=120)
        names = {a: w["name"] for a, w in client.scheduler_info(n_workers=-1)["workers"].items()}
        seen = client.run(os.getenv, "CUDA_VISIBLE_DEVICES")  # os.getenv: looked up in the worker
        worker_threads = set(client.run(os.getenv, "OMP_NUM_THREADS").values())
    assert {names[a]: v for a, v in seen.items()} == {0: "7", 1: "GPU-5d1c", 2: "7"}
    # The nannies set OMP_NUM_THREADS=1 for their workers; this process keeps its own environment
    # (it leaked once, and later `segnet train` subprocesses of the suite trained on one thread).
    assert worker_threads == {"1"} and dict(os.environ) == environment


@pytest.fixture(scope="module")
def in_process_cluster():
    """One scheduler with two in-process workers on 127.0.0.1 over TCP: one advertises a GPU
    resource (this machine may have no GPU: it is asked, and answers), one does not."""
    from distributed import LocalCluster, Worker

    cluster = LocalCluster(n_workers=0, processes=False, protocol="tcp", host="127.0.0.1",
                           dashboard_address="127.0.0.1:0")
    options = {"nthreads": 1, "host": "127.0.0.1", "dashboard": False}
    cluster.worker_spec["gpu"] = {"cls": Worker, "options": {**options, "resources": {"GPU": 1}}}
    cluster.worker_spec["cpu"] = {"cls": Worker, "options": options}
    cluster.scale(2)
    with cluster:
        yield cluster


def test_auto_on_a_remote_cluster_is_resolved_by_its_workers(in_process_cluster):
    from distributed import Client

    from hedprep.build_plan import BuildConfig
    from hedprep.hed import HedRun
    from pipelines.build import workers_hed_run

    config = BuildConfig(root=None, split="train", out="unused", scheduler=in_process_cluster.scheduler_address,
                         precision="tf32")
    with Client(in_process_cluster) as client:
        client.wait_for_workers(2, timeout=60)
        if __import__("torch").cuda.is_available():
            pytest.skip("needs a machine without a GPU")
        assert workers_hed_run(client, config) == HedRun("cpu", "fp32")  # tf32 on a CPU: fp32


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_on_a_remote_cluster_is_checked_on_its_gpu_workers(dataset, in_process_cluster, tmp_path):
    """The device check runs on the workers that advertise a GPU (here one that has none), not in this
    process: the error names that worker. Nothing is written."""
    result = build(dataset, tmp_path / "out", "--device", "cuda", "--scheduler", in_process_cluster.scheduler_address)
    assert_one_line_error(result, f"--scheduler {in_process_cluster.scheduler_address}: worker tcp://127.0.0.1:",
                          "--device cuda: no CUDA GPU is available here")
    assert not (tmp_path / "out").exists()


def test_cuda_on_a_remote_cluster_without_gpu_resources_fails_at_once(dataset, tmp_path):
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp", host="127.0.0.1",
                      dashboard_address="127.0.0.1:0") as cluster:
        result = build(dataset, tmp_path / "out", "--device", "cuda", "--scheduler", cluster.scheduler_address)
    assert_one_line_error(result, "no worker advertises a GPU resource", "--resources GPU=1")
    assert not (tmp_path / "out").exists()


def test_a_numbered_gpu_with_a_cluster_is_a_usage_error(dataset, tmp_path):
    result = build(dataset, tmp_path / "out", "--device", "cuda:1", "--workers", "2")
    assert_one_line_error(result, "--device cuda:1", "use --device cuda", status=2)
