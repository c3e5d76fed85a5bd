"""The shard build as a Dask graph: one task per shard, on a local or a distributed scheduler.

`build_split(config)` plans the shards of a split (`hedprep.build_plan`), keeps the complete shards
of an earlier build (`hedprep.shards`' resume rules), runs one `build_shard` task per shard still to
do and one `relevel_shard` task per kept shard whose resolution levels differ from `--levels` (no
HED: the levels come from the stored frames), and rewrites the manifest atomically each time a
shard finishes.

Schedulers:
- default: Dask's local scheduler in this process (one task at a time; HED uses every core).
- `workers=N`: a dask.distributed cluster of N single-threaded worker processes on 127.0.0.1
  (`local_cluster`), each running HED with cores/N torch threads. When HED runs on cuda, worker i
  sees only GPU `worker_cuda_visible_devices(i, local_gpus())` (the GPUs in turn).
- `scheduler="tcp://host:port"`: an existing dask.distributed cluster (`dask scheduler`,
  `dask worker`). Workers must see the dataset and OUT at the same paths (a shared filesystem).
  The device and precision are resolved by the workers (`workers_hed_run`), not by this process;
  on cuda each HED task asks for one `GPU` resource (`dask worker ... --resources GPU=1`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import dask

from hedprep.allocator import retain_freed_memory
from hedprep.build_plan import BuildConfig, BuildPlan, check_config, plan_build
from hedprep.errors import HedprepError, OptionError, one_line
from hedprep.hed import HedRun, resolve_hed_run
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
    if not config.scheduler:
        return _build(config, plan_build(config), None, on_frames, on_start)
    check_scheduler_address(config.scheduler)
    check_config(config)
    with _remote_client(config.scheduler) as client:
        # The device is the workers' to resolve: this process (a login node, say) may have no GPU.
        hed_run = workers_hed_run(client, config)
        return _build(config, plan_build(config, hed_run), client, on_frames, on_start)


def _build(config: BuildConfig, plan: BuildPlan, client, on_frames: Callable[[int], None] | None,
           on_start: Callable[[int, int], None] | None) -> BuildResult:
    """Run a planned build: keep, relevel and build shards, on `client` (a remote cluster's), a
    cluster of `--workers` started here, or this process."""
    split_dir = prepare_split_dir(config.out, config.split)
    with build_lock(split_dir), ctrl_c_remembered() as ctrl_c:
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
        on_gpu = plan.params["device"] == "cuda"
        if todo and client is not None:
            _run_distributed(client, todo, keeper, on_frames, ctrl_c, gpu_resource=on_gpu)
        elif todo and config.workers:
            # One GPU per worker, in turn: each worker's cuda is its own GPU.
            with _local_client(config.workers, local_gpus() if on_gpu else None) as local_client:
                _run_distributed(local_client, todo, keeper, on_frames, ctrl_c, gpu_resource=False)
        elif todo:
            _run_local(todo, keeper, on_frames, ctrl_c)
        ctrl_c.check()
        manifest = keeper.write(complete=True)
    built = keeper.built - len(relevel)
    return BuildResult(split_dir, manifest, built, len(kept) - len(relevel), manifest.num_frames, manifest.skipped,
                       relevelled=len(relevel))


class CtrlC:
    """Whether Ctrl-C was pressed during a build (set by `ctrl_c_remembered`'s handler)."""

    def __init__(self) -> None:
        self.pressed = False

    def check(self) -> None:
        """Raise KeyboardInterrupt if Ctrl-C was pressed, even if its first KeyboardInterrupt was lost."""
        if self.pressed:
            raise KeyboardInterrupt


@contextlib.contextmanager
def ctrl_c_remembered() -> Iterator[CtrlC]:
    """A SIGINT handler that remembers the Ctrl-C as well as raising KeyboardInterrupt.

    A KeyboardInterrupt raised while Python runs a finalizer or a weakref callback (Dask and tornado run
    many) is printed as "Exception ignored" and dropped; the build then checks `CtrlC.pressed` between
    shards and before it records the split complete, so a Ctrl-C always stops it. Only in the main
    thread, and only over Python's default handler.
    """
    ctrl_c = CtrlC()
    if threading.current_thread() is not threading.main_thread() or (
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield ctrl_c
        return

    def remember(signum: int, frame: object) -> None:
        ctrl_c.pressed = True
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, remember)
    try:
        yield ctrl_c
    finally:
        signal.signal(signal.SIGINT, previous)


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


def _run_local(specs: list[Task], keeper: ManifestKeeper, on_frames: Callable[[int], None] | None,
               ctrl_c: CtrlC) -> None:
    def build_and_record(spec: Task) -> None:
        ctrl_c.check()
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


# ------------------------------------------------------------------------------------------ GPUs

GPU_RESOURCE = "GPU"  # the Dask resource a GPU worker advertises: dask worker ... --resources GPU=1


def visible_gpus(cuda_visible_devices: str | None, device_count: int) -> list[str]:
    """The GPUs a process here may use, as CUDA_VISIBLE_DEVICES entries: those the variable lists
    (indices, UUIDs or MIG ids, in its order; "" lists none), else 0 .. device_count - 1."""
    if cuda_visible_devices is None:
        return [str(i) for i in range(device_count)]
    return [entry.strip() for entry in cuda_visible_devices.split(",") if entry.strip()]


def worker_cuda_visible_devices(index: int, gpus: Sequence[str]) -> str:
    """The CUDA_VISIBLE_DEVICES of local worker `index`: the GPUs taken in turn, `gpus[index % len(gpus)]`,
    so N workers on G GPUs put N / G (rounded up or down) on each; the worker sees it as cuda:0."""
    if not gpus:
        raise HedprepError("--device cuda: no GPU is visible here (CUDA_VISIBLE_DEVICES lists none)")
    return gpus[index % len(gpus)]


def local_gpus() -> list[str]:
    """`visible_gpus` of this process: its CUDA_VISIBLE_DEVICES, or torch's device count."""
    import torch

    return visible_gpus(os.environ.get("CUDA_VISIBLE_DEVICES"), torch.cuda.device_count())


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Ctrl-C reaches the whole foreground process group; worker processes started meanwhile inherit
    "ignore", so only this process handles it (and stops the cluster cleanly)."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def local_cluster(workers: int, gpus: Sequence[str] | None = None):
    """A dask.distributed cluster of `workers` single-threaded worker processes on 127.0.0.1, as
    `LocalCluster` makes one; with `gpus`, worker i sees only `worker_cuda_visible_devices(i, gpus)`
    (its own `CUDA_VISIBLE_DEVICES`, set by its nanny before the worker starts). Close it (`with`)."""
    from distributed import Nanny, Scheduler, SpecCluster
    from distributed.worker_memory import parse_memory_limit

    # silence_logs: the workers' warnings about tasks cancelled by Ctrl-C are noise to a user.
    memory_limit = parse_memory_limit("auto", 1, workers, logger=logging.getLogger(__name__))  # as LocalCluster
    options = {"nthreads": 1, "host": "127.0.0.1", "dashboard": False, "dashboard_address": None,
               "silence_logs": logging.ERROR, "memory_limit": memory_limit}
    specs = {
        i: {"cls": Nanny, "options": {
            **options, **({"env": {"CUDA_VISIBLE_DEVICES": worker_cuda_visible_devices(i, gpus)}} if gpus else {}),
        }}
        for i in range(workers)
    }
    # Its HTTP server (metrics, even without a dashboard) on a free port of 127.0.0.1, not on :8787.
    scheduler = {"cls": Scheduler, "options": {"host": "127.0.0.1", "dashboard": False,
                                               "dashboard_address": "127.0.0.1:0"}}
    with _sigint_ignored(), environment_kept():
        return SpecCluster(scheduler=scheduler, workers=specs, silence_logs=logging.ERROR)


@contextlib.contextmanager
def environment_kept() -> Iterator[None]:
    """This process's environment as it was before the block, whatever the block set.

    A nanny runs in the process that starts a local cluster and, before it spawns its worker, sets
    its `distributed.nanny.pre-spawn-environ` (OMP_NUM_THREADS=1, MKL_NUM_THREADS=1, ...) in this
    process's own `os.environ`: every later subprocess (a `segnet train` after `segnet study`'s build,
    say) would then run torch on one thread.
    """
    before = dict(os.environ)
    try:
        yield
    finally:
        if dict(os.environ) != before:
            os.environ.clear()
            os.environ.update(before)


@contextlib.contextmanager
def _local_client(workers: int, gpus: Sequence[str] | None):
    from distributed import Client

    # Kept for the cluster's life too: a nanny sets the variables again when it restarts a worker.
    with environment_kept(), local_cluster(workers, gpus) as cluster, Client(cluster) as client:
        yield client


@contextlib.contextmanager
def _remote_client(address: str):
    from distributed import Client

    try:
        client = Client(address, timeout="20s")
    except (OSError, TimeoutError) as error:
        raise HedprepError(f"--scheduler {address}: cannot connect ({error})") from None
    with client:
        try:
            client.wait_for_workers(1, timeout=60)
        except TimeoutError:
            raise HedprepError(f"--scheduler {address}: no worker joined within 60 s") from None
        yield client


def workers_hed_run(client, config: BuildConfig) -> HedRun:
    """The device kind and precision HED runs as on a remote cluster's workers, asked of them.

    `--device cpu`: every worker. `--device cuda[:N]`: the workers that advertise a GPU resource
    (the only ones a GPU task goes to); none is an error. `--device auto`: every worker, and they
    must agree (all with a GPU, advertised as a resource, or all without). Each worker's own error
    (cuda without a GPU there) is reported as one line naming it.
    """
    workers = client.scheduler_info(n_workers=-1)["workers"]
    with_gpu = [a for a, w in workers.items() if w.get("resources", {}).get(GPU_RESOURCE, 0) >= 1]
    asked = with_gpu if config.device.startswith("cuda") else list(workers)
    where = f"--scheduler {config.scheduler}"
    if not asked:
        raise HedprepError(f"{where}: no worker advertises a {GPU_RESOURCE} resource; start each GPU worker with "
                           f"`dask worker {config.scheduler} --resources {GPU_RESOURCE}=1` (docs/scaling.md)")
    runs = client.run(resolve_hed_run, config.device, config.precision, workers=asked, on_error="return")
    for address, run in sorted(runs.items()):
        if isinstance(run, BaseException):
            raise HedprepError(f"{where}: worker {address}: {one_line(run)}") from None
    kinds = sorted({(run.device, run.precision) for run in runs.values()})
    if len(kinds) > 1:
        counts = ", ".join(f"{sum(1 for r in runs.values() if (r.device, r.precision) == k)} run {k[0]} {k[1]}"
                           for k in kinds)
        raise HedprepError(f"{where}: the workers run HED differently ({counts}); every shard of a build must be "
                           "made alike: choose --device and --precision, or workers that agree")
    run = next(iter(runs.values()))
    if run.device == "cuda" and not set(runs) <= set(with_gpu):
        raise HedprepError(f"{where}: --device {config.device} resolves to cuda on the workers, but not every one "
                           f"advertises a {GPU_RESOURCE} resource; start them with --resources {GPU_RESOURCE}=1 "
                           "(docs/scaling.md)")
    return run


def _run_distributed(client, specs: list[Task], keeper: ManifestKeeper, on_frames: Callable[[int], None] | None,
                     ctrl_c: CtrlC, gpu_resource: bool) -> None:
    """Run the tasks on a cluster; with `gpu_resource`, each HED task asks for one GPU resource."""
    from distributed import as_completed

    if on_frames is not None:
        client.subscribe_topic(PROGRESS_TOPIC, lambda event: on_frames(event[1]["frames"]))
    threads = _torch_threads(client)
    # glibc's one-arena setting must come before a worker starts its task thread; each task then
    # sets its torch threads (run_shard_task).
    client.run(retain_freed_memory)
    relevel = [s for s in specs if isinstance(s, RelevelSpec)]  # no HED: any worker
    build = [s for s in specs if not isinstance(s, RelevelSpec)]
    futures = client.compute(shard_graph(relevel, threads)) + client.compute(
        shard_graph(build, threads), resources={GPU_RESOURCE: 1} if gpu_resource else None)
    recorded: set[int] = set()
    try:
        for future in as_completed(futures):
            index, record = future.result()
            keeper.add(index, record)
            recorded.add(index)
            ctrl_c.check()
    finally:
        # Interrupted or failed: shards that finished meanwhile are on disk; record them too.
        for future in futures:
            if future.status == "finished":
                index, record = future.result()
                if index not in recorded:
                    keeper.add(index, record)
        client.cancel(futures)
        if on_frames is not None:
            client.unsubscribe_topic(PROGRESS_TOPIC)
