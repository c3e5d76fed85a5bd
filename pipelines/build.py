"""The shard build as a Dask graph: one task per shard, on a local or a distributed scheduler.

`build_split(config)` plans the shards of a split (`hedprep.build_plan`), keeps the complete shards
of an earlier build (`hedprep.shards`' resume rules), runs one `build_shard` task per shard still to
do and one `relevel_shard` task per kept shard whose resolution levels differ from `--levels` (no
HED: the levels come from the stored frames), and rewrites the manifest atomically each time a
shard finishes.

Schedulers:
- default: Dask's local scheduler in this process (one task at a time; HED uses every core).
- `workers=N`: a dask.distributed `LocalCluster` of N single-threaded worker processes on 127.0.0.1,
  each running HED with cores/N torch threads.
- `scheduler="tcp://host:port"`: an existing dask.distributed cluster (`dask scheduler`,
  `dask worker`). Workers must see the dataset and OUT at the same paths (a shared filesystem).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import dask

from hedprep.allocator import retain_freed_memory
from hedprep.build_plan import BuildConfig, plan_build
from hedprep.errors import HedprepError, OptionError
from hedprep.process_tuning import available_cpus, tune_process_for_hed
from hedprep.shard_builder import ShardSpec, build_shard
from hedprep.shard_relevel import RelevelSpec, relevel_shard
from hedprep.shards import (
    Manifest,
    ManifestKeeper,
    ShardRecord,
    SkippedFrame,
    build_lock,
    earlier_manifest,
    kept_shards,
    prepare_split_dir,
    remove_leftovers,
)

PROGRESS_TOPIC = "hedprep-build-progress"
CONNECT_TIMEOUT_S = 3  # a scheduler that is up answers a TCP connect at once


@dataclass
class BuildResult:
    """What a build did."""

    split_dir: Path
    manifest: Manifest
    built: int  # shards written by this run
    kept: int  # shards found complete and kept as they were
    frames: int
    skipped: list[SkippedFrame]
    relevelled: int = 0  # shards kept but rewritten with other resolution levels (no HED)


Task = ShardSpec | RelevelSpec


def run_task(spec: Task, on_frames: Callable[[int], None] | None = None, threads: int | None = None) -> ShardRecord:
    """Do one task of the graph: build a shard with HED, or rewrite one with other levels.

    `threads`: the task's share of the cores, for the build's reader and preparing pools (default: all).
    """
    if isinstance(spec, RelevelSpec):
        return relevel_shard(spec, on_frames=on_frames)
    return build_shard(spec, on_frames=on_frames, threads=threads)


def build_split(
    config: BuildConfig,
    on_frames: Callable[[int], None] | None = None,
    on_start: Callable[[int, int], None] | None = None,
) -> BuildResult:
    """Build (or resume) the shards of one split.

    A build is an entry point: with the local scheduler it tunes this process for HED
    (`hedprep.process_tuning.tune_process_for_hed`: torch threads, glibc keeping freed memory), and
    each dask.distributed task tunes its worker.

    Args:
        config: the build's options.
        on_frames: called with a count as frames are done, for progress bars.
        on_start: called once before the work starts with (frames to build or relevel, frames kept
            from before as they are).
    """
    if config.scheduler:
        check_scheduler_address(config.scheduler)
    plan = plan_build(config)
    split_dir = prepare_split_dir(config.out, config.split)
    with build_lock(split_dir):
        kept = kept_shards(split_dir, plan.planned, earlier_manifest(split_dir, plan.params, config.force))
        remove_leftovers(split_dir, plan.planned, kept)
        relevel: list[Task] = [
            RelevelSpec(i, plan.specs[i].path, record, plan.specs[i].info, plan.specs[i].compression)
            for i, record in sorted(kept.items()) if record.levels != config.levels
        ]
        todo: list[Task] = relevel + [s for s in plan.specs if s.index not in kept]
        if on_start is not None:
            untouched = [i for i in kept if kept[i].levels == config.levels]
            on_start(sum(len(s.frame_ids) for s in todo), sum(len(plan.specs[i].frames) for i in untouched))
        keeper = ManifestKeeper(split_dir, plan.params, kept)
        keeper.write(complete=False)
        if todo and (config.scheduler or config.workers):
            _run_distributed(todo, config, keeper, on_frames)
        elif todo:
            _run_local(todo, keeper, on_frames)
        manifest = keeper.write(complete=True)
    built = keeper.built - len(relevel)
    return BuildResult(split_dir, manifest, built, len(kept) - len(relevel), manifest.num_frames, manifest.skipped,
                       relevelled=len(relevel))


def check_scheduler_address(address: str) -> None:
    """Fail fast, with one line, on an address Dask cannot use or where nothing listens."""
    from distributed.comm import parse_address
    from distributed.comm.addressing import parse_host_port
    from distributed.comm.registry import backends

    try:
        scheme, location = parse_address(address)
        host, port = parse_host_port(location)
    except ValueError:
        raise OptionError(f"--scheduler {address}: expected a scheduler address such as tcp://10.0.0.5:8786") from None
    if scheme not in backends:
        raise OptionError(f"--scheduler {address}: unknown protocol {scheme}://; Dask takes {', '.join(backends)}")
    if scheme not in ("tcp", "tls"):
        return
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise HedprepError(f"--scheduler {address}: no scheduler answers there ({reason})") from None


# ------------------------------------------------------------------------------------ local scheduler


def _run_local(specs: list[Task], keeper: ManifestKeeper, on_frames: Callable[[int], None] | None) -> None:
    def build_and_record(spec: Task) -> None:
        keeper.add(spec.index, run_task(spec, on_frames=on_frames))

    # One task at a time, in this thread: HED already uses every core (two tasks would double the
    # memory), and the main thread's heap is the one that keeps HED's buffers warm.
    tune_process_for_hed()
    tasks = [dask.delayed(build_and_record, pure=False)(spec, dask_key_name=Path(spec.path).stem) for spec in specs]
    dask.compute(*tasks, scheduler="sync")


# ------------------------------------------------------------------------------ distributed scheduler


def shard_graph(specs: list[Task], threads: dict[str, int]) -> list:
    """The distributed build graph: one delayed `run_shard_task` per shard, keyed `shard-00042`."""
    return [
        dask.delayed(run_shard_task, pure=False)(spec, threads, dask_key_name=Path(spec.path).stem)
        for spec in specs
    ]


def run_shard_task(spec: Task, threads: dict[str, int]) -> tuple[int, ShardRecord]:
    """A task on a dask.distributed worker: build (or relevel) one shard with this worker's share of
    the cores, reporting frames done to the client as events."""
    from distributed import get_worker

    worker = get_worker()
    share = threads.get(worker.address)
    tune_process_for_hed(share)  # the task is the build's entry point in the worker
    record = run_task(spec, on_frames=lambda n: worker.log_event(PROGRESS_TOPIC, {"frames": n}), threads=share)
    return spec.index, record


def _torch_threads(client) -> dict[str, int]:
    """Each worker's share of its machine's CPUs: CPUs / worker threads on that host."""
    workers = client.scheduler_info(n_workers=-1)["workers"]
    cpus = client.run(available_cpus)
    per_host: dict[str, int] = {}
    for worker in workers.values():
        per_host[worker["host"]] = per_host.get(worker["host"], 0) + worker["nthreads"]
    return {a: max(1, cpus.get(a, 1) // per_host[w["host"]]) for a, w in workers.items()}


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Ctrl-C reaches the whole foreground process group; worker processes started meanwhile inherit
    "ignore", so only this process handles it (and stops the cluster cleanly)."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


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
    with _sigint_ignored():
        # silence_logs: the workers' warnings about tasks cancelled by Ctrl-C are noise to a user.
        cluster = LocalCluster(n_workers=config.workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address=None, silence_logs=logging.ERROR)
    with cluster, Client(cluster) as client:
        yield client


def _run_distributed(specs: list[Task], config: BuildConfig, keeper: ManifestKeeper,
                     on_frames: Callable[[int], None] | None) -> None:
    from distributed import as_completed

    with _client(config) as client:
        if on_frames is not None:
            client.subscribe_topic(PROGRESS_TOPIC, lambda event: on_frames(event[1]["frames"]))
        threads = _torch_threads(client)
        # glibc's one-arena setting must come before a worker starts its task thread; each task then
        # sets its torch threads (run_shard_task).
        client.run(retain_freed_memory)
        futures = client.compute(shard_graph(specs, threads))
        recorded: set[int] = set()
        try:
            for future in as_completed(futures):
                index, record = future.result()
                keeper.add(index, record)
                recorded.add(index)
        finally:
            # Interrupted or failed: shards that finished meanwhile are on disk; record them too.
            for future in futures:
                if future.status == "finished":
                    index, record = future.result()
                    if index not in recorded:
                        keeper.add(index, record)
            client.cancel(futures)
            client.unsubscribe_topic(PROGRESS_TOPIC)
