"""Shard build throughput, memory and size: does the rest of the pipeline hide behind HED?

    python benchmarks/build_throughput.py                    # everything (about 10 minutes on 2 cores)
    python benchmarks/build_throughput.py --only ratio --sizes 512x1024 --frames 8

Sections (each prints a Markdown table for docs/performance.md):
- ratio: `hedprep build` frames/s (local scheduler, in-process, model already loaded) divided by
  HED-alone frames/s (`EdgeDetector` on the same frames, already decoded), same size and precision.
  Both are steady-state: one warm-up frame first, then N frames timed.
- memory: peak RSS (VmHWM) of a fresh `hedprep build` process for 8 and for 64 frames.
- codecs: per compression filter, ms per frame to write a shard (`ShardWriter`, including the
  final file write and fsync) and to read a frame back (from the page cache), and bytes per frame
  against the source PNGs.
- chunks: one chunk per frame against 256x256 tiles: full-frame and 512x512-crop read times.

Frames are the synthetic street scenes of `hedprep fixture` (Cityscapes layout), at the chosen size.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hedprep.options import parse_size  # noqa: E402

CODECS = ("none", "gzip", "gzip:4", "lzf", "zstd", "lz4")


def make_dataset(root: Path, frames: int, size: tuple[int, int]) -> Path:
    from hedprep.fixture import make_fixture

    if not (root / "leftImg8bit" / "train").is_dir():
        make_fixture(root, {"train": frames, "val": 0, "test": 0}, size=size, seed=1)
    return root


def decoded_frames(root: Path, n: int) -> np.ndarray:
    from hedprep.cityscapes import list_frames, read_frame

    return np.stack([read_frame(f)[0] for f in list_frames(root, "train")[:n]])


# --------------------------------------------------------------------------------------------- ratio


def hed_alone_fps(images: np.ndarray, precision: str) -> float:
    from hedprep.hed import cached_detector

    detector = cached_detector("bsds500", precision, "auto")
    detector(images[:1])  # warm-up
    start = time.perf_counter()
    for image in images:
        detector(image[None])
    return len(images) / (time.perf_counter() - start)


def build_fps(root: Path, out: Path, frames: int, precision: str, frames_per_shard: int, levels: int = 3) -> float:
    from hedprep.build_plan import BuildConfig
    from pipelines.build import build_split

    def config(limit: int, target: Path) -> BuildConfig:
        return BuildConfig(root=str(root), split="train", out=str(target), precision=precision,
                           frames_per_shard=frames_per_shard, limit=limit, levels=levels)

    build_split(config(1, out / "warmup"))  # loads the model in this process, warms the kernels
    start = time.perf_counter()
    result = build_split(config(frames, out / "timed"))
    elapsed = time.perf_counter() - start
    assert result.frames == frames
    return frames / elapsed


def section_ratio(args, work: Path) -> None:
    print("\n### Build against HED alone (local scheduler, 1 task at a time, HED on both cores)\n")
    print("| size | precision | --levels | frames | HED alone (frames/s) | build (frames/s) | build / HED |")
    print("|---|---|---|---|---|---|---|")
    for size_text in args.sizes:
        size = parse_size(size_text, "--sizes")
        root = make_dataset(work / f"data-{size_text}", args.frames + 1, size)
        images = decoded_frames(root, args.frames)
        for precision in args.precisions:
            # Interleave, best of `repeats`: the machine is shared and noisy.
            hed, built = [], {levels: [] for levels in args.levels}
            for r in range(args.repeats):
                hed.append(hed_alone_fps(images, precision))
                for levels in args.levels:
                    out = work / f"out-{size_text}-{precision}-{levels}-{r}"
                    built[levels].append(build_fps(root, out, args.frames, precision, args.frames_per_shard, levels))
                    shutil.rmtree(out)
            h = max(hed)
            for levels, rates in built.items():
                b = max(rates)
                print(f"| {size_text} | {precision} | {levels} | {args.frames} | {h:.3f} | {b:.3f} | **{b / h:.3f}** |",
                      flush=True)


# -------------------------------------------------------------------------------------------- memory


MEMORY_SCRIPT = r"""
import sys
from hedprep.build_plan import BuildConfig
from pipelines.build import build_split
root, out, limit, fps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
build_split(BuildConfig(root=root, split="train", out=out, limit=limit, frames_per_shard=fps))
status = open("/proc/self/status").read()
print(int(next(l for l in status.splitlines() if l.startswith("VmHWM")).split()[1]) // 1024)
"""


def section_memory(args, work: Path) -> None:
    size_text = args.memory_size
    root = make_dataset(work / f"data-mem-{size_text}", 64, parse_size(size_text, "--memory-size"))
    print(f"\n### Peak RSS of a build process ({size_text}, --frames-per-shard {args.frames_per_shard})\n")
    print(f"Each row: {args.repeats} fresh processes, interleaved; peak RSS of each, and the mean wall time.\n")
    print("| frames | shards | peak RSS per run (MiB) | wall time (s) |")
    print("|---|---|---|---|")
    peaks: dict[int, list[int]] = {8: [], 64: []}
    times: dict[int, list[float]] = {8: [], 64: []}
    for _ in range(args.repeats):
        for frames in peaks:
            out = work / f"out-mem-{frames}"
            start = time.perf_counter()
            result = subprocess.run(
                [sys.executable, "-c", MEMORY_SCRIPT, str(root), str(out), str(frames), str(args.frames_per_shard)],
                capture_output=True, text=True, cwd=ROOT, check=True,
            )
            times[frames].append(time.perf_counter() - start)
            peaks[frames].append(int(result.stdout.split()[-1]))
            shutil.rmtree(out)
    for frames, values in peaks.items():
        shards = -(-frames // args.frames_per_shard)
        runs = ", ".join(str(v) for v in values)
        print(f"| {frames} | {shards} | {runs} | {statistics.mean(times[frames]):.0f} |", flush=True)


# -------------------------------------------------------------------------------------------- codecs


def rgbe_frames(root: Path, n: int) -> tuple[np.ndarray, np.ndarray, list[Path]]:
    """n frames of real RGB + real HED edges, their trainIds, and their source PNGs."""
    from hedprep.cityscapes import list_frames, read_frame
    from hedprep.hed import cached_detector, edges_to_uint8

    frames = list_frames(root, "train")[:n]
    detector = cached_detector("bsds500", "fp32", "auto")
    rgbe, labels = [], []
    for frame in frames:
        rgb, label = read_frame(frame)
        edge = edges_to_uint8(detector(rgb[None]))[0]
        rgbe.append(np.dstack([rgb, edge]))
        labels.append(label)
    return np.stack(rgbe), np.stack(labels), [f.image for f in frames] + [f.label for f in frames]


def section_codecs(args, work: Path) -> None:
    import h5py

    from hedprep.options import parse_compression
    from hedprep.shards import ShardInfo, ShardWriter

    size_text = args.codec_size
    h, w = parse_size(size_text, "--codec-size")
    n = args.codec_frames
    root = make_dataset(work / f"data-{size_text}", n, (h, w))
    rgbe, labels, sources = rgbe_frames(root, n)
    images = sources[:n]
    png_image = statistics.mean(p.stat().st_size for p in images)
    png_both = png_image + statistics.mean(p.stat().st_size for p in sources[n:])
    print(f"\n### Codecs ({size_text}, {n} frames of RGB+edge and labels per shard)\n")
    print(f"Source PNGs per frame: image {png_image / 1e6:.2f} MB, image + labelIds {png_both / 1e6:.2f} MB.\n")
    print("| codec | write (ms/frame) | read (ms/frame) | MB/frame | vs image PNG | vs image+label PNGs |")
    print("|---|---|---|---|---|---|")
    for codec in CODECS:
        compression = parse_compression(codec)
        info = ShardInfo("train", str(root), "bsds500", "0" * 64, "fp32", str(compression), h, w)
        path = work / f"codec-{codec.replace(':', '-')}.h5"
        best_write = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            with ShardWriter(path, n, info, compression) as writer:
                for i in range(n):
                    writer.append(f"aachen_{i:06d}_000019", rgbe[i], labels[i])
                record = writer.close()
            best_write = min(best_write, time.perf_counter() - start)
        best_read = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            with h5py.File(path, "r") as f:
                for i in range(n):
                    f["frames"][i], f["labels"][i]
            best_read = min(best_read, time.perf_counter() - start)
        per_frame = record.bytes / n
        print(f"| {codec} | {best_write / n * 1000:.0f} | {best_read / n * 1000:.1f} | {per_frame / 1e6:.2f} | "
              f"{per_frame / png_image:.2f}x | {per_frame / png_both:.2f}x |", flush=True)
        path.unlink()

    print(f"\n### Chunking ({size_text}, gzip level 1): one chunk per frame against 256x256 tiles\n")
    print("| chunks | write (ms/frame) | read frame (ms) | read 512x512 crop (ms) | MB/frame |")
    print("|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    crops = [(int(rng.integers(0, h - 512 + 1)), int(rng.integers(0, w - 512 + 1))) for _ in range(n)]
    for name, chunks in (("frame", (1, h, w, 4)), ("256x256 tile", (1, 256, 256, 4))):
        path = work / "chunks.h5"
        start = time.perf_counter()
        with h5py.File(path, "w") as f:
            d = f.create_dataset("frames", shape=rgbe.shape, dtype=np.uint8, chunks=chunks,
                                 compression="gzip", compression_opts=1)
            for i in range(n):
                d[i] = rgbe[i]
        write = (time.perf_counter() - start) / n
        with h5py.File(path, "r") as f:
            start = time.perf_counter()
            for i in range(n):
                f["frames"][i]
            full = (time.perf_counter() - start) / n
            start = time.perf_counter()
            for i, (y, x) in enumerate(crops):
                f["frames"][i, y : y + 512, x : x + 512]
            crop = (time.perf_counter() - start) / n
        size = path.stat().st_size / n
        print(f"| {name} | {write * 1000:.0f} | {full * 1000:.1f} | {crop * 1000:.1f} | {size / 1e6:.2f} |")
        path.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("ratio", "memory", "codecs"), action="append",
                        help="run only these sections (repeatable); default: all")
    parser.add_argument("--sizes", nargs="+", default=["512x1024", "1024x2048"], help="frame sizes for the ratio")
    parser.add_argument("--precisions", nargs="+", default=["fp32"], choices=("fp32", "bf16"))
    parser.add_argument("--levels", nargs="+", type=int, default=[0, 3], help="--levels of the builds compared")
    parser.add_argument("--frames", type=int, default=8, help="timed frames per ratio run")
    parser.add_argument("--frames-per-shard", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2, help="interleaved repeats; the best is reported")
    parser.add_argument("--memory-size", default="512x1024")
    parser.add_argument("--codec-size", default="1024x2048")
    parser.add_argument("--codec-frames", type=int, default=4)
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args()
    sections = args.only or ["ratio", "memory", "codecs"]

    import torch

    from hedprep.process_tuning import tune_process_for_hed

    tuning = tune_process_for_hed()  # as the build does, so that HED alone runs as it runs in a build
    print(f"torch {torch.__version__}, {tuning.threads} CPUs, python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory(prefix="hedseg-bench-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if "ratio" in sections:
            section_ratio(args, work)
        if "memory" in sections:
            section_memory(args, work)
        if "codecs" in sections:
            section_codecs(args, work)


if __name__ == "__main__":
    main()
