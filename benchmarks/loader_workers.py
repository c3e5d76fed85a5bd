"""DataLoader settings for the level path: samples/s and each epoch's wait for its first batch, by worker
processes, prefetch and persistence; loading only, no model.

    python benchmarks/loader_workers.py --work /tmp/hedseg-bench          # about 1 minute once shards exist
    python benchmarks/loader_workers.py --work /tmp/hedseg-bench --epochs 8 --batches 24

The data: `segnet.data.ShardDataset` (RGB+edge) on the levels=3 gzip shards of
benchmarks/segnet_loader.py (same `--work`, built there once if missing), each frame's index
repeated so an epoch has `--batches` batches, shuffled and randomly flipped per epoch. Loaders come
from `segnet.data.make_loader` (workers persist across epochs), and, for comparison, plain
`torch.utils.data.DataLoader`s with `persistent_workers=False`, which start their workers each epoch.
For each setting: `--epochs` epochs, the first of which starts the workers; samples/s over the others
(first-batch waits included, as training sees them), and the first-batch wait of each epoch.
"ready tensors" rows serve copies of one prepared sample instead of reading shards: what moving
batches from worker processes to the main one costs by itself.

8 frames repeated: their small levels stay in each process's HDF5 chunk caches (8 MiB per dataset),
so at 128x224 most reads decompress nothing; benchmarks/segnet_loader.py gives the per-core rates
with every chunk decompressed.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.segnet_loader import SPLIT, Item, one_thread, prepare_data  # noqa: E402
from hedprep.options import parse_size  # noqa: E402
from segnet.config import parse_schedule  # noqa: E402
from segnet.data import EpochItems, LoaderSettings, ShardDataset, make_loader  # noqa: E402

STAGES = "128x224:16,512x912:4"  # the first and last stage of segnet's DEFAULT_SCHEDULE


@dataclass(frozen=True)
class Setting:
    """One DataLoader configuration; `prefetch` is batches per worker (None without workers)."""

    workers: int
    prefetch: int | None
    persistent: bool = True

    def __str__(self) -> str:
        if not self.workers:
            return "| 0 | - | - "
        return f"| {self.workers} | {self.prefetch} | {'yes' if self.persistent else 'no'} "


SETTINGS = (
    Setting(0, None),
    Setting(1, 2), Setting(1, 4),
    Setting(2, 2), Setting(2, 4),
    Setting(1, 4, persistent=False), Setting(2, 4, persistent=False),
)  # fmt: skip
TRANSFER_SETTINGS = (Setting(0, None), Setting(1, 4), Setting(2, 4))


class ReadyTensors(Dataset):
    """Copies of one prepared sample, as many as `dataset` holds: a loader's cost without the loading."""

    def __init__(self, dataset: ShardDataset) -> None:
        self.image, self.label = dataset[(0, False)]
        self.size = len(dataset)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, item: Item) -> tuple[torch.Tensor, torch.Tensor]:
        return self.image.clone(), self.label.clone()


@dataclass(frozen=True)
class Epoch:
    """One epoch: seconds to its first batch and to its end, and the samples it served."""

    first_batch_s: float
    total_s: float
    samples: int


def epoch_items(frames: int, count: int, epoch: int) -> list[Item]:
    """`count` items over `frames` frames, each index repeated about equally, shuffled, flipped at random."""
    rng = np.random.default_rng(1000 + epoch)
    order = rng.permutation(np.arange(count) % frames)
    flips = rng.random(count) < 0.5
    return [(int(i), bool(f)) for i, f in zip(order, flips, strict=True)]


def make_setting_loader(dataset: Dataset, batch_size: int, setting: Setting) -> tuple[DataLoader, EpochItems]:
    """segnet's loader for `setting`, or a plain one with workers started each epoch (not persistent)."""
    if setting.persistent or not setting.workers:
        return make_loader(dataset, batch_size, LoaderSettings(workers=setting.workers,
                                                               prefetch_factor=setting.prefetch or 2))
    items = EpochItems()
    loader = DataLoader(dataset, batch_size=batch_size, sampler=items, num_workers=setting.workers,
                        prefetch_factor=setting.prefetch, persistent_workers=False, pin_memory=False)
    return loader, items


def run_epochs(dataset: Dataset, batch_size: int, setting: Setting, frames: int, batches: int,
               epochs: int) -> list[Epoch]:
    if isinstance(dataset, ShardDataset):
        dataset.reader.close()  # every setting starts with no open files (forked workers would share their caches)
    loader, items = make_setting_loader(dataset, batch_size, setting)
    out = []
    for epoch in range(epochs):
        items.set_items(epoch_items(frames, batches * batch_size, epoch))
        start = time.perf_counter()
        first, samples = None, 0
        for images, _ in loader:
            if first is None:
                first = time.perf_counter() - start
            samples += images.shape[0]
        out.append(Epoch(first, time.perf_counter() - start, samples))
    del loader, items
    stop_workers()
    return out


def stop_workers() -> None:
    """Wait until the loader's worker processes are gone, so they take no CPU from the next setting."""
    gc.collect()  # a persistent loader's iterator shuts its workers down when collected
    deadline = time.monotonic() + 30
    while multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.05)


def print_stage(size: tuple[int, int], batch_size: int, results: dict[tuple[str, Setting], list[Epoch]],
                batches: int, epochs: int) -> None:
    print(f"\n### {size[0]}x{size[1]}, batch {batch_size}: {batches} batches per epoch, {epochs} epochs "
          f"(epoch 1 starts the workers; rates over epochs 2-{epochs})\n")
    print("| data | workers | prefetch | persistent | samples/s | batches/s | vs 0 workers | first batch, epoch 1 ms "
          f"| first batch, epochs 2-{epochs} ms (mean) | epoch 1 samples/s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    base: dict[str, float] = {}
    for (source, setting), run in results.items():
        later = run[1:]
        rate = sum(e.samples for e in later) / sum(e.total_s for e in later)
        base.setdefault(source, rate)
        first_later = 1000 * sum(e.first_batch_s for e in later) / len(later)
        print(f"| {source} {setting}| {rate:.1f} | {rate / batch_size:.2f} | {rate / base[source]:.2f}x | "
              f"{1000 * run[0].first_batch_s:.0f} | {first_later:.0f} | {run[0].samples / run[0].total_s:.1f} |",
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--frames", type=int, default=8, help="frames in the dataset (default 8)")
    parser.add_argument("--size", default="1024x2048", help="stored frame size HxW (default 1024x2048)")
    parser.add_argument("--stages", default=STAGES, help=f"sizes and batch sizes, HxW:BATCH,... (default {STAGES})")
    parser.add_argument("--batches", type=int, default=16, help="batches per epoch, at least 8 (default 16)")
    parser.add_argument("--epochs", type=int, default=5, help="epochs per setting, at least 2 (default 5)")
    parser.add_argument("--work", default=None,
                        help="folder keeping the dataset and shards between runs (default: a temporary folder)")
    args = parser.parse_args()
    if args.batches < 8 or args.epochs < 2:
        parser.error("--batches must be at least 8 and --epochs at least 2")
    work = Path(args.work or tempfile.mkdtemp(prefix="loader-workers-"))
    data = prepare_data(work, args.frames, parse_size(args.size), lz4=False)
    one_thread()  # the main process, and the workers it forks
    print(f"{args.frames} frames repeated, level path (levels=3, gzip), RGB+edge; loading only, no model; "
          f"{multiprocessing.cpu_count()} CPUs")
    for stage in parse_schedule(args.stages, 1):
        dataset = ShardDataset(data.level, SPLIT, 4, stage.size)
        runs = [("shards", dataset, s) for s in SETTINGS] + [
            ("ready tensors", ReadyTensors(dataset), s) for s in TRANSFER_SETTINGS]
        results = {(source, setting): run_epochs(d, stage.batch_size, setting, args.frames, args.batches, args.epochs)
                   for source, d, setting in runs}
        dataset.reader.close()
        print_stage(stage.size, stage.batch_size, results, args.batches, args.epochs)
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
