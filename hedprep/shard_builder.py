"""Build one shard from Cityscapes frames: decode, HED, compress and write, overlapped.

This is the work of one task of the build graph (`pipelines/build.py`). It runs where the task runs:
in the client process with Dask's local scheduler, or in a dask.distributed worker. The HED model is
loaded on first use in each process and kept (`hedprep.hed.cached_detector`), never sent through the graph.

Within a task three stages overlap: a reader thread decodes the next frames (OpenCV releases the
GIL), the calling thread runs HED, and a writer thread compresses and writes the previous frame.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hedprep.cityscapes import Frame, read_frame
from hedprep.errors import HedprepError
from hedprep.hed import EdgeDetector, cached_detector, edges_to_uint8
from hedprep.shards import Compression, ShardInfo, ShardRecord, ShardWriter, SkippedFrame

READ_AHEAD = 2  # frames decoded ahead of HED; bounds memory to a few frames per task


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
    """Lower this (reader or writer) thread's CPU priority (Linux: per-thread nice 19).

    Meant to let decoding and compressing fill HED's idle moments rather than compete with it; on
    2 cores it made no measurable difference (docs/performance.md), and it cannot slow HED down.
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


def build_shard(spec: ShardSpec, on_frames: Callable[[int], None] | None = None) -> ShardRecord:
    """Build one shard: read, HED, write, rename into place. Returns its manifest record.

    Runs with the process's torch threads and allocator as they are: the build's runners
    (`pipelines.build`) set them with `tune_process_for_hed`.

    Args:
        spec: the shard to build.
        on_frames: called with a count as frames are written or skipped, for progress bars.
    """
    report = on_frames or (lambda n: None)
    engine = spec.engine
    detector = cached_detector(engine.weights, engine.precision, engine.device)
    size = (spec.info.frame_height, spec.info.frame_width)
    # The executors are inner, so on an error they finish before the writer removes its file.
    with ShardWriter(spec.path, len(spec.frames), spec.info, spec.compression) as shard, \
            ThreadPoolExecutor(1, "hedprep-read", _run_in_background) as reader, \
            ThreadPoolExecutor(1, "hedprep-write", _run_in_background) as writer:
        pending_reads = [reader.submit(_read_checked, f, size) for f in spec.frames[:READ_AHEAD]]
        pending_write: Future | None = None
        batch: list[tuple[Frame, np.ndarray, np.ndarray | None]] = []

        def flush() -> None:
            """HED on the batch, then hand it to the writer once the previous write is done."""
            nonlocal pending_write, batch
            rgbe = _attach_edges(detector, [rgb for _, rgb, _ in batch])
            if pending_write is not None:
                pending_write.result()
            pending_write = writer.submit(_write_batch, shard, batch, rgbe, report)
            batch = []

        for i, frame in enumerate(spec.frames):
            if i + READ_AHEAD < len(spec.frames):
                pending_reads.append(reader.submit(_read_checked, spec.frames[i + READ_AHEAD], size))
            try:
                rgb, label = pending_reads.pop(0).result()
            except HedprepError as error:
                if spec.on_error != "skip":
                    raise
                shard.skip(_skipped(frame, error))
                report(1)
                continue
            batch.append((frame, rgb, label))
            if len(batch) == engine.batch_size:
                flush()
        if batch:  # the last, partial batch
            flush()
        if pending_write is not None:
            pending_write.result()
        return shard.close()


def _skipped(frame: Frame, error: HedprepError) -> SkippedFrame:
    image = Path(frame.image).resolve()
    culprit = Path(error.path).resolve() if error.path is not None else image
    return SkippedFrame(frame.frame_id, str(image), str(error), str(culprit))


def _attach_edges(detector: EdgeDetector, images: Sequence[np.ndarray]) -> np.ndarray:
    """(N, H, W, 3) RGB -> (N, H, W, 4) RGB+edge, edge = round(255 * p)."""
    rgb = np.stack(images)
    edges = edges_to_uint8(detector(rgb))
    rgbe = np.empty(rgb.shape[:3] + (4,), np.uint8)
    rgbe[..., :3] = rgb
    rgbe[..., 3] = edges
    return rgbe


def _write_batch(shard: ShardWriter, batch, rgbe: np.ndarray, report: Callable[[int], None]) -> None:
    for (frame, _, label), frame_rgbe in zip(batch, rgbe, strict=True):
        shard.append(frame.frame_id, frame_rgbe, label)
        report(1)


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

