"""The CPU side of a shard build alone: how many frames/s the cores of a GPU worker can read and write.

    python benchmarks/build_cpu_side.py                  # 16 frames of 1024x2048, 1 and 2 cores
    python benchmarks/build_cpu_side.py --frames 8 --cores 1 2 4 --repeats 5

On a GPU worker HED takes a few ms per frame, and what bounds the build is the CPU work around it:
decoding the PNGs and, per frame, the resolution levels, majority labels, label colours and ISA-L
deflate of every chunk. This runs `build_shard` as a task does, with HED replaced by a stand-in of
zero cost (an edge map computed once by HED and handed back for every frame), and the task's pools
(`threads`) sized to the cores it may use: with `--cores N` this process is pinned to N CPUs and the
pools have N threads each. The build is planned and run as on a GPU worker (the stand-in says it
runs on cuda, so the pools run at normal priority, as they do there); no GPU is used. It prints a
Markdown table for docs/performance.md: frames/s, CPU seconds per frame, the cores other processes
kept busy meanwhile (the machine may be shared: a busy one caps the speed-up), and each row's
speed-up over the first. A second table times `ShardWriter.prepare` alone on 1 and more threads at
once, with the time its threads spent asleep, which is waiting for the GIL (from the kernel's
per-thread counters, so it holds on a busy machine too). Takes about a minute on 2 cores.

Frames are `hedprep fixture` street scenes (Cityscapes layout), made once under --work.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hedprep.options import parse_size  # noqa: E402


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


def busy_cpu_seconds() -> float | None:
    """CPU seconds the whole machine has been busy (all processes, /proc/stat), None off Linux."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def timed_build(spec, cores: int, edges: PrecomputedEdges) -> tuple[float, float, float | None]:
    """(frames/s, CPU seconds per frame, cores other processes kept busy meanwhile) of one shard built
    on the first `cores` CPUs. The last says whether the machine was free: it is shared."""
    from hedprep.shard_builder import build_shard

    allowed = sorted(os.sched_getaffinity(0))
    # Set on this thread before the task's pools start: their threads inherit it.
    os.sched_setaffinity(0, allowed[:cores])
    try:
        busy, wall, cpu = busy_cpu_seconds(), time.perf_counter(), time.process_time()
        build_shard(spec, threads=cores, detector=edges)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        busy_after = busy_cpu_seconds()
    finally:
        os.sched_setaffinity(0, allowed)
    Path(spec.path).unlink()
    n = len(spec.frames)
    others = None if busy is None or busy_after is None else max(0.0, (busy_after - busy - cpu) / wall)
    return n / wall, cpu / n, others


def thread_schedstat() -> tuple[float, float]:
    """(CPU seconds, seconds waiting for a CPU while runnable) of this thread so far (Linux)."""
    stat = Path(f"/proc/self/task/{threading.get_native_id()}/schedstat").read_text()
    cpu, waiting, _ = (int(v) for v in stat.split())
    return cpu / 1e9, waiting / 1e9


def prepare_alone(spec, threads: int, rounds: int) -> tuple[float, float, float]:
    """`ShardWriter.prepare` alone (levels, colours, ISA-L chunks) on `threads` threads at once, each
    preparing `rounds` frames: (frames/s, CPU s per frame, s per frame asleep while preparing).

    A thread preparing a frame is running, waiting for a CPU (another process has it) or asleep:
    waiting for the GIL, as nothing else in `prepare` blocks. So the last figure is the GIL's share,
    and it does not depend on what else the machine runs."""
    from hedprep.cityscapes import read_frame
    from hedprep.shards import ShardWriter

    frames = []
    for frame in spec.frames[:4]:
        rgb, label = read_frame(frame)
        frames.append((frame.frame_id, np.concatenate([rgb, rgb[..., :1]], axis=-1), label))
    totals = [[0.0, 0.0, 0.0] for _ in range(threads)]  # per thread: wall, CPU, waiting for a CPU

    def work(i: int) -> None:
        for k in range(rounds):
            cpu, waiting = thread_schedstat()
            start = time.perf_counter()
            writer.prepare(*frames[(i + k) % len(frames)])
            wall = time.perf_counter() - start
            cpu_after, waiting_after = thread_schedstat()
            for j, value in enumerate((wall, cpu_after - cpu, waiting_after - waiting)):
                totals[i][j] += value

    with ShardWriter(spec.path, len(spec.frames), spec.info, spec.compression) as writer:
        pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
        start = time.perf_counter()
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
        elapsed = time.perf_counter() - start
        writer.abort()
    n = threads * rounds
    asleep = sum(wall - cpu - waiting for wall, cpu, waiting in totals)
    return n / elapsed, sum(t[1] for t in totals) / n, max(0.0, asleep) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=16, help="frames in the shard (default 16)")
    parser.add_argument("--size", default="1024x2048", help="frame size HxW (default 1024x2048)")
    parser.add_argument("--levels", type=int, default=3, help="resolution levels (default 3, the build's)")
    parser.add_argument("--cores", type=int, nargs="+", default=[1, 2], help="cores per run (default 1 2)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per row, interleaved; best kept (default 3)")
    parser.add_argument("--rounds", type=int, default=8, help="frames per thread for prepare alone (default 8)")
    parser.add_argument("--work", default="out/bench", help="folder for the frames (default out/bench)")
    args = parser.parse_args()
    if max(args.cores) > len(os.sched_getaffinity(0)):
        parser.error(f"--cores {max(args.cores)}: this process may use {len(os.sched_getaffinity(0))} CPUs")
    height, width = parse_size(args.size)
    work = Path(args.work).absolute() / f"cpu-side-{args.size}-{args.frames}"
    root = make_dataset(work / "cityscapes", args.frames, (height, width))
    edges = PrecomputedEdges(real_edge_map(root, work / "edge.npy"))
    spec = shard_spec(root, work / "out", args.levels)
    Path(spec.path).parent.mkdir(parents=True, exist_ok=True)
    timed_build(spec, max(args.cores), edges)  # warm-up: page cache, imports, allocator
    runs: dict[int, list[tuple[float, float, float | None]]] = {c: [] for c in args.cores}
    for _ in range(args.repeats):  # interleaved: the machine is shared and noisy
        for cores in args.cores:
            runs[cores].append(timed_build(spec, cores, edges))
    print(f"\n### CPU side of a build, HED replaced by a zero-cost stand-in ({args.size}, {args.frames} frames, "
          f"--levels {args.levels}, gzip:1 with ISA-L, best of {args.repeats})\n")
    print("| cores (= reader and preparing threads) | frames/s | CPU s per frame | other processes' load (cores) "
          "| speed-up |")
    print("|---|---|---|---|---|")
    first = max(runs[args.cores[0]])[0]
    for cores in args.cores:
        fps, cpu, others = max(runs[cores])  # the best run, with its own CPU time and the load beside it
        load = "?" if others is None else f"{others:.2f}"
        print(f"| {cores} | {fps:.2f} | {cpu:.3f} | {load} | **{fps / first:.2f}x** |")


    print(f"\n### `ShardWriter.prepare` alone, on 1 and more threads at once ({args.size}, --levels {args.levels})\n")
    print("| threads | frames/s | CPU s per frame | asleep (GIL) s per frame | speed-up |")
    print("|---|---|---|---|---|")
    alone = {cores: prepare_alone(spec, cores, args.rounds) for cores in args.cores}
    for cores, (fps, cpu, asleep) in alone.items():
        print(f"| {cores} | {fps:.2f} | {cpu:.3f} | {asleep:.3f} | **{fps / alone[args.cores[0]][0]:.2f}x** |")


if __name__ == "__main__":
    main()
