"""Build one shard from Cityscapes frames: decode, HED, compress and write, overlapped.

This is the work of one task of the build graph (`pipelines/build.py`). It runs where the task runs:
in the client process with Dask's local scheduler, or in a dask.distributed worker. The HED model is
loaded on first use in each process and kept (`hedprep.hed.cached_detector`), never sent through the graph.

Within a task the stages overlap: a pool of reader threads decodes the frames ahead of HED (OpenCV
releases the GIL), the calling thread runs HED, a pool of threads prepares each frame for the shard
(resolution levels, label colours, chunk compression: `ShardWriter.prepare`), and one writer thread
stores the prepared frames in frame order (`ShardWriter.write`), so the file does not depend on the
number of threads. Both pools have one thread per core of the task's share of the machine: on a GPU
worker the writer's CPU work, not HED, bounds the frame rate (docs/scaling.md).
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from hedprep.cityscapes import Frame, read_frame
from hedprep.errors import HedprepError
from hedprep.hed import HedRun, cached_detector
from hedprep.process_tuning import available_cpus
from hedprep.shards import Compression, PreparedFrame, ShardInfo, ShardRecord, ShardWriter, SkippedFrame

# Frames decoded ahead of HED: this many per reader thread, plus a batch. Each 1024x2048 frame holds
# 8 MiB (RGB and labels), so memory stays bounded by the threads.
READ_AHEAD_PER_THREAD = 2
# Frames handed to the preparing pool and not yet written: this many per thread (about 30 MiB each at
# 1024x2048 while its levels and chunks are made); HED waits beyond that.
IN_FLIGHT_PER_THREAD = 2


class EdgeSource(Protocol):
    """What computes a build's edges: `hedprep.hed.EdgeDetector`, or a stand-in in a benchmark."""

    @property
    def hed_run(self) -> HedRun:
        """The device kind and precision it runs."""

    def edges(self, images: np.ndarray) -> np.ndarray:
        """uint8 RGB (N, H, W, 3) -> uint8 edges (N, H, W)."""


@dataclass(frozen=True)
class EngineSpec:
    """How to run HED in a worker: the weights, precision, device and frames per forward pass."""

    weights: str = "bsds500"
    precision: str = "fp32"
    device: str = "auto"
    batch_size: int = 1


@dataclass(frozen=True)
class ShardSpec:
    """One task of a build: which frames go into which shard file, and how. Small and picklable."""

    index: int
    path: str
    frames: tuple[Frame, ...]
    info: ShardInfo
    compression: Compression
    engine: EngineSpec
    on_error: str = "fail"

    @property
    def frame_ids(self) -> list[str]:
        return [f.frame_id for f in self.frames]


BACKGROUND_NICENESS = 19


def _run_in_background() -> None:
    """Lower this (reader or preparing) thread's CPU priority (Linux: per-thread nice 19).

    Meant to let decoding and compressing fill HED's idle moments rather than compete with it when
    HED runs on the CPU; on 2 cores it made no measurable difference (docs/performance.md), and it
    cannot slow HED down. Not on a GPU worker, where these threads are the work.
    """
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICENESS)
    except (AttributeError, OSError):  # not Linux, or not permitted: run at normal priority
        pass


def _read_checked(frame: Frame, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray | None]:
    rgb, label = read_frame(frame)
    if rgb.shape[:2] != size:
        raise HedprepError(
            f"{frame.image}: frame is {rgb.shape[1]}x{rgb.shape[0]} but this split's frames are "
            f"{size[1]}x{size[0]} (width x height)"
        )
    return rgb, label


def build_shard(
    spec: ShardSpec,
    on_frames: Callable[[int], None] | None = None,
    threads: int | None = None,
    detector: EdgeSource | None = None,
) -> ShardRecord:
    """Build one shard: read, HED, prepare and write, rename into place. Returns its manifest record.

    Runs with the process's torch threads and allocator as they are: the build's runners
    (`pipelines.build`) set them with `tune_process_for_hed`.

    Args:
        spec: the shard to build.
        on_frames: called with a count as frames are written or skipped, for progress bars.
        threads: reader threads and preparing threads (each); default: every CPU this process may
            use. The shard is the same with any number.
        detector: what computes the edges; default: this process's HED for `spec.engine`.
    """
    report = on_frames or (lambda n: None)
    engine = spec.engine
    detector = detector or cached_detector(engine.weights, engine.precision, engine.device)
    _check_hed_run(spec, detector.hed_run)
    threads = threads or available_cpus()
    size = (spec.info.frame_height, spec.info.frame_width)
    ahead = READ_AHEAD_PER_THREAD * threads + engine.batch_size
    priority = _run_in_background if detector.hed_run.device == "cpu" else None
    # The executors are inner, so on an error they finish before the writer removes its file; the
    # writer thread exits first, as its tasks wait for the preparing pool's.
    with ShardWriter(spec.path, len(spec.frames), spec.info, spec.compression) as shard, \
            ThreadPoolExecutor(threads, "hedprep-read", priority) as readers, \
            ThreadPoolExecutor(threads, "hedprep-prepare", priority) as preparers, \
            ThreadPoolExecutor(1, "hedprep-write") as writer:
        frames = _FrameQueue(shard, preparers, writer, report, IN_FLIGHT_PER_THREAD * threads)
        pending_reads = deque(readers.submit(_read_checked, f, size) for f in spec.frames[:ahead])
        batch: list[tuple[Frame, np.ndarray, np.ndarray | None]] = []
        for i, frame in enumerate(spec.frames):
            if i + ahead < len(spec.frames):
                pending_reads.append(readers.submit(_read_checked, spec.frames[i + ahead], size))
            try:
                rgb, label = pending_reads.popleft().result()
            except HedprepError as error:
                if spec.on_error != "skip":
                    raise
                shard.skip(_skipped(frame, error))
                report(1)
                continue
            batch.append((frame, rgb, label))
            if len(batch) == engine.batch_size:
                _detect_and_queue(detector, batch, frames)
                batch = []
        if batch:  # the last, partial batch
            _detect_and_queue(detector, batch, frames)
        frames.finish()
        return shard.close()


def _check_hed_run(spec: ShardSpec, hed_run: HedRun) -> None:
    """Edges made as the build's plan (and manifest) says, or none: a shard records what made it."""
    planned = HedRun(spec.info.device, spec.info.precision)
    if hed_run != planned:
        raise HedprepError(
            f"{Path(spec.path).name}: HED runs on {hed_run.device} in {hed_run.precision} here, but the build "
            f"was planned for {planned.device} in {planned.precision}: every worker must run the same "
            "(docs/scaling.md)"
        )


def _detect_and_queue(detector: EdgeSource, batch: Sequence[tuple[Frame, np.ndarray, np.ndarray | None]],
                      frames: _FrameQueue) -> None:
    """HED on a batch in this thread; each frame then goes to the preparing pool."""
    edges = detector.edges(np.stack([rgb for _, rgb, _ in batch]))
    for (frame, rgb, label), edge in zip(batch, edges, strict=True):
        frames.put(frame.frame_id, rgb, edge, label)


class _FrameQueue:
    """Frames prepared on a pool of threads and written, in the order they were put, by one thread.

    At most `in_flight` frames are prepared or waiting to be written; `put` waits beyond that.
    """

    def __init__(self, shard: ShardWriter, preparers: ThreadPoolExecutor, writer: ThreadPoolExecutor,
                 report: Callable[[int], None], in_flight: int) -> None:
        self.shard = shard
        self.preparers = preparers
        self.writer = writer
        self.report = report
        self.in_flight = in_flight
        self.writes: deque[Future] = deque()

    def put(self, frame_id: str, rgb: np.ndarray, edge: np.ndarray, label: np.ndarray | None) -> None:
        """Prepare this frame on the pool; the writer stores it after the frames put before it."""
        prepared = self.preparers.submit(_prepare, self.shard, frame_id, rgb, edge, label)
        # The writer has one thread, so its tasks run, and frames are stored, in submission order.
        self.writes.append(self.writer.submit(self._write, prepared))
        while len(self.writes) > self.in_flight:
            self.writes.popleft().result()

    def _write(self, prepared: Future[PreparedFrame]) -> None:
        self.shard.write(prepared.result())
        self.report(1)

    def finish(self) -> None:
        """Wait until every frame put is written (raising the first error)."""
        while self.writes:
            self.writes.popleft().result()


def _prepare(shard: ShardWriter, frame_id: str, rgb: np.ndarray, edge: np.ndarray,
             label: np.ndarray | None) -> PreparedFrame:
    """(H, W, 3) RGB and (H, W) edge -> the RGB+edge frame, prepared for the shard."""
    rgbe = np.empty(rgb.shape[:2] + (4,), np.uint8)
    rgbe[..., :3] = rgb
    rgbe[..., 3] = edge
    return shard.prepare(frame_id, rgbe, label)


def _skipped(frame: Frame, error: HedprepError) -> SkippedFrame:
    image = Path(frame.image).resolve()
    culprit = Path(error.path).resolve() if error.path is not None else image
    return SkippedFrame(frame.frame_id, str(image), str(error), str(culprit))


def first_frame_size(frames: Sequence[Frame], on_error: str = "fail") -> tuple[int, int]:
    """(height, width) of the first readable frame: every frame of a split must have that size."""
    for frame in frames:
        try:
            rgb, _ = read_frame(frame)
            return rgb.shape[:2]
        except HedprepError:
            if on_error != "skip":
                raise
    raise HedprepError(f"{Path(frames[0].image).parent.parent}: no readable frame in this split")

