"""`segnet train`: progressive-size training of a DeepLabV3 variant straight from hedprep shards.

A run folder holds `config.json`, `log.txt`, `metrics.jsonl` and `metrics.csv` (one row per epoch),
and checkpoints written atomically: `last.pt` after every epoch (and on Ctrl-C), `best.pt` whenever
the validation mIoU improves. `--resume` continues from `last.pt`; a run killed at any point and
resumed ends with the same weights as an uninterrupted run of the same seed on the same machine:
every epoch's order, flips and dropout come from states saved in the checkpoint.

Under `torchrun` (WORLD_SIZE > 1) each rank takes its own device (`cuda:LOCAL_RANK` on GPUs), the
model is wrapped in DistributedDataParallel (gloo on CPU, nccl on GPU; SyncBatchNorm on more than one
GPU unless `--no-sync-bn`), each rank reads its share of every epoch (the schedule's batch is per
rank), validation counts every val frame once with the confusion matrices summed across ranks, and
rank 0 alone writes the run folder.

The step never waits for the device: the loss is summed on the device and read when a display asks
for it (`StepInfo.loss`) and at the end of the epoch.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from hedprep.atomic import write_text_atomic
from segnet.backends import autocast, backend_settings, use_channels_last
from segnet.checkpoint import interrupts_deferred, link_checkpoint, load_checkpoint, save_checkpoint
from segnet.config import Stage, TrainConfig, loader_workers
from segnet.data import (
    EpochItems,
    EpochSampler,
    ShardDataset,
    loader_settings,
    make_loader,
    model_input,
    opencv_single_threaded,
)
from segnet.deeplab import build_model
from segnet.devices import amp_dtype, resolve_rank_device
from segnet.distributed import Distribution, barrier, broadcast_buffers, init_distribution
from segnet.errors import SegnetError, SegnetOptionError
from segnet.metrics import DeviceConfusion, mean_iou
from segnet.ops import cross_entropy

IGNORE = 255
METRIC_FIELDS = ("stage", "epoch", "step", "loss", "val_miou", "images_per_s", "lr", "seconds")


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


# ----------------------------------------------------------------------------------------- run folder


class RunFolder:
    """The files of one run; only rank 0 writes them."""

    def __init__(self, path: Path, writer: bool) -> None:
        self.path = path
        self.writer = writer
        self.last = path / "last.pt"
        self.best = path / "best.pt"
        self.config = path / "config.json"
        self.metrics_jsonl = path / "metrics.jsonl"
        self.metrics_csv = path / "metrics.csv"
        self.log_file = path / "log.txt"
        self.restarted = False  # --resume found no checkpoint yet: the run starts over

    def prepare(self, config: TrainConfig, resume: bool) -> dict[str, Any] | None:
        """Check the folder for a new run or a resume; returns the checkpoint to resume from (None: start
        from the first epoch)."""
        if resume:
            if not self.last.is_file():
                return self._restart(config)
            checkpoint = load_checkpoint(self.last)
            if checkpoint["variant"] != config.variant:
                raise SegnetError(
                    f"{self.last}: a {checkpoint['variant']} run; --resume needs --variant {checkpoint['variant']}",
                    self.last,
                )
            what = config.changes_from(TrainConfig.from_json(checkpoint["config"]))
            if what:
                raise SegnetError(f"{self.last}: the run used other options ({what}); resume with the same ones",
                                  self.last)
            return checkpoint
        if not self.writer:  # rank 0 decides, and may have written config.json already
            return None
        if self.path.exists() and (self.config.exists() or self.last.exists()):
            raise SegnetError(
                f"{self.path}: holds another run; add --resume to continue it, or choose another --out", self.path
            )
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / f".write-test-{os.getpid()}"
            probe.touch()
            probe.unlink()
        except OSError as error:
            raise SegnetError(f"{self.path}: run folder is not writable ({error.strerror or error})",
                              self.path) from None
        write_text_atomic(self.config, json.dumps(config.to_json(), indent=1) + "\n")
        return None

    def _restart(self, config: TrainConfig) -> None:
        """--resume on a run stopped before its first checkpoint (config.json, no last.pt): start it over,
        if it was started with the same options."""
        if not self.config.is_file():
            raise SegnetError(f"{self.last}: nothing to resume (no last.pt in {self.path})", self.last)
        try:
            earlier = TrainConfig.from_json(json.loads(self.config.read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise SegnetError(f"{self.config}: not a run's config.json ({error}); choose another --out",
                              self.config) from None
        what = config.changes_from(earlier)
        if what:
            raise SegnetError(f"{self.config}: the run used other options ({what}); resume with the same ones",
                              self.config)
        self.restarted = True
        if self.writer and self.metrics_jsonl.exists():
            self._write_metrics([])  # rows of epochs no checkpoint kept

    def log(self, line: str) -> None:
        if self.writer:
            with open(self.log_file, "a", encoding="utf-8") as f:
                f.write(line + "\n")

    def keep_metrics_until(self, stage: int, epoch: int) -> None:
        """Drop metric rows written after the checkpoint being resumed (a run killed in between)."""
        if not self.writer or not self.metrics_jsonl.exists():
            return
        rows = [json.loads(line) for line in self.metrics_jsonl.read_text().splitlines() if line.strip()]
        kept = [r for r in rows if (r["stage"] - 1, r["epoch"] - 1) <= (stage, epoch)]  # rows count from 1
        self._write_metrics(kept)

    def add_metrics(self, row: dict[str, Any]) -> None:
        if not self.writer:
            return
        rows = []
        if self.metrics_jsonl.exists():
            rows = [json.loads(line) for line in self.metrics_jsonl.read_text().splitlines() if line.strip()]
        self._write_metrics(rows + [row])

    def _write_metrics(self, rows: list[dict[str, Any]]) -> None:
        write_text_atomic(self.metrics_jsonl, "".join(json.dumps(r) + "\n" for r in rows))
        table = io.StringIO()
        writer = csv.DictWriter(table, fieldnames=METRIC_FIELDS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        write_text_atomic(self.metrics_csv, table.getvalue())


# ------------------------------------------------------------------------------------------- training


def rng_state(device: torch.device) -> dict[str, Any]:
    """Every random state the run draws from: torch's CPU generator, numpy's, Python's, and on CUDA the
    training device's generator (dropout draws from it there)."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state()[1].tolist(),
             "numpy_pos": int(np.random.get_state()[2]), "python": list(random.getstate()[1])}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Restore `rng_state`'s states. The CUDA state goes to this process's device: every rank's device
    generator is seeded alike and draws alike, so rank 0's state is every rank's."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", np.array(state["numpy"], dtype=np.uint32), state["numpy_pos"], 0, 0.0))
    python = random.getstate()
    random.setstate((python[0], tuple(state["python"]), None))
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def training_items(sampler: EpochSampler, batch_size: int, skip_items: int = 0) -> list[tuple[int, bool]]:
    """This epoch's items for training, from item `skip_items` on (a resumed epoch)."""
    items = sampler.items()
    if len(items) % batch_size == 1 and len(items) > 1:
        # BatchNorm cannot train on one sample (ASPP's image pooling has one value per channel).
        items = items[:-1]
    return items[skip_items:]


def validate(model: torch.nn.Module, loader: DataLoader, items: EpochItems, device: torch.device,
             dist_info: Distribution, amp: torch.dtype | None, channels_last: bool = False) -> float:
    """mIoU on the loader's dataset at its size (labels resized to it): each rank scores its share of
    the frames, every frame exactly once, and the confusion matrices are summed across ranks.

    `model` is the bare model, not its DistributedDataParallel wrapper: ranks may get one frame fewer,
    and the wrapper's forward would wait for the others.
    """
    sampler = EpochSampler(len(loader.dataset), shuffle=False, num_replicas=dist_info.world, rank=dist_info.rank,
                           pad=False)
    items.set_items(sampler.items())
    matrix = DeviceConfusion(model_num_classes(model), device)
    model.eval()
    with torch.inference_mode(), autocast(device, amp):
        for images, labels in loader:
            logits = model(model_input(images, device, channels_last))
            matrix.update(logits.argmax(1), labels)
    matrix.reduce()
    model.train()
    return float(mean_iou(matrix.numpy()))


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor, labels: torch.Tensor,
               amp: torch.dtype | None) -> torch.Tensor:
    """One optimizer step on a batch; returns the batch's loss, detached, on the device (not read)."""
    with autocast(images.device, amp):
        logits = model(images)
    loss = cross_entropy(logits.float(), labels.long(), IGNORE)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def model_num_classes(model: torch.nn.Module) -> int:
    inner = getattr(model, "module", model)
    return int(inner.model_args["num_classes"])


def sync_batch_norm(requested: bool | None, device: torch.device, world: int) -> bool:
    """Whether to synchronise BatchNorm across ranks: as requested, else on more than one GPU."""
    if requested and device.type != "cuda" and world > 1:
        raise SegnetOptionError("--sync-bn: SyncBatchNorm runs on GPUs only; train on CUDA or add --no-sync-bn")
    return world > 1 and (requested if requested is not None else device.type == "cuda")


def train(config: TrainConfig, resume: bool = False, callbacks: TrainCallbacks | None = None) -> TrainResult:
    """Train (or resume) a run as `config` says; see the module docstring for the run folder."""
    device = resolve_rank_device(config.device)
    workers = loader_workers(config.workers, device.type)
    with backend_settings(device, config.deterministic), opencv_single_threaded(workers > 0):
        return _train(config, device, workers, resume, callbacks or TrainCallbacks())


def _train(config: TrainConfig, device: torch.device, workers: int, resume: bool,
           callbacks: TrainCallbacks) -> TrainResult:
    # Everything that can be wrong with the options fails here, before the run folder is touched.
    amp = amp_dtype(device) if config.amp else None
    channels_last = use_channels_last(device, config.channels_last)
    settings = loader_settings(device.type, workers)
    seed_everything(config.seed)
    weights = config.backbone_weights if not (resume and (Path(config.out) / "last.pt").is_file()) else "none"
    model = build_model(config.variant, output_stride=config.output_stride, backbone_weights=weights,
                        sf_scale=config.sf_scale, sf_rescale=config.sf_rescale)
    model_args = dict(model.model_args)
    channels = model.in_channels
    train_sets = [ShardDataset(config.shards, config.split, channels, stage.size, config.strict)
                  for stage in config.schedule]
    val_sets = ([ShardDataset(config.shards, config.val_split, channels, stage.size, config.strict)
                 for stage in config.schedule] if config.val_split else None)
    # One loader per stage and split, made when first used: its workers (if any) persist across epochs.
    train_loaders: dict[int, tuple[DataLoader, EpochItems]] = {}
    val_loaders: dict[int, tuple[DataLoader, EpochItems]] = {}

    def stage_loader(loaders: dict, datasets: list[ShardDataset], stage_index: int) -> tuple[DataLoader, EpochItems]:
        if stage_index not in loaders:
            loaders.clear()  # the previous stage's workers end
            loaders[stage_index] = make_loader(datasets[stage_index], config.schedule[stage_index].batch_size,
                                               settings)
        return loaders[stage_index]

    if val_sets is not None and val_sets[0].frame_size != train_sets[0].frame_size:
        (th, tw), (vh, vw) = train_sets[0].frame_size, val_sets[0].frame_size
        warnings.warn(f"{config.shards}: {config.split} frames are {th}x{tw} but {config.val_split} frames are "
                      f"{vh}x{vw}; both are resized to each stage size", UserWarning, stacklevel=2)
    dist_info = init_distribution(device)
    sync_bn = sync_batch_norm(config.sync_bn, device, dist_info.world)
    run = RunFolder(Path(config.out), writer=dist_info.is_main)
    checkpoint = run.prepare(config, resume)

    def log(line: str) -> None:
        run.log(line)
        if callbacks.on_log is not None and dist_info.is_main:
            callbacks.on_log(line)

    if run.restarted:
        log(f"{run.path}: stopped before its first checkpoint (no last.pt); starting the run over")
    if checkpoint is None and config.backbone_weights == "none":
        log(f"{config.variant}: random initialisation (--backbone-weights none)")
    elif checkpoint is None:
        uncovered = model.uncovered_parameters
        run.log(f"{config.variant}: backbone weights {config.backbone_weights}; not from the checkpoint: "
                f"{', '.join(uncovered) or 'none'}")
        if callbacks.on_log is not None and dist_info.is_main:
            callbacks.on_log(f"{config.variant}: backbone weights {config.backbone_weights}; {len(uncovered)} "
                             f"parameter tensors not from the checkpoint (listed in {run.log_file})")
    model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    if sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    # Fused Adam: one kernel for every parameter's update on CUDA, instead of several per parameter.
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, fused=device.type == "cuda")
    start_stage, start_epoch, skip_batches, best, resumed_stats = 0, 0, 0, None, None
    global_step = 0
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        start_stage, start_epoch = checkpoint["next"]["stage"], checkpoint["next"]["epoch"]
        skip_batches = checkpoint["next"]["batch"]
        resumed_stats = checkpoint.get("epoch_stats")
        best = checkpoint.get("best_miou")
        global_step = checkpoint["step"]
        set_rng_state(checkpoint["rng"], device)
        run.keep_metrics_until(*checkpoint["done"])
        log(f"resumed from {run.last} at stage {start_stage + 1}, epoch {start_epoch + 1}, batch {skip_batches}")
    trained = model
    if dist_info.grouped:
        trained = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if config.compile:
        trained = torch.compile(trained)
    trained.train()

    def checkpoint_state(next_position: dict[str, int], done: tuple[int, int], metrics: dict[str, Any],
                         epoch_stats: dict[str, Any] | None = None, **overrides: Any) -> dict:
        return {
            "variant": config.variant, "model_args": model_args, "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "config": config.to_json(), "next": next_position,
            "done": list(done), "step": global_step, "rng": rng_state(device), "metrics": metrics,
            "best_miou": overrides.get("best", best),
            "epoch_stats": None if epoch_stats is None else {k: float(v) if isinstance(v, torch.Tensor) else v
                                                             for k, v in epoch_stats.items()},
        }

    def run_epoch(stage_index: int, epoch: int, skip: int, stats: dict, position: dict) -> tuple[dict, bool]:
        """Train one epoch (from batch `skip`), validate, write its metrics row; `stats` and `position`
        are kept current, so that an interrupt can save exactly where it stands."""
        nonlocal global_step
        stage: Stage = config.schedule[stage_index]
        sampler = EpochSampler(len(train_sets[stage_index]), config.seed, num_replicas=dist_info.world,
                               rank=dist_info.rank)
        sampler.set_epoch(stage_index * 10_000 + epoch)
        loader, items = stage_loader(train_loaders, train_sets, stage_index)
        items.set_items(training_items(sampler, stage.batch_size, skip * stage.batch_size))
        # The epoch's loss is summed on the device (float64, as Python's float sum was): no step waits for it.
        stats["loss_sum"] = torch.tensor(float(stats["loss_sum"]), dtype=torch.float64, device=device)
        info = StepInfo(stage_index, len(config.schedule), stage.size, epoch, stage.epochs, skip, skip + len(loader),
                        stats["loss_sum"], stats["loss_count"], 0.0)
        if callbacks.on_epoch_start is not None and dist_info.is_main:
            callbacks.on_epoch_start(info)
        started = time.perf_counter() - stats["seconds"]
        for images, labels in loader:
            loss = train_step(trained, optimizer, model_input(images, device, channels_last),
                              labels.to(device, non_blocking=True), amp)
            global_step += 1
            position["batch"] += 1
            stats["images"] += images.shape[0]
            stats["loss_sum"] += loss
            stats["loss_count"] += 1
            stats["seconds"] = time.perf_counter() - started
            info.batch, info.loss_count = position["batch"], stats["loss_count"]
            info.images_per_s = stats["images"] * dist_info.world / stats["seconds"]
            if callbacks.on_step is not None and dist_info.is_main:
                callbacks.on_step(info)
        stats["loss_sum"] = float(stats["loss_sum"])  # waits for the epoch's last step
        seconds = stats["seconds"] = time.perf_counter() - started
        val_miou = None
        if val_sets is not None:
            broadcast_buffers(model, dist_info)  # every rank validates the weights that rank 0 saves
            val_miou = validate(model, *stage_loader(val_loaders, val_sets, stage_index), device, dist_info, amp,
                                channels_last)
        metrics = {
            "stage": stage_index + 1, "epoch": epoch + 1, "step": global_step,
            "loss": stats["loss_sum"] / max(1, stats["loss_count"]), "val_miou": val_miou,
            "images_per_s": stats["images"] * dist_info.world / seconds if seconds > 0 else None,
            "lr": optimizer.param_groups[0]["lr"], "seconds": seconds,
        }
        position["next"] = ({"stage": stage_index, "epoch": epoch + 1, "batch": 0} if epoch + 1 < stage.epochs
                            else {"stage": stage_index + 1, "epoch": 0, "batch": 0})
        if dist_info.is_main:
            run.add_metrics(metrics)
        return metrics, val_miou is not None and (best is None or val_miou > best)

    epochs_run, last_metrics = 0, {}
    done = tuple(checkpoint["done"]) if checkpoint else (-1, -1)
    for stage_index in range(start_stage, len(config.schedule)):
        stage: Stage = config.schedule[stage_index]
        first_epoch = start_epoch if stage_index == start_stage else 0
        for epoch in range(first_epoch, stage.epochs):
            resuming_here = (stage_index, epoch) == (start_stage, start_epoch)
            skip = skip_batches if resuming_here else 0
            # This epoch's figures so far: restored when resuming inside it, so its metrics row is whole.
            stats = dict(resumed_stats) if resuming_here and resumed_stats else {
                "images": 0, "loss_sum": 0.0, "loss_count": 0, "seconds": 0.0}
            position = {"stage": stage_index, "epoch": epoch, "batch": skip, "saved": False}
            try:
                metrics, improved = run_epoch(stage_index, epoch, skip, stats, position)
                if dist_info.is_main:
                    best_after = metrics["val_miou"] if improved else best
                    state = checkpoint_state(position["next"], (stage_index, epoch), metrics, best=best_after)
                    with interrupts_deferred():
                        save_checkpoint(run.last, state)
                        position["saved"] = True
                        if improved:
                            link_checkpoint(run.last, run.best)
            except KeyboardInterrupt:
                if dist_info.is_main and not position["saved"]:
                    next_position = {k: position[k] for k in ("stage", "epoch", "batch")}
                    with interrupts_deferred():
                        save_checkpoint(run.last, checkpoint_state(next_position, done, last_metrics, stats))
                    log(f"interrupted at stage {stage_index + 1}, epoch {epoch + 1}, batch {position['batch']}; "
                        f"saved {run.last}")
                raise Interrupted(
                    f"interrupted; saved {run.last}: continue with the same command and --resume", run.last
                ) from None
            done, last_metrics = (stage_index, epoch), metrics
            if improved:
                best = metrics["val_miou"]
            if callbacks.on_epoch_end is not None and dist_info.is_main:
                try:
                    callbacks.on_epoch_end(last_metrics)
                except KeyboardInterrupt:
                    raise Interrupted(f"interrupted; saved {run.last}: continue with the same command and --resume",
                                      run.last) from None
            epochs_run += 1
    barrier(dist_info)
    return TrainResult(run.path, epochs_run, best, last_metrics, dist_info.is_main)
