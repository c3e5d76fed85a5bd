"""segnet's loader per core: samples/s at each stage size, read from resolution levels against the
loader before them and against Cityscapes PNGs.

    python benchmarks/segnet_loader.py --work /tmp/hedseg-bench   # 8 frames of 1024x2048: 30 s (+1 min to build once)
    python benchmarks/segnet_loader.py --work /tmp/hedseg-bench --repeats 10 --no-lz4
    python benchmarks/segnet_loader.py --work /tmp/hedseg-bench --only augment --no-lz4

One process, one thread (cv2 and torch: a DataLoader worker's view), `(index, flip)` items in a
shuffled order with random flips, one warm-up pass, then the best of `--repeats` passes. Paths:
- level path: `segnet.data.ShardDataset` on shards with levels 1..3 (`hedprep build --levels 3`, gzip),
  RGB+edge (4 channels, dlse-hed) and RGB (3); with `--lz4` (default) also the same shards under lz4.
  It ends with uint8 tensors: normalising is done per batch on the device (`segnet.data.normalise`);
- full res: the same `ShardDataset` on shards without levels (`--levels 0`, or format v1): the full
  1024x2048 frame is decompressed (by the same ISA-L reader), then resized;
- before (today's path when the issue was filed, commit 4cbd5a2, reproduced here step by step): h5py
  reads the full frame and labels, OpenCV resizes them (bilinear; nearest), then select, flip, and a
  float32 normalise per sample on the loader's core;
- Cityscapes PNGs: OpenCV decodes the image and its labelIds, labelId -> trainId, then the level
  path's resize (`hedprep.shards.resize_frame`, `resize_labels`), select, flip and uint8 tensors (RGB
  only: a PNG has no edge channel).
Goals: at 128x224 the level path >= 20x today's path and >= 30x PNG; at 512x912 >= 3x PNG (gzip).
Augmented crops (`--only augment`): mmsegmentation's Cityscapes pipeline (random scale 0.5-2.0 of the
frame, a 512x1024 crop with cat_max_ratio 0.75, flip, photometric distortion, padding) per core, from
the levels=3 shards through `ShardDataset(augment=...)` (only the crop's region of a level is read and
resized), against the same shards read whole at full size, resized to the random scale and then
cropped, and against Cityscapes PNGs decoded, resized and cropped so (mmsegmentation's way; RGB only).
Also: where the level path's time goes (read, select, flip, to tensors; and what normalising a batch
on a CPU costs per sample), what the levels cost on disk (stored bytes per level from HDF5, file sizes
of levels=3 against levels=0), and the cost of the AVX register state ISA-L leaves behind.

The shards are built once under `--work` (HED on the levels=0 build; the levels=3 build is a copy
rewritten by `hedprep build --levels 3`, no HED) in a separate process, so the measuring process
keeps default settings (the build tunes its process for HED). Prints Markdown tables
(docs/performance.md). `prepare_data` serves benchmarks/loader_workers.py too.
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hedprep.cityscapes import labelid_to_trainid, list_frames  # noqa: E402
from hedprep.options import parse_size  # noqa: E402
from hedprep.shards import (  # noqa: E402
    MANIFEST_NAME,
    Compression,
    ShardInfo,
    ShardWriter,
    SplitReader,
    choose_level,
    level_dataset,
    level_size,
    open_shard,
    open_split,
    read_manifest,
    resize_frame,
    resize_labels,
    write_manifest,
)
from segnet.augment import (  # noqa: E402
    Augmentation,
    choose_crop,
    draw_photometric,
    draw_scale,
    pad_to,
    photometric_distortion,
    resize_image,
    scaled_size,
)
from segnet.config import DEFAULT_SCHEDULE, parse_schedule  # noqa: E402
from segnet.data import EpochSampler, ShardDataset, flip, normalise, select_channels, to_tensors  # noqa: E402

SPLIT = "train"
LEVELS = 3
STAGE_SIZES = [stage.size for stage in parse_schedule(DEFAULT_SCHEDULE)]
GOALS = {  # stage size -> (level / today, level / PNG) at least; None: no goal
    (128, 224): (20.0, 30.0),
    (512, 912): (None, 3.0),
}

Item = tuple[int, bool]  # (frame index, flip)


# ----------------------------------------------------------------------------------------- the data


@dataclass(frozen=True)
class BenchData:
    """The dataset and its shard builds under one work folder (each an `OUT` folder holding `train/`)."""

    root: Path  # the Cityscapes-layout fixture
    today: Path  # levels=0, gzip: today's path
    level: Path  # levels=3, gzip: the level path
    level_lz4: Path  # levels=3, lz4

    @classmethod
    def under(cls, work: Path, frames: int, size: tuple[int, int]) -> BenchData:
        base = Path(work) / f"{SPLIT}{frames}-{size[0]}x{size[1]}"
        return cls(base / "cityscapes", base / "shards-levels0", base / f"shards-levels{LEVELS}",
                   base / f"shards-levels{LEVELS}-lz4")


def built(out: Path) -> bool:
    """True if `out` holds a complete build of the split."""
    return (out / SPLIT / MANIFEST_NAME).is_file() and read_manifest(out / SPLIT).complete


def prepare_data(work: Path, frames: int, size: tuple[int, int], lz4: bool) -> BenchData:
    """The fixture and its shard builds under `work`, made by a child process if any is missing."""
    data = BenchData.under(work, frames, size)
    if not (built(data.today) and built(data.level) and (built(data.level_lz4) or not lz4)):
        # A separate process: the build tunes its process for HED (torch threads, glibc's allocator),
        # which would change what this one measures.
        child = multiprocessing.get_context("spawn").Process(target=build_data, args=(data, frames, size, lz4))
        child.start()
        child.join()
        if child.exitcode != 0:
            raise SystemExit(f"building the benchmark's shards under {work} failed (exit status {child.exitcode})")
    return data


def build_data(data: BenchData, frames: int, size: tuple[int, int], lz4: bool) -> None:
    """Make the fixture, build it with HED once (levels=0), then the levels=3 copy and its lz4 rewrite."""
    from hedprep.build_plan import BuildConfig
    from hedprep.fixture import make_fixture
    from pipelines.build import build_split

    def build(out: Path, levels: int) -> None:
        build_split(BuildConfig(root=str(data.root), split=SPLIT, out=str(out), frames_per_shard=frames,
                                levels=levels))

    if not built(data.today):
        if not (data.root / "leftImg8bit" / SPLIT).is_dir():
            make_fixture(data.root, {SPLIT: frames, "val": 0, "test": 0}, size=size, seed=2)
        print(f"building {frames} frames of {size[0]}x{size[1]} with HED (once) in {data.today}", file=sys.stderr)
        build(data.today, 0)
    if not built(data.level):
        # A copy of today's shards, rebuilt with levels: the build keeps the frames and only adds levels.
        shutil.rmtree(data.level, ignore_errors=True)
        shutil.copytree(data.today / SPLIT, data.level / SPLIT)
        build(data.level, LEVELS)
    if lz4 and not built(data.level_lz4):
        shutil.rmtree(data.level_lz4, ignore_errors=True)
        rewrite(data.level / SPLIT, data.level_lz4 / SPLIT, Compression("lz4", None))


def rewrite(split_dir: Path, out_dir: Path, compression: Compression) -> None:
    """A copy of a built split with every shard rewritten under another codec (same frames, same levels)."""
    out_dir.mkdir(parents=True)
    manifest = read_manifest(split_dir)
    manifest.params["compression"] = str(compression)
    info = ShardInfo.from_params(manifest.params)
    reader = open_split(split_dir)
    records, start = [], 0
    for shard in manifest.shards:
        with ShardWriter(out_dir / shard.file, len(shard.frame_ids), info, compression) as writer:
            for i in range(start, start + len(shard.frame_ids)):
                sample = reader[i]
                writer.append(sample.frame_id, sample.frame, sample.label)
            records.append(writer.close())
        start += len(shard.frame_ids)
    manifest.shards = records
    write_manifest(out_dir, manifest)


def one_thread() -> None:
    """Measure per core: OpenCV and torch on one thread each."""
    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def shuffled_items(count: int, seed: int = 0) -> list[Item]:
    """Every index once, shuffled, each flipped with probability 1/2 (as the training sampler does)."""
    rng = np.random.default_rng(seed)
    return [(int(i), bool(f)) for i, f in zip(rng.permutation(count), rng.random(count) < 0.5, strict=True)]


# ------------------------------------------------------------------------------------------ the paths


def rate(load: Callable[[Item], object], items: list[Item], repeats: int,
         reset: Callable[[], None] | None = None) -> float:
    """Samples/s of `load(item)` over `items`: one warm-up pass, then the best of `repeats` passes,
    each after an untimed `reset()`."""
    for item in items:
        load(item)
    best = float("inf")
    for _ in range(repeats):
        if reset is not None:
            reset()
        start = time.perf_counter()
        for item in items:
            load(item)
        best = min(best, time.perf_counter() - start)
    return len(items) / best


def close_between_passes(reader: SplitReader) -> Callable[[], None]:
    """A `reset` that closes the reader's files between passes.

    `SplitReader` opens shards without HDF5's cache of decompressed chunks (a random-order epoch would
    not reuse it), so every pass decompresses every chunk it reads; closing the files between passes
    keeps it that way should that ever change.
    """
    def reset() -> None:
        reader.close()

    return reset


def before_loader(out: Path, channels: int, size: tuple[int, int]) -> Callable[[Item], object]:
    """The loader of commit 4cbd5a2: h5py reads the full frame, bilinear/nearest resize, float normalise."""
    import h5py

    manifest = read_manifest(out / SPLIT)
    index = [(shard.file, i) for shard in manifest.shards for i in range(len(shard.frame_ids))]
    files: dict[str, h5py.File] = {}
    scale = np.array([1 / (255 * s) for s in (0.229, 0.224, 0.225)] + [1 / 255], np.float32)
    offset = np.array([-m / s for m, s in zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), strict=True)] + [0.0],
                      np.float32)
    h, w = size

    def load(item: Item):
        frame_index, mirrored = item
        file, local = index[frame_index]
        f = files.get(file) or files.setdefault(file, h5py.File(out / SPLIT / file, "r"))
        frame, label = f["frames"][local], f["labels"][local]
        image = cv2.resize(np.ascontiguousarray(frame), (w, h), interpolation=cv2.INTER_LINEAR)
        label = cv2.resize(np.ascontiguousarray(label), (w, h), interpolation=cv2.INTER_NEAREST)
        image = image[..., :channels]
        if mirrored:
            image, label = image[:, ::-1], label[:, ::-1]
        values = image.astype(np.float32) * scale[:channels] + offset[:channels]
        return (torch.from_numpy(np.ascontiguousarray(values.transpose(2, 0, 1))),
                torch.from_numpy(label.astype(np.int64)))

    return load


def png_loader(root: Path, size: tuple[int, int]) -> Callable[[Item], object]:
    """Cityscapes PNGs -> the loader's output at `size`: decode, labelId -> trainId, resize, flip, uint8 tensors."""
    frames = list_frames(root, SPLIT)

    def load(item: Item):
        index, mirrored = item
        frame = frames[index]
        rgb = cv2.cvtColor(cv2.imread(str(frame.image), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        label = labelid_to_trainid(cv2.imread(str(frame.label), cv2.IMREAD_UNCHANGED))
        image, label = select_channels(resize_frame(rgb, size), 3), resize_labels(label, size)
        if mirrored:
            image, label = flip(image, label)
        return to_tensors(image, label)

    return load


@dataclass
class StageRates:
    """Samples/s per core of each path at one stage size."""

    level4: float
    level3: float
    full4: float
    full3: float
    before4: float
    before3: float
    png3: float
    lz4_4: float | None


def measure_stage(data: BenchData, size: tuple[int, int], items: list[Item], repeats: int, lz4: bool) -> StageRates:
    def shards(out: Path, channels: int) -> float:
        dataset = ShardDataset(out, SPLIT, channels, size)
        with dataset.reader:
            return rate(dataset.__getitem__, items, repeats, close_between_passes(dataset.reader))

    return StageRates(
        level4=shards(data.level, 4), level3=shards(data.level, 3),
        full4=shards(data.today, 4), full3=shards(data.today, 3),
        before4=rate(before_loader(data.today, 4, size), items, repeats),
        before3=rate(before_loader(data.today, 3, size), items, repeats),
        png3=rate(png_loader(data.root, size), items, repeats),
        lz4_4=shards(data.level_lz4, 4) if lz4 else None,
    )


def print_rates(rates: dict[tuple[int, int], StageRates], frames: int, frame_size: tuple[int, int],
                repeats: int) -> None:
    lz4 = any(r.lz4_4 is not None for r in rates.values())
    print(f"\n### Loader samples/s per core ({frames} frames of {frame_size[0]}x{frame_size[1]}, one thread, "
          f"best of {repeats} passes)\n")
    print("level = ShardDataset on levels=3 shards; full res = the same on levels=0 shards; before = the loader "
          "of commit 4cbd5a2 (today's path when the issue was filed) on levels=0 shards; PNG = Cityscapes PNG "
          "decode (RGB only). +e = RGB+edge (4 channels), RGB = 3 channels; gzip unless marked.\n")
    head = ["stage size", "level +e", "level RGB"] + (["level lz4 +e"] if lz4 else []) + [
        "full res +e", "before +e", "before RGB", "PNG RGB", "level/before +e", "level/before RGB",
        "level/PNG RGB", "level +e / PNG RGB"] + (["lz4 +e / PNG RGB"] if lz4 else [])
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for (h, w), r in rates.items():
        cells = [f"{h}x{w}", f"{r.level4:.1f}", f"{r.level3:.1f}"] + ([f"{r.lz4_4:.1f}"] if lz4 else []) + [
            f"{r.full4:.1f}", f"{r.before4:.1f}", f"{r.before3:.1f}", f"{r.png3:.1f}",
            f"{r.level4 / r.before4:.1f}x", f"{r.level3 / r.before3:.1f}x", f"{r.level3 / r.png3:.1f}x",
            f"{r.level4 / r.png3:.1f}x",
        ] + ([f"{r.lz4_4 / r.png3:.1f}x"] if lz4 else [])
        print("| " + " | ".join(cells) + " |")
    print("\nGoals (gzip level path):\n")
    for size, (vs_today, vs_png) in GOALS.items():
        r = rates.get(size)
        if r is None:
            continue
        for name, goal, ratio4, ratio3 in (("today's path", vs_today, r.level4 / r.before4, r.level3 / r.before3),
                                           ("PNG", vs_png, r.level4 / r.png3, r.level3 / r.png3)):
            if goal is None:
                continue
            verdict = "met" if min(ratio3, ratio4) >= goal else ("met for RGB only" if ratio3 >= goal else
                                                                 "met for RGB+edge only" if ratio4 >= goal else
                                                                 "NOT met")
            print(f"- {size[0]}x{size[1]}: level path vs {name}: {ratio4:.1f}x (RGB+edge), {ratio3:.1f}x (RGB); "
                  f"goal >= {goal:g}x: {verdict}")


# ------------------------------------------------------------------------------------ where time goes


STEPS = ("read", "of it decode", "select", "flip", "to tensors", "normalise batch")


def step_times(dataset: ShardDataset, items: list[Item], repeats: int) -> dict[str, float]:
    """Mean ms per sample of each step of `dataset[item]`, over `repeats` passes after a warm-up pass,
    and of normalising the samples on this CPU in batches of 4 (the device's work in training).

    "of it decode" is the part of the read that decodes the chosen level, timed in passes of their
    own: a read at that level's own size, where no resize is left to do; the rest of "read" is the
    resize.
    """
    reader, size, channels = dataset.reader, dataset.size, dataset.channels
    stored = level_size(*reader.frame_size, choose_level(*reader.frame_size, reader.levels, size))
    reset = close_between_passes(reader)
    totals = dict.fromkeys(STEPS, 0.0)
    batch: list[torch.Tensor] = []
    for rep in range(repeats + 1):
        reset()
        for index, mirrored in items:
            t0 = time.perf_counter()
            sample = reader.read(index, size)
            t1 = time.perf_counter()
            image = select_channels(sample.frame, channels)
            label = sample.label
            t2 = time.perf_counter()
            if mirrored:
                image, label = flip(image, label)
            t3 = time.perf_counter()
            example = to_tensors(image, label)
            t4 = time.perf_counter()
            batch.append(example.image)
            if len(batch) == 4:
                normalise(torch.stack(batch))
                batch.clear()
            t5 = time.perf_counter()
            if rep:
                for key, value in zip(("read", "select", "flip", "to tensors", "normalise batch"),
                                      (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True):
                    totals[key] += value
        reset()
        for index, _ in items:
            t0 = time.perf_counter()
            reader.read(index, stored)
            if rep:
                totals["of it decode"] += time.perf_counter() - t0
    return {key: 1000 * value / (repeats * len(items)) for key, value in totals.items()}


def print_steps(data: BenchData, items: list[Item], repeats: int) -> None:
    print(f"\n### Steps of the level path (levels=3, gzip), ms per sample, mean of {repeats} passes "
          "(every chunk decompressed)\n")
    print("read = `SplitReader.read(index, size)`: decode the smallest level at least the stage size, then "
          "resize it (area; labels nearest); \"of it decode\" = the same read at the level's own size. "
          "sum = the loader's work (read, select, flip, to tensors); normalise batch = the device's work "
          "per sample, here on this CPU's one thread (stacking included).\n")
    print("| stage size | channels | level read | read | of it decode | select | flip | to tensors | normalise batch "
          "| sum | samples/s from sum |\n|---|---|---|---|---|---|---|---|---|---|---|")
    for size in STAGE_SIZES:
        for channels in (4, 3):
            dataset = ShardDataset(data.level, SPLIT, channels, size)
            with dataset.reader as reader:
                ms = step_times(dataset, items, repeats)
            level = choose_level(*reader.frame_size, reader.levels, size)
            lh, lw = level_size(*reader.frame_size, level)
            total = ms["read"] + ms["select"] + ms["flip"] + ms["to tensors"]
            print(f"| {size[0]}x{size[1]} | {channels} | {level} ({lh}x{lw}) | "
                  + " | ".join(f"{ms[key]:.2f}" for key in STEPS) + f" | {total:.2f} | {1000 / total:.0f} |")


# ------------------------------------------------------------------------------------------- storage


def stored_bytes(split_dir: Path) -> dict[int, tuple[int, int]]:
    """Level -> (frames, labels) bytes stored in the split's shards (compressed chunks, from HDF5)."""
    manifest = read_manifest(split_dir)
    out: dict[int, tuple[int, int]] = {}
    for shard in manifest.shards:
        with open_shard(split_dir / shard.file) as f:
            for level in range(shard.levels + 1):
                frames = f[level_dataset(level, "frames")].id.get_storage_size()
                labels = f[level_dataset(level, "labels")].id.get_storage_size()
                before = out.get(level, (0, 0))
                out[level] = (before[0] + frames, before[1] + labels)
    return out


def file_bytes(split_dir: Path) -> int:
    return sum((split_dir / shard.file).stat().st_size for shard in read_manifest(split_dir).shards)


def print_storage(data: BenchData, frame_size: tuple[int, int], lz4: bool) -> None:
    expected = sum(4.0**-k for k in range(1, LEVELS + 1))
    print("\n### Storage of the levels (HDF5 stored bytes of each dataset, all shards)\n")
    print("| codec | level | size | frames MB | labels MB | total MB | % of level 0 | pixels, % of level 0 |")
    print("|---|---|---|---|---|---|---|---|")
    builds = [("gzip", data.level)] + ([("lz4", data.level_lz4)] if lz4 else [])
    shares = {}
    for codec, out in builds:
        by_level = stored_bytes(out / SPLIT)
        base = sum(by_level[0])
        for level, (frames, labels) in sorted(by_level.items()):
            h, w = level_size(*frame_size, level)
            print(f"| {codec} | {level} | {h}x{w} | {frames / 1e6:.2f} | {labels / 1e6:.2f} | "
                  f"{(frames + labels) / 1e6:.2f} | {100 * (frames + labels) / base:.1f} | {100 * 4.0**-level:.1f} |")
        shares[codec] = sum(sum(by_level[k]) for k in by_level if k) / base
    print()
    for codec, share in shares.items():
        print(f"- {codec}: levels 1-{LEVELS} store {100 * share:.1f}% of level 0's bytes "
              f"(pixel count: {100 * expected:.1f}%)")
    today, level = file_bytes(data.today / SPLIT), file_bytes(data.level / SPLIT)
    print(f"- gzip file sizes: levels=0 {today / 1e6:.2f} MB, levels={LEVELS} {level / 1e6:.2f} MB: "
          f"+{100 * (level / today - 1):.1f}% (pixel count: +{100 * expected:.1f}%)")


def print_vector_state(repeats: int) -> None:
    """OpenCV's area resize after an ISA-L call, with and without `clean_vector_state` between them."""
    import zlib

    from isal import isal_zlib

    from hedprep.shards.compression import clean_vector_state

    frame = np.random.default_rng(0).integers(0, 256, (512, 1024, 4), dtype=np.uint8)
    stream = zlib.compress(frame.tobytes(), 1)

    def resize_ms(after) -> float:
        best = float("inf")
        for _ in range(repeats):
            total = 0.0
            for _ in range(10):
                after()
                start = time.perf_counter()
                resize_frame(frame, (512, 912))
                total += time.perf_counter() - start
            best = min(best, total / 10)
        return 1000 * best

    def inflate_only() -> None:
        isal_zlib.decompress(stream)

    def inflate_and_clean() -> None:
        isal_zlib.decompress(stream)
        clean_vector_state()

    print("\n### The AVX state ISA-L leaves: `resize_frame` 512x1024x4 -> 512x912 (INTER_AREA), ms, one thread\n")
    print("| before the resize | ms |\n|---|---|")
    print(f"| nothing | {resize_ms(lambda: None):.2f} |")
    print(f"| an ISA-L inflate | {resize_ms(inflate_only):.2f} |")
    print(f"| an ISA-L inflate, then `clean_vector_state()` | {resize_ms(inflate_and_clean):.2f} |")


# ---------------------------------------------------------------------------------- augmented crops


CROP_SIZE = (512, 1024)
MMSEG_AUGMENTATION = Augmentation(scale_range=(0.5, 2.0), cat_max_ratio=0.75, photometric=True)


def resize_then_crop(frame: np.ndarray, label: np.ndarray, item, augmentation: Augmentation):
    """mmsegmentation's order on a whole frame: resize it to the random scale, then crop, photometric,
    flip and pad, with the parameters `ShardDataset` draws from the item's seed."""
    rng = np.random.default_rng(item.seed)
    scaled = scaled_size(frame.shape[:2], draw_scale(rng, augmentation.scale_range))
    big = resize_image(frame, scaled)
    big_label = resize_labels(label, scaled)

    def crop_labels(box):
        return big_label[box.top : box.top + box.height, box.left : box.left + box.width]

    box, label = choose_crop(rng, scaled, CROP_SIZE, augmentation.cat_max_ratio, crop_labels)
    image = big[box.top : box.top + box.height, box.left : box.left + box.width]
    image = photometric_distortion(image, draw_photometric(rng))
    if item.flip:
        image, label = flip(image, label)
    return to_tensors(*pad_to(image, label, CROP_SIZE))


def whole_frame_augmented_loader(out: Path, channels: int) -> Callable:
    """Shards read whole at full size, then `resize_then_crop` (the region read left out)."""
    reader = open_split(out, SPLIT)

    def load(item):
        frame, label, _ = reader.read(item.index)
        return resize_then_crop(select_channels(frame, channels), label, item, MMSEG_AUGMENTATION)

    return load


def png_augmented_loader(root: Path) -> Callable:
    """Cityscapes PNGs decoded, labelId -> trainId, then `resize_then_crop`."""
    frames = list_frames(root, SPLIT)

    def load(item):
        frame = frames[item.index]
        rgb = cv2.cvtColor(cv2.imread(str(frame.image), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        label = labelid_to_trainid(cv2.imread(str(frame.label), cv2.IMREAD_UNCHANGED))
        return resize_then_crop(rgb, label, item, MMSEG_AUGMENTATION)

    return load


def print_augmented(data: BenchData, frames: int, repeats: int, epochs: int) -> None:
    """Samples/s of the augmented paths over `epochs` epochs of the sampler's items (scales, crops and
    colours drawn per item)."""
    items = []
    sampler = EpochSampler(frames, seed=0)
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        items += sampler.items()

    def region(channels: int) -> float:
        dataset = ShardDataset(data.level, SPLIT, channels, CROP_SIZE, augment=MMSEG_AUGMENTATION)
        with dataset.reader:
            return rate(dataset.__getitem__, items, repeats, close_between_passes(dataset.reader))

    rates = {"region +e": region(4), "region RGB": region(3),
             "whole +e": rate(whole_frame_augmented_loader(data.level, 4), items, repeats),
             "PNG RGB": rate(png_augmented_loader(data.root), items, repeats)}
    print(f"\n### Augmented 512x1024 crops, samples/s per core ({frames} frames of 1024x2048, {len(items)} samples: "
          f"{epochs} epochs of random scales, best of {repeats} passes)\n")
    print("mmsegmentation's Cityscapes pipeline: scale 0.5-2.0, crop 512x1024 with cat_max_ratio 0.75, flip, "
          "photometric distortion, pad. region = `ShardDataset(augment=...)` on levels=3 shards (the crop's "
          "region of the smallest sufficient level, read and resized); whole = the same shards read whole at "
          "full size, resized to the scale, then cropped; PNG = Cityscapes PNGs decoded, resized, cropped "
          "(RGB only).\n")
    print("| " + " | ".join(rates) + " | region RGB / PNG RGB | region +e / PNG RGB | region +e / whole +e |")
    print("|" + "---|" * (len(rates) + 3))
    print("| " + " | ".join(f"{r:.1f}" for r in rates.values()) + f" | {rates['region RGB'] / rates['PNG RGB']:.1f}x"
          f" | {rates['region +e'] / rates['PNG RGB']:.1f}x | {rates['region +e'] / rates['whole +e']:.1f}x |")


SECTIONS = ("stages", "steps", "storage", "vector", "augment")


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--frames", type=int, default=8, help="frames in the dataset (default 8)")
    parser.add_argument("--size", default="1024x2048", help="stored frame size HxW (default 1024x2048)")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes; the best counts (default 5)")
    parser.add_argument("--work", default=None,
                        help="folder keeping the dataset and shards between runs (default: a temporary folder)")
    parser.add_argument("--lz4", action=argparse.BooleanOptionalAction, default=True,
                        help="also measure the level path on lz4 shards (needs hdf5plugin; default on)")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="sections to run")
    parser.add_argument("--augment-epochs", type=int, default=4,
                        help="epochs of random scales the augment section measures (default 4)")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="segnet-loader-"))
    frame_size = parse_size(args.size)
    data = prepare_data(work, args.frames, frame_size, args.lz4)
    one_thread()
    items = shuffled_items(args.frames)
    if "stages" in args.only:
        rates = {}
        for size in STAGE_SIZES:
            rates[size] = measure_stage(data, size, items, args.repeats, args.lz4)
            print(f"measured {size[0]}x{size[1]}", file=sys.stderr, flush=True)
        print_rates(rates, args.frames, frame_size, args.repeats)
    if "steps" in args.only:
        print_steps(data, items, args.repeats)
    if "storage" in args.only:
        print_storage(data, frame_size, args.lz4)
    if "vector" in args.only:
        print_vector_state(args.repeats)
    if "augment" in args.only:
        print_augmented(data, args.frames, args.repeats, args.augment_epochs)
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
