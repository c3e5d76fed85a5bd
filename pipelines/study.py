"""The four-variant study in one call: build the shards, train each variant, evaluate it, tabulate.

`run_study(config)` lays out `OUT/` as

    OUT/shards/{train,val}/     the Dask build (hedprep), missing shards only (train_extra too, gtCoarse,
                                with --with-coarse: every run then trains on it first)
    OUT/runs/{variant}/         segnet train's run folder, and val.json, its evaluation on val
    OUT/results.csv, results.md one row per variant beside the figure the study reported, with the
                                mean boundary F at each tolerance of `segnet.boundary`
    OUT/plots/*.png             mIoU and boundary F per variant, per-class IoU heatmap, training curves,
                                and the qualitative sheet: a few val frames with each variant's prediction

and reuses what a previous call finished: complete shards, finished runs (resumed when interrupted)
and evaluations newer than their checkpoint. A variant that fails is reported and the others go on.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from hedprep.atomic import write_text_atomic
from hedprep.build_plan import BuildConfig
from hedprep.errors import HedsegError
from hedprep.hed import release_cached_detectors
from hedprep.shards import TRAIN_CLASSES, open_split
from pipelines.build import build_split
from segnet.boundary import THRESHOLDS
from segnet.config import TrainConfig
from segnet.deeplab import ALL_VARIANTS, VARIANT_SPECS, VARIANTS
from segnet.errors import SegnetOptionError
from segnet.evaluate import evaluate, frame_predictions
from segnet.run_folder import RunFolder
from segnet.train import TrainCallbacks, train

# mIoU (%) the study reported for each variant, on the full Cityscapes val with ImageNet weights.
REPORTED_MIOU = {"vanilla": 60.24, "dlse": 57.5, "dlse-sf": 52.79, "dlse-hed": 38.83}
SPLITS = ("train", "val")
COARSE_SPLIT = "train_extra"  # --with-coarse: built with gtCoarse labels, every run's coarse stage
SHEET_FRAMES = 3  # val frames on the qualitative sheet
ALL = "all"  # --variants all: every variant of segnet.deeplab.ALL_VARIANTS
DEFAULT_RECIPE = "the defaults (the study's recipe, configs/study.toml)"


@dataclass
class StudyConfig:
    """What `segnet study` takes (see `segnet study --help`): the study folder, the variants, and the
    options of its runs and of its build as a `TrainConfig` and a `BuildConfig` (`run_options`,
    `build_options`). Evaluations and the qualitative sheet run as the runs do (`train.device`, `train.amp`).
    `with_coarse`: also build `COARSE_SPLIT` with gtCoarse labels, and train every run on it first for
    `train.coarse_epochs` epochs (its coarse stage)."""

    out: str = "runs/study"
    variants: tuple[str, ...] = VARIANTS
    # variant, shards, out and coarse_split: each run's
    train: TrainConfig = field(default_factory=lambda: StudyConfig.run_options())
    build: BuildConfig = field(default_factory=lambda: StudyConfig.build_options())  # split, out, labels: each split's
    recipe: str | None = None  # the --config file the options came from, if any (named in results.md)
    with_coarse: bool = False

    @staticmethod
    def run_options(**options: Any) -> TrainConfig:
        """The runs' options (TrainConfig's fields but variant, shards, out and coarse_split, which
        `train_config` fills in)."""
        return TrainConfig(variant="", shards="", out="", **options)

    @property
    def splits(self) -> tuple[str, ...]:
        """The splits the study builds: train and val, and with `with_coarse` the coarse split."""
        return SPLITS + ((COARSE_SPLIT,) if self.with_coarse else ())

    @staticmethod
    def build_options(root: str | None = None, **options: Any) -> BuildConfig:
        """The build's options (BuildConfig's fields but split and out, which `build_config` fills in);
        `root` None: $CITYSCAPES_DATASET."""
        return BuildConfig(root=root, split="", out="", **options)

    def build_config(self, split: str) -> BuildConfig:
        """The `hedprep build` of one split of the study's shards (the coarse split with gtCoarse labels)."""
        labels = "coarse" if split == COARSE_SPLIT else self.build.labels
        return replace(self.build, split=split, out=str(Path(self.out) / "shards"), labels=labels)

    def train_config(self, variant: str) -> TrainConfig:
        """The `segnet train` of one variant (with `with_coarse`, its coarse stage on the coarse split)."""
        out = Path(self.out)
        return replace(self.train, variant=variant, shards=str(out / "shards"), out=str(out / "runs" / variant),
                       schedule=list(self.train.schedule), coarse_split=COARSE_SPLIT if self.with_coarse else None)


def parse_variants(text: str) -> tuple[str, ...]:
    """--variants 'vanilla,dl-boundary' -> the variants in that order; 'all' -> every variant.

    Raises:
        SegnetOptionError: an unknown variant, or none.
    """
    chosen = tuple(v.strip() for v in text.split(",") if v.strip())
    if chosen == (ALL,):
        return ALL_VARIANTS
    if not chosen or any(v not in ALL_VARIANTS for v in chosen):
        raise SegnetOptionError(f"--variants {text}: choose from {', '.join(ALL_VARIANTS)}, or {ALL}")
    return chosen


@dataclass
class StudyProgress:
    """Optional hooks for showing progress: the build's frames per split, each evaluation's frames."""

    on_build_start: Callable[[str, int, int], None] | None = None  # split, frames to build, frames kept
    on_build_frames: Callable[[int], None] | None = None
    on_eval_start: Callable[[str, int], None] | None = None  # variant, frames
    on_eval_frames: Callable[[int], None] | None = None


@dataclass
class VariantResult:
    """One row of the results: the figures of a variant, or why it has none."""

    variant: str
    run_dir: Path
    miou: float | None = None  # fractions in [0, 1]
    pixel_accuracy: float | None = None
    iou: dict[str, float | None] = field(default_factory=dict)
    boundary_f: list[dict[str, Any]] = field(default_factory=list)  # val.json's: threshold, pixels, mean, per_class
    train_seconds: float | None = None
    images_per_s: float | None = None
    error: str | None = None


@dataclass
class StudyResult:
    out: Path
    rows: list[VariantResult]
    results_csv: Path
    results_md: Path


def run_study(config: StudyConfig, on_log: Callable[[str], None] | None = None,
              train_callbacks: TrainCallbacks | None = None, progress: StudyProgress | None = None) -> StudyResult:
    """Build, train, evaluate and tabulate the variants of `config`; see the module docstring."""
    log = on_log or (lambda line: None)
    progress = progress or StudyProgress()
    out = Path(config.out)
    shards = out / "shards"
    frames = {}
    for split in config.splits:
        def start(todo: int, done: int, split: str = split) -> None:
            if progress.on_build_start is not None:
                progress.on_build_start(split, todo, done)

        result = build_split(config.build_config(split), on_frames=progress.on_build_frames, on_start=start)
        frames[split] = result.frames
        log(f"shards {split}: {result.frames} frames, {result.built} built, {result.kept} kept")
    release_cached_detectors()  # HED's weights and buffers, on the GPU too, are not needed for training
    rows = []
    for variant in config.variants:
        run_dir = out / "runs" / variant
        try:
            rows.append(study_variant(config, variant, run_dir, shards, log, train_callbacks, progress))
        except HedsegError as error:
            log(f"{variant}: failed: {error}")
            rows.append(VariantResult(variant, run_dir, error=str(error)))
    results_csv, results_md = out / "results.csv", out / "results.md"
    plots = write_plots(rows, out / "plots")
    log("drawing the qualitative sheet")
    plots.append(write_sheet(sheet_frames(shards, rows, SHEET_FRAMES, config.train.device, config.train.amp),
                             config.variants,
                             out / "plots" / "qualitative.png"))
    write_text_atomic(results_csv, results_table_csv(rows))
    write_text_atomic(results_md, results_table_md(rows, config, frames, [p.relative_to(out) for p in plots]))
    return StudyResult(out, rows, results_csv, results_md)


def study_variant(config: StudyConfig, variant: str, run_dir: Path, shards: Path, log: Callable[[str], None],
                  callbacks: TrainCallbacks | None, progress: StudyProgress) -> VariantResult:
    """Train (or resume, or reuse) one variant's run and evaluate its best checkpoint on val."""
    train_config = config.train_config(variant)
    run = RunFolder(run_dir)
    # the shards are always OUT/shards: a study folder may be moved or copied
    if run.finished(train_config, ignore=("shards",)):
        log(f"{variant}: run finished before, reused")
    else:
        resume = run.started()
        log(f"{variant}: {'resuming' if resume else 'training'} in {run_dir}")
        train(train_config, resume=resume, callbacks=callbacks)
    scores, best = run.evaluation, run.best
    if not (scores.is_file() and scores.stat().st_mtime >= best.stat().st_mtime and has_boundary_f(scores)):
        def start(total: int) -> None:
            if progress.on_eval_start is not None:
                progress.on_eval_start(variant, total)

        evaluation = evaluate(best, shards, "val", device=config.train.device, on_frames=progress.on_eval_frames,
                              on_start=start, amp=config.train.amp)
        write_text_atomic(scores, json.dumps(evaluation.result.to_json(), indent=1) + "\n")
        log(f"{variant}: evaluated on val, mIoU {100 * evaluation.result.miou:.2f}")
    figures = json.loads(scores.read_text(encoding="utf-8"))
    seconds, rate = training_figures(run.metrics())
    return VariantResult(variant, run_dir, figures["miou"], figures["pixel_accuracy"], figures["iou"],
                         figures["boundary_f"], seconds, rate)


def has_boundary_f(scores: Path) -> bool:
    """Whether an evaluation's val.json holds the boundary F (those written before it do not)."""
    try:
        return "boundary_f" in json.loads(scores.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False


def write_plots(rows: list[VariantResult], folder: Path) -> list[Path]:
    """The study's PNG figures (pipelines/study_plots.py)."""
    from pipelines.study_plots import plot_class_iou, plot_miou, plot_training_curves

    return [plot_miou(rows, REPORTED_MIOU, folder / "miou.png"), plot_class_iou(rows, folder / "class_iou.png"),
            plot_training_curves(rows, folder / "training_curves.png")]


@dataclass
class SheetFrame:
    """One row of the qualitative sheet: a val frame, its labels and each variant's prediction."""

    frame_id: str
    image: np.ndarray  # (H, W, 3) uint8 RGB
    edge: np.ndarray  # (H, W) uint8, HED's edge map as stored
    label: np.ndarray  # (H, W) uint8 trainIds, 255 = ignore
    predictions: dict[str, np.ndarray | None]  # variant -> (H, W) trainIds, None if it has no model
    # variant -> (H, W) uint8 boundary map of its training-only boundary head (dl-boundary, dl-hed-head)
    boundaries: dict[str, np.ndarray] = field(default_factory=dict)


def sheet_indices(frames: int, count: int) -> list[int]:
    """`count` frame indices spread evenly over `frames` (first and last included), without repeats."""
    if frames <= 0 or count <= 0:
        return []
    return sorted({int(i) for i in np.linspace(0, frames - 1, min(count, frames)).round()})


def sheet_frames(shards: Path, rows: Sequence[VariantResult], count: int, device: str = "auto",
                 amp: bool = False) -> list[SheetFrame]:
    """The qualitative sheet's frames: `count` val frames and the prediction of each row's best.pt
    (as `segnet evaluate` makes it, with `amp` as the study evaluates), and the boundary map of each
    variant trained with a boundary head; a failed variant's predictions are None (and it has no map)."""
    with open_split(shards, "val") as reader:
        indices = sheet_indices(len(reader), count)
        samples = [reader.read(i) for i in indices]
    predictions: dict[str, list[np.ndarray] | None] = {}
    boundaries: dict[str, list[np.ndarray]] = {}
    for row in rows:
        best = row.run_dir / "best.pt"
        predictions[row.variant] = None
        if row.error is None and best.is_file():
            try:
                has_head = VARIANT_SPECS[row.variant].boundary_target is not None
                pairs = frame_predictions(best, shards, "val", indices, device=device, amp=amp, boundaries=has_head)
                predictions[row.variant] = [ids for ids, _ in pairs]
                if has_head:
                    boundaries[row.variant] = [maps for _, maps in pairs]
            except HedsegError:  # e.g. best.pt damaged since its evaluation: a blank column
                pass
    return [SheetFrame(sample.frame_id, sample.frame[..., :3], sample.frame[..., 3], sample.label,
                       {v: None if p is None else p[k] for v, p in predictions.items()},
                       {v: maps[k] for v, maps in boundaries.items()})
            for k, sample in enumerate(samples)]


def write_sheet(frames: list[SheetFrame], variants: Sequence[str], path: Path) -> Path:
    """Draw the qualitative sheet (pipelines/study_plots.py)."""
    from pipelines.study_plots import plot_qualitative_sheet

    return plot_qualitative_sheet(frames, list(variants), path)


def training_figures(rows: list[dict[str, Any]]) -> tuple[float | None, float | None]:
    """Total training seconds and images/s over a run's metrics rows."""
    if not rows:
        return None, None
    seconds = sum(r["seconds"] for r in rows)
    images = sum(r["images_per_s"] * r["seconds"] for r in rows if r.get("images_per_s"))
    return seconds, (images / seconds if seconds else None)


def _percent(value: float | None) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"


BOUNDARY_FIELDS = tuple(f"boundary_f_{threshold}" for threshold in THRESHOLDS)  # mean boundary F per tolerance
CSV_FIELDS = ("variant", "miou", "reported_miou", *BOUNDARY_FIELDS, "pixel_accuracy", "train_seconds", "images_per_s",
              "error", *TRAIN_CLASSES)


def mean_boundary_f(row: VariantResult) -> dict[float, float | None]:
    """A row's mean boundary F (fraction) per threshold of `THRESHOLDS`; None where it has none."""
    means = {entry["threshold"]: entry["mean"] for entry in row.boundary_f}
    return {threshold: means.get(threshold) for threshold in THRESHOLDS}


def boundary_headings(rows: Sequence[VariantResult]) -> list[str]:
    """The boundary F columns' names: the tolerance in pixels at the labels' size, or the threshold."""
    pixels = {entry["threshold"]: entry["pixels"] for row in rows for entry in row.boundary_f}
    return [f"BF {pixels[th]} px" if th in pixels else f"BF {th}" for th in THRESHOLDS]


def results_table_csv(rows: list[VariantResult]) -> str:
    """One CSV row per variant: mIoU, mean boundary F per threshold (boundary_f_TH), pixel accuracy and
    per-class IoU in %, the reported mIoU."""
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        record: dict[str, Any] = {
            "variant": row.variant, "miou": _percent(row.miou), "reported_miou": REPORTED_MIOU.get(row.variant, ""),
            **dict(zip(BOUNDARY_FIELDS, map(_percent, mean_boundary_f(row).values()), strict=True)),
            "pixel_accuracy": _percent(row.pixel_accuracy),
            "train_seconds": "" if row.train_seconds is None else f"{row.train_seconds:.1f}",
            "images_per_s": "" if row.images_per_s is None else f"{row.images_per_s:.2f}", "error": row.error or "",
        }
        record.update({name: _percent(row.iou.get(name)) for name in TRAIN_CLASSES})
        writer.writerow(record)
    return table.getvalue()


def recipe_summary(train: TrainConfig) -> str:
    """The optimizer and learning-rate schedule of `train`, in words."""
    optimizer = train.optimizer + (f" (momentum {train.momentum})" if train.optimizer == "sgd" else "")
    rate = f"lr {train.lr} {train.lr_schedule}"
    if train.lr_schedule != "constant":
        rate += f" to {train.min_lr}"
    if train.warmup_iters:
        rate += f" after {train.warmup_iters} warm-up steps"
    return f"{optimizer}, weight decay {train.weight_decay}, {rate}"


def coarse_summary(config: StudyConfig) -> str:
    """The runs' coarse stage in words ('none' without --with-coarse)."""
    if not config.with_coarse:
        return "none"
    stage = config.train_config("").stages[0]
    return (f"{stage.epochs} epoch(s) on {stage.split} (gtCoarse labels) at {stage.height}x{stage.width}, "
            f"batch {stage.batch_size}, before the schedule")


def results_table_md(rows: list[VariantResult], config: StudyConfig, frames: dict[str, int],
                     plots: list[Path] | None = None) -> str:
    """The results as a Markdown page: the table, then the exact settings."""
    boundary = boundary_headings(rows)
    lines = [
        "# Study results",
        "",
        "mIoU and pixel accuracy on val (%, as Cityscapes scores them), beside the mIoU the study reported "
        "(*reported*: on the full Cityscapes val, ImageNet backbone weights). *BF t px*: the mean boundary "
        "F-score (%) over the classes, class boundaries matched within t pixels (tolerances of "
        + ", ".join(f"{100 * th:g}%" for th in THRESHOLDS) + " of the image diagonal; docs/segnet.md).",
        "",
        f"| variant | mIoU | reported mIoU | {' | '.join(boundary)} | pixel accuracy | training time (s) | images/s "
        "| note |",
        "|---|---|---|" + "---|" * len(boundary) + "---|---|---|---|",
    ]
    for row in rows:
        seconds = "" if row.train_seconds is None else f"{row.train_seconds:.1f}"
        rate = "" if row.images_per_s is None else f"{row.images_per_s:.2f}"
        note = f"failed: {row.error}" if row.error else ""
        bf = " | ".join(_percent(value) for value in mean_boundary_f(row).values())
        lines.append(f"| {row.variant} | {_percent(row.miou)} | {REPORTED_MIOU.get(row.variant, '')} | {bf} | "
                     f"{_percent(row.pixel_accuracy)} | {seconds} | {rate} | {note} |")
    lines += ["", "Per-class IoU (%):", "", "| variant | " + " | ".join(TRAIN_CLASSES) + " |",
              "|---|" + "---|" * len(TRAIN_CLASSES)]
    for row in rows:
        lines.append(f"| {row.variant} | " + " | ".join(_percent(row.iou.get(n)) for n in TRAIN_CLASSES) + " |")
    lines += ["", "Settings:", "",
              f"- recipe: {config.recipe or DEFAULT_RECIPE}; {recipe_summary(config.train)}",
              f"- schedule: {','.join(str(s) for s in config.train.schedule)}",
              f"- coarse pretraining: {coarse_summary(config)}",
              f"- seed: {config.train.seed}; lr: {config.train.lr}; backbone weights: {config.train.backbone_weights}",
              f"- dataset root: {Path(config.build.root).resolve() if config.build.root else '$CITYSCAPES_DATASET'}; "
              "frames: " + ", ".join(f"{split} {count}" for split, count in frames.items())
              + f"; resolution levels: {config.build.levels}", ""]
    for plot in plots or []:
        lines += [f"![{plot.stem.replace('_', ' ')}]({plot.as_posix()})", ""]
    return "\n".join(lines)
