"""The shard build as a Dask graph: one task per shard, on a local or a distributed scheduler.

`build_split(config)` plans the shards of a split (frames in frame-id order, `frames_per_shard` per
shard), compares them with an earlier build's manifest (resume), runs one `build_shard` task per
shard that is not complete, and rewrites the manifest atomically each time a shard finishes.

Schedulers:
- default: Dask's local scheduler in this process (one task at a time; HED uses every core).
- `workers=N`: a dask.distributed `LocalCluster` of N single-threaded worker processes on 127.0.0.1,
  each running HED with cores/N torch threads.
- `scheduler="tcp://host:port"`: an existing dask.distributed cluster (`dask scheduler`,
  `dask worker`). Workers must see the dataset and OUT at the same paths (a shared filesystem).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import dask
from dask.callbacks import Callback

from hedprep.allocator import retain_freed_memory
from hedprep.cityscapes import list_frames, resolve_root
from hedprep.errors import HedprepError
from hedprep.hed import PRECISIONS, read_weights
from hedprep.shard_builder import EngineSpec, ShardSpec, build_shard, first_frame_size
from hedprep.shards import (
    MANIFEST_NAME,
    SHARD_PATTERN,
    Manifest,
    ShardInfo,
    ShardRecord,
    parse_compression,
    read_manifest,
    shard_is_complete,
    shard_name,
    write_manifest,
)

PROGRESS_TOPIC = "hedprep-build-progress"
ON_ERROR = ("fail", "skip")
# Parameters that change what a shard holds: a rerun with other values is refused unless --force.
COMPARED_PARAMS = (
    "split", "labels", "dataset_root", "hed_weights_sha256", "precision", "compression",
    "frame_height", "frame_width", "frames_per_shard",
)


@dataclass(frozen=True)
class BuildConfig:
    """Everything `hedprep build` takes. See `hedprep build --help` for each option."""

    root: str | None
    split: str
    out: str
    weights: str = "bsds500"
    frames_per_shard: int = 32
    batch_size: int = 1
    precision: str = "fp32"
    device: str = "auto"
    compression: str = "gzip"
    scheduler: str | None = None
    workers: int | None = None
    limit: int | None = None
    on_error: str = "fail"
    force: bool = False
    labels: str = "fine"


@dataclass
class BuildResult:
    """What a build did."""

    split_dir: Path
    manifest: Manifest
    built: int  # shards written by this run
    kept: int  # shards found complete and kept
    frames: int
    skipped: list[dict[str, str]]


@dataclass
class BuildPlan:
    """The shards of a split and the manifest parameters, before anything runs."""

    split_dir: Path
    params: dict
    specs: list[ShardSpec]


def _check_config(config: BuildConfig) -> None:
    if config.frames_per_shard < 1:
        raise HedprepError(f"--frames-per-shard {config.frames_per_shard}: must be at least 1")
    if config.batch_size < 1:
        raise HedprepError(f"--batch-size {config.batch_size}: must be at least 1")
    if config.precision not in PRECISIONS:
        raise HedprepError(f"--precision {config.precision}: choose one of {', '.join(PRECISIONS)}")
    if config.on_error not in ON_ERROR:
        raise HedprepError(f"--on-error {config.on_error}: choose one of {', '.join(ON_ERROR)}")
    if config.limit is not None and config.limit < 1:
        raise HedprepError(f"--limit {config.limit}: must be at least 1")
    if config.workers is not None and config.workers < 1:
        raise HedprepError(f"--workers {config.workers}: must be at least 1")
    if config.workers is not None and config.scheduler:
        raise HedprepError("--workers and --scheduler exclude each other: --workers starts a local cluster")


def prepare_split_dir(out: str | os.PathLike, split: str) -> Path:
    """Create `OUT/{split}` (or fail with one line if it cannot be written)."""
    split_dir = Path(out) / split
    try:
        split_dir.mkdir(parents=True, exist_ok=True)
        probe = split_dir / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as error:
        raise HedprepError(f"{split_dir}: output folder is not writable ({error.strerror or error})") from None
    return split_dir


def plan_build(config: BuildConfig) -> BuildPlan:
    """List the split's frames, fix the frame size, and cut the frames into shard specs."""
    _check_config(config)
    compression = parse_compression(config.compression)
    root = resolve_root(config.root)
    frames = list_frames(root, config.split, config.labels)
    if config.limit is not None:
        frames = frames[: config.limit]
    weights = read_weights(config.weights).info
    height, width = first_frame_size(frames, config.on_error)
    info = ShardInfo(
        split=config.split,
        dataset_root=str(root.resolve()),
        hed_weights=weights.name,
        hed_weights_sha256=weights.sha256,
        precision=config.precision,
        compression=str(compression),
        frame_height=height,
        frame_width=width,
    )
    params = {
        **asdict(info),
        "labels": config.labels,
        "frames_per_shard": config.frames_per_shard,
        "limit": config.limit,
        "on_error": config.on_error,
    }
    engine = EngineSpec(config.weights, config.precision, config.device, config.batch_size)
    split_dir = prepare_split_dir(config.out, config.split)
    step = config.frames_per_shard
    specs = [
        ShardSpec(i, str(split_dir / shard_name(i)), tuple(frames[start : start + step]), info, compression,
                  engine, config.on_error)
        for i, start in enumerate(range(0, len(frames), step))
    ]
    return BuildPlan(split_dir, params, specs)


def _earlier_manifest(plan: BuildPlan, force: bool) -> Manifest | None:
    """The manifest of an earlier build into the same folder, if its parameters match ours."""
    if not (plan.split_dir / MANIFEST_NAME).exists():
        return None
    try:
        earlier = read_manifest(plan.split_dir)
    except HedprepError:
        if force:
            return None
        raise
    changed = [k for k in COMPARED_PARAMS if earlier.params.get(k) != plan.params.get(k)]
    if changed and not force:
        what = ", ".join(f"{k} {earlier.params.get(k)!r} -> {plan.params.get(k)!r}" for k in changed)
        raise HedprepError(
            f"{plan.split_dir / MANIFEST_NAME}: an earlier build used other parameters ({what}); "
            "rerun with --force to rebuild, or choose another --out"
        )
    return None if changed else earlier


def _kept_shards(plan: BuildPlan, earlier: Manifest | None) -> dict[int, ShardRecord]:
    """The shards of an earlier build that are complete (size, sha256, frame ids) and stay."""
    records = {r.file: r for r in earlier.shards} if earlier else {}
    kept = {}
    for spec in plan.specs:
        record = records.get(Path(spec.path).name)
        if shard_is_complete(spec.path, record, spec.frame_ids):
            kept[spec.index] = record
    return kept


def _remove_leftovers(split_dir: Path, keep: set[str]) -> None:
    """Temporary files of killed builds, and shard files the plan no longer has."""
    for path in split_dir.glob(".*.tmp"):
        path.unlink(missing_ok=True)
    for path in split_dir.glob(SHARD_PATTERN):
        if path.name not in keep:
            warnings.warn(f"{path}: removed, it is not part of this build's plan", UserWarning, stacklevel=3)
            path.unlink()


@contextlib.contextmanager
def _build_lock(split_dir: Path) -> Iterator[None]:
    """One build at a time per split folder."""
    path = split_dir / ".build.lock"
    with open(path, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise HedprepError(f"{split_dir}: another hedprep build is writing here") from None
        yield


class _ManifestKeeper:
    """Keeps the manifest of the running build; rewrites it (atomically) as each shard finishes."""

    def __init__(self, plan: BuildPlan, kept: dict[int, ShardRecord]) -> None:
        self.plan = plan
        self.records = dict(kept)
        self.built = 0

    def add(self, index: int, record: ShardRecord) -> None:
        self.records[index] = record
        self.built += 1
        self.write(complete=False)

    def write(self, complete: bool) -> Manifest:
        shards = [self.records[i] for i in sorted(self.records)]
        manifest = Manifest(self.plan.params["split"], self.plan.params, shards, complete)
        write_manifest(self.plan.split_dir, manifest)
        return manifest


def build_split(
    config: BuildConfig,
    on_frames: Callable[[int], None] | None = None,
    on_start: Callable[[int, int], None] | None = None,
    plan: BuildPlan | None = None,
) -> BuildResult:
    """Build (or resume) the shards of one split.

    Args:
        config: the build's options.
        on_frames: called with a count as frames are done, for progress bars.
        on_start: called once before the work starts with (frames to build, frames kept from before).
        plan: `plan_build(config)`, if the caller made it already.
    """
    plan = plan or plan_build(config)
    with _build_lock(plan.split_dir):
        kept = _kept_shards(plan, _earlier_manifest(plan, config.force))
        _remove_leftovers(plan.split_dir, keep={Path(plan.specs[i].path).name for i in kept})
        todo = [s for s in plan.specs if s.index not in kept]
        if on_start is not None:
            on_start(sum(len(s.frames) for s in todo), sum(len(plan.specs[i].frames) for i in kept))
        keeper = _ManifestKeeper(plan, kept)
        keeper.write(complete=False)
        if todo and (config.scheduler or config.workers):
            _run_distributed(todo, config, keeper, on_frames)
        elif todo:
            _run_local(todo, keeper, on_frames)
        manifest = keeper.write(complete=True)
    return BuildResult(plan.split_dir, manifest, keeper.built, len(kept), manifest.num_frames, manifest.skipped)


# ------------------------------------------------------------------------------------ local scheduler


def shard_graph(specs: list[ShardSpec], threads: dict[str, int] | None = None) -> list:
    """The build graph: one delayed `run_shard_task` per shard, keyed `shard-00042`."""
    return [
        dask.delayed(run_shard_task, pure=False)(spec, threads, dask_key_name=Path(spec.path).stem)
        for spec in specs
    ]


_local_progress: Callable[[int], None] | None = None


def _progress_reporter() -> Callable[[int], None]:
    """Where a task reports frames done: an event to the client on a distributed worker, else the
    callback of the local build (the task runs in this process)."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        local = _local_progress
        return local if local is not None else (lambda n: None)
    return lambda n: worker.log_event(PROGRESS_TOPIC, {"frames": n})


def run_shard_task(spec: ShardSpec, threads: dict[str, int] | None = None) -> tuple[int, ShardRecord]:
    """A task of the graph: build one shard with this worker's share of the cores."""
    share = None
    if threads:
        from distributed import get_worker

        share = threads.get(get_worker().address)
    return spec.index, build_shard(spec, threads=share, on_frames=_progress_reporter())


def _run_local(specs: list[ShardSpec], keeper: _ManifestKeeper, on_frames: Callable[[int], None] | None) -> None:
    global _local_progress

    def posttask(key, result, dsk, state, worker_id) -> None:
        if isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], ShardRecord):
            keeper.add(*result)

    _local_progress = on_frames
    try:
        with Callback(posttask=posttask):
            # One task at a time, in this thread: HED already uses every core (two tasks would double
            # the memory), and the main thread's heap is the one that keeps HED's buffers warm.
            retain_freed_memory()
            dask.compute(*shard_graph(specs), scheduler="sync")
    finally:
        _local_progress = None


# ------------------------------------------------------------------------------ distributed scheduler


def _torch_threads(client) -> dict[str, int]:
    """Each worker's share of its machine's CPUs: CPUs / worker threads on that host."""
    workers = client.scheduler_info(n_workers=-1)["workers"]
    cpus = client.run(lambda: len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    per_host: dict[str, int] = {}
    for worker in workers.values():
        per_host[worker["host"]] = per_host.get(worker["host"], 0) + worker["nthreads"]
    return {a: max(1, cpus.get(a, 1) // per_host[w["host"]]) for a, w in workers.items()}


@contextlib.contextmanager
def _client(config: BuildConfig):
    from distributed import Client, LocalCluster

    if config.scheduler:
        try:
            client = Client(config.scheduler, timeout="20s")
        except (OSError, TimeoutError) as error:
            raise HedprepError(f"--scheduler {config.scheduler}: cannot connect ({error})") from None
        with client:
            try:
                client.wait_for_workers(1, timeout=60)
            except TimeoutError:
                raise HedprepError(f"--scheduler {config.scheduler}: no worker joined within 60 s") from None
            yield client
        return
    with LocalCluster(n_workers=config.workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        yield client


def _run_distributed(specs: list[ShardSpec], config: BuildConfig, keeper: _ManifestKeeper,
                     on_frames: Callable[[int], None] | None) -> None:
    from distributed import as_completed

    with _client(config) as client:
        if on_frames is not None:
            client.subscribe_topic(PROGRESS_TOPIC, lambda event: on_frames(event[1]["frames"]))
        threads = _torch_threads(client)
        client.run(retain_freed_memory)  # before the workers start their task threads
        futures = client.compute(shard_graph(specs, threads))
        try:
            for future in as_completed(futures):
                keeper.add(*future.result())
        finally:
            client.cancel(futures)
            client.unsubscribe_topic(PROGRESS_TOPIC)

