"""`segnet train`: progressive-size training of a DeepLabV3 variant straight from hedprep shards.

A run folder holds `config.json`, `log.txt`, `metrics.jsonl` and `metrics.csv` (one row per epoch),
and checkpoints written atomically: `last.pt` after every epoch (and on Ctrl-C), `best.pt` whenever
the validation mIoU improves. `--resume` continues from `last.pt`; a run killed at any point and
resumed ends with the same weights as an uninterrupted run of the same seed on the same machine:
every epoch's order, flips, augmentations and dropout come from states saved in the checkpoint.

Under `torchrun` (WORLD_SIZE > 1) each rank takes its own device (`cuda:LOCAL_RANK` on GPUs), the
model is wrapped in DistributedDataParallel (gloo on CPU, nccl on GPU; SyncBatchNorm on more than one
GPU unless `--no-sync-bn`), each rank reads its share of every epoch (the schedule's batch is per
rank), validation counts every val frame once with the confusion matrices summed across ranks, and
rank 0 alone writes the run folder.

The step never waits for the device: the loss is summed on the device and read when a display asks
for it (`StepInfo.loss`) and at the end of the epoch.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from hedprep.shards import Manifest
from segnet.augment import Augmentation
from segnet.backends import backend_settings, use_channels_last
from segnet.checkpoint import (
    EpochStats,
    Position,
    TrainingState,
    interrupts_deferred,
    link_checkpoint,
    restore_training_state,
    save_checkpoint,
    training_checkpoint,
)
from segnet.config import StagePlan, TrainConfig, loader_workers, plan_stage
from segnet.data import (
    EpochItems,
    EpochSampler,
    LoaderSettings,
    ShardDataset,
    loader_settings,
    make_loader,
    opencv_single_threaded,
)
from segnet.deeplab import VARIANT_SPECS, build_model, training_network
from segnet.devices import amp_dtype, resolve_rank_device
from segnet.distributed import Distribution, barrier, broadcast_buffers, init_distribution
from segnet.engine import train_one_epoch, training_items, validate
from segnet.errors import SegnetError, SegnetOptionError
from segnet.losses import BOUNDARY_LOSS_WEIGHT, LossFunction, make_loss
from segnet.metrics import EvalResult
from segnet.optim import make_lr_schedule, make_optimizer
from segnet.run_folder import RunFolder
from segnet.tensorboard_log import TENSORBOARD_MISSING, TensorBoardLog


@dataclass
class StepInfo:
    """What a progress display needs after each training step."""

    stage: int  # 0-based
    stage_count: int
    size: tuple[int, int]
    epoch: int  # 0-based within the stage
    epochs: int
    batch: int  # batches done in this epoch
    batches: int
    loss_total: float | torch.Tensor  # the epoch's loss so far, summed (on the device while training)
    loss_count: int
    images_per_s: float

    @property
    def loss(self) -> float:
        """The epoch's mean loss so far (reading it waits for the device: read it when it is shown)."""
        return float(self.loss_total) / max(1, self.loss_count)


@dataclass
class TrainCallbacks:
    """Hooks for a display; all optional."""

    on_epoch_start: Callable[[StepInfo], None] | None = None
    on_step: Callable[[StepInfo], None] | None = None
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None
    on_log: Callable[[str], None] | None = None


@dataclass
class TrainResult:
    """Where a run ended; `is_main` is False on torchrun ranks other than 0."""

    run_dir: Path
    epochs_run: int
    best_miou: float | None
    last_metrics: dict[str, Any] = field(default_factory=dict)
    is_main: bool = True


class Interrupted(SegnetError):
    """Ctrl-C during training: the state was saved to `last.pt`."""

    exit_code = 130


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def sync_batch_norm(requested: bool | None, device: torch.device, world: int) -> bool:
    """Whether to synchronise BatchNorm across ranks: as requested, else on more than one GPU."""
    if requested and device.type != "cuda" and world > 1:
        raise SegnetOptionError("--sync-bn: SyncBatchNorm runs on GPUs only; train on CUDA or add --no-sync-bn")
    return world > 1 and (requested if requested is not None else device.type == "cuda")


class StageLoaders:
    """The DataLoader of each stage, made when first used; its workers (if any) persist across the
    stage's epochs and end when the next stage's loader is made. Every stage reads `split`, but with
    `stage_splits` (training) a stage naming its own split (the coarse stage) reads that one."""

    def __init__(self, config: TrainConfig, split: str, channels: int, settings: LoaderSettings,
                 augment: Augmentation | None = None, stage_splits: bool = False) -> None:
        stages = config.stages
        self.splits = [stage.split if stage_splits and stage.split is not None else split for stage in stages]
        self.datasets = [ShardDataset(config.shards, stage_split, channels, stage.size, config.strict, augment=augment)
                         for stage, stage_split in zip(stages, self.splits, strict=True)]
        self.batch_sizes = [stage.batch_size for stage in stages]
        self.settings = settings
        self._current: tuple[int, DataLoader, EpochItems] | None = None

    def __call__(self, stage_index: int) -> tuple[DataLoader, EpochItems]:
        if self._current is None or self._current[0] != stage_index:
            self._current = None  # the previous stage's workers end
            loader, items = make_loader(self.datasets[stage_index], self.batch_sizes[stage_index], self.settings)
            self._current = (stage_index, loader, items)
        return self._current[1], self._current[2]


@dataclass
class Run:
    """What stays fixed while a run trains: its options, device, data, model wrappers and folder."""

    config: TrainConfig
    device: torch.device
    amp: torch.dtype | None
    channels_last: bool
    dist_info: Distribution
    folder: RunFolder
    callbacks: TrainCallbacks
    train_loaders: StageLoaders
    val_loaders: StageLoaders | None
    network: torch.nn.Module  # what trains: the model (with its auxiliary head), or its DDP or compiled wrapper
    plan: list[StagePlan]  # each stage's epochs and steps on this rank
    loss_fn: LossFunction
    tensorboard: TensorBoardLog | None = None  # rank 0's event files, where tensorboard is installed

    def log(self, line: str, shown: str | None = None) -> None:
        """A line for log.txt and (rank 0) the display; `shown` replaces it on the display."""
        self.folder.log(line)
        if self.callbacks.on_log is not None and self.dist_info.is_main:
            self.callbacks.on_log(shown or line)

    def notify(self, hook: Callable[[Any], None] | None, value: Any) -> None:
        if hook is not None and self.dist_info.is_main:
            hook(value)

    def close(self) -> None:
        """Close what the run holds open beyond its loaders: TensorBoard's event file."""
        if self.tensorboard is not None:
            self.tensorboard.close()


def train(config: TrainConfig, resume: bool = False, callbacks: TrainCallbacks | None = None) -> TrainResult:
    """Train (or resume) a run as `config` says; see the module docstring for the run folder."""
    device = resolve_rank_device(config.device)
    workers = loader_workers(config.workers, device.type)
    with backend_settings(device, config.deterministic), opencv_single_threaded(workers > 0):
        return _train(config, device, workers, resume, callbacks or TrainCallbacks())


def _train(config: TrainConfig, device: torch.device, workers: int, resume: bool,
           callbacks: TrainCallbacks) -> TrainResult:
    run, state = start_run(config, device, workers, resume, callbacks)
    try:
        return run_epochs(run, state)
    finally:
        run.close()


def run_epochs(run: Run, state: TrainingState) -> TrainResult:
    """The epochs from `state.position` on, each recorded at its end; Ctrl-C saves where the run stands."""
    callbacks = run.callbacks
    interrupted = Interrupted(f"interrupted; saved {run.folder.last}: continue with the same command and --resume",
                              run.folder.last)
    epochs_run, announced = 0, None
    for stage_index, epoch in remaining_epochs(run.plan, state.position):
        if stage_index != announced:  # the stage's first epoch, or the one a resume continues
            announce_stage(run, stage_index)
            announced = stage_index
        try:
            metrics, validation = run_epoch(run, state, stage_index, epoch)
        except KeyboardInterrupt:
            save_interrupted(run, state)
            raise interrupted from None
        try:
            save_epoch_end(run, state, metrics, validation)  # a Ctrl-C inside takes effect once the epoch is saved
            run.notify(callbacks.on_epoch_end, metrics)
        except KeyboardInterrupt:
            raise interrupted from None
        epochs_run += 1
    barrier(run.dist_info)
    return TrainResult(run.folder.path, epochs_run, state.best, state.metrics if epochs_run else {},
                       run.dist_info.is_main)


def start_run(config: TrainConfig, device: torch.device, workers: int, resume: bool,
              callbacks: TrainCallbacks) -> tuple[Run, TrainingState]:
    """Everything before the first epoch: options checked, model, data, process group, run folder, and
    the state restored from the checkpoint being resumed. Whatever is wrong with the options fails before
    the run folder is touched."""
    augment = config.augmentation()
    amp = amp_dtype(device) if config.amp else None
    channels_last = use_channels_last(device, config.channels_last)
    settings = loader_settings(device.type, workers)
    loss_fn = make_loss(config)
    seed_everything(config.seed)
    weights = config.backbone_weights if not (resume and RunFolder(config.out).last.is_file()) else "none"
    model = build_model(config.variant, output_stride=config.output_stride, backbone_weights=weights,
                        sf_scale=config.sf_scale, sf_rescale=config.sf_rescale, se_init=config.se_init,
                        edge_init=config.edge_init)
    trainee = training_network(model, aux_head=config.aux_loss > 0)  # what the optimizer steps
    # the edge channel too where the loss reads it (dl-hed-head, dl-hed-loss); validation reads the model's
    train_loaders = StageLoaders(config, config.split, VARIANT_SPECS[config.variant].train_channels, settings,
                                 augment, stage_splits=True)
    val_loaders = StageLoaders(config, config.val_split, model.in_channels, settings) if config.val_split else None
    warn_on_size_mismatch(config, train_loaders, val_loaders)
    dist_info = init_distribution(device)
    sync_bn = sync_batch_norm(config.sync_bn, device, dist_info.world)
    folder = RunFolder(config.out, writer=dist_info.is_main)
    checkpoint = folder.prepare(config, resume)
    trainee.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    if sync_bn:  # in place: the model and its auxiliary head stay the objects they are
        trainee = torch.nn.SyncBatchNorm.convert_sync_batchnorm(trainee)
    optimizer = make_optimizer(config, trainee, device)
    plan = stage_plans(config, train_loaders, dist_info)
    state = TrainingState(model, optimizer, make_lr_schedule(config, optimizer, sum(p.total_steps for p in plan)),
                          trainee.heads() if trainee is not model else {})
    run = Run(config, device, amp, channels_last, dist_info, folder, callbacks, train_loaders, val_loaders,
              wrap_model(trainee, dist_info, device, config.compile), plan, loss_fn)
    announce_start(run, model, checkpoint, state.heads)
    if checkpoint is not None:
        restore_training_state(state, checkpoint, device)
        folder.keep_metrics_until(*state.done)
        run.log(f"resumed from {folder.last} at stage {state.position.stage + 1}, epoch {state.position.epoch + 1}, "
                f"batch {state.position.batch}")
    run.tensorboard = folder.tensorboard(first_step=state.step + 1)
    if run.tensorboard is None and folder.writer:
        run.log(TENSORBOARD_MISSING)
    run.network.train()
    return run, state


def stage_plans(config: TrainConfig, train_loaders: StageLoaders, dist_info: Distribution) -> list[StagePlan]:
    """Each stage's epochs and optimizer steps on this rank (the learning-rate schedule spans them all)."""
    plans = []
    for stage, dataset in zip(config.stages, train_loaders.datasets, strict=True):
        items = training_items(EpochSampler(len(dataset), config.seed, flip=config.flip,
                                            num_replicas=dist_info.world, rank=dist_info.rank), stage.batch_size)
        plans.append(plan_stage(stage, -(-len(items) // stage.batch_size)))
    return plans


def warn_on_size_mismatch(config: TrainConfig, train_loaders: StageLoaders, val_loaders: StageLoaders | None) -> None:
    train_size = train_loaders.datasets[0].frame_size
    if val_loaders is not None and val_loaders.datasets[0].frame_size != train_size:
        (th, tw), (vh, vw) = train_size, val_loaders.datasets[0].frame_size
        warnings.warn(f"{config.shards}: {train_loaders.splits[0]} frames are {th}x{tw} but {config.val_split} frames "
                      f"are {vh}x{vw}; both are resized to each stage size", UserWarning, stacklevel=4)


def announce_start(run: Run, model: torch.nn.Module, checkpoint: dict[str, Any] | None,
                   heads: dict[str, torch.nn.Module]) -> None:
    config = run.config
    head_names = [f"{key}.{name}" for key, head in heads.items() for name, _ in head.named_parameters()]
    if checkpoint is None and "aux_classifier" in heads:
        run.log(f"auxiliary FCN head on layer3 (training only), its loss weighted {config.aux_loss}")
    if checkpoint is None and "boundary_head" in heads:
        target = VARIANT_SPECS[config.variant].boundary_target
        run.log(f"boundary head on the decoder (training only), learning "
                f"{'label boundaries' if target == 'labels' else 'HED edges'}, its loss weighted "
                f"{BOUNDARY_LOSS_WEIGHT:g}")
    if run.folder.restarted:
        run.log(f"{run.folder.path}: stopped before its first checkpoint (no last.pt); starting the run over")
    if checkpoint is None and config.backbone_weights == "none":
        run.log(f"{config.variant}: random initialisation (--backbone-weights none)")
    elif checkpoint is None:
        uncovered = model.uncovered_parameters + head_names
        run.log(f"{config.variant}: backbone weights {config.backbone_weights}; not from the checkpoint: "
                f"{', '.join(uncovered) or 'none'}",
                shown=f"{config.variant}: backbone weights {config.backbone_weights}; {len(uncovered)} "
                      f"parameter tensors not from the checkpoint (listed in {run.folder.log_file})")


def announce_stage(run: Run, stage_index: int) -> None:
    """Log what a stage trains on: its size, batch and length, its split and that split's labels."""
    plan, loaders = run.plan[stage_index], run.train_loaders
    stage = plan.stage
    length = f"{stage.iters} step(s)" if stage.iters is not None else f"{plan.epochs} epoch(s)"
    run.log(f"stage {stage_index + 1}/{len(run.plan)}: {stage.height}x{stage.width}, batch {stage.batch_size}, "
            f"{length} on {loaders.splits[stage_index]} "
            f"({labels_text(loaders.datasets[stage_index].reader.manifest)})")


def labels_text(manifest: Manifest) -> str:
    """A split's labels in words: 'coarse labels, 61.2% of the pixels ignored'."""
    share = manifest.ignore_share
    ignored = ("ignored share unknown (shards built before it was recorded)" if share is None
               else f"{100 * share:.1f}% of the pixels ignored")
    return f"{manifest.label_kind or 'unknown'} labels, {ignored}"


def wrap_model(model: torch.nn.Module, dist_info: Distribution, device: torch.device,
               compile_model: bool) -> torch.nn.Module:
    """The module that trains: DistributedDataParallel under torchrun, compiled with --compile."""
    network = model
    if dist_info.grouped:
        network = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    return torch.compile(network) if compile_model else network


def remaining_epochs(plan: list[StagePlan], start: Position):
    """(stage, epoch) of every epoch from `start` on."""
    for stage_index in range(start.stage, len(plan)):
        first = start.epoch if stage_index == start.stage else 0
        for epoch in range(first, plan[stage_index].epochs):
            yield stage_index, epoch


def run_epoch(run: Run, state: TrainingState, stage_index: int,
              epoch: int) -> tuple[dict[str, Any], EvalResult | None]:
    """Train one epoch (from `state.position`'s batch when resuming inside it), validate, and return its
    metrics row and validation scores (None without a val split); `state` is current after every step."""
    config, dist_info = run.config, run.dist_info
    plan = run.plan[stage_index]
    stage = plan.stage
    if (state.position.stage, state.position.epoch) != (stage_index, epoch):
        state.position, state.epoch_stats = Position(stage_index, epoch, 0), EpochStats()
    skip = state.position.batch
    sampler = EpochSampler(len(run.train_loaders.datasets[stage_index]), config.seed, flip=config.flip,
                           num_replicas=dist_info.world, rank=dist_info.rank)
    sampler.set_epoch(stage_index * 10_000 + epoch)
    loader, items = run.train_loaders(stage_index)
    steps = plan.steps(epoch)  # the last epoch of a stage counted in iterations stops short
    todo = training_items(sampler, stage.batch_size, skip * stage.batch_size)
    items.set_items(todo[: (steps - skip) * stage.batch_size])
    info = StepInfo(stage_index, len(run.plan), stage.size, epoch, plan.epochs, skip, steps,
                    state.epoch_stats.loss_sum, state.epoch_stats.loss_count, 0.0)

    def on_step(stats: EpochStats) -> None:
        if run.tensorboard is not None:
            run.tensorboard.step(state.step, state.optimizer.param_groups[0]["lr"], stats.loss_sum, stats.loss_count)
        info.batch, info.loss_total, info.loss_count = state.position.batch, stats.loss_sum, stats.loss_count
        info.images_per_s = stats.images * dist_info.world / stats.seconds
        run.notify(run.callbacks.on_step, info)

    run.notify(run.callbacks.on_epoch_start, info)
    if run.tensorboard is not None:
        run.tensorboard.start_epoch(state.optimizer.param_groups[0]["lr"], state.epoch_stats.loss_sum,
                                    state.epoch_stats.loss_count)
    watched = run.callbacks.on_step is not None or run.tensorboard is not None
    stats = train_one_epoch(run.network, state, loader, run.device, run.loss_fn, run.amp, run.channels_last,
                            on_step if watched else None)
    validation = None
    if run.val_loaders is not None:
        broadcast_buffers(state.model, dist_info)  # every rank validates the weights that rank 0 saves
        validation = validate(state.model, *run.val_loaders(stage_index), run.device, dist_info, run.amp,
                              run.channels_last)
    return {
        "stage": stage_index + 1, "epoch": epoch + 1, "step": state.step, "loss": stats.loss,
        "val_miou": None if validation is None else validation.miou,
        "images_per_s": stats.images * dist_info.world / stats.seconds if stats.seconds > 0 else None,
        "lr": state.optimizer.param_groups[0]["lr"], "seconds": stats.seconds,
    }, validation


def save_epoch_end(run: Run, state: TrainingState, metrics: dict[str, Any], validation: EvalResult | None) -> None:
    """Record a finished epoch, with Ctrl-C deferred until it is recorded whole: its metrics row and
    TensorBoard scalars, the state moved past it, last.pt (and best.pt if its validation mIoU is the best
    so far)."""
    stage_index, epoch = metrics["stage"] - 1, metrics["epoch"] - 1
    improved = metrics["val_miou"] is not None and (state.best is None or metrics["val_miou"] > state.best)
    with interrupts_deferred():
        if run.dist_info.is_main:
            run.folder.add_metrics(metrics)
        if run.tensorboard is not None:
            run.tensorboard.end_epoch(metrics, state.epoch_stats.loss_sum, state.epoch_stats.loss_count,
                                      None if validation is None else validation.iou)
        state.done, state.metrics = (stage_index, epoch), metrics
        state.position = (Position(stage_index, epoch + 1) if epoch + 1 < run.plan[stage_index].epochs
                          else Position(stage_index + 1, 0))
        state.epoch_stats = EpochStats()
        if improved:
            state.best = metrics["val_miou"]
        if run.dist_info.is_main:
            save_checkpoint(run.folder.last, training_checkpoint(state, run.config.to_json(), run.device, False))
            if improved:
                link_checkpoint(run.folder.last, run.folder.best)


def save_interrupted(run: Run, state: TrainingState) -> None:
    """Ctrl-C inside an epoch: checkpoint the state where it stands (the epoch's position and figures)."""
    if not run.dist_info.is_main:
        return
    with interrupts_deferred():
        save_checkpoint(run.folder.last, training_checkpoint(state, run.config.to_json(), run.device, True))
    position = state.position
    run.log(f"interrupted at stage {position.stage + 1}, epoch {position.epoch + 1}, batch {position.batch}; "
            f"saved {run.folder.last}")
