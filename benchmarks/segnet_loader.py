"""segnet's loader: samples/s at each stage size from shards (gzip, lz4) against Cityscapes PNGs.

    python benchmarks/segnet_loader.py                      # 8 frames of 1024x2048, about 2 minutes
    python benchmarks/segnet_loader.py --frames 4 --size 512x1024

One process, one thread of loading (a DataLoader worker's view), frames read in a shuffled order.
Paths compared, with the same resize -> flip -> normalise steps after the read:
- shards (gzip, the default) through `segnet.data.ShardDataset`, RGB (3 channels) and RGB+edge (4);
- shards rewritten with lz4 (the fastest-reading codec), RGB+edge;
- Cityscapes PNGs: decode image and labelIds (OpenCV), labelId -> trainId, then the same steps.
Also the time of each step of the shard path (read, resize, select, flip, normalise).
Prints Markdown tables (docs/performance.md).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hedprep.build_plan import BuildConfig  # noqa: E402
from hedprep.cityscapes import labelid_to_trainid, list_frames  # noqa: E402
from hedprep.fixture import make_fixture  # noqa: E402
from hedprep.options import parse_size  # noqa: E402
from hedprep.process_tuning import tune_process_for_hed  # noqa: E402
from hedprep.shards import Compression, ShardWriter, open_split, read_manifest, write_manifest  # noqa: E402
from pipelines.build import build_split  # noqa: E402
from segnet.config import DEFAULT_SCHEDULE, parse_schedule  # noqa: E402
from segnet.data import ShardDataset, flip, normalise, resize, select_channels  # noqa: E402


def rewrite(split_dir: Path, out_dir: Path, compression: Compression) -> None:
    """A copy of a built split with every shard rewritten under another codec (no HED run)."""
    out_dir.mkdir(parents=True)
    manifest = read_manifest(split_dir)
    reader = open_split(split_dir)
    from hedprep.shards import ShardInfo

    info = ShardInfo.from_params({**manifest.params, "compression": str(compression)})
    records, start = [], 0
    for shard in manifest.shards:
        with ShardWriter(out_dir / shard.file, len(shard.frame_ids), info, compression) as writer:
            for i in range(start, start + len(shard.frame_ids)):
                sample = reader[i]
                writer.append(sample.frame_id, sample.frame, sample.label)
            records.append(writer.close())
        start += len(shard.frame_ids)
    manifest.params["compression"] = str(compression)
    manifest.shards = records
    write_manifest(out_dir, manifest)


def rate(load, order, repeats: int) -> float:
    """Samples/s of `load(i)` over `order`, best of `repeats` passes (after one warm-up pass)."""
    for i in order:
        load(i)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for i in order:
            load(i)
        best = min(best, time.perf_counter() - start)
    return len(order) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", default="1024x2048", help="stored frame size HxW")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", default=None, help="folder for the dataset and shards (default: a temp folder)")
    args = parser.parse_args()
    tune_process_for_hed()
    work = Path(args.work or tempfile.mkdtemp(prefix="segnet-loader-"))
    h, w = parse_size(args.size)
    root, shards = work / "cityscapes", work / "shards"
    if not (shards / "train" / "manifest.json").exists():
        make_fixture(root, {"train": args.frames, "val": 0, "test": 0}, size=(h, w), seed=2)
        build_split(BuildConfig(root=str(root), split="train", out=str(shards), frames_per_shard=args.frames))
    lz4 = work / "shards-lz4"
    if not lz4.exists():
        rewrite(shards / "train", lz4 / "train", Compression("lz4", None))
    frames = list_frames(root, "train")
    order = list(np.random.default_rng(0).permutation(len(frames)))

    def png_path(size):
        def load(i):
            frame = frames[i]
            bgr = cv2.imread(str(frame.image), cv2.IMREAD_COLOR)
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            label = labelid_to_trainid(cv2.imread(str(frame.label), cv2.IMREAD_UNCHANGED))
            image, label = resize(rgb, label, size)
            image, label = flip(image, label)
            return normalise(image, label)
        return load

    print(f"{args.frames} frames of {h}x{w}, one loading thread, best of {args.repeats} passes\n")
    print("| stage size | shards gzip RGB | shards gzip RGB+edge | shards lz4 RGB+edge | PNG decode RGB "
          "| gzip RGB / PNG | lz4 RGB+edge / PNG |")
    print("|---|---|---|---|---|---|---|")
    for stage in parse_schedule(DEFAULT_SCHEDULE):
        size = stage.size
        gzip3 = ShardDataset(shards, "train", 3, size)
        gzip4 = ShardDataset(shards, "train", 4, size)
        lz44 = ShardDataset(lz4, "train", 4, size)
        r3 = rate(lambda i, d=gzip3: d[(i, True)], order, args.repeats)
        r4 = rate(lambda i, d=gzip4: d[(i, True)], order, args.repeats)
        rl = rate(lambda i, d=lz44: d[(i, True)], order, args.repeats)
        rp = rate(png_path(size), order, args.repeats)
        print(f"| {size[0]}x{size[1]} | {r3:.1f} | {r4:.1f} | {rl:.1f} | {rp:.1f} | {r3 / rp:.2f} | {rl / rp:.2f} |",
              flush=True)

    print("\nSteps of the shard path (gzip, RGB+edge), ms per sample, at each stage size:\n")
    print("| stage size | read | resize | select | flip | normalise |\n|---|---|---|---|---|---|")
    reader = open_split(shards, "train")
    for stage in parse_schedule(DEFAULT_SCHEDULE):
        totals = dict.fromkeys(("read", "resize", "select", "flip", "normalise"), 0.0)
        for _ in range(args.repeats):
            for i in order:
                t0 = time.perf_counter()
                sample = reader[i]
                t1 = time.perf_counter()
                image, label = resize(sample.frame, sample.label, stage.size)
                t2 = time.perf_counter()
                image = select_channels(image, 4)
                t3 = time.perf_counter()
                image, label = flip(image, label)
                t4 = time.perf_counter()
                normalise(image, label)
                t5 = time.perf_counter()
                for key, value in zip(totals, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True):
                    totals[key] += value
        n = args.repeats * len(order)
        print(f"| {stage.height}x{stage.width} | " + " | ".join(f"{1000 * v / n:.1f}" for v in totals.values()) + " |")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
