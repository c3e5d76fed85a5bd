"""The CPU side of a shard build alone: how many frames/s the cores of a GPU worker can read and write.

    python benchmarks/build_cpu_side.py                         # 16 frames of 1024x2048, 1 and 2 cores
    python benchmarks/build_cpu_side.py --frames 8 --cores 1 2 --repeats 2

On a GPU worker HED takes a few ms per frame, and what bounds the build is the CPU work around it:
decoding the PNGs and, per frame, the resolution levels, majority labels, label colours and ISA-L
deflate of every chunk. This runs `build_shard` as a task does, with HED replaced by a stand-in of
zero cost (an edge map computed once by HED and handed back for every frame), and the task's pools
(`threads`) sized to the cores it may use: with `--cores N` this process is pinned to N CPUs and the
pools have N threads each. The build is planned and run as on a GPU worker (the stand-in says it
runs on cuda, so the pools run at normal priority, as they do there); no GPU is used. It prints a
Markdown table for docs/performance.md: frames/s, CPU seconds per frame, and each row's speed-up
over the first.

Frames are `hedprep fixture` street scenes (Cityscapes layout), made once under --work.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class PrecomputedEdges:
    """A stand-in for HED at zero cost: the same uint8 edge map for every frame of the batch."""

    def __init__(self, edge: np.ndarray) -> None:
        from hedprep.hed import HedRun

        self.edge = edge
        self.hed_run = HedRun("cuda", "fp32")  # as on a GPU worker: the pools run at normal priority

    def edges(self, images: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.edge, images.shape[:3])


def make_dataset(root: Path, frames: int, size: tuple[int, int]) -> Path:
    from hedprep.fixture import make_fixture

    if len(list((root / "leftImg8bit" / "train").glob("*/*.png"))) != frames:
        make_fixture(root, {"train": frames, "val": 0, "test": 0}, size=size, seed=1)
    return root


def real_edge_map(root: Path, cache: Path) -> np.ndarray:
    """HED's uint8 edges of the first frame (fp32 on this CPU), computed once and kept in `cache`:
    compressing a real edge map costs what it costs in a build."""
    if cache.exists():
        return np.load(cache)
    from hedprep.cityscapes import list_frames, read_frame
    from hedprep.hed import cached_detector
    from hedprep.process_tuning import tune_process_for_hed

    tune_process_for_hed()
    rgb, _ = read_frame(list_frames(root, "train")[0])
    edge = cached_detector("bsds500", "fp32", "cpu").edges(rgb[None])[0]
    np.save(cache, edge)
    return edge


def shard_spec(root: Path, out: Path, levels: int):
    from hedprep.build_plan import BuildConfig, plan_build
    from hedprep.hed import HedRun

    frames = len(list((root / "leftImg8bit" / "train").glob("*/*.png")))
    config = BuildConfig(root=str(root), split="train", out=str(out), frames_per_shard=frames, device="cpu",
                         levels=levels)
    spec = plan_build(config, HedRun("cuda", "fp32")).specs[0]  # planned as for a GPU (no GPU is used)
    return spec


def timed_build(spec, cores: int, edges: PrecomputedEdges) -> tuple[float, float]:
    """(frames/s, CPU seconds per frame) of one shard built on the first `cores` CPUs."""
    from hedprep.shard_builder import build_shard

    allowed = sorted(os.sched_getaffinity(0))
    # Set on this thread before the task's pools start: their threads inherit it.
    os.sched_setaffinity(0, allowed[:cores])
    try:
        wall, cpu = time.perf_counter(), time.process_time()
        build_shard(spec, threads=cores, detector=edges)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        os.sched_setaffinity(0, allowed)
    Path(spec.path).unlink()
    n = len(spec.frames)
    return n / wall, cpu / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=16, help="frames in the shard (default 16)")
    parser.add_argument("--size", default="1024x2048", help="frame size HxW (default 1024x2048)")
    parser.add_argument("--levels", type=int, default=3, help="resolution levels (default 3, the build's)")
    parser.add_argument("--cores", type=int, nargs="+", default=[1, 2], help="cores per run (default 1 2)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per row, interleaved; best kept (default 3)")
    parser.add_argument("--work", default="out/bench", help="folder for the frames (default out/bench)")
    args = parser.parse_args()
    if max(args.cores) > len(os.sched_getaffinity(0)):
        parser.error(f"--cores {max(args.cores)}: this process may use {len(os.sched_getaffinity(0))} CPUs")
    height, width = (int(v) for v in args.size.lower().split("x"))
    work = Path(args.work).absolute() / f"cpu-side-{args.size}-{args.frames}"
    root = make_dataset(work / "cityscapes", args.frames, (height, width))
    edges = PrecomputedEdges(real_edge_map(root, work / "edge.npy"))
    spec = shard_spec(root, work / "out", args.levels)
    Path(spec.path).parent.mkdir(parents=True, exist_ok=True)
    timed_build(spec, max(args.cores), edges)  # warm-up: page cache, imports, allocator
    rates: dict[int, list[float]] = {c: [] for c in args.cores}
    cpu: dict[int, list[float]] = {c: [] for c in args.cores}
    for _ in range(args.repeats):  # interleaved: the machine is shared and noisy
        for cores in args.cores:
            fps, seconds = timed_build(spec, cores, edges)
            rates[cores].append(fps)
            cpu[cores].append(seconds)
    print(f"\n### CPU side of a build, HED replaced by a zero-cost stand-in ({args.size}, {args.frames} frames, "
          f"--levels {args.levels}, gzip:1 with ISA-L, best of {args.repeats})\n")
    print("| cores (= reader and preparing threads) | frames/s | CPU s per frame (median) | speed-up |")
    print("|---|---|---|---|")
    first = max(rates[args.cores[0]])
    for cores in args.cores:
        best = max(rates[cores])
        print(f"| {cores} | {best:.2f} | {statistics.median(cpu[cores]):.3f} | **{best / first:.2f}x** |")


if __name__ == "__main__":
    main()
