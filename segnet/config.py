"""Training configuration: the options of `segnet train` as data, and the progressive-size schedule."""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from hedprep.options import parse_size
from segnet.augment import Augmentation, check_scale_range
from segnet.errors import SegnetOptionError

# The study trains progressively: 128x224 with batches of 16, then 256x448 with 8, then 512x912 with 4.
DEFAULT_SCHEDULE = "128x224:16,256x448:8,512x912:4"
# Epochs per stage where the schedule does not say: 10 per stage (30 in all) is a starting point for
# Cityscapes' 2975 training frames; the study's own figure is not known.
DEFAULT_EPOCHS_PER_STAGE = 10
MAX_DEFAULT_WORKERS = 8  # DataLoader workers per rank when --workers is not given
MIN_SIDE = 16  # the smallest height and width segnet trains or evaluates at: one pixel at output stride 16
# Epochs of the coarse stage (--coarse-split) where --coarse-epochs is not given. Cityscapes' train_extra
# holds 19998 gtCoarse frames, 6.7 times train's 2975: 2 of its epochs are about as many steps as 13
# epochs of train, a little more than one stage of the default schedule.
DEFAULT_COARSE_EPOCHS = 2
SPLIT_NAME = re.compile(r"\w[\w.-]*")  # a split's folder name, as a schedule entry's @SPLIT may give it


@dataclass(frozen=True)
class Stage:
    """One size of the schedule: frames read at height x width, in batches, for a number of epochs or
    of optimizer steps (`iters`, as mmsegmentation counts; exactly one of the two is set), from `split`
    (None: the run's --split; e.g. train_extra, gtCoarse's frames, for a coarse stage)."""

    height: int
    width: int
    batch_size: int
    epochs: int | None = None
    iters: int | None = None
    split: str | None = None

    def __post_init__(self) -> None:
        if (self.epochs is None) == (self.iters is None):
            raise ValueError("a stage has epochs or iters, not both or neither")

    @property
    def size(self) -> tuple[int, int]:
        return self.height, self.width

    def __str__(self) -> str:
        """The stage as --schedule spells it: HxW:BATCH:EPOCHS or HxW:BATCH:ITERSit, then @SPLIT if it names one."""
        length = f"{self.iters}it" if self.iters is not None else str(self.epochs)
        split = f"@{self.split}" if self.split is not None else ""
        return f"{self.height}x{self.width}:{self.batch_size}:{length}{split}"


@dataclass(frozen=True)
class StagePlan:
    """A stage as it runs: its epochs of `steps_per_epoch` optimizer steps, the last one cut short where
    the stage counts iterations (`plan_stage`)."""

    stage: Stage
    steps_per_epoch: int
    epochs: int
    last_epoch_steps: int

    def steps(self, epoch: int) -> int:
        """Optimizer steps of `epoch` (0-based)."""
        return self.last_epoch_steps if epoch == self.epochs - 1 else self.steps_per_epoch

    @property
    def total_steps(self) -> int:
        return (self.epochs - 1) * self.steps_per_epoch + self.last_epoch_steps


def plan_stage(stage: Stage, steps_per_epoch: int) -> StagePlan:
    """`stage` over epochs of `steps_per_epoch` steps: its epochs, or as many as its iters need."""
    if stage.iters is None:
        return StagePlan(stage, steps_per_epoch, stage.epochs, steps_per_epoch)
    epochs = -(-stage.iters // steps_per_epoch)
    return StagePlan(stage, steps_per_epoch, epochs, stage.iters - (epochs - 1) * steps_per_epoch)


def default_workers(device_type: str, cpus: int, local_ranks: int = 1) -> int:
    """DataLoader worker processes per rank when --workers is not given.

    On a CPU the model's threads already use every core, and a loader process beside them slows the
    step more than loading in line costs (2-core machine, 128x224 batch 16 from 1024x2048 shards:
    3.97 images/s with no worker, 2.25 with one; docs/performance.md): 0. On a GPU the cores are the
    loader's: this rank's share of them (`cpus` / `local_ranks`), less one for the process that
    drives the GPU, at least 1. Loading scales with worker processes (docs/performance.md), and a GPU
    can consume far more samples per second than one core prepares. At most `MAX_DEFAULT_WORKERS`:
    about 8 cores keep one GPU fed at 128x224 from the resolution levels (docs/performance.md), and
    each worker holds its own shard handles and batches.
    """
    if device_type == "cpu":
        return 0
    return min(MAX_DEFAULT_WORKERS, max(1, cpus // max(1, local_ranks) - 1))


def loader_workers(requested: int | None, device_type: str) -> int:
    """DataLoader workers per rank: `--workers`, else `default_workers` for this machine and job."""
    return requested if requested is not None else default_workers(device_type, available_cpus(), local_ranks())


def available_cpus() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def local_ranks() -> int:
    """Processes of this job on this machine (torchrun's LOCAL_WORLD_SIZE; 1 without torchrun)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def parse_scale_range(text: str) -> tuple[float, float]:
    """--scale-range '0.5,2.0' -> (0.5, 2.0): two ratios 0 < lo <= hi."""
    parts = text.split(",")
    try:
        lo, hi = (float(part) for part in parts)
    except ValueError:
        raise SegnetOptionError(f"--scale-range {text}: expected LO,HI with 0 < LO <= HI, e.g. 0.5,2.0") from None
    return check_scale_range((lo, hi))


def parse_schedule(text: str, epochs_per_stage: int = DEFAULT_EPOCHS_PER_STAGE) -> list[Stage]:
    """'128x224:16:10,512x1024:8:80000it' -> stages (a length in epochs, or in optimizer steps with 'it';
    an entry ending in '@SPLIT' trains on that split, e.g. '128x224:16:2@train_extra');
    `epochs_per_stage` where an entry gives no length."""
    if epochs_per_stage < 1:
        raise SegnetOptionError(f"--epochs-per-stage {epochs_per_stage}: must be at least 1")
    return [_parse_stage(entry.strip(), text, epochs_per_stage) for entry in text.split(",")]


def _parse_stage(entry: str, text: str, epochs_per_stage: int) -> Stage:
    entry_counts, at, split = entry.partition("@")
    size, *counts = entry_counts.split(":")
    length_text = counts[1].strip().removesuffix("it") if len(counts) == 2 else str(epochs_per_stage)
    if (len(counts) not in (1, 2) or not counts[0].strip().isdecimal() or not length_text.isdecimal()
            or (at and not SPLIT_NAME.fullmatch(split.strip()))):
        raise SegnetOptionError(
            f"--schedule {text}: '{entry}' is not HxW:BATCH[:EPOCHS or :ITERSit][@SPLIT], e.g. 128x224:16:10, "
            "512x1024:8:80000it or 128x224:16:2@train_extra"
        )
    height, width = parse_size(size, "--schedule", MIN_SIDE, SegnetOptionError)
    batch, length = int(counts[0]), int(length_text)
    if batch < 1 or length < 1:
        raise SegnetOptionError(f"--schedule {text}: '{entry}' needs a batch and a length of at least 1")
    split = split.strip() if at else None
    if len(counts) == 2 and counts[1].strip().endswith("it"):
        return Stage(height, width, batch, iters=length, split=split)
    return Stage(height, width, batch, length, split=split)


@dataclass
class TrainConfig:
    """Everything `segnet train` takes (see `segnet train --help`); stored as the run's config.json."""

    variant: str
    shards: str
    out: str
    split: str = "train"
    val_split: str | None = "val"
    schedule: list[Stage] = field(default_factory=lambda: parse_schedule(DEFAULT_SCHEDULE))
    # Coarse pretraining, as PSPNet's: a stage of `coarse_epochs` epochs on `coarse_split` (train_extra built
    # with --labels coarse) before the schedule, at its first stage's size and batch (`stages`).
    coarse_split: str | None = None
    coarse_epochs: int = DEFAULT_COARSE_EPOCHS
    lr: float = 1e-5
    backbone_weights: str = "imagenet"
    output_stride: int = 16
    sf_scale: float = 2.0  # dlse-sf: factor of the channel with the highest softmax gate
    sf_rescale: bool = False  # dlse-sf: softmax gates times C, so they average 1 (off: measured, docs/segnet.md)
    device: str = "auto"
    amp: bool = False
    workers: int | None = None  # DataLoader workers per rank; None: `default_workers`
    seed: int = 0
    strict: bool = False
    sync_bn: bool | None = None  # SyncBatchNorm across ranks; None: on when training on more than one GPU
    deterministic: bool = False  # deterministic algorithms (bit-exact GPU runs and resumes), slower
    compile: bool = False  # torch.compile the model
    channels_last: bool | None = None  # None: on CUDA (`segnet.backends.use_channels_last`)
    optimizer: str = "adam"  # adam, adamw or sgd (segnet.optim)
    momentum: float = 0.9  # sgd's
    weight_decay: float = 0.0
    lr_schedule: str = "constant"  # constant, poly (power 0.9) or cosine, per optimizer step, down to min_lr
    min_lr: float = 0.0
    warmup_iters: int = 0  # steps of linear warm-up from lr / warmup_iters
    aux_loss: float = 0.0  # weight of an auxiliary FCN head's loss on layer3, training only; 0: no head
    # dl-hed-loss: each pixel's cross-entropy weighted by 1 + edge_alpha * edge / 255; 1: the mildest weight
    # measured on the fixture, which could not tell 0, 1 and 2 apart (docs/segnet.md)
    edge_alpha: float = 1.0
    se_init: str = "default"  # SE variants: "identity" gates start at exactly 1 (segnet.backbone.SqueezeExcitation)
    edge_init: str = "default"  # dlse-hed's conv1 edge filter: default, zero or mean (segnet.deeplab.build_model)
    # Training augmentations (segnet.augment); the defaults are the study's: whole frames at the stage
    # size, mirrored at random.
    scale_range: tuple[float, float] | None = None  # (lo, hi): frames scaled by a random ratio, then cropped
    cat_max_ratio: float = 1.0  # redraw crops where one class covers this share or more; 1.0: off
    flip: bool = True  # mirror each training sample with probability 1/2
    photometric: bool = False  # brightness, contrast, saturation and hue changes of R, G, B

    # How a run computes, not what it learns: a resume may change them (device, workers, out too).
    RUNTIME_OPTIONS = ("out", "device", "workers", "deterministic", "compile", "channels_last")

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["schedule"] = [str(stage) for stage in self.schedule]
        data["scale_range"] = None if self.scale_range is None else list(self.scale_range)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainConfig:
        """The config of a run's config.json; fields it lacks (written before they existed) take their defaults."""
        values = dict(data)
        values["schedule"] = [parse_schedule(s)[0] for s in data["schedule"]]
        if values.get("scale_range") is not None:
            values["scale_range"] = tuple(values["scale_range"])
        return cls(**{k: v for k, v in values.items() if k in cls.__dataclass_fields__})

    def to_options(self) -> dict[str, Any]:
        """The run's options as `segnet train --config` takes them (a run folder's config.toml): keys
        spelled as the command line's, None (a default chosen at run time) left out."""
        options = {key.replace("_", "-"): value for key, value in self.to_json().items() if value is not None}
        options["val-split"] = self.val_split or "none"
        return options

    @property
    def stages(self) -> list[Stage]:
        """The stages a run trains, in order: the coarse stage (with `coarse_split`), then the schedule.

        The coarse stage takes the size and batch of the schedule's first stage: in the progressive
        schedule the smallest and cheapest, which makes epochs over a large coarse split affordable, and
        coarse polygons hold little detail a larger size would show; the first fine stage then goes on
        at the size the coarse one trained at.
        """
        if self.coarse_split is None:
            return list(self.schedule)
        if self.coarse_epochs < 1:
            raise SegnetOptionError(f"--coarse-epochs {self.coarse_epochs}: must be at least 1")
        first = self.schedule[0]
        return [Stage(first.height, first.width, first.batch_size, self.coarse_epochs, split=self.coarse_split),
                *self.schedule]

    def augmentation(self) -> Augmentation:
        """The training loader's augmentations (checked: a one-line SegnetOptionError for bad values)."""
        return Augmentation(self.scale_range, self.cat_max_ratio, self.photometric)

    def comparable(self) -> dict[str, Any]:
        """What must not change when a run is resumed (`RUNTIME_OPTIONS` may)."""
        data = self.to_json()
        for key in self.RUNTIME_OPTIONS:
            data.pop(key)
        if self.coarse_split is None:  # no coarse stage: its length is moot
            data.pop("coarse_epochs")
        return data

    def changes_from(self, earlier: TrainConfig, ignore: tuple[str, ...] = ()) -> str:
        """The comparable options that differ from `earlier`'s, as `name old -> new, ...` ('' if none)."""
        before, now = earlier.comparable(), self.comparable()
        return ", ".join(f"{k} {before.get(k)!r} -> {v!r}" for k, v in now.items()
                         if k not in ignore and before.get(k) != v)
